//! Listeners, TLS, connection handling and graceful shutdown.
//!
//! Each accepted connection is served by hyper (HTTP/1.1 and HTTP/2 by ALPN
//! or preface) with every request going through [`pipeline::handle`].
//! Connection limits (`max_connections`, header and idle timeouts, HTTP/2
//! stream caps) are read from the live table's [`Limits`] at each accept,
//! so a reload applies to new connections.

pub mod admin;
pub(crate) mod body;
mod direct;
mod forward;
mod hop;
mod idle;
mod limits;
mod pipeline;
mod pool;
mod respond;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Limits;
use crate::config::limits::MIN_HEADER_LIST_BYTES;
use crate::routes::Routes;
use crate::telemetry::Metrics;
use body::{ProxyBody, Tracked, empty};
use forward::Peer;
use tls::CertResolver;

/// Everything requests share: the live table, metrics, certificates.
pub struct Proxy {
    pub routes: Arc<Routes>,
    pub metrics: Arc<Metrics>,
    pub certs: Arc<CertResolver>,
    pub auth: Arc<Auth>,
}

impl Proxy {
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>, certs: Arc<CertResolver>, auth: Arc<Auth>) -> Self {
        Proxy { routes, metrics, certs, auth }
    }
}

/// Serves `listener` on `workers` threads, each running its own
/// single-threaded runtime and accepting from the same socket. A request
/// stays on one thread from accept to upstream and back, so nothing on the
/// request path wakes another thread (measured: about 17% more requests per
/// core than the work-stealing runtime). Each thread returns once `stop`
/// fired and its connections drained (or `grace` ran out).
pub fn spawn_workers(
    proxy: Arc<Proxy>,
    listener: std::net::TcpListener,
    transport: Transport,
    stop: CancellationToken,
    grace: Duration,
    workers: usize,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    listener.set_nonblocking(true)?;
    let mut handles = Vec::with_capacity(workers);
    for index in 0..workers.max(1) {
        let listener = listener.try_clone()?;
        let (proxy, transport, stop) = (proxy.clone(), transport.clone(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = std::thread::Builder::new().name(format!("postern-worker-{index}")).spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(proxy, listener, transport, stop, grace).await,
                    Err(e) => tracing::error!(error = %e, "worker cannot use the listener"),
                }
            });
        })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// How the main listener speaks.
#[derive(Clone)]
pub enum Transport {
    Tls(Arc<rustls::ServerConfig>),
    Plain,
}

/// Accepts connections on `listener` until `stop`, then lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    transport: Transport,
    stop: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = match &transport {
        Transport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        Transport::Plain => None,
    };
    loop {
        let (stream, peer_addr) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let limits = proxy.routes.snapshot().limits().clone();
        let Some(open) = proxy.metrics.open_connection(limits.max_connections) else {
            // Closed at once: a client past the cap holds no memory, and
            // the refusal is counted, not logged per connection.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The place in `max_connections` lives as long as the socket, which
        // an upgrade hands on to its tunnel.
        let activity = idle::Activity::new();
        let stream = idle::ClientIo::new(stream, activity.clone(), open);
        let proxy = proxy.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let peer = Peer::new(peer_addr.ip(), acceptor.is_some());
            let requests = activity.clone();
            // `map`, not an `async` wrapper: one level less of a request
            // future that is copied whole when it is created.
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let in_flight = requests.start(req.version());
                pipeline::handle(proxy.clone(), peer.clone(), req)
                    .map(move |resp| Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight))))
            });
            let builder = connection_builder(&limits);
            let idle = activity.expired(limits.header_read_timeout, limits.keepalive_timeout);
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => {
                        let conn = watcher
                            .watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned());
                        until_idle(conn, idle).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                None => {
                    let conn = watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                    until_idle(conn, idle).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(grace_secs = grace.as_secs_f64(), "draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Serves `conn` until it ends, or closes it (by dropping it) once `idle`
/// resolves: no request is in flight then, so nothing is cut off.
async fn until_idle<E>(conn: impl Future<Output = Result<(), E>>, idle: impl Future<Output = ()>) -> Result<(), E> {
    tokio::select! {
        result = conn => result,
        () = idle => {
            tracing::debug!("closing an idle connection");
            Ok(())
        }
    }
}

/// How long an HTTP/2 keep-alive ping may go unanswered (hyper's default).
const PING_TIMEOUT: Duration = Duration::from_secs(20);

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // `writev(false)`: the response head and a small body go out as one
    // buffer in one `send` rather than a two-part `writev` (1-4% more
    // requests per second in each of three interleaved rounds; larger
    // bodies cost a copy, which the kernel makes anyway).
    // `max_buf_size` bounds the whole HTTP/1 head (hyper answers 431 past
    // it); `Limits` keeps it at least hyper's minimum, below which hyper
    // panics. No `header_read_timeout` (nor a timer, its only use): hyper
    // starts it as soon as it waits for the next head, so a keep-alive
    // wait would end after it; `idle` times both the wait and the head.
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .writev(false)
        .max_buf_size(limits.max_header_list_bytes.max(MIN_HEADER_LIST_BYTES))
        .max_headers(limits.max_header_count);
    let ping = (!limits.keepalive_timeout.is_zero()).then_some(limits.keepalive_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(limits.max_header_list_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .keep_alive_interval(ping)
        .keep_alive_timeout(PING_TIMEOUT);
    builder
}

/// The plain-HTTP listener (`http_redirect_addr`): serves the routes that
/// say `http://` and need no sign-in (see
/// [`pipeline::served_over_plain_http`]); redirects everything else to
/// the same URL over https.
pub async fn serve_redirect(proxy: Arc<Proxy>, listener: TcpListener, https_port: u16, stop: CancellationToken) {
    loop {
        let (stream, peer_addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let limits = proxy.routes.snapshot().limits().clone();
        let Some(open) = proxy.metrics.open_connection(limits.max_connections) else {
            drop(stream);
            continue;
        };
        let activity = idle::Activity::new();
        let stream = idle::ClientIo::new(stream, activity.clone(), open);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let peer = Peer::new(peer_addr.ip(), false);
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (proxy, peer) = (proxy.clone(), peer.clone());
                let in_flight = requests.start(req.version());
                async move {
                    let resp = if pipeline::served_over_plain_http(&proxy, &req) {
                        let resp = pipeline::handle(proxy, peer, req).await;
                        resp.map(http_body_util::BodyExt::boxed)
                    } else {
                        redirect_to_https(&req, https_port)
                    };
                    Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
                }
            });
            let builder = connection_builder(&limits);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = until_idle(conn, activity.expired(limits.header_read_timeout, limits.keepalive_timeout)).await;
        });
    }
}

fn redirect_to_https(req: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let host = req.uri().authority().map(|a| a.host().to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_string())
    });
    let mut resp = Response::new(empty());
    let Some(host) = host else {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(loc) = HeaderValue::from_str(&format!("https://{host}{port}{pq}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}
