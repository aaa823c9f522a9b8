//! The direct HTTP/1.1 exchange with plain-HTTP upstreams, for requests
//! without a body and with a safe, idempotent method (GET, HEAD, OPTIONS):
//! most of what a web app's proxy carries.
//!
//! Why not hyper's client here: its HTTP/1 connection runs as a task of
//! its own, so every request crosses two channels and wakes a second task,
//! and the response body arrives over a third. Measured on this path, that
//! was about 12% of the proxy's CPU per request. Here the request's own
//! task writes the head and reads the response, and the response body reads
//! straight from the socket. Parsing is httparse's (the parser hyper uses);
//! this module owns only message framing (RFC 9112 §6) and connection
//! reuse. Everything else (request bodies, upgrades, TLS, HTTP/2) stays on
//! hyper.
//!
//! Framing is strict, because a proxy that frames a response differently
//! from its upstream can be made to desynchronise (response splitting): a
//! `Content-Length` that is not one number refuses the response (502), a
//! malformed chunk fails the body, and a connection whose framing was in
//! any way doubtful (a transfer coding beside a length, a body that runs to
//! the close, bytes past the end of the message) is never reused.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{BoxError, ProxyBody};
use super::hop::{connection_named_headers, is_hop_by_hop};
use super::pool;

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Read size while streaming a body, and the least room a read gets.
const READ_CHUNK: usize = 16 * 1024;
const MIN_READ: usize = 2 * 1024;
/// Idle connections kept per upstream and thread.
const MAX_IDLE: usize = 256;
/// A pooled connection idle longer than this is closed rather than kept:
/// upstreams close idle keep-alive connections too (a request that meets
/// one is sent again on a new connection, see [`send`]).
const IDLE_EXPIRY: Duration = Duration::from_secs(50);

/// Whether a request may take the direct path: a safe, idempotent method
/// (so a request lost to a connection the upstream just closed can be sent
/// again) and no body.
pub(crate) fn eligible(method: &Method, body_sent: bool) -> bool {
    body_sent && (*method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS)
}

/// Why a direct exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectError {
    /// No connection could be made: nothing was sent (retry elsewhere).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("exchange: {0}")]
    Io(#[source] io::Error),
    /// The upstream's response cannot be framed safely.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// A connection with whatever the upstream sent beyond the last message.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    idle_since: Instant,
}

/// Idle connections per upstream, oldest first: checkout takes the newest
/// (least likely to have been closed by the upstream), checkin drops
/// expired ones from the old end, so a request reads no clock.
type IdleMap = pool::IdleMap<VecDeque<Conn>>;

thread_local! {
    /// Each worker thread runs its own runtime and keeps its own idle
    /// connections, so the pool needs no lock.
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
}

fn checkout(authority: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(authority)?;
        while let Some(conn) = list.pop_back() {
            if still_idle(&conn.stream) {
                return Some(conn);
            }
        }
        None
    })
}

/// Whether nothing arrived on a pooled connection while it was idle: a
/// server may close it, or send an unsolicited `408` first, which must not
/// be taken for the answer to the next request. The reactor's readiness
/// tells without a system call; only when it reports something does a read
/// find out whether that was stale.
fn still_idle(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

fn checkin(authority: &str, mut conn: Conn) {
    let now = Instant::now();
    conn.idle_since = now;
    IDLE.with(|idle| {
        pool::with_idle_list(&mut idle.borrow_mut(), authority, |list| {
            while list.front().is_some_and(|c| now.duration_since(c.idle_since) >= IDLE_EXPIRY) {
                list.pop_front();
            }
            if list.len() < MAX_IDLE {
                list.push_back(conn);
            }
        });
    });
}

/// Sends `req` (origin-form target, `Host` set, hop-by-hop headers gone)
/// and reads the response head. A reused connection that fails before any
/// of the response arrived (the upstream closed it while idle) is replaced
/// by a new one once; the request is idempotent, so that is safe.
pub(crate) async fn send<B>(authority: &Authority, req: &Request<B>) -> Result<Response<ProxyBody>, DirectError> {
    let head = encode_head(req);
    let head_only = req.method() == Method::HEAD;
    if let Some(conn) = checkout(authority.as_str()) {
        match exchange(conn, &head, head_only, authority).await {
            Err(Failure { received: false, .. }) => {}
            Err(Failure { error, .. }) => return Err(error),
            Ok(resp) => return Ok(resp),
        }
    }
    let stream = pool::connect_tcp(authority).await.map_err(DirectError::Connect)?;
    let conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), idle_since: Instant::now() };
    exchange(conn, &head, head_only, authority).await.map_err(|f| f.error)
}

struct Failure {
    error: DirectError,
    /// Whether any of the response arrived before the failure.
    received: bool,
}

async fn exchange(
    mut conn: Conn,
    head: &[u8],
    head_only: bool,
    authority: &Authority,
) -> Result<Response<ProxyBody>, Failure> {
    let fail = |error, received| Failure { error, received };
    conn.stream.write_all(head).await.map_err(|e| fail(DirectError::Io(e), false))?;
    loop {
        if let Some(parsed) = parse_head(&mut conn.buf, head_only).map_err(|e| fail(e, true))? {
            let (resp, framing, reusable) = parsed;
            let body = UpstreamBody::new(conn, framing, reusable, authority);
            return Ok(resp.map(|()| http_body_util::BodyExt::boxed(body)));
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(fail(DirectError::Malformed("response head too large"), true));
        }
        let received = !conn.buf.is_empty();
        make_room(&mut conn.buf);
        match tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.buf).await {
            Ok(0) => return Err(fail(DirectError::Io(io::ErrorKind::UnexpectedEof.into()), received)),
            Ok(_) => {}
            Err(e) => return Err(fail(DirectError::Io(e), received)),
        }
    }
}

/// Spare capacity for the next read. Only when little is left: the last
/// response's header values still share the buffer, so growing it means a
/// new allocation, which a read per request would otherwise pay.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_CHUNK);
    }
}

/// `METHOD target HTTP/1.1`, the headers, and the blank line, in one buffer
/// for one write.
fn encode_head<B>(req: &Request<B>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let size = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + target.len() + 32;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // `HeaderValue` cannot hold CR, LF or NUL, so nothing here can split
    // the head.
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

type ParsedHead = (Response<()>, Framing, bool);

/// Parses one response head from the front of `buf`, skipping interim
/// (1xx) responses, and leaves out hop-by-hop headers and those
/// `Connection` names. `None` until the whole head has arrived.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<ParsedHead>, DirectError> {
    loop {
        // Uninitialised slots: zeroing 128 of them cost more than parsing.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(DirectError::Malformed("too many headers")),
                Err(_) => return Err(DirectError::Malformed("invalid response head")),
            };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| DirectError::Malformed("invalid status"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(DirectError::Malformed("101 without an upgrade request"));
            }
            buf.advance(len);
            continue;
        }
        let http11 = parsed.version == Some(1);
        // Values are slices of the received head rather than copies; the
        // framing fields are noted on the way instead of looked up after.
        let base = buf.as_ptr() as usize;
        // Hop-by-hop headers are left out here rather than removed later.
        let mut fields = Vec::with_capacity(parsed.headers.len());
        let mut framing_fields = FramingFields::default();
        let mut named: Vec<HeaderName> = Vec::new();
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| DirectError::Malformed("header name"))?;
            framing_fields.note(&name, h.value);
            if is_hop_by_hop(&name) {
                if name == header::CONNECTION {
                    named.extend(connection_named_headers(h.value));
                }
                continue;
            }
            let start = h.value.as_ptr() as usize - base;
            fields.push((name, start..start + h.value.len()));
        }
        // A length beside a transfer coding is wrong or an attack; it must
        // not reach the client, whose framing would then differ from ours
        // (RFC 9112 §6.3).
        let coded = framing_fields.chunked_last.is_some();
        fields.retain(|(name, _)| !(named.contains(name) || (coded && name == header::CONTENT_LENGTH)));
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, range) in fields {
            let value = HeaderValue::from_maybe_shared(head.slice(range))
                .map_err(|_| DirectError::Malformed("header value"))?;
            headers.append(name, value);
        }
        let (framing, exact) = framing_fields.framing(status, head_only)?;
        let reusable = http11 && exact && !framing_fields.close && framing != Framing::Close;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = Version::HTTP_11;
        *resp.headers_mut() = headers;
        return Ok(Some((resp, framing, reusable)));
    }
}

/// What the framing rules need from a response's headers.
#[derive(Default)]
struct FramingFields {
    /// The Content-Length values agreed on so far, or why they do not.
    length: Option<Result<u64, &'static str>>,
    /// Whether the last Transfer-Encoding field ends in `chunked`.
    chunked_last: Option<bool>,
    /// `Connection: close`.
    close: bool,
}

impl FramingFields {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name == header::CONTENT_LENGTH {
            for part in tokens() {
                self.length = Some(match (self.length, parse_length(part)) {
                    (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting Content-Length values"),
                    (_, Ok(n)) => Ok(n),
                });
            }
        } else if name == header::TRANSFER_ENCODING {
            self.chunked_last = Some(tokens().next_back().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if name == header::CONNECTION {
            self.close |= tokens().any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }

    /// The body's framing, and whether it is unambiguous enough to reuse
    /// the connection after it.
    fn framing(&self, status: StatusCode, head_only: bool) -> Result<(Framing, bool), DirectError> {
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok((Framing::Done, true));
        }
        if let Some(chunked_last) = self.chunked_last {
            // With a Content-Length as well, the message may be an attack
            // (RFC 9112 §6.3): decode by the coding, but never reuse.
            let exact = self.length.is_none();
            return Ok(if chunked_last { (Framing::Chunked(Chunk::Size), exact) } else { (Framing::Close, false) });
        }
        Ok(match self.length {
            Some(Err(e)) => return Err(DirectError::Malformed(e)),
            Some(Ok(0)) => (Framing::Done, true),
            Some(Ok(n)) => (Framing::Length(n), true),
            None => (Framing::Close, false),
        })
    }
}

/// One Content-Length value: digits only (no sign, no spaces inside).
fn parse_length(text: &[u8]) -> Result<u64, &'static str> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err("invalid Content-Length");
    }
    Ok(text.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A response body read straight from the upstream connection, which goes
/// back to the pool once the body has ended cleanly.
struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    authority: Box<str>,
}

impl UpstreamBody {
    fn new(conn: Conn, framing: Framing, reusable: bool, authority: &Authority) -> Self {
        let mut body = UpstreamBody { conn: Some(conn), framing, reusable, authority: authority.as_str().into() };
        if framing == Framing::Done {
            // Nothing to read (HEAD, 204, 304, a zero length): hyper will
            // not poll a body that is already at its end.
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool, at
    /// once, since hyper stops polling a body once it reports its end.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            // Bytes after the message: the upstream sent more than it framed.
            && self.reusable
            && conn.buf.is_empty()
        {
            checkin(&self.authority, conn);
        }
    }

    /// Reads more from the upstream into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Ok(0)) };
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            make_room(&mut conn.buf);
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn buffered(&mut self) -> &mut BytesMut {
        &mut self.conn.as_mut().expect("a body being read has its connection").buf
    }

    /// Up to `left` bytes of body data (some, never none): what is buffered,
    /// or the next read. The upstream closing first is an error.
    fn poll_data(&mut self, cx: &mut Context<'_>, left: u64) -> Poll<Result<Bytes, BoxError>> {
        if self.buffered().is_empty() && ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
        }
        let buf = self.buffered();
        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        Poll::Ready(Ok(buf.split_to(take).freeze()))
    }

    /// Fills the buffer until `ready` says it holds what the next step needs.
    fn poll_until(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        ready: impl Fn(&[u8]) -> bool,
    ) -> Poll<Result<(), BoxError>> {
        while !ready(self.buffered()) {
            if self.buffered().len() > limit {
                return Poll::Ready(Err(malformed("chunk framing too large")));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn malformed(what: &'static str) -> BoxError {
    Box::new(DirectError::Malformed(what))
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Done | Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let data = ready!(this.poll_data(cx, left))?;
                    this.framing = Framing::Length(left - data.len() as u64);
                    if this.framing == Framing::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if this.buffered().is_empty() && ready!(this.poll_fill(cx))? == 0 {
                        this.framing = Framing::Done;
                        continue;
                    }
                    let data = this.buffered().split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunk) => match ready!(this.poll_chunked(cx, chunk)) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl UpstreamBody {
    /// One step of chunked decoding: a frame to hand on, or `None` when
    /// only the state moved.
    fn poll_chunked(&mut self, cx: &mut Context<'_>, chunk: Chunk) -> Poll<Result<Option<Frame<Bytes>>, BoxError>> {
        match chunk {
            Chunk::Size => {
                ready!(self.poll_until(cx, MAX_CHUNK_LINE, |b| b.windows(2).any(|w| w == b"\r\n")))?;
                let buf = self.buffered();
                let (used, size) = match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete(parsed)) => parsed,
                    _ => return Poll::Ready(Err(malformed("invalid chunk size"))),
                };
                buf.advance(used);
                self.framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                Poll::Ready(Ok(None))
            }
            Chunk::Data(left) => {
                let data = ready!(self.poll_data(cx, left))?;
                let left = left - data.len() as u64;
                self.framing = Framing::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                Poll::Ready(Ok(Some(Frame::data(data))))
            }
            Chunk::DataEnd => {
                ready!(self.poll_until(cx, 2, |b| b.len() >= 2))?;
                let buf = self.buffered();
                if &buf[..2] != b"\r\n" {
                    return Poll::Ready(Err(malformed("chunk not followed by CRLF")));
                }
                buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                Poll::Ready(Ok(None))
            }
            Chunk::Trailers => {
                ready!(self.poll_until(cx, MAX_TRAILERS, |b| b.starts_with(b"\r\n")
                    || b.windows(4).any(|w| w == b"\r\n\r\n")))?;
                let buf = self.buffered();
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (used, fields) = match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((used, fields))) => (used, fields),
                    _ => return Poll::Ready(Err(malformed("invalid trailer section"))),
                };
                let mut trailers = HeaderMap::new();
                for f in fields {
                    if let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                    {
                        trailers.append(name, value);
                    }
                }
                buf.advance(used);
                self.finish();
                Poll::Ready(Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers))))
            }
        }
    }
}

#[cfg(test)]
mod tests;
