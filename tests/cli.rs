//! The command line: `check`, `routes`, `--version`, `--help`.
//!
//! Every config is written as `config.yaml` in a fresh directory and named
//! relatively, so messages start with `config.yaml:LINE:COL:`.

mod support;

use support::run_cli;

/// Writes `config.yaml` (and `files`) into a new directory.
fn dir_with(yaml: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write file");
    }
    dir
}

/// `postern check --config config.yaml`: (exit code, stdout, stderr).
fn check(yaml: &str) -> (i32, String, String) {
    let dir = dir_with(yaml, &[]);
    run_cli(&["check", "--config", "config.yaml"], dir.path())
}

fn is_count_line(line: &str) -> bool {
    line.strip_suffix(" problem(s)").is_some_and(|n| n.parse::<usize>().is_ok())
}

/// `check` fails, printing exactly `expected` (in any order), one per line,
/// plus at most a count line; nothing on stdout.
fn check_fails(yaml: &str, expected: &[&str]) -> String {
    let (code, stdout, stderr) = check(yaml);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert_eq!(stdout, "", "nothing on stdout when the file is bad");
    let mut printed: Vec<&str> = stderr.lines().filter(|l| !is_count_line(l)).collect();
    let mut want = expected.to_vec();
    printed.sort_unstable();
    want.sort_unstable();
    assert_eq!(printed, want, "stderr:\n{stderr}");
    stderr
}

/// A problem in a route: the route is left out and `check` prints exactly
/// the problem and the count line.
fn route_problem(yaml: &str, expected: &str) {
    let stderr = check_fails(yaml, &[expected]);
    assert_eq!(stderr, format!("{expected}\n1 problem(s)\n"));
}

/// A route header (lines 1-3) for route-level cases; the mistake follows on line 4.
const ROUTE: &str = "routes:\n  - from: https://a.example.com\n    to: http://127.0.0.1:9000\n";

// ---------------------------------------------------------------------------
// check: a good file

#[test]
fn check_accepts_a_good_file_and_counts_its_routes() {
    let (code, stdout, stderr) = check(
        "address: 127.0.0.1:8443\n\
         metrics_address: 127.0.0.1:9090\n\
         trusted_proxies: [10.0.0.0/8, 192.168.1.1]\n\
         default_upstream_timeout: 1m30s\n\
         routes:\n\
         \x20 - from: https://a.example.com\n\
         \x20   to: [http://127.0.0.1:9000, 'http://127.0.0.1:9001,2']\n\
         \x20   timeout: 5s\n\
         \x20   set_request_headers: {X-Count: 1}\n\
         \x20 - from: https://*.example.com\n\
         \x20   prefix: /api/\n\
         \x20   to: h2c://127.0.0.1:50051\n\
         \x20 - from: https://a.example.com\n\
         \x20   path: /ping\n\
         \x20   response: {status: 204}\n",
    );
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "config.yaml: OK (3 routes)\n", ""));
}

#[test]
fn check_accepts_an_empty_file() {
    assert_eq!(check(""), (0, "config.yaml: OK (0 routes)\n".to_string(), String::new()));
}

// ---------------------------------------------------------------------------
// check: one kind of mistake at a time

#[test]
fn unknown_top_level_key_is_named_with_a_suggestion() {
    check_fails(
        "routes: []\nadress: 127.0.0.1:8443\n",
        &["config.yaml:2:1: adress: unknown key `adress`; did you mean `address`?"],
    );
    // Nothing close: no suggestion.
    check_fails("colour: red\n", &["config.yaml:1:1: colour: unknown key `colour`"]);
}

#[test]
fn unknown_route_key_is_named_with_a_suggestion() {
    route_problem(
        &format!("{ROUTE}    allow_public_unauthenticated_acces: true\n"),
        "config.yaml:4:5: routes[0].allow_public_unauthenticated_acces: unknown key \
         `allow_public_unauthenticated_acces`; did you mean `allow_public_unauthenticated_access`?",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    response:\n      status: 200\n      bodyy: hi\n",
        "config.yaml:5:7: routes[0].response.bodyy: unknown key `bodyy`; did you mean `body`?",
    );
}

#[test]
fn bad_to_url() {
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to: htp://x\n",
        "config.yaml:3:5: routes[0].to: \"htp://x\" is not an http, https or h2c URL",
    );
    // In a list, the item is named and located.
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to:\n      - http://127.0.0.1:9000\n      - ftp://x\n",
        "config.yaml:5:9: routes[0].to[1]: \"ftp://x\" is not an http, https or h2c URL",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to: http://\n",
        "config.yaml:3:5: routes[0].to: \"http://\" has no host",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to: {url: http://x}\n",
        "config.yaml:3:5: routes[0].to: expected a URL or a list of URLs",
    );
}

#[test]
fn bad_from() {
    route_problem(
        "routes:\n  - from: htp://a.example.com\n    to: http://127.0.0.1:9000\n",
        "config.yaml:2:5: routes[0].from: \"htp://a.example.com\" is not an http or https URL",
    );
    route_problem(
        "routes:\n  - from: https://a.*.example.com\n    to: http://127.0.0.1:9000\n",
        "config.yaml:2:5: routes[0].from: \"https://a.*.example.com\" has an invalid host \
         (a `*` may only be the whole first label)",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com/app\n    to: http://127.0.0.1:9000\n",
        "config.yaml:2:5: routes[0].from: \"https://a.example.com/app\" must not have a path; use `prefix` or `path`",
    );
    route_problem("routes:\n  - to: http://127.0.0.1:9000\n", "config.yaml:2:5: routes[0]: route has no `from`");
}

#[test]
fn bad_regex() {
    route_problem(
        &format!("{ROUTE}    regex: \"/(a\"\n"),
        "config.yaml:4:5: routes[0].regex: invalid regular expression: error: unclosed group",
    );
}

#[test]
fn only_one_of_path_prefix_and_regex() {
    route_problem(
        &format!("{ROUTE}    path: /a\n    prefix: /b\n"),
        "config.yaml:5:5: routes[0].prefix: set only one of `path`, `prefix` and `regex`",
    );
    route_problem(
        &format!("{ROUTE}    prefix: /b\n    regex: /c\n"),
        "config.yaml:5:5: routes[0].regex: set only one of `path`, `prefix` and `regex`",
    );
    route_problem(
        &format!("{ROUTE}    prefix: api/\n"),
        "config.yaml:4:5: routes[0].prefix: prefix \"api/\" must start with '/'",
    );
}

#[test]
fn route_needs_to_or_response_but_not_both() {
    route_problem(
        "routes:\n  - from: https://a.example.com\n    allow_public_unauthenticated_access: true\n",
        "config.yaml:2:5: routes[0]: route needs `to` (upstream URLs) or `response`",
    );
    route_problem(
        &format!("{ROUTE}    response: {{body: hi}}\n"),
        "config.yaml:4:5: routes[0].response: set either `to` or `response`, not both",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    response:\n      status: 700\n",
        "config.yaml:4:7: routes[0].response.status: 700 is not an HTTP status (100-599)",
    );
}

#[test]
fn bad_duration() {
    route_problem(
        &format!("{ROUTE}    timeout: 5x\n"),
        "config.yaml:4:5: routes[0].timeout: invalid duration \"5x\": unknown time unit \"x\", supported units: \
         ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (use e.g. 30s, 1h30m, 500ms)",
    );
    check_fails(
        "default_upstream_timeout: soon\n",
        &["config.yaml:1:1: default_upstream_timeout: invalid duration \"soon\": expected number at 0 \
           (use e.g. 30s, 1h30m, 500ms)"],
    );
}

#[test]
fn wrong_type() {
    route_problem(
        &format!("{ROUTE}    allow_websockets: maybe\n"),
        "config.yaml:4:5: routes[0].allow_websockets: string \"maybe\", expected true or false",
    );
    check_fails(
        "insecure_server: maybe\n",
        &["config.yaml:1:1: insecure_server: string \"maybe\", expected true or false"],
    );
    check_fails("routes: 5\n", &["config.yaml:1:1: routes: expected a list of routes, found a number"]);
}

#[test]
fn bad_weight() {
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to: http://127.0.0.1:9000,0\n",
        "config.yaml:3:5: routes[0].to: \"http://127.0.0.1:9000,0\": weight must be from 1 to 1000",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to: http://127.0.0.1:9000,1001\n",
        "config.yaml:3:5: routes[0].to: \"http://127.0.0.1:9000,1001\": weight must be from 1 to 1000",
    );
    route_problem(
        "routes:\n  - from: https://a.example.com\n    to:\n      - http://127.0.0.1:9000\n      - http://127.0.0.1:9001,x\n",
        "config.yaml:5:9: routes[0].to[1]: \"http://127.0.0.1:9001,x\": weight \"x\" is not a whole number",
    );
}

#[test]
fn missing_certificate_file() {
    check_fails(
        "certificate_file: missing.pem\ncertificate_key_file: missing.key\n",
        &["config.yaml:1:1: certificate_file: cannot read missing.pem: No such file or directory (os error 2)"],
    );
    // The key is read (and reported) once the certificate could be read.
    let (cert, _) = support::self_signed(&["a.example.com"]);
    let dir = dir_with("certificate_file: cert.pem\ncertificate_key_file: missing.key\n", &[("cert.pem", &cert)]);
    let (code, _, stderr) = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        stderr.lines().next(),
        Some("config.yaml:2:1: certificate_key_file: cannot read missing.key: No such file or directory (os error 2)")
    );
    // A file that is not a certificate.
    let dir = dir_with("certificate_file: cert.pem\ncertificate_key_file: cert.pem\n", &[("cert.pem", "hello\n")]);
    let (code, _, stderr) = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().next(), Some("config.yaml:1:1: certificate_file: \"cert.pem\" holds no PEM certificate"));
}

#[test]
fn a_good_certificate_pair_passes() {
    let (cert, key) = support::self_signed(&["a.example.com"]);
    let dir = dir_with(
        "certificate_file: cert.pem\ncertificate_key_file: key.pem\n",
        &[("cert.pem", &cert), ("key.pem", &key)],
    );
    let (code, stdout, stderr) = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "config.yaml: OK (0 routes)\n", ""));
}

#[test]
fn certificate_file_without_key_and_key_without_file() {
    check_fails(
        "certificate_file: cert.pem\n",
        &["config.yaml:1:1: certificate_file: is set but certificate_key_file is not"],
    );
    check_fails(
        "address: :8443\ncertificate_key_file: key.pem\n",
        &["config.yaml:2:1: certificate_key_file: is set but certificate_file is not"],
    );
    check_fails(
        "certificates:\n  - cert: a.pem\n",
        &["config.yaml:2:5: certificates[0]: needs both `cert` and `key` (file paths or PEM)"],
    );
}

#[test]
fn bad_trusted_proxies_entry() {
    check_fails(
        "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.300\n",
        &["config.yaml:3:5: trusted_proxies[1]: \"10.0.0.300\" is not an IP address or CIDR range"],
    );
}

#[test]
fn yaml_syntax_errors_have_a_line_and_column() {
    check_fails(
        "address: :8443\nroutes:\n  - from: a: b\n",
        &["config.yaml:3:12: YAML syntax error: mapping values are not allowed in this context"],
    );
    check_fails(
        "address: :8443\nroutes:\n  - from: \"https://a\n",
        &["config.yaml:3:11: YAML syntax error: while scanning a quoted scalar, found unexpected end of stream"],
    );
    check_fails(
        "routes:\n  - from: https://a\n   to: x\n",
        &["config.yaml:3:6: YAML syntax error: while parsing a block collection, did not find expected '-' indicator"],
    );
    check_fails(
        "routes:\n\t- from: x\n",
        &["config.yaml:2:2: YAML syntax error: tabs disallowed within this context (block indentation)"],
    );
}

#[test]
fn duplicate_keys_are_errors() {
    check_fails(
        "routes:\n  - from: https://a.example.com\n    to: http://127.0.0.1:1\n    to: http://127.0.0.1:2\n",
        &["config.yaml:4:5: YAML syntax error: duplicate key `to`"],
    );
    check_fails(
        "address: :8443\nroutes: []\naddress: :9443\n",
        &["config.yaml:3:1: YAML syntax error: duplicate key `address`"],
    );
}

#[test]
fn a_route_that_is_not_a_mapping() {
    route_problem(
        "routes:\n  - https://a.example.com\n",
        "config.yaml:2:5: routes[0]: a route must be a mapping, found a string",
    );
    check_fails("- a\n- b\n", &["config.yaml: the top level must be a mapping of settings, found a list"]);
}

#[test]
fn bad_header_name_in_set_request_headers() {
    route_problem(
        &format!("{ROUTE}    set_request_headers:\n      \"Bad Header\": x\n"),
        "config.yaml:5:7: routes[0].set_request_headers.Bad Header: \"Bad Header\" is not a header name",
    );
    route_problem(
        &format!("{ROUTE}    set_response_headers:\n      X-A: \"a\\u0001b\"\n"),
        "config.yaml:5:7: routes[0].set_response_headers.X-A: \"a\\u{1}b\" is not a valid header value",
    );
}

#[test]
fn host_cannot_be_set_or_removed_by_header_rules() {
    route_problem(
        &format!("{ROUTE}    set_request_headers:\n      Host: other.example.com\n"),
        "config.yaml:5:7: routes[0].set_request_headers.Host: `host` is managed by the proxy; use host_rewrite for Host",
    );
    route_problem(
        &format!("{ROUTE}    remove_request_headers: [Host]\n"),
        "config.yaml:4:30: routes[0].remove_request_headers[0]: `host` is managed by the proxy and cannot be removed",
    );
}

#[test]
fn a_missing_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stdout, stderr) = run_cli(&["check", "--config", "absent.yaml"], dir.path());
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "absent.yaml: cannot read the config file: No such file or directory (os error 2)\n");
}

// ---------------------------------------------------------------------------
// check: many problems at once

#[test]
fn every_problem_in_the_routes_is_printed_with_a_count() {
    let yaml = "routes:\n\
                \x20 - from: https://a.example.com\n\
                \x20   to: htp://x\n\
                \x20 - from: https://b.example.com\n\
                \x20   to: http://127.0.0.1:9000\n\
                \x20   timeout: 5x\n\
                \x20 - from: https://c.example.com\n\
                \x20   to: http://127.0.0.1:9000\n\
                \x20   colour: red\n\
                \x20   allow_websockets: maybe\n\
                \x20 - from: https://ok.example.com\n\
                \x20   to: http://127.0.0.1:9000\n\
                \x20 - 42\n";
    let stderr = check_fails(
        yaml,
        &[
            "config.yaml:3:5: routes[0].to: \"htp://x\" is not an http, https or h2c URL",
            "config.yaml:6:5: routes[1].timeout: invalid duration \"5x\": unknown time unit \"x\", supported units: \
             ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) \
             (use e.g. 30s, 1h30m, 500ms)",
            "config.yaml:9:5: routes[2].colour: unknown key `colour`",
            "config.yaml:10:5: routes[2].allow_websockets: string \"maybe\", expected true or false",
            "config.yaml:13:5: routes[4]: a route must be a mapping, found a number",
        ],
    );
    assert_eq!(stderr.lines().last(), Some("5 problem(s)"), "stderr:\n{stderr}");
}

#[test]
fn every_problem_in_the_settings_is_printed() {
    check_fails(
        "adress: :8443\ntrusted_proxies: [nope, 10.0.0.0/33]\ncertificate_file: c.pem\n",
        &[
            "config.yaml:1:1: adress: unknown key `adress`; did you mean `address`?",
            "config.yaml:2:19: trusted_proxies[0]: \"nope\" is not an IP address or CIDR range",
            "config.yaml:2:25: trusted_proxies[1]: \"10.0.0.0/33\" is not an IP address or CIDR range",
            "config.yaml:3:1: certificate_file: is set but certificate_key_file is not",
        ],
    );
}

/// With a mistake in the settings, `check` still has to report the mistakes
/// in the routes (every problem, one run) and the count line.
#[test]
fn settings_problems_do_not_hide_route_problems() {
    let stderr = check_fails(
        "adress: :8443\nroutes:\n  - from: https://a.example.com\n    to: htp://x\n",
        &[
            "config.yaml:1:1: adress: unknown key `adress`; did you mean `address`?",
            "config.yaml:4:5: routes[0].to: \"htp://x\" is not an http, https or h2c URL",
        ],
    );
    assert_eq!(stderr.lines().last(), Some("2 problem(s)"), "stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------
// check: mistakes it lets through or locates badly

/// A file with a second YAML document: whatever follows `---` is not read
/// at all, so even garbage there passes.
#[test]
fn a_second_yaml_document_is_not_silently_ignored() {
    let (code, stdout, stderr) = check("routes: []\n---\nadress: 127.0.0.1:8443\n{{{\n");
    assert_eq!(code, 1, "stdout: {stdout}");
    assert!(stderr.starts_with("config.yaml:"), "the problem names the file: {stderr}");
}

#[test]
fn an_upstream_port_out_of_range_is_rejected() {
    let (code, stdout, stderr) = check("routes:\n  - from: https://a.example.com\n    to: http://127.0.0.1:99999\n");
    assert_eq!(code, 1, "stdout: {stdout}");
    assert!(stderr.starts_with("config.yaml:3:5: routes[0].to: \"http://127.0.0.1:99999\""), "stderr:\n{stderr}");
}

#[test]
fn an_invalid_host_without_a_wildcard_gets_no_wildcard_hint() {
    let (code, _, stderr) = check("routes:\n  - from: https://bücher.example.com\n    to: http://127.0.0.1:9000\n");
    assert_eq!(code, 1);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("config.yaml:2:5: routes[0].from: \"https://bücher.example.com\" has an invalid host"),
        "{first}"
    );
    assert!(!first.contains('*'), "the hint is about wildcards, the host has none: {first}");
}

// ---------------------------------------------------------------------------
// routes

const ROUTES: &str = "\
routes:
  - from: https://b.example.com
    to: http://127.0.0.1:9000
    allow_public_unauthenticated_access: true
  - from: https://*.example.com
    to:
      - http://127.0.0.1:9001,3
      - http://127.0.0.1:9002
    allow_websockets: true
  - from: https://a.example.com
    prefix: /api/
    prefix_rewrite: /
    to: https://api.internal:8443/v1
    tls_skip_verify: true
  - from: https://a.example.com:8443
    path: /health
    response:
      status: 204
";

#[test]
fn routes_prints_a_table_in_match_order() {
    let dir = dir_with(ROUTES, &[]);
    let (code, stdout, stderr) = run_cli(&["routes", "--config", "config.yaml"], dir.path());
    assert_eq!((code, stderr.as_str()), (0, ""));
    // Exact hosts (by name) before wildcards; source order within a host.
    let expected = "\
FROM                        PATH     TO                                                                  FLAGS                            ORIGIN
https://a.example.com       /api/*   https://api.internal:8443/v1 (weight 1)                             tls_skip_verify, prefix_rewrite  config.yaml:10:5: routes[2]
https://a.example.com:8443  /health  204 text/plain; charset=utf-8                                                                        config.yaml:15:5: routes[3]
https://b.example.com       /*       http://127.0.0.1:9000 (weight 1)                                    public                           config.yaml:2:5: routes[0]
https://*.example.com       /*       http://127.0.0.1:9001 (weight 3), http://127.0.0.1:9002 (weight 1)  websockets                       config.yaml:5:5: routes[1]
";
    assert_eq!(stdout, expected);
}

/// from, path, upstreams, flags, origin.
type RouteRow<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<&'a str>, &'a str);

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array().expect("an array").iter().map(|x| x.as_str().expect("a string")).collect()
}

#[test]
fn routes_as_json() {
    let dir = dir_with(ROUTES, &[]);
    let (code, stdout, stderr) = run_cli(&["routes", "--config", "config.yaml", "--output", "json"], dir.path());
    assert_eq!((code, stderr.as_str()), (0, ""));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("a JSON array");
    let summary: Vec<RouteRow> = rows
        .iter()
        .map(|r| {
            (
                r["from"].as_str().expect("from"),
                r["path"].as_str().expect("path"),
                strings(&r["upstreams"]),
                strings(&r["flags"]),
                r["origin"].as_str().expect("origin"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "https://a.example.com",
                "/api/*",
                vec!["https://api.internal:8443/v1 (weight 1)"],
                vec!["tls_skip_verify", "prefix_rewrite"],
                "config.yaml:10:5: routes[2]"
            ),
            (
                "https://a.example.com:8443",
                "/health",
                vec!["204 text/plain; charset=utf-8"],
                vec![],
                "config.yaml:15:5: routes[3]"
            ),
            (
                "https://b.example.com",
                "/*",
                vec!["http://127.0.0.1:9000 (weight 1)"],
                vec!["public"],
                "config.yaml:2:5: routes[0]"
            ),
            (
                "https://*.example.com",
                "/*",
                vec!["http://127.0.0.1:9001 (weight 3)", "http://127.0.0.1:9002 (weight 1)"],
                vec!["websockets"],
                "config.yaml:5:5: routes[1]"
            ),
        ]
    );
    assert_eq!(rows[1]["port"], 8443);
    assert_eq!(rows[1]["action"], "respond");
    assert_eq!(rows[0]["action"], "forward");
    assert_eq!(rows[0]["name"], "a.example.com/api/*");
}

#[test]
fn routes_shows_a_regex_rule() {
    let dir = dir_with(
        "routes:\n  - from: https://a.example.com\n    regex: \"/items/[0-9]+\"\n    to: h2c://127.0.0.1:50051\n",
        &[],
    );
    let (code, stdout, _) = run_cli(&["routes", "--config", "config.yaml", "-o", "json"], dir.path());
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("a JSON array");
    let path = rows[0]["path"].as_str().expect("path");
    assert!(path.starts_with('~') && path.contains("/items/[0-9]+"), "path {path:?}");
    assert_eq!(rows[0]["upstreams"][0], "h2c://127.0.0.1:50051 (weight 1)");
}

#[test]
fn routes_lists_the_good_routes_and_reports_the_left_out_ones() {
    let dir = dir_with(
        "routes:\n  - from: https://a.example.com\n    to: htp://x\n  - from: https://b.example.com\n    to: http://127.0.0.1:9000\n",
        &[],
    );
    let (code, stdout, stderr) = run_cli(&["routes", "--config", "config.yaml"], dir.path());
    assert_eq!(code, 1, "a left-out route makes the exit code 1");
    assert_eq!(stderr, "config.yaml:3:5: routes[0].to: \"htp://x\" is not an http, https or h2c URL (left out)\n");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("FROM "), "{stdout}");
    assert!(lines[1].starts_with("https://b.example.com "), "{stdout}");
}

#[test]
fn routes_on_an_unusable_file_fails() {
    let dir = dir_with("adress: :8443\n", &[]);
    let (code, stdout, stderr) = run_cli(&["routes", "--config", "config.yaml"], dir.path());
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "config.yaml:1:1: adress: unknown key `adress`; did you mean `address`?\n1 problem(s)\n");
}

// ---------------------------------------------------------------------------
// --version, --help

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stdout, _) = run_cli(&["--version"], dir.path());
    assert_eq!((code, stdout.as_str()), (0, format!("postern {}\n", env!("CARGO_PKG_VERSION")).as_str()));
}

#[test]
fn help_lists_the_commands_and_examples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stdout, _) = run_cli(&["--help"], dir.path());
    assert_eq!(code, 0);
    for command in ["serve", "check", "routes"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(&format!("{command} "))), "{command}:\n{stdout}");
    }
    let examples = stdout.split_once("Examples:\n").map(|(_, e)| e).expect("an Examples: section");
    assert!(examples.contains("postern check --config"), "{examples}");
    assert!(examples.contains("postern serve --config"), "{examples}");
    // A subcommand's help explains its flags.
    let (code, stdout, _) = run_cli(&["serve", "--help"], dir.path());
    assert_eq!(code, 0);
    assert!(stdout.contains("--shutdown-grace"), "{stdout}");
    // A mistake on the command line is a usage error (exit 2), not a crash.
    let (code, _, stderr) = run_cli(&["check"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
}
