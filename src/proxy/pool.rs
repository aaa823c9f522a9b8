//! Plain-HTTP/1.1 upstream connections, pooled per worker thread.
//!
//! Each worker runs its own single-threaded runtime, so its pool needs no
//! lock and a pooled connection's task runs on the thread that uses it.
//! Compared with hyper-util's general pooled client this skips the shared
//! pool lock, the per-request connector clone and the checkout race; https
//! and h2c upstreams still use that client (ALPN, TLS settings).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Reclaimable;

/// Idle connections kept per upstream and thread.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections by upstream authority, exactly as written in the
/// route (a fast hash over the raw bytes: `Authority`'s own hash folds
/// case byte by byte, which showed up in profiles). This pool's and the
/// direct exchange's.
pub(crate) type IdleMap<C> = HashMap<Box<str>, C, foldhash::fast::RandomState>;

/// Runs `f` on the idle list for `authority`, created on first use (the
/// key is only allocated then).
pub(crate) fn with_idle_list<C: Default, R>(idle: &mut IdleMap<C>, authority: &str, f: impl FnOnce(&mut C) -> R) -> R {
    if let Some(list) = idle.get_mut(authority) {
        return f(list);
    }
    f(idle.entry(authority.into()).or_default())
}

thread_local! {
    static IDLE: RefCell<IdleMap<Vec<SendRequest<Reclaimable>>>> = RefCell::new(IdleMap::default());
}

/// Why a pooled send failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be made: nothing was sent (retry elsewhere).
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The request failed on an established connection.
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
}

/// Sends `req` (origin-form URI, `Host` set) to `authority` over a pooled
/// or new connection. A pooled connection that turns out to be closed is
/// replaced once, with the request handed back untouched.
pub(crate) async fn send(authority: &Authority, req: Request<Reclaimable>) -> Result<Response<Incoming>, PoolError> {
    let mut req = req;
    if let Some(mut sender) = checkout(authority) {
        match sender.try_send_request(req).await {
            Ok(resp) => {
                checkin(authority, sender);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                // Not sent (the connection went away while idle): new one.
                Some(back) => req = back,
                None => return Err(PoolError::Request(e.into_error())),
            },
        }
    }
    let mut sender = connect(authority).await?;
    let resp = sender.send_request(req).await.map_err(PoolError::Request)?;
    checkin(authority, sender);
    Ok(resp)
}

/// An idle, ready connection, if the pool has one. Connections still
/// streaming a response stay pooled for later; closed ones met on the way
/// are dropped.
fn checkout(authority: &Authority) -> Option<SendRequest<Reclaimable>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(authority.as_str())?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].is_closed() {
                list.swap_remove(i);
            } else if list[i].is_ready() {
                return Some(list.swap_remove(i));
            }
        }
        None
    })
}

/// Returns a connection to the pool; it becomes ready again once the
/// response body has been read.
fn checkin(authority: &Authority, sender: SendRequest<Reclaimable>) {
    IDLE.with(|idle| {
        with_idle_list(&mut idle.borrow_mut(), authority.as_str(), |list| {
            if list.len() >= MAX_IDLE {
                list.retain(|s| !s.is_closed());
            }
            if list.len() < MAX_IDLE {
                list.push(sender);
            }
        });
    });
}

/// A TCP connection to a plain-HTTP upstream, Nagle off.
pub(crate) async fn connect_tcp(authority: &Authority) -> std::io::Result<TcpStream> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(authority: &Authority) -> Result<SendRequest<Reclaimable>, PoolError> {
    let stream = connect_tcp(authority).await.map_err(PoolError::Connect)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| PoolError::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
