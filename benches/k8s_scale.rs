//! The controller at scale, on the real control plane of tests/support:
//! N Ingresses and N Routes present (N = `POSTERN_SCALE_OBJECTS`, default
//! 10,000), then
//!
//! * cold start: process start → `/readyz` with everything loaded;
//! * resident memory of the controller process after the sync;
//! * apply → live: from the API server accepting a new Route (its create
//!   call returning) to that Route answering through Postern, over
//!   `POSTERN_SCALE_CHANGES` (default 200) changes while other Routes are
//!   patched at a steady rate in the background;
//! * a burst of 1,000 updates: time until the table serves all of them, and
//!   requests to unchanged routes meanwhile (failures, p99 before vs during).
//!
//! Run with `cargo bench --bench k8s_scale` (builds the control plane on
//! first use). Prints numbers; asserts nothing about speed.

#[allow(clippy::duplicate_mod)]
#[path = "../tests/support/control_plane.rs"]
mod control_plane;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use postern::k8s::crd::Route;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn route(name: &str, host: &str, body: &str) -> Route {
    serde_json::from_value(json!({
        "apiVersion": "postern.dev/v1alpha1", "kind": "Route",
        "metadata": { "name": name },
        "spec": { "from": format!("https://{host}"), "response": { "status": 200, "body": body },
                  "allowPublicUnauthenticatedAccess": true }
    }))
    .expect("route")
}

fn ingress(name: &str, host: &str) -> k8s_openapi::api::networking::v1::Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": name, "annotations": { "postern.dev/allow_public_unauthenticated_access": "true" } },
        "spec": { "ingressClassName": "postern", "rules": [{ "host": host, "http": { "paths": [{
            "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] }
    }))
    .expect("ingress")
}

/// GETs until the body is `want` (bounded): when it first was.
async fn until_body(client: &reqwest::Client, url: &str, want: &str, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
            && r.text().await.is_ok_and(|b| b == want)
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    None
}

/// Patches Routes `r0`.. `r{count - 1}` to answer "v2", 32 at a time.
async fn answer_v2(routes: &Api<Route>, count: usize) {
    futures_util::stream::iter(0..count)
        .map(|i| async move {
            let patch = json!({ "spec": { "response": { "status": 200, "body": "v2" } } });
            routes.patch(&format!("r{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// GETs one URL every 2 ms on a thread and runtime of its own, so the
/// latency it records is Postern's and the machine's, not the wait for
/// this process's busy runtime.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Duration>, usize)>,
}

impl Probe {
    fn start(proxy: std::net::SocketAddr, url: String) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let client = support::client_to(proxy);
                let (mut lat, mut failed) = (Vec::new(), 0usize);
                let deadline = Instant::now() + Duration::from_secs(300);
                while !flag.load(Ordering::Relaxed) && Instant::now() < deadline && lat.len() < 1_000_000 {
                    let t = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                lat.sort();
                (lat, failed)
            })
        });
        Probe { stop, thread }
    }

    fn finish(self) -> (Vec<Duration>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (CI) runs
    // the same code once at a small size, so it cannot rot.
    let benching = std::env::args().any(|a| a == "--bench");
    let (objects, default_changes, default_burst) = if benching { (10_000, 200, 1_000) } else { (50, 10, 20) };
    let n = env_usize("POSTERN_SCALE_OBJECTS", objects);
    let changes = env_usize("POSTERN_SCALE_CHANGES", default_changes);
    let burst = env_usize("POSTERN_SCALE_BURST", default_burst).min(n);
    let plane = control_plane::shared();
    plane.install_route_crd();
    let ns = plane.namespace("scale").await;
    let client = plane.client().await;
    let routes: Api<Route> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(client.clone(), &ns);
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" }, "spec": { "ports": [{ "port": 80 }] } }))
    .expect("svc");
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &svc).await.expect("service");

    let t = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (routes, ingresses) = (routes.clone(), ingresses.clone());
            async move {
                let pp = PostParams::default();
                routes.create(&pp, &route(&format!("r{i}"), &format!("r{i}.scale.test"), "v1")).await.expect("route");
                ingresses.create(&pp, &ingress(&format!("i{i}"), &format!("i{i}.scale.test"))).await.expect("ingress");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("created {n} Routes and {n} Ingresses in {:.1} s", t.elapsed().as_secs_f64());
    // For the control burst: the same Routes in a namespace Postern does
    // not watch.
    let unwatched_ns = plane.namespace("scale-unwatched").await;
    let unwatched: Api<Route> = Api::namespaced(client.clone(), &unwatched_ns);
    futures_util::stream::iter(0..burst)
        .map(|i| {
            let unwatched = unwatched.clone();
            async move {
                let r = route(&format!("r{i}"), &format!("u{i}.scale.test"), "v1");
                unwatched.create(&PostParams::default(), &r).await.expect("unwatched route");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;

    // Cold start.
    let started = Instant::now();
    let mut p = support::Postern::start_with(
        &format!("metrics_address: 127.0.0.1:0\nkubernetes:\n  enabled: true\n  namespaces: [{ns}]\n"),
        support::Options {
            extra_args: vec!["--kubeconfig".into(), plane.kubeconfig.display().to_string()],
            ..Default::default()
        },
    );
    let metrics = p.metrics.expect("metrics");
    let ready_client = reqwest::Client::new();
    loop {
        if let Ok(r) = ready_client.get(format!("http://{metrics}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cold = started.elapsed();
    let proxy = p.client();
    assert!(
        until_body(&proxy, &p.url(&format!("r{}.scale.test", n - 1), "/"), "v1", Duration::from_secs(10))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = p.rss_kib();
    println!("cold start to /readyz with {} objects: {}", 2 * n, ms(cold));
    println!("resident memory after sync: {:.1} MiB", rss as f64 / 1024.0);

    // Steady churn of other objects in the background.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (routes, stop) = (routes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let patch = json!({ "metadata": { "labels": { "churn": i.to_string() } } });
                let _ = routes.patch(&format!("r{}", i % n), &PatchParams::default(), &Patch::Merge(&patch)).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        })
    };
    let mut latencies = Vec::with_capacity(changes);
    let mut never = 0usize;
    for c in 0..changes {
        let host = format!("live{c}.scale.test");
        let created = routes.create(&PostParams::default(), &route(&format!("live{c}"), &host, "live")).await;
        let accepted = Instant::now();
        created.expect("create");
        match until_body(&proxy, &p.url(&host, "/"), "live", Duration::from_secs(30)).await {
            Some(live) => latencies.push(live - accepted),
            None => {
                // Counted and shown, not fatal: the numbers are the point.
                never += 1;
                let logs = p.logs();
                let tail = logs.len().saturating_sub(5);
                eprintln!("live{c} did not answer within 30 s; last log lines:\n{}", logs[tail..].join("\n"));
                if never >= 3 {
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let churned = churn.await.unwrap_or(0);
    latencies.sort();
    if latencies.is_empty() {
        println!("apply -> live: no change answered ({never} timed out)");
    } else {
        println!(
            "apply -> live over {} new Routes ({never} never answered; {churned} churn patches meanwhile): p50 {}  p99 {}  max {}",
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().expect("some"))
        );
    }

    // Unchanged routes: latency quiet, during a burst of Route updates in a
    // namespace Postern does not watch (the API server and etcd do the same
    // work, Postern none: what the shared machine costs), and during the
    // same burst in the namespace it watches.
    let unchanged = p.url(&format!("r{}.scale.test", n - 1), "/");
    let quiet = Probe::start(p.addr, unchanged.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (quiet_lat, quiet_failed) = quiet.finish();

    let control = Probe::start(p.addr, unchanged.clone());
    let t = Instant::now();
    answer_v2(&unwatched, burst).await;
    let control_applied = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (control_lat, control_failed) = control.finish();

    let during = Probe::start(p.addr, unchanged);
    let t = Instant::now();
    answer_v2(&routes, burst).await;
    let applied = t.elapsed();
    let mut pending: Vec<usize> = (0..burst).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for i in pending {
            let ok = match proxy.get(p.url(&format!("r{i}.scale.test"), "/")).send().await {
                Ok(r) => r.text().await.is_ok_and(|b| b == "v2"),
                Err(_) => false,
            };
            if !ok {
                still.push(i);
            }
        }
        pending = still;
    }
    let reflected = t.elapsed();
    let (burst_lat, burst_failed) = during.finish();
    println!(
        "burst of {burst} updates: API calls took {}, all {} served after {} ({} not reflected)",
        ms(applied),
        burst - pending.len(),
        ms(reflected),
        pending.len()
    );
    let line = |lat: &[Duration], failed: usize| {
        format!(
            "{} requests, {failed} failed, p50 {} p99 {}",
            lat.len(),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99))
        )
    };
    println!("unchanged route, quiet: {}", line(&quiet_lat, quiet_failed));
    println!(
        "unchanged route during {burst} Route updates in a namespace Postern does not watch ({} of API calls): {}",
        ms(control_applied),
        line(&control_lat, control_failed)
    );
    println!("unchanged route during the burst of Route updates: {}", line(&burst_lat, burst_failed));
    println!(
        "resident memory at the end: {:.1} MiB (peak {:.1} MiB)",
        p.rss_kib() as f64 / 1024.0,
        p.peak_rss_kib() as f64 / 1024.0
    );
    // Where a rebuild's time goes (the controller's own accounting).
    let rounds: Vec<serde_json::Value> =
        support::log_events(&p).into_iter().filter(|e| e["message"] == "cluster routes rebuilt").collect();
    let mean = |field: &str| rounds.iter().filter_map(|e| e[field].as_f64()).sum::<f64>() / rounds.len().max(1) as f64;
    println!(
        "rebuild rounds: {} (mean objects {:.1}); mean translate {:.2} ms, assemble {:.2} ms, publish (compile + swap + certificates) {:.2} ms",
        rounds.len(),
        mean("k8s.objects"),
        mean("translate_ms"),
        mean("assemble_ms"),
        mean("publish_ms")
    );
    // A clean exit, so a profiler's wrapper (POSTERN_TEST_WRAPPER) writes
    // its whole output.
    p.signal("TERM");
    if p.wait_exit(Duration::from_secs(15)).is_none() {
        println!("Postern did not exit within 15 s of SIGTERM");
    }
}
