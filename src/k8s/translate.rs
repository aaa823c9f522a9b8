//! Objects → `RouteSpec`s: pure functions of an object, the cluster-wide
//! route defaults and a backend resolver. Every route goes through the
//! same checks as a file route (`config::route_from_keys`), so both
//! sources mean the same thing by every key.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Map, Value};

use super::annotations::{self, Annotated};
use super::crd::Route;
use crate::config::{self, Origin, Problem, RouteSpec};

/// A Service port as an Ingress or Route names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

impl From<&IntOrString> for PortRef {
    fn from(p: &IntOrString) -> Self {
        match p {
            IntOrString::Int(n) => PortRef::Number(*n),
            IntOrString::String(s) => PortRef::Name(s.clone()),
        }
    }
}

/// Turns a Service port into upstream URLs.
pub(crate) trait Resolve {
    /// `http://addr:port` for each ready endpoint (or the Service's cluster
    /// DNS name, when `dns` or when it has no EndpointSlices at all); an
    /// empty list when no endpoint is ready. `Err` names what is missing.
    fn service(&self, namespace: &str, name: &str, port: &PortRef, dns: bool) -> Result<Vec<String>, String>;
}

/// What one object translates to.
#[derive(Debug, Default)]
pub(crate) struct Translated {
    pub routes: Vec<Ranked>,
    pub problems: Vec<Problem>,
    /// ingress-nginx annotations that mean nothing here.
    pub ignored: Vec<String>,
    /// Services the routes resolve (`namespace`, `name`): a change to them
    /// or their EndpointSlices retranslates the object.
    pub services: Vec<(String, String)>,
    /// `spec.tls` of an Ingress: hosts and the Secret (same namespace).
    pub tls: Vec<(Vec<String>, String)>,
}

/// A route and its place among the routes of its host: exact paths, then
/// longer prefixes, then regexes, then the catch-all, then the older object.
#[derive(Debug, Clone)]
pub(crate) struct Ranked {
    /// Shared with the published list: an unchanged object hands over the
    /// same allocation, so the publisher can reuse its compiled route.
    pub spec: Arc<RouteSpec>,
    /// Lowercase host (and port) of `from`, the first sort key.
    pub host: String,
    /// The host the route table files it under ([`super::table_host`]).
    pub table_host: String,
    pub rank: (u8, std::cmp::Reverse<usize>),
}

impl Ranked {
    pub(crate) fn new(spec: RouteSpec) -> Self {
        let host = spec.from.split_once("://").map_or(spec.from.as_str(), |(_, h)| h).to_ascii_lowercase();
        Ranked { rank: rank(&spec), table_host: super::table_host(&host), host, spec: Arc::new(spec) }
    }
}

/// Same content (the allocation may differ).
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host && self.rank == other.rank && *self.spec == *other.spec
    }
}

fn rank(spec: &RouteSpec) -> (u8, std::cmp::Reverse<usize>) {
    use std::cmp::Reverse;
    match (&spec.path, &spec.prefix, &spec.regex) {
        (Some(p), _, _) => (0, Reverse(p.len())),
        (_, Some(p), _) => (1, Reverse(p.len())),
        (_, _, None) if spec.segment_prefix.is_some() => {
            (1, Reverse(spec.segment_prefix.as_ref().map_or(0, |p| p.trim_end_matches('/').len())))
        }
        (_, _, Some(_)) => (2, Reverse(0)),
        _ => (3, Reverse(0)),
    }
}

/// Policy keys: an object that sets any of them replaces the defaults'.
const POLICY_KEYS: &[&str] = &[
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "allowed_users",
    "allowed_domains",
    "policy",
];

/// `defaults` under `keys`: the object's keys win, and an object that says
/// anything about policy takes none of the defaults' policy.
fn with_defaults(defaults: &Map<String, Value>, keys: Map<String, Value>) -> Map<String, Value> {
    let object_policy = keys.keys().any(|k| POLICY_KEYS.contains(&k.as_str()));
    let mut merged: Map<String, Value> = defaults
        .iter()
        .filter(|(k, _)| !(object_policy && POLICY_KEYS.contains(&k.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merged.extend(keys);
    merged
}

/// The response of a route whose Services have no ready endpoint.
fn no_endpoints() -> Value {
    serde_json::json!({
        "status": 503,
        "body": "{\"error\":\"no_ready_endpoints\",\"message\":\"no ready endpoint for this route's backend\",\"status\":503}\n",
        "content_type": "application/json",
    })
}

// === Ingress ===

/// Whether `ing` is ours: its class, the legacy annotation, or no class and
/// our class is the cluster default.
pub(crate) fn ingress_is_ours(ing: &Ingress, class: &str, default_class: bool) -> bool {
    let spec_class = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ing.annotations().get("kubernetes.io/ingress.class").map(String::as_str);
    match spec_class.or(legacy) {
        Some(c) => c == class,
        None => default_class,
    }
}

/// Every host × path of an Ingress, and its default backend.
pub(crate) fn ingress(ing: &Ingress, defaults: &Map<String, Value>, resolve: &dyn Resolve) -> Translated {
    let namespace = ing.namespace().unwrap_or_default();
    let origin = Origin::Object { kind: "Ingress", namespace: namespace.clone(), name: ing.name_any() };
    let mut out = Translated::default();
    let Annotated { keys, service_dns, ignored } = annotations::read(&origin, ing.annotations(), &mut out.problems);
    out.ignored = ignored;
    let Some(spec) = &ing.spec else {
        out.problems.push(Problem::new(&origin, Some("spec"), "an Ingress needs a spec"));
        return out;
    };
    let mut tls_hosts: Vec<String> = Vec::new();
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let hosts: Vec<String> = tls.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()).collect();
        tls_hosts.extend(hosts.iter().cloned());
        match &tls.secret_name {
            Some(secret) => out.tls.push((hosts, secret.clone())),
            None => out.problems.push(Problem::new(
                &origin,
                Some(&format!("spec.tls[{i}].secretName")),
                "is required (Postern serves the default certificate for these hosts meanwhile)",
            )),
        }
    }
    // A host with a TLS entry is HTTPS only; one without is served on the
    // plain-HTTP listener too, as other ingress controllers do.
    let from = |host: Option<&str>| -> String {
        match host {
            Some(h) if tls_hosts.iter().any(|t| t == &h.to_ascii_lowercase()) => format!("https://{h}"),
            Some(h) => format!("http://{h}"),
            None if !tls_hosts.is_empty() => "https://*".to_string(),
            None => "http://*".to_string(),
        }
    };
    let mut routes: Vec<(String, Map<String, Value>)> = Vec::new();
    // Element-wise prefixes (by index into `routes`): no file key says
    // them, so they are set on the checked spec.
    let mut segments: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref();
        for (p, path) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let at = format!("spec.rules[{r}].http.paths[{p}]");
            let mut keys = keys.clone();
            keys.insert("from".into(), Value::String(from(host)));
            let raw_path = path.path.as_deref().unwrap_or("/");
            match path.path_type.as_str() {
                "Exact" => {
                    keys.insert("path".into(), Value::String(raw_path.to_string()));
                }
                // Element-wise, as Kubernetes defines Prefix: `/foo` matches
                // `/foo` and `/foo/bar`, not `/foobar`; a trailing `/` is ignored.
                "Prefix" => {
                    if raw_path.trim_end_matches('/').is_empty() {
                        // `/`: every path.
                    } else {
                        segments.insert(routes.len(), raw_path.to_string());
                    }
                }
                "ImplementationSpecific" => {
                    if raw_path != "/" {
                        keys.insert("prefix".into(), Value::String(raw_path.to_string()));
                    }
                }
                other => {
                    out.problems.push(Problem::new(
                        &origin,
                        Some(&format!("{at}.pathType")),
                        format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                    ));
                    continue;
                }
            }
            if let Some(to) =
                backend(&origin, &namespace, &path.backend, &format!("{at}.backend"), service_dns, resolve, &mut out)
            {
                keys.extend(to);
                routes.push((at, keys));
            }
        }
    }
    if let Some(default) = &spec.default_backend {
        let mut k = keys.clone();
        k.insert("from".into(), Value::String(from(None)));
        if let Some(to) = backend(&origin, &namespace, default, "spec.defaultBackend", service_dns, resolve, &mut out) {
            k.extend(to);
            routes.push(("spec.defaultBackend".into(), k));
        }
    }
    for (i, (at, mut keys)) in routes.into_iter().enumerate() {
        keys.entry("preserve_host_header").or_insert(Value::Bool(true));
        let merged = with_defaults(defaults, keys);
        let mut problems = Vec::new();
        if let Some(mut spec) = config::route_from_keys(&origin, merged, &mut problems) {
            spec.segment_prefix = segments.remove(&i);
            out.routes.push(Ranked::new(spec));
        }
        out.problems.extend(problems.into_iter().map(|p| rename_ingress_field(p, &at)));
    }
    out
}

/// An Ingress backend as route keys (`to`, or the 503 `response`).
fn backend(
    origin: &Origin,
    namespace: &str,
    backend: &IngressBackend,
    at: &str,
    dns: bool,
    resolve: &dyn Resolve,
    out: &mut Translated,
) -> Option<Map<String, Value>> {
    let Some(service) = &backend.service else {
        out.problems.push(Problem::new(
            origin,
            Some(at),
            "only Service backends are supported (not resource backends)",
        ));
        return None;
    };
    let port = match service
        .port
        .as_ref()
        .and_then(|p| p.number.map(PortRef::Number).or(p.name.clone().map(PortRef::Name)))
    {
        Some(p) => p,
        None => {
            out.problems.push(Problem::new(origin, Some(&format!("{at}.service.port")), "needs a number or a name"));
            return None;
        }
    };
    out.services.push((namespace.to_string(), service.name.clone()));
    let mut keys = Map::new();
    match resolve.service(namespace, &service.name, &port, dns) {
        Ok(urls) if urls.is_empty() => {
            keys.insert("response".into(), no_endpoints());
        }
        Ok(urls) => {
            keys.insert("to".into(), Value::Array(urls.into_iter().map(Value::String).collect()));
        }
        Err(e) => {
            out.problems.push(Problem::new(origin, Some(&format!("{at}.service")), e));
            return None;
        }
    }
    Some(keys)
}

/// A problem from the route-key check, named as the Ingress field or
/// annotation it came from.
pub(crate) fn rename_ingress_field(mut p: Problem, at: &str) -> Problem {
    p.field = Some(match p.field.as_deref() {
        None => at.to_string(),
        Some(f) => {
            let (top, rest) = f.split_once(['.', '[']).map_or((f, ""), |(t, _)| (t, &f[t.len()..]));
            match top {
                "from" => format!("{at} (host)"),
                "path" | "prefix" | "regex" => format!("{at}.path"),
                "to" | "response" => format!("{at}.backend"),
                key => format!("{}{rest}", annotations::field(annotations::POSTERN, key)),
            }
        }
    });
    p
}

// === Route ===

/// A `Route` resource.
pub(crate) fn route(obj: &Route, defaults: &Map<String, Value>, resolve: &dyn Resolve) -> Translated {
    let namespace = obj.namespace().unwrap_or_default();
    let origin = Origin::Object { kind: "Route", namespace: namespace.clone(), name: obj.name_any() };
    let mut out = Translated::default();
    let spec = &obj.spec;
    let Ok(Value::Object(camel)) = serde_json::to_value(spec) else {
        out.problems.push(Problem::new(&origin, Some("spec"), "cannot be read"));
        return out;
    };
    let mut keys = snake_keys(camel);
    let mut any_service = false;
    if let Some(targets) = &spec.to {
        keys.remove("to");
        let mut urls = Vec::new();
        let mut failed = false;
        for (i, t) in targets.iter().enumerate() {
            let weight = t.weight.map(|w| format!(",{w}")).unwrap_or_default();
            match (&t.url, &t.service) {
                (Some(url), None) => urls.push(format!("{url}{weight}")),
                (None, Some(s)) => {
                    any_service = true;
                    out.services.push((namespace.clone(), s.name.clone()));
                    match resolve.service(&namespace, &s.name, &PortRef::from(&s.port), false) {
                        Ok(found) => urls.extend(found.into_iter().map(|u| format!("{u}{weight}"))),
                        Err(e) => {
                            out.problems.push(Problem::new(&origin, Some(&format!("spec.to[{i}].service")), e));
                            failed = true;
                        }
                    }
                }
                _ => {
                    out.problems.push(Problem::new(
                        &origin,
                        Some(&format!("spec.to[{i}]")),
                        "set exactly one of url and service",
                    ));
                    failed = true;
                }
            }
        }
        if failed {
            return out;
        }
        if urls.is_empty() {
            keys.insert("response".into(), no_endpoints());
        } else {
            keys.insert("to".into(), Value::Array(urls.into_iter().map(Value::String).collect()));
        }
    }
    if any_service {
        keys.entry("preserve_host_header").or_insert(Value::Bool(true));
    }
    let merged = with_defaults(defaults, keys);
    let mut problems = Vec::new();
    if let Some(spec) = config::route_from_keys(&origin, merged, &mut problems) {
        out.routes.push(Ranked::new(spec));
    }
    out.problems.extend(problems.into_iter().map(rename_route_field));
    out
}

/// camelCase keys (the CRD) → the file format's snake_case keys, at the
/// top level and inside `cors` and `response`; map keys of header maps
/// and the policy tree stay as written.
fn snake_keys(camel: Map<String, Value>) -> Map<String, Value> {
    camel
        .into_iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("cors" | "response", Value::Object(inner)) => {
                    Value::Object(inner.into_iter().map(|(k, v)| (snake(&k), v)).collect())
                }
                (_, v) => v,
            };
            (snake(&k), v)
        })
        .collect()
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `cors.allow_origins[0]` → `spec.cors.allowOrigins[0]`.
pub(crate) fn rename_route_field(mut p: Problem) -> Problem {
    p.field = Some(match p.field.as_deref() {
        None => "spec".to_string(),
        Some(f) => {
            let parts: Vec<String> = f
                .split('.')
                .map(|part| match part.split_once('[') {
                    Some((name, index)) => format!("{}[{index}", camel(name)),
                    None => camel(part),
                })
                .collect();
            format!("spec.{}", parts.join("."))
        }
    });
    p
}

#[cfg(test)]
mod tests;
