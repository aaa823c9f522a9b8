//! Body wrappers: the one response body type, streaming with accounting, and
//! a request body that can be taken back if it was never sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::Sleep;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy sends.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

/// Called once when a response body ends (completely, by error, or because
/// the client went away) with the number of body bytes sent.
pub(crate) type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

pin_project_lite::pin_project! {
    /// Streams the inner body frame by frame (never buffering it), counts
    /// bytes, fails the stream after `idle` without a frame, and reports at
    /// the end (access log and metrics). It is what every response carries
    /// to the client, wrapping the one boxed body.
    pub(crate) struct Observed {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        idle: Option<Duration>,
        #[pin]
        timer: Option<Sleep>,
        on_end: Option<OnEnd>,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                on_end(*this.bytes);
            }
        }
    }
}

impl Observed {
    pub(crate) fn new(inner: ProxyBody, idle: Option<Duration>, on_end: OnEnd) -> Self {
        Observed { inner, bytes: 0, idle, timer: idle.map(tokio::time::sleep), on_end: Some(on_end) }
    }
}

/// The stream was idle for longer than the route's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?} (idle_timeout)")]
pub(crate) struct IdleTimeout(Duration);

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if let (Some(idle), Some(timer)) = (*this.idle, this.timer.as_mut().as_pin_mut()) {
                    timer.reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end(*this.bytes);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let (Some(idle), Some(timer)) = (*this.idle, this.timer.as_mut().as_pin_mut())
                    && timer.poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a request body may do on its way upstream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyLimits {
    /// Most bytes (the route's `max_request_body`); `None`: no limit.
    pub max: Option<u64>,
    /// Longest stall between two frames (`request_body_timeout`); `None`: never.
    pub stall: Option<Duration>,
}

/// Why a request body was cut off before it reached the upstream whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyCut {
    #[error("request body larger than max_request_body")]
    TooLarge,
    #[error("request body stalled longer than request_body_timeout")]
    Stalled,
    /// The client's body could not be read: a malformed chunk (a size that
    /// overflows, a sign, bad framing) or the client went away.
    #[error("request body malformed or cut short by the client")]
    Unreadable,
}

/// The client's request body, shared between forwarding attempts.
pub(crate) struct RequestBody {
    slot: Mutex<Option<Incoming>>,
    /// Set once the whole body has been handed to an upstream.
    sent: tokio::sync::Notify,
    finished: std::sync::atomic::AtomicBool,
    limits: BodyLimits,
    /// Set once the body was cut off; the upstream request then fails and
    /// the pipeline answers by this, not by the upstream error.
    cut: Mutex<Option<BodyCut>>,
}

impl RequestBody {
    pub(crate) fn new(body: Incoming, limits: BodyLimits) -> Arc<Self> {
        let finished = body.is_end_stream();
        Arc::new(RequestBody {
            slot: Mutex::new(Some(body)),
            sent: tokio::sync::Notify::new(),
            finished: std::sync::atomic::AtomicBool::new(finished),
            limits,
            cut: Mutex::new(None),
        })
    }

    /// Why the body was cut off, if it was.
    pub(crate) fn cut(&self) -> Option<BodyCut> {
        *self.cut.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cut_off(&self, why: BodyCut) -> BoxError {
        *self.cut.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        Box::new(why)
    }

    /// Resolves once the upstream has received the whole request body
    /// (at once for bodiless requests). Route timeouts start here, so a
    /// slow upload is not cut off by the response timeout.
    pub(crate) async fn sent(&self) {
        let notified = self.sent.notified();
        if self.is_sent() {
            return;
        }
        notified.await;
    }

    /// Whether the whole body has reached an upstream already (at once for
    /// bodiless requests).
    pub(crate) fn is_sent(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }

    fn mark_sent(&self) {
        self.finished.store(true, std::sync::atomic::Ordering::Release);
        self.sent.notify_waiters();
    }
}

/// One attempt's handle on the [`RequestBody`]: the first poll takes the
/// body out of the slot. If connecting to an upstream fails, hyper has not
/// polled the body yet, so [`Reclaimable::reclaim`] gets it back for the
/// next upstream.
pub(crate) struct Reclaimable {
    shared: Arc<RequestBody>,
    taken: Option<Incoming>,
    end_stream: bool,
    hint: SizeHint,
    /// Body bytes read so far, for `max_request_body`.
    read: u64,
    /// Fires when the body stalls (`request_body_timeout`); reset by each frame.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Reclaimable {
    /// A handle on a body that was not consumed yet; `None` if it was.
    pub(crate) fn reclaim(shared: &Arc<RequestBody>) -> Option<Self> {
        let guard = shared.slot.lock().ok()?;
        let body = guard.as_ref()?;
        let (end_stream, hint) = (body.is_end_stream(), body.size_hint());
        drop(guard);
        // No timer for a bodiless request: nothing can stall.
        let stall = shared.limits.stall.filter(|_| !end_stream).map(|t| Box::pin(tokio::time::sleep(t)));
        Some(Reclaimable { shared: shared.clone(), taken: None, end_stream, hint, read: 0, stall })
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            let body = self.shared.slot.lock().ok().and_then(|mut s| s.take());
            match body {
                Some(b) => {
                    self.taken = Some(b);
                    // The stall timer counts from the first poll, not from
                    // when the attempt was prepared.
                    if let (Some(t), Some(stall)) = (self.shared.limits.stall, self.stall.as_mut()) {
                        stall.as_mut().reset(tokio::time::Instant::now() + t);
                    }
                }
                None => return Poll::Ready(None),
            }
        }
        let this = &mut *self;
        let Some(body) = this.taken.as_mut() else { return Poll::Ready(None) };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.shared.mark_sent();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.shared.limits.max.is_some_and(|max| this.read > max) {
                        return Poll::Ready(Some(Err(this.shared.cut_off(BodyCut::TooLarge))));
                    }
                }
                if let (Some(t), Some(stall)) = (this.shared.limits.stall, this.stall.as_mut()) {
                    stall.as_mut().reset(tokio::time::Instant::now() + t);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body unreadable");
                Poll::Ready(Some(Err(this.shared.cut_off(BodyCut::Unreadable))))
            }
            Poll::Pending => {
                if let Some(stall) = this.stall.as_mut()
                    && stall.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(this.shared.cut_off(BodyCut::Stalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds `guard` until it ends or is dropped, so
    /// the connection knows a request is still in flight.
    pub(crate) struct Tracked<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Tracked<B, G> {
    pub(crate) fn new(inner: B, guard: G) -> Self {
        Tracked { inner, guard: Some(guard) }
    }
}

impl<B: Body, G> Body for Tracked<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
