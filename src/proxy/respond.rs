//! The one place errors become HTTP responses.
//!
//! Browser navigations get a small HTML page; everything else gets JSON, so
//! an SPA's `fetch()` can read why a call failed. Bodies never include
//! upstream addresses or internal error details.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::body::{ProxyBody, full};
use crate::auth::{AuthError, Denied, OidcError};
use crate::routes::path::PathError;

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The client sent a path we refuse to route (client's fault).
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    /// No `Host` (or `:authority`) to route by (client's fault).
    #[error("request has no host")]
    NoHost,
    /// Two `Host` headers, or a `Host` naming another authority than the
    /// request target (RFC 9112 §3.2, RFC 9113 §8.3.1); never forwarded,
    /// since Postern and the upstream could read different hosts (client's
    /// fault).
    #[error("conflicting host")]
    ConflictingHost,
    /// The session cookie arrived twice with different values (one planted
    /// for a parent domain or a longer path); neither is believed (client's
    /// fault: clearing the site's cookies fixes it).
    #[error("two different session cookies; clear this site's cookies and sign in again")]
    AmbiguousSessionCookie,
    /// A header that may appear once appeared twice (client's fault).
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
    /// The request target is longer than `max_uri_bytes` (client's fault).
    #[error("request target too long")]
    UriTooLong,
    /// A header is larger than `max_header_bytes`, all headers together
    /// larger than `max_header_list_bytes`, or there are more than
    /// `max_header_count` (client's fault).
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The request body could not be read (a malformed chunk, a client
    /// that went away mid-body): the upstream request is aborted (client's
    /// fault, not the upstream's).
    #[error("request body malformed")]
    BadBody,
    /// The request body stalled longer than `request_body_timeout` before
    /// anything was answered (client's fault).
    #[error("request body timed out")]
    BodyTimeout,
    #[error("no route for this host and path")]
    NoRoute,
    /// The route needs a signed-in user and there is none. Browsers are
    /// sent to `redirect`; API clients get `sign_in_url` in the body.
    #[error("sign-in required")]
    Unauthenticated { sign_in_url: Option<String>, redirect: Option<String> },
    /// Signed in, but the route's policy does not allow this user.
    #[error("access denied")]
    Forbidden,
    /// A sign-in step failed (see the auth error for whose fault).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request body was larger than the route's `max_request_body` (or a
    /// form body for one of Postern's endpoints larger than it reads).
    #[error("request body too large")]
    BodyTooLarge,
    /// The upstream did not send response headers within the route timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// No upstream of the route accepted a connection.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream broke the protocol or the connection mid-request.
    #[error("upstream failed")]
    UpstreamFailed,
}

impl From<Denied> for ProxyError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Forbidden => ProxyError::Forbidden,
            Denied::SignInRequired { sign_in_url, redirect } => ProxyError::Unauthenticated { sign_in_url, redirect },
        }
    }
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_)
            | ProxyError::NoHost
            | ProxyError::ConflictingHost
            | ProxyError::DuplicateHeader(_)
            | ProxyError::AmbiguousSessionCookie
            | ProxyError::BadBody => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Auth(e) => match e {
                AuthError::BadRequest(_) | AuthError::Redirect(_) => StatusCode::BAD_REQUEST,
                AuthError::Csrf => StatusCode::FORBIDDEN,
                AuthError::NotConfigured => StatusCode::NOT_IMPLEMENTED,
                AuthError::Oidc(OidcError::Refused(_) | OidcError::BadIdToken(_)) => StatusCode::BAD_REQUEST,
                AuthError::Oidc(_) => StatusCode::BAD_GATEWAY,
            },
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamUnavailable | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable machine-readable code for the JSON body.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::NoHost => "no_host",
            ProxyError::ConflictingHost => "conflicting_host",
            ProxyError::DuplicateHeader(_) => "duplicate_header",
            ProxyError::AmbiguousSessionCookie => "ambiguous_session_cookie",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::BadBody => "bad_request_body",
            ProxyError::NoRoute => "not_found",
            ProxyError::Unauthenticated { .. } => "unauthenticated",
            ProxyError::Forbidden => "forbidden",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::Auth(AuthError::Csrf) => "csrf",
            ProxyError::Auth(AuthError::Oidc(_)) => "sign_in_failed",
            ProxyError::Auth(_) => "bad_sign_in_request",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamFailed => "upstream_failed",
        }
    }
}

const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// Whether the client is a browser navigating (it will render a page),
/// as opposed to `fetch()`, XHR, curl or an API client.
pub(crate) fn is_navigation(headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode.as_bytes() == b"navigate";
    }
    prefers_html(headers)
}

/// Accept lists `text/html` with a higher quality than JSON and `*/*`.
fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut html = None::<f32>;
    let mut other = 0f32;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).next().unwrap_or(1.0);
        let is = |m: &str| media.eq_ignore_ascii_case(m);
        if is("text/html") || is("application/xhtml+xml") {
            html = Some(html.map_or(q, |h| h.max(q)));
        } else if is("application/json") || is("*/*") {
            other = other.max(q);
        }
    }
    html.is_some_and(|h| h > 0.0 && h >= other)
}

/// Renders `err` as an HTML page for a browser navigation, JSON otherwise.
pub(crate) fn error_response(err: &ProxyError, navigation: bool) -> Response<ProxyBody> {
    if let ProxyError::Unauthenticated { redirect: Some(location), .. } = err
        && navigation
        && let Ok(location) = HeaderValue::from_str(location)
    {
        let mut resp = Response::new(super::body::empty());
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut().insert(header::LOCATION, location);
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return resp;
    }
    let status = err.status();
    // Sign-in errors name the step, never a token or an upstream address.
    let message = match err {
        ProxyError::Auth(AuthError::Oidc(_)) => "sign-in with the identity provider failed".to_string(),
        other => other.to_string(),
    };
    let (content_type, body) = if navigation {
        ("text/html; charset=utf-8", html_page(status, &message))
    } else {
        let mut json = serde_json::json!({ "error": err.code(), "message": message, "status": status.as_u16() });
        if let ProxyError::Unauthenticated { sign_in_url: Some(url), .. } = err {
            json["sign_in_url"] = serde_json::Value::String(url.clone());
        }
        ("application/json", format!("{json}\n"))
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn html_page(status: StatusCode, message: &str) -> String {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    // `message` comes from our own error strings, never from the request.
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;color:#222}}</style></head>\
         <body><h1>{code} {reason}</h1><p>{message}.</p><hr><small>Postern</small></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn navigation_is_told_by_fetch_mode_then_accept() {
        assert!(is_navigation(&headers(&[("sec-fetch-mode", "navigate")])));
        assert!(!is_navigation(&headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")])));
        assert!(is_navigation(&headers(&[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")])));
        assert!(!is_navigation(&headers(&[("accept", "application/json")])));
        assert!(!is_navigation(&headers(&[("accept", "*/*")])));
        assert!(!is_navigation(&headers(&[("accept", "application/json, text/html;q=0.5")])));
        assert!(!is_navigation(&headers(&[])));
    }
}
