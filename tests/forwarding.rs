//! Forwarding end to end: a real `postern` process between real clients and
//! real upstreams on loopback.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::Postern;
use support::upstream::{Upstream, WsEcho, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A route line block: `from`, `to` and public access, plus `extra` lines
/// (already indented by four spaces).
fn route(from: &str, to: &str, extra: &[&str]) -> String {
    let mut r = format!("  - from: {from}\n    to: {to}\n    allow_public_unauthenticated_access: true\n");
    for line in extra {
        r.push_str("    ");
        r.push_str(line);
        r.push('\n');
    }
    r
}

/// A direct-response route answering `body` with 200.
fn answer(from: &str, body: &str, extra: &[&str]) -> String {
    let mut r = format!(
        "  - from: {from}\n    response:\n      status: 200\n      body: {body}\n    allow_public_unauthenticated_access: true\n"
    );
    for line in extra {
        r.push_str("    ");
        r.push_str(line);
        r.push('\n');
    }
    r
}

fn config(routes: &[String]) -> String {
    format!("routes:\n{}", routes.concat())
}

/// A loopback port nothing listens on (bound, then released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

async fn get(p: &Postern, host: &str, path: &str) -> reqwest::Response {
    p.client().get(p.url(host, path)).send().await.expect("send")
}

async fn text(p: &Postern, host: &str, path: &str) -> (u16, String) {
    let resp = get(p, host, path).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn header<'a>(seen: &'a support::upstream::Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

/// A response read off the wire by [`raw`].
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `request` byte for byte over TLS (HTTP/1.1, so the request target
/// is exactly what we wrote) and reads the response until the proxy closes.
/// `request` should carry `Connection: close`.
async fn raw(p: &Postern, request: &str) -> Raw {
    let mut tls = tls_connect(p.addr, "raw.example.com", &[b"http/1.1"]).await.expect("TLS to proxy");
    tls.write_all(request.as_bytes()).await.expect("write request");
    tls.flush().await.expect("flush");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no end of response within 10s; got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Raw {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Raw { status, headers, body }
}

fn http1_get(host: &str, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

// ---------------------------------------------------------------------------
// 1. Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn routes_by_host_wildcard_port_and_path_first_match_wins() {
    let p = Postern::start(&config(&[
        answer("https://app.example.com", "exact", &["path: /exact"]),
        answer("https://app.example.com", "prefix", &["prefix: /pre/"]),
        answer("https://app.example.com", "regex", &["regex: '/items/[0-9]+'"]),
        answer("https://app.example.com", "first", &["prefix: /dup"]),
        answer("https://app.example.com", "second", &["prefix: /dup"]),
        answer("https://app.example.com", "app-any", &[]),
        answer("https://*.example.com", "wildcard", &[]),
        answer("https://ported.test:8443", "ported", &[]),
    ]));

    // Exact host, then path rules in file order.
    assert_eq!(text(&p, "app.example.com", "/exact").await, (200, "exact".into()));
    assert_eq!(text(&p, "app.example.com", "/exact/more").await, (200, "app-any".into()), "path is exact");
    assert_eq!(text(&p, "app.example.com", "/exac").await, (200, "app-any".into()));
    assert_eq!(text(&p, "app.example.com", "/pre/x/y").await, (200, "prefix".into()));
    assert_eq!(text(&p, "app.example.com", "/pre").await, (200, "app-any".into()), "`/pre/` needs the slash");
    assert_eq!(text(&p, "app.example.com", "/items/42").await, (200, "regex".into()));
    assert_eq!(text(&p, "app.example.com", "/items/42/x").await, (200, "app-any".into()), "regex is whole-path");
    assert_eq!(text(&p, "app.example.com", "/x/items/42").await, (200, "app-any".into()), "regex is anchored");
    assert_eq!(text(&p, "app.example.com", "/items/abc").await, (200, "app-any".into()));
    assert_eq!(text(&p, "app.example.com", "/dup/1").await, (200, "first".into()), "first match in file order");
    // Host matching ignores case.
    assert_eq!(text(&p, "APP.Example.COM", "/exact").await, (200, "exact".into()));

    // One-label wildcard.
    assert_eq!(text(&p, "x.example.com", "/").await, (200, "wildcard".into()));
    assert_eq!(text(&p, "other.example.com", "/exact").await, (200, "wildcard".into()));
    assert_eq!(text(&p, "a.b.example.com", "/").await.0, 404, "a wildcard covers one label only");
    assert_eq!(text(&p, "example.com", "/").await.0, 404, "a wildcard does not cover its parent");

    // A `from` with a port matches only a Host with that port.
    let r = raw(&p, &http1_get("ported.test:8443", "/")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ported"[..]));
    let r = raw(&p, &http1_get("ported.test:9443", "/")).await;
    assert_eq!(r.status, 404, "other port");
    let r = raw(&p, &http1_get("ported.test", "/")).await;
    assert_eq!(r.status, 404, "no port");
    // A fully qualified name (trailing dot) and an empty port are the same host.
    assert_eq!(text(&p, "app.example.com.", "/exact").await, (200, "exact".into()));
    let r = raw(&p, &http1_get("app.example.com:", "/exact")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"exact"[..]));
}

#[tokio::test]
async fn malformed_host_is_400_and_reaches_no_route() {
    let p =
        Postern::start(&config(&[answer("https://app.example.com", "app", &[]), answer("https://[::1]", "v6", &[])]));
    for bad in ["user@app.example.com", "app.example.com:99999", "app.example.com:+443", "app.example.com:x", "[::1"] {
        let r = raw(&p, &http1_get(bad, "/")).await;
        assert_eq!(r.status, 400, "Host {bad:?}");
        assert_ne!(r.body, b"app", "Host {bad:?}");
    }
    let r = raw(&p, &http1_get("[::1]:8443", "/")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"v6"[..]), "IPv6 literal with a port");
}

#[tokio::test]
async fn unknown_host_is_404_json_for_apis_and_html_for_browsers() {
    let p = Postern::start(&config(&[answer("https://app.example.com", "app", &[])]));

    let resp = get(&p, "nowhere.example.org", "/some/path").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let json: serde_json::Value = resp.json().await.expect("JSON body");
    assert_eq!(json["error"], "not_found", "{json}");
    assert_eq!(json["status"], 404, "{json}");

    let resp = p
        .client()
        .get(p.url("nowhere.example.org", "/some/path"))
        .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let ct = resp.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(ct.starts_with("text/html"), "content-type {ct}");
    let body = resp.text().await.expect("body");
    assert!(body.to_ascii_lowercase().contains("<html"), "{body}");
    assert!(body.contains("404"), "{body}");
}

// ---------------------------------------------------------------------------
// 2. Path attacks
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with 400; no upstream sees it.
    Refused,
    /// Reaches this upstream with exactly this request target.
    Reaches(&'static str, &'static str),
}

#[tokio::test]
async fn path_tricks_never_reach_the_wrong_route() {
    let admin = Upstream::start("admin").await;
    let api = Upstream::start("api").await;
    let public = Upstream::start("public").await;
    let p = Postern::start(&config(&[
        route("https://app.example.com", &admin.url(), &["prefix: /admin"]),
        route("https://app.example.com", &api.url(), &["prefix: /api"]),
        route("https://app.example.com", &public.url(), &[]),
    ]));
    let ups = [&admin, &api, &public];

    use Expect::*;
    let cases: &[(&str, Expect)] = &[
        ("/api/../admin", Reaches("admin", "/admin")),
        ("/api/%2e%2e/admin", Reaches("admin", "/admin")),
        ("/api/.%2E/admin", Reaches("admin", "/admin")),
        ("//admin", Reaches("admin", "/admin")),
        ("/public/../../admin/x", Reaches("admin", "/admin/x")),
        ("/%2Fadmin", Refused),
        ("/api%2F..%2Fadmin", Refused),
        ("/api%2f..%2fadmin", Refused),
        ("/api%5C..%5Cadmin", Refused),
        ("/api\\..\\admin", Refused),
        ("/%C0%AE%C0%AE/admin", Refused),
        ("/%c0%af", Refused),
        ("/a%00b", Refused),
        ("/api/%zz", Refused),
        // Normalized forms are what the upstream gets.
        ("/api/%7e%41", Reaches("api", "/api/~A")),
        ("/api/./v1//users/", Reaches("api", "/api/v1/users/")),
        ("/admin/../api/x?next=/admin/%2e%2e", Reaches("api", "/api/x?next=/admin/%2e%2e")),
        ("/%61pi/x", Reaches("api", "/api/x")),
        ("/%61dmin", Reaches("admin", "/admin")),
        ("/caf%c3%a9", Reaches("public", "/caf%C3%A9")),
    ];
    for (target, expect) in cases {
        let before: Vec<usize> = ups.iter().map(|u| u.seen().len()).collect();
        let r = raw(&p, &http1_get("app.example.com", target)).await;
        let after: Vec<usize> = ups.iter().map(|u| u.seen().len()).collect();
        match expect {
            Refused => {
                assert_eq!(r.status, 400, "{target}: {:?}", String::from_utf8_lossy(&r.body));
                assert_eq!(before, after, "{target}: refused but an upstream saw it");
            }
            Reaches(name, want) => {
                assert_eq!(r.status, 200, "{target}: {:?}", String::from_utf8_lossy(&r.body));
                assert_eq!(r.header("x-upstream"), Some(*name), "{target}");
                for (i, up) in ups.iter().enumerate() {
                    let expected = before[i] + usize::from(up.name == *name);
                    assert_eq!(after[i], expected, "{target}: upstream {} request count", up.name);
                }
                let got = ups.iter().find(|u| u.name == *name).expect("upstream").last().target;
                assert_eq!(got, *want, "{target}: target received by {name}");
            }
        }
    }
    // Whatever got through, neither `api` nor `public` ever saw a path that
    // means /admin to them.
    for up in [&api, &public] {
        for seen in up.seen() {
            let path = seen.target.split('?').next().unwrap_or("").to_ascii_lowercase();
            assert!(!path.contains("admin") && !path.contains("%61dmin"), "{} saw {:?}", up.name, seen.target);
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &[])]));

    let r = raw(
        &p,
        "GET /hop HTTP/1.1\r\nHost: app.example.com\r\nConnection: close, X-Foo\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: websocket\r\nX-Foo: secret\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for name in ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "x-foo", "proxy-authorization"] {
        assert_eq!(header(&seen, name), None, "{name} reached the upstream: {:?}", seen.headers);
    }
    assert_eq!(header(&seen, "x-kept"), Some("yes"));

    // `TE: trailers` is the one TE value that is kept (gRPC needs it).
    let r = raw(&p, "GET /te HTTP/1.1\r\nHost: app.example.com\r\nTE: trailers\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&up.last(), "te"), Some("trailers"));
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &[])]));
    let resp = p
        .client()
        .get(p.url("app.example.com", "/xff"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example.net")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
    let xfh = header(&seen, "x-forwarded-host").expect("x-forwarded-host");
    let with_port = format!("app.example.com:{}", p.addr.port());
    assert!(xfh == "app.example.com" || xfh == with_port, "x-forwarded-host {xfh}");
    assert_eq!(header(&seen, "forwarded"), None);
    assert_eq!(header(&seen, "x-real-ip"), None);
}

#[tokio::test]
async fn forwarded_for_chain_is_kept_from_a_trusted_proxy() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!(
        "trusted_proxies:\n  - 127.0.0.1/32\n{}",
        config(&[route("https://app.example.com", &up.url(), &[])])
    ));
    let resp = p
        .client()
        .get(p.url("app.example.com", "/xff"))
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&up.last(), "x-forwarded-for"), Some("203.0.113.7, 10.0.0.1, 127.0.0.1"));

    // Without one, the chain starts at the trusted peer.
    let resp = get(&p, "app.example.com", "/xff").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&up.last(), "x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn route_request_header_rules_apply() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&config(&[route(
        "https://app.example.com",
        &up.url(),
        &[
            "set_request_headers:",
            "  X-Set: from-route",
            "  X-Override: from-route",
            "remove_request_headers:",
            "  - X-Remove",
            "  - Cookie",
        ],
    )]));
    let resp = p
        .client()
        .get(p.url("app.example.com", "/h"))
        .header("x-override", "from-client")
        .header("x-remove", "please")
        .header("cookie", "session=1")
        .header("x-other", "kept")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(header(&seen, "x-set"), Some("from-route"));
    assert_eq!(seen.headers.get_all("x-override").iter().count(), 1);
    assert_eq!(header(&seen, "x-override"), Some("from-route"));
    assert_eq!(header(&seen, "x-remove"), None);
    assert_eq!(header(&seen, "cookie"), None);
    assert_eq!(header(&seen, "x-other"), Some("kept"));
}

#[tokio::test]
async fn host_header_default_preserve_and_rewrite() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&config(&[
        route("https://default.example.com", &up.url(), &[]),
        route("https://preserve.example.com", &up.url(), &["preserve_host_header: true"]),
        route("https://rewrite.example.com", &up.url(), &["host_rewrite: internal.example:8080"]),
    ]));

    assert_eq!(get(&p, "default.example.com", "/").await.status(), 200);
    assert_eq!(header(&up.last(), "host"), Some(up.addr.to_string().as_str()), "upstream authority by default");

    let r = raw(&p, &http1_get("preserve.example.com", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&up.last(), "host"), Some("preserve.example.com"));

    assert_eq!(get(&p, "rewrite.example.com", "/").await.status(), 200);
    assert_eq!(header(&up.last(), "host"), Some("internal.example:8080"));
}

/// An upstream that builds absolute URLs from `Host` needs the port the
/// client used, as Pomerium/Envoy pass the Host header through unchanged.
#[tokio::test]
async fn preserve_host_header_keeps_the_port() {
    let up = Upstream::start("up").await;
    let p =
        Postern::start(&config(&[route("https://preserve.example.com", &up.url(), &["preserve_host_header: true"])]));
    let r = raw(&p, &http1_get("preserve.example.com:8443", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&up.last(), "host"), Some("preserve.example.com:8443"));
}

/// Over HTTP/2 the client's authority arrives as `:authority`, with no
/// `Host` header; the upstream (HTTP/1.1) still gets it as `Host` and
/// `X-Forwarded-Host`.
#[tokio::test]
async fn h2_clients_authority_becomes_host_and_forwarded_host() {
    let up = Upstream::start("up").await;
    let p =
        Postern::start(&config(&[route("https://preserve.example.com", &up.url(), &["preserve_host_header: true"])]));
    let resp = p.client().get(p.url("preserve.example.com", "/")).send().await.expect("send");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let authority = format!("preserve.example.com:{}", p.addr.port());
    assert_eq!(header(&up.last(), "host"), Some(authority.as_str()));
    assert_eq!(header(&up.last(), "x-forwarded-host"), Some(authority.as_str()));
}

#[tokio::test]
async fn prefix_rewrite_and_upstream_base_path() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&config(&[
        route("https://rw.example.com", &up.url(), &["prefix: /api", "prefix_rewrite: /v1"]),
        route("https://base.example.com", &format!("{}/base", up.url()), &[]),
    ]));

    assert_eq!(get(&p, "rw.example.com", "/api/users?q=1").await.status(), 200);
    assert_eq!(up.last().target, "/v1/users?q=1");

    assert_eq!(get(&p, "base.example.com", "/x/y?z=2").await.status(), 200);
    assert_eq!(up.last().target, "/base/x/y?z=2");
    assert_eq!(get(&p, "base.example.com", "/").await.status(), 200);
    assert_eq!(up.last().target, "/base/");
}

#[tokio::test]
async fn response_headers_are_set_on_upstream_answers_and_proxy_errors() {
    let up = Upstream::start("up").await;
    let headers = ["set_response_headers:", "  X-Frame-Options: DENY", "  X-Route-Header: yes"];
    let private = format!(
        "  - from: https://private.example.com\n    to: {}\n    set_response_headers:\n      X-Frame-Options: DENY\n",
        up.url()
    );
    let p = Postern::start(&config(&[
        route("https://app.example.com", &up.url(), &headers),
        route("https://dead.example.com", &dead_url(), &headers),
        private,
    ]));

    let resp = get(&p, "app.example.com", "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["x-route-header"], "yes");
    assert_eq!(resp.headers()["x-upstream"], "up", "upstream headers are kept");

    let resp = get(&p, "private.example.com", "/").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let json: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(json["error"], "unauthenticated");

    let resp = get(&p, "dead.example.com", "/").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["x-route-header"], "yes");
}

// ---------------------------------------------------------------------------
// 4. Upstream failures, retry, balancing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refused_upstream_is_502_without_leaking_its_address() {
    let dead = dead_url();
    let addr = dead.trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().expect("port").to_string();
    let p = Postern::start(&config(&[route("https://app.example.com", &dead, &[])]));
    for accept in ["application/json", "text/html"] {
        let resp = p.client().get(p.url("app.example.com", "/x")).header("accept", accept).send().await.expect("send");
        assert_eq!(resp.status(), 502);
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.expect("body");
        for leak in [addr.as_str(), port.as_str(), "127.0.0.1"] {
            assert!(!body.contains(leak), "body leaks {leak}: {body}");
            assert!(!headers.contains(leak), "headers leak {leak}: {headers}");
        }
    }
}

#[tokio::test]
async fn slow_upstream_times_out_with_504() {
    let up = Upstream::start("slow").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &["timeout: 200ms"])]));
    let started = Instant::now();
    let resp = get(&p, "app.example.com", "/slow/2000").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(elapsed < Duration::from_millis(1500), "504 took {elapsed:?}");
    let json: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(json["error"], "upstream_timeout");
    // A quick request on the same route is unaffected.
    assert_eq!(get(&p, "app.example.com", "/slow/10").await.status(), 200);
}

#[tokio::test]
async fn connect_failure_retries_the_next_upstream_even_with_a_body() {
    let live = Upstream::start("live").await;
    let to = format!("\n      - {}\n      - {}", dead_url(), live.url());
    let p = Postern::start(&config(&[route("https://app.example.com", &to, &[])]));
    let client = p.client();
    for i in 0..10usize {
        let resp = if i % 2 == 0 {
            client.post(p.url("app.example.com", "/upload")).body(vec![b'b'; 10_000 + i]).send().await
        } else {
            client.get(p.url("app.example.com", "/read")).send().await
        }
        .expect("send");
        assert_eq!(resp.status(), 200, "request {i}");
        let seen = live.last();
        if i % 2 == 0 {
            assert_eq!((seen.method.as_str(), seen.body_len), ("POST", 10_000 + i as u64), "request {i}");
        } else {
            assert_eq!(seen.method, "GET");
        }
    }
    assert_eq!(live.seen().len(), 10);
}

#[tokio::test]
async fn weighted_round_robin_splits_three_to_one() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let to = format!("\n      - \"{},3\"\n      - \"{},1\"", a.url(), b.url());
    let p = Postern::start(&config(&[route("https://app.example.com", &to, &[])]));
    let client = p.client();
    for i in 0..40 {
        let resp = client.get(p.url("app.example.com", "/")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!((a.seen().len(), b.seen().len()), (30, 10));
}

// ---------------------------------------------------------------------------
// 5. Streaming bodies with bounded memory
// ---------------------------------------------------------------------------

const CHUNK: usize = 64 * 1024;
static ZEROES: [u8; CHUNK] = [0u8; CHUNK];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_bounded_memory() {
    const CHUNKS: usize = 16_384;
    let up = Upstream::start("sink").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &["timeout: 0"])]));
    let baseline = p.peak_rss_kib();
    let stream = futures_util::stream::iter((0..CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&ZEROES))));
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .tls_danger_accept_invalid_certs(true)
        .resolve("app.example.com", p.addr)
        .build()
        .expect("client");
    let resp = client
        .post(p.url("app.example.com", "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, (CHUNKS * CHUNK) as u64, "bytes received by the upstream");
    let peak = p.peak_rss_kib();
    eprintln!(
        "1 GiB upload: {:?}, proxy peak RSS {} KiB ({:.1} MiB; {} KiB before)",
        started.elapsed(),
        peak,
        peak as f64 / 1024.0,
        baseline
    );
    assert!(peak < 100 * 1024, "proxy peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_with_bounded_memory() {
    const CHUNKS: u64 = 2000;
    let up = Upstream::start("source").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &[])]));
    let started = Instant::now();
    let mut resp = get(&p, "app.example.com", &format!("/chunks/{CHUNKS}")).await;
    assert_eq!(resp.status(), 200);
    let mut total = 0u64;
    let mut wrong = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        total += chunk.len() as u64;
        wrong += chunk.iter().filter(|&&b| b != b'x').count() as u64;
    }
    assert_eq!(total, CHUNKS * CHUNK as u64);
    assert_eq!(wrong, 0, "body bytes changed");
    let peak = p.peak_rss_kib();
    eprintln!(
        "{} MiB download: {:?}, proxy peak RSS {} KiB ({:.1} MiB)",
        total >> 20,
        started.elapsed(),
        peak,
        peak as f64 / 1024.0
    );
    assert!(peak < 100 * 1024, "proxy peak RSS {peak} KiB");
}

// ---------------------------------------------------------------------------
// 6. WebSockets
// ---------------------------------------------------------------------------

async fn ws_connect(
    p: &Postern,
    host: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let tls = tls_connect(p.addr, host, &[b"http/1.1"]).await.expect("TLS to proxy");
    let url = format!("wss://{host}:{}/echo", p.addr.port());
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, tls))
        .await
        .expect("handshake within 10s")?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

#[tokio::test]
async fn websockets_pass_through_when_allowed() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = WsEcho::start().await;
    let p = Postern::start(&config(&[route("https://ws.example.com", &echo.url(), &["allow_websockets: true"])]));
    let mut ws = ws_connect(&p, "ws.example.com").await.expect("WebSocket through the proxy");
    for i in 0..5 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        match back {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), msg),
            other => panic!("unexpected {other:?}"),
        }
    }
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::binary(payload.clone())).await.expect("send binary");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time") {
        Some(Ok(Message::Binary(b))) => assert_eq!(b.as_ref(), payload.as_slice()),
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).await.expect("close");
    assert_eq!(echo.upgraded.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn websockets_are_not_upgraded_when_not_allowed() {
    let echo = WsEcho::start().await;
    let p = Postern::start(&config(&[route("https://ws.example.com", &echo.url(), &[])]));
    match ws_connect(&p, "ws.example.com").await {
        Ok(_) => panic!("the upgrade went through on a route without allow_websockets"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_ne!(resp.status(), 101),
        Err(_) => {}
    }
    assert_eq!(echo.upgraded.load(std::sync::atomic::Ordering::SeqCst), 0, "upstream upgraded");
}

// ---------------------------------------------------------------------------
// 7. gRPC-style trailers over h2 → h2c
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2c_upstream_trailers_reach_an_h2_client() {
    let up = Upstream::start("grpc").await;
    let to = format!("h2c://{}", up.addr);
    let p = Postern::start(&config(&[route("https://grpc.example.com", &to, &[])]));

    let tls = tls_connect(p.addr, "grpc.example.com", &[b"h2"]).await.expect("TLS to proxy");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "proxy negotiated h2");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://grpc.example.com:{}/trailers", p.addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"part one;part two"));
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(trailers.get("grpc-message").map(|v| v.as_bytes()), Some(&b"all good"[..]));

    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2, "upstream spoke h2c");
    assert_eq!(header(&seen, "te"), Some("trailers"));
    assert_eq!(seen.body_len, 5);
}

// ---------------------------------------------------------------------------
// 8. Direct responses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn direct_response_routes_answer_themselves() {
    let p = Postern::start(
        "routes:\n\
         \x20 - from: https://teapot.example.com\n\
         \x20   path: /brew\n\
         \x20   response:\n\
         \x20     status: 418\n\
         \x20     body: short and stout\n\
         \x20     content_type: text/x-teapot\n\
         \x20   allow_public_unauthenticated_access: true\n\
         \x20 - from: https://teapot.example.com\n\
         \x20   response:\n\
         \x20     body: '{\"ok\":true}'\n\
         \x20   allow_public_unauthenticated_access: true\n",
    );
    let resp = get(&p, "teapot.example.com", "/brew").await;
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["content-type"], "text/x-teapot");
    assert_eq!(resp.text().await.expect("body"), "short and stout");

    let resp = get(&p, "teapot.example.com", "/anything").await;
    assert_eq!(resp.status(), 200, "status defaults to 200");
    let ct = resp.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(ct.starts_with("text/plain"), "default content type {ct}");
    assert_eq!(resp.text().await.expect("body"), "{\"ok\":true}");
}

/// `timeout` bounds the wait for the upstream's answer, as Envoy's route
/// timeout (which Pomerium's `timeout` sets) starts once the whole request
/// was received: a client that uploads slowly is not cut off by it.
#[tokio::test]
async fn route_timeout_does_not_cut_off_a_slow_upload() {
    let up = Upstream::start("sink").await;
    let p = Postern::start(&config(&[route("https://app.example.com", &up.url(), &["timeout: 500ms"])]));
    let stream = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(&ZEROES[..1000])), i + 1))
    });
    let resp = p
        .client()
        .post(p.url("app.example.com", "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().body_len, 10_000);
}

/// `idle_timeout` cuts a streamed response that goes silent; without it the
/// same stream completes.
#[tokio::test]
async fn idle_timeout_ends_a_silent_stream() {
    let up = Upstream::start("stall").await;
    let p = Postern::start(&config(&[
        route("https://idle.example.com", &up.url(), &["idle_timeout: 300ms", "timeout: 5s"]),
        route("https://patient.example.com", &up.url(), &["timeout: 5s"]),
    ]));

    let started = std::time::Instant::now();
    let resp = get(&p, "idle.example.com", "/stall/3000").await;
    assert_eq!(resp.status(), 200, "headers arrive before the silence");
    let body = resp.bytes().await;
    let elapsed = started.elapsed();
    assert!(body.is_err(), "the stream must be cut, got {body:?}");
    assert!(elapsed < std::time::Duration::from_millis(2500), "cut after ~300 ms of silence, took {elapsed:?}");

    let (status, text) = text(&p, "patient.example.com", "/stall/500").await;
    assert_eq!((status, text.as_str()), (200, "first;second"));
}
