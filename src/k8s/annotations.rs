//! Ingress annotations → route keys.
//!
//! `postern.dev/<key>` for every route key of the file format (its
//! Pomerium alias `ingress.pomerium.io/<key>` too, so a Pomerium Ingress
//! moves over unchanged). Values are strings parsed as the file format
//! parses them: `"true"`, `"600"`, and maps and lists as YAML or JSON in the
//! string. ingress-nginx's CORS annotations map onto Postern's `cors:`
//! policy with ingress-nginx's documented defaults; its other keys are
//! ignored and listed once in an Event. Nothing is ever pasted into anything:
//! each value is parsed, then checked as a route key like a file's.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{self, Origin, Problem};
use crate::suggest::closest;

pub(crate) const POSTERN: &str = "postern.dev/";
pub(crate) const POMERIUM: &str = "ingress.pomerium.io/";
const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Route keys an annotation may not set: the Ingress spec says them.
const FROM_SPEC: &[&str] = &["from", "to", "prefix", "path", "regex", "response"];

/// Controller keys that are not route keys.
pub(crate) const SERVICE_DNS: &str = "service_dns";
const CONTROLLER_KEYS: &[&str] = &[SERVICE_DNS];

/// Longest annotation value read; larger ones are refused unparsed.
const MAX_VALUE: usize = 64 * 1024;

/// What an Ingress's annotations say.
#[derive(Debug, Default)]
pub(crate) struct Annotated {
    /// Route keys, file format.
    pub keys: Map<String, Value>,
    /// Resolve Services by cluster DNS name rather than EndpointSlices.
    pub service_dns: bool,
    /// ingress-nginx keys that have no meaning here (for one Event).
    pub ignored: Vec<String>,
}

/// The field path a problem in annotation `key` is reported under.
pub(crate) fn field(prefix: &str, key: &str) -> String {
    format!("metadata.annotations[{prefix}{key}]")
}

/// Reads every annotation Postern knows; each bad one is a problem naming
/// it.
pub(crate) fn read(origin: &Origin, annotations: &BTreeMap<String, String>, problems: &mut Vec<Problem>) -> Annotated {
    let mut out = Annotated::default();
    let mut seen_from: BTreeMap<String, &str> = BTreeMap::new();
    let route_keys = config::route_keys();
    let mut known: Vec<&str> = route_keys.iter().copied().filter(|k| !FROM_SPEC.contains(k)).collect();
    known.extend(CONTROLLER_KEYS);
    for (name, value) in annotations {
        let (prefix, key) = if let Some(k) = name.strip_prefix(POSTERN) {
            (POSTERN, k)
        } else if let Some(k) = name.strip_prefix(POMERIUM) {
            (POMERIUM, k)
        } else {
            continue;
        };
        let at = field(prefix, key);
        if !known.contains(&key) {
            let mut message = if FROM_SPEC.contains(&key) {
                format!("`{key}` comes from the Ingress spec (rules, paths and backends), not an annotation")
            } else {
                format!("unknown annotation `{name}`")
            };
            if !FROM_SPEC.contains(&key)
                && let Some(best) = closest(key, &known)
            {
                message.push_str(&format!("; did you mean `{prefix}{best}`?"));
            }
            problems.push(Problem::new(origin, Some(&at), message));
            continue;
        }
        if let Some(other) = seen_from.insert(key.to_string(), prefix) {
            problems.push(Problem::new(
                origin,
                Some(&at),
                format!("set twice, as `{other}{key}` and `{name}`; keep one"),
            ));
            continue;
        }
        if value.len() > MAX_VALUE {
            problems.push(Problem::new(origin, Some(&at), format!("value is longer than {MAX_VALUE} bytes")));
            continue;
        }
        if value.bytes().any(|b| b == 0) {
            problems.push(Problem::new(origin, Some(&at), "value contains a NUL byte"));
            continue;
        }
        let parsed = match config::parse_yaml_value(value) {
            Ok(Value::Null) if !value.trim().is_empty() => Value::String(value.clone()),
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem::new(origin, Some(&at), format!("not valid YAML or JSON: {e}")));
                continue;
            }
        };
        if key == SERVICE_DNS {
            match parsed {
                Value::Bool(b) => out.service_dns = b,
                _ => problems.push(Problem::new(origin, Some(&at), "expected \"true\" or \"false\"")),
            }
            continue;
        }
        out.keys.insert(key.to_string(), parsed);
    }
    nginx_cors(origin, annotations, &mut out, problems);
    out
}

/// ingress-nginx's CORS annotations, with its documented defaults
/// (`cors-allow-origin: *`, methods `GET, PUT, POST, DELETE, PATCH, OPTIONS`,
/// its header list, credentials `true`, `cors-max-age: 1728000`). A `*`
/// origin cannot go with credentials (browsers refuse the pair, although
/// ingress-nginx sends it): with the default credentials Postern sends `*`
/// without them; asking for both explicitly is an error.
fn nginx_cors(
    origin: &Origin,
    annotations: &BTreeMap<String, String>,
    out: &mut Annotated,
    problems: &mut Vec<Problem>,
) {
    let get = |k: &str| annotations.get(&format!("{NGINX}{k}")).map(|v| v.trim());
    for name in annotations.keys() {
        if let Some(k) = name.strip_prefix(NGINX)
            && !k.starts_with("cors-")
            && k != "enable-cors"
        {
            out.ignored.push(name.clone());
        }
    }
    let at = |k: &str| format!("metadata.annotations[{NGINX}{k}]");
    match get("enable-cors") {
        None | Some("false") => return,
        Some("true") => {}
        Some(other) => {
            problems.push(Problem::new(
                origin,
                Some(&at("enable-cors")),
                format!("{other:?}: expected \"true\" or \"false\""),
            ));
            return;
        }
    }
    if out.keys.contains_key("cors") {
        problems.push(Problem::new(
            origin,
            Some(&at("enable-cors")),
            format!("set either {POSTERN}cors or the ingress-nginx CORS annotations, not both"),
        ));
        return;
    }
    let list = |v: &str| -> Vec<Value> {
        v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect()
    };
    let origins = list(get("cors-allow-origin").unwrap_or("*"));
    let any = origins.iter().any(|o| o == "*");
    let credentials = match get("cors-allow-credentials") {
        None => !any,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            problems.push(Problem::new(
                origin,
                Some(&at("cors-allow-credentials")),
                format!("{other:?}: expected \"true\" or \"false\""),
            ));
            return;
        }
    };
    let mut cors = Map::new();
    cors.insert("allow_origins".into(), Value::Array(origins));
    cors.insert(
        "allow_methods".into(),
        Value::Array(list(get("cors-allow-methods").unwrap_or("GET, PUT, POST, DELETE, PATCH, OPTIONS"))),
    );
    cors.insert(
        "allow_headers".into(),
        Value::Array(list(get("cors-allow-headers").unwrap_or(
            "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization",
        ))),
    );
    if let Some(expose) = get("cors-expose-headers") {
        cors.insert("expose_headers".into(), Value::Array(list(expose)));
    }
    cors.insert("allow_credentials".into(), Value::Bool(credentials));
    cors.insert("max_age".into(), Value::String(get("cors-max-age").unwrap_or("1728000").to_string()));
    out.keys.insert("cors".into(), Value::Object(cors));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn origin() -> Origin {
        Origin::Object { kind: "Ingress", namespace: "ns".into(), name: "web".into() }
    }

    #[test]
    fn values_parse_as_the_file_format_and_the_pomerium_alias_is_read() {
        let mut problems = Vec::new();
        let a = read(
            &origin(),
            &annotations(&[
                ("postern.dev/cors_allow_preflight", "true"),
                ("ingress.pomerium.io/allowed_users", "[\"alice@example.com\"]"),
                ("postern.dev/set_response_headers", "X-Frame-Options: DENY\nX-Count: 1"),
                ("postern.dev/cookie_domain", ".example.com"),
                ("unrelated.io/key", "x"),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(a.keys["cors_allow_preflight"], Value::Bool(true));
        assert_eq!(a.keys["allowed_users"], serde_json::json!(["alice@example.com"]));
        assert_eq!(a.keys["set_response_headers"], serde_json::json!({"X-Frame-Options": "DENY", "X-Count": 1}));
        assert_eq!(a.keys["cookie_domain"], Value::String(".example.com".into()));
    }

    #[test]
    fn unknown_and_spec_keys_are_errors_naming_the_annotation() {
        let mut problems = Vec::new();
        read(
            &origin(),
            &annotations(&[("postern.dev/cors_allow_prefligth", "true"), ("ingress.pomerium.io/to", "http://x")]),
            &mut problems,
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].contains("metadata.annotations[ingress.pomerium.io/to]"), "{text:?}");
        assert!(text[1].contains("did you mean `postern.dev/cors_allow_preflight`"), "{text:?}");
    }

    #[test]
    fn nginx_cors_defaults_and_ignored_keys() {
        let mut problems = Vec::new();
        let a = read(
            &origin(),
            &annotations(&[
                ("nginx.ingress.kubernetes.io/enable-cors", "true"),
                ("nginx.ingress.kubernetes.io/cors-allow-origin", "https://app.example.com, https://b.example.com"),
                ("nginx.ingress.kubernetes.io/rewrite-target", "/"),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let cors = &a.keys["cors"];
        assert_eq!(cors["allow_origins"], serde_json::json!(["https://app.example.com", "https://b.example.com"]));
        assert_eq!(cors["allow_credentials"], Value::Bool(true));
        assert_eq!(cors["max_age"], Value::String("1728000".into()));
        assert_eq!(cors["allow_methods"].as_array().map(Vec::len), Some(6));
        assert_eq!(a.ignored, vec!["nginx.ingress.kubernetes.io/rewrite-target".to_string()]);
        let a = read(&origin(), &annotations(&[("nginx.ingress.kubernetes.io/enable-cors", "true")]), &mut problems);
        assert_eq!(a.keys["cors"]["allow_origins"], serde_json::json!(["*"]));
        assert_eq!(a.keys["cors"]["allow_credentials"], Value::Bool(false), "`*` never with credentials");
    }
}
