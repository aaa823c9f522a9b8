use std::collections::HashMap;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Map, json};

use super::*;

/// Endpoints by `namespace/service:port`, as the caches would hold them.
struct Endpoints(HashMap<String, Vec<String>>);

impl Resolve for Endpoints {
    fn service(&self, namespace: &str, name: &str, port: &PortRef, dns: bool) -> Result<Vec<String>, String> {
        if dns {
            return Ok(vec![format!("http://{name}.{namespace}.svc.cluster.local:{port}")]);
        }
        self.0
            .get(&format!("{namespace}/{name}:{port}"))
            .cloned()
            .ok_or_else(|| format!("Service {namespace}/{name} not found"))
    }
}

fn endpoints() -> Endpoints {
    Endpoints(HashMap::from([
        ("ns/web:80".to_string(), vec!["http://10.0.0.1:8080".to_string(), "http://10.0.0.2:8080".to_string()]),
        ("ns/web:http".to_string(), vec!["http://10.0.0.1:8080".to_string()]),
        ("ns/empty:80".to_string(), vec![]),
    ]))
}

fn ingress_object(spec: serde_json::Value, annotations: serde_json::Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "web", "namespace": "ns", "annotations": annotations },
        "spec": spec,
    }))
    .expect("ingress")
}

fn backend(name: &str, port: serde_json::Value) -> serde_json::Value {
    json!({ "service": { "name": name, "port": port } })
}

#[test]
fn every_path_type_and_the_default_backend() {
    let ing = ingress_object(
        json!({
            "tls": [{ "hosts": ["secure.example.com"], "secretName": "cert" }],
            "rules": [
                { "host": "secure.example.com", "http": { "paths": [
                    { "path": "/exact", "pathType": "Exact", "backend": backend("web", json!({"number": 80})) },
                    { "path": "/foo/", "pathType": "Prefix", "backend": backend("web", json!({"name": "http"})) },
                    { "path": "/impl", "pathType": "ImplementationSpecific", "backend": backend("web", json!({"number": 80})) },
                ]}},
                { "host": "plain.example.com", "http": { "paths": [
                    { "path": "/", "pathType": "Prefix", "backend": backend("empty", json!({"number": 80})) },
                ]}},
            ],
            "defaultBackend": backend("web", json!({"number": 80})),
        }),
        json!({ "postern.dev/allow_public_unauthenticated_access": "true" }),
    );
    let t = ingress_translate(&ing);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let specs: Vec<&RouteSpec> = t.routes.iter().map(|r| &*r.spec).collect();
    assert_eq!(specs.len(), 5);
    assert_eq!(specs[0].from, "https://secure.example.com");
    assert_eq!(specs[0].path.as_deref(), Some("/exact"));
    assert_eq!(specs[0].to.len(), 2, "every ready endpoint");
    assert!(specs[0].preserve_host_header, "cluster routes pass the client's Host by default");
    // Element-wise prefix: /foo and /foo/bar, not /foobar.
    assert_eq!(specs[1].segment_prefix.as_deref(), Some("/foo/"));
    assert_eq!(specs[1].prefix, None);
    assert_eq!(specs[2].prefix.as_deref(), Some("/impl"));
    assert_eq!(specs[3].from, "http://plain.example.com", "no TLS entry: plain HTTP too");
    assert_eq!(specs[3].response.as_ref().map(|r| r.status), Some(503), "no ready endpoint answers 503");
    assert_eq!(specs[4].from, "https://*", "the default backend takes any host");
    assert_eq!(t.tls, vec![(vec!["secure.example.com".to_string()], "cert".to_string())]);
}

fn ingress_translate(ing: &Ingress) -> Translated {
    super::ingress(ing, &Map::new(), &endpoints())
}

#[test]
fn class_rules() {
    let mut ing = ingress_object(json!({ "ingressClassName": "postern" }), json!({}));
    assert!(ingress_is_ours(&ing, "postern", false));
    assert!(!ingress_is_ours(&ing, "nginx", true));
    ing.spec.as_mut().expect("spec").ingress_class_name = None;
    assert!(ingress_is_ours(&ing, "postern", true), "no class, and ours is the default");
    assert!(!ingress_is_ours(&ing, "postern", false));
    let legacy = ingress_object(json!({}), json!({ "kubernetes.io/ingress.class": "postern" }));
    assert!(ingress_is_ours(&legacy, "postern", false));
}

#[test]
fn bad_annotations_and_backends_name_the_field() {
    let ing = ingress_object(
        json!({ "rules": [{ "host": "a.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": backend("missing", json!({"number": 80})) },
            { "path": "/x", "pathType": "Prefix", "backend": backend("web", json!({"number": 80})) },
        ]}}]}),
        json!({ "postern.dev/timeout": "soon", "postern.dev/cors": "{allow_origins: [https://app.example.com], allow_credentials: yes}" }),
    );
    let t = ingress_translate(&ing);
    let text: Vec<String> = t.problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p
                .contains("Ingress ns/web: spec.rules[0].http.paths[0].backend.service: Service ns/missing not found")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|p| p.contains("metadata.annotations[postern.dev/cors].allow_credentials")
            && p.contains("expected true or false")),
        "{text:?}"
    );
}

#[test]
fn route_defaults_apply_unless_the_object_sets_policy() {
    let defaults: Map<String, serde_json::Value> =
        serde_json::from_value(json!({ "allow_any_authenticated_user": true, "timeout": "5s" })).expect("map");
    let ing = ingress_object(
        json!({ "rules": [{ "host": "a.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 80})) } ]}}]}),
        json!({ "postern.dev/allow_public_unauthenticated_access": "true" }),
    );
    let t = super::ingress(&ing, &defaults, &endpoints());
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let spec = &t.routes[0].spec;
    assert!(spec.allow_public_unauthenticated_access && !spec.allow_any_authenticated_user);
    assert_eq!(spec.timeout, Some(std::time::Duration::from_secs(5)));
}

#[test]
fn a_route_resource_in_camel_case() {
    let route: Route = serde_json::from_value(json!({
        "apiVersion": "postern.dev/v1alpha1", "kind": "Route",
        "metadata": { "name": "api", "namespace": "ns" },
        "spec": {
            "from": "https://api.example.com",
            "to": [{ "service": { "name": "web", "port": 80 } }, { "url": "http://10.9.9.9:80", "weight": 3 }],
            "prefix": "/v1",
            "corsAllowPreflight": true,
            "cookieHttpOnly": false,
            "cors": { "allowOrigins": ["https://app.example.com"], "allowCredentials": true, "maxAge": 600 },
            "allowAnyAuthenticatedUser": true,
        }
    }))
    .expect("route");
    let t = super::route(&route, &Map::new(), &endpoints());
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let spec = &t.routes[0].spec;
    assert_eq!(spec.to, vec!["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.9.9.9:80,3"]);
    assert!(spec.cors_allow_preflight && spec.allow_any_authenticated_user && spec.preserve_host_header);
    assert_eq!(spec.cookie_http_only, Some(false));
    assert_eq!(spec.cors.as_ref().map(|c| c.max_age), Some(Some(600)));

    let bad: Route = serde_json::from_value(json!({
        "apiVersion": "postern.dev/v1alpha1", "kind": "Route",
        "metadata": { "name": "api", "namespace": "ns" },
        "spec": { "from": "https://api.example.com", "to": [{ "url": "http://x" }], "cors": { "allowOrigins": ["ftp://nope"] }, "setResponseHeaders": {"X": "1"}, "idleTimeout": "soon" }
    }))
    .expect("route");
    let t = super::route(&bad, &Map::new(), &endpoints());
    let text: Vec<String> = t.problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|p| p.starts_with("Route ns/api: spec.idleTimeout")), "{text:?}");
}

#[test]
fn a_cookie_domain_a_host_cookie_name_refuses_is_the_objects_own_problem() {
    // As the controller checks each translated route: the compile problem,
    // named as the object's own field, on that object only.
    let settings = crate::config::Settings {
        auth: crate::config::AuthSettings {
            cookie: crate::config::CookieSettings { name: "__Host-postern".into(), ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    let rules = |host: &str| {
        json!({ "rules": [{ "host": host, "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": backend("web", json!({"number": 80})) } ]}}]})
    };
    let problems = |t: &Translated, rename: &dyn Fn(Problem) -> Problem| -> Vec<String> {
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        t.routes
            .iter()
            .filter_map(|r| crate::routes::RouteTable::check(&settings, &r.spec).err())
            .map(|p| rename(p).to_string())
            .collect()
    };
    let by_ingress = |p| rename_ingress_field(p, "spec");
    let good = super::ingress(&ingress_object(rules("a.example.com"), json!({})), &Map::new(), &endpoints());
    assert!(problems(&good, &by_ingress).is_empty(), "an object without cookie_domain is fine");
    for key in ["postern.dev/cookie_domain", "ingress.pomerium.io/cookie_domain"] {
        let bad = ingress_object(rules("b.example.com"), json!({ key: "b.example.com" }));
        let found = problems(&super::ingress(&bad, &Map::new(), &endpoints()), &by_ingress);
        assert_eq!(found.len(), 1, "{key}: {found:?}");
        assert!(
            found[0].starts_with(
                "Ingress ns/web: metadata.annotations[postern.dev/cookie_domain]: cannot be used with a __Host- \
                 cookie_name (\"__Host-postern\"): browsers drop a __Host- cookie that has a Domain attribute"
            ),
            "{key}: {found:?}"
        );
    }

    let route: Route = serde_json::from_value(json!({
        "apiVersion": "postern.dev/v1alpha1", "kind": "Route",
        "metadata": { "name": "api", "namespace": "ns" },
        "spec": { "from": "https://api.example.com", "to": [{ "url": "http://x" }], "cookieDomain": "api.example.com" }
    }))
    .expect("route");
    let found = problems(&super::route(&route, &Map::new(), &endpoints()), &rename_route_field);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("Route ns/api: spec.cookieDomain: cannot be used with a __Host- cookie_name"),
        "{found:?}"
    );
}
