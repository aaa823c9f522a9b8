use std::path::Path;

use super::*;

fn parse_ok(text: &str) -> Config {
    parse("config.yaml", text, Path::new(".")).expect("config parses")
}

fn problems_of(text: &str) -> Vec<String> {
    match parse("config.yaml", text, Path::new(".")) {
        Ok(c) => c.problems.iter().map(ToString::to_string).collect(),
        Err(Error::Invalid { problems: p, .. }) => p.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn reads_settings_and_routes() {
    let c = parse_ok(
        "address: :8443\ntrusted_proxies: [10.0.0.0/8, 192.168.1.1]\ndefault_upstream_timeout: 1m\n\
         routes:\n  - from: https://a.example.com\n    to:\n      - http://b:80,2\n      - http://c:80\n    timeout: 1h30m\n",
    );
    assert_eq!(c.settings.address, "0.0.0.0:8443".parse().expect("addr"));
    assert_eq!(c.settings.trusted_proxies.len(), 2);
    assert_eq!(c.settings.default_upstream_timeout, std::time::Duration::from_secs(60));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].to, vec!["http://b:80,2".to_string(), "http://c:80".to_string()]);
    assert_eq!(c.routes[0].timeout, Some(std::time::Duration::from_secs(5400)));
    assert!(c.problems.is_empty());
}

#[test]
fn a_bad_route_is_reported_with_its_position_and_left_out() {
    let c = parse_ok(
        "routes:\n  - from: https://a\n    to: http://b\n  - from: https://c\n    to: http://d\n    timeout: soon\n  - from: https://e\n    to: http://f\n",
    );
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].from, "https://e");
    assert_eq!(c.problems.len(), 1);
    let p = c.problems[0].to_string();
    assert!(p.starts_with("config.yaml:6:5: routes[1].timeout: invalid duration \"soon\""), "{p}");
}

#[test]
fn every_unknown_key_is_reported_with_a_suggestion() {
    let p = problems_of("adress: :443\nroutes:\n  - from: https://a\n    too: http://b\n    respnse: {status: 200}\n");
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(p[0], "config.yaml:1:1: adress: unknown key `adress`; did you mean `address`?");
    assert!(p.iter().any(|m| m == "config.yaml:4:5: routes[0].too: unknown key `too`; did you mean `to`?"), "{p:#?}");
    assert!(
        p.iter().any(|m| m.contains("routes[0].respnse: unknown key `respnse`; did you mean `response`?")),
        "{p:#?}"
    );
}

#[test]
fn nested_unknown_keys_are_found() {
    let p = problems_of("routes:\n  - from: https://a\n    response:\n      staus: 200\n");
    assert_eq!(p, vec!["config.yaml:4:7: routes[0].response.staus: unknown key `staus`; did you mean `status`?"]);
}

#[test]
fn bad_settings_make_the_file_invalid_but_routes_are_still_checked() {
    let err =
        parse("c.yaml", "address: nowhere\nroutes:\n  - to: http://x\n", Path::new(".")).expect_err("bad address");
    let Error::Invalid { problems, .. } = err else { panic!("expected Invalid, got {err}") };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text[0].starts_with("c.yaml:1:1: address: \"nowhere\" is not a listen address"), "{text:#?}");
    assert_eq!(text[1], "c.yaml:3:5: routes[0]: route has no `from`");
}

#[test]
fn type_errors_name_the_key() {
    let p = problems_of("insecure_server: maybe\n");
    assert_eq!(p, vec!["config.yaml:1:1: insecure_server: string \"maybe\", expected true or false"]);
    let p = problems_of("routes: {from: x}\n");
    assert_eq!(p, vec!["config.yaml:1:1: routes: expected a list of routes, found a mapping"]);
    let p = problems_of("routes:\n  - just a string\n");
    assert_eq!(p, vec!["config.yaml:2:5: routes[0]: a route must be a mapping, found a string"]);
}

#[test]
fn header_values_accept_any_scalar() {
    let c =
        parse_ok("routes:\n  - from: https://a\n    to: http://b\n    set_request_headers: {X-Count: 1, X-On: true}\n");
    assert_eq!(c.routes[0].set_request_headers["X-Count"], "1");
    assert_eq!(c.routes[0].set_request_headers["X-On"], "true");
}

#[test]
fn certificate_files_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).expect("cert");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write");
    let c = parse("c.yaml", "certificate_file: cert.pem\ncertificate_key_file: key.pem\n", dir.path()).expect("loads");
    assert_eq!(c.settings.certificates.len(), 1);
    let err =
        parse("c.yaml", "certificates:\n  - cert: missing.pem\n    key: key.pem\n", dir.path()).expect_err("missing");
    let Error::Invalid { problems: p, .. } = err else { panic!("expected Invalid") };
    assert!(p[0].to_string().starts_with("c.yaml:2:5: certificates[0].cert: cannot read"), "{}", p[0]);
}

#[test]
fn syntax_errors_have_a_position() {
    let err = parse("c.yaml", "routes:\n  - from: [unclosed\n", Path::new(".")).expect_err("syntax");
    let msg = err.to_string();
    assert!(msg.starts_with("c.yaml:3:"), "{msg}");
    assert!(msg.contains("YAML syntax error"), "{msg}");
}

#[test]
fn listen_addresses_in_go_style() {
    assert_eq!(parse_listen_address(":443"), Ok("0.0.0.0:443".parse().expect("addr")));
    assert_eq!(parse_listen_address("[::1]:8443"), Ok("[::1]:8443".parse().expect("addr")));
    assert!(parse_listen_address("localhost:8080").is_ok());
    assert!(parse_listen_address("8080").is_err());
}

#[test]
fn kubernetes_settings_are_checked_like_the_rest() {
    let c = parse_ok(
        "kubernetes:\n  enabled: true\n  namespaces: [web, api]\n  publish_service: ingress/postern\n  \
         route_defaults:\n    allow_any_authenticated_user: true\n    timeout: 10s\n",
    );
    let k = &c.settings.kubernetes;
    assert!(k.enabled && k.leader_election);
    assert_eq!(k.ingress_class, "postern");
    assert_eq!(k.controller_name, "postern.dev/ingress-controller");
    assert_eq!(k.namespaces, vec!["web".to_string(), "api".to_string()]);
    assert_eq!(k.publish, Some(Publish::Service { namespace: "ingress".into(), name: "postern".into() }));
    assert_eq!(k.route_defaults["timeout"], serde_json::json!("10s"));

    let problems = problems_of(
        "kubernetes:\n  enabled: true\n  ingres_class: x\n  namespaces: [Bad_NS]\n  publish_service: nope\n  \
         route_defaults:\n    timeout: soon\n    to: http://x\n",
    );
    let text = problems.join("\n");
    assert!(
        text.contains(
            "config.yaml:3:3: kubernetes.ingres_class: unknown key `ingres_class`; did you mean `ingress_class`?"
        ),
        "{text}"
    );
    assert!(text.contains("kubernetes.namespaces[0]: \"Bad_NS\" is not a namespace name"), "{text}");
    assert!(text.contains("kubernetes.publish_service: \"nope\" must be namespace/name of a Service"), "{text}");
    assert!(text.contains("kubernetes.route_defaults.to: is set by each object, not as a default"), "{text}");
    let problems = problems_of("kubernetes:\n  route_defaults:\n    timeout: soon\n");
    assert!(problems.iter().any(|p| p.contains("config.yaml:3:5: kubernetes.route_defaults.timeout") && p.contains("invalid duration")), "{problems:?}");
}

#[test]
fn a_sec1_signing_key_is_taken_as_the_same_key_in_pkcs8_form() {
    use p256::pkcs8::DecodePrivateKey;
    let pkcs8 = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let sec1 = p256::SecretKey::from_pkcs8_pem(&pkcs8)
        .expect("parse")
        .to_sec1_pem(p256::pkcs8::LineEnding::LF)
        .expect("sec1")
        .to_string();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let from_sec1 = ec_key_as_pkcs8(&sec1).expect("a SEC1 key is accepted");
    let again = p256::SecretKey::from_pkcs8_pem(&from_sec1).expect("PKCS#8 out");
    assert_eq!(again, p256::SecretKey::from_pkcs8_pem(&pkcs8).expect("pkcs8"), "the same key");
    assert_eq!(ec_key_as_pkcs8(&pkcs8).as_deref(), Some(pkcs8.as_str()), "PKCS#8 passes through");
    assert!(ec_key_as_pkcs8("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n").is_none());
}

#[test]
fn limit_settings_parse_with_units_and_defaults() {
    let c = parse_ok(
        "max_uri_bytes: 4k\nmax_header_bytes: 2048\nmax_header_list_bytes: 16KiB\nmax_header_count: 20\n\
         header_read_timeout: 300ms\nkeepalive_timeout: 0\nmax_connections: 5\nmax_concurrent_streams: 8\n\
         default_max_request_body: 1MiB\nrequest_body_timeout: 2s\n\
         routes:\n  - from: https://a\n    to: http://b\n    max_request_body: 10\n",
    );
    let l = &c.settings.limits;
    assert_eq!((l.max_uri_bytes, l.max_header_bytes, l.max_header_list_bytes), (4096, 2048, 16384));
    assert_eq!((l.max_header_count, l.max_connections, l.max_concurrent_streams), (20, 5, 8));
    assert_eq!(l.header_read_timeout, std::time::Duration::from_millis(300));
    assert_eq!(l.keepalive_timeout, std::time::Duration::ZERO);
    assert_eq!(l.default_max_request_body, 1 << 20);
    assert_eq!(l.request_body_timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.routes[0].max_request_body, Some(10));
    assert_eq!(parse_ok("routes: []\n").settings.limits, Limits::default());
}

#[test]
fn bad_limit_settings_name_the_key() {
    let p = problems_of("max_header_list_bytes: 4096\nheader_read_timeout: 0\n");
    assert!(p.iter().any(|m| m.contains("max_header_list_bytes: must be at least 8192, found 4096")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("header_read_timeout: must be more than 0")), "{p:#?}");
    let p = problems_of("max_uri_bytes: lots\n");
    assert!(p.iter().any(|m| m.contains("max_uri_bytes") && m.contains("invalid size \"lots\"")), "{p:#?}");
}

#[test]
fn max_request_body_from_an_annotation_or_a_route_object() {
    // Annotations map route keys generically, so `postern.dev/max_request_body` exists.
    assert!(route_keys().contains(&"max_request_body"));
    let origin = Origin::Object { kind: "Ingress", namespace: "default".into(), name: "app".into() };
    let keys = |value: serde_json::Value| {
        let mut m = serde_json::Map::new();
        m.insert("from".into(), "https://a.example.com".into());
        m.insert("to".into(), "http://b".into());
        m.insert("allow_public_unauthenticated_access".into(), true.into());
        m.insert("max_request_body".into(), value);
        m
    };
    let mut problems = Vec::new();
    // An annotation is a string; the CRD's int-or-string may be a number.
    let spec = route_from_keys(&origin, keys("512k".into()), &mut problems).expect("valid route");
    assert_eq!(spec.max_request_body, Some(512 * 1024));
    let spec = route_from_keys(&origin, keys(1000.into()), &mut problems).expect("valid route");
    assert_eq!(spec.max_request_body, Some(1000));
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(route_from_keys(&origin, keys("huge".into()), &mut problems).is_none());
    let text = format!("{problems:?}");
    assert!(text.contains("max_request_body") && text.contains("invalid size \\\"huge\\\""), "{text}");
}

/// A fresh EC P-256 key: (PKCS#8 PEM, SEC1 PEM of the same key).
fn ec_key() -> (String, String) {
    use p256::pkcs8::DecodePrivateKey;
    let pkcs8 = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let sec1 = p256::SecretKey::from_pkcs8_pem(&pkcs8)
        .expect("parse")
        .to_sec1_pem(p256::pkcs8::LineEnding::LF)
        .expect("sec1")
        .to_string();
    (pkcs8, sec1)
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `text` as a YAML block scalar indented by `indent` spaces.
fn block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!("|\n{}", text.lines().map(|l| format!("{pad}{l}\n")).collect::<String>())
}

fn same_key(pkcs8: &Secret, pem: &str) -> bool {
    use p256::pkcs8::DecodePrivateKey;
    let ours = p256::SecretKey::from_pkcs8_pem(std::str::from_utf8(&pkcs8.0).expect("utf-8")).expect("pkcs8");
    ours == p256::SecretKey::from_pkcs8_pem(pem).expect("pem")
}

#[test]
fn previous_signing_keys_inline_in_any_form_or_a_file_each() {
    let ((a, _), (b, b_sec1), (c, _)) = (ec_key(), ec_key(), ec_key());
    let config =
        format!("signing_key: {}\nprevious_signing_keys:\n  - {}  - {}\n", b64(&a), block(&b_sec1, 4), b64(&c));
    let auth = parse_ok(&config).settings.auth;
    assert!(same_key(auth.signing_key.as_ref().expect("signing_key"), &a));
    assert_eq!(auth.previous_signing_keys.len(), 2);
    assert!(same_key(&auth.previous_signing_keys[0], &b), "SEC1 PEM in a block scalar, as PKCS#8");
    assert!(same_key(&auth.previous_signing_keys[1], &c), "base64 PEM, as Pomerium takes signing_key");

    let dir = tempfile::tempdir().expect("tempdir");
    for (name, pem) in [("a.pem", &a), ("b.pem", &b_sec1), ("c.pem", &c)] {
        std::fs::write(dir.path().join(name), pem).expect("write");
    }
    let config = "signing_key_file: a.pem\nprevious_signing_keys_file: [b.pem, c.pem]\n";
    let auth = parse("c.yaml", config, dir.path()).expect("loads").settings.auth;
    assert!(same_key(auth.signing_key.as_ref().expect("signing_key"), &a));
    assert!(same_key(&auth.previous_signing_keys[0], &b) && same_key(&auth.previous_signing_keys[1], &c));
    assert!(parse_ok(&format!("signing_key: {}\n", b64(&a))).settings.auth.previous_signing_keys.is_empty());
}

#[test]
fn bad_previous_signing_keys_are_named_by_their_index() {
    let ((a, a_sec1), (b, _)) = (ec_key(), ec_key());
    let invalid = |text: &str| match parse("config.yaml", text, Path::new(".")) {
        Err(Error::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        other => panic!("expected the file to be refused, got {other:?}"),
    };
    let (a, a_sec1, b) = (b64(&a), b64(&a_sec1), b64(&b));

    assert_eq!(
        invalid(&format!("signing_key: {a}\nprevious_signing_keys:\n  - {b}\n  - not a key\n")),
        vec![
            "config.yaml:4:5: previous_signing_keys[1]: is not an EC P-256 private key in PEM form \
             (PKCS#8 `BEGIN PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)"
        ]
    );
    assert_eq!(
        invalid(&format!("signing_key: {a}\nprevious_signing_keys:\n  - {b}\n  - {a_sec1}\n")),
        vec![
            "config.yaml:4:5: previous_signing_keys[1]: is the same key as signing_key; list the keys that signed \
             before it (or will sign after it), not the one that signs now"
        ],
        "the same key in another form is the same key"
    );
    assert_eq!(
        invalid(&format!("signing_key: {a}\nprevious_signing_keys:\n  - {b}\n  - {b}\n")),
        vec!["config.yaml:4:5: previous_signing_keys[1]: is the same key as previous_signing_keys[0]"]
    );
    assert_eq!(
        invalid(&format!("previous_signing_keys: [{b}]\n")),
        vec![
            "config.yaml:1:1: previous_signing_keys: is set but signing_key is not: previous keys are published \
             next to the key that signs; set signing_key (or signing_key_file)"
        ]
    );
    assert_eq!(
        invalid(&format!("signing_key: {a}\nprevious_signing_keys: [{b}]\nprevious_signing_keys_file: [b.pem]\n")),
        vec![
            "config.yaml:3:1: previous_signing_keys_file: set either previous_signing_keys or \
             previous_signing_keys_file, not both"
        ]
    );
    let p = invalid(&format!("signing_key: {a}\nprevious_signing_keys_file:\n  - missing.pem\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("config.yaml:3:5: previous_signing_keys_file[0]: cannot read ./missing.pem: "), "{p:?}");
    assert_eq!(
        invalid(&format!("signing_key: {a}\nprevious_signing_keys: {b}\n")),
        vec![format!("config.yaml:2:1: previous_signing_keys: string \"{b}\", expected a list")]
    );
}

/// Problems of a config file and of compiling its routes, as a reload
/// checks them.
fn problems_compiled(text: &str) -> Vec<String> {
    match parse("config.yaml", text, Path::new(".")) {
        Ok(c) => {
            let (_, compile) = crate::routes::RouteTable::compile(&c.settings, c.routes);
            c.problems.iter().chain(&compile).map(ToString::to_string).collect()
        }
        Err(Error::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

const HOST_DOMAIN: &str = "cannot be used with a __Host- cookie_name (\"__Host-postern\"): browsers drop a __Host- \
     cookie that has a Domain attribute, so the session cookie would never be kept; leave cookie_domain out (the \
     cookie is then host-only), or use a cookie_name without __Host- (such as __Secure-postern) to share the cookie \
     between hosts";

#[test]
fn a_host_cookie_name_refuses_a_cookie_domain_anywhere() {
    let ok = parse_ok("cookie_name: __Host-postern\nroutes:\n  - from: https://a.example.com\n    to: http://b\n");
    assert_eq!(ok.settings.auth.cookie.name, "__Host-postern");
    assert!(
        problems_compiled("cookie_name: __Host-postern\nroutes:\n  - from: https://a.example.com\n    to: http://b\n")
            .is_empty()
    );

    assert_eq!(
        problems_compiled("cookie_name: __Host-postern\ncookie_domain: example.com\n"),
        vec![format!("config.yaml:2:1: cookie_domain: {HOST_DOMAIN}")]
    );
    // A route's own cookie_domain: that route is left out, the others compile.
    assert_eq!(
        problems_compiled(
            "cookie_name: __Host-postern\nroutes:\n  - from: https://a.example.com\n    to: http://b\n  \
             - from: https://app.example.com\n    to: http://b\n    cookie_domain: app.example.com\n"
        ),
        vec![format!("config.yaml:7:5: routes[1].cookie_domain: {HOST_DOMAIN}")]
    );
    // A default for every cluster route: refused with the file, not per object.
    assert_eq!(
        problems_compiled(
            "cookie_name: __Host-postern\nkubernetes:\n  route_defaults:\n    cookie_domain: example.com\n"
        ),
        vec![format!("config.yaml:4:5: kubernetes.route_defaults.cookie_domain: {HOST_DOMAIN}")]
    );
    // Browsers match the prefix in any letter case, so Postern does.
    let p = problems_compiled("cookie_name: __HOST-postern\ncookie_domain: example.com\n");
    assert_eq!(
        p,
        vec![
            "config.yaml:2:1: cookie_domain: cannot be used with a __Host- cookie_name (\"__HOST-postern\", a prefix \
             browsers match in any letter case): browsers drop a __Host- cookie that has a Domain attribute, so the \
             session cookie would never be kept; leave cookie_domain out (the cookie is then host-only), or use a \
             cookie_name without __Host- (such as __Secure-postern) to share the cookie between hosts"
        ]
    );
    // __Secure- allows a Domain.
    assert!(problems_compiled("cookie_name: __Secure-postern\ncookie_domain: example.com\n").is_empty());
}

#[test]
fn a_prefixed_cookie_name_refuses_settings_that_drop_secure_or_http_only() {
    for name in ["__Host-postern", "__Secure-postern", "__Http-postern", "__Host-Http-postern"] {
        let prefix = name.rsplit_once("postern").expect("prefix").0;
        assert_eq!(
            problems_compiled(&format!("cookie_name: {name}\ninsecure_server: true\n")),
            vec![format!(
                "config.yaml:1:1: cookie_name: \"{name}\" is a {prefix} name, which browsers keep only with the \
                 Secure attribute, and Postern leaves Secure off with insecure_server: true; serve TLS, or use a \
                 cookie_name without {prefix}"
            )],
            "{name}"
        );
    }
    assert!(problems_compiled("cookie_name: _postern\ninsecure_server: true\n").is_empty());

    let http_only = |prefix: &str, name: &str| {
        format!(
            "cannot be false with a {prefix} cookie_name (\"{name}\"): browsers drop a {prefix} cookie without \
             HttpOnly; use a cookie_name without {prefix} for a cookie scripts may read"
        )
    };
    assert_eq!(
        problems_compiled("cookie_name: __Http-postern\ncookie_http_only: false\n"),
        vec![format!("config.yaml:2:1: cookie_http_only: {}", http_only("__Http-", "__Http-postern"))]
    );
    assert_eq!(
        problems_compiled(
            "cookie_name: __Host-Http-postern\nroutes:\n  - from: https://a.example.com\n    to: http://b\n    \
             cookie_http_only: false\n"
        ),
        vec![format!(
            "config.yaml:5:5: routes[0].cookie_http_only: {}",
            http_only("__Host-Http-", "__Host-Http-postern")
        )]
    );
    assert!(
        problems_compiled("cookie_name: __Host-postern\ncookie_http_only: false\n").is_empty(),
        "__Host- allows scripts"
    );
}
