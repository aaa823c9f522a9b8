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
        Self::listen(name, None).await
    }

    /// Serves [`handle`] on a loopback port, over TLS when `tls` is given.
    async fn listen(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
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
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, name.clone(), seen.clone()));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                    }
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
    } else if let Some(ms) = path.strip_prefix("/stall/") {
        // One chunk, then silence for `ms`, then a second chunk.
        let ms: u64 = ms.parse().unwrap_or(1000);
        let frames = futures_util::stream::unfold(0u8, move |step| async move {
            match step {
                0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first;"))), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                }
                _ => None,
            }
        });
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
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

// ---------------------------------------------------------------------------
// Added for tests/forwarding.rs and tests/tls.rs: a TLS upstream, a WebSocket
// echo upstream, and a TLS client that trusts anything (for raw requests).
// ---------------------------------------------------------------------------

impl Upstream {
    /// Like [`Upstream::start`], but serving TLS (ALPN h2 and http/1.1) with
    /// the given certificate and key (PEM).
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Upstream {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("upstream cert PEM");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("upstream key PEM");
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("upstream certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::listen(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    /// `https://127.0.0.1:port` (for [`Upstream::start_tls`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// A WebSocket echo server: each text or binary message is sent back as is.
pub struct WsEcho {
    pub addr: SocketAddr,
    /// Handshakes that succeeded / failed (e.g. the Upgrade header was missing).
    pub upgraded: Arc<std::sync::atomic::AtomicUsize>,
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsEcho {
    pub async fn start() -> WsEcho {
        use futures_util::{SinkExt, StreamExt};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws upstream");
        let addr = listener.local_addr().expect("addr");
        let upgraded = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (up, no) = (upgraded.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (up, no) = (up.clone(), no.clone());
                tokio::spawn(async move {
                    let mut ws = match tokio_tungstenite::accept_async(stream).await {
                        Ok(ws) => {
                            up.fetch_add(1, Ordering::SeqCst);
                            ws
                        }
                        Err(_) => {
                            no.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho { addr, upgraded, refused, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A rustls client config that accepts any server certificate (signatures
/// are still checked) and offers `alpn`.
pub fn insecure_tls_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` over TLS with server name `sni`, trusting any certificate.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let connector = tokio_rustls::TlsConnector::from(insecure_tls_config(alpn));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
