//! `RouteSpec` → `Route`: every check that needs the whole route.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use regex::Regex;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::route::{Action, FromUrl, HostHeader, PathRule, Route, Upstream, UpstreamTls, Upstreams};
use crate::auth::CookieAttrs;
use crate::config::{CookiePrefix, Problem, RouteSpec, Settings};
use crate::cors::CorsPolicy;
use crate::policy::{Policy, PolicySpec};

/// Headers a route may not set or remove: the proxy owns them.
const PROTECTED_REQUEST_HEADERS: &[&str] =
    &["host", "connection", "upgrade", "transfer-encoding", "content-length", "te"];

/// Largest `to` weight; keeps the round-robin schedule small.
const MAX_WEIGHT: u32 = 1000;

/// Checks one spec. The error is the first problem found, naming its field.
pub(super) fn compile_route(settings: &Settings, spec: RouteSpec) -> Result<Route, Problem> {
    let origin = &spec.origin;
    let bad = |field: &str, message: String| Problem::new(origin, Some(field), message);

    let from = parse_from(&spec.from).map_err(|m| bad("from", m))?;
    let rule = match (&spec.path, &spec.prefix, &spec.regex) {
        (None, None, None) => match &spec.segment_prefix {
            None => PathRule::Any,
            Some(p) => {
                let p = absolute_path("path", p).map_err(|m| bad("path", m))?;
                match p.trim_end_matches('/') {
                    "" => PathRule::Any,
                    trimmed => PathRule::Segments(trimmed.to_string()),
                }
            }
        },
        _ if spec.segment_prefix.is_some() => {
            return Err(bad("path", "set only one path rule".into()));
        }
        (Some(p), None, None) => PathRule::Exact(absolute_path("path", p).map_err(|m| bad("path", m))?),
        (None, Some(p), None) => PathRule::Prefix(absolute_path("prefix", p).map_err(|m| bad("prefix", m))?),
        (None, None, Some(r)) => PathRule::Regex {
            re: Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| bad("regex", format!("invalid regular expression: {}", first_line(&e.to_string()))))?,
            source: r.clone(),
        },
        _ => {
            let field = if spec.regex.is_some() { "regex" } else { "prefix" };
            return Err(bad(field, "set only one of `path`, `prefix` and `regex`".into()));
        }
    };
    if let Some(p) = &spec.prefix_rewrite
        && !p.starts_with('/')
    {
        return Err(bad("prefix_rewrite", format!("{p:?} must start with '/'")));
    }

    let action = match (&spec.response, spec.to.is_empty()) {
        (Some(_), false) => {
            return Err(bad("response", "set either `to` or `response`, not both".into()));
        }
        (None, true) => {
            return Err(Problem::new(origin, None, "route needs `to` (upstream URLs) or `response`"));
        }
        (Some(r), true) => {
            if !(100..=599).contains(&r.status) {
                return Err(bad("response.status", format!("{} is not an HTTP status (100-599)", r.status)));
            }
            HeaderValue::from_str(&r.content_type).map_err(|_| {
                bad("response.content_type", format!("{:?} is not a valid header value", r.content_type))
            })?;
            Action::Respond(r.clone())
        }
        (None, false) => {
            let mut targets = Vec::with_capacity(spec.to.len());
            for (i, to) in spec.to.iter().enumerate() {
                let field = if spec.to.len() == 1 { "to".to_string() } else { format!("to[{i}]") };
                targets.push(parse_to(to).map_err(|m| bad(&field, m))?);
            }
            let custom_ca = match &spec.tls_custom_ca {
                Some(pem) => Some(parse_ca(pem).map_err(|m| bad("tls_custom_ca", m))?),
                None => None,
            };
            Action::Forward(Upstreams::new(targets, UpstreamTls { skip_verify: spec.tls_skip_verify, custom_ca }))
        }
    };

    let host_header = match (&spec.host_rewrite, spec.preserve_host_header) {
        (Some(_), true) => {
            return Err(bad("host_rewrite", "set either `host_rewrite` or `preserve_host_header`, not both".into()));
        }
        (Some(h), false) => HostHeader::Rewrite(
            h.parse::<Authority>()
                .ok()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .ok_or_else(|| bad("host_rewrite", format!("{h:?} is not a host name")))?,
        ),
        (None, true) => HostHeader::Preserve,
        (None, false) => HostHeader::Upstream,
    };

    let set_request_headers =
        header_pairs(&spec.set_request_headers, "set_request_headers", true).map_err(|(f, m)| bad(&f, m))?;
    let mut remove_request_headers = Vec::with_capacity(spec.remove_request_headers.len());
    for (i, name) in spec.remove_request_headers.iter().enumerate() {
        let field = format!("remove_request_headers[{i}]");
        let name =
            HeaderName::try_from(name.as_str()).map_err(|_| bad(&field, format!("{name:?} is not a header name")))?;
        if PROTECTED_REQUEST_HEADERS.contains(&name.as_str()) {
            return Err(bad(&field, format!("`{name}` is managed by the proxy and cannot be removed")));
        }
        remove_request_headers.push(name);
    }
    let set_response_headers =
        header_pairs(&spec.set_response_headers, "set_response_headers", false).map_err(|(f, m)| bad(&f, m))?;

    let timeout = match spec.timeout {
        Some(Duration::ZERO) => None,
        Some(t) => Some(t),
        None if settings.default_upstream_timeout.is_zero() => None,
        None => Some(settings.default_upstream_timeout),
    };
    let idle_timeout = spec.idle_timeout.filter(|t| !t.is_zero());
    // The route's own value wins, `0` included (it lifts a global limit).
    let max_request_body =
        Some(spec.max_request_body.unwrap_or(settings.limits.default_max_request_body)).filter(|b| *b > 0);

    let policy = Policy::compile(&PolicySpec {
        allow_public_unauthenticated_access: spec.allow_public_unauthenticated_access,
        allow_any_authenticated_user: spec.allow_any_authenticated_user,
        allowed_users: &spec.allowed_users,
        allowed_domains: &spec.allowed_domains,
        policy: spec.policy.as_ref(),
    })
    .map_err(|e| Problem::new(origin, Some(&e.path), e.message))?;
    let cors = match &spec.cors {
        Some(c) => Some(Box::new(CorsPolicy::compile(c).map_err(|e| bad(&format!("cors.{}", e.field), e.message))?)),
        None => None,
    };
    if let Some(domain) = &spec.cookie_domain {
        check_cookie_domain(domain, &from.host).map_err(|m| bad("cookie_domain", m))?;
    }
    // The global settings were checked against the name with the config;
    // a route's own overrides (file or cluster object) are checked here.
    let cookie_name = &settings.auth.cookie.name;
    if let Some(prefix) = CookiePrefix::of(cookie_name) {
        if prefix.forbids_domain() && spec.cookie_domain.is_some() {
            return Err(bad("cookie_domain", prefix.domain_refused(cookie_name)));
        }
        if prefix.needs_http_only() && spec.cookie_http_only == Some(false) {
            return Err(bad("cookie_http_only", prefix.http_only_refused(cookie_name)));
        }
    }

    Ok(Route {
        name: Arc::new(format!("{}{}", from.host, rule_label(&rule))),
        origin: spec.origin.clone(),
        from,
        rule,
        action,
        prefix_rewrite: spec.prefix_rewrite.clone(),
        host_header,
        set_request_headers,
        remove_request_headers,
        set_response_headers,
        timeout,
        idle_timeout,
        allow_websockets: spec.allow_websockets,
        max_request_body,
        policy,
        pass_identity_headers: spec.pass_identity_headers,
        cookie: CookieAttrs::session(
            &settings.auth.cookie,
            settings.insecure_server,
            spec.cookie_domain.as_deref(),
            spec.cookie_http_only,
        ),
        cors_allow_preflight: spec.cors_allow_preflight,
        cors,
    })
}

/// A cookie `Domain` the browser will accept for `host`: the host itself
/// or a parent of it (a leading `.` is allowed, as browsers ignore it).
fn check_cookie_domain(domain: &str, host: &str) -> Result<(), String> {
    let bare = domain.trim_start_matches('.').to_ascii_lowercase();
    if bare.is_empty() || !bare.contains('.') && bare != "localhost" {
        return Err(format!("{domain:?} is not a domain a browser accepts for cookies"));
    }
    let host = host.trim_start_matches("*.");
    if host == bare || host.ends_with(&format!(".{bare}")) {
        Ok(())
    } else {
        Err(format!("{domain:?} does not cover the route host {host:?}; browsers would drop the cookie"))
    }
}

fn rule_label(rule: &PathRule) -> String {
    match rule {
        PathRule::Any => String::new(),
        other => other.to_string(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

fn absolute_path(field: &str, p: &str) -> Result<String, String> {
    if p.starts_with('/') { Ok(p.to_string()) } else { Err(format!("{field} {p:?} must start with '/'")) }
}

/// Splits `scheme://host[:port][/path]` without a URL crate: `from` allows a
/// `*` label, which URL parsers reject.
fn split_url(text: &str, allow_h2c: bool) -> Result<(Scheme, &str, &str), String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("{text:?} is not an http or https URL"));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::HTTP,
        "https" => Scheme::HTTPS,
        // HTTP/2 without TLS (prior knowledge), as Pomerium spells it: for gRPC upstreams.
        "h2c" if allow_h2c => "h2c".parse().map_err(|_| format!("{text:?} has an invalid scheme"))?,
        _ if allow_h2c => return Err(format!("{text:?} is not an http, https or h2c URL")),
        _ => return Err(format!("{text:?} is not an http or https URL")),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!("{text:?} must not contain user info"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    Ok((scheme, authority, path))
}

fn parse_from(text: &str) -> Result<FromUrl, String> {
    let (scheme, authority, path) = split_url(text.trim(), false)?;
    if !path.is_empty() && path != "/" {
        return Err(format!("{text:?} must not have a path; use `prefix` or `path`"));
    }
    let (host, port) = super::host::split_host_port(authority).ok_or_else(|| {
        match authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            Some((_, p)) if p.parse::<u16>().is_err() => format!("{text:?} has an invalid port {p:?}"),
            _ => format!("{text:?} has an invalid host (use ASCII, punycode for international names)"),
        }
    })?;
    let host = host.to_ascii_lowercase();
    if host == "*" {
        // Any host (an Ingress rule without a host, a default backend).
        return Ok(FromUrl { scheme, host, port });
    }
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.contains('*') {
        return Err(format!("{text:?} has an invalid host (a `*` may only be the whole first label)"));
    }
    if bare.is_empty() || !bare.split('.').all(valid_label) {
        return Err(format!("{text:?} has an invalid host (use ASCII, punycode for international names)"));
    }
    Ok(FromUrl { scheme, host, port })
}

fn valid_label(label: &str) -> bool {
    // Bracketed IPv6 literals and ordinary DNS labels (underscores are seen in the wild).
    (label.starts_with('[') && label.ends_with(']'))
        || (!label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// `URL` or `URL,weight`.
fn parse_to(text: &str) -> Result<Upstream, String> {
    let (url, weight) = match text.rsplit_once(',') {
        Some((url, w)) => {
            let w: u32 = w.trim().parse().map_err(|_| format!("{text:?}: weight {w:?} is not a whole number"))?;
            if !(1..=MAX_WEIGHT).contains(&w) {
                return Err(format!("{text:?}: weight must be from 1 to {MAX_WEIGHT}"));
            }
            (url.trim(), w)
        }
        None => (text.trim(), 1),
    };
    let (scheme, authority, path) = split_url(url, true)?;
    let authority: Authority = authority.parse().map_err(|_| format!("{url:?} has an invalid host or port"))?;
    // `Authority` silently drops a port that does not fit in a u16.
    let after_host = authority.as_str().rsplit_once(']').map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url:?} has an invalid port {port:?}"));
    }
    if authority.host().contains('*') {
        return Err(format!("{url:?}: an upstream cannot be a wildcard"));
    }
    Ok(Upstream::new(scheme, authority, path.trim_end_matches('/').to_string(), weight))
}

fn parse_ca(pem: &str) -> Result<Arc<[CertificateDer<'static>]>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs.into())
}

fn header_pairs(
    map: &std::collections::BTreeMap<String, String>,
    field: &str,
    request: bool,
) -> Result<Vec<(HeaderName, HeaderValue)>, (String, String)> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let key = format!("{field}.{name}");
        let header =
            HeaderName::try_from(name.as_str()).map_err(|_| (key.clone(), format!("{name:?} is not a header name")))?;
        if request && PROTECTED_REQUEST_HEADERS.contains(&header.as_str()) {
            return Err((key, format!("`{header}` is managed by the proxy; use host_rewrite for Host")));
        }
        let value =
            HeaderValue::from_str(value).map_err(|_| (key, format!("{value:?} is not a valid header value")))?;
        out.push((header, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_urls() {
        let f = parse_from("https://API.Example.com").expect("valid");
        assert_eq!((f.host.as_str(), f.port), ("api.example.com", None));
        let f = parse_from("http://*.example.com:8080").expect("valid");
        assert_eq!((f.host.as_str(), f.port), ("*.example.com", Some(8080)));
        assert!(parse_from("htp://x").unwrap_err().contains("is not an http or https URL"));
        assert!(parse_from("https://a.*.com").unwrap_err().contains("invalid host"));
        assert!(parse_from("https://x/path").unwrap_err().contains("must not have a path"));
        assert!(parse_from("https://x:99999").unwrap_err().contains("invalid port"));
        let v6 = parse_from("https://[::1]").expect("IPv6 literal");
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", None));
        let v6 = parse_from("https://[::1]:8443").expect("IPv6 literal with a port");
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", Some(8443)));
    }

    #[test]
    fn to_urls_with_weights() {
        let u = parse_to("http://10.0.0.1:8080/base/,3").expect("valid");
        assert_eq!((u.authority.as_str(), u.base_path.as_str(), u.weight), ("10.0.0.1:8080", "/base", 3));
        assert!(parse_to("http://a,0").unwrap_err().contains("weight must be"));
        assert!(parse_to("http://a,x").unwrap_err().contains("not a whole number"));
        assert!(parse_to("ftp://a").unwrap_err().contains("not an http, https or h2c URL"));
        assert_eq!(parse_to("h2c://grpc:50051").expect("valid").scheme.as_str(), "h2c");
    }
}
