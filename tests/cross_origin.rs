//! The cross-origin guide (`examples/cross-origin`) in a real browser.
//!
//! Starts the bundled OpenID provider, the example's app and API servers
//! and one Postern per example config (the guide's `config.yaml`, each
//! solution's variant, and `demo.yaml` with everything), all on free ports
//! (the configs are templated: port, IdP, upstreams, certificate paths),
//! then runs `tests/browser/cross_origin.mjs`: Debian's Chromium signs in
//! through the IdP's login page and checks every approach, in the page and
//! at the API. Needs `/usr/bin/chromium`: run `scripts/install-test-deps.sh`.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Postern;
use support::idp::{Idp, IdpClient};
use support::node::{NodeServer, example_dir, make_certs, npm_ci_if_missing, repo, run_bounded, tail};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Phase of the browser test → example config it runs against.
const PHASES: [(&str, &str); 5] = [
    ("guide", "config.yaml"),
    ("single-domain", "single-domain.yaml"),
    ("header", "header.yaml"),
    ("shared-cookie", "shared-cookie.yaml"),
    ("demo", "demo.yaml"),
];
const CLIENT_ID: &str = "cross-origin-demo";
const CLIENT_SECRET: &str = "cross-origin-demo-secret";
const PARENT: &str = "cors.localhost";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);

/// An example config for this run: the listen port, the IdP, the upstream
/// addresses and the certificate directory replaced. Every placeholder must
/// be there, so a config that drifts fails here rather than silently.
fn template(name: &str, port: u16, idp: &str, app: &str, api: &str, certs: &Path) -> String {
    let text = std::fs::read_to_string(example_dir().join(name)).expect("read example config");
    let replacements = [
        ("http://127.0.0.1:8100", idp.to_string()),
        ("http://127.0.0.1:8101", app.to_string()),
        ("http://127.0.0.1:8102", api.to_string()),
        (":8443", format!(":{port}")),
        (".demo/", format!("{}/", certs.display())),
    ];
    let mut out = text;
    for (from, to) in replacements {
        assert!(out.contains(from), "{name} has no {from:?}");
        out = out.replace(from, &to);
    }
    out
}

#[test]
fn example_configs_pass_postern_check_and_keep_the_guide() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(&dir.path().join(".demo"), PARENT);
    for (_, name) in PHASES {
        std::fs::copy(example_dir().join(name), dir.path().join(name)).expect("copy config");
        let path = dir.path().join(name);
        let (code, stdout, stderr) =
            support::run_cli(&["check", "--config", path.to_str().expect("utf-8 path")], dir.path());
        assert_eq!(code, 0, "postern check {name}:\n{stdout}{stderr}");
    }
    // The problem is shown with the guide's config as it is: its routes and
    // headers, no shared cookie, the cookie hidden from JavaScript.
    let guide = std::fs::read_to_string(example_dir().join("config.yaml")).expect("read config.yaml");
    for line in [
        "cookie_secret: V2JBZk0zWGtsL29UcFUvWjVDWWQ2UHExNXJ0b2VhcDI=",
        "  - from: https://api.cors.localhost\n",
        "    cors_allow_preflight: true\n",
        "      'Access-Control-Allow-Credentials': 'true'\n",
        "      'Access-Control-Allow-Origin': 'https://app.cors.localhost:8443'\n",
        "      'Access-Control-Allow-Headers': 'X-Pomerium-Authorization'\n",
        "  - from: https://app.cors.localhost\n",
    ] {
        assert!(guide.contains(line), "config.yaml lost the guide's {line:?}");
    }
    let settings: Vec<&str> = guide.lines().filter(|l| !l.starts_with('#') && !l.starts_with(' ')).collect();
    assert!(!settings.iter().any(|l| l.starts_with("cookie_domain") || l.starts_with("cookie_http_only")), "{guide}");
}

#[test]
fn cross_origin_guide_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-test-deps.sh (installs Debian's chromium and the npm packages)"
    );
    npm_ci_if_missing(&repo().join("tests/browser"), "playwright-core");
    npm_ci_if_missing(&example_dir(), "jose");
    let started = Instant::now();

    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join(".demo");
    make_certs(&certs, PARENT);
    let ports: Vec<u16> = PHASES.iter().map(|_| support::free_port()).collect();
    let auth = |port: u16| format!("https://authenticate.{PARENT}:{port}");

    let mut client = IdpClient::new(
        CLIENT_ID,
        CLIENT_SECRET,
        &format!("{}/oauth2/callback", auth(ports[0])),
        &format!("{}/.postern/signed_out", auth(ports[0])),
    );
    for &port in &ports[1..] {
        client.redirect_uris.push(format!("{}/oauth2/callback", auth(port)));
        client.post_logout_redirect_uris.push(format!("{}/.postern/signed_out", auth(port)));
    }
    let idp = Idp::start(&[client]);

    let app = NodeServer::start("app-server.mjs", &[("PORT", "0".into())]);
    let jwks: Vec<String> = ports.iter().map(|&p| format!("{}/.well-known/postern/jwks.json", auth(p))).collect();
    let api = NodeServer::start(
        "api-server.mjs",
        &[
            ("PORT", "0".into()),
            ("ADMIN_PORT", "0".into()),
            ("POSTERN_JWKS_URLS", jwks.join(",")),
            ("POSTERN_CA", certs.join("ca.pem").display().to_string()),
        ],
    );

    let posterns: Vec<(&str, Postern)> = PHASES
        .iter()
        .zip(&ports)
        .map(|(&(phase, file), &port)| {
            let config = template(file, port, &idp.issuer, &app.url("app"), &api.url("api"), &certs);
            (phase, Postern::start(&config))
        })
        .collect();
    let phases: Vec<String> = posterns.iter().map(|(phase, p)| format!("{phase}={}", p.addr.port())).collect();
    println!("servers up in {:.1}s: {}", started.elapsed().as_secs_f64(), phases.join(", "));

    let browser_started = Instant::now();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/browser/cross_origin.mjs"))
        .current_dir(repo())
        .env("CROSS_ORIGIN_PORTS", phases.join(","))
        .env("CROSS_ORIGIN_PARENT", PARENT)
        .env("API_ADMIN_URL", api.url("admin"))
        .env("CHROMIUM", CHROMIUM)
        .env("BROWSER_TEST_TIMEOUT_MS", (BROWSER_TIMEOUT.as_millis() - 10_000).to_string());
    let (code, output) = run_bounded(command, BROWSER_TIMEOUT);
    println!("---- tests/browser/cross_origin.mjs ----\n{output}\n---- end ----");
    println!(
        "browser test: {:.1}s (whole test {:.1}s)",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if code != Some(0) {
        let mut report = String::new();
        for (phase, p) in &posterns {
            report.push_str(&format!("---- postern {phase} (last lines) ----\n{}\n", tail(&p.logs(), 40)));
        }
        report.push_str(&format!("---- api-server ----\n{}\n", api.logs()));
        report.push_str(&format!("---- app-server ----\n{}\n", app.logs()));
        report.push_str(&format!("---- IdP (last lines) ----\n{}\n", tail(&idp.logs(), 40)));
        let _ = std::io::stderr().write_all(report.as_bytes());
        panic!("the browser test failed (exit {code:?}); its output is above");
    }
}
