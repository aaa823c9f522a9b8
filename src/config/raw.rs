//! The file format: serde types with Pomerium's snake_case keys.
//!
//! These types only describe the YAML; `super::load` checks them into
//! [`Settings`](super::Settings) and [`RouteSpec`](super::RouteSpec).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub address: Option<String>,
    pub http_redirect_addr: Option<String>,
    #[serde(default)]
    pub insecure_server: bool,
    pub certificate_file: Option<String>,
    pub certificate_key_file: Option<String>,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub metrics_address: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub default_upstream_timeout: Option<Duration>,
    /// Request and connection limits; see [`Limits`](super::Limits).
    #[serde(default, deserialize_with = "size")]
    pub max_uri_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub max_header_list_bytes: Option<u64>,
    pub max_header_count: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub keepalive_timeout: Option<Duration>,
    pub max_connections: Option<u64>,
    pub max_concurrent_streams: Option<u64>,
    pub max_pending_accept_reset_streams: Option<u64>,
    pub max_local_error_reset_streams: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub default_max_request_body: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    pub request_body_timeout: Option<Duration>,
    pub authenticate_service_url: Option<String>,
    pub idp_provider: Option<String>,
    pub idp_provider_url: Option<String>,
    pub idp_client_id: Option<String>,
    pub idp_client_secret: Option<String>,
    pub idp_client_secret_file: Option<String>,
    pub idp_scopes: Option<Vec<String>>,
    pub cookie_name: Option<String>,
    pub cookie_secret: Option<String>,
    pub cookie_secret_file: Option<String>,
    pub cookie_domain: Option<String>,
    pub cookie_http_only: Option<bool>,
    pub cookie_same_site: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub cookie_expire: Option<Duration>,
    pub signing_key: Option<String>,
    pub signing_key_file: Option<String>,
    /// Keys published in the JWKS but never signed with: each entry as
    /// `signing_key` takes it (PEM, or base64 of it), or a file name each.
    #[serde(default)]
    pub previous_signing_keys: Vec<String>,
    #[serde(default)]
    pub previous_signing_keys_file: Vec<String>,
    pub kubernetes: Option<RawKubernetes>,
    /// Declared so `routes` is a known key; `super::parse` takes the routes
    /// out first and checks them one at a time, so one bad route does not
    /// hide the others.
    #[serde(default)]
    #[allow(dead_code)]
    pub routes: Vec<serde::de::IgnoredAny>,
}

/// `kubernetes:`: the cluster as a second source of routes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    #[serde(default)]
    pub enabled: bool,
    pub ingress_class: Option<String>,
    pub controller_name: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    pub publish_address: Option<String>,
    pub publish_service: Option<String>,
    pub leader_election: Option<bool>,
    /// Route keys applied to every cluster route that does not set them;
    /// checked as route keys by `super::Loader`.
    pub route_defaults: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One entry of `certificates`: file paths, or inline PEM.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub from: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    pub response: Option<RawResponse>,
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub regex: Option<String>,
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub preserve_host_header: bool,
    pub host_rewrite: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub set_request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub set_response_headers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub allow_websockets: bool,
    /// Largest request body, in bytes or with a unit (`10MiB`); `0`: none.
    #[serde(default, deserialize_with = "size")]
    pub max_request_body: Option<u64>,
    #[serde(default)]
    pub tls_skip_verify: bool,
    pub tls_custom_ca: Option<String>,
    pub tls_custom_ca_file: Option<String>,
    #[serde(default)]
    pub allow_public_unauthenticated_access: bool,
    #[serde(default)]
    pub allow_any_authenticated_user: bool,
    #[serde(default)]
    pub allowed_users: Vec<String>,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Pomerium policy language; checked by `auth::policy` at compile time.
    pub policy: Option<serde_json::Value>,
    #[serde(default)]
    pub pass_identity_headers: bool,
    pub cookie_domain: Option<String>,
    pub cookie_http_only: Option<bool>,
    /// Let CORS preflights reach the upstream without a session (Pomerium's key).
    #[serde(default)]
    pub cors_allow_preflight: bool,
    /// Postern answers CORS itself.
    pub cors: Option<RawCors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// Seconds (`600`, as the header itself says it), or a duration such as `10m`.
    #[serde(default, deserialize_with = "seconds_or_duration")]
    pub max_age: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default, deserialize_with = "lenient_string")]
    pub body: String,
    pub content_type: Option<String>,
}

fn default_status() -> u16 {
    200
}

/// Known keys of each object in the file, by where it appears, for the
/// unknown-key check (which reports every unknown key, with a suggestion).
pub(super) fn known_keys(object: KeyScope) -> &'static [&'static str] {
    match object {
        KeyScope::Settings => field_names::<RawSettings>(),
        KeyScope::Route => field_names::<RawRoute>(),
        KeyScope::Response => field_names::<RawResponse>(),
        KeyScope::Certificate => field_names::<RawCertificate>(),
        KeyScope::Cors => field_names::<RawCors>(),
        KeyScope::Kubernetes => field_names::<RawKubernetes>(),
    }
}

#[derive(Clone, Copy)]
pub(super) enum KeyScope {
    Settings,
    Route,
    Response,
    Certificate,
    Cors,
    Kubernetes,
}

/// The field names serde knows for `T`, read from its derived `Deserialize`
/// so the list can never drift from the struct.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Go-style durations (`30s`, `1h30m`, `14h`, `500ms`); `0` disables.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Err(format!("invalid duration {text:?}: add a unit, e.g. {secs}s"));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e} (use e.g. 30s, 1h30m, 500ms)"))
}

fn seconds_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = lenient_string(d)?;
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Some(Duration::from_secs(secs))),
        Err(_) => parse_duration(&text).map(Some).map_err(de::Error::custom),
    }
}

/// A byte size: a number of bytes or a string with a unit (`64KiB`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = lenient_string(d)?;
    super::size::parse_size(&text).map(Some).map_err(de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = lenient_string(d)?;
    parse_duration(&text).map(Some).map_err(de::Error::custom)
}

/// Any scalar as a string, as Go's YAML decoder does for string fields:
/// `X-Count: 1` in a header map is the string `"1"`.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(de::Error::custom(format!("expected a string, found {}", kind(&other)))),
    }
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Lenient(#[serde(deserialize_with = "lenient_string")] String);
    let map: Option<BTreeMap<String, Lenient>> = Option::deserialize(d)?;
    Ok(map.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => match OneOrMany::deserialize(v) {
            Ok(OneOrMany::One(s)) => Ok(vec![s]),
            Ok(OneOrMany::Many(v)) => Ok(v),
            Err(_) => Err(de::Error::custom("expected a URL or a list of URLs")),
        },
    }
}

pub(super) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_the_struct() {
        let keys = known_keys(KeyScope::Route);
        assert!(keys.contains(&"allow_public_unauthenticated_access"));
        assert!(keys.contains(&"tls_custom_ca_file"));
        assert!(known_keys(KeyScope::Settings).contains(&"routes"));
    }

    #[test]
    fn durations_in_go_style() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("14h"), Ok(Duration::from_secs(14 * 3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
