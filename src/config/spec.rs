//! The typed model every source (file, Kubernetes) produces.
//!
//! Values here are checked for *shape* (a duration parses, a file could be
//! read); whether a route makes sense as a whole is decided by
//! `RouteTable::compile`, which turns each [`RouteSpec`] into a runtime route
//! or a [`Problem`](super::Problem) naming its origin.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::yaml::SourceMap;

/// Global settings: everything in the config that is not a route.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the proxy listens (`:443` by default, as in Pomerium).
    pub address: SocketAddr,
    /// Plain HTTP listener that redirects everything to https.
    pub http_redirect_addr: Option<SocketAddr>,
    /// Serve plain HTTP on `address` (a TLS terminator sits in front).
    pub insecure_server: bool,
    /// Serving certificates, chosen by SNI. Empty: a generated self-signed one.
    pub certificates: Vec<CertifiedKey>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: Option<SocketAddr>,
    /// Upstream timeout for routes that do not set `timeout`.
    pub default_upstream_timeout: Duration,
    /// Request and connection limits.
    pub limits: super::Limits,
    /// Sign-in and sessions.
    pub auth: AuthSettings,
    /// The cluster as a source of routes, backends and certificates.
    pub kubernetes: KubernetesSettings,
}

/// `kubernetes:`: watch Ingress objects and Route resources.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSettings {
    pub enabled: bool,
    /// Ingresses of this class are ours (`postern`).
    pub ingress_class: String,
    /// The IngressClass `spec.controller` that names us.
    pub controller_name: String,
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// What `Ingress.status.loadBalancer` says.
    pub publish: Option<Publish>,
    pub leader_election: bool,
    /// Route keys (file format) applied to every cluster route that does not
    /// set them; already checked.
    pub route_defaults: serde_json::Map<String, serde_json::Value>,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            enabled: false,
            ingress_class: "postern".into(),
            controller_name: "postern.dev/ingress-controller".into(),
            namespaces: Vec::new(),
            publish: None,
            leader_election: true,
            route_defaults: serde_json::Map::new(),
        }
    }
}

/// The address written to `Ingress.status.loadBalancer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// An IP address or a host name.
    Address(String),
    /// A Service's load-balancer address (`namespace`, `name`).
    Service { namespace: String, name: String },
}

/// Sign-in (OpenID Connect) and session settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthSettings {
    /// The central authenticate host, e.g. `https://authenticate.example.com`.
    pub authenticate_service_url: Option<String>,
    pub idp: Option<IdpSettings>,
    pub cookie: CookieSettings,
    /// 32 bytes from `cookie_secret`; `None`: generate one at start-up.
    pub cookie_secret: Option<Secret>,
    /// EC P-256 private key (PKCS#8 PEM) for identity assertions; `None`:
    /// generate.
    pub signing_key: Option<Secret>,
    /// EC P-256 private keys (PKCS#8 PEM) that signed before `signing_key`
    /// (or will sign after it): their public keys are published in the
    /// JWKS next to its, so a rotation never leaves an upstream with an
    /// assertion it cannot verify. Never signed with. Checked: each differs
    /// from `signing_key` and from the others.
    pub previous_signing_keys: Vec<Secret>,
}

/// The OpenID provider Postern signs users in with.
#[derive(Debug, Clone, PartialEq)]
pub struct IdpSettings {
    pub provider_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
}

/// Session cookie attributes (routes may override domain and httpOnly).
#[derive(Debug, Clone, PartialEq)]
pub struct CookieSettings {
    pub name: String,
    pub domain: Option<String>,
    pub http_only: bool,
    pub same_site: SameSite,
    pub expire: Duration,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            name: "_postern".into(),
            domain: None,
            http_only: true,
            same_site: SameSite::Lax,
            expire: Duration::from_secs(14 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Secret bytes: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: SocketAddr::from(([0, 0, 0, 0], 443)),
            http_redirect_addr: None,
            insecure_server: false,
            certificates: Vec::new(),
            trusted_proxies: Vec::new(),
            metrics_address: None,
            default_upstream_timeout: Duration::from_secs(30),
            limits: super::Limits::default(),
            auth: AuthSettings::default(),
            kubernetes: KubernetesSettings::default(),
        }
    }
}

/// A certificate chain and its private key, already parsed from PEM.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where it came from, for logs (`certificates[1]`, a file name, a Secret).
    pub origin: String,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        CertifiedKey { chain: self.chain.clone(), key: self.key.clone_key(), origin: self.origin.clone() }
    }
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("origin", &self.origin)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One route, whatever its source. Field meanings follow Pomerium's route keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSpec {
    pub origin: Origin,
    pub from: String,
    /// Each entry is `URL` or `URL,weight`.
    pub to: Vec<String>,
    pub response: Option<DirectResponse>,
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub regex: Option<String>,
    /// Kubernetes' `Prefix` path type: whole path segments (`/foo` matches
    /// `/foo` and `/foo/bar`, not `/foobar`). Set by the cluster source
    /// only; the file format has no key for it.
    pub segment_prefix: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub preserve_host_header: bool,
    pub host_rewrite: Option<String>,
    pub set_request_headers: BTreeMap<String, String>,
    pub remove_request_headers: Vec<String>,
    pub set_response_headers: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub allow_websockets: bool,
    /// Largest request body in bytes (`Some(0)`: no limit; `None`: the
    /// `default_max_request_body` setting).
    pub max_request_body: Option<u64>,
    pub tls_skip_verify: bool,
    /// PEM bundle of CAs trusted for this route's https upstreams.
    pub tls_custom_ca: Option<String>,
    pub allow_public_unauthenticated_access: bool,
    pub allow_any_authenticated_user: bool,
    pub allowed_users: Vec<String>,
    pub allowed_domains: Vec<String>,
    /// Pomerium policy language, as parsed from the source.
    pub policy: Option<serde_json::Value>,
    pub pass_identity_headers: bool,
    /// Overrides `cookie_domain` for this route's host.
    pub cookie_domain: Option<String>,
    /// Overrides `cookie_http_only` for this route's host.
    pub cookie_http_only: Option<bool>,
    /// CORS preflights reach the upstream without a session.
    pub cors_allow_preflight: bool,
    /// Postern answers CORS for this route (boxed: most routes have none).
    pub cors: Option<Box<crate::cors::CorsSpec>>,
}

/// A response Postern gives itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// Where a route (or a setting) was defined, for every message about it.
#[derive(Clone, Default)]
pub enum Origin {
    /// A config file; `path` is the key path of the route (`routes[2]`).
    File { file: Arc<str>, path: String, source: Arc<SourceMap> },
    /// A Kubernetes object (`Ingress`, `Route`).
    Object { kind: &'static str, namespace: String, name: String },
    /// Built in code (tests, benchmarks).
    #[default]
    Inline,
}

impl Origin {
    /// Human-readable location of `field` under this origin:
    /// `config.yaml:14:5: routes[2].to` or `Route default/api: spec.to`.
    pub fn locate(&self, field: Option<&str>) -> String {
        match self {
            Origin::File { file, path, source } => {
                let full = match field {
                    Some(f) if path.is_empty() => f.to_string(),
                    Some(f) if f.starts_with('[') => format!("{path}{f}"),
                    Some(f) => format!("{path}.{f}"),
                    None => path.clone(),
                };
                match source.locate(&full) {
                    Some(p) if full.is_empty() => format!("{file}:{}:{}", p.line, p.column),
                    Some(p) => format!("{file}:{}:{}: {full}", p.line, p.column),
                    None if full.is_empty() => file.to_string(),
                    None => format!("{file}: {full}"),
                }
            }
            Origin::Object { kind, namespace, name } => match field {
                Some(f) => format!("{kind} {namespace}/{name}: {f}"),
                None => format!("{kind} {namespace}/{name}"),
            },
            Origin::Inline => field.unwrap_or("route").to_string(),
        }
    }
}

/// The same place: the same file and key path (whatever else the file
/// holds), or the same object.
impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Origin::File { file: f1, path: p1, .. }, Origin::File { file: f2, path: p2, .. }) => f1 == f2 && p1 == p2,
            (
                Origin::Object { kind: k1, namespace: n1, name: m1 },
                Origin::Object { kind: k2, namespace: n2, name: m2 },
            ) => k1 == k2 && n1 == n2 && m1 == m2,
            (Origin::Inline, Origin::Inline) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.locate(None))
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({self})")
    }
}

/// Something wrong with one part of the configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    pub origin: Origin,
    /// The key inside the origin (`to`, `to[1]`, `response.status`), if known.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(origin: &Origin, field: Option<&str>, message: impl Into<String>) -> Self {
        Problem { origin: origin.clone(), field: field.map(str::to_string), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin.locate(self.field.as_deref()), self.message)
    }
}
