//! The controller against the real control plane of tests/support: Ingress
//! objects and Route resources become routes that answer through Postern,
//! backed by real (non-loopback) upstreams in a network namespace listed in
//! EndpointSlices; status, Events and last-good isolation as a user sees them.

// `control_plane.rs` loads `supervised.rs` itself, as `support` does.
#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/netns.rs"]
mod netns;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use support::{Options, Postern};

async fn create_service(client: &kube::Client, ns: &str, name: &str, port: i32) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": { "ports": [{ "name": "http", "port": port, "targetPort": port }] }
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &svc).await.expect("create service");
}

/// The EndpointSlice of Service `name`: `endpoints` are (address, ready).
async fn set_slice(client: &kube::Client, ns: &str, name: &str, port: u16, endpoints: &[(String, bool)]) {
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{name}-1"), "labels": { "kubernetes.io/service-name": name } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": endpoints.iter().map(|(a, ready)| json!({ "addresses": [a], "conditions": { "ready": ready } })).collect::<Vec<_>>(),
    });
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(&format!("{name}-1"), &PatchParams::apply("test").force(), &Patch::Apply(&slice))
        .await
        .expect("apply slice");
}

async fn apply<K>(api: &Api<K>, name: &str, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&obj)).await.expect("apply");
}

/// GETs `https://host/path` through Postern until `want` says yes (or 20 s pass).
async fn eventually(
    p: &Postern,
    host: &str,
    path: &str,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let client = p.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(p.url(host, path)).send().await {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if want(status, &body) {
                return (status, body);
            }
            last = (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: last answer {} {}\nlog:\n{}", last.0, last.1, p.logs().join("\n"));
}

/// Stops the background load of the scaling test.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn upstream_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["upstream"].as_str().map(String::from))
        .unwrap_or_default()
}

/// `kubectl get events` for an object: (reason, message) pairs.
fn events_for(plane: &control_plane::ControlPlane, ns: &str, kind: &str, name: &str) -> Vec<(String, String)> {
    let selector = format!("regarding.kind={kind},regarding.name={name}");
    let (ok, out, err) =
        plane.kubectl(&["get", "events.events.k8s.io", "-n", ns, "--field-selector", &selector, "-o", "json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["note"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn wait_for_event(plane: &control_plane::ControlPlane, ns: &str, kind: &str, name: &str, reason: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some((_, note)) = events_for(plane, ns, kind, name).into_iter().find(|(r, _)| r == reason) {
            return note;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no {reason} event for {kind} {ns}/{name}: {:?}", events_for(plane, ns, kind, name));
}

fn start_controller(plane: &control_plane::ControlPlane, ns: &str) -> Postern {
    start_controller_with(plane, ns, "")
}

fn start_controller_with(plane: &control_plane::ControlPlane, ns: &str, extra: &str) -> Postern {
    let settings =
        format!("{extra}kubernetes:\n  enabled: true\n  namespaces: [{ns}]\n  publish_address: 203.0.113.7\n");
    Postern::start_with(
        &settings,
        Options {
            extra_args: vec!["--kubeconfig".into(), plane.kubeconfig.display().to_string()],
            ..Default::default()
        },
    )
}

fn ingress(name: &str, host: &str, path: &str, service: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "ingressClassName": "postern",
            "rules": [{ "host": host, "http": { "paths": [{
                "path": path, "pathType": "Prefix",
                "backend": { "service": { "name": service, "port": { "name": "http" } } }
            }]}}]
        }
    })
}

#[test]
fn crds_match_the_rust_types() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, out, err) = support::run_cli(&["crd"], dir.path());
    assert_eq!(code, 0, "{err}");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/routes.postern.dev.yaml")).expect("crd");
    assert_eq!(
        out, committed,
        "crds/routes.postern.dev.yaml drifted: run `postern crd > crds/routes.postern.dev.yaml`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_serves_follows_endpoints_keeps_last_good_and_reports() {
    let plane = control_plane::shared();
    plane.install_route_crd();
    let ns = plane.namespace("ing").await;
    let client = plane.client().await;
    let net = netns::Netns::create("ing");
    let second = net.add_addr();
    let a = net.serve(net.addr(), 0, "a");
    let b = net.serve(second, a.port(), "b");
    create_service(&client, &ns, "web", 80).await;
    set_slice(&client, &ns, "web", a.port(), &[(net.addr().to_string(), true)]).await;

    let p = start_controller(plane, &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let public = json!({ "postern.dev/allow_public_unauthenticated_access": "true", "postern.dev/set_response_headers": "X-Served-By: postern" });
    apply(&ingresses, "web", ingress("web", "web.k8s.test", "/", "web", public.clone())).await;

    let (_, body) =
        eventually(&p, "web.k8s.test", "/hello", "ingress routed", |s, b| s == 200 && upstream_of(b) == "a").await;
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["host"], format!("web.k8s.test:{}", p.addr.port()), "the client's Host passes unchanged");
    assert_eq!(seen["path"], "/hello");

    // Status: the published address.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ing = ingresses.get("web").await.expect("get");
        let ip = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .and_then(|i| i.first().and_then(|e| e.ip.clone()));
        if ip.as_deref() == Some("203.0.113.7") {
            break;
        }
        assert!(Instant::now() < deadline, "status.loadBalancer not written: {ip:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Scale up: both endpoints take traffic; scale down: only the new one.
    // Meanwhile a client keeps sending requests: none may fail.
    let load = {
        let (client, url) = (p.client(), p.url("web.k8s.test", "/load"));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while ok + (failed.len() as u32) < 100_000 && Instant::now() < deadline {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().as_u16()),
                    Err(e) => failed.push(if e.is_timeout() { 1 } else { 0 }),
                }
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            (ok, failed)
        })
    };
    set_slice(&client, &ns, "web", a.port(), &[(net.addr().to_string(), true), (second.to_string(), true)]).await;
    eventually(&p, "web.k8s.test", "/", "second endpoint used", |s, b| s == 200 && upstream_of(b) == "b").await;
    set_slice(&client, &ns, "web", a.port(), &[(net.addr().to_string(), false), (second.to_string(), true)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits_a = a.hits();
    for _ in 0..10 {
        let (s, b) = eventually(&p, "web.k8s.test", "/", "only b", |s, _| s == 200).await;
        assert_eq!((s, upstream_of(&b)), (200, "b".to_string()), "a not-ready endpoint gets no requests");
    }
    assert_eq!(a.hits(), hits_a);
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load");
    assert!(ok > 0 && failed.is_empty(), "{ok} requests answered, failed: {failed:?}");
    // No ready endpoint at all: 503, not a hang.
    set_slice(&client, &ns, "web", a.port(), &[(second.to_string(), false)]).await;
    eventually(&p, "web.k8s.test", "/", "503 without endpoints", |s, _| s == 503).await;
    set_slice(&client, &ns, "web", a.port(), &[(net.addr().to_string(), true)]).await;
    eventually(&p, "web.k8s.test", "/", "back", |s, b| s == 200 && upstream_of(b) == "a").await;

    // A bad new version: the last good one keeps serving, and an Event names the annotation.
    let mut bad = public.clone();
    bad["postern.dev/cors_allow_prefligth"] = json!("true");
    apply(&ingresses, "web", ingress("web", "web.k8s.test", "/", "web", bad)).await;
    let note = wait_for_event(plane, &ns, "Ingress", "web", "Invalid").await;
    assert!(note.contains("metadata.annotations[postern.dev/cors_allow_prefligth]"), "{note}");
    assert!(note.contains("did you mean `postern.dev/cors_allow_preflight`"), "{note}");
    // Postern's Events are found by its reporting component (the
    // cross-origin test filters on it).
    let selector = "type=Warning,reportingComponent=postern.dev/ingress-controller";
    let (_, ours, _) = plane.kubectl(&["get", "events", "-n", &ns, "--field-selector", selector], None);
    assert!(ours.contains("Invalid"), "{ours}");
    let (ok, described, err) = plane.kubectl(&["describe", "ingress", "web", "-n", &ns], None);
    assert!(ok, "{err}");
    assert!(
        described.contains("Warning") && described.contains("Invalid") && described.contains("cors_allow_prefligth"),
        "kubectl describe shows the Event:\n{described}"
    );
    let (s, _) = eventually(&p, "web.k8s.test", "/", "last good", |s, _| s == 200).await;
    assert_eq!(s, 200);

    // Another Ingress with a bad backend does not touch this one; a newer
    // Ingress claiming the same host and path loses to the older.
    apply(&ingresses, "other", ingress("other", "web.k8s.test", "/", "web", public.clone())).await;
    let note = wait_for_event(plane, &ns, "Ingress", "other", "HostConflict").await;
    assert!(note.contains("already served by Ingress"), "{note}");

    // Leaving the class removes it from the table.
    ingresses.delete("other", &DeleteParams::default()).await.expect("delete");
    let mut moved = ingress("web", "web.k8s.test", "/", "web", public.clone());
    moved["spec"]["ingressClassName"] = json!("nginx");
    apply(&ingresses, "web", moved).await;
    eventually(&p, "web.k8s.test", "/", "class left", |s, _| s == 404).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_resources_serve_and_show_their_status() {
    let plane = control_plane::shared();
    plane.install_route_crd();
    let ns = plane.namespace("route").await;
    let client = plane.client().await;
    let net = netns::Netns::create("route");
    let up = net.serve(net.addr(), 0, "api");
    create_service(&client, &ns, "api", 80).await;
    set_slice(&client, &ns, "api", up.port(), &[(net.addr().to_string(), true)]).await;
    let p = start_controller(plane, &ns);

    // The schema refuses what it can at apply time.
    let both = format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: both, namespace: {ns}}}\nspec:\n  from: https://x.k8s.test\n  prefix: /a\n  path: /b\n  to: [{{url: 'http://10.0.0.1'}}]\n"
    );
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&both));
    assert!(!ok && err.contains("set at most one of prefix, path and regex"), "{err}");

    let route = format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: api, namespace: {ns}}}\nspec:\n  from: https://api.k8s.test\n  prefix: /v1\n  to: [{{service: {{name: api, port: http}}}}]\n  allowPublicUnauthenticatedAccess: true\n  cors:\n    allowOrigins: [https://app.k8s.test]\n    allowCredentials: true\n"
    );
    let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route));
    assert!(ok, "{out}{err}");
    let (_, body) =
        eventually(&p, "api.k8s.test", "/v1/items", "route served", |s, b| s == 200 && upstream_of(b) == "api").await;
    assert!(body.contains("/v1/items"));
    // CORS answered by the proxy for the Route.
    let resp = p
        .client()
        .request(reqwest::Method::OPTIONS, p.url("api.k8s.test", "/v1/items"))
        .header("Origin", "https://app.k8s.test")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.k8s.test");

    // `kubectl get routes` shows it Ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = plane.kubectl(&["get", "routes", "-n", &ns], None);
        if out.lines().any(|l| l.starts_with("api ") && l.contains("True")) {
            assert!(out.contains("https://api.k8s.test") && out.contains("FROM") && out.contains("READY"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "route never Ready:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `postern routes --kubernetes` prints what the controller builds.
    let kubeconfig = plane.kubeconfig.display().to_string();
    let config = p.config_path.display().to_string();
    let (code, out, err) = support::run_cli(
        &["routes", "--config", &config, "--kubernetes", "--kubeconfig", &kubeconfig, "--output", "json"],
        p.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    let row =
        rows.as_array().expect("rows").iter().find(|r| r["origin"] == format!("Route {ns}/api")).expect("the Route");
    assert_eq!(row["from"], "https://api.k8s.test");
    assert_eq!(row["path"], "/v1*");

    // An invalid new version: Accepted=False naming the field, the old one serves on.
    let bad = route.replace("allowOrigins: [https://app.k8s.test]", "allowOrigins: ['ftp://nope']");
    let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(&bad));
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = plane.kubectl(
            &["get", "route", "api", "-n", &ns, "-o", "jsonpath={.status.conditions[?(@.type==\"Accepted\")].message}"],
            None,
        );
        if out.contains("spec.cors.allowOrigins[0]") {
            break;
        }
        assert!(Instant::now() < deadline, "Accepted=False not written: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = eventually(&p, "api.k8s.test", "/v1/x", "last good route", |s, _| s == 200).await;
    assert_eq!(s, 200);
    drop(up);
}

async fn tls_secret(client: &kube::Client, ns: &str, name: &str, host: &str) -> String {
    let (cert, key) = support::self_signed(&[host]);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": { "name": name },
        "stringData": { "tls.crt": cert, "tls.key": key },
    });
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    apply(&api, name, secret).await;
    cert
}

/// The leaf certificate Postern presents for `sni`, as PEM.
async fn served_cert(p: &Postern, sni: &str) -> String {
    let tls = support::upstream::tls_connect(p.addr, sni, &[b"http/1.1"]).await.expect("tls");
    let der = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der.as_ref())
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_by_sni_with_rotation_and_plain_http_hosts() {
    let plane = control_plane::shared();
    let ns = plane.namespace("tls").await;
    let client = plane.client().await;
    let net = netns::Netns::create("tls");
    let up = net.serve(net.addr(), 0, "web");
    create_service(&client, &ns, "web", 80).await;
    set_slice(&client, &ns, "web", up.port(), &[(net.addr().to_string(), true)]).await;
    let plain_port = support::free_port();
    let p = start_controller_with(plane, &ns, &format!("http_redirect_addr: 127.0.0.1:{plain_port}\n"));

    let first = tls_secret(&client, &ns, "secure-cert", "secure.k8s.test").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let public = json!({ "postern.dev/allow_public_unauthenticated_access": "true" });
    let mut secure = ingress("secure", "secure.k8s.test", "/", "web", public.clone());
    secure["spec"]["tls"] = json!([{ "hosts": ["secure.k8s.test"], "secretName": "secure-cert" }]);
    apply(&ingresses, "secure", secure).await;
    apply(&ingresses, "plain", ingress("plain", "plain.k8s.test", "/", "web", public.clone())).await;
    eventually(&p, "secure.k8s.test", "/", "secure host routed", |s, _| s == 200).await;

    // The Secret's certificate, chosen by SNI; rotated live.
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_cert(&p, "secure.k8s.test").await != pem_body(&first) {
        assert!(Instant::now() < deadline, "Secret certificate not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(served_cert(&p, "plain.k8s.test").await, pem_body(&first), "other hosts keep the default certificate");
    let second = tls_secret(&client, &ns, "secure-cert", "secure.k8s.test").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_cert(&p, "secure.k8s.test").await != pem_body(&second) {
        assert!(Instant::now() < deadline, "rotated certificate not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A missing Secret: an Event, and the default certificate, not an outage.
    let mut broken = ingress("broken", "broken.k8s.test", "/", "web", public.clone());
    broken["spec"]["tls"] = json!([{ "hosts": ["broken.k8s.test"], "secretName": "nope" }]);
    apply(&ingresses, "broken", broken).await;
    let note = wait_for_event(plane, &ns, "Ingress", "broken", "BadTLSSecret").await;
    assert!(note.contains("nope") && note.contains("not found"), "{note}");
    eventually(&p, "broken.k8s.test", "/", "served on the default certificate", |s, _| s == 200).await;

    // Plain HTTP: a host without a TLS entry is served there; a TLS host is redirected.
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let resp = plain
        .get(format!("http://127.0.0.1:{plain_port}/x"))
        .header("host", "plain.k8s.test")
        .send()
        .await
        .expect("plain");
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream_of(&resp.text().await.expect("body")), "web");
    let resp = plain
        .get(format!("http://127.0.0.1:{plain_port}/x"))
        .header("host", "secure.k8s.test")
        .send()
        .await
        .expect("plain");
    assert_eq!(resp.status(), 308);
    assert!(resp.headers()["location"].to_str().expect("ascii").starts_with("https://secure.k8s.test"));

    // A plain-HTTP host whose route needs sign-in is redirected to https first.
    apply(&ingresses, "plain", ingress("plain", "plain.k8s.test", "/", "web", json!({}))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = plain
            .get(format!("http://127.0.0.1:{plain_port}/x"))
            .header("host", "plain.k8s.test")
            .send()
            .await
            .expect("plain");
        if resp.status() == 308 {
            break;
        }
        assert!(Instant::now() < deadline, "a signed-in route was served over plain HTTP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_families_and_the_default_class() {
    let plane = control_plane::shared();
    let ns = plane.namespace("ann").await;
    let client = plane.client().await;
    let net = netns::Netns::create("ann");
    let up = net.serve(net.addr(), 0, "web");
    create_service(&client, &ns, "web", 80).await;
    set_slice(&client, &ns, "web", up.port(), &[(net.addr().to_string(), true)]).await;
    let p = start_controller(plane, &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);

    // A Pomerium Ingress moves over unchanged; ingress-nginx's CORS keys
    // become Postern's policy; its other keys are listed in one Event.
    let annotations = json!({
        "ingress.pomerium.io/allow_public_unauthenticated_access": "true",
        "ingress.pomerium.io/set_response_headers": "{X-Frame-Options: DENY}",
        "nginx.ingress.kubernetes.io/enable-cors": "true",
        "nginx.ingress.kubernetes.io/cors-allow-origin": "https://app.k8s.test",
        "nginx.ingress.kubernetes.io/rewrite-target": "/",
    });
    apply(&ingresses, "migrated", ingress("migrated", "migrated.k8s.test", "/", "web", annotations)).await;
    let resp_ok = |s: u16, _: &str| s == 200;
    eventually(&p, "migrated.k8s.test", "/", "migrated ingress", resp_ok).await;
    let resp = p
        .client()
        .request(reqwest::Method::OPTIONS, p.url("migrated.k8s.test", "/"))
        .header("Origin", "https://app.k8s.test")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 204, "answered by Postern");
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.k8s.test");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true", "ingress-nginx's default");
    assert!(resp.headers()["access-control-allow-methods"].to_str().expect("ascii").contains("PUT"));
    let resp = p.client().get(p.url("migrated.k8s.test", "/")).send().await.expect("get");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let note = wait_for_event(plane, &ns, "Ingress", "migrated", "IgnoredAnnotations").await;
    assert!(note.contains("nginx.ingress.kubernetes.io/rewrite-target"), "{note}");

    // No class: ignored until our IngressClass is the cluster default.
    let mut classless = ingress(
        "classless",
        "classless.k8s.test",
        "/",
        "web",
        json!({ "postern.dev/allow_public_unauthenticated_access": "true" }),
    );
    classless["spec"].as_object_mut().expect("spec").remove("ingressClassName");
    apply(&ingresses, "classless", classless).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = p.client().get(p.url("classless.k8s.test", "/")).send().await.expect("get");
    assert_eq!(resp.status(), 404, "not ours without a default class");
    let class = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": { "name": "postern", "annotations": { "ingressclass.kubernetes.io/is-default-class": "true" } },
        "spec": { "controller": "postern.dev/ingress-controller" }
    });
    let classes: Api<k8s_openapi::api::networking::v1::IngressClass> = Api::all(client.clone());
    apply(&classes, "postern", class).await;
    eventually(&p, "classless.k8s.test", "/", "default class", resp_ok).await;
    classes.delete("postern", &DeleteParams::default()).await.expect("delete class");
    eventually(&p, "classless.k8s.test", "/", "class no longer default", |s, _| s == 404).await;
    drop(up);
}

/// The Lease holder's process id (identities are `host-pid` outside a pod).
fn lease_holder_pid(plane: &control_plane::ControlPlane, ns: &str) -> Option<u32> {
    let (ok, out, _) =
        plane.kubectl(&["get", "lease", "postern-leader", "-n", ns, "-o", "jsonpath={.spec.holderIdentity}"], None);
    if !ok {
        return None;
    }
    out.trim().rsplit_once('-').and_then(|(_, pid)| pid.parse().ok())
}

fn accepted_message(plane: &control_plane::ControlPlane, ns: &str, name: &str) -> String {
    plane
        .kubectl(
            &["get", "route", name, "-n", ns, "-o", "jsonpath={.status.conditions[?(@.type==\"Accepted\")].message}"],
            None,
        )
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_status_writer_and_failover() {
    let plane = control_plane::shared();
    plane.install_route_crd();
    let ns = plane.namespace("lease").await;
    let a = start_controller(plane, &ns);
    let b = start_controller(plane, &ns);
    let route = |origin: &str| {
        format!(
            "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  from: https://r.k8s.test\n  response: {{status: 200, body: ok}}\n  allowPublicUnauthenticatedAccess: true\n  cors: {{allowOrigins: ['{origin}']}}\n"
        )
    };
    // A valid first version serves on both replicas.
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route("https://app.k8s.test")));
    assert!(ok, "{err}");
    eventually(&a, "r.k8s.test", "/", "replica a serves", |s, _| s == 200).await;
    eventually(&b, "r.k8s.test", "/", "replica b serves", |s, _| s == 200).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(pid) = lease_holder_pid(plane, &ns).filter(|pid| *pid == a.pid() || *pid == b.pid()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no replica holds the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // An invalid version: the condition is written once, and not rewritten
    // back and forth while nothing changes.
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route("ftp://one")));
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !accepted_message(plane, &ns, "r").contains("ftp://one") {
        assert!(Instant::now() < deadline, "status not written by the leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let version = |plane: &control_plane::ControlPlane| {
        plane.kubectl(&["get", "route", "r", "-n", &ns, "-o", "jsonpath={.metadata.resourceVersion}"], None).1
    };
    let events = |plane: &control_plane::ControlPlane| {
        let (_, out, _) = plane.kubectl(
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                &ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.series.count},{end}",
            ],
            None,
        );
        out
    };
    let before = (version(plane), events(plane));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        (version(plane), events(plane)),
        before,
        "neither status nor Events are rewritten while nothing changes"
    );

    // The leader stops (SIGTERM releases the Lease); the other takes over and
    // writes the next change, well within the Lease duration.
    let (mut gone, survivor) = if leader == a.pid() { (a, b) } else { (b, a) };
    gone.signal("TERM");
    assert!(gone.wait_exit(Duration::from_secs(15)).is_some(), "leader exits on SIGTERM");
    let stopped = Instant::now();
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route("ftp://two")));
    assert!(ok, "{err}");
    while !accepted_message(plane, &ns, "r").contains("ftp://two") {
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "the new leader did not write status within the Lease duration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lease_holder_pid(plane, &ns), Some(survivor.pid()));
    eventually(&survivor, "r.k8s.test", "/", "last good still serving", |s, _| s == 200).await;
    drop(survivor);
}

/// A Route of `ns` that answers `body` itself on `from` (and `prefix`).
fn answering_route(ns: &str, name: &str, from: &str, prefix: &str, body: &str) -> String {
    format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: {from}\n  prefix: {prefix}\n  response: {{status: 200, body: {body}}}\n  allowPublicUnauthenticatedAccess: true\n"
    )
}

/// Waits (20 s at most) until the Route's Accepted condition says something `want` accepts.
async fn accepted_until(
    plane: &control_plane::ControlPlane,
    ns: &str,
    name: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let message = accepted_message(plane, ns, name);
        if want(&message) {
            return message;
        }
        assert!(Instant::now() < deadline, "Route {ns}/{name}: Accepted says {message:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Objects are tenants' input (catalogue H): a host belongs to the namespace
/// that served it first, references cannot leave the object's namespace,
/// header values cannot smuggle CR/LF, and a huge or deeply nested
/// annotation is refused without slowing the controller for anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_input_hosts_stay_with_their_namespace_and_hostile_values_are_refused() {
    let plane = control_plane::shared();
    plane.install_route_crd();
    let (a, b) = (plane.namespace("tenant-a").await, plane.namespace("tenant-b").await);
    let client = plane.client().await;
    let p = start_controller(plane, &format!("{a}, {b}"));
    let kubectl_apply = |yaml: String| {
        let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(&yaml));
        assert!(ok, "{out}{err}");
    };

    // Tenant a serves shared.k8s.test; tenant b, later, tries to add /admin
    // to it with a Route and with an Ingress. Neither gets in; both are told
    // why; b's own host is served.
    kubectl_apply(answering_route(&a, "site", "https://shared.k8s.test", "/", "a"));
    eventually(&p, "shared.k8s.test", "/", "tenant a served", |s, b| s == 200 && b == "a").await;
    kubectl_apply(answering_route(&b, "grab", "https://shared.k8s.test", "/admin", "b"));
    kubectl_apply(answering_route(&b, "own", "https://own.k8s.test", "/", "b-own"));
    let ingresses_b: Api<Ingress> = Api::namespaced(client.clone(), &b);
    create_service(&client, &b, "web", 80).await;
    let public = json!({ "postern.dev/allow_public_unauthenticated_access": "true" });
    apply(&ingresses_b, "grab", ingress("grab", "shared.k8s.test", "/admin", "web", public.clone())).await;
    eventually(&p, "own.k8s.test", "/", "tenant b's own host", |s, body| s == 200 && body == "b-own").await;
    for kind in ["Route", "Ingress"] {
        let note = wait_for_event(plane, &b, kind, "grab", "HostConflict").await;
        assert!(note.contains(&format!("served from namespace {a}")), "{kind}: {note}");
    }
    let (status, body) = eventually(&p, "shared.k8s.test", "/admin", "tenant a's answer", |s, _| s == 200).await;
    assert_eq!((status, body.as_str()), (200, "a"), "tenant b took /admin on tenant a's host");

    // A reference to another namespace's Service cannot be written: the
    // Route schema has no namespace on a target.
    let across = format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: across, namespace: {b}}}\nspec:\n  from: https://across.k8s.test\n  to: [{{service: {{name: web, namespace: {a}, port: 80}}}}]\n  allowPublicUnauthenticatedAccess: true\n"
    );
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&across));
    assert!(!ok && err.contains("namespace"), "a cross-namespace target was accepted: {err}");

    // CR/LF in a header value, from an annotation and from a Route.
    let mut injected = public.clone();
    injected["postern.dev/set_response_headers"] = json!("X-A: \"x\\r\\nSet-Cookie: stolen=1\"");
    apply(&ingresses_b, "inject", ingress("inject", "inject.k8s.test", "/", "web", injected)).await;
    let note = wait_for_event(plane, &b, "Ingress", "inject", "Invalid").await;
    assert!(note.contains("metadata.annotations[postern.dev/set_response_headers]"), "{note}");
    let route_injected = format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: inject, namespace: {b}}}\nspec:\n  from: https://inject-route.k8s.test\n  response: {{status: 200, body: x}}\n  allowPublicUnauthenticatedAccess: true\n  setResponseHeaders: {{X-A: \"x\\r\\nSet-Cookie: stolen=1\"}}\n"
    );
    kubectl_apply(route_injected);
    let message = accepted_until(plane, &b, "inject", |m| !m.is_empty()).await;
    assert!(message.contains("setResponseHeaders") || message.contains("set_response_headers"), "{message}");
    let (status, _) = eventually(&p, "inject-route.k8s.test", "/", "not served", |s, _| s == 404).await;
    assert_eq!(status, 404);

    // ingress-nginx snippets (H.51): no raw configuration exists to paste
    // them into; they are named in an IgnoredAnnotations Event, never applied.
    let mut snippets = public.clone();
    snippets["nginx.ingress.kubernetes.io/configuration-snippet"] = json!("more_set_headers \"X-Evil: 1\";");
    snippets["nginx.ingress.kubernetes.io/server-snippet"] = json!("location /x { return 200 evil; }");
    apply(&ingresses_b, "snippet", ingress("snippet", "snippet.k8s.test", "/", "web", snippets)).await;
    let note = wait_for_event(plane, &b, "Ingress", "snippet", "IgnoredAnnotations").await;
    assert!(note.contains("configuration-snippet") && note.contains("server-snippet"), "{note}");
    let resp = p.client().get(p.url("snippet.k8s.test", "/x")).send().await.expect("snippet host");
    assert!(resp.headers().get("x-evil").is_none(), "a snippet was applied");
    assert_ne!(resp.text().await.unwrap_or_default(), "evil", "a snippet was applied");

    // A value over 64 KiB, and one nested 20,000 deep: refused by name,
    // and a change to another object right after is live as fast as ever.
    let mut huge = public.clone();
    huge["postern.dev/allowed_users"] = json!(format!("[{}]", "\"u@example.com\",".repeat(5000)));
    apply(&ingresses_b, "huge", ingress("huge", "huge.k8s.test", "/", "web", huge)).await;
    let mut deep = public.clone();
    deep["postern.dev/policy"] = json!(format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)));
    apply(&ingresses_b, "deep", ingress("deep", "deep.k8s.test", "/", "web", deep)).await;
    let note = wait_for_event(plane, &b, "Ingress", "huge", "Invalid").await;
    assert!(note.contains("metadata.annotations[postern.dev/allowed_users]"), "{note}");
    let note = wait_for_event(plane, &b, "Ingress", "deep", "Invalid").await;
    assert!(note.contains("metadata.annotations[postern.dev/policy]"), "{note}");
    let started = Instant::now();
    kubectl_apply(answering_route(&a, "site", "https://shared.k8s.test", "/", "a2"));
    eventually(&p, "shared.k8s.test", "/", "tenant a's change", |s, b| s == 200 && b == "a2").await;
    println!("after the hostile annotations, a change was live in {:?}", started.elapsed());
    eventually(&p, "own.k8s.test", "/", "still serving", |s, body| s == 200 && body == "b-own").await;
}
