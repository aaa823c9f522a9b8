//! The security catalogue (issue 17), family by family: each test sends the
//! hostile inputs of one family (or a small group) to a running Postern,
//! raw over TLS where a client library would refuse to send them, and
//! checks the safe behaviour, that nothing reached an upstream that should
//! not have, and that Postern still serves afterwards.
//!
//! Family numbers are those of the catalogue; `docs/security-catalogue.md`
//! maps all 62 of them to tests, and [`the_map_names_real_tests_and_every_family`]
//! keeps that map honest. Every test prints one `catalogue:` line with the
//! cases it tried, how many were refused, and how many were forwarded when
//! they should not have been (always 0, or the test fails).

#[path = "support/auth_env.rs"]
mod auth_env;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::Postern;
use support::upstream::{Upstream, tls_connect};

// ---------------------------------------------------------------------------
// Harness: counts, raw TLS requests, configs
// ---------------------------------------------------------------------------

/// Cases of one test: hostile inputs sent, refused, and forwarded when they
/// should not have been.
struct Tally {
    family: &'static str,
    tried: u32,
    refused: u32,
    leaked: Vec<String>,
}

impl Tally {
    fn new(family: &'static str) -> Tally {
        Tally { family, tried: 0, refused: 0, leaked: Vec::new() }
    }

    /// One hostile input: `refused` when Postern did not act on it,
    /// `leaked` (with a description) when something reached an upstream
    /// that should not have.
    fn case(&mut self, what: &str, refused: bool, leaked: bool) {
        self.tried += 1;
        if refused {
            self.refused += 1;
        }
        if leaked {
            self.leaked.push(what.to_string());
        }
    }

    /// Prints the line and fails on any leak.
    fn finish(self) {
        println!(
            "catalogue: {}: tried {}, refused {}, forwarded-when-they-should-not {}",
            self.family,
            self.tried,
            self.refused,
            self.leaked.len()
        );
        assert!(self.leaked.is_empty(), "{}: forwarded when they should not have been: {:?}", self.family, self.leaked);
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is over TLS (SNI `sni`, HTTP/1.1) and reads until the
/// server closes or 10 s pass; `None` if no response head came back (the
/// connection was closed on us).
async fn raw_tls(addr: SocketAddr, sni: &str, request: &[u8]) -> Option<Raw> {
    let mut tls = tls_connect(addr, sni, &[b"http/1.1"]).await.expect("TLS to Postern");
    tls.write_all(request).await.expect("write request");
    tls.flush().await.expect("flush");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        // One response is enough: stop at the end of its body.
        if complete(&buf) {
            break;
        }
    }
    parse(&buf)
}

/// Whether `buf` holds a whole response (by Content-Length, or chunked end).
fn complete(buf: &[u8]) -> bool {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let body = &buf[split + 4..];
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        return len.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}

fn parse(buf: &[u8]) -> Option<Raw> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Raw { status, head, body: buf[split + 4..].to_vec() })
}

/// A GET with extra raw header lines (each ending in CRLF).
fn get(host: &str, target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// Postern still routes: a public route answers through its upstream.
async fn still_serves(p: &Postern, up: &Upstream, host: &str) {
    let before = up.seen().len();
    let resp = p.client().get(p.url(host, "/still-serving")).send().await.expect("Postern still answers");
    assert_eq!(resp.status(), 200, "Postern still serves {host}");
    assert_eq!(up.seen().len(), before + 1, "and forwards to the upstream");
}

fn public(from: &str, to: &str, extra: &str) -> String {
    format!("  - from: {from}\n    to: {to}\n    allow_public_unauthenticated_access: true\n{extra}")
}

fn protected(from: &str, to: &str, extra: &str) -> String {
    format!("  - from: {from}\n    to: {to}\n    allowed_users: [alice@example.com]\n{extra}")
}

/// Settings that turn sign-in on against an IdP that does not answer: for
/// the pre-authentication inputs, which must be refused before any IdP work.
fn dead_idp_settings() -> String {
    let port = support::free_port();
    format!(
        "authenticate_service_url: https://authenticate.example.com\nidp_provider: oidc\n\
         idp_provider_url: http://127.0.0.1:{port}\nidp_client_id: postern\nidp_client_secret: secret\n\
         cookie_secret: {}\n",
        auth_env::COOKIE_SECRET
    )
}

// ---------------------------------------------------------------------------
// A. Route, policy and upstream agree
// ---------------------------------------------------------------------------

/// A.8 (Istio CVE-2021-39155): `Httpbin.Foo`, `host.`, `host:port`: host
/// matching is case-insensitive and port-normalized in the router and in
/// policy alike, so a spelling of a protected host never reaches a public
/// route or the upstream without a session.
#[tokio::test]
async fn host_spellings_match_the_same_route_and_the_same_policy() {
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}",
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let port = p.addr.port();
    let mut tally = Tally::new("A.8 host spellings");
    for host in [
        "APP.EXAMPLE.COM".to_string(),
        "App.Example.Com".into(),
        "app.example.com.".into(),
        "APP.example.com.".into(),
        format!("app.example.com:{port}"),
        format!("App.Example.COM.:{port}"),
        "app.example.com:443".into(),
        "app.example.com:00443".into(),
    ] {
        let before = up.seen().len();
        let r = raw_tls(p.addr, "app.example.com", &get(&host, "/secret", "")).await;
        let status = r.as_ref().map_or(0, |r| r.status);
        let forwarded = up.seen().len() > before;
        // 401 from the policy of the protected route, or a 400/404 for a
        // spelling Postern refuses outright; never the upstream.
        tally.case(&host, status != 200, forwarded);
        assert!(matches!(status, 0 | 400 | 401 | 404 | 421), "{host}: {status}");
    }
    // The same spellings of the public host reach its route (the router
    // agrees with itself), so the refusals above are the policy's.
    for host in ["PUB.EXAMPLE.COM".to_string(), "pub.example.com.".into(), format!("Pub.Example.Com:{port}")] {
        let before = up.seen().len();
        let r = raw_tls(p.addr, "pub.example.com", &get(&host, "/open", "")).await.expect("a response");
        assert_eq!(r.status, 200, "{host}: {}", r.head);
        assert_eq!(up.seen().len(), before + 1, "{host}");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// A.10 (Pomerium CVE-2022-24797): `/metrics`, `/debug/pprof` and the other
/// admin paths are not on the public listener; they live on
/// `metrics_address` only.
#[tokio::test]
async fn admin_and_debug_paths_are_not_on_the_public_listener() {
    let up = Upstream::start("up").await;
    let config = format!(
        "metrics_address: 127.0.0.1:0\nroutes:\n{}{}",
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("A.10 admin paths");
    let paths = [
        "/metrics",
        "/healthz",
        "/readyz",
        "/debug/pprof/",
        "/debug/pprof/heap",
        "/debug/vars",
        "/.postern/metrics",
        "/.postern/debug",
        "/stats",
        "/server_info",
        "/config_dump",
    ];
    for path in paths {
        for host in ["app.example.com", "unknown.example.com", "127.0.0.1"] {
            let before = up.seen().len();
            let r = raw_tls(p.addr, "app.example.com", &get(host, path, "")).await;
            let forwarded = up.seen().len() > before;
            let text = r.as_ref().map(Raw::body_text).unwrap_or_default();
            let admin = text.contains("postern_http_requests_total") || text.trim() == "ok" || text.contains("ready");
            let what = format!("{host}{path}");
            tally.case(&what, !admin, forwarded);
            assert!(!admin, "{what}: the public listener answered an admin path: {text}");
        }
        // On a public route the path is the app's: it goes to the upstream,
        // never to Postern's admin handler (`/.postern/` is Postern's own
        // endpoint prefix on every route host, which has no admin paths).
        let r = raw_tls(p.addr, "pub.example.com", &get("pub.example.com", path, "")).await.expect("a response");
        assert!(!r.body_text().contains("postern_http_requests_total"), "{path} on a public route");
        if !path.starts_with("/.postern/") {
            assert_eq!(r.header("x-upstream").as_deref(), Some("up"), "{path} on a public route is the upstream's");
        } else {
            assert!(matches!(r.status, 400 | 404), "{path}: {}", r.head);
        }
    }
    // The admin listener itself works.
    let (status, body) = support::get_plain(p.metrics.expect("metrics listener"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("postern_"), "{body}");
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// A.11 (oauth2-proxy CVE-2026-34457): a health-check `User-Agent` on a
/// protected path does not skip authentication; nothing skips it by a
/// header alone.
#[tokio::test]
async fn a_health_check_user_agent_does_not_skip_authentication() {
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}",
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("A.11 health-check user agents");
    let agents = [
        "kube-probe/1.31",
        "GoogleHC/1.0",
        "ELB-HealthChecker/2.0",
        "Amazon-Route53-Health-Check-Service",
        "Consul Health Check",
        "Envoy/HC",
        "oauth2-proxy health check",
    ];
    for agent in agents {
        for path in ["/", "/ping", "/healthz", "/readyz", "/admin"] {
            let before = up.seen().len();
            let r =
                raw_tls(p.addr, "app.example.com", &get("app.example.com", path, &format!("User-Agent: {agent}\r\n")))
                    .await
                    .expect("a response");
            let forwarded = up.seen().len() > before;
            tally.case(&format!("{agent} {path}"), r.status == 401, forwarded);
            assert_eq!(r.status, 401, "{agent} {path}: {}", r.head);
        }
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

// ---------------------------------------------------------------------------
// B. Header trust
// ---------------------------------------------------------------------------

/// B.12 (oauth2-proxy CVE-2026-40575 and its incomplete fix CVE-2026-76835;
/// Envoy CVE-2023-27487, CVE-2024-45806): `X-Original-URL`,
/// `X-Rewrite-URL`, `x-envoy-original-path`, `X-Forwarded-Uri/Host/Proto`,
/// `X-Original-Method` from a client (the default trust set is empty) do
/// not change which route or policy applies, nor what the upstream is told.
#[tokio::test]
async fn rewrite_and_forwarded_headers_from_a_client_do_not_steer_routing_or_policy() {
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}{}",
        public("https://app.example.com", &up.url(), "    prefix: /public\n"),
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("B.12 rewrite and forwarded headers");
    let steering = [
        "X-Original-URL: /public",
        "X-Rewrite-URL: /public",
        "x-envoy-original-path: /public",
        "X-Forwarded-Uri: /public",
        "X-Forwarded-Prefix: /public",
        "X-Forwarded-Path: /public",
        "X-Forwarded-Host: pub.example.com",
        "X-Forwarded-Server: pub.example.com",
        "X-Host: pub.example.com",
        "Forwarded: host=pub.example.com;proto=https",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Scheme: http",
        "X-Forwarded-Port: 80",
        "X-Original-Method: OPTIONS",
        "X-HTTP-Method-Override: OPTIONS",
        "X-Forwarded-For: 10.0.0.1",
        "X-Real-IP: 10.0.0.1",
        "X-Envoy-Internal: true",
    ];
    for line in steering {
        let before = up.seen().len();
        let r = raw_tls(p.addr, "app.example.com", &get("app.example.com", "/admin", &format!("{line}\r\n")))
            .await
            .expect("a response");
        let forwarded = up.seen().len() > before;
        tally.case(line, r.status == 401, forwarded);
        assert_eq!(r.status, 401, "{line}: {}", r.head);
    }
    let all: String = steering.iter().map(|l| format!("{l}\r\n")).collect();
    let before = up.seen().len();
    let r = raw_tls(p.addr, "app.example.com", &get("app.example.com", "/admin", &all)).await.expect("a response");
    tally.case("all at once", r.status == 401, up.seen().len() > before);
    assert_eq!(r.status, 401);

    // On the public path the request is forwarded as it was addressed, and
    // the forwarded headers are Postern's, not the client's.
    let r = raw_tls(p.addr, "app.example.com", &get("app.example.com", "/public/x", &all)).await.expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.last();
    assert_eq!(seen.target, "/public/x");
    let h = |n: &str| seen.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{:?}", seen.headers);
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("https"));
    assert!(h("x-forwarded-host").is_some_and(|v| v.starts_with("app.example.com")), "{:?}", seen.headers);
    assert_eq!(h("forwarded"), None);
    assert_eq!(h("x-real-ip"), None);
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// B.13, B.14, B.15 (oauth2-proxy PR #624, CVE-2025-64484; Pomerium's
/// threat model): identity headers a client sends, in any spelling
/// (`X_Forwarded_User`, `x-FORWARDED-user`), and Postern's session cookie
/// never reach the upstream, on public routes and on forwarded CORS
/// preflights too (the signed-in cases are in
/// `auth_attacks::client_sent_identity_headers_never_reach_the_upstream`).
#[tokio::test]
async fn identity_headers_and_the_session_cookie_are_stripped_on_public_and_preflight_routes() {
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}",
        public("https://pub.example.com", &up.url(), ""),
        protected("https://api.example.com", &up.url(), "    cors_allow_preflight: true\n"),
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("B.13-B.15 identity headers and cookie");
    let forged = [
        "X-Postern-Jwt-Assertion",
        "X-Pomerium-Jwt-Assertion",
        "X_Postern_Jwt_Assertion",
        "x-pomerium_claim-email",
        "X-Postern-User",
        "X-Forwarded-User",
        "x-FORWARDED-user",
        "X_Forwarded_User",
        "X-Forwarded-Email",
        "X_Forwarded_Email",
        "X-Forwarded-Groups",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Access-Token",
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X_Auth_Request_Email",
        "X-Auth-Request-Groups",
        "X-Auth-Request-Access-Token",
    ];
    let lines: String = forged.iter().map(|n| format!("{n}: mallory@example.com\r\n")).collect();
    let cookie = format!("Cookie: theme=dark; {}=forged-session; lang=en\r\n", auth_env::COOKIE_NAME);
    let requests = [
        ("public GET", "pub.example.com", get("pub.example.com", "/h", &format!("{lines}{cookie}"))),
        (
            "forwarded preflight",
            "api.example.com",
            format!(
                "OPTIONS /h HTTP/1.1\r\nHost: api.example.com\r\nOrigin: https://app.example.com\r\n\
                 Access-Control-Request-Method: POST\r\n{lines}{cookie}Connection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
    ];
    for (what, sni, request) in requests {
        let before = up.seen().len();
        let r = raw_tls(p.addr, sni, &request).await.expect("a response");
        assert!(r.status < 300, "{what}: {}", r.head);
        assert_eq!(up.seen().len(), before + 1, "{what} is forwarded");
        let seen = up.last();
        for name in forged {
            let normal = name.to_ascii_lowercase().replace('_', "-");
            let reached = seen.headers.keys().any(|k| k.as_str().replace('_', "-") == normal);
            tally.case(&format!("{what}: {name}"), !reached, reached);
        }
        let cookies: Vec<&str> = seen.headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).collect();
        let leaked = cookies.iter().any(|c| c.contains(auth_env::COOKIE_NAME));
        tally.case(&format!("{what}: session cookie"), !leaked, leaked);
        assert_eq!(cookies.join("; "), "theme=dark; lang=en", "{what}: the app's own cookies stay");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// B.17 (Envoy CVE-2023-27493, CVE-2019-9900): header values with CR, LF or
/// NUL are refused where Postern builds headers from configuration (a
/// route's `set_request_headers`, `set_response_headers`); claims reach
/// upstreams only inside the signed assertion (base64url), never raw.
#[tokio::test]
async fn header_values_with_cr_lf_or_nul_are_refused() {
    let up = Upstream::start("up").await;
    let mut tally = Tally::new("B.17 CR/LF/NUL header values");
    let bad = [
        ("set_request_headers", "\"a\\r\\nX-Injected: 1\""),
        ("set_request_headers", "\"a\\nX-Injected: 1\""),
        ("set_request_headers", "\"a\\u0000b\""),
        ("set_response_headers", "\"a\\r\\nSet-Cookie: evil=1\""),
        ("set_response_headers", "\"a\\rb\""),
    ];
    let mut routes = String::new();
    for (i, (field, value)) in bad.iter().enumerate() {
        routes.push_str(&public(
            &format!("https://bad{i}.example.com"),
            &up.url(),
            &format!("    {field}:\n      X-Team: {value}\n"),
        ));
    }
    routes.push_str(&public("https://pub.example.com", &up.url(), ""));
    let p = Postern::start(&format!("routes:\n{routes}"));
    for (i, (field, value)) in bad.iter().enumerate() {
        let host = format!("bad{i}.example.com");
        let before = up.seen().len();
        let r = raw_tls(p.addr, &host, &get(&host, "/", "")).await;
        let forwarded = up.seen().len() > before;
        let injected = r.as_ref().is_some_and(|r| {
            let head = r.head.to_ascii_lowercase();
            head.contains("x-injected") || head.contains("evil=1")
        });
        let status = r.as_ref().map_or(0, |r| r.status);
        tally.case(&format!("{field} {value}"), status != 200, forwarded || injected);
        assert_eq!(status, 404, "{host}: the route with {field} {value} is left out");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// B.18 (Envoy CVE-2024-23326): an upstream that answers an Upgrade request
/// with 200 instead of 101 does not get a tunnel: the next request on the
/// client's connection is parsed as HTTP again and routed on its own,
/// never written raw to the first upstream's socket.
#[tokio::test]
async fn an_upgrade_answered_with_200_does_not_become_a_tunnel() {
    // An upstream that answers everything with 200 and records raw bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake = listener.local_addr().expect("addr");
    let bytes = Arc::new(Mutex::new(Vec::<u8>::new()));
    let record = bytes.clone();
    let task = tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut answered = false;
                while Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            record.lock().expect("lock").extend_from_slice(&buf[..n]);
                            if !answered {
                                answered = true;
                                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    let other = Upstream::start("other").await;
    let config = format!(
        "routes:\n{}{}",
        public("https://ws.example.com", &format!("http://{fake}"), "    allow_websockets: true\n"),
        public("https://other.example.com", &other.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("B.18 upgrade answered 200");
    let upgrade = "GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n";
    let mut tls = tls_connect(p.addr, "ws.example.com", &[b"http/1.1"]).await.expect("TLS");
    tls.write_all(upgrade.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !complete(&buf) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let first = parse(&buf).expect("a response to the upgrade");
    assert_eq!(first.status, 200, "{}", first.head);
    // The next bytes: a second request, which a tunnel would pass raw.
    let _ = tls.write_all(smuggled.as_bytes()).await;
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let raw_seen = String::from_utf8_lossy(&bytes.lock().expect("lock")).into_owned();
    let tunnelled = raw_seen.contains("/smuggled");
    // Either Postern closed the connection or it routed the second request
    // to its own route; the first upstream never saw it.
    let second = parse(&rest);
    if let Some(second) = &second {
        assert_eq!(second.header("x-upstream").as_deref(), Some("other"), "{}", second.head);
    }
    tally.case("request after a 200 to Upgrade", !tunnelled, tunnelled);
    assert!(!tunnelled, "the bytes after a refused upgrade were tunnelled: {raw_seen}");
    still_serves(&p, &other, "other.example.com").await;
    task.abort();
    tally.finish();
}

// ---------------------------------------------------------------------------
// C. Denial of service before authentication
// ---------------------------------------------------------------------------

/// C.23 (Pomerium CVE-2026-50285) and C.24 (Envoy CVE-2023-27496,
/// CVE-2025-64527; Pomerium CVE-2021-39162): oversized or missing
/// pre-authentication inputs (state, sign-in request, callback token,
/// session cookie, two `Authorization` headers while the IdP is down) are
/// refused with an error response quickly, without IdP work, and never
/// crash Postern.
#[tokio::test]
async fn oversized_or_missing_sign_in_inputs_are_refused_quickly() {
    let up = Upstream::start("up").await;
    let config = format!(
        "{}routes:\n{}{}",
        dead_idp_settings(),
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("C.23-C.24 pre-auth inputs");
    let big = "A".repeat(60 * 1024);
    let junk = "eyJ".repeat(2 * 1024);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "callback without state or code",
            "authenticate.example.com",
            get("authenticate.example.com", "/oauth2/callback", ""),
        ),
        (
            "callback without code",
            "authenticate.example.com",
            get("authenticate.example.com", "/oauth2/callback?state=abc", ""),
        ),
        (
            "callback without state",
            "authenticate.example.com",
            get("authenticate.example.com", "/oauth2/callback?code=abc", ""),
        ),
        (
            "callback with empty state",
            "authenticate.example.com",
            get("authenticate.example.com", "/oauth2/callback?state=&code=", ""),
        ),
        (
            "callback with an IdP error",
            "authenticate.example.com",
            get("authenticate.example.com", "/oauth2/callback?error=access_denied&state=x", ""),
        ),
        (
            "60 KiB state",
            "authenticate.example.com",
            get("authenticate.example.com", &format!("/oauth2/callback?code=c&state={big}"), ""),
        ),
        (
            "6 KiB junk state",
            "authenticate.example.com",
            get("authenticate.example.com", &format!("/oauth2/callback?code=c&state={junk}"), ""),
        ),
        (
            "60 KiB sign-in request",
            "authenticate.example.com",
            get("authenticate.example.com", &format!("/.postern/sign_in?r={big}"), ""),
        ),
        (
            "sign-in without a request",
            "authenticate.example.com",
            get("authenticate.example.com", "/.postern/sign_in", ""),
        ),
        (
            "sign-out junk request",
            "authenticate.example.com",
            get("authenticate.example.com", &format!("/.postern/sign_out?r={junk}"), ""),
        ),
        (
            "60 KiB callback token",
            "app.example.com",
            get("app.example.com", &format!("/.postern/callback?token={big}"), ""),
        ),
        ("callback without a token", "app.example.com", get("app.example.com", "/.postern/callback", "")),
        (
            "6 KiB junk session cookie",
            "app.example.com",
            get("app.example.com", "/", &format!("Cookie: _postern={junk}\r\n")),
        ),
        (
            "60 KiB session cookie",
            "app.example.com",
            get("app.example.com", "/", &format!("Cookie: _postern={big}\r\n")),
        ),
        (
            "two Authorization headers, IdP down",
            "app.example.com",
            get("app.example.com", "/", &format!("Authorization: Bearer {junk}\r\nAuthorization: Pomerium x.y.z\r\n")),
        ),
        (
            "token header junk",
            "app.example.com",
            get("app.example.com", "/", &format!("X-Pomerium-Authorization: {junk}\r\n")),
        ),
    ];
    for (what, sni, request) in cases {
        let before = up.seen().len();
        let started = Instant::now();
        let r = raw_tls(p.addr, sni, &request).await;
        let took = started.elapsed();
        let status = r.as_ref().map_or(0, |r| r.status);
        let forwarded = up.seen().len() > before;
        // A 4xx (or the connection closed for a head over the limit),
        // never a 5xx from trying the IdP, never a redirect to it.
        let refused = status == 0 || (400..500).contains(&status);
        tally.case(what, refused, forwarded);
        assert!(refused, "{what}: {status} {:?}", r.map(|r| r.head));
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// C.24, upstream side (Envoy CVE-2023-27496, CVE-2025-64527): an HTTP/2
/// upstream that answers the connection preface with SETTINGS and GOAWAY
/// in one write (or a bad SETTINGS value, a GOAWAY with an error, a stray
/// SETTINGS ack, or not HTTP/2 at all) gets the client an error response,
/// never a crash, and Postern serves the next request.
#[tokio::test]
async fn an_h2_upstream_sending_goaway_with_its_settings_is_an_error_not_a_crash() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const BAD_WINDOW: [u8; 15] = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
    const STRAY_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("SETTINGS + GOAWAY", [&SETTINGS[..], &GOAWAY[..]].concat()),
        ("SETTINGS + GOAWAY(PROTOCOL_ERROR)", [&SETTINGS[..], &GOAWAY_PROTOCOL_ERROR[..]].concat()),
        ("GOAWAY before SETTINGS", [&GOAWAY[..], &SETTINGS[..]].concat()),
        ("SETTINGS with a window over 2^31-1", BAD_WINDOW.to_vec()),
        ("stray SETTINGS ack + GOAWAY", [&STRAY_ACK[..], &GOAWAY[..]].concat()),
        ("not HTTP/2", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let current = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Vec<Vec<u8>>> = Arc::new(variants.iter().map(|(_, b)| b.clone()).collect());
    let (c, a) = (current.clone(), answers.clone());
    let task = tokio::spawn(async move {
        for _ in 0..200 {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let answer = a[c.load(Ordering::SeqCst)].clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                let _ = s.write_all(&answer).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
            });
        }
    });
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}",
        public("https://h2.example.com", &format!("h2c://{addr}"), "    timeout: 5s\n"),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("C.24 hostile h2 upstream");
    for (i, (what, _)) in variants.iter().enumerate() {
        current.store(i, Ordering::SeqCst);
        for n in 0..2 {
            let started = Instant::now();
            let r = raw_tls(p.addr, "h2.example.com", &get("h2.example.com", "/", "")).await;
            let status = r.as_ref().map_or(0, |r| r.status);
            tally.case(&format!("{what} #{n}"), (500..600).contains(&status), false);
            assert!((500..600).contains(&status), "{what}: {status} {:?}", r.map(|r| r.head));
            assert!(started.elapsed() < Duration::from_secs(8), "{what}: took {:?}", started.elapsed());
        }
        still_serves(&p, &up, "pub.example.com").await;
    }
    task.abort();
    tally.finish();
}

// ---------------------------------------------------------------------------
// D. Sign-in and sign-out redirects
// ---------------------------------------------------------------------------

/// D.26 (Pomerium CVE-2021-29651, PR #6358): sign-out ignores redirect
/// URIs the caller supplies, on the route host and on the authenticate
/// host, and never sends the browser (or a token) off the configured hosts.
#[tokio::test]
async fn sign_out_ignores_caller_supplied_redirect_uris() {
    let up = Upstream::start("up").await;
    let config = format!(
        "{}routes:\n{}{}",
        dead_idp_settings(),
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("D.26 sign-out redirects");
    let evil = "https%3A%2F%2Fevil.example.net%2Fsteal";
    let params = ["redirect_uri", "pomerium_redirect_uri", "post_logout_redirect_uri", "return_to", "rd", "next"];
    let off_host = |location: &str| {
        !(location.starts_with('/')
            || location.starts_with("https://authenticate.example.com")
            || location.starts_with("https://app.example.com"))
            || location.contains("evil.example.net")
    };
    let mut sealed = None;
    for param in params {
        let form = format!("{param}={evil}");
        let request = format!(
            "POST /.postern/sign_out?{param}={evil} HTTP/1.1\r\nHost: app.example.com\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        );
        let r = raw_tls(p.addr, "app.example.com", request.as_bytes()).await.expect("a response");
        let location = r.header("location").unwrap_or_default();
        tally.case(&format!("route host sign-out {param}"), !off_host(&location), off_host(&location));
        assert_eq!(r.status, 302, "{param}: {}", r.head);
        assert!(location.starts_with("https://authenticate.example.com/.postern/sign_out?r="), "{param}: {location}");
        sealed = Some(location);
    }
    // The authenticate host's step, with the same parameters appended.
    let sealed = sealed.expect("a sign-out hand-off");
    let path = sealed.trim_start_matches("https://authenticate.example.com");
    for param in params {
        let target = format!("{path}&{param}={evil}");
        let r = raw_tls(p.addr, "authenticate.example.com", &get("authenticate.example.com", &target, ""))
            .await
            .expect("a response");
        let location = r.header("location").unwrap_or_default();
        tally.case(&format!("authenticate host sign-out {param}"), !off_host(&location), off_host(&location));
        assert_eq!(r.status, 302, "{param}: {}", r.head);
        assert!(!location.contains("evil"), "{param}: {location}");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// D.28 (Pomerium `pkce.spec.ts`, RFC 9700), D.29 (oauth2-proxy #966),
/// D.31 (RFC 9207, RFC 9700 §4.4), D.32 (RFC 9700 §4.2) and D.33 (Pomerium CVE-2024-39315),
/// against the real IdP: every authorization request carries a PKCE S256
/// challenge, a nonce and a sealed state; a callback whose `iss` names
/// another issuer is refused before its code is redeemed (the genuine one
/// still signs in afterwards); and the user pages and `/.postern/jwt` never
/// show the IdP's ID, access or refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_pins_pkce_nonce_and_issuer_and_never_shows_idp_tokens() {
    let env = auth_env::Env::start(auth_env::TWO_HOSTS).await;
    let mut tally = Tally::new("D.28/D.29/D.31/D.33 sign-in flow");
    let browser = env.browser();
    let stop = env.url("authenticate.example.com", "/oauth2/callback?");
    let trace = support::idp::browse_until(
        &browser.client,
        &env.url("app.example.com", "/start"),
        Some(("alice", "password")),
        &env.idp,
        Some(&stop),
    )
    .await;
    let authorize = trace
        .location_starting_with(&env.idp.issuer)
        .unwrap_or_else(|| panic!("no redirect to the IdP:\n{}", trace.describe()))
        .to_string();
    let query: Vec<(String, String)> =
        reqwest::Url::parse(&authorize).expect("authorize URL").query_pairs().into_owned().collect();
    let get_param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(get_param("code_challenge_method").as_deref(), Some("S256"), "{authorize}");
    assert!(get_param("code_challenge").is_some_and(|c| c.len() >= 43), "{authorize}");
    assert!(get_param("nonce").is_some_and(|n| n.len() >= 16), "{authorize}");
    assert!(get_param("state").is_some_and(|s| s.len() >= 32), "{authorize}");
    let callback = trace
        .final_location()
        .filter(|l| l.starts_with(&stop))
        .unwrap_or_else(|| panic!("{}", trace.describe()))
        .to_string();
    let with_iss = |iss: &str| {
        let mut u = reqwest::Url::parse(&callback).expect("callback URL");
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().filter(|(k, _)| k != "iss").collect();
        u.query_pairs_mut().clear().extend_pairs(pairs).append_pair("iss", iss);
        u.to_string()
    };
    for iss in ["https://evil.example.net", "http://127.0.0.1:1", &format!("{}.evil", env.idp.issuer), ""] {
        let resp = browser.client.get(with_iss(iss)).send().await.expect("callback");
        let status = resp.status().as_u16();
        let signed_in =
            auth_env::set_cookies(resp.headers()).iter().any(|c| c.name.ends_with("_authenticate") && !c.clears());
        tally.case(&format!("callback with iss {iss:?}"), status == 400, signed_in);
        assert_eq!(status, 400, "iss {iss:?}");
    }
    // Not spent by the refusals: the genuine callback (its own iss) signs in.
    // D.32: neither callback leaks its code or state through a Referer.
    let resp = browser.client.get(&callback).send().await.expect("callback");
    assert_eq!(resp.status(), 302, "the genuine callback");
    assert_eq!(resp.headers().get("referrer-policy").map(|v| v.as_bytes()), Some(&b"no-referrer"[..]));
    let next = auth_env::location(&resp).expect("location");
    let resp = browser.client.get(&next).send().await.expect("route callback");
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers().get("referrer-policy").map(|v| v.as_bytes()), Some(&b"no-referrer"[..]));
    let token = env.session_of(&browser, "app.example.com");

    // D.33: what the user pages show.
    let client = env.client();
    let jwks = env.jwks("app.example.com").await;
    for (path, accept) in
        [("/.postern/user", "application/json"), ("/.postern/user", "text/html"), ("/.postern/jwt", "*/*")]
    {
        let resp = client
            .get(env.url("app.example.com", path))
            .header("cookie", format!("{}={token}", auth_env::COOKIE_NAME))
            .header("accept", accept)
            .send()
            .await
            .expect("user page");
        assert_eq!(resp.status(), 200, "{path} {accept}");
        let body = resp.text().await.expect("body");
        let named = ["id_token", "access_token", "refresh_token"].iter().any(|k| body.contains(k));
        // Any JWT on the page must be Postern's own assertion, not the IdP's.
        let foreign_jwt = body
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .filter(|w| w.starts_with("eyJ") && w.matches('.').count() == 2)
            .any(|jwt| !auth_env::assertion_verifies(&jwks, jwt));
        tally.case(&format!("{path} {accept}"), !named && !foreign_jwt, named || foreign_jwt);
        assert!(!named && !foreign_jwt, "{path} {accept} shows an IdP token: {body}");
    }
    let resp = client
        .get(env.url("app.example.com", "/after"))
        .header("cookie", format!("{}={token}", auth_env::COOKIE_NAME))
        .send()
        .await
        .expect("after");
    assert_eq!(resp.status(), 200, "still serving, still signed in");
    tally.finish();
}

// ---------------------------------------------------------------------------
// E. ID tokens from a hostile identity provider
// ---------------------------------------------------------------------------

/// How the hostile IdP signs the next ID token.
#[derive(Clone, Copy, Debug)]
enum Signing {
    /// ES256 with the key its JWKS publishes.
    Good,
    /// `alg: none`, no signature.
    None,
    /// HS256 keyed with the client secret the relying party holds.
    HmacClientSecret,
    /// HS256 keyed with the published public key (as PEM).
    HmacPublicKey,
    /// ES256 with a key that is not in the JWKS, under an unknown `kid`.
    UnknownKid,
    /// ES256 with a key that is not in the JWKS, `jku`/`x5u` pointing at
    /// the attacker's keys and the published `kid`.
    JkuX5u,
}

/// What the hostile IdP mints: the signing, and the claims (`$NONCE` is
/// replaced by the authorization request's nonce).
struct Mint {
    signing: Signing,
    claims: serde_json::Value,
}

/// An OpenID provider on loopback that signs whatever the test asks for:
/// discovery, JWKS, an authorize endpoint that redirects straight back
/// with a code, and a token endpoint that returns the minted ID token.
struct HostileIdp {
    issuer: String,
    mint: Arc<Mutex<Mint>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOSTILE_CLIENT_SECRET: &str = "hostile-client-secret";

impl HostileIdp {
    async fn start() -> HostileIdp {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind IdP");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let good = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("key");
        let raw = good.public_key_raw();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        }]})
        .to_string();
        let keys = Arc::new((good.serialize_pem(), other.serialize_pem(), good.public_key_pem()));
        let mint = Arc::new(Mutex::new(Mint { signing: Signing::Good, claims: serde_json::json!({}) }));
        let nonces = Arc::new(Mutex::new(std::collections::HashMap::<String, String>::new()));
        let (iss, m) = (issuer.clone(), mint.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (iss, m, keys, jwks, nonces) = (iss.clone(), m.clone(), keys.clone(), jwks.clone(), nonces.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (iss, m, keys, jwks, nonces) =
                            (iss.clone(), m.clone(), keys.clone(), jwks.clone(), nonces.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let query: std::collections::HashMap<String, String> =
                                req.uri().query().map(|q| url_pairs(q).into_iter().collect()).unwrap_or_default();
                            let mut resp = http::Response::new(String::new());
                            match path.as_str() {
                                "/.well-known/openid-configuration" => {
                                    *resp.body_mut() = serde_json::json!({
                                        "issuer": iss,
                                        "authorization_endpoint": format!("{iss}/authorize"),
                                        "token_endpoint": format!("{iss}/token"),
                                        "jwks_uri": format!("{iss}/jwks"),
                                        "response_types_supported": ["code"],
                                        "subject_types_supported": ["public"],
                                        "id_token_signing_alg_values_supported": ["ES256"],
                                    })
                                    .to_string();
                                }
                                "/jwks" => *resp.body_mut() = jwks,
                                "/authorize" => {
                                    let code = format!("code{}", nonces.lock().expect("lock").len());
                                    let nonce = query.get("nonce").cloned().unwrap_or_default();
                                    nonces.lock().expect("lock").insert(code.clone(), nonce);
                                    let back = format!(
                                        "{}?code={code}&state={}",
                                        query.get("redirect_uri").cloned().unwrap_or_default(),
                                        query.get("state").map(|s| enc(s)).unwrap_or_default()
                                    );
                                    *resp.status_mut() = http::StatusCode::FOUND;
                                    resp.headers_mut().insert("location", back.parse().expect("location"));
                                }
                                "/token" => {
                                    let body = http_body_util::BodyExt::collect(req.into_body())
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    let form: std::collections::HashMap<String, String> =
                                        url_pairs(&String::from_utf8_lossy(&body)).into_iter().collect();
                                    let nonce = form
                                        .get("code")
                                        .and_then(|c| nonces.lock().expect("lock").get(c).cloned())
                                        .unwrap_or_default();
                                    let token = mint_token(&m.lock().expect("lock"), &iss, &nonce, &keys);
                                    *resp.body_mut() = serde_json::json!({
                                        "access_token": "hostile-access-token", "token_type": "Bearer",
                                        "expires_in": 300, "id_token": token,
                                    })
                                    .to_string();
                                }
                                _ => *resp.status_mut() = http::StatusCode::NOT_FOUND,
                            }
                            resp.headers_mut().insert("content-type", "application/json".parse().expect("value"));
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        HostileIdp { issuer, mint, task }
    }

    fn set(&self, signing: Signing, claims: serde_json::Value) {
        *self.mint.lock().expect("lock") = Mint { signing, claims };
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x.invalid/?{q}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

fn enc(s: &str) -> String {
    auth_env::enc(s)
}

/// The ID token for `mint`: standard claims for `alice@corp.com` (verified,
/// `aud` our client, a fresh `iat` and `exp`, the request's nonce), with the
/// test's claims laid over them (`null` removes a claim).
fn mint_token(mint: &Mint, issuer: &str, nonce: &str, keys: &(String, String, String)) -> String {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let mut claims = serde_json::json!({
        "iss": issuer, "sub": "alice", "aud": "postern", "iat": now, "exp": now + 300,
        "nonce": nonce, "email": "alice@corp.com", "email_verified": true,
    });
    for (k, v) in mint.claims.as_object().expect("claims object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let es256 = |pem: &str, header: Header| {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"))
            .expect("sign")
    };
    let hs256 = |secret: &[u8]| {
        let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("sign")
    };
    match mint.signing {
        Signing::Good => es256(&keys.0, Header { kid: Some("k1".into()), ..Header::new(Algorithm::ES256) }),
        Signing::None => {
            let head = b64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
            format!("{head}.{}.", b64.encode(claims.to_string()))
        }
        Signing::HmacClientSecret => hs256(HOSTILE_CLIENT_SECRET.as_bytes()),
        Signing::HmacPublicKey => hs256(keys.2.as_bytes()),
        Signing::UnknownKid => es256(&keys.1, Header { kid: Some("k2".into()), ..Header::new(Algorithm::ES256) }),
        Signing::JkuX5u => es256(
            &keys.1,
            Header {
                kid: Some("k1".into()),
                jku: Some("https://evil.example.net/jwks".into()),
                x5u: Some("https://evil.example.net/cert.pem".into()),
                ..Header::new(Algorithm::ES256)
            },
        ),
    }
}

/// Follows a browser's redirects from `start` (10 hops at most) and
/// returns the last status and URL.
async fn follow(browser: &auth_env::Browser, start: &str) -> (u16, String) {
    let mut url = start.to_string();
    for _ in 0..10 {
        let resp = browser.client.get(&url).send().await.expect("hop");
        let status = resp.status().as_u16();
        match auth_env::location(&resp) {
            Some(next) if (300..400).contains(&status) => {
                url = reqwest::Url::parse(&url).expect("url").join(&next).expect("location").to_string();
            }
            _ => return (status, url),
        }
    }
    panic!("more than 10 redirects from {start}");
}

/// E.34 (libjwt CVE-2026-44699, fast-jwt CVE-2023-48223, cjwt CVE-2024-54150,
/// RFC 8725), E.35 (Keats/jsonwebtoken#329), E.36, E.39 (oauth2-proxy
/// CVE-2026-40574, CVE-2021-21411) and D.29 (oauth2-proxy #966/#967), from
/// an IdP that signs whatever it likes: `alg: none`, HS256 keyed with the
/// client secret or the public key, an unknown `kid`, `jku`/`x5u` headers,
/// a wrong or missing `iss`/`aud`, an expired token, `nbf` or `iat` in the
/// future, a wrong or missing nonce all end the sign-in without a session
/// and nothing reaches the upstream; `a@evil.com@corp.com` and an
/// unverified `corp.com` email sign in but fail the `corp.com` domain rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_a_hostile_idp_signs_are_refused() {
    use serde_json::json;
    let idp = HostileIdp::start().await;
    let up = Upstream::start("up").await;
    let port = support::free_port();
    let config = format!(
        "address: 127.0.0.1:{port}\ncookie_secret: {}\nauthenticate_service_url: https://authenticate.example.com:{port}\n\
         idp_provider: oidc\nidp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: {HOSTILE_CLIENT_SECRET}\n\
         routes:\n  - from: https://app.example.com\n    to: {}\n    allowed_domains: [corp.com]\n{}",
        auth_env::COOKIE_SECRET,
        idp.issuer,
        up.url(),
        public("https://other.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let start = format!("https://app.example.com:{port}/secret");
    let mut tally = Tally::new("E.34-E.36/E.39/D.29 hostile ID tokens");

    // Control: a well-formed token signs in and reaches the upstream.
    idp.set(Signing::Good, json!({}));
    let browser = auth_env::Browser::new(p.addr);
    let (status, url) = follow(&browser, &start).await;
    assert_eq!((status, url.as_str()), (200, start.as_str()), "the control sign-in");
    assert_eq!(up.last().target, "/secret");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let refused: Vec<(&str, Signing, serde_json::Value)> = vec![
        ("alg none", Signing::None, json!({})),
        ("HS256 with the client secret", Signing::HmacClientSecret, json!({})),
        ("HS256 with the public key", Signing::HmacPublicKey, json!({})),
        ("unknown kid", Signing::UnknownKid, json!({})),
        ("jku and x5u to the attacker's keys", Signing::JkuX5u, json!({})),
        ("wrong iss", Signing::Good, json!({"iss": "https://evil.example.net"})),
        ("iss with a trailing path", Signing::Good, json!({"iss": format!("{}/evil", idp.issuer)})),
        ("no iss", Signing::Good, json!({"iss": null})),
        ("wrong aud", Signing::Good, json!({"aud": "another-client"})),
        ("aud list without us", Signing::Good, json!({"aud": ["a", "b"]})),
        ("no aud", Signing::Good, json!({"aud": null})),
        ("expired", Signing::Good, json!({"exp": now - 600, "iat": now - 900})),
        ("no exp", Signing::Good, json!({"exp": null})),
        ("nbf an hour ahead", Signing::Good, json!({"nbf": now + 3600})),
        ("iat an hour ahead", Signing::Good, json!({"iat": now + 3600, "exp": now + 7200})),
        ("wrong nonce", Signing::Good, json!({"nonce": "another-request"})),
        ("no nonce", Signing::Good, json!({"nonce": null})),
    ];
    for (what, signing, claims) in refused {
        idp.set(signing, claims);
        let before = up.seen().len();
        let browser = auth_env::Browser::new(p.addr);
        let (status, url) = follow(&browser, &start).await;
        let forwarded = up.seen().len() > before;
        let session = browser.cookie(&start, auth_env::COOKIE_NAME).is_some();
        tally.case(what, status >= 400 && !session, forwarded || session);
        assert!(status >= 400 && !session && !forwarded, "{what}: ended {status} at {url}, session {session}");
    }
    // Signed in, but the domain rule does not match.
    for (what, claims) in [
        ("a@evil.com@corp.com", json!({"email": "a@evil.com@corp.com"})),
        ("unverified corp.com email", json!({"email": "mallory@corp.com", "email_verified": false})),
        ("corp.com as a suffix", json!({"email": "a@evilcorp.com"})),
        ("corp.com in the local part", json!({"email": "corp.com@evil.com"})),
    ] {
        idp.set(Signing::Good, claims);
        let before = up.seen().len();
        let browser = auth_env::Browser::new(p.addr);
        let (status, url) = follow(&browser, &start).await;
        let forwarded = up.seen().len() > before;
        tally.case(what, status == 403, forwarded);
        assert_eq!(status, 403, "{what}: ended at {url}");
    }
    still_serves(&p, &up, "other.example.com").await;
    tally.finish();
}

/// D.30 (oauth2-proxy GHSA-f24x-5g9q-753f): the sign-in page ends any
/// session the browser already carries on the route host (here one planted
/// by mallory), so the user who signs in ends up with their own fresh
/// session, never the planted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_page_ends_a_planted_session() {
    use serde_json::json;
    let idp = HostileIdp::start().await;
    let up = Upstream::start("up").await;
    let port = support::free_port();
    let config = format!(
        "address: 127.0.0.1:{port}\ncookie_secret: {}\nauthenticate_service_url: https://authenticate.example.com:{port}\n\
         idp_provider: oidc\nidp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: {HOSTILE_CLIENT_SECRET}\n\
         routes:\n  - from: https://app.example.com\n    to: {}\n    allow_any_authenticated_user: true\n{}",
        auth_env::COOKIE_SECRET,
        idp.issuer,
        up.url(),
        public("https://other.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("D.30 session fixation");
    let app = format!("https://app.example.com:{port}");
    // Mallory's own session.
    idp.set(Signing::Good, json!({"sub": "mallory", "email": "mallory@corp.com"}));
    let mallory = auth_env::Browser::new(p.addr);
    let (status, _) = follow(&mallory, &format!("{app}/")).await;
    assert_eq!(status, 200, "mallory signs in");
    let planted = mallory.cookie(&app, auth_env::COOKIE_NAME).expect("mallory's session");

    // The sign-in page, with mallory's session planted: it is cleared.
    let host = format!("app.example.com:{port}");
    let cookie = format!("Cookie: {}={planted}\r\nAccept: text/html\r\n", auth_env::COOKIE_NAME);
    let r = raw_tls(p.addr, "app.example.com", &get(&host, "/.postern/sign_in?redirect_uri=%2F", &cookie))
        .await
        .expect("a response");
    let cleared = r.head.split("\r\n").any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("set-cookie:") && l.contains(&format!("{}=", auth_env::COOKIE_NAME)) && l.contains("max-age=0")
    });
    tally.case("planted session at the sign-in page", cleared, !cleared);
    assert_eq!(r.status, 302, "{}", r.head);
    assert!(cleared, "the planted session is not cleared: {}", r.head);

    // Alice, whose browser carries mallory's session, signs in: she gets
    // her own session.
    idp.set(Signing::Good, json!({"sub": "alice", "email": "alice@corp.com"}));
    let alice = auth_env::Browser::new(p.addr);
    let url = reqwest::Url::parse(&app).expect("url");
    alice.jar.add_cookie_str(&format!("{}={planted}; Path=/", auth_env::COOKIE_NAME), &url);
    let (status, _) = follow(&alice, &format!("{app}/.postern/sign_in?redirect_uri=%2F")).await;
    assert_eq!(status, 200, "alice lands");
    let session = alice.cookie(&app, auth_env::COOKIE_NAME).expect("alice's session");
    let whoami: serde_json::Value = alice
        .client
        .get(format!("{app}/.postern/user"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    let fixed = session == planted || whoami["user"] != "alice";
    tally.case("sign-in with a planted session", !fixed, fixed);
    assert!(!fixed, "alice kept the planted session: {whoami}");
    still_serves(&p, &up, "other.example.com").await;
    tally.finish();
}

/// B.17 (Envoy CVE-2023-27493, CVE-2019-9900), through sign-in: claims
/// with CR, LF and NUL (name, email, groups, `sub`, a custom claim) from
/// the IdP never become header lines: upstreams get them only inside the
/// signed assertion, and no injected header appears on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_with_cr_lf_or_nul_never_become_header_lines() {
    use serde_json::json;
    let idp = HostileIdp::start().await;
    let up = Upstream::start("up").await;
    let port = support::free_port();
    let config = format!(
        "address: 127.0.0.1:{port}\ncookie_secret: {}\nauthenticate_service_url: https://authenticate.example.com:{port}\n\
         idp_provider: oidc\nidp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: {HOSTILE_CLIENT_SECRET}\n\
         routes:\n  - from: https://app.example.com\n    to: {}\n    allow_any_authenticated_user: true\n    pass_identity_headers: true\n{}",
        auth_env::COOKIE_SECRET,
        idp.issuer,
        up.url(),
        public("https://other.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let start = format!("https://app.example.com:{port}/claims");
    let mut tally = Tally::new("B.17 CR/LF/NUL claims");
    let injections = ["\r\nX-Injected: 1", "\nX-Injected: 1", "\rX-Injected: 1", "\u{0}X-Injected: 1"];
    for (i, inj) in injections.iter().enumerate() {
        idp.set(
            Signing::Good,
            json!({
                "sub": format!("alice{i}{inj}"), "name": format!("Alice{inj}"),
                "email": format!("alice{i}@corp.com{inj}"), "groups": [format!("admins{inj}")],
                "department": format!("eng{inj}"),
            }),
        );
        let before = up.seen().len();
        let browser = auth_env::Browser::new(p.addr);
        let (status, url) = follow(&browser, &start).await;
        // Either signed in and forwarded with the claims sealed in the
        // assertion, or refused; never an injected header line.
        let seen: Vec<_> = up.seen().into_iter().skip(before).collect();
        let injected = seen.iter().any(|r| {
            r.headers.contains_key("x-injected")
                || r.headers.values().any(|v| v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)))
        });
        if status == 200 {
            let seen = seen.last().expect("forwarded");
            let assertion = seen.headers.get("x-postern-jwt-assertion").expect("an assertion").to_str().expect("ascii");
            assert!(assertion.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{assertion}");
            let page = browser
                .client
                .get(format!("https://app.example.com:{port}/.postern/user"))
                .header("accept", "text/html")
                .send()
                .await
                .expect("user page");
            assert_eq!(page.status(), 200, "{inj:?}: the user page");
            assert!(!page.headers().contains_key("x-injected"), "{inj:?}: the user page has an injected header");
        }
        tally.case(&format!("claims with {inj:?}"), !injected, injected);
        assert!(!injected, "{inj:?}: ended {status} at {url}; an injected header reached the upstream");
    }
    still_serves(&p, &up, "other.example.com").await;
    tally.finish();
}

/// D.27 (oauth2-proxy #967, #2615): login-CSRF cookies (one per sign-in
/// attempt) are capped: a browser carrying many, planted or abandoned, has
/// them cleared when it starts another sign-in, so its `Cookie` header
/// cannot grow until it is refused. (Missing, mismatched and replayed state
/// are `auth_attacks::the_oauth_callback_refuses_state_mismatch_and_replayed_codes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_csrf_cookies_are_capped() {
    let idp = HostileIdp::start().await;
    let up = Upstream::start("up").await;
    let port = support::free_port();
    let config = format!(
        "address: 127.0.0.1:{port}\ncookie_secret: {}\nauthenticate_service_url: https://authenticate.example.com:{port}\n\
         idp_provider: oidc\nidp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: {HOSTILE_CLIENT_SECRET}\n\
         routes:\n{}{}",
        auth_env::COOKIE_SECRET,
        idp.issuer,
        protected("https://app.example.com", &up.url(), ""),
        public("https://other.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("D.27 login-CSRF cookie cap");
    let host = format!("app.example.com:{port}");
    let r = raw_tls(p.addr, "app.example.com", &get(&host, "/", "Accept: text/html\r\n")).await.expect("a response");
    let sign_in = r.header("location").expect("a redirect to sign in");
    let path =
        sign_in.split_once(&format!("authenticate.example.com:{port}")).expect("authenticate host").1.to_string();
    let auth_host = format!("authenticate.example.com:{port}");
    for planted in [3usize, 8, 40] {
        let jar: Vec<String> = (0..planted).map(|i| format!("_postern_csrf_{i:08}=planted{i}")).collect();
        let cookie = format!("Cookie: theme=dark; {}\r\n", jar.join("; "));
        let r =
            raw_tls(p.addr, "authenticate.example.com", &get(&auth_host, &path, &cookie)).await.expect("a response");
        assert_eq!(r.status, 302, "{planted} planted: {}", r.head);
        let set: Vec<String> = r
            .head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.trim().to_string())
            .collect();
        let cleared = set.iter().filter(|c| c.starts_with("_postern_csrf_") && c.contains("Max-Age=0")).count();
        let fresh = set.iter().filter(|c| c.starts_with("_postern_csrf_") && !c.contains("Max-Age=0")).count();
        assert_eq!(fresh, 1, "one new attempt: {set:?}");
        assert!(!set.iter().any(|c| c.starts_with("theme=")), "other cookies are left alone");
        if planted < 8 {
            assert_eq!(cleared, 0, "{planted} attempts in flight are kept: {set:?}");
        } else {
            tally.case(&format!("{planted} login-CSRF cookies"), cleared == planted, false);
            assert_eq!(cleared, planted, "{planted} planted are cleared: {set:?}");
        }
    }
    still_serves(&p, &up, "other.example.com").await;
    tally.finish();
}

// ---------------------------------------------------------------------------
// G. CORS
// ---------------------------------------------------------------------------

/// G.46 (Pomerium #78, `cors-preflight.spec.ts`; oauth2-proxy #735) and
/// G.49 (Envoy CVE-2023-35943): only an OPTIONS with both `Origin` and
/// `Access-Control-Request-Method` skips authentication; a plain OPTIONS,
/// a GET carrying `X-Original-Method: OPTIONS` and odd `Origin` headers
/// (empty, two of them, not UTF-8, 8 KiB) go through normal
/// authentication, and Postern's own preflight answer carries no
/// upstream data.
#[tokio::test]
async fn only_real_preflights_skip_authentication_and_odd_origins_do_not_crash() {
    let up = Upstream::start("up").await;
    let cors = "    cors:\n      allow_origins: [https://app.example.com]\n      allow_methods: [GET, POST]\n      allow_credentials: true\n";
    let config = format!(
        "routes:\n{}{}",
        protected("https://api.example.com", &up.url(), cors),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("G.46/G.49 preflight and odd origins");
    let origin = "Origin: https://app.example.com\r\n";
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("plain OPTIONS", b"OPTIONS /data HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "OPTIONS with Origin only",
            format!("OPTIONS /data HTTP/1.1\r\nHost: api.example.com\r\n{origin}Connection: close\r\n\r\n").into_bytes(),
        ),
        (
            "OPTIONS with the method header only",
            b"OPTIONS /data HTTP/1.1\r\nHost: api.example.com\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("GET with X-Original-Method: OPTIONS", get("api.example.com", "/data", &format!("{origin}X-Original-Method: OPTIONS\r\nAccess-Control-Request-Method: POST\r\n"))),
        ("GET with X-HTTP-Method-Override", get("api.example.com", "/data", &format!("{origin}X-HTTP-Method-Override: OPTIONS\r\n"))),
        ("POST with the preflight headers", format!("POST /data HTTP/1.1\r\nHost: api.example.com\r\n{origin}Access-Control-Request-Method: POST\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()),
        ("empty Origin", get("api.example.com", "/data", "Origin: \r\n")),
        ("two Origins", get("api.example.com", "/data", "Origin: https://app.example.com\r\nOrigin: https://evil.example.net\r\n")),
        ("non-UTF-8 Origin", [&b"GET /data HTTP/1.1\r\nHost: api.example.com\r\nOrigin: https://\xff\xfe.example.com\r\nConnection: close\r\n\r\n"[..]].concat()),
        ("8 KiB Origin", get("api.example.com", "/data", &format!("Origin: https://{}.example.com\r\n", "a".repeat(8 * 1024)))),
        ("null Origin", get("api.example.com", "/data", "Origin: null\r\n")),
    ];
    for (what, request) in hostile {
        let before = up.seen().len();
        let r = raw_tls(p.addr, "api.example.com", &request).await;
        let status = r.as_ref().map_or(0, |r| r.status);
        let forwarded = up.seen().len() > before;
        let acao = r.as_ref().and_then(|r| r.header("access-control-allow-origin"));
        let odd_origin_allowed = acao.as_deref().is_some_and(|a| a != "https://app.example.com");
        tally.case(what, status == 401 || status == 400 || status == 0, forwarded || odd_origin_allowed);
        assert!(matches!(status, 0 | 400 | 401), "{what}: {status}");
    }
    // The real preflight: answered by Postern, without a session, with no
    // upstream data.
    let before = up.seen().len();
    let preflight = format!(
        "OPTIONS /data HTTP/1.1\r\nHost: api.example.com\r\n{origin}Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    );
    let r = raw_tls(p.addr, "api.example.com", preflight.as_bytes()).await.expect("a response");
    assert_eq!(r.status, 204, "{}", r.head);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    assert_eq!(r.header("x-upstream"), None, "the preflight answer carries no upstream data");
    assert!(r.body.is_empty());
    assert_eq!(up.seen().len(), before, "the preflight was not forwarded");
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

// ---------------------------------------------------------------------------
// H. Ingress and Route input (the file-config side)
// ---------------------------------------------------------------------------

/// H.51 (ingress-nginx CVE-2021-25742, CVE-2023-5043): there are no raw
/// snippet settings. A route or settings key that would carry one
/// (`configuration_snippet`, `server_snippet`, `envoy_filter`, `lua`) is
/// refused by name and nothing of it is applied; the Kubernetes side is
/// `k8s_controller::objects_are_input_hosts_stay_with_their_namespace_and_hostile_values_are_refused`.
#[tokio::test]
async fn snippet_keys_are_refused_by_name_and_never_applied() {
    let up = Upstream::start("up").await;
    let mut tally = Tally::new("H.51 snippet keys");
    let snippets = [
        ("configuration_snippet", "\"more_set_headers 'X-Injected: 1';\""),
        ("server_snippet", "\"location /admin { return 200; }\""),
        ("auth_snippet", "\"proxy_set_header X-Injected 1;\""),
        ("envoy_filter", "\"{}\""),
        ("lua", "\"os.execute('id')\""),
    ];
    for (key, value) in snippets {
        let route = public("https://pub.example.com", &up.url(), &format!("    {key}: {value}\n"));
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("config.yaml"), format!("routes:\n{route}")).expect("write");
        let (code, out, err) = support::run_cli(&["check", "--config", "config.yaml"], dir.path());
        let named = format!("{out}{err}").contains(key);
        tally.case(key, code != 0 && named, false);
        assert!(code != 0 && named, "{key}: exit {code}, {out}{err}");
    }
    // Served: the route with a snippet is left out; the other one serves and
    // nothing of the snippet is seen.
    let config = format!(
        "routes:\n{}{}",
        public(
            "https://snip.example.com",
            &up.url(),
            "    configuration_snippet: \"more_set_headers 'X-Injected: 1';\"\n"
        ),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let before = up.seen().len();
    let r = raw_tls(p.addr, "snip.example.com", &get("snip.example.com", "/admin", "")).await.expect("a response");
    let applied = r.head.to_ascii_lowercase().contains("x-injected") || up.seen().len() > before;
    tally.case("served with a snippet", r.status == 404, applied);
    assert_eq!(r.status, 404, "{}", r.head);
    still_serves(&p, &up, "pub.example.com").await;
    let seen = up.last();
    assert!(seen.headers.get("x-injected").is_none());
    tally.finish();
}

/// H.52 (IngressNightmare, CVE-2025-1974; CVE-2026-24514): Postern has no
/// admission webhook and never runs a validator over tenant config. An
/// AdmissionReview carrying an injected `ssl_engine` sent to every path a
/// webhook would use, on the proxy listener and the admin listener, gets no
/// review back (404 or 401), and nothing reaches an upstream.
#[tokio::test]
async fn there_is_no_admission_webhook_to_reach() {
    let up = Upstream::start("up").await;
    let config = format!(
        "metrics_address: 127.0.0.1:0\nroutes:\n{}{}",
        protected("https://app.example.com", &up.url(), ""),
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let metrics = p.metrics.expect("metrics listener");
    let mut tally = Tally::new("H.52 admission webhook");
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "1", "object": {"metadata": {"annotations": {
            "nginx.ingress.kubernetes.io/auth-url": "http://x/#;\nssl_engine /tmp/evil.so;"
        }}}}
    })
    .to_string();
    for path in [
        "/",
        "/validate",
        "/admission",
        "/networking/v1/ingresses",
        "/validate-networking-k8s-io-v1-ingress",
        "/mutate",
    ] {
        for host in ["app.example.com", "unknown.example.com"] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{review}",
                review.len()
            );
            let before = up.seen().len();
            let r = raw_tls(p.addr, "app.example.com", request.as_bytes()).await.expect("a response");
            let answered = r.body_text().contains("AdmissionReview");
            tally.case(&format!("{host}{path}"), !answered && matches!(r.status, 401 | 404), up.seen().len() > before);
            assert!(!answered && matches!(r.status, 401 | 404), "{host}{path}: {}", r.head);
        }
        let resp = support::client_to(metrics)
            .post(format!("http://{metrics}{path}"))
            .header("content-type", "application/json")
            .body(review.clone())
            .send()
            .await
            .expect("admin listener");
        let status = resp.status().as_u16();
        let answered = resp.text().await.expect("body").contains("AdmissionReview");
        tally.case(&format!("admin {path}"), !answered && status >= 400, false);
        assert!(!answered && status >= 400, "admin listener {path}: {status}");
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// H.54 (ingress-nginx CVE-2026-24513): an upstream's or a direct
/// response's status never turns Postern's 401/403 into a 200, and an
/// auth failure is never answered by the upstream.
#[tokio::test]
async fn auth_failures_stay_401_whatever_the_upstream_or_direct_response() {
    let up = Upstream::start("up").await;
    let config = format!(
        "{}routes:\n{}{}{}",
        dead_idp_settings(),
        protected("https://app.example.com", &up.url(), ""),
        "  - from: https://direct.example.com\n    response:\n      status: 200\n      body: welcome\n    allowed_users: [alice@example.com]\n",
        public("https://pub.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("H.54 auth failures stay failures");
    for (host, path) in [
        ("app.example.com", "/status/200"),
        ("app.example.com", "/status/401"),
        ("app.example.com", "/status/302"),
        ("direct.example.com", "/"),
        ("direct.example.com", "/anything"),
    ] {
        for extra in ["", "Accept: text/html\r\n", "Cookie: _postern=expired-or-forged\r\n"] {
            let before = up.seen().len();
            let r = raw_tls(p.addr, host, &get(host, path, extra)).await.expect("a response");
            let forwarded = up.seen().len() > before;
            let body = r.body_text();
            let refused = r.status == 401
                || (r.status == 302 && r.header("location").is_some_and(|l| l.contains("authenticate.example.com")));
            tally.case(&format!("{host}{path} {extra:?}"), refused, forwarded || body.contains("welcome"));
            assert!(refused, "{host}{path} {extra:?}: {}", r.head);
        }
    }
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

// ---------------------------------------------------------------------------
// The map
// ---------------------------------------------------------------------------

/// `docs/security-catalogue.md` has a row for each of the 62 families, and
/// every `file::fn` it names is a test fn in that file, so the map cannot
/// drift from the tests.
#[test]
fn the_map_names_real_tests_and_every_family() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/security-catalogue.md")).expect("docs/security-catalogue.md");
    let mut families = std::collections::BTreeSet::new();
    let mut named = 0;
    for line in map.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(family) = cells.get(1) else { continue };
        // `A.8` or `**A.8**`: a letter, a dot, the number.
        let family = family.trim_matches('*');
        let Some((_, number)) = family.split_once('.') else { continue };
        let Ok(number) = number.parse::<u32>() else { continue };
        families.insert(number);
        for cell in &cells {
            for mention in cell.split('`').skip(1).step_by(2) {
                let Some((file, func)) = mention.split_once("::") else { continue };
                // `forwarding::fn` is tests/forwarding.rs; `src/auth/oidc.rs::fn` is a unit test.
                let path = if file.ends_with(".rs") { file.to_string() } else { format!("tests/{file}.rs") };
                let text = std::fs::read_to_string(root.join(&path))
                    .unwrap_or_else(|e| panic!("{family}: {path} named in the map: {e}"));
                let is_test = is_test_fn(&text, func);
                assert!(is_test, "{family}: `{file}::{func}` is not a test fn in {path}");
                named += 1;
            }
        }
    }
    let missing: Vec<u32> = (1..=62).filter(|n| !families.contains(n)).collect();
    assert!(missing.is_empty(), "families without a row: {missing:?}");
    assert!(named > 20, "the map names only {named} tests");
}

/// Whether `text` has `fn name(` right under a `#[test]` or `#[tokio::test]`
/// attribute (doc comments and other attributes may sit between).
fn is_test_fn(text: &str, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let sig = |l: &str| {
        let l = l.trim_start();
        l.starts_with(&format!("fn {name}(")) || l.starts_with(&format!("async fn {name}("))
    };
    lines.iter().enumerate().filter(|(_, l)| sig(l)).any(|(i, _)| {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("///") || l.starts_with("#[") || l.starts_with("//")
            })
            .any(|l| l.trim_start().starts_with("#[") && l.contains("test"))
    })
}

/// B.16 (hyper CVE-2021-32715 / RUSTSEC-2021-0078 and -0079; Go's
/// `readrequest_test.go` `smuggle_two_contentlen`, `leading_space_in_header`;
/// ingress-nginx `request_smuggling.go`): framing that two parsers could
/// read differently is refused (400, or 501 for a transfer coding nobody
/// knows) or the connection is closed, and nothing at all — least of all
/// the smuggled second request — reaches the upstream. The one exception
/// is a length together with `chunked`, which RFC 9112 lets a server read
/// by the coding if it then closes the connection: the upstream gets the
/// body re-framed once, and nothing after it.
#[tokio::test]
async fn ambiguous_request_framing_is_refused_and_nothing_is_smuggled() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!("routes:\n{}", public("https://pub.example.com", &up.url(), "")));
    let mut tally = Tally::new("B.16 request framing");
    let host = "pub.example.com";
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length with Transfer-Encoding: chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two different Content-Length values",
            format!("POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggled}"),
        ),
        ("Content-Length: +3", format!("POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: +3\r\n\r\nabc{smuggled}")),
        ("Content-Length: 3, 3 3", format!("POST /a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3 3\r\n\r\nabc")),
        (
            "Transfer-Encoding: xchunked",
            format!("POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "space before the colon of Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding twice, chunked first",
            format!(
                "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "leading whitespace before a header (obs-fold)",
            format!("GET /a HTTP/1.1\r\nHost: {host}\r\n X-Folded: yes\r\n\r\n"),
        ),
        ("whitespace before the first header", format!("GET /a HTTP/1.1\r\n Host: {host}\r\n\r\n")),
        (
            "chunk size overflowing 64 bits",
            format!(
                "POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk size with a sign",
            format!("POST /a HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n"),
        ),
    ];
    for (i, (what, request)) in cases.iter().enumerate() {
        let before = up.seen().len();
        let r = raw_tls(p.addr, host, request.as_bytes()).await;
        let status = r.as_ref().map_or(0, |r| r.status);
        // Let a request that did get through arrive before counting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = up.seen();
        let smuggled_through = seen.iter().any(|s| s.target.contains("smuggled"));
        if i == 0 {
            // Both a length and a transfer coding: hyper reads the body by
            // the coding and drops the length (RFC 9112 §6.3 allows this in
            // place of a 400), so the upstream gets one unambiguous framing,
            // and it closes the connection, so the bytes after the chunked
            // body never become a request.
            let closes = r.as_ref().is_some_and(|r| r.header("connection").as_deref() == Some("close"));
            let one = &seen[before..];
            let reframed = one.len() == 1 && one[0].headers.get("content-length").is_none_or(|v| v == "0");
            tally.case(what, closes && reframed, smuggled_through || !reframed);
            assert!(closes && reframed, "{what}: {:?} {:?}", r.map(|r| r.head), one);
            assert!(!smuggled_through, "{what}: the smuggled request reached the upstream");
            continue;
        }
        let forwarded = seen.len() > before;
        tally.case(what, matches!(status, 0 | 400 | 501) && !forwarded, forwarded || smuggled_through);
        assert!(matches!(status, 0 | 400 | 501), "{what}: answered {status}: {:?}", r.map(|r| r.head));
        assert!(!forwarded, "{what}: reached the upstream: {:?}", &seen[before..]);
    }
    still_serves(&p, &up, host).await;
    tally.finish();
}

/// A.9 (Envoy CVE-2021-32777, via Pomerium GHSA-cfc2-wjcm-c8fm): two
/// `Authorization` headers are refused (400) rather than one layer taking
/// the first and another the last; on a public route and a protected one,
/// nothing is forwarded.
#[tokio::test]
async fn two_authorization_headers_are_refused_and_not_forwarded() {
    let up = Upstream::start("up").await;
    let config = format!(
        "routes:\n{}{}",
        public("https://pub.example.com", &up.url(), ""),
        protected("https://app.example.com", &up.url(), "")
    );
    let p = Postern::start(&config);
    let mut tally = Tally::new("A.9 duplicate Authorization");
    for host in ["pub.example.com", "app.example.com"] {
        for extra in [
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
            "Authorization: Bearer a\r\nauthorization: Basic Yjpi\r\n",
        ] {
            let before = up.seen().len();
            let r = raw_tls(p.addr, host, &get(host, "/", extra)).await.expect("a response");
            let forwarded = up.seen().len() > before;
            tally.case(&format!("{host}: {extra:?}"), r.status == 400, forwarded);
            assert_eq!(r.status, 400, "{host} {extra:?}: {}", r.head);
            assert!(r.body_text().contains("duplicate_header"), "{}", r.body_text());
            assert!(!forwarded, "{host}: forwarded");
        }
    }
    // One is fine.
    let r = raw_tls(p.addr, "pub.example.com", &get("pub.example.com", "/", "Authorization: Bearer a\r\n"))
        .await
        .expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    still_serves(&p, &up, "pub.example.com").await;
    tally.finish();
}

/// F.44 (cookie tossing, RFC 6265bis): a sibling host under a shared
/// cookie domain plants a second `_postern` with a longer `Path`, which
/// browsers send first. Two different session cookies are refused (400,
/// naming the fix) instead of the first one being believed; the same value
/// twice is one cookie.
#[tokio::test]
async fn two_different_session_cookies_are_refused() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!("routes:\n{}", protected("https://app.example.com", &up.url(), "")));
    let mut tally = Tally::new("F.44 cookie tossing");
    for cookies in [
        "Cookie: _postern=planted; _postern=mine\r\n",
        "Cookie: _postern=planted\r\nCookie: _postern=mine\r\n",
        "Cookie: other=1; _postern=\"planted\"; _postern=mine\r\n",
    ] {
        let before = up.seen().len();
        let r = raw_tls(p.addr, "app.example.com", &get("app.example.com", "/", cookies)).await.expect("a response");
        let forwarded = up.seen().len() > before;
        tally.case(cookies, r.status == 400, forwarded);
        assert_eq!(r.status, 400, "{cookies:?}: {}", r.head);
        assert!(r.body_text().contains("ambiguous_session_cookie"), "{}", r.body_text());
        assert!(!forwarded);
    }
    // The same value twice is not ambiguous: the usual answer for a
    // session that does not open (sign in).
    let r = raw_tls(p.addr, "app.example.com", &get("app.example.com", "/", "Cookie: _postern=x; _postern=x\r\n"))
        .await
        .expect("a response");
    assert_eq!(r.status, 401, "{}", r.head);
    tally.finish();
}
