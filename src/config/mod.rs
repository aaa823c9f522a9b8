//! Configuration: reading the file into [`Settings`] and [`RouteSpec`]s.
//!
//! Loading never stops at the first mistake: every unknown key, bad value and
//! unreadable file is collected as a [`Problem`] that names the file, line,
//! column and key path. A bad route is left out and reported; bad global
//! settings make the whole file unusable ([`Error::Invalid`]).

mod raw;
pub mod reload;
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

pub(crate) use raw::parse_duration;
use raw::{KeyScope, RawRoute, RawSettings};
pub use spec::{CertifiedKey, DirectResponse, Origin, Problem, RouteSpec, Settings};
pub use yaml::SourceMap;

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
    let loader = Loader { base: base.to_path_buf(), file: Arc::from(file), source: Arc::new(source) };
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

struct Loader {
    base: PathBuf,
    file: Arc<str>,
    source: Arc<SourceMap>,
}

impl Loader {
    fn origin(&self, path: String) -> Origin {
        Origin::File { file: self.file.clone(), path, source: self.source.clone() }
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
            problems.push(Problem::new(&self.origin(path.to_string()), Some(&key), message));
        }
        let nested: &[(&str, KeyScope)] = match scope {
            KeyScope::Settings => &[("certificates", KeyScope::Certificate)],
            KeyScope::Route => &[("response", KeyScope::Response)],
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
                problems.push(Problem::new(
                    &self.origin(path.to_string()),
                    field.as_deref(),
                    tidy_serde_message(&message),
                ));
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
        Some(settings)
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
        let path = format!("routes[{index}]");
        let origin = self.origin(path.clone());
        let mut value = value;
        let Value::Object(object) = &mut value else {
            problems.push(Problem::new(
                &origin,
                None,
                format!("a route must be a mapping, found {}", raw::kind(&value)),
            ));
            return None;
        };
        let before = problems.len();
        self.drop_unknown_keys(object, &path, KeyScope::Route, problems);
        let raw: RawRoute = self.deserialize(value, &path, problems)?;
        if problems.len() > before {
            return None;
        }
        let tls_custom_ca = match (raw.tls_custom_ca, raw.tls_custom_ca_file) {
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    &origin,
                    Some("tls_custom_ca_file"),
                    "set either tls_custom_ca or tls_custom_ca_file, not both",
                ));
                return None;
            }
            (Some(pem), None) => Some(pem),
            (None, Some(file)) => match self.pem_or_file(&file) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    problems.push(Problem::new(&origin, Some("tls_custom_ca_file"), e));
                    return None;
                }
            },
            (None, None) => None,
        };
        let Some(from) = raw.from else {
            problems.push(Problem::new(&origin, None, "route has no `from`"));
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
            prefix_rewrite: raw.prefix_rewrite,
            preserve_host_header: raw.preserve_host_header,
            host_rewrite: raw.host_rewrite,
            set_request_headers: raw.set_request_headers,
            remove_request_headers: raw.remove_request_headers,
            set_response_headers: raw.set_response_headers,
            timeout: raw.timeout,
            idle_timeout: raw.idle_timeout,
            allow_websockets: raw.allow_websockets,
            tls_skip_verify: raw.tls_skip_verify,
            tls_custom_ca,
            allow_public_unauthenticated_access: raw.allow_public_unauthenticated_access,
        })
    }
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

/// A CIDR, or a single address meaning just that host.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))
}

/// The known key nearest to `key`, if it is plausibly a typo of it.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
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
