//! The controller through control-plane faults, with a steady counted load
//! (tests/support/load.rs) on a route that does not change: the API server
//! down for 30 s (the last table serves, readiness stays, the changes made
//! once it is back are applied), etcd compaction making the controller's
//! watches `410 Gone` (it re-lists without dropping a route), and a burst of
//! 1,000 Ingress updates. Every request to the unchanged route must succeed.
//! Its own binary (own control plane): these tests stop the API server
//! under everyone, so they take turns.

#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};

use support::load::{Limits, Load, Report};
use support::upstream::Upstream;
use support::{Options, Postern};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn route(ns: &str, name: &str, host: &str) -> String {
    format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: https://{host}\n  response: {{status: 200, body: {name}}}\n  allowPublicUnauthenticatedAccess: true\n"
    )
}

fn setup(plane: &control_plane::ControlPlane, ns: &str) -> Postern {
    plane.install_route_crd();
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route(ns, "steady", "steady.k8s.test")));
    assert!(ok, "{err}");
    Postern::start_with(
        &format!("metrics_address: 127.0.0.1:0\nkubernetes:\n  enabled: true\n  namespaces: [{ns}]\n"),
        Options {
            extra_args: vec!["--kubeconfig".into(), plane.kubeconfig.display().to_string()],
            ..Default::default()
        },
    )
}

async fn wait_serving(p: &Postern, host: &str, timeout: Duration) {
    let client = p.client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(p.url(host, "/")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{host} not served\n{}", p.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The steady load on the unchanged route: 4 clients (the control plane
/// shares the 2 cores), bounded by the load's limits.
fn load(p: &Postern) -> Load {
    Load::start(
        || p.client(),
        &p.url("steady.k8s.test", "/"),
        Limits { clients: 4, pause: Duration::from_millis(5), ..Limits::default() },
    )
}

fn check(what: &str, report: &Report, min_ok: usize) {
    println!("{what}: {}", report.summary());
    assert!(report.ok() >= min_ok, "{what}: too little load to mean anything: {}", report.summary());
    assert!(report.failed().is_empty(), "{what}: failed requests to the unchanged route: {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_the_table_serves_and_changes_after_it_returns_apply() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("down").await;
    let p = setup(plane, &ns);
    wait_serving(&p, "steady.k8s.test", Duration::from_secs(20)).await;
    let metrics = p.metrics.expect("metrics address");
    assert_eq!(support::get_plain(metrics, "/readyz").await.0, 200);

    let traffic = load(&p);
    tokio::task::spawn_blocking(|| control_plane::shared().stop_apiserver()).await.expect("stop");
    // Down for the 30 s: every request still answered, still ready.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(support::get_plain(metrics, "/readyz").await.0, 200, "readiness stays while the API server is down");
    }
    tokio::task::spawn_blocking(|| control_plane::shared().restart_apiserver()).await.expect("restart");
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route(&ns, "after", "after.k8s.test")));
    assert!(ok, "{err}");
    wait_serving(&p, "after.k8s.test", Duration::from_secs(60)).await;
    check("API server stopped 30 s and restarted", &traffic.stop().await, 1000);
}

/// A controller that cannot reach its API server still stops on SIGTERM
/// promptly (the Lease release and status writes are given up, not
/// retried), and exits 0: a pod that hangs here is killed by the kubelet
/// after its grace period and drops its in-flight requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_api_server_gone_exits_within_the_grace_period() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("term").await;
    let mut p = setup(plane, &ns);
    wait_serving(&p, "steady.k8s.test", Duration::from_secs(20)).await;
    p.wait_for_log("leadership changed", 0, Duration::from_secs(20));
    tokio::task::spawn_blocking(|| control_plane::shared().stop_apiserver()).await.expect("stop");
    // Let the watches and the Lease loop meet the dead server first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled = Instant::now();
    p.signal("TERM");
    // Nothing is in flight, so nothing should wait out the 30 s grace.
    let code = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(15)));
    let took = signalled.elapsed();
    tokio::task::spawn_blocking(|| control_plane::shared().start_apiserver()).await.expect("start");
    println!("exit after SIGTERM with the API server gone: {took:?}");
    assert_eq!(code, Some(0), "exit code after {took:?}; log:\n{}", p.logs().join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_410_relists_without_dropping_a_route() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("gone").await;
    let other = plane.namespace("gone-churn").await;
    let p = setup(plane, &ns);
    wait_serving(&p, "steady.k8s.test", Duration::from_secs(20)).await;
    let traffic = load(&p);

    // The controller's watches are cut while etcd moves on and compacts past
    // their resourceVersion; they come back to `410 Gone` and re-list.
    let churn: Api<ConfigMap> = Api::namespaced(plane.client().await, &other);
    for i in 0..20 {
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": format!("c{i}") } })).expect("cm");
        churn.create(&PostParams::default(), &cm).await.expect("churn");
    }
    let logged = p.logs().len();
    tokio::task::spawn_blocking(|| control_plane::shared().stop_apiserver()).await.expect("stop");
    plane.compact_etcd().await;
    tokio::task::spawn_blocking(|| control_plane::shared().restart_apiserver()).await.expect("restart");
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route(&ns, "later", "later.k8s.test")));
    assert!(ok, "{err}");
    wait_serving(&p, "later.k8s.test", Duration::from_secs(60)).await;
    check("etcd compacted, watches 410 Gone", &traffic.stop().await, 200);
    // Nothing was dropped: the route from before is still there.
    let resp = p.client().get(p.url("steady.k8s.test", "/")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let gone = p.logs()[logged..].iter().filter(|l| l.contains("410")).count();
    assert!(gone > 0, "the watches did meet 410 Gone (else this test proved nothing)");
}

fn ingress(name: &str, path: &str, port: u16) -> Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": name, "annotations": { "postern.dev/allow_public_unauthenticated_access": "true" } },
        "spec": { "ingressClassName": "postern", "rules": [{ "host": format!("{name}.burst.test"), "http": { "paths": [{
            "path": path, "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": port } } } }] } }] }
    }))
    .expect("ingress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_ingress_updates_fails_no_request_to_unchanged_routes() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("burst").await;
    let ingresses: Api<Ingress> = Api::namespaced(plane.client().await, &ns);
    // The backend: an ExternalName Service naming a loopback upstream
    // (EndpointSlices refuse loopback addresses; ExternalName does not).
    let up = Upstream::start("burst").await;
    let port = up.addr.port();
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": { "type": "ExternalName", "externalName": "127.0.0.1", "ports": [{ "port": port }] }
    }))
    .expect("service");
    Api::<Service>::namespaced(plane.client().await, &ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("service");
    let count = 50;
    for i in 0..count {
        ingresses.create(&PostParams::default(), &ingress(&format!("i{i}"), "/", port)).await.expect("create ingress");
    }
    // An Ingress the burst leaves alone: its route is rebuilt with every
    // table, and must serve throughout like the steady Route.
    ingresses.create(&PostParams::default(), &ingress("fixed", "/", port)).await.expect("create ingress");
    let p = setup(plane, &ns);
    wait_serving(&p, "steady.k8s.test", Duration::from_secs(20)).await;
    wait_serving(&p, "fixed.burst.test", Duration::from_secs(20)).await;
    let traffic = load(&p);
    let fixed = Load::start(
        || p.client(),
        &p.url("fixed.burst.test", "/"),
        Limits { clients: 2, pause: Duration::from_millis(5), ..Limits::default() },
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1,000 updates, 20 to each Ingress, each changing its route's path,
    // 32 in flight at a time (as a deploy pipeline or a GitOps sync would).
    let updates = 1000;
    let t = Instant::now();
    futures_util::stream::iter(0..updates)
        .map(|u| {
            let ingresses = ingresses.clone();
            async move {
                let patch =
                    serde_json::json!({ "spec": ingress(&format!("i{}", u % count), &format!("/v{u}"), port).spec });
                ingresses
                    .patch(&format!("i{}", u % count), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("patch ingress");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let sent = t.elapsed();
    // A change made after the burst is served: the controller worked
    // through it.
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route(&ns, "after", "after.k8s.test")));
    assert!(ok, "{err}");
    wait_serving(&p, "after.k8s.test", Duration::from_secs(60)).await;
    println!("burst: {updates} Ingress updates sent in {sent:?}, a later Route served after {:?}", t.elapsed());
    // Each Ingress is served at the path its last update gave it (and no
    // longer at the first one): the burst was applied, not skipped.
    let client = p.client();
    for i in [0, count / 2, count - 1] {
        let name = format!("i{i}");
        let live = ingresses.get(&name).await.expect("get ingress");
        let path = live.spec.and_then(|s| s.rules).and_then(|r| r[0].http.clone()).expect("http rule").paths[0]
            .path
            .clone()
            .expect("path");
        let host = format!("{name}.burst.test");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = client.get(p.url(&host, &path)).send().await.expect("get").status().as_u16();
            let old = client.get(p.url(&host, "/")).send().await.expect("get").status().as_u16();
            if now == 200 && old == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "{host}{path} answers {now}, {host}/ answers {old}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    check("1,000 Ingress updates in a burst, the unchanged Route", &traffic.stop().await, 200);
    check("1,000 Ingress updates in a burst, the unchanged Ingress", &fixed.stop().await, 100);
}
