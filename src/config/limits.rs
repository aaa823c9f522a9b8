//! Request and connection limits: what a client may send before Postern
//! refuses it, and how long it may take.
//!
//! The defaults follow the proxies operators already trust, so moving a
//! site behind Postern does not start refusing requests that nginx or Envoy
//! accepted, while a client still cannot hold memory or sockets without
//! bound.

use std::time::Duration;

/// Limits applied to every connection and request (top-level settings).
/// Zero means "no limit" for the counts, sizes and timeouts that say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `max_uri_bytes`: longest request target (path and query), answered
    /// with 414. 8 KiB: nginx's request line must fit one 8k buffer of
    /// `large_client_header_buffers`. On HTTP/1 a request line longer than
    /// `max_header_list_bytes` is refused by hyper with 431 before it can
    /// be told from a large header.
    pub max_uri_bytes: usize,
    /// `max_header_bytes`: longest single header (name and value), answered
    /// with 431. 16 KiB: twice nginx's 8k line, because signed-in traffic
    /// carries large tokens and chunked cookies; Envoy has no per-header cap.
    pub max_header_bytes: usize,
    /// `max_header_list_bytes`: all request headers together, cookies
    /// included, answered with 431. 64 KiB: close to Envoy's
    /// `max_request_headers_kb: 60` and twice nginx's 4×8k. On HTTP/1 it is
    /// hyper's read buffer (`max_buf_size`, which also holds the request
    /// line; at least 8 KiB), on HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_list_bytes: usize,
    /// `max_header_count`: most request headers, answered with 431. 100,
    /// as Envoy's `max_request_headers_count` and hyper's default.
    pub max_header_count: usize,
    /// `header_read_timeout`: longest a client may take, from accept, to
    /// finish a TLS handshake and send its first request's headers; on a
    /// kept-alive HTTP/1 connection, to send a later request's headers once
    /// their first byte arrived (nginx's `client_header_timeout`). 30 s:
    /// half nginx's 60 s; a client that is this slow is not a browser.
    pub header_read_timeout: Duration,
    /// `keepalive_timeout`: an idle connection (no request in flight) is
    /// closed after this long: the wait for the next HTTP/1 request's
    /// first byte or the next HTTP/2 stream. 75 s, nginx's
    /// `keepalive_timeout`. Also the HTTP/2 keep-alive ping interval (a
    /// ping unanswered for 20 s closes the connection). `0`: never.
    pub keepalive_timeout: Duration,
    /// `max_connections`: client connections served at once across all
    /// workers; more are closed on accept and counted in
    /// `postern_connections_refused_total`. An upgraded connection
    /// (WebSocket) keeps its place until its tunnel closes. 10,000; `0`: no
    /// limit.
    pub max_connections: usize,
    /// `max_concurrent_streams`: HTTP/2 streams open at once on one
    /// connection. 128, nginx's `http2_max_concurrent_streams`.
    pub max_concurrent_streams: u32,
    /// `max_pending_accept_reset_streams`: HTTP/2 streams a client may open
    /// and reset before Postern answers them (the "rapid reset" attack,
    /// CVE-2023-44487) before the connection is closed. 20, hyper's default.
    pub max_pending_accept_reset_streams: usize,
    /// `max_local_error_reset_streams`: HTTP/2 streams Postern may reset for
    /// a client's protocol errors before it closes the connection. 1024,
    /// hyper's default.
    pub max_local_error_reset_streams: usize,
    /// `default_max_request_body`: request body limit for routes that do
    /// not set `max_request_body`, answered with 413. `0` (no limit), as
    /// Envoy: uploads are the upstream's business unless the operator says
    /// otherwise.
    pub default_max_request_body: u64,
    /// `request_body_timeout`: longest a request body may stall between two
    /// reads; the request is answered with 408 (if nothing was answered
    /// yet) and the upstream request aborted. 60 s, nginx's
    /// `client_body_timeout`. `0`: never.
    pub request_body_timeout: Duration,
}

/// hyper refuses an HTTP/1 read buffer smaller than this (it panics).
pub(crate) const MIN_HEADER_LIST_BYTES: usize = 8192;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_header_list_bytes: 64 * 1024,
            max_header_count: 100,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_concurrent_streams: 128,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            default_max_request_body: 0,
            request_body_timeout: Duration::from_secs(60),
        }
    }
}

/// Checks the limit settings of the file; each bad value is reported
/// through `bad` by key and the default kept.
pub(super) fn from_raw(raw: &super::raw::RawSettings, bad: &mut impl FnMut(&str, String)) -> Limits {
    let mut limits = Limits::default();
    let mut count = |key: &str, value: Option<u64>, slot: &mut usize, min: usize| {
        let Some(v) = value else { return };
        match usize::try_from(v) {
            Ok(v) if v >= min => *slot = v,
            _ => bad(key, format!("must be at least {min}, found {v}")),
        }
    };
    count("max_uri_bytes", raw.max_uri_bytes, &mut limits.max_uri_bytes, 1);
    count("max_header_bytes", raw.max_header_bytes, &mut limits.max_header_bytes, 1);
    // hyper panics on a smaller HTTP/1 buffer; caught here instead.
    count("max_header_list_bytes", raw.max_header_list_bytes, &mut limits.max_header_list_bytes, MIN_HEADER_LIST_BYTES);
    count("max_header_count", raw.max_header_count, &mut limits.max_header_count, 1);
    count("max_connections", raw.max_connections, &mut limits.max_connections, 0);
    count(
        "max_pending_accept_reset_streams",
        raw.max_pending_accept_reset_streams,
        &mut limits.max_pending_accept_reset_streams,
        0,
    );
    count(
        "max_local_error_reset_streams",
        raw.max_local_error_reset_streams,
        &mut limits.max_local_error_reset_streams,
        0,
    );
    if limits.max_header_list_bytes > u32::MAX as usize {
        bad("max_header_list_bytes", format!("must be at most {}", u32::MAX));
        limits.max_header_list_bytes = Limits::default().max_header_list_bytes;
    }
    if let Some(v) = raw.max_concurrent_streams {
        match u32::try_from(v) {
            Ok(v) if v >= 1 => limits.max_concurrent_streams = v,
            _ => bad("max_concurrent_streams", format!("must be between 1 and {}, found {v}", u32::MAX)),
        }
    }
    if let Some(t) = raw.header_read_timeout {
        // Zero would let a client hold a socket forever without a byte.
        if t.is_zero() {
            bad("header_read_timeout", "must be more than 0".into());
        } else {
            limits.header_read_timeout = t;
        }
    }
    if let Some(t) = raw.keepalive_timeout {
        limits.keepalive_timeout = t;
    }
    if let Some(t) = raw.request_body_timeout {
        limits.request_body_timeout = t;
    }
    if let Some(b) = raw.default_max_request_body {
        limits.default_max_request_body = b;
    }
    limits
}
