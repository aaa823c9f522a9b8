//! When a client connection has been idle too long.
//!
//! hyper bounds the time to read an HTTP/1 head (`header_read_timeout`),
//! but not the wait before a connection's first byte (hyper-util's
//! protocol detection reads with no timer) nor an HTTP/2 connection with
//! no streams. [`Activity`] counts the requests in flight on one
//! connection; [`Activity::expired`] resolves once there has been none for
//! `header_read_timeout` before the first request, or `keepalive_timeout`
//! after one, and the connection is then closed.
//!
//! [`ClientIo`] is the client socket as hyper sees it; it holds the
//! connection's `max_connections` place for as long as the socket lives.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::ConnectionGuard;

/// Requests in flight on one connection, and since when there were none.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    idle_since: Mutex<Instant>,
    changed: Notify,
}

/// One request in flight; dropped with its response body (or with the
/// request, if the client gave up first).
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    /// A request has arrived.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Resolves once the connection has been idle for its limit. Never
    /// resolves for a limit of zero. Each turn of the loop waits for a
    /// change or a deadline, so it ends when the connection's task does.
    pub(crate) async fn expired(&self, header_read_timeout: Duration, keepalive_timeout: Duration) {
        loop {
            let notified = self.changed.notified();
            let limit = if self.served.load(Ordering::Acquire) { keepalive_timeout } else { header_read_timeout };
            if self.in_flight.load(Ordering::Acquire) > 0 || limit.is_zero() {
                notified.await;
                continue;
            }
            let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            tokio::select! {
                _ = notified => continue,
                _ = tokio::time::sleep_until(since + limit) => {}
            }
            // Still idle, and not since a newer moment?
            let now_since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            if self.in_flight.load(Ordering::Acquire) == 0 && now_since == since {
                return;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        *activity.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// A client socket and the `max_connections` place it holds. The place
/// goes with the socket, not with the task that serves it: after a
/// WebSocket upgrade hyper hands the socket over to the tunnel and the
/// connection task ends, but the client holds a socket until the tunnel
/// (either side closing, or the route's `idle_timeout`) drops it.
pub(crate) struct ClientIo<S> {
    io: S,
    _slot: ConnectionGuard,
}

impl<S> ClientIo<S> {
    pub(crate) fn new(io: S, slot: ConnectionGuard) -> Self {
        ClientIo { io, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn idle_before_the_first_request_uses_the_header_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        activity.expired(MS * 100, MS * 5000).await;
        let waited = start.elapsed();
        assert!(waited >= MS * 100 && waited < MS * 4000, "{waited:?}");
    }

    #[tokio::test]
    async fn a_request_in_flight_is_never_idle() {
        let activity = Activity::new();
        let request = activity.start();
        let waited = tokio::time::timeout(MS * 300, activity.expired(MS * 50, MS * 100)).await;
        assert!(waited.is_err(), "expired with a request in flight");
        drop(request);
        let start = Instant::now();
        activity.expired(MS * 5000, MS * 100).await;
        let waited = start.elapsed();
        assert!(waited >= MS * 100 && waited < MS * 4000, "{waited:?}");
    }
}
