//! Test upstreams: real hyper servers on loopback that report what they saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub version: http::Version,
}

/// An upstream server. Behaviour by path:
/// - `/slow/<ms>`: waits before answering;
/// - `/status/<code>`: answers with that status;
/// - `/trailers`: a streamed body followed by `grpc-status: 0` trailers;
/// - `/chunks/<n>`: `n` 64 KiB chunks;
/// - anything else: 200 with a JSON echo of what it saw (and the body length, read in full).
///
/// Every response carries `x-upstream: <name>`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let name_owned = name.to_string();
        let seen_task = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let seen = seen_task.clone();
                let name = name_owned.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, name.clone(), seen.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, name: name.to_string(), seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("upstream saw a request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    let path = parts.uri.path().to_string();
    // Read the body frame by frame, counting, never holding it whole.
    let mut body = body;
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let record = Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body_len,
        version: parts.version,
    };
    seen.lock().expect("seen lock").push(record);

    let mut resp = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        Response::new(full("slow done"))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() =
            StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if path == "/trailers" {
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part one;"))),
            Ok(Frame::data(Bytes::from_static(b"part two"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().expect("value"));
                t.insert("grpc-message", "all good".parse().expect("value"));
                t
            })),
        ];
        let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))));
        r.headers_mut().insert("content-type", "application/grpc".parse().expect("value"));
        r
    } else if let Some(n) = path.strip_prefix("/chunks/") {
        let n: usize = n.parse().unwrap_or(1);
        let frames = (0..n).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))));
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))))
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string())))
            .collect();
        let echo = serde_json::json!({ "upstream": name, "method": parts.method.as_str(), "target": target, "headers": headers, "body_len": body_len });
        let mut r = Response::new(full(echo.to_string()));
        r.headers_mut().insert("content-type", "application/json".parse().expect("value"));
        r
    };
    resp.headers_mut().insert("x-upstream", name.parse().expect("value"));
    Ok(resp)
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}
