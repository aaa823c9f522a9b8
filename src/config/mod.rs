//! Configuration: reading the file into [`Settings`] and [`RouteSpec`]s.
//!
//! Loading never stops at the first mistake: every unknown key, bad value and
//! unreadable file is collected as a [`Problem`] that names the file, line,
//! column and key path. A bad route is left out and reported; bad global
//! settings make the whole file unusable ([`Error::Invalid`]).

mod cookie_prefix;
pub(crate) mod limits;
mod raw;
pub mod reload;
mod size;
mod spec;
mod yaml;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use limits::Limits;
pub(crate) use raw::parse_duration;
use raw::{KeyScope, RawRoute, RawSettings};

use crate::suggest::closest;

pub use crate::cors::CorsSpec;
pub use cookie_prefix::CookiePrefix;
pub use spec::{
    AuthSettings, CertifiedKey, CookieSettings, DirectResponse, IdpSettings, KubernetesSettings, Origin, Problem,
    Publish, RouteSpec, SameSite, Secret, Settings,
};
pub use yaml::{SourceMap, to_yaml};

/// A YAML (or JSON) value from a string, as annotations carry maps and lists.
pub fn parse_yaml_value(text: &str) -> Result<Value, String> {
    yaml::parse(text).map(|(v, _)| v).map_err(|e| format!("line {}: {}", e.line, e.message))
}

/// Why a config file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{}:{}: YAML syntax error: {}", .source.line, .source.column, .source.message)]
    Syntax {
        file: String,
        #[source]
        source: yaml::SyntaxError,
    },
    #[error("{file}: the top level must be a mapping of settings, found {found}")]
    NotAMapping { file: String, found: &'static str },
    /// Global settings are wrong; the problems include any route problems
    /// found while loading. `routes` are the routes that did load, so a
    /// checker can compile them and report their problems too.
    #[error("{} problem(s) in the config", .problems.len())]
    Invalid { problems: Vec<Problem>, routes: Vec<RouteSpec> },
}

/// A loaded config file. `problems` lists routes that were left out.
#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub routes: Vec<RouteSpec>,
    pub problems: Vec<Problem>,
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { file: file.clone(), source })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&file, &text, &base)
}

/// Parses config text; relative file names inside resolve against `base`.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, Error> {
    let (mut root, source) = yaml::parse(text).map_err(|source| Error::Syntax { file: file.to_string(), source })?;
    let found = raw::kind(&root);
    let Value::Object(top) = &mut root else {
        return Err(Error::NotAMapping { file: file.to_string(), found });
    };
    let loader =
        Loader { base: base.to_path_buf(), source: Source::File { file: Arc::from(file), map: Arc::new(source) } };
    let origin = loader.origin(String::new());

    let mut problems = Vec::new();
    loader.drop_unknown_keys(top, "", KeyScope::Settings, &mut problems);
    let route_values = match top.remove("routes") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => {
            problems.push(Problem::new(
                &origin,
                Some("routes"),
                format!("expected a list of routes, found {}", raw::kind(&other)),
            ));
            Vec::new()
        }
    };
    let settings = loader.settings(root, &origin, &mut problems);
    let settings_ok = problems.is_empty();

    let mut routes = Vec::with_capacity(route_values.len());
    for (index, value) in route_values.into_iter().enumerate() {
        if let Some(spec) = loader.route(index, value, &mut problems) {
            routes.push(spec);
        }
    }
    match settings {
        Some(settings) if settings_ok => Ok(Config { settings, routes, problems }),
        _ => Err(Error::Invalid { problems, routes }),
    }
}

/// Checks one route given as route keys (the file format's snake_case
/// keys, as a JSON object) from a source other than the file: a Kubernetes
/// object's annotations or spec. Every problem names `origin` and the key;
/// `None` when there is any.
pub fn route_from_keys(
    origin: &Origin,
    keys: serde_json::Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<RouteSpec> {
    let loader = Loader { base: PathBuf::new(), source: Source::Object(origin.clone()) };
    loader.route_at("", Value::Object(keys), problems)
}

/// The route keys a user may write (for "did you mean" in other sources).
pub fn route_keys() -> &'static [&'static str] {
    raw::known_keys(KeyScope::Route)
}

struct Loader {
    base: PathBuf,
    source: Source,
}

/// Where the values being loaded come from.
enum Source {
    /// A config file: problems name the key path (`routes[2].to`) and its
    /// line; relative file names resolve against `base`.
    File { file: Arc<str>, map: Arc<SourceMap> },
    /// A Kubernetes object: problems name the object and the field; keys
    /// that read files from the proxy's disk (`*_file`) are refused.
    Object(Origin),
}

impl Loader {
    fn origin(&self, path: String) -> Origin {
        match &self.source {
            Source::File { file, map } => Origin::File { file: file.clone(), path, source: map.clone() },
            Source::Object(origin) => origin.clone(),
        }
    }

    /// A problem at key path `path` (relative to the file's top level, or
    /// to the object's route keys), field `field` inside it.
    fn problem(&self, path: &str, field: Option<&str>, message: impl Into<String>) -> Problem {
        match &self.source {
            Source::File { .. } => Problem::new(&self.origin(path.to_string()), field, message),
            Source::Object(origin) => {
                let full = match (path, field) {
                    ("", f) => f.map(str::to_string),
                    (p, None) => Some(p.to_string()),
                    (p, Some(f)) if f.starts_with('[') => Some(format!("{p}{f}")),
                    (p, Some(f)) => Some(format!("{p}.{f}")),
                };
                Problem::new(origin, full.as_deref(), message)
            }
        }
    }

    /// Reports every key `scope` does not know (with the closest known key)
    /// and removes it, so serde only reports type errors afterwards.
    fn drop_unknown_keys(
        &self,
        object: &mut serde_json::Map<String, Value>,
        path: &str,
        scope: KeyScope,
        problems: &mut Vec<Problem>,
    ) {
        let known = raw::known_keys(scope);
        let unknown: Vec<String> = object.keys().filter(|k| !known.contains(&k.as_str())).cloned().collect();
        for key in unknown {
            object.remove(&key);
            let mut message = format!("unknown key `{key}`");
            if let Some(best) = closest(&key, known) {
                message.push_str(&format!("; did you mean `{best}`?"));
            }
            problems.push(self.problem(path, Some(&key), message));
        }
        let nested: &[(&str, KeyScope)] = match scope {
            KeyScope::Settings => &[("certificates", KeyScope::Certificate), ("kubernetes", KeyScope::Kubernetes)],
            KeyScope::Kubernetes => &[("route_defaults", KeyScope::Route)],
            KeyScope::Route => &[("response", KeyScope::Response), ("cors", KeyScope::Cors)],
            _ => &[],
        };
        for (key, inner) in nested {
            let child = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
            match object.get_mut(*key) {
                Some(Value::Object(o)) => self.drop_unknown_keys(o, &child, *inner, problems),
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let Value::Object(o) = item {
                            self.drop_unknown_keys(o, &format!("{child}[{i}]"), *inner, problems);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// serde with the key path of the first error; `path` prefixes it.
    fn deserialize<T: DeserializeOwned>(&self, value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(err) => {
                let inner = err.path().to_string();
                let field = if inner == "." { None } else { Some(inner) };
                let message = err.into_inner().to_string();
                problems.push(self.problem(path, field.as_deref(), tidy_serde_message(&message)));
                None
            }
        }
    }

    fn settings(&self, root: Value, origin: &Origin, problems: &mut Vec<Problem>) -> Option<Settings> {
        let raw: RawSettings = self.deserialize(root, "", problems)?;
        let mut settings = Settings::default();
        let mut bad = |field: &str, message: String| problems.push(Problem::new(origin, Some(field), message));
        if let Some(a) = &raw.address {
            match parse_listen_address(a) {
                Ok(addr) => settings.address = addr,
                Err(e) => bad("address", e),
            }
        }
        for (field, value, slot) in [
            ("http_redirect_addr", &raw.http_redirect_addr, &mut settings.http_redirect_addr),
            ("metrics_address", &raw.metrics_address, &mut settings.metrics_address),
        ] {
            if let Some(a) = value {
                match parse_listen_address(a) {
                    Ok(addr) => *slot = Some(addr),
                    Err(e) => bad(field, e),
                }
            }
        }
        settings.insecure_server = raw.insecure_server;
        if let Some(t) = raw.default_upstream_timeout {
            settings.default_upstream_timeout = t;
        }
        settings.limits = limits::from_raw(&raw, &mut bad);
        for (i, cidr) in raw.trusted_proxies.iter().enumerate() {
            match parse_cidr(cidr) {
                Ok(net) => settings.trusted_proxies.push(net),
                Err(e) => bad(&format!("trusted_proxies[{i}]"), e),
            }
        }
        match (&raw.certificate_file, &raw.certificate_key_file) {
            (Some(cert), Some(key)) => match self.certified_key(cert, key) {
                Ok(ck) => settings.certificates.push(ck),
                Err((which, e)) => bad(if which == 0 { "certificate_file" } else { "certificate_key_file" }, e),
            },
            (Some(_), None) => bad("certificate_file", "is set but certificate_key_file is not".into()),
            (None, Some(_)) => bad("certificate_key_file", "is set but certificate_file is not".into()),
            (None, None) => {}
        }
        for (i, c) in raw.certificates.iter().enumerate() {
            let cert = c.cert_file.as_ref().or(c.cert.as_ref());
            let key = c.key_file.as_ref().or(c.key.as_ref());
            match (cert, key) {
                (Some(cert), Some(key)) => match self.certified_key(cert, key) {
                    Ok(ck) => settings.certificates.push(ck),
                    Err((which, e)) => {
                        bad(&format!("certificates[{i}].{}", if which == 0 { "cert" } else { "key" }), e)
                    }
                },
                _ => bad(&format!("certificates[{i}]"), "needs both `cert` and `key` (file paths or PEM)".into()),
            }
        }
        settings.auth = self.auth_settings(&raw, &mut bad);
        if let Some(k) = raw.kubernetes {
            let (kubernetes, defaults_problems) = self.kubernetes_settings(k, &settings.auth.cookie, &mut bad);
            settings.kubernetes = kubernetes;
            problems.extend(defaults_problems);
        }
        Some(settings)
    }

    /// Sign-in settings. Secrets may come inline or from `*_file` keys.
    fn auth_settings(&self, raw: &RawSettings, bad: &mut impl FnMut(&str, String)) -> AuthSettings {
        let mut auth = AuthSettings::default();
        if let Some(url) = &raw.authenticate_service_url {
            match absolute_https_origin(url) {
                Ok(u) => auth.authenticate_service_url = Some(u),
                Err(e) => bad("authenticate_service_url", e),
            }
        }
        let client_secret =
            self.secret_value("idp_client_secret", &raw.idp_client_secret, &raw.idp_client_secret_file, bad);
        match (&raw.idp_provider_url, &raw.idp_client_id) {
            (Some(url), Some(id)) => {
                if let Some(p) = &raw.idp_provider
                    && p != "oidc"
                {
                    bad("idp_provider", format!("{p:?} is not supported; use `oidc` (any OpenID Connect provider)"));
                }
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    bad("idp_provider_url", format!("{url:?} is not an http or https URL"));
                }
                match client_secret {
                    Some(secret) => {
                        auth.idp = Some(IdpSettings {
                            provider_url: url.trim_end_matches('/').to_string(),
                            client_id: id.clone(),
                            client_secret: Secret(secret.into_bytes()),
                            scopes: raw
                                .idp_scopes
                                .clone()
                                .unwrap_or_else(|| ["openid", "profile", "email"].map(String::from).to_vec()),
                        });
                        if auth.authenticate_service_url.is_none() {
                            bad(
                                "authenticate_service_url",
                                "is required when an identity provider is configured".into(),
                            );
                        }
                    }
                    None => {
                        bad("idp_client_secret", "is required with idp_client_id (or idp_client_secret_file)".into())
                    }
                }
            }
            (Some(_), None) => bad("idp_client_id", "is required with idp_provider_url".into()),
            (None, Some(_)) => bad("idp_provider_url", "is required with idp_client_id".into()),
            (None, None) => {}
        }
        if let Some(name) = &raw.cookie_name {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                bad("cookie_name", format!("{name:?} is not a valid cookie name"));
            } else {
                auth.cookie.name = name.clone();
            }
        }
        auth.cookie.domain = raw.cookie_domain.clone();
        if let Some(h) = raw.cookie_http_only {
            auth.cookie.http_only = h;
        }
        if let Some(s) = &raw.cookie_same_site {
            match s.to_ascii_lowercase().as_str() {
                "lax" => auth.cookie.same_site = SameSite::Lax,
                "strict" => auth.cookie.same_site = SameSite::Strict,
                "none" => auth.cookie.same_site = SameSite::None,
                _ => bad("cookie_same_site", format!("{s:?} must be lax, strict or none")),
            }
        }
        if let Some(e) = raw.cookie_expire {
            auth.cookie.expire = e;
        }
        if let Some(secret) = self.secret_value("cookie_secret", &raw.cookie_secret, &raw.cookie_secret_file, bad) {
            use base64::Engine as _;
            let trimmed = secret.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed));
            match decoded {
                Ok(bytes) if bytes.len() == 32 => auth.cookie_secret = Some(Secret(bytes)),
                Ok(bytes) => bad(
                    "cookie_secret",
                    format!(
                        "must be 32 random bytes, base64-encoded (this is {} bytes); try `head -c32 /dev/urandom | base64`",
                        bytes.len()
                    ),
                ),
                Err(_) => bad("cookie_secret", "is not base64; try `head -c32 /dev/urandom | base64`".into()),
            }
        }
        if let Some(pem) = self.secret_value("signing_key", &raw.signing_key, &raw.signing_key_file, bad) {
            match signing_key_pkcs8(&pem) {
                Some(pkcs8) => auth.signing_key = Some(Secret(pkcs8.into_bytes())),
                None => bad("signing_key", NOT_A_SIGNING_KEY.into()),
            }
        }
        auth.previous_signing_keys = self.previous_signing_keys(raw, auth.signing_key.as_ref(), bad);
        if let Some(prefix) = CookiePrefix::of(&auth.cookie.name) {
            let name = &auth.cookie.name;
            if raw.insecure_server {
                bad("cookie_name", prefix.secure_refused(name));
            }
            if prefix.forbids_domain() && auth.cookie.domain.is_some() {
                bad("cookie_domain", prefix.domain_refused(name));
            }
            if prefix.needs_http_only() && !auth.cookie.http_only {
                bad("cookie_http_only", prefix.http_only_refused(name));
            }
        }
        auth
    }

    /// `kubernetes:`. `route_defaults` is checked as route keys (with
    /// positions), and against the session cookie's name prefix (a default
    /// every cluster route would fail on); its problems are returned apart.
    fn kubernetes_settings(
        &self,
        raw: raw::RawKubernetes,
        cookie: &CookieSettings,
        bad: &mut impl FnMut(&str, String),
    ) -> (KubernetesSettings, Vec<Problem>) {
        let mut k = KubernetesSettings { enabled: raw.enabled, namespaces: raw.namespaces, ..Default::default() };
        for (field, value, slot) in [
            ("kubernetes.ingress_class", raw.ingress_class, &mut k.ingress_class),
            ("kubernetes.controller_name", raw.controller_name, &mut k.controller_name),
        ] {
            match value {
                Some(v) if v.trim().is_empty() => bad(field, "must not be empty".into()),
                Some(v) => *slot = v,
                None => {}
            }
        }
        for (i, ns) in k.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                bad(&format!("kubernetes.namespaces[{i}]"), format!("{ns:?} is not a namespace name"));
            }
        }
        k.publish = match (raw.publish_address, raw.publish_service) {
            (Some(_), Some(_)) => {
                bad("kubernetes.publish_service", "set either publish_address or publish_service, not both".into());
                None
            }
            (Some(a), None) if a.trim().is_empty() => {
                bad("kubernetes.publish_address", "must not be empty".into());
                None
            }
            (Some(a), None) => Some(Publish::Address(a)),
            (None, Some(s)) => match s.split_once('/') {
                Some((ns, name)) if is_dns_label(ns) && is_dns_label(name) => {
                    Some(Publish::Service { namespace: ns.to_string(), name: name.to_string() })
                }
                _ => {
                    bad("kubernetes.publish_service", format!("{s:?} must be namespace/name of a Service"));
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(l) = raw.leader_election {
            k.leader_election = l;
        }
        let mut problems = Vec::new();
        if let Some(defaults) = raw.route_defaults {
            let path = "kubernetes.route_defaults";
            for key in defaults.keys().filter(|key| PER_OBJECT_KEYS.contains(&key.as_str())) {
                problems.push(self.problem(path, Some(key), "is set by each object, not as a default"));
            }
            if let Some(prefix) = CookiePrefix::of(&cookie.name) {
                if prefix.forbids_domain() && defaults.get("cookie_domain").is_some_and(|v| !v.is_null()) {
                    problems.push(self.problem(path, Some("cookie_domain"), prefix.domain_refused(&cookie.name)));
                }
                if prefix.needs_http_only() && defaults.get("cookie_http_only") == Some(&Value::Bool(false)) {
                    problems.push(self.problem(path, Some("cookie_http_only"), prefix.http_only_refused(&cookie.name)));
                }
            }
            let mut probe = defaults.clone();
            probe.insert("from".into(), Value::String("https://route-defaults.invalid".into()));
            if problems.is_empty() && self.route_at(path, Value::Object(probe), &mut problems).is_some() {
                k.route_defaults = defaults;
            }
        }
        (k, problems)
    }

    /// `previous_signing_keys` (each entry as `signing_key` takes it) or
    /// `previous_signing_keys_file` (a file per key), not both. Problems
    /// name the entry by its index. A key equal to `current` or to an
    /// earlier entry is refused: the list is of keys that do not sign now,
    /// and a repeated entry is most likely a key pasted in place of
    /// another one.
    fn previous_signing_keys(
        &self,
        raw: &RawSettings,
        current: Option<&Secret>,
        bad: &mut impl FnMut(&str, String),
    ) -> Vec<Secret> {
        let (key, texts): (&str, Vec<Option<String>>) =
            match (raw.previous_signing_keys.is_empty(), raw.previous_signing_keys_file.is_empty()) {
                (true, true) => return Vec::new(),
                (false, false) => {
                    bad(
                        "previous_signing_keys_file",
                        "set either previous_signing_keys or previous_signing_keys_file, not both".into(),
                    );
                    return Vec::new();
                }
                (false, true) => {
                    ("previous_signing_keys", raw.previous_signing_keys.iter().cloned().map(Some).collect())
                }
                (true, false) => {
                    let read = |(i, file): (usize, &String)| {
                        let path = self.base.join(file);
                        std::fs::read_to_string(&path)
                            .map(|text| text.trim_end().to_string())
                            .map_err(|e| {
                                bad(
                                    &format!("previous_signing_keys_file[{i}]"),
                                    format!("cannot read {}: {e}", path.display()),
                                )
                            })
                            .ok()
                    };
                    (
                        "previous_signing_keys_file",
                        raw.previous_signing_keys_file.iter().enumerate().map(read).collect(),
                    )
                }
            };
        if raw.signing_key.is_none() && raw.signing_key_file.is_none() {
            bad(
                key,
                "is set but signing_key is not: previous keys are published next to the key that signs; \
                 set signing_key (or signing_key_file)"
                    .into(),
            );
            return Vec::new();
        }
        let current = current.and_then(|k| ec_public_key(&k.0));
        let mut seen: Vec<(String, p256::PublicKey)> = Vec::new();
        let mut keys = Vec::with_capacity(texts.len());
        for (i, text) in texts.into_iter().enumerate() {
            let field = format!("{key}[{i}]");
            // An unreadable file was reported when it was read.
            let Some(text) = text else { continue };
            let Some((pkcs8, public)) =
                signing_key_pkcs8(&text).and_then(|p| ec_public_key(p.as_bytes()).map(|k| (p, k)))
            else {
                bad(&field, NOT_A_SIGNING_KEY.into());
                continue;
            };
            if current == Some(public) {
                bad(
                    &field,
                    "is the same key as signing_key; list the keys that signed before it (or will sign after it), \
                     not the one that signs now"
                        .into(),
                );
            } else if let Some((other, _)) = seen.iter().find(|(_, k)| *k == public) {
                bad(&field, format!("is the same key as {other}"));
            } else {
                seen.push((field, public));
                keys.push(Secret(pkcs8.into_bytes()));
            }
        }
        keys
    }

    /// A secret given inline (`key`) or in a file (`key_file`), not both.
    fn secret_value(
        &self,
        key: &str,
        inline: &Option<String>,
        file: &Option<String>,
        bad: &mut impl FnMut(&str, String),
    ) -> Option<String> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                bad(&format!("{key}_file"), format!("set either {key} or {key}_file, not both"));
                None
            }
            (Some(v), None) => Some(v.clone()),
            (None, Some(f)) => {
                let path = self.base.join(f);
                match std::fs::read_to_string(&path) {
                    Ok(v) => Some(v.trim_end().to_string()),
                    Err(e) => {
                        bad(&format!("{key}_file"), format!("cannot read {}: {e}", path.display()));
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    /// Reads a certificate chain and key; the error says which of the two failed.
    fn certified_key(&self, cert: &str, key: &str) -> Result<CertifiedKey, (u8, String)> {
        let cert_pem = self.pem_or_file(cert).map_err(|e| (0, e))?;
        let key_pem = self.pem_or_file(key).map_err(|e| (1, e))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| (0, format!("{cert:?} is not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err((0, format!("{cert:?} holds no PEM certificate")));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| (1, format!("{key:?} holds no usable PEM private key: {e}")))?;
        Ok(CertifiedKey { chain, key: key_der, origin: cert.to_string() })
    }

    /// Inline PEM stays as it is; anything else is a file name.
    fn pem_or_file(&self, value: &str) -> Result<String, String> {
        if value.contains("-----BEGIN") {
            return Ok(value.to_string());
        }
        let path = self.base.join(value);
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    fn route(&self, index: usize, value: Value, problems: &mut Vec<Problem>) -> Option<RouteSpec> {
        self.route_at(&format!("routes[{index}]"), value, problems)
    }

    /// One route's keys at key path `path` (empty for an object's route).
    fn route_at(&self, path: &str, value: Value, problems: &mut Vec<Problem>) -> Option<RouteSpec> {
        let origin = self.origin(path.to_string());
        let mut value = value;
        let Value::Object(object) = &mut value else {
            problems.push(self.problem(path, None, format!("a route must be a mapping, found {}", raw::kind(&value))));
            return None;
        };
        let before = problems.len();
        self.drop_unknown_keys(object, path, KeyScope::Route, problems);
        let raw: RawRoute = self.deserialize(value, path, problems)?;
        if problems.len() > before {
            return None;
        }
        let tls_custom_ca = match (raw.tls_custom_ca, raw.tls_custom_ca_file) {
            (Some(_), Some(_)) => {
                problems.push(self.problem(
                    path,
                    Some("tls_custom_ca_file"),
                    "set either tls_custom_ca or tls_custom_ca_file, not both",
                ));
                return None;
            }
            (Some(pem), None) => Some(pem),
            (None, Some(_)) if matches!(self.source, Source::Object(_)) => {
                problems.push(self.problem(
                    path,
                    Some("tls_custom_ca_file"),
                    "cannot read files from the proxy's disk; give the PEM in tls_custom_ca",
                ));
                return None;
            }
            (None, Some(file)) => match self.pem_or_file(&file) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    problems.push(self.problem(path, Some("tls_custom_ca_file"), e));
                    return None;
                }
            },
            (None, None) => None,
        };
        let Some(from) = raw.from else {
            problems.push(self.problem(path, None, "route has no `from`"));
            return None;
        };
        Some(RouteSpec {
            origin,
            from,
            to: raw.to,
            response: raw.response.map(|r| DirectResponse {
                status: r.status,
                body: r.body,
                content_type: r.content_type.unwrap_or_else(|| "text/plain; charset=utf-8".to_string()),
            }),
            prefix: raw.prefix,
            path: raw.path,
            regex: raw.regex,
            segment_prefix: None,
            prefix_rewrite: raw.prefix_rewrite,
            preserve_host_header: raw.preserve_host_header,
            host_rewrite: raw.host_rewrite,
            set_request_headers: raw.set_request_headers,
            remove_request_headers: raw.remove_request_headers,
            set_response_headers: raw.set_response_headers,
            timeout: raw.timeout,
            idle_timeout: raw.idle_timeout,
            allow_websockets: raw.allow_websockets,
            max_request_body: raw.max_request_body,
            tls_skip_verify: raw.tls_skip_verify,
            tls_custom_ca,
            allow_public_unauthenticated_access: raw.allow_public_unauthenticated_access,
            allow_any_authenticated_user: raw.allow_any_authenticated_user,
            allowed_users: raw.allowed_users,
            allowed_domains: raw.allowed_domains,
            policy: raw.policy,
            pass_identity_headers: raw.pass_identity_headers,
            cookie_domain: raw.cookie_domain,
            cookie_http_only: raw.cookie_http_only,
            cors_allow_preflight: raw.cors_allow_preflight,
            cors: raw.cors.map(|c| {
                Box::new(CorsSpec {
                    allow_origins: c.allow_origins,
                    allow_methods: c.allow_methods,
                    allow_headers: c.allow_headers,
                    expose_headers: c.expose_headers,
                    allow_credentials: c.allow_credentials,
                    max_age: c.max_age.map(|d| d.as_secs()),
                })
            }),
        })
    }
}

/// Route keys that say which requests a route takes and where they go:
/// each cluster object sets its own, so they cannot be defaults.
const PER_OBJECT_KEYS: &[&str] = &["from", "to", "response", "prefix", "path", "regex"];

/// A Kubernetes object name part: a DNS-1123 label.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `:443`, `0.0.0.0:443`, `[::1]:8443`, `localhost:8080`.
pub(crate) fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let candidate = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    if let Ok(addr) = candidate.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match candidate.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(_) => Err(format!("{text:?} is not a listen address (use host:port or :port)")),
    }
}

/// `https://host[:port]` with nothing after it (a trailing `/` is dropped).
fn absolute_https_origin(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(a))
            if !a.as_str().contains('@') && (uri.path() == "/" || uri.path().is_empty()) =>
        {
            Ok(trimmed.to_ascii_lowercase())
        }
        _ => Err(format!("{text:?} must be an https URL with a host and no path")),
    }
}

/// A CIDR, or a single address meaning just that host.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))
}

/// serde_json's messages mention Rust types; say what the user wrote instead.
fn tidy_serde_message(message: &str) -> String {
    message
        .replace("invalid type: ", "")
        .replace("expected u16", "expected a number from 0 to 65535")
        .replace("expected a boolean", "expected true or false")
        .replace("expected a sequence", "expected a list")
}

#[cfg(test)]
mod tests;

/// What `signing_key` and each previous key must be.
const NOT_A_SIGNING_KEY: &str =
    "is not an EC P-256 private key in PEM form (PKCS#8 `BEGIN PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)";

/// A signing key as the config gives it (PEM, or PEM base64-encoded as
/// Pomerium accepts it) as PKCS#8 PEM; `None` if it is not an EC P-256
/// private key.
fn signing_key_pkcs8(text: &str) -> Option<String> {
    if text.contains("-----BEGIN") {
        return ec_key_as_pkcs8(text);
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    ec_key_as_pkcs8(&String::from_utf8(decoded).ok()?)
}

/// The public key of an EC P-256 private key in PKCS#8 PEM (to tell two
/// keys apart whatever form each was written in).
fn ec_public_key(pkcs8: &[u8]) -> Option<p256::PublicKey> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = std::str::from_utf8(pkcs8).ok()?;
    Some(p256::SecretKey::from_pkcs8_pem(pem).ok()?.public_key())
}

/// An EC P-256 private key in PEM as PKCS#8 PEM, the form the signing code
/// takes; `None` if it is not one. SEC1 (`BEGIN EC PRIVATE KEY`) is what
/// `openssl ecparam -genkey`, Pomerium's docs and Helm's `genPrivateKey
/// "ecdsa"` write, so it is converted here, once.
fn ec_key_as_pkcs8(pem: &str) -> Option<String> {
    use p256::pkcs8::EncodePrivateKey;
    let pkcs8 = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(pem).ok()?.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).ok()?.to_string()
    } else {
        pem.to_string()
    };
    jsonwebtoken::EncodingKey::from_ec_pem(pkcs8.as_bytes()).ok()?;
    Some(pkcs8)
}
