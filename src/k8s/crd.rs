//! The `Route` custom resource (`postern.dev/v1alpha1`): every route field
//! of the file format, in camelCase. `postern crd` prints the CRD generated
//! from these types; `crds/routes.postern.dev.yaml` is that output.
//!
//! The schema rejects at `kubectl apply` time what it can (types, enums,
//! one-of rules in CEL); the controller checks the rest exactly as it checks
//! a file route and reports it in `status.conditions`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where requests for `from` (and the path rule) are sent, and who may send them.
// Clippy reads the printcolumn lists as repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "postern.dev",
    version = "v1alpha1",
    kind = "Route",
    namespaced,
    status = "RouteStatus",
    shortname = "proute",
    category = "postern",
    printcolumn(name = "From", type_ = "string", json_path = ".spec.from"),
    printcolumn(name = "To", type_ = "string", json_path = ".status.to"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("[has(self.prefix), has(self.path), has(self.regex)].filter(x, x).size() <= 1").message("set at most one of prefix, path and regex"))]
#[x_kube(validation = Rule::new("has(self.to) != has(self.response)").message("set exactly one of to and response"))]
#[x_kube(validation = Rule::new("!has(self.allowPublicUnauthenticatedAccess) || !self.allowPublicUnauthenticatedAccess || !(has(self.allowAnyAuthenticatedUser) || has(self.allowedUsers) || has(self.allowedDomains))").message("allowPublicUnauthenticatedAccess cannot be combined with allowAnyAuthenticatedUser, allowedUsers or allowedDomains"))]
#[serde(rename_all = "camelCase")]
pub struct RouteResourceSpec {
    /// `https://host` (or `http://host` for plain HTTP); `*.example.com` for a one-label wildcard.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("from must be an http:// or https:// URL"))]
    pub from: String,
    /// Upstreams: URLs, or Services in the Route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub to: Option<Vec<Target>>,
    /// Postern answers itself instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A regular expression the whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Pass the client's `Host` to the upstream (default true for Service
    /// upstreams, as ingress controllers do; false for URLs, as in Pomerium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_host_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_request_headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_request_headers: Option<Vec<String>>,
    /// Added to every response of the route, Postern's own errors included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_response_headers: Option<BTreeMap<String, String>>,
    /// Go-style duration to the upstream's response headers (`30s`); `0` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"))]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_websockets: Option<bool>,
    /// Largest request body: bytes (`1048576`) or with a unit (`10MiB`,
    /// `512k`); `0` lifts the `default_max_request_body` setting. Larger
    /// bodies are answered with 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// PEM bundle of CAs trusted for https upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_custom_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_unauthenticated_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_any_authenticated_user: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_users: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_domains: Option<Vec<String>>,
    /// Pomerium's policy language (`allow`/`deny` with `and`/`or`/`not`/`nor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub policy: Option<serde_json::Value>,
    /// Send `X-Postern-Jwt-Assertion` (and `X-Pomerium-Jwt-Assertion`) upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_identity_headers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_http_only: Option<bool>,
    /// CORS preflights reach the upstream without a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_allow_preflight: Option<bool>,
    /// Postern answers CORS for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// One upstream: a URL or a Service of the Route's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.url) != has(self.service)").message("set exactly one of url and service"))]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// `http://host:port`, `https://...` or `h2c://...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Relative share of requests (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<u32>,
}

/// A Service in the same namespace, by port number or port name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ServiceRef {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    pub port: IntOrString,
}

impl Default for ServiceRef {
    fn default() -> Self {
        ServiceRef { name: String::new(), port: IntOrString::Int(80) }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Exact origins, or one-label wildcards such as `https://*.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

/// What the controller made of the Route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid) and `Ready` (it is serving).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The upstreams it serves, for `kubectl get routes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Any JSON value (the policy language is a tree of maps and lists).
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// The CRD as YAML, as `postern crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    let crd = Route::crd();
    let json = serde_json::to_value(&crd).expect("a CRD serializes");
    let mut out = String::from("# Generated by `postern crd` from src/k8s/crd.rs; do not edit.\n");
    out.push_str(&crate::config::to_yaml(&json));
    out
}
