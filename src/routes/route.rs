//! A compiled route: everything the request pipeline needs, already checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use regex::Regex;
use rustls_pki_types::CertificateDer;

use crate::auth::CookieAttrs;
use crate::config::{DirectResponse, Origin};
use crate::cors::CorsPolicy;
use crate::policy::Policy;

/// One route of the table. Immutable; shared by every request that matches.
#[derive(Debug)]
pub struct Route {
    /// Stable, human-readable name: `host` + path rule. Used in logs and metrics.
    pub name: Arc<String>,
    pub origin: Origin,
    pub from: FromUrl,
    pub rule: PathRule,
    pub action: Action,
    pub prefix_rewrite: Option<String>,
    pub host_header: HostHeader,
    pub set_request_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_request_headers: Vec<HeaderName>,
    pub set_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Time allowed for the upstream's response headers; `None` disables.
    pub timeout: Option<Duration>,
    /// Longest silence on a streamed body or upgraded connection; `None` disables.
    pub idle_timeout: Option<Duration>,
    pub allow_websockets: bool,
    /// Largest request body in bytes (413 beyond it); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Who may use the route (Pomerium's policy keys, compiled).
    pub(crate) policy: Policy,
    /// Send `X-Postern-Jwt-Assertion` upstream.
    pub pass_identity_headers: bool,
    /// The session cookie on this route's host: the global cookie settings
    /// with the route's `cookie_domain` / `cookie_http_only`, worked out once.
    pub cookie: CookieAttrs,
    /// Preflights skip sign-in and policy (and go to the upstream).
    pub cors_allow_preflight: bool,
    /// Postern's own CORS answers for this route (boxed: most routes have
    /// none, and a table holds one `Route` per route of the cluster).
    pub(crate) cors: Option<Box<CorsPolicy>>,
}

/// The `from` URL: which requests this route is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromUrl {
    pub scheme: Scheme,
    /// Lowercase host; `*.example.com` for a one-label wildcard.
    pub host: String,
    /// `None` matches any port.
    pub port: Option<u16>,
}

impl std::fmt::Display for FromUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// How the (normalized) request path is matched.
#[derive(Debug, Clone)]
pub enum PathRule {
    Any,
    Exact(String),
    Prefix(String),
    /// Whole segments: the path equals it or continues with `/` (never
    /// ends with `/` itself; `/` alone is `Any`).
    Segments(String),
    /// `re` is `source` anchored at both ends; `source` is what the user wrote.
    Regex {
        re: Regex,
        source: String,
    },
}

impl PathRule {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Any => true,
            PathRule::Exact(p) => path == p,
            PathRule::Prefix(p) => path.starts_with(p.as_str()),
            PathRule::Segments(p) => {
                path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathRule::Regex { re, .. } => re.is_match(path),
        }
    }
}

impl std::fmt::Display for PathRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathRule::Any => f.write_str("/*"),
            PathRule::Exact(p) => f.write_str(p),
            PathRule::Prefix(p) => write!(f, "{p}*"),
            PathRule::Segments(p) => write!(f, "{p}[/*]"),
            PathRule::Regex { source, .. } => write!(f, "~{source}"),
        }
    }
}

/// What the route does with a request that passed policy.
#[derive(Debug)]
pub enum Action {
    Forward(Upstreams),
    Respond(DirectResponse),
}

/// What `Host` the upstream sees.
#[derive(Debug, Clone)]
pub enum HostHeader {
    /// The upstream URL's authority (Pomerium's default).
    Upstream,
    /// The client's `Host`.
    Preserve,
    Rewrite(HeaderValue),
}

/// One upstream URL of a route.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix from the `to` URL, without a trailing `/` (often empty).
    pub base_path: String,
    pub weight: u32,
    /// `scheme://authority/base_path`, formatted once: every access-log
    /// line names the upstream.
    pub label: Arc<str>,
    /// `authority` as the `Host` header value the upstream gets by default.
    pub host_value: HeaderValue,
}

impl Upstream {
    pub fn new(scheme: Scheme, authority: Authority, base_path: String, weight: u32) -> Self {
        let label = format!("{scheme}://{authority}{base_path}").into();
        let host_value = HeaderValue::from_str(authority.as_str()).expect("a parsed authority is a valid header value");
        Upstream { scheme, authority, base_path, weight, label, host_value }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// How https upstreams of a route are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub skip_verify: bool,
    /// Extra trust anchors (`tls_custom_ca`); `None` uses the system roots.
    pub custom_ca: Option<Arc<[CertificateDer<'static>]>>,
}

/// A route's upstreams, picked by smooth weighted round robin.
#[derive(Debug)]
pub struct Upstreams {
    pub targets: Vec<Upstream>,
    pub tls: UpstreamTls,
    /// Indices into `targets`, interleaved by weight (nginx's smooth WRR).
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl Upstreams {
    pub fn new(targets: Vec<Upstream>, tls: UpstreamTls) -> Self {
        let schedule = smooth_schedule(&targets.iter().map(|t| t.weight).collect::<Vec<_>>());
        Upstreams { targets, tls, schedule, cursor: AtomicUsize::new(0) }
    }

    /// The upstreams to try for one request: the scheduled one first, then
    /// every other one once, for retry on connect failure.
    pub fn attempt_order(&self) -> impl Iterator<Item = &Upstream> {
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        let first = self.schedule[turn % self.schedule.len()];
        let n = self.targets.len();
        (0..n).map(move |i| &self.targets[(first + i) % n])
    }
}

/// Expands weights into one cycle of smooth weighted round robin, so a 3:1
/// split sends `a a b a`, not `a a a b`.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let Some((best, _)) = current.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))) else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[1]), vec![0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        let s = smooth_schedule(&[5, 2, 1]);
        assert_eq!(s.len(), 8);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
    }
}
