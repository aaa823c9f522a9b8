//! CORS answered by the proxy: preflight detection and the `cors:` policy.
//!
//! With a `cors:` policy Postern owns CORS for the route: it answers
//! allowed preflights itself (they never reach the upstream and need no
//! session), and adds the CORS headers to every actual response, its own
//! `401`/`403` included, so a single-page app can read why a call failed.
//! Only an allowed origin is ever echoed; `*` never goes out with
//! credentials; every response says `Vary: Origin`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// A request is a preflight only if it is `OPTIONS` with both `Origin` and
/// `Access-Control-Request-Method`; a plain `OPTIONS`, or one with only
/// `Origin`, is an ordinary request.
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The `cors:` keys as written (file or Kubernetes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorsSpec {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<u64>,
}

/// A problem in a `cors:` block: the key inside it and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorsError {
    pub field: String,
    pub message: String,
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    /// `scheme://host[:port]`, lowercase, default port omitted.
    Exact(String),
    /// `scheme://*.parent[:port]`: exactly one more label in front of parent.
    Subdomain { scheme: String, parent: String, port: Option<u16> },
    /// `*`: any origin (never with credentials).
    Any,
}

/// A compiled `cors:` policy; header values are prepared once.
#[derive(Debug, Clone)]
pub(crate) struct CorsPolicy {
    origins: Vec<OriginPattern>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// `None`: echo what the preflight asks for (only with `*`, no credentials).
    headers_value: Option<HeaderValue>,
    echo_request_headers: bool,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

impl CorsPolicy {
    pub(crate) fn compile(spec: &CorsSpec) -> Result<CorsPolicy, CorsError> {
        let bad = |field: String, message: String| CorsError { field, message };
        if spec.allow_origins.is_empty() {
            return Err(bad("allow_origins".into(), "list at least one origin (e.g. https://app.example.com)".into()));
        }
        let mut origins = Vec::with_capacity(spec.allow_origins.len());
        for (i, o) in spec.allow_origins.iter().enumerate() {
            let pattern = parse_pattern(o).map_err(|m| bad(format!("allow_origins[{i}]"), m))?;
            if pattern == OriginPattern::Any && spec.allow_credentials {
                return Err(bad(
                    format!("allow_origins[{i}]"),
                    "`*` cannot be combined with allow_credentials: browsers reject it; list the origins".into(),
                ));
            }
            origins.push(pattern);
        }
        let method_names: Vec<String> = if spec.allow_methods.is_empty() {
            DEFAULT_METHODS.map(String::from).to_vec()
        } else {
            spec.allow_methods.iter().map(|m| m.trim().to_ascii_uppercase()).collect()
        };
        let mut methods = Vec::with_capacity(method_names.len());
        for (i, m) in method_names.iter().enumerate() {
            if m == "*" {
                return Err(bad(format!("allow_methods[{i}]"), "list the methods; `*` is not supported".into()));
            }
            methods.push(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| bad(format!("allow_methods[{i}]"), format!("{m:?} is not an HTTP method")))?,
            );
        }
        let methods_value = HeaderValue::from_str(&method_names.join(", "))
            .map_err(|_| bad("allow_methods".into(), "invalid".into()))?;
        let header_list = |field: &str, names: &[String]| -> Result<Option<HeaderValue>, CorsError> {
            if names.is_empty() {
                return Ok(None);
            }
            for (i, n) in names.iter().enumerate() {
                if n != "*" && HeaderName::try_from(n.trim()).is_err() {
                    return Err(bad(format!("{field}[{i}]"), format!("{n:?} is not a header name")));
                }
            }
            let joined = names.iter().map(|n| n.trim()).collect::<Vec<_>>().join(", ");
            HeaderValue::from_str(&joined).map(Some).map_err(|_| bad(field.into(), "invalid header list".into()))
        };
        let echo_request_headers = spec.allow_headers.iter().any(|h| h == "*");
        if echo_request_headers && spec.allow_credentials {
            return Err(bad(
                "allow_headers".into(),
                "`*` cannot be combined with allow_credentials; list the headers".into(),
            ));
        }
        Ok(CorsPolicy {
            origins,
            methods,
            methods_value,
            headers_value: if echo_request_headers { None } else { header_list("allow_headers", &spec.allow_headers)? },
            echo_request_headers,
            expose_value: header_list("expose_headers", &spec.expose_headers)?,
            credentials: spec.allow_credentials,
            max_age: spec.max_age.map(HeaderValue::from),
        })
    }

    /// Whether `origin` (the request's `Origin` value) is allowed. `null`,
    /// look-alike suffixes and case tricks are refused: matching is exact
    /// on scheme, host and port after parsing.
    pub(crate) fn allows(&self, origin: &HeaderValue) -> bool {
        let Some((scheme, host, port)) = origin.to_str().ok().and_then(parse_origin) else {
            return false;
        };
        let canonical = canonical(&scheme, &host, port);
        self.origins.iter().any(|p| match p {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => *o == canonical,
            OriginPattern::Subdomain { scheme: s, parent, port: p } => {
                *s == scheme
                    && *p == port
                    && host
                        .strip_suffix(parent.as_str())
                        .and_then(|l| l.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            }
        })
    }

    /// Headers for Postern's answer to a preflight (status 204). A
    /// disallowed origin or method gets none, only `Vary`.
    pub(crate) fn preflight(&self, request: &HeaderMap) -> (StatusCode, HeaderMap) {
        let mut out = HeaderMap::new();
        out.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        let Some(origin) = request.get(header::ORIGIN).filter(|o| self.allows(o)) else {
            return (StatusCode::NO_CONTENT, out);
        };
        let method_ok = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        if !method_ok {
            return (StatusCode::NO_CONTENT, out);
        }
        self.allow_origin(origin, &mut out);
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if let Some(h) = &self.headers_value {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        } else if self.echo_request_headers
            && let Some(requested) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        if let Some(m) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, m.clone());
        }
        (StatusCode::NO_CONTENT, out)
    }

    /// Decorates an actual response (the upstream's or Postern's own) for
    /// a request with `origin`. The upstream's own CORS headers are
    /// replaced: with a `cors:` policy, Postern is the one answering.
    pub(crate) fn apply(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let theirs: Vec<HeaderName> =
            response.keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
        for name in theirs {
            response.remove(name);
        }
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            self.allow_origin(origin, response);
            if let Some(e) = &self.expose_value {
                response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
        }
    }

    fn allow_origin(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        // With credentials, the exact origin; `*` only for credential-less `*` policies.
        let any = !self.credentials && self.origins.contains(&OriginPattern::Any);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            if any { HeaderValue::from_static("*") } else { origin.clone() },
        );
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// `scheme://host[:port]` of an `Origin` header; `None` for `null` and
/// anything that is not exactly an origin (paths, userinfo, odd schemes).
fn parse_origin(text: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = text.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\', ' ']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().ok()?)),
        _ => (rest, None),
    };
    // Browsers send lowercase hosts; anything else is not a browser origin.
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_uppercase()) || host.ends_with('.') {
        return None;
    }
    let port = match (scheme, port) {
        ("https", Some(443)) | ("http", Some(80)) => None,
        (_, p) => p,
    };
    Some((scheme.to_string(), host.to_string(), port))
}

fn canonical(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }
}

fn parse_pattern(text: &str) -> Result<OriginPattern, String> {
    if text == "*" {
        return Ok(OriginPattern::Any);
    }
    let lower = text.trim().trim_end_matches('/').to_ascii_lowercase();
    if lower == "null" {
        return Err("`null` is not an origin to allow (sandboxed pages and files send it)".into());
    }
    let invalid = || format!("{text:?} is not an origin like https://app.example.com or https://*.example.com");
    let (scheme, rest) = lower.split_once("://").ok_or_else(invalid)?;
    if let Some(sub) = rest.strip_prefix("*.") {
        let (parent, port) = parse_origin(&format!("{scheme}://{sub}")).map(|(_, h, p)| (h, p)).ok_or_else(invalid)?;
        if !parent.contains('.') {
            return Err(format!("{text:?}: a wildcard needs a parent domain with a dot (https://*.example.com)"));
        }
        return Ok(OriginPattern::Subdomain { scheme: scheme.to_string(), parent, port });
    }
    if rest.contains('*') {
        return Err(format!("{text:?}: `*` may only be the whole first label (https://*.example.com)"));
    }
    let (scheme, host, port) = parse_origin(&lower).ok_or_else(invalid)?;
    Ok(OriginPattern::Exact(canonical(&scheme, &host, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::compile(&CorsSpec {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allow_headers: vec!["X-Pomerium-Authorization".into()],
            max_age: Some(600),
            ..Default::default()
        })
        .expect("valid policy")
    }

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn preflight_detection_needs_both_headers() {
        let mut h = HeaderMap::new();
        assert!(!is_preflight(&Method::OPTIONS, &h));
        h.insert(header::ORIGIN, hv("https://app.example.com"));
        assert!(!is_preflight(&Method::OPTIONS, &h), "Origin alone is not a preflight");
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv("POST"));
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::POST, &h));
        h.remove(header::ORIGIN);
        assert!(!is_preflight(&Method::OPTIONS, &h), "request-method alone is not a preflight");
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port_only() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"], true);
        assert!(p.allows(&hv("https://app.example.com")));
        assert!(p.allows(&hv("https://app.example.com:443")));
        assert!(p.allows(&hv("http://localhost:3000")));
        for trick in [
            "null",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil-example.com",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://APP.EXAMPLE.COM",
            "https://app.example.com.",
            "https://app.example.com/",
            "https://user@app.example.com",
            "https://app.example.com\\@evil.com",
            "http://localhost:30000",
            "",
        ] {
            assert!(!p.allows(&HeaderValue::from_str(trick).expect("header")), "{trick} must be refused");
        }
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let p = policy(&["https://*.example.com"], true);
        assert!(p.allows(&hv("https://app.example.com")));
        assert!(!p.allows(&hv("https://a.b.example.com")));
        assert!(!p.allows(&hv("https://example.com")));
        assert!(!p.allows(&hv("https://evil-example.com")));
        assert!(!p.allows(&hv("https://example.com.evil.com")));
        assert!(!p.allows(&hv("http://app.example.com")));
    }

    #[test]
    fn validation_rejects_contradictions() {
        let err = CorsPolicy::compile(&CorsSpec {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..Default::default()
        })
        .expect_err("* with credentials");
        assert_eq!(err.field, "allow_origins[0]");
        assert!(err.message.contains("cannot be combined with allow_credentials"));
        for (bad, field) in [
            ("null", "allow_origins[0]"),
            ("https://a.*.com", "allow_origins[0]"),
            ("app.example.com", "allow_origins[0]"),
        ] {
            let err = CorsPolicy::compile(&CorsSpec { allow_origins: vec![bad.into()], ..Default::default() })
                .expect_err(bad);
            assert_eq!(err.field, field, "{bad}");
        }
        assert!(CorsPolicy::compile(&CorsSpec::default()).is_err(), "needs origins");
    }

    #[test]
    fn preflight_answers_only_allowed_origins_and_methods() {
        let p = policy(&["https://app.example.com"], true);
        let mut req = HeaderMap::new();
        req.insert(header::ORIGIN, hv("https://app.example.com"));
        req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv("POST"));
        let (status, h) = p.preflight(&req);
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "X-Pomerium-Authorization");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[header::VARY].to_str().expect("vary").contains("Origin"));

        req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv("DELETE"));
        let (_, h) = p.preflight(&req);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "method not allowed");

        req.insert(header::ORIGIN, hv("https://evil.com"));
        req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv("POST"));
        let (_, h) = p.preflight(&req);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(h.get(header::VARY).is_some());
    }

    #[test]
    fn actual_responses_echo_allowed_origins_and_replace_upstream_cors() {
        let p = policy(&["https://app.example.com"], true);
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, hv("*"));
        p.apply(Some(&hv("https://app.example.com")), &mut resp);
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(resp[header::VARY], "Origin");

        let mut resp = HeaderMap::new();
        p.apply(Some(&hv("https://evil.com")), &mut resp);
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(resp[header::VARY], "Origin");

        let any =
            CorsPolicy::compile(&CorsSpec { allow_origins: vec!["*".into()], ..Default::default() }).expect("valid");
        let mut resp = HeaderMap::new();
        any.apply(Some(&hv("https://x.test")), &mut resp);
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }
}
