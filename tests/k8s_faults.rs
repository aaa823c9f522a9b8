//! The controller through control-plane faults, with requests flowing: the
//! API server down for a while (the last table serves, readiness stays, the
//! changes made once it is back are applied) and etcd compaction making the
//! controller's watches `410 Gone` (it re-lists without dropping a route).
//! Its own binary (own control plane): these tests stop the API server
//! under everyone, so they take turns.

#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

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

/// Requests to the unchanged route until `stop` (bounded): (ok, failures).
fn load(p: &Postern, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    let (client, url) = (p.client(), p.url("steady.k8s.test", "/"));
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(180);
        while !stop.load(Ordering::Relaxed) && ok < 1_000_000 && Instant::now() < deadline {
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
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

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&p, stop.clone());
    tokio::task::spawn_blocking(|| control_plane::shared().stop_apiserver()).await.expect("stop");
    // Down for a while: every request still answered, still ready.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(support::get_plain(metrics, "/readyz").await.0, 200, "readiness stays while the API server is down");
    }
    tokio::task::spawn_blocking(|| control_plane::shared().restart_apiserver()).await.expect("restart");
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(&route(&ns, "after", "after.k8s.test")));
    assert!(ok, "{err}");
    wait_serving(&p, "after.k8s.test", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.expect("load");
    assert!(ok > 100 && failed.is_empty(), "{ok} answered; failed: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_410_relists_without_dropping_a_route() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("gone").await;
    let other = plane.namespace("gone-churn").await;
    let p = setup(plane, &ns);
    wait_serving(&p, "steady.k8s.test", Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&p, stop.clone());

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
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.expect("load");
    assert!(ok > 50 && failed.is_empty(), "{ok} answered; failed: {failed:?}");
    // Nothing was dropped: the route from before is still there.
    let resp = p.client().get(p.url("steady.k8s.test", "/")).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let gone = p.logs()[logged..].iter().filter(|l| l.contains("410")).count();
    assert!(gone > 0, "the watches did meet 410 Gone (else this test proved nothing)");
}
