//! The direct exchange against a real TCP server on loopback that answers
//! each request with scripted bytes and records what it was sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What one scripted answer does after writing its bytes.
#[derive(Clone, Copy)]
enum Then {
    KeepOpen,
    Close,
    /// Keep the connection, and send these bytes unasked a moment later.
    Unsolicited(&'static [u8]),
}

#[derive(Default)]
struct Seen {
    /// (connection number, request head) in arrival order.
    requests: Vec<(usize, String)>,
}

struct Upstream {
    authority: Authority,
    seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    /// Serves the answers in order, one per request, across connections.
    async fn start(answers: Vec<(&'static [u8], Then)>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener.local_addr().expect("addr").to_string().parse().expect("authority");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut conn_no = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                conn_no += 1;
                let (answers, seen, n) = (answers.clone(), record.clone(), conn_no);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head: Vec<u8> = buf.drain(..end).collect();
                        seen.lock().expect("seen").requests.push((n, String::from_utf8_lossy(&head).into_owned()));
                        let Some((bytes, then)) = answers.lock().expect("answers").pop_front() else { return };
                        if stream.write_all(bytes).await.is_err() {
                            return;
                        }
                        match then {
                            Then::KeepOpen => {}
                            Then::Close => return,
                            Then::Unsolicited(extra) => {
                                tokio::time::sleep(Duration::from_millis(30)).await;
                                let _ = stream.write_all(extra).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream { authority, seen }
    }

    fn connections(&self) -> Vec<usize> {
        self.seen.lock().expect("seen").requests.iter().map(|(n, _)| *n).collect()
    }

    fn request(&self, i: usize) -> String {
        self.seen.lock().expect("seen").requests[i].1.clone()
    }
}

fn get(path: &str, authority: &Authority) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, authority.as_str())
        .header("x-forwarded-for", "10.0.0.1")
        .body(())
        .expect("request")
}

fn head(path: &str, authority: &Authority) -> Request<()> {
    let mut req = get(path, authority);
    *req.method_mut() = Method::HEAD;
    req
}

/// Status, body and trailers of a response, read to the end.
async fn read(resp: Response<ProxyBody>) -> (u16, Vec<u8>, Option<HeaderMap>) {
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes().to_vec(), trailers)
}

async fn fetch(up: &Upstream, req: &Request<()>) -> (u16, Vec<u8>, Option<HeaderMap>) {
    read(send(&up.authority, req).await.expect("response")).await
}

#[tokio::test]
async fn writes_one_plain_request_head() {
    let up = Upstream::start(vec![(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Then::KeepOpen)]).await;
    fetch(&up, &get("/p/a?q=1&r", &up.authority)).await;
    assert_eq!(
        up.request(0),
        format!("GET /p/a?q=1&r HTTP/1.1\r\nhost: {}\r\nx-forwarded-for: 10.0.0.1\r\n\r\n", up.authority)
    );
}

#[tokio::test]
async fn content_length_body_then_the_connection_is_reused() {
    let up = Upstream::start(vec![
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello", Then::KeepOpen),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop", Then::KeepOpen),
    ])
    .await;
    let resp = send(&up.authority, &get("/", &up.authority)).await.expect("response");
    assert_eq!(resp.headers()["x-app"], "1");
    assert_eq!(read(resp).await, (200, b"hello".to_vec(), None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (404, b"nop".to_vec(), None));
    assert_eq!(up.connections(), [1, 1], "one connection for both");
}

#[tokio::test]
async fn hop_by_hop_headers_and_those_connection_names_are_left_out() {
    let up = Upstream::start(vec![(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
          Transfer-Encoding: chunked\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: 2\r\n\r\n0\r\n\r\n",
        Then::KeepOpen,
    )])
    .await;
    let resp = send(&up.authority, &get("/", &up.authority)).await.expect("response");
    let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
}

#[tokio::test]
async fn chunked_body_with_trailers_then_reuse() {
    let up = Upstream::start(vec![
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nGrpc-Status: 0\r\n\r\n",
            Then::KeepOpen,
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Then::KeepOpen),
    ])
    .await;
    let (status, body, trailers) = fetch(&up, &get("/", &up.authority)).await;
    assert_eq!((status, body.as_slice()), (200, &b"hello, world"[..]));
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"ok".to_vec(), None));
    assert_eq!(up.connections(), [1, 1]);
}

/// Serves `first`, then a plain answer: the first body must read as
/// `first_body`, and the second request must have needed a new connection.
async fn assert_not_reused(first: (&'static [u8], Then), first_body: &[u8]) {
    let up = Upstream::start(vec![first, (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", Then::KeepOpen)]).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, first_body.to_vec(), None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"x".to_vec(), None));
    assert_eq!(up.connections(), [1, 2]);
}

#[tokio::test]
async fn body_until_close_is_read_whole_and_never_reused() {
    assert_not_reused((b"HTTP/1.1 200 OK\r\n\r\nall of it", Then::Close), b"all of it").await;
}

#[tokio::test]
async fn bodiless_answers_read_no_body_and_keep_the_connection() {
    let up = Upstream::start(vec![
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", Then::KeepOpen),
        (b"HTTP/1.1 204 No Content\r\n\r\n", Then::KeepOpen),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", Then::KeepOpen),
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Then::KeepOpen,
        ),
    ])
    .await;
    let resp = send(&up.authority, &head("/", &up.authority)).await.expect("HEAD");
    assert_eq!(resp.headers()["content-length"], "1000", "HEAD keeps the length it describes");
    assert_eq!(read(resp).await, (200, vec![], None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (204, vec![], None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (304, vec![], None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"ok".to_vec(), None), "1xx skipped");
    assert_eq!(up.connections(), [1, 1, 1, 1]);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_or_never_reused() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ] {
        let up = Upstream::start(vec![(bad, Then::KeepOpen)]).await;
        let err = send(&up.authority, &get("/", &up.authority)).await.expect_err("refused");
        assert!(matches!(err, DirectError::Malformed(_)), "{err} for {:?}", String::from_utf8_lossy(bad));
    }
    // Repeated identical lengths are one length.
    let up = Upstream::start(vec![(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", Then::KeepOpen)]).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"ok".to_vec(), None));

    // Transfer-Encoding wins over Content-Length, and the connection is
    // not trusted afterwards.
    let up = Upstream::start(vec![
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", Then::KeepOpen),
    ])
    .await;
    let resp = send(&up.authority, &get("/", &up.authority)).await.expect("response");
    assert!(resp.headers().get("content-length").is_none(), "the bogus length is not passed on");
    assert_eq!(read(resp).await, (200, b"ok".to_vec(), None));
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"x".to_vec(), None));
    assert_eq!(up.connections(), [1, 2]);

    // A coding other than chunked last: the body runs to the close.
    let up = Upstream::start(vec![(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzzz", Then::Close)]).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"zzzz".to_vec(), None));
}

#[tokio::test]
async fn broken_chunks_and_short_bodies_fail_the_stream() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ] {
        let up = Upstream::start(vec![(bad, Then::Close)]).await;
        let resp = send(&up.authority, &get("/", &up.authority)).await.expect("head is fine");
        assert!(resp.into_body().collect().await.is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test]
async fn extra_bytes_after_a_message_mean_no_reuse() {
    assert_not_reused((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", Then::KeepOpen), b"ok").await;
}

#[tokio::test]
async fn connection_close_and_http10_are_not_reused() {
    let up = Upstream::start(vec![
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na", Then::KeepOpen),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", Then::KeepOpen),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", Then::KeepOpen),
    ])
    .await;
    for expected in [b"a", b"b", b"c"] {
        assert_eq!(fetch(&up, &get("/", &up.authority)).await.1, expected.to_vec());
    }
    assert_eq!(up.connections(), [1, 2, 3]);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    // The upstream frames the first answer for keep-alive but closes.
    let up = Upstream::start(vec![
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", Then::Close),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", Then::KeepOpen),
    ])
    .await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await.1, b"a");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await.1, b"b");
    assert_eq!(up.connections(), [1, 2]);
}

#[tokio::test]
async fn an_unsolicited_answer_on_an_idle_connection_is_not_taken_for_the_next() {
    let up = Upstream::start(vec![
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
            Then::Unsolicited(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"),
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", Then::KeepOpen),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc", Then::KeepOpen),
    ])
    .await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"a".to_vec(), None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"b".to_vec(), None), "not the 408");
    // An idle connection with nothing pending is still reused.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fetch(&up, &get("/", &up.authority)).await, (200, b"c".to_vec(), None));
    assert_eq!(up.connections(), [1, 2, 2]);
}

#[tokio::test]
async fn oversized_heads_are_refused_and_refused_connects_say_so() {
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    while huge.len() <= MAX_HEAD {
        huge.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let up = Upstream::start(vec![(Box::leak(huge.into_boxed_slice()), Then::KeepOpen)]).await;
    let err = send(&up.authority, &get("/", &up.authority)).await.expect_err("refused");
    assert!(matches!(err, DirectError::Malformed(_)), "{err}");

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let authority: Authority = closed.local_addr().expect("addr").to_string().parse().expect("authority");
    drop(closed);
    let err = send(&authority, &get("/", &authority)).await.expect_err("refused");
    assert!(matches!(err, DirectError::Connect(_)), "{err}");
}

#[test]
fn only_bodiless_safe_methods_take_the_direct_path() {
    assert!(eligible(&Method::GET, true));
    assert!(eligible(&Method::HEAD, true));
    assert!(eligible(&Method::OPTIONS, true));
    assert!(!eligible(&Method::GET, false), "a GET with a body");
    assert!(!eligible(&Method::POST, true));
    assert!(!eligible(&Method::DELETE, true));
}
