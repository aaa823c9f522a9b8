//! HTTP/2 connection limits, with frames written by hand (prior knowledge
//! over plain TCP) so the test sees exactly what the proxy advertises and
//! how it answers a flood of reset streams.

mod support;

use std::time::{Duration, Instant};

use support::Postern;
use support::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

fn start(up: &Upstream, settings: &str) -> Postern {
    Postern::start(&format!(
        "insecure_server: true\n{settings}routes:\n  - from: http://app.example.com\n    to: {}\n    \
         allow_public_unauthenticated_access: true\n",
        up.url()
    ))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET http://app.example.com/` in HPACK: static-table entries for the
/// method, scheme and path, a literal `:authority` without indexing.
fn get_headers() -> Vec<u8> {
    let host = b"app.example.com";
    let mut block = vec![0x82, 0x86, 0x84, 0x01, host.len() as u8];
    block.extend_from_slice(host);
    block
}

/// Reads frames until `want` returns a value or 5 s pass.
async fn read_frames<T>(tcp: &mut TcpStream, mut want: impl FnMut(u8, &[u8]) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let found = want(buf[3], &buf[9..9 + len]);
            buf.drain(..9 + len);
            if found.is_some() {
                return found;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn open(p: &Postern) -> TcpStream {
    let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
    tcp.write_all(PREFACE).await.expect("preface");
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
    tcp
}

/// The server's SETTINGS, as (identifier, value) pairs.
async fn server_settings(p: &Postern) -> Vec<(u16, u32)> {
    let mut tcp = open(p).await;
    read_frames(&mut tcp, |kind, payload| {
        (kind == SETTINGS).then(|| {
            payload
                .chunks_exact(6)
                .map(|e| (u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
                .collect()
        })
    })
    .await
    .expect("a SETTINGS frame from the proxy")
}

#[tokio::test]
async fn the_proxy_advertises_its_stream_and_header_list_limits() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_concurrent_streams: 7\nmax_header_list_bytes: 12KiB\n");
    let settings = server_settings(&p).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) and SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 12 * 1024)), "{settings:?}");
    let defaults = start(&up, "");
    let settings = server_settings(&defaults).await;
    assert!(settings.contains(&(0x3, 128)), "{settings:?}");
    assert!(settings.contains(&(0x6, 64 * 1024)), "{settings:?}");
}

#[tokio::test]
async fn a_flood_of_reset_streams_ends_the_connection() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_pending_accept_reset_streams: 5\n");
    let mut tcp = open(&p).await;
    // Each stream opened and cancelled at once, all in one write: the
    // "rapid reset" pattern (CVE-2023-44487).
    let mut flood = Vec::new();
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, 0x5, id, &get_headers()));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The proxy may close while we still write; that is the point.
    let _ = tcp.write_all(&flood).await;
    let goaway = read_frames(&mut tcp, |kind, payload| {
        (kind == GOAWAY && payload.len() >= 8)
            .then(|| u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
    })
    .await;
    // ENHANCE_YOUR_CALM (0xb), h2's answer past the limit.
    assert_eq!(goaway, Some(0xb), "no GOAWAY(ENHANCE_YOUR_CALM) after 200 reset streams");
    assert!(up.seen().len() < 200, "every reset stream was forwarded");
    // The proxy still serves a well-behaved HTTP/2 client.
    let mut tcp = open(&p).await;
    tcp.write_all(&frame(HEADERS, 0x5, 1, &get_headers())).await.expect("request");
    let status = read_frames(&mut tcp, |kind, payload| {
        // The response's first header is `:status` from the static table
        // (0x88 is 200) when the answer is 200.
        (kind == HEADERS).then(|| payload.first().copied())
    })
    .await;
    assert_eq!(status, Some(Some(0x88)), "no 200 after the flood");
}

#[tokio::test]
async fn a_few_reset_streams_under_the_limit_keep_the_connection() {
    let up = Upstream::start("up").await;
    let p = start(&up, "max_pending_accept_reset_streams: 5\n");
    let mut tcp = open(&p).await;
    let mut some = Vec::new();
    for id in [1u32, 3, 5] {
        some.extend(frame(HEADERS, 0x5, id, &get_headers()));
        some.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    some.extend(frame(HEADERS, 0x5, 7, &get_headers()));
    tcp.write_all(&some).await.expect("write");
    let answer = read_frames(&mut tcp, |kind, payload| match kind {
        GOAWAY => Some(Err(payload.to_vec())),
        HEADERS => Some(Ok(payload.first().copied())),
        _ => None,
    })
    .await;
    assert_eq!(answer, Some(Ok(Some(0x88))), "stream 7 not answered 200 on the same connection");
}

/// Reads until the proxy closes; how long that took (`None`: open after 5 s).
async fn closed_after(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("up").await;
    let p = start(&up, "header_read_timeout: 10s\nkeepalive_timeout: 300ms\n");
    let mut tcp = open(&p).await;
    tcp.write_all(&frame(HEADERS, 0x5, 1, &get_headers())).await.expect("request");
    let status = read_frames(&mut tcp, |kind, payload| (kind == HEADERS).then(|| payload.first().copied())).await;
    assert_eq!(status, Some(Some(0x88)));
    let waited = closed_after(&mut tcp).await.expect("idle HTTP/2 connection still open after 5 s");
    assert!(waited >= Duration::from_millis(200), "closed after {waited:?}, before the timeout");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_after_the_handshake_is_closed_after_header_read_timeout() {
    support::init_crypto();
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!(
        "header_read_timeout: 300ms\nroutes:\n  - from: https://app.example.com\n    to: {}\n    \
         allow_public_unauthenticated_access: true\n",
        up.url()
    ));
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tls = support::upstream::tls_connect(p.addr, "app.example.com", &[alpn]).await.expect("TLS handshake");
        let waited = closed_after(&mut tls).await.expect("silent TLS connection still open after 5 s");
        assert!(waited >= Duration::from_millis(100), "closed after {waited:?}");
    }
    let resp = p.client().get(p.url("app.example.com", "/")).send().await.expect("request after");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_http2_connection_waits_keepalive_timeout_between_streams_not_header_read_timeout() {
    const PING: u8 = 0x6;
    let up = Upstream::start("up").await;
    let p = start(&up, "header_read_timeout: 300ms\nkeepalive_timeout: 2s\n");
    let mut tcp = open(&p).await;
    let ok = |kind: u8, payload: &[u8]| (kind == HEADERS).then(|| payload.first().copied());
    tcp.write_all(&frame(HEADERS, 0x5, 1, &get_headers())).await.expect("request");
    assert_eq!(read_frames(&mut tcp, ok).await, Some(Some(0x88)));
    // Idle for longer than header_read_timeout, with a ping on the way:
    // bytes between streams start no head.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tcp.write_all(&frame(PING, 0, 0, &[0; 8])).await.expect("ping");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tcp.write_all(&frame(HEADERS, 0x5, 3, &get_headers())).await.expect("second request");
    assert_eq!(read_frames(&mut tcp, ok).await, Some(Some(0x88)), "no answer after an idle second");
    // Without a stream for keepalive_timeout: closed.
    let waited = closed_after(&mut tcp).await.expect("idle HTTP/2 connection still open after 5 s");
    assert!(waited >= Duration::from_millis(1800), "closed after {waited:?}, before keepalive_timeout");
    assert_eq!(up.seen().len(), 2);
}
