//! Request-head checks hyper does not make itself.
//!
//! hyper already refuses, before Postern sees a request: an HTTP/1 head
//! larger than its read buffer (`max_header_list_bytes`, 431, the request
//! line included, so a URI longer than the buffer is 431 rather than 414),
//! more than `max_header_count` HTTP/1 headers (431) and an HTTP/2 header
//! list over `SETTINGS_MAX_HEADER_LIST_SIZE` (431, from h2). What is left,
//! the per-header size, the URI length, the HTTP/2 header count, a single
//! `Authorization` and the `Host` agreement, is checked here, first thing in the pipeline.

use http::{HeaderMap, Request, header};

use super::respond::ProxyError;
use crate::config::Limits;
use crate::routes::host;

/// Refuses a request head that breaks a limit or names two hosts.
pub(crate) fn check_head<B>(req: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    check_headers(req.headers(), limits)?;
    check_singletons(req.headers())?;
    check_host(req)
}

/// Headers that may appear once: with two, the session lookup, the
/// policy and the upstream could each take a different one ("first wins"
/// here, "last wins" there), so neither is believed (Envoy
/// CVE-2021-32777).
fn check_singletons(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return Err(ProxyError::DuplicateHeader("authorization"));
    }
    Ok(())
}

fn check_headers(headers: &HeaderMap, limits: &Limits) -> Result<(), ProxyError> {
    if headers.len() > limits.max_header_count {
        return Err(ProxyError::HeadersTooLarge);
    }
    let mut total = 0usize;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > limits.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge);
        }
        total += size;
    }
    if total > limits.max_header_list_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// One `Host` at most, and the same host as an absolute-form or
/// `:authority` target. A proxy that routes by one host while the upstream
/// reads another lets a client reach a route its policy never saw.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::ConflictingHost);
    }
    // No Host at all is answered by routing (`NoHost`) unless the target names one.
    let (Some(first), Some(authority)) = (first, req.uri().authority()) else { return Ok(()) };
    let header = first.to_str().ok().and_then(host::split_host_port).ok_or(ProxyError::ConflictingHost)?;
    let target = host::split_host_port(authority.as_str()).ok_or(ProxyError::ConflictingHost)?;
    let same_host = header.0.trim_end_matches('.').eq_ignore_ascii_case(target.0.trim_end_matches('.'));
    // A port on one side only is the scheme's default port on the other.
    let same_port = header.1.is_none() || target.1.is_none() || header.1 == target.1;
    if same_host && same_port { Ok(()) } else { Err(ProxyError::ConflictingHost) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("valid request")
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let limits = Limits::default();
        let mut req = request("/", &["a.test"]);
        req.headers_mut().append(header::AUTHORIZATION, http::HeaderValue::from_static("Bearer a"));
        assert!(check_head(&req, &limits).is_ok());
        req.headers_mut().append(header::AUTHORIZATION, http::HeaderValue::from_static("Bearer b"));
        assert!(matches!(check_head(&req, &limits), Err(ProxyError::DuplicateHeader("authorization"))));
    }

    #[test]
    fn one_host_or_none_is_fine() {
        let limits = Limits::default();
        assert!(check_head(&request("/", &["a.example.com"]), &limits).is_ok());
        assert!(check_head(&request("/", &[]), &limits).is_ok());
        assert!(check_head(&request("https://A.example.com/x", &["a.example.com:443"]), &limits).is_ok());
    }

    #[test]
    fn two_hosts_or_a_disagreeing_host_are_refused() {
        let limits = Limits::default();
        let conflict = |r: Request<()>| matches!(check_head(&r, &limits), Err(ProxyError::ConflictingHost));
        assert!(conflict(request("/", &["a.example.com", "b.example.com"])));
        assert!(conflict(request("/", &["a.example.com", "a.example.com"])));
        assert!(conflict(request("https://a.example.com/", &["b.example.com"])));
        assert!(conflict(request("https://a.example.com:8443/", &["a.example.com:9443"])));
    }

    #[test]
    fn header_limits_are_inclusive() {
        let limits =
            Limits { max_header_bytes: 20, max_header_list_bytes: 30, max_header_count: 2, ..Limits::default() };
        let with = |pairs: &[(&'static str, String)]| {
            let mut r = request("/", &[]);
            for (k, v) in pairs {
                r.headers_mut().append(*k, v.parse().expect("header value"));
            }
            check_head(&r, &limits)
        };
        // "x-a" is 3 bytes: 17 bytes of value make exactly 20.
        assert!(with(&[("x-a", "v".repeat(17))]).is_ok());
        assert!(matches!(with(&[("x-a", "v".repeat(18))]), Err(ProxyError::HeadersTooLarge)));
        assert!(with(&[("x-a", "v".repeat(12)), ("x-b", "v".repeat(12))]).is_ok());
        assert!(matches!(with(&[("x-a", "v".repeat(13)), ("x-b", "v".repeat(12))]), Err(ProxyError::HeadersTooLarge)));
        let three = [("x-a", "1".to_string()), ("x-b", "1".to_string()), ("x-c", "1".to_string())];
        assert!(matches!(with(&three), Err(ProxyError::HeadersTooLarge)));
    }

    #[test]
    fn long_targets_are_refused() {
        let limits = Limits { max_uri_bytes: 10, ..Limits::default() };
        assert!(check_head(&request("/123456789", &[]), &limits).is_ok());
        assert!(matches!(check_head(&request("/1234567890", &[]), &limits), Err(ProxyError::UriTooLong)));
    }
}
