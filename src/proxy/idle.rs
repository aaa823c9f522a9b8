//! When a client connection has been idle too long.
//!
//! [`Activity`] counts the requests in flight on one connection;
//! [`Activity::expired`] resolves once the connection has had none for its
//! limit, and the connection is then closed. The limits are nginx's:
//!
//! - before the first request, `header_read_timeout` from accept (TLS
//!   handshake and first head together; hyper-util's protocol detection
//!   reads with no timer of its own);
//! - between HTTP/1 requests, `keepalive_timeout` from the last response
//!   (nginx `keepalive_timeout`), and once the next head's first byte
//!   arrives, `header_read_timeout` from that byte for the whole head
//!   (nginx `client_header_timeout`);
//! - on HTTP/2, `keepalive_timeout` with no stream open. Bytes between
//!   streams (pings, settings, window updates) start no head.
//!
//! hyper's own HTTP/1 `header_read_timeout` is left off: it starts when
//! hyper begins waiting for the next head, right after a response, so it
//! would cap every keep-alive wait at `header_read_timeout`.
//!
//! [`ClientIo`] is the client socket as hyper sees it: it tells
//! [`Activity`] when bytes arrive, and holds the connection's
//! `max_connections` place for as long as the socket lives.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::ConnectionGuard;

/// Requests in flight on one connection, and since when there were none.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// A request has arrived: `keepalive_timeout` applies from now on.
    served: AtomicBool,
    /// The requests are HTTP/2 streams: a byte read starts no head.
    multiplexed: AtomicBool,
    /// An HTTP/1 head has started arriving since the last response;
    /// `idle_since` is then its first byte.
    head: AtomicBool,
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
            multiplexed: AtomicBool::new(false),
            head: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    /// A request (its whole head) has arrived.
    pub(crate) fn start(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Release);
        }
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head.store(false, Ordering::Release);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Bytes have arrived from the client. On an idle HTTP/1 connection
    /// that has served a request they are the next head's first: the wait
    /// becomes `header_read_timeout`, counted from now. Called on every
    /// read, so the common case is a few atomic loads.
    ///
    /// Bytes read while a request is in flight are taken for its body; a
    /// pipelined head that began then is bounded by `keepalive_timeout`
    /// rather than `header_read_timeout` (no longer than an idle client).
    fn read(&self) {
        if self.head.load(Ordering::Acquire)
            || self.in_flight.load(Ordering::Acquire) > 0
            || !self.served.load(Ordering::Acquire)
            || self.multiplexed.load(Ordering::Acquire)
        {
            return;
        }
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.head.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Resolves once the connection has been idle for its limit. Never
    /// resolves for a limit of zero. Each turn of the loop waits for a
    /// change or a deadline, so it ends when the connection's task does.
    pub(crate) async fn expired(&self, header_read_timeout: Duration, keepalive_timeout: Duration) {
        loop {
            let notified = self.changed.notified();
            let waiting_for_head = !self.served.load(Ordering::Acquire) || self.head.load(Ordering::Acquire);
            let limit = if waiting_for_head { header_read_timeout } else { keepalive_timeout };
            if self.in_flight.load(Ordering::Acquire) > 0 || limit.is_zero() {
                notified.await;
                continue;
            }
            let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            tokio::select! {
                _ = notified => continue,
                _ = tokio::time::sleep_until(since + limit) => {}
            }
            // Still idle, and not since a newer moment (a response, or a head begun)?
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
    activity: Arc<Activity>,
    _slot: ConnectionGuard,
}

impl<S> ClientIo<S> {
    pub(crate) fn new(io: S, activity: Arc<Activity>, slot: ConnectionGuard) -> Self {
        ClientIo { io, activity, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
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
        let request = activity.start(Version::HTTP_11);
        let waited = tokio::time::timeout(MS * 300, activity.expired(MS * 50, MS * 100)).await;
        assert!(waited.is_err(), "expired with a request in flight");
        drop(request);
        let start = Instant::now();
        activity.expired(MS * 5000, MS * 100).await;
        let waited = start.elapsed();
        assert!(waited >= MS * 100 && waited < MS * 4000, "{waited:?}");
    }

    #[tokio::test]
    async fn between_http1_requests_the_wait_is_keepalive_until_a_head_starts() {
        let activity = Activity::new();
        drop(activity.start(Version::HTTP_11));
        // Longer than the header timeout: still open.
        let waited = tokio::time::timeout(MS * 300, activity.expired(MS * 100, MS * 5000)).await;
        assert!(waited.is_err(), "the keep-alive wait ended after header_read_timeout");
        // A first byte: the head has header_read_timeout from it.
        activity.read();
        let start = Instant::now();
        activity.expired(MS * 100, MS * 5000).await;
        let waited = start.elapsed();
        assert!(waited >= MS * 100 && waited < MS * 4000, "{waited:?}");
        // More bytes do not extend it.
        activity.read();
        let start = Instant::now();
        activity.expired(MS * 100, MS * 5000).await;
        assert!(start.elapsed() < MS * 50, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_whole_head_ends_the_head_timer() {
        let activity = Activity::new();
        drop(activity.start(Version::HTTP_11));
        activity.read();
        let request = activity.start(Version::HTTP_11);
        activity.read();
        drop(request);
        let waited = tokio::time::timeout(MS * 300, activity.expired(MS * 100, MS * 5000)).await;
        assert!(waited.is_err(), "bytes of a served request started the next head's timer");
    }

    #[tokio::test]
    async fn bytes_between_http2_streams_start_no_head() {
        let activity = Activity::new();
        drop(activity.start(Version::HTTP_2));
        activity.read();
        let waited = tokio::time::timeout(MS * 300, activity.expired(MS * 100, MS * 5000)).await;
        assert!(waited.is_err(), "a ping between streams started a head timer");
        let start = Instant::now();
        activity.expired(MS * 100, MS * 200).await;
        assert!(start.elapsed() < MS * 4000, "{:?}", start.elapsed());
    }
}
