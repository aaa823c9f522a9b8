//! Forwarding to upstreams: the request rewrite, the pooled clients, retry
//! on connect failure, response header cleanup, and upgrade tunnels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use futures_util::TryFutureExt;
use futures_util::future::Either;
use http_body_util::BodyExt;

use super::body::{BodyLimits, ProxyBody, Reclaimable, RequestBody};
use super::direct::{self, DirectError};
use super::hop::strip_hop_by_hop;
use super::pool::PoolError;
use super::respond::ProxyError;
use crate::routes::{HostHeader, Route, Upstream, UpstreamTls, Upstreams};

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;
type UpstreamClient = Client<HttpsConnector, Reclaimable>;

thread_local! {
    /// Pooled clients, one per distinct upstream TLS policy (and one for
    /// h2c), per worker thread: a pooled connection's task lives on the
    /// thread that opened it, so requests never wake another thread. Kept
    /// across reloads so connection pools survive a config change.
    static CLIENTS: RefCell<HashMap<(UpstreamTls, bool), UpstreamClient>> = RefCell::new(HashMap::new());
}

fn client_for(tls: &UpstreamTls, h2c: bool) -> UpstreamClient {
    CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some(c) = clients.get(&(tls.clone(), h2c)) {
            return c.clone();
        }
        let client = build_client(tls, h2c);
        clients.insert((tls.clone(), h2c), client.clone());
        client
    })
}

fn build_client(tls: &UpstreamTls, h2c: bool) -> UpstreamClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = if tls.skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        let mut roots = crate::trust::client_roots();
        if let Some(cas) = &tls.custom_ca {
            for ca in cas.iter() {
                let _ = roots.add(ca.clone());
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(256);
    if h2c {
        client.http2_only(true);
    }
    client.build(connector)
}

/// `tls_skip_verify`: accept any certificate (the handshake is still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
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

/// What the forwarder knows about the client connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub ip: IpAddr,
    /// `ip` as a header value for `X-Forwarded-For`, formatted once per
    /// connection rather than once per request.
    pub ip_value: HeaderValue,
    /// Whether the client reached us over TLS.
    pub tls: bool,
    /// Whether `X-Forwarded-*` from this peer are believed (`trusted_proxies`).
    pub trusted: bool,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr, tls: bool) -> Self {
        let ip = ip.to_canonical();
        let ip_value = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        Peer { ip, ip_value, tls, trusted: false }
    }
}

/// Whether the request asks to switch protocols (WebSocket and the like).
pub(crate) fn upgrade_requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if req.version() == Version::HTTP_11 && connection_upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets `X-Forwarded-For/-Proto/-Host`, believing the client's values only
/// from trusted proxies.
fn set_forwarded(headers: &mut HeaderMap, peer: &Peer, host: &HeaderValue) {
    let (xff, xfp, xfh) = (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST);
    let prior: Vec<&str> =
        if peer.trusted { headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()).collect() } else { Vec::new() };
    if prior.is_empty() {
        headers.insert(xff, peer.ip_value.clone());
    } else {
        let mut chain = prior.join(", ");
        chain.push_str(", ");
        chain.push_str(&peer.ip.to_string());
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(xff, v);
        }
    }
    if !(peer.trusted && headers.contains_key(&xfp)) {
        headers.insert(xfp, HeaderValue::from_static(if peer.tls { "https" } else { "http" }));
    }
    if !(peer.trusted && headers.contains_key(&xfh)) {
        headers.insert(xfh, host.clone());
    }
    // Usually neither is there: a look at the names is cheaper than two
    // removes, each a hash and a probe.
    if !peer.trusted && headers.keys().any(|k| k == header::FORWARDED || k == X_REAL_IP) {
        headers.remove(header::FORWARDED);
        headers.remove(X_REAL_IP);
    }
}

/// The path the upstream gets: the matched (normalized) path after
/// `prefix_rewrite`, under the `to` URL's own path, plus the query.
pub(crate) fn upstream_path(route: &Route, upstream: &Upstream, path: &str, query: Option<&str>) -> String {
    let rewritten: std::borrow::Cow<'_, str> = match &route.prefix_rewrite {
        Some(rewrite) => {
            let matched = match &route.rule {
                crate::routes::PathRule::Prefix(p) | crate::routes::PathRule::Segments(p) => p.as_str(),
                crate::routes::PathRule::Exact(p) => p.as_str(),
                _ => "/",
            };
            let rest = path.strip_prefix(matched).unwrap_or(path);
            if rewrite.ends_with('/') && rest.starts_with('/') {
                format!("{rewrite}{}", &rest[1..]).into()
            } else {
                format!("{rewrite}{rest}").into()
            }
        }
        None => path.into(),
    };
    let mut out = String::with_capacity(upstream.base_path.len() + rewritten.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(&upstream.base_path);
    out.push_str(&rewritten);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A request ready to forward, minus the upstream-specific parts.
pub(crate) struct Outbound<'a> {
    pub parts: http::request::Parts,
    pub body: Arc<RequestBody>,
    /// Normalized path and original query.
    pub path: &'a str,
    pub query: Option<String>,
    /// The client's `Host` (or `:authority`) as sent, port included, for
    /// `preserve_host_header` and `X-Forwarded-Host`.
    pub authority: HeaderValue,
}

impl<'a> Outbound<'a> {
    /// Prepares the client's request for any upstream of `route`.
    pub(crate) fn new(
        req: Request<Incoming>,
        route: &Route,
        peer: &Peer,
        authority: HeaderValue,
        path: &'a str,
        limits: BodyLimits,
    ) -> Self {
        let upgrade = if route.allow_websockets { upgrade_requested(&req) } else { None };
        let (mut parts, body) = req.into_parts();
        // Room for X-Forwarded-* and Host up front: one growth of the map
        // instead of one per insert.
        parts.headers.reserve(4);
        let query = parts.uri.query().map(str::to_string);
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(&mut parts.headers, peer, &authority);
        for name in &route.remove_request_headers {
            parts.headers.remove(name);
        }
        for (name, value) in &route.set_request_headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        if let Some(proto) = &upgrade {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        Outbound { parts, body: RequestBody::new(body, limits), path, query, authority }
    }

    /// The request for one attempt. `last` means no retry can follow (a
    /// single upstream), so the headers are moved rather than copied.
    /// Plain-HTTP upstreams take an origin-form target (our own pool speaks
    /// to them directly); the others an absolute URI for hyper-util's client.
    fn request_for(&mut self, route: &Route, upstream: &Upstream, last: bool) -> Option<Request<Reclaimable>> {
        let body = Reclaimable::reclaim(&self.body)?;
        let pq: PathAndQuery = upstream_path(route, upstream, self.path, self.query.as_deref()).parse().ok()?;
        let uri = if upstream.scheme == Scheme::HTTP {
            Uri::from(pq)
        } else {
            let scheme = if upstream.scheme.as_str() == "h2c" { Scheme::HTTP } else { upstream.scheme.clone() };
            Uri::builder().scheme(scheme).authority(upstream.authority.clone()).path_and_query(pq).build().ok()?
        };
        let mut headers = if last { std::mem::take(&mut self.parts.headers) } else { self.parts.headers.clone() };
        let host = match &route.host_header {
            HostHeader::Upstream => Some(upstream.host_value.clone()),
            HostHeader::Preserve => Some(self.authority.clone()),
            HostHeader::Rewrite(h) => Some(h.clone()),
        };
        if let Some(h) = host {
            headers.insert(header::HOST, h);
        }
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        // Let the client pick HTTP/1.1 or h2 per upstream (ALPN); an h2
        // request from the client does not force h2 upstream.
        *req.version_mut() = if upstream.scheme.as_str() == "h2c" { Version::HTTP_2 } else { Version::HTTP_11 };
        Some(req)
    }
}

/// Sends the request to the route's upstreams: the scheduled one, then the
/// others on connect failure (only while the body is still unsent).
/// Bodiless GET/HEAD/OPTIONS to plain-http upstreams take the direct
/// exchange ([`direct`]); everything else goes through hyper. Returns the
/// response, hop-by-hop headers gone, and the upstream that gave it.
pub(crate) async fn forward(
    route: &Route,
    upstreams: &Upstreams,
    mut out: Outbound<'_>,
    mut client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    on_error: impl Fn(&'static str),
) -> Result<(Response<ProxyBody>, Arc<str>), ProxyError> {
    let mut last = ProxyError::UpstreamUnavailable;
    let single = upstreams.targets.len() == 1;
    let direct = client_upgrade.is_none() && direct::eligible(&out.parts.method, out.body.is_sent());
    for upstream in upstreams.attempt_order() {
        let Some(req) = out.request_for(route, upstream, single) else {
            break;
        };
        let response = if upstream.scheme == Scheme::HTTP && direct {
            let authority = &upstream.authority;
            Either::Left(async move {
                direct::send(authority, &req).await.map(Answer::Direct).map_err(|e| match e {
                    DirectError::Connect(e) => SendFailure::Connect(e.to_string()),
                    e => SendFailure::Other(e.to_string()),
                })
            })
        } else if upstream.scheme == Scheme::HTTP {
            let authority = &upstream.authority;
            Either::Right(Either::Left(async move {
                super::pool::send(authority, req).await.map(Answer::Hyper).map_err(|e| match e {
                    PoolError::Connect(e) => SendFailure::Connect(e.to_string()),
                    PoolError::Request(e) => SendFailure::Other(e.to_string()),
                })
            }))
        } else {
            let client = client_for(&upstreams.tls, upstream.scheme.as_str() == "h2c");
            Either::Right(Either::Right(client.request(req).map_ok(Answer::Hyper).map_err(|e| {
                if e.is_connect() { SendFailure::Connect(e.to_string()) } else { SendFailure::Other(e.to_string()) }
            })))
        };
        let result = match route.timeout {
            Some(t) if out.body.is_sent() => match tokio::time::timeout(t, response).await {
                Ok(r) => r,
                Err(_) => {
                    on_error("timeout");
                    return Err(ProxyError::UpstreamTimeout);
                }
            },
            // The timeout counts from the end of the request body, as
            // Envoy's route timeout does: uploads take as long as they take.
            Some(t) => {
                let body = out.body.clone();
                let deadline = async move {
                    body.sent().await;
                    tokio::time::sleep(t).await;
                };
                tokio::select! {
                    r = response => r,
                    () = deadline => {
                        on_error("timeout");
                        return Err(ProxyError::UpstreamTimeout);
                    }
                }
            }
            None => response.await,
        };
        match result {
            Ok(Answer::Hyper(resp)) => {
                let resp = finish_upstream_response(resp, client_upgrade.take(), route.idle_timeout);
                return Ok((resp.map(|b| b.map_err(Into::into).boxed()), upstream.label.clone()));
            }
            // Hop-by-hop headers were left out as the head was read.
            Ok(Answer::Direct(resp)) => return Ok((resp, upstream.label.clone())),
            Err(SendFailure::Connect(e)) => {
                on_error("connect");
                tracing::debug!(upstream = %upstream, error = %e, "upstream connect failed; trying the next");
                last = ProxyError::UpstreamUnavailable;
            }
            Err(SendFailure::Other(e)) => {
                on_error("protocol");
                tracing::debug!(upstream = %upstream, error = %e, "upstream request failed");
                return Err(ProxyError::UpstreamFailed);
            }
        }
    }
    Err(last)
}

/// An upstream's response, by the client that fetched it.
enum Answer {
    Hyper(Response<Incoming>),
    Direct(Response<ProxyBody>),
}

/// How sending to one upstream failed: only a connect failure (nothing
/// sent) lets the next upstream be tried.
enum SendFailure {
    Connect(String),
    Other(String),
}

/// Cleans the upstream response's hop-by-hop headers; for a `101`, splices
/// the client and upstream connections together in the background.
fn finish_upstream_response(
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    idle: Option<Duration>,
) -> Response<Incoming> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_upgrade
    {
        let upstream_side = hyper::upgrade::on(&mut resp);
        let upgrade = resp.headers().get(header::UPGRADE).cloned();
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) else {
                tracing::debug!("upgrade failed on one side");
                return;
            };
            tunnel(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        });
        strip_hop_by_hop(resp.headers_mut());
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade {
            resp.headers_mut().insert(header::UPGRADE, u);
        }
        return resp;
    }
    strip_hop_by_hop(resp.headers_mut());
    resp
}

/// Copies bytes both ways until either side closes or nothing moves for `idle`.
async fn tunnel<A, B>(mut a: A, mut b: B, idle: Option<Duration>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf_a = vec![0u8; 16 * 1024];
    let mut buf_b = vec![0u8; 16 * 1024];
    let idle = idle.unwrap_or(Duration::from_secs(24 * 3600));
    loop {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                n = a.read(&mut buf_a) => match n { Ok(0) | Err(_) => false, Ok(n) => b.write_all(&buf_a[..n]).await.is_ok() },
                n = b.read(&mut buf_b) => match n { Ok(0) | Err(_) => false, Ok(n) => a.write_all(&buf_b[..n]).await.is_ok() },
            }
        })
        .await;
        if !matches!(step, Ok(true)) {
            let _ = a.shutdown().await;
            let _ = b.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer = Peer::new("10.1.2.3".parse().expect("ip"), false);
        set_forwarded(&mut h, &peer, &HeaderValue::from_static("app.example.com"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let peer = Peer { trusted: true, ..Peer::new("10.1.2.3".parse().expect("ip"), true) };
        set_forwarded(&mut h, &peer, &HeaderValue::from_static("app.example.com"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.2.3");
    }
}
