//! Hostile request paths end to end (security catalogue section A, items
//! 2-7): each one is written byte for byte over a raw TLS socket, because
//! client libraries normalize or refuse such paths before sending them.
//!
//! The routes are chosen so that every misreading would show: a public
//! `/pub` prefix and a public catch-all, each to a recording upstream, a
//! public regex `/api/.*/status`, and sign-in-only routes for `/admin`
//! (exact), `/admin/` (prefix) and `/api` (prefix) whose upstream must never
//! see a request. For every path the proxy either refuses it (400) or
//! forwards exactly its normal form to the upstream of the route that form
//! means, or asks for sign-in when that route is protected.

mod support;

use std::time::{Duration, Instant};

use support::Postern;
use support::upstream::{Upstream, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What must happen to one hostile request target.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 400, nothing forwarded.
    Refused,
    /// The route is a protected one: 401, nothing forwarded.
    SignIn,
    /// Forwarded to the named upstream with exactly this target.
    Forwarded(&'static str, &'static str),
}

use Expect::{Forwarded, Refused, SignIn};

/// Request targets as sent on the wire, with what must happen.
const CASES: &[(&str, Expect)] = &[
    // A2: dot segments, plain and encoded, resolved before matching.
    ("/pub/../admin", SignIn),
    ("/pub/%2e%2e/admin", SignIn),
    ("/pub/%2E%2E/admin", SignIn),
    ("/pub/.%2e/admin", SignIn),
    ("/pub/%2e./admin/", SignIn),
    ("/pub/./../admin/x", SignIn),
    ("/pub/x/../../admin", SignIn),
    ("/pub/../../../admin", SignIn),
    ("/pub/../api/private", SignIn),
    ("/admin/../pub/x", Forwarded("pub", "/pub/x")),
    ("/pub/./x", Forwarded("pub", "/pub/x")),
    ("/pub/a/b/..", Forwarded("pub", "/pub/a/")),
    // A2 and A7: `;` parameters, which servlet containers strip per segment.
    ("/a/..;x=1/admin", Refused),
    ("/pub/..;/admin", Refused),
    ("/pub/.;/admin", Refused),
    ("/pub/..;x=1/..;y=2/admin", Refused),
    ("/admin;jsessionid=1", Refused),
    ("/admin;", Refused),
    ("/pub;/x", Refused),
    // An encoded `%3B` is data to every server that splits parameters
    // before decoding, so it is forwarded as is and matches no `/admin` rule.
    ("/pub/a%3Bb", Forwarded("pub", "/pub/a%3Bb")),
    ("/pub/..%3B/x", Forwarded("pub", "/pub/..%3B/x")),
    ("/admin%3Bjsessionid=1", Forwarded("rest", "/admin%3Bjsessionid=1")),
    // A3: encoded separators and backslashes.
    ("/pub/%2Fadmin", Refused),
    ("/pub/%2fadmin", Refused),
    ("/x%2F..%2Fadmin", Refused),
    ("/pub%2F..%2Fadmin", Refused),
    ("/pub/%5Cadmin", Refused),
    ("/pub%5C..%5Cadmin", Refused),
    ("/pub/..%5cadmin", Refused),
    ("/pub/..\\admin", Refused),
    ("/pub\\..\\admin", Refused),
    // A4: empty segments merged before matching.
    ("//admin", SignIn),
    ("///admin", SignIn),
    ("/pub//../admin", SignIn),
    ("/pub///..//admin", SignIn),
    ("//pub//x", Forwarded("pub", "/pub/x")),
    // A5: a raw fragment is dropped by the HTTP parser or refused; `%23` is data.
    ("/admin#/public", SignIn),
    ("/admin#/../pub", SignIn),
    ("/foo/secret%23/bar", Forwarded("rest", "/foo/secret%23/bar")),
    ("/pub/secret%23/../x", Forwarded("pub", "/pub/x")),
    ("/admin%23/../pub", Forwarded("pub", "/pub")),
    // A6: path rules never see the query; the query is forwarded as sent.
    ("/api/private?x=/status", SignIn),
    ("/api/private?/a/status", SignIn),
    ("/api/v1/status", Forwarded("api", "/api/v1/status")),
    ("/api/v1/status?x=/../admin", Forwarded("api", "/api/v1/status?x=/../admin")),
    ("/pub?x=/../admin", Forwarded("pub", "/pub?x=/../admin")),
    ("/pub/%3Fx=/../y", Forwarded("pub", "/pub/y")),
    ("/pub/%3Fx=/../../admin", SignIn),
    // Double encoding: a second decode must not find an escape.
    ("/pub/%252e%252e/admin", Refused),
    ("/pub/%252E%252E/admin", Refused),
    ("/pub/%252e%252e%252fadmin", Refused),
    ("/pub%252fadmin", Refused),
    ("/pub%252F..%252Fadmin", Refused),
    ("/pub%255cadmin", Refused),
    ("/pub%255C..%255Cadmin", Refused),
    ("/pub/%25%32%65%25%32%65/admin", Refused),
    ("/pub/%2525%32%65/admin", Refused),
    ("/pub/%25252e%25252e/admin", Refused),
    ("/pub/%25u002e%25u002e/admin", Refused),
    ("/pub%25u002f..%25u002fadmin", Refused),
    ("/pub%25U005C..%25U005Cadmin", Refused),
    // Unicode that NFKC or best-fit folding turns into `.`, `/` or `\`,
    // percent-encoded and raw.
    ("/pub/%EF%BC%8E%EF%BC%8E/admin", Refused),
    ("/pub/%ef%bc%8e%ef%bc%8e/admin", Refused),
    ("/pub/%EF%BC%8E./admin", Refused),
    ("/pub%EF%BC%8F..%EF%BC%8Fadmin", Refused),
    ("/pub%EF%BC%BC..%EF%BC%BCadmin", Refused),
    ("/pub/%E2%80%A4%E2%80%A4/admin", Refused),
    ("/pub/%E2%80%A5/admin", Refused),
    ("/pub/%EF%B9%92%EF%B9%92/admin", Refused),
    ("/pub%E2%88%95..%E2%88%95admin", Refused),
    ("/pub%E2%81%84..%E2%81%84admin", Refused),
    ("/pub%EF%B9%A8..%EF%B9%A8admin", Refused),
    ("/pub/%EF%BD%A1%EF%BD%A1/admin", Refused),
    ("/pub/%E3%80%82%E3%80%82/admin", Refused),
    ("/pub/\u{FF0E}\u{FF0E}/admin", Refused),
    ("/pub\u{FF0F}..\u{FF0F}admin", Refused),
    ("/pub/\u{2024}\u{2024}/admin", Refused),
    ("/pub/\u{FE52}\u{FE52}/admin", Refused),
    // Folded to `?` or `#`, these would end the path at `/admin` upstream
    // while matching no `/admin` rule here.
    ("/admin%EF%BC%9Fx", Refused),
    ("/admin\u{FF1F}x", Refused),
    ("/admin%EF%BC%83/public", Refused),
    ("/admin%EF%B9%96", Refused),
    // Overlong UTF-8, NUL, bad escapes.
    ("/pub/%C0%AE%C0%AE/admin", Refused),
    ("/pub/%E0%80%AE%E0%80%AE/admin", Refused),
    ("/pub/%c0%af..%c0%afadmin", Refused),
    ("/pub/%00/../admin", Refused),
    ("/pub/%zz", Refused),
    ("/pub/%", Refused),
    // Ordinary paths that must pass unchanged or in their one normal form.
    ("/pub/a%20b", Forwarded("pub", "/pub/a%20b")),
    ("/pub/caf%c3%a9", Forwarded("pub", "/pub/caf%C3%A9")),
    ("/pub/%E3%81%82", Forwarded("pub", "/pub/%E3%81%82")),
    ("/pub/100%25", Forwarded("pub", "/pub/100%25")),
    ("/pub/100%25off", Forwarded("pub", "/pub/100%25off")),
    ("/pub/%7euser", Forwarded("pub", "/pub/~user")),
    ("/pub/%41%42", Forwarded("pub", "/pub/AB")),
    ("/pub/a%3Fb?q=1", Forwarded("pub", "/pub/a%3Fb?q=1")),
    ("/pub/a..b/...", Forwarded("pub", "/pub/a..b/...")),
    ("/pub", Forwarded("pub", "/pub")),
    ("/elsewhere", Forwarded("rest", "/elsewhere")),
    ("/admin", SignIn),
    ("/admin/", SignIn),
    ("/admin/x", SignIn),
    ("/api/private", SignIn),
];

/// Routes in match order (the first match wins).
fn config(pub_up: &Upstream, api_up: &Upstream, admin_up: &Upstream, rest_up: &Upstream) -> String {
    format!(
        "routes:\n\
         \x20 - from: https://app.example.com\n    to: {api}\n    regex: '/api/.*/status'\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: https://app.example.com\n    to: {admin}\n    prefix: /api\n\
         \x20 - from: https://app.example.com\n    to: {admin}\n    path: /admin\n\
         \x20 - from: https://app.example.com\n    to: {admin}\n    prefix: /admin/\n\
         \x20 - from: https://app.example.com\n    to: {public}\n    prefix: /pub\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: https://app.example.com\n    to: {rest}\n    allow_public_unauthenticated_access: true\n",
        api = api_up.url(),
        admin = admin_up.url(),
        public = pub_up.url(),
        rest = rest_up.url(),
    )
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    body: String,
}

/// Sends a GET for `target` byte for byte over TLS (HTTP/1.1, so the
/// request target is exactly what we wrote) and reads until the proxy
/// closes the connection.
async fn raw_get(p: &Postern, target: &str) -> Raw {
    let request = format!("GET {target} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n");
    let mut tls = tls_connect(p.addr, "app.example.com", &[b"http/1.1"]).await.expect("TLS to proxy");
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
            Err(_) => panic!("{target:?}: no end of response within 10s; got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{target:?}: no response head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target:?}: no status in {head:?}"));
    Raw { status, body: body.to_string() }
}

/// The JSON error message in a proxy answer, when there is one (the HTTP
/// parser's own 400 has no body).
fn message(body: &str) -> String {
    let json =
        body.lines().find(|l| l.starts_with('{')).and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match json {
        Some(j) => format!("{}: {}", j["error"].as_str().unwrap_or("?"), j["message"].as_str().unwrap_or("?")),
        None => "refused by the HTTP parser".to_string(),
    }
}

#[tokio::test]
async fn hostile_paths_are_refused_or_forwarded_as_matched() {
    let pub_up = Upstream::start("pub").await;
    let api_up = Upstream::start("api").await;
    let admin_up = Upstream::start("admin").await;
    let rest_up = Upstream::start("rest").await;
    let p = Postern::start(&config(&pub_up, &api_up, &admin_up, &rest_up));
    let upstreams = [&pub_up, &api_up, &admin_up, &rest_up];
    let total_seen = || upstreams.iter().map(|u| u.seen().len()).sum::<usize>();

    let (mut refused, mut by_parser, mut sign_in, mut forwarded) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for &(target, expect) in CASES {
        let before = total_seen();
        let before_named: Vec<usize> = upstreams.iter().map(|u| u.seen().len()).collect();
        let r = raw_get(&p, target).await;
        let after = total_seen();
        let outcome = match expect {
            Refused if r.status == 400 && after == before => {
                refused += 1;
                let why = message(&r.body);
                by_parser += usize::from(!why.starts_with("bad_path: "));
                println!("refused   {target:?}: {why}");
                Ok(())
            }
            SignIn if r.status == 401 && after == before => {
                sign_in += 1;
                println!("sign-in   {target:?}");
                Ok(())
            }
            Forwarded(name, want) if r.status == 200 && after == before + 1 => {
                let i = upstreams.iter().position(|u| u.name == name).expect("known upstream");
                let got = upstreams[i].seen();
                if got.len() == before_named[i] + 1 && got[got.len() - 1].target == want {
                    forwarded += 1;
                    println!("forwarded {target:?} -> {name} {want:?}");
                    Ok(())
                } else {
                    Err(format!("reached the wrong upstream or as {:?}", got.last().map(|s| s.target.clone())))
                }
            }
            _ => Err(format!("status {} ({}), {} request(s) forwarded", r.status, message(&r.body), after - before)),
        };
        if let Err(e) = outcome {
            failures.push(format!("{target:?}: expected {expect:?}, got {e}"));
        }
    }
    println!(
        "{} hostile or boundary paths tried: {refused} refused (400; {by_parser} of them by the HTTP parser, the rest naming \
         the path rule), {sign_in} sent to sign-in (401), {forwarded} forwarded as normalized",
        CASES.len()
    );
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(admin_up.seen().is_empty(), "the protected upstream saw {:?}", admin_up.seen());

    // The process still serves afterwards.
    let r = raw_get(&p, "/pub/still-alive").await;
    assert_eq!(r.status, 200, "after the attacks: {}", r.body);
    assert_eq!(pub_up.last().target, "/pub/still-alive");
}
