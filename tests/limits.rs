//! Request and connection limits against a running `postern`: each limit
//! just under (forwarded) and just over (refused with its status, nothing
//! upstream), and the proxy still serving afterwards. Limits are set small
//! in the config so the tests stay fast; timeouts are a few hundred ms.
//!
//! Plain HTTP (`insecure_server`) over raw TCP: the requests here are ones
//! reqwest refuses to send (two `Host` headers, stalled bodies).

mod support;

use std::time::{Duration, Instant};

use support::Postern;
use support::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "app.example.com";

/// A proxy with `settings` (top-level YAML lines) and one public route to
/// `up` with `route_extra` (lines indented by four spaces).
fn start(up: &Upstream, settings: &str, route_extra: &str) -> Postern {
    Postern::start(&format!(
        "insecure_server: true\nmetrics_address: 127.0.0.1:0\n{settings}routes:\n  - from: http://{HOST}\n    to: {}\n    allow_public_unauthenticated_access: true\n{route_extra}",
        up.url()
    ))
}

/// Sends `request` on a fresh connection and returns the status code of
/// the first response, or `None` if the connection closed without one.
/// Bounded by 10 s.
async fn status_of(p: &Postern, request: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect to proxy");
    // A refused request may close the socket before all of it is written.
    let _ = tcp.write_all(request).await;
    read_status(&mut tcp, Duration::from_secs(10)).await
}

/// Reads until a status line arrives, the peer closes, or `limit` passes.
async fn read_status(tcp: &mut TcpStream, limit: Duration) -> Option<u16> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            return line.split(' ').nth(1).and_then(|s| s.parse().ok());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within {limit:?}; got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
}

/// How long until the proxy closes `tcp` (reading and discarding what it
/// sends), or `None` if it is still open after `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 8192];
    loop {
        let left = (start + limit).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A GET with `headers` (full lines without CRLF) and `Connection: close`.
fn get(path: &str, headers: &[String]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A header line `name: vvv…` of exactly `size` bytes of name plus value
/// (what the limits count).
fn header_of(name: &str, size: usize) -> String {
    format!("{name}: {}", "v".repeat(size - name.len()))
}

/// The proxy answers a plain request with 200 from the upstream.
async fn still_serves(p: &Postern, up: &Upstream) {
    // Counted by target: an aborted request before it may be recorded late.
    let after = || up.seen().iter().filter(|s| s.target == "/after").count();
    let before = after();
    assert_eq!(status_of(p, &get("/after", &[])).await, Some(200), "proxy stopped serving");
    assert_eq!(after(), before + 1, "the check request reached the upstream once");
}

#[tokio::test]
async fn one_header_over_max_header_bytes_is_431_and_not_forwarded() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_header_bytes: 4KiB\n", "");

    assert_eq!(status_of(&p, &get("/under", &[header_of("x-big", 4096)])).await, Some(200));
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.last().headers["x-big"].len(), 4096 - "x-big".len());

    assert_eq!(status_of(&p, &get("/over", &[header_of("x-big", 4097)])).await, Some(431));
    // A cookie is a header like any other.
    assert_eq!(status_of(&p, &get("/cookie", &[header_of("cookie", 4097)])).await, Some(431));
    assert!(up.seen().iter().all(|s| s.target == "/under"), "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn headers_together_over_max_header_list_bytes_are_431_and_not_forwarded() {
    let up = Upstream::start("up").await;
    // 8 KiB is the smallest list hyper's HTTP/1 reader allows. Each header
    // here is under max_header_bytes; only their sum is too much.
    let p = start(&up, "max_header_list_bytes: 8KiB\nmax_header_bytes: 4KiB\n", "");

    let under: Vec<String> = (0..2).map(|i| header_of(&format!("x-h{i}"), 3000)).collect();
    assert_eq!(status_of(&p, &get("/under", &under)).await, Some(200));

    // Three 3000-byte headers: 9000 bytes, over 8192 even before the
    // request line, answered by hyper's read buffer limit.
    let over: Vec<String> = (0..3).map(|i| header_of(&format!("x-h{i}"), 3000)).collect();
    assert_eq!(status_of(&p, &get("/over", &over)).await, Some(431));
    // The 70 KiB header of issue 17 (over any list limit hyper allows here).
    assert_eq!(status_of(&p, &get("/huge", &[header_of("x-huge", 70 * 1024)])).await, Some(431));
    // Many cookie headers, each small.
    let cookies: Vec<String> = (0..5).map(|i| format!("cookie: c{i}={}", "x".repeat(2000))).collect();
    assert_eq!(status_of(&p, &get("/cookies", &cookies)).await, Some(431));

    assert!(up.seen().iter().all(|s| s.target == "/under"), "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn a_target_over_max_uri_bytes_is_414_and_not_forwarded() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_uri_bytes: 1024\n", "");

    let path = |len: usize| format!("/{}", "a".repeat(len - 1));
    assert_eq!(status_of(&p, &get(&path(1024), &[])).await, Some(200));
    assert_eq!(up.last().target.len(), 1024);
    assert_eq!(status_of(&p, &get(&path(1025), &[])).await, Some(414));
    // The query counts too.
    assert_eq!(status_of(&p, &get(&format!("/q?{}", "b".repeat(1022)), &[])).await, Some(414));

    assert_eq!(up.seen().len(), 1, "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn more_headers_than_max_header_count_is_431_and_not_forwarded() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_header_count: 10\n", "");

    // Host and Connection are two of the ten.
    let extra = |n: usize| (0..n).map(|i| format!("x-h{i}: 1")).collect::<Vec<_>>();
    assert_eq!(status_of(&p, &get("/under", &extra(8))).await, Some(200));
    assert_eq!(status_of(&p, &get("/over", &extra(9))).await, Some(431));

    assert!(up.seen().iter().all(|s| s.target == "/under"), "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn two_host_headers_or_a_host_disagreeing_with_the_target_are_400_and_not_forwarded() {
    let up = Upstream::start("up").await;
    let p = start(&up, "", "");

    let twice = format!("GET /two HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example.com\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&p, twice.as_bytes()).await, Some(400));
    let same_twice = format!("GET /same HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&p, same_twice.as_bytes()).await, Some(400));
    let absolute = format!("GET http://other.example.com/abs HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&p, absolute.as_bytes()).await, Some(400));

    // An absolute-form target that agrees with Host is served.
    let agreeing = format!("GET http://{HOST}/ok HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&p, agreeing.as_bytes()).await, Some(200));
    assert!(up.seen().iter().all(|s| s.target == "/ok"), "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn a_silent_or_slow_client_is_closed_after_header_read_timeout() {
    let up = Upstream::start("up").await;
    let p = start(&up, "header_read_timeout: 300ms\n", "");

    // Never a byte.
    let mut silent = TcpStream::connect(p.addr).await.expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent connection is still open after 5 s");
    assert!(closed >= Duration::from_millis(250), "closed after {closed:?}, before the timeout");

    // Half a head, then nothing.
    let mut slow = TcpStream::connect(p.addr).await.expect("connect");
    slow.write_all(format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes()).await.expect("write");
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await.is_some(),
        "a half-sent head is still open after 5 s"
    );

    // A head sent within the timeout is served.
    let mut prompt = TcpStream::connect(p.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    prompt.write_all(&get("/prompt", &[])).await.expect("write");
    assert_eq!(read_status(&mut prompt, Duration::from_secs(10)).await, Some(200));

    assert!(up.seen().iter().all(|s| s.target == "/prompt"), "a partial head reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("up").await;
    // The header timeout is long so only the keep-alive timeout can close it.
    let p = start(&up, "keepalive_timeout: 300ms\nheader_read_timeout: 30s\n", "");

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(format!("GET /first HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
    assert_eq!(read_status(&mut tcp, Duration::from_secs(10)).await, Some(200));
    let closed = closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle keep-alive connection is still open after 5 s");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_and_counted() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_connections: 2\n", "");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
        tcp.write_all(format!("GET /held HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
        assert_eq!(read_status(&mut tcp, Duration::from_secs(10)).await, Some(200));
        held.push(tcp);
    }
    // The third is accepted by the kernel and closed by the proxy unanswered.
    let mut third = TcpStream::connect(p.addr).await.expect("connect");
    let _ = third.write_all(&get("/third", &[])).await;
    assert_eq!(read_status(&mut third, Duration::from_secs(5)).await, None, "a third connection was answered");
    let refused = support::metric(&support::scrape(&p).await, "postern_connections_refused_total", &[]);
    assert!(refused.is_some_and(|n| n >= 1.0), "refusals not counted: {refused:?}");
    assert!(up.seen().iter().all(|s| s.target == "/held"), "a refused connection reached the upstream");

    // Once one closes there is room again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if status_of(&p, &get("/after", &[])).await == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a connection closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A POST of `len` bytes with Content-Length.
fn post(path: &str, len: usize) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    r.extend(std::iter::repeat_n(b'x', len));
    r
}

/// A chunked POST of `len` bytes in chunks of at most 256.
fn post_chunked(path: &str, len: usize) -> Vec<u8> {
    let mut r =
        format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .into_bytes();
    let mut left = len;
    while left > 0 {
        let n = left.min(256);
        r.extend(format!("{n:x}\r\n").into_bytes());
        r.extend(std::iter::repeat_n(b'x', n));
        r.extend(b"\r\n");
        left -= n;
    }
    r.extend(b"0\r\n\r\n");
    r
}

#[tokio::test]
async fn a_body_over_the_route_max_request_body_is_413() {
    let up = Upstream::start("up").await;
    let p = start(&up, "", "    max_request_body: 1KiB\n");

    assert_eq!(status_of(&p, &post("/under", 1024)).await, Some(200));
    assert_eq!(up.last().body_len, 1024);
    assert_eq!(status_of(&p, &post("/over", 1025)).await, Some(413));
    assert_eq!(up.seen().len(), 1, "a declared-too-large body reached the upstream");

    // Without Content-Length the body is counted as it streams.
    assert_eq!(status_of(&p, &post_chunked("/chunked-under", 1024)).await, Some(200));
    assert_eq!(up.last().body_len, 1024);
    assert_eq!(status_of(&p, &post_chunked("/chunked-over", 1025)).await, Some(413));
    // The upstream may have begun reading the streamed body; it never got all of it.
    assert!(
        up.seen().iter().all(|s| s.target != "/chunked-over" || s.body_len <= 1024),
        "the whole over-limit body reached the upstream"
    );
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn default_max_request_body_applies_to_routes_without_their_own() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!(
        "insecure_server: true\ndefault_max_request_body: 512\nroutes:\n  - from: http://{HOST}\n    to: {url}\n    allow_public_unauthenticated_access: true\n  - from: http://big.example.com\n    to: {url}\n    allow_public_unauthenticated_access: true\n    max_request_body: 0\n",
        url = up.url()
    ));
    assert_eq!(status_of(&p, &post("/under", 512)).await, Some(200));
    assert_eq!(status_of(&p, &post("/over", 513)).await, Some(413));
    // `0` on the route lifts the global limit.
    let big = String::from_utf8(post("/big", 4096)).expect("ascii").replace(HOST, "big.example.com");
    assert_eq!(status_of(&p, big.as_bytes()).await, Some(200));
    assert!(up.seen().iter().all(|s| s.target != "/over"), "an over-limit body reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn a_stalled_body_is_408_and_the_upstream_request_aborted() {
    let up = Upstream::start("up").await;
    let p = start(&up, "request_body_timeout: 300ms\n", "");

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    let head = format!("POST /stalled HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(&[b'x'; 10]).await.expect("write part of the body");
    let started = Instant::now();
    assert_eq!(read_status(&mut tcp, Duration::from_secs(10)).await, Some(408));
    assert!(started.elapsed() >= Duration::from_millis(250), "408 before the body timeout");
    // The upstream saw the request begin, but never its whole body.
    assert!(up.seen().iter().all(|s| s.target != "/stalled" || s.body_len < 100), "the upstream got a complete body");

    // A body that keeps arriving within the timeout is served.
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    let head = format!("POST /steady HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 30\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(&[b'x'; 10]).await.expect("write body part");
    }
    assert_eq!(read_status(&mut tcp, Duration::from_secs(10)).await, Some(200));
    assert_eq!(up.last().body_len, 30);
    still_serves(&p, &up).await;
}

/// An HTTP/2 (prior knowledge) connection to the proxy.
async fn h2(p: &Postern) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// Sends a GET for `uri` (its authority is `:authority`) with `headers`
/// over HTTP/2 and returns the status, bounded by 10 s.
async fn h2_status(p: &Postern, uri: &str, headers: &[(&str, String)]) -> u16 {
    let mut send = h2(p).await;
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(http_body_util::Empty::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("HTTP/2 answer within 10 s")
        .expect("HTTP/2 response");
    resp.status().as_u16()
}

#[tokio::test]
async fn http2_requests_meet_the_same_limits() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_header_bytes: 4KiB\nmax_header_list_bytes: 8KiB\nmax_header_count: 10\n", "");
    let uri = format!("http://{HOST}/h2");

    assert_eq!(h2_status(&p, &uri, &[("x-big", "v".repeat(4096 - 5))]).await, 200);
    assert_eq!(up.seen().len(), 1);
    // One header over max_header_bytes: the pipeline's 431.
    assert_eq!(h2_status(&p, &uri, &[("x-big", "v".repeat(4097 - 5))]).await, 431);
    // The list over SETTINGS_MAX_HEADER_LIST_SIZE: h2's own 431.
    let many: Vec<(&str, String)> = ["x-a", "x-b", "x-c"].iter().map(|n| (*n, "v".repeat(3000))).collect();
    assert_eq!(h2_status(&p, &uri, &many).await, 431);
    // More headers than max_header_count (HTTP/2 has no parser limit for it).
    let names = ["x-0", "x-1", "x-2", "x-3", "x-4", "x-5", "x-6", "x-7", "x-8", "x-9", "x-10"];
    let count: Vec<(&str, String)> = names.iter().map(|n| (*n, "1".to_string())).collect();
    assert_eq!(h2_status(&p, &uri, &count).await, 431);
    // A Host header that is not :authority.
    assert_eq!(h2_status(&p, &uri, &[("host", "other.example.com".to_string())]).await, 400);

    assert_eq!(up.seen().len(), 1, "refused HTTP/2 requests reached the upstream");
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("up").await;
    let p = start(&up, "keepalive_timeout: 300ms\nheader_read_timeout: 30s\n", "");

    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}/first")).body(http_body_util::Empty::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await.expect("in time");
    assert_eq!(resp.expect("response").status(), 200);

    // The connection task ends when the proxy closes the connection.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn http2_streams_past_max_concurrent_streams_wait_for_a_free_one() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_concurrent_streams: 1\n", "");
    let send = h2(&p).await;

    let get = |path: &str| {
        let mut send = send.clone();
        let req =
            http::Request::get(format!("http://{HOST}{path}")).body(http_body_util::Empty::new()).expect("request");
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await.expect("in time");
            assert_eq!(resp.expect("response").status(), 200);
            Instant::now()
        }
    };
    // The slow request holds the only stream; the quick one, sent once the
    // upstream is busy with the slow one, may only start after it ends.
    let slow = tokio::spawn(get("/slow/500"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.seen().iter().any(|s| s.target == "/slow/500") {
        assert!(Instant::now() < deadline, "the slow request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let quick = get("/quick").await;
    let slow = slow.await.expect("slow request");
    assert!(quick >= slow, "a second stream ran beside the first with max_concurrent_streams: 1");
}

#[tokio::test]
async fn the_defaults_refuse_a_70_kib_header_and_accept_a_16_kib_one() {
    let up = Upstream::start("up").await;
    let p = start(&up, "", "");
    assert_eq!(status_of(&p, &get("/16k", &[header_of("x-token", 16 * 1024)])).await, Some(200));
    assert_eq!(status_of(&p, &get("/17k", &[header_of("x-token", 16 * 1024 + 1)])).await, Some(431));
    assert_eq!(status_of(&p, &get("/70k", &[header_of("x-token", 70 * 1024)])).await, Some(431));
    assert!(up.seen().iter().all(|s| s.target == "/16k"), "refused requests reached the upstream");
    still_serves(&p, &up).await;
}

// ---------------------------------------------------------------------------
// An upgraded connection (WebSocket) against max_connections
// ---------------------------------------------------------------------------

const WS_HOST: &str = "ws.example.com";

/// A proxy with `settings`, the public route to `up` and a public
/// WebSocket route `ws.example.com` to `ws` with `ws_extra` (lines
/// indented by four spaces).
fn start_with_ws(up: &Upstream, ws: &str, settings: &str, ws_extra: &str) -> Postern {
    Postern::start(&format!(
        "insecure_server: true\nmetrics_address: 127.0.0.1:0\n{settings}routes:\n  - from: http://{HOST}\n    to: {}\n    \
         allow_public_unauthenticated_access: true\n  - from: http://{WS_HOST}\n    to: {ws}\n    \
         allow_public_unauthenticated_access: true\n    allow_websockets: true\n{ws_extra}",
        up.url()
    ))
}

/// A keep-alive connection that has been answered once, left open.
async fn held_connection(p: &Postern) -> TcpStream {
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(format!("GET /held HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
    assert_eq!(read_status(&mut tcp, Duration::from_secs(10)).await, Some(200));
    tcp
}

/// `postern_connections_open` and `postern_connections_refused_total`.
async fn connection_counts(p: &Postern) -> (f64, f64) {
    let text = support::scrape(p).await;
    let open = support::metric(&text, "postern_connections_open", &[]).unwrap_or(0.0);
    let refused = support::metric(&text, "postern_connections_refused_total", &[]).unwrap_or(0.0);
    (open, refused)
}

/// The next connection is closed unanswered and counted as refused.
async fn next_connection_is_refused(p: &Postern) {
    let (_, before) = connection_counts(p).await;
    let mut next = TcpStream::connect(p.addr).await.expect("connect");
    let _ = next.write_all(&get("/refused", &[])).await;
    assert_eq!(read_status(&mut next, Duration::from_secs(5)).await, None, "a connection past the limit was answered");
    let (_, after) = connection_counts(p).await;
    assert!(after > before, "the refusal was not counted: {before} -> {after}");
}

/// A new connection is served again within 5 s.
async fn room_again(p: &Postern) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(p, &get("/after", &[])).await != Some(200) {
        assert!(Instant::now() < deadline, "no room after the upgraded connection closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `postern_connections_open` is `want` (the test's own
/// connections are closed by then), for at most 5 s.
async fn open_count_settles_at(p: &Postern, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (open, _) = connection_counts(p).await;
        if open == want {
            return;
        }
        assert!(Instant::now() < deadline, "postern_connections_open is {open}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upgraded_websocket_keeps_its_connection_slot_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start("up").await;
    let echo = support::upstream::WsEcho::start().await;
    let p = start_with_ws(&up, &echo.url(), "max_connections: 3\n", "");

    let held = [held_connection(&p).await, held_connection(&p).await];
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let url = format!("ws://{WS_HOST}:{}/echo", p.addr.port());
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake within 10 s")
        .expect("WebSocket through the proxy");
    assert_eq!(resp.status(), 101);
    // An echo: the tunnel runs, and hyper has handed the connection over.
    ws.send(Message::text("ping")).await.expect("send");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time") {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "ping"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(connection_counts(&p).await.0, 3.0, "the WebSocket is not counted as open");

    // Two plain connections and the WebSocket fill max_connections: 3.
    next_connection_is_refused(&p).await;
    // The tunnel still works beside the refusal.
    ws.send(Message::text("still")).await.expect("send");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time") {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still"),
        other => panic!("unexpected {other:?}"),
    }

    ws.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    room_again(&p).await;
    drop(held);
    open_count_settles_at(&p, 0.0).await;
}

/// An upstream that answers the first request on each connection with
/// `101 Switching Protocols` and then hands the socket to the test.
async fn upgrading_upstream() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
            if tcp.write_all(answer.as_bytes()).await.is_ok() && tx.send(tcp).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A client connection upgraded through the proxy: the request, then the
/// `101` read up to the end of its head.
async fn upgraded(p: &Postern) -> TcpStream {
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    let req = format!("GET /raw HTTP/1.1\r\nHost: {WS_HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .expect("101 within 10 s")
            .expect("read");
        assert_eq!(n, 1, "closed before the 101: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&head));
    tcp
}

#[tokio::test]
async fn closing_either_side_of_a_tunnel_gives_its_connection_slot_back() {
    let up = Upstream::start("up").await;
    let (upstream, mut tunnels) = upgrading_upstream().await;
    let p = start_with_ws(&up, &format!("http://{upstream}"), "max_connections: 1\n", "");

    // The client closes.
    let client = upgraded(&p).await;
    let _upstream_side = tunnels.recv().await.expect("upstream side");
    next_connection_is_refused(&p).await;
    drop(client);
    room_again(&p).await;
    open_count_settles_at(&p, 0.0).await;

    // The upstream closes: the proxy closes the client side too.
    let mut client = upgraded(&p).await;
    let upstream_side = tunnels.recv().await.expect("upstream side");
    next_connection_is_refused(&p).await;
    drop(upstream_side);
    assert!(closed_within(&mut client, Duration::from_secs(5)).await.is_some(), "the client side stayed open");
    room_again(&p).await;
    open_count_settles_at(&p, 0.0).await;
}

#[tokio::test]
async fn the_route_idle_timeout_ends_a_silent_tunnel_and_frees_its_slot() {
    let up = Upstream::start("up").await;
    let (upstream, mut tunnels) = upgrading_upstream().await;
    let p = start_with_ws(&up, &format!("http://{upstream}"), "max_connections: 1\n", "    idle_timeout: 300ms\n");

    let mut client = upgraded(&p).await;
    let _upstream_side = tunnels.recv().await.expect("upstream side");
    let closed =
        closed_within(&mut client, Duration::from_secs(5)).await.expect("a silent tunnel still open after 5 s");
    assert!(closed >= Duration::from_millis(250), "closed after {closed:?}, before the idle timeout");
    room_again(&p).await;
    open_count_settles_at(&p, 0.0).await;
}

// ---------------------------------------------------------------------------
// The wait between keep-alive requests (keepalive_timeout) and the time to
// send a head once it started (header_read_timeout)
// ---------------------------------------------------------------------------

/// Sends a keep-alive GET for `path` on `tcp` and reads the whole response
/// (its head and a `Content-Length` body); returns the status.
async fn exchange(tcp: &mut TcpStream, path: &str) -> u16 {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(!head.contains("transfer-encoding"), "a chunked response: {head}");
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                if buf.len() >= end + 4 + len {
                    assert_eq!(buf.len(), end + 4 + len, "bytes after the response");
                    return head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                }
            }
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the response to {path} was complete");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a response within 10 s")
}

#[tokio::test]
async fn keep_alive_waits_keepalive_timeout_for_the_next_request_not_header_read_timeout() {
    let up = Upstream::start("up").await;
    let p = start(&up, "header_read_timeout: 300ms\nkeepalive_timeout: 2s\n", "");

    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    assert_eq!(exchange(&mut tcp, "/first").await, 200);
    // Idle for more than header_read_timeout, less than keepalive_timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(exchange(&mut tcp, "/second").await, 200);
    // Idle past keepalive_timeout.
    let closed = closed_within(&mut tcp, Duration::from_millis(2500)).await;
    let closed = closed.expect("an idle keep-alive connection still open 2.5 s after its last response");
    assert!(closed >= Duration::from_millis(1800), "closed after {closed:?}, before keepalive_timeout");
    assert_eq!(up.seen().len(), 2);
    still_serves(&p, &up).await;
}

#[tokio::test]
async fn a_next_head_must_arrive_within_header_read_timeout_of_its_first_byte() {
    let up = Upstream::start("up").await;
    let p = start(&up, "header_read_timeout: 300ms\nkeepalive_timeout: 2s\n", "");

    // Half a head after an idle second, then nothing.
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    assert_eq!(exchange(&mut tcp, "/first").await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tcp.write_all(format!("GET /half HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes()).await.expect("write");
    let closed = closed_within(&mut tcp, Duration::from_secs(5)).await.expect("a half-sent head still open after 5 s");
    // keepalive_timeout would have closed it 1 s after the half head.
    assert!(
        closed >= Duration::from_millis(200) && closed < Duration::from_millis(900),
        "closed {closed:?} after the half head, not after header_read_timeout"
    );

    // A head sent a byte at a time keeps arriving, but not for longer than
    // header_read_timeout in all.
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    assert_eq!(exchange(&mut tcp, "/first").await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = format!("GET /trickle HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}\r\n\r\n", "x".repeat(100));
    let started = Instant::now();
    let mut closed = None;
    for byte in head.as_bytes() {
        if tcp.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("the trickled head was answered"),
            Err(_) => {}
        }
    }
    let closed = closed.expect("a head trickled over 7 s was served");
    assert!(closed < Duration::from_millis(1200), "a trickled head held the connection for {closed:?}");

    assert!(up.seen().iter().all(|s| s.target == "/first"), "a partial head reached the upstream");
    still_serves(&p, &up).await;
}
