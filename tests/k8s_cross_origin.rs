//! The cross-origin guide's browser test (`tests/browser/cross_origin.mjs`,
//! as `tests/cross_origin.rs` runs it) once more, with the routes coming
//! from Kubernetes objects on the real API server of
//! `tests/support/control_plane.rs` instead of from the config file: once
//! from annotated Ingresses, once from Route resources.
//!
//! The objects are `manifests/cross-origin/ingresses.yaml` (Pomerium
//! annotation names) or `manifests/cross-origin/routes.yaml` (the same
//! routes as `Route`s), applied with kubectl into one namespace per phase,
//! the subset of that phase's example config chosen by label, the listen
//! port put into the CORS origins. Each phase gets its own Postern whose
//! config file is the example's without `routes:`, plus
//! `kubernetes: {enabled: true, namespaces: [<its namespace>]}`. The
//! example's app and API servers listen on the root-namespace side of a
//! veth pair (`tests/support/netns.rs`; EndpointSlices refuse loopback
//! addresses), and the test writes the EndpointSlices of Services `app`
//! and `api` with that address. The two runs take turns (one Chromium at a
//! time on a small machine). Needs root, `/usr/bin/chromium` and the npm
//! packages: run `scripts/install-test-deps.sh`.

// `control_plane.rs` loads `supervised.rs` itself, as `support` does.
#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/netns.rs"]
mod netns;
mod support;

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::idp::{Idp, IdpClient};
use support::node::{NodeServer, example_dir, make_certs, repo, require_installed, run_bounded, tail};
use support::{Options, Postern};

const CHROMIUM: &str = "/usr/bin/chromium";
/// One of the guide's manifests and how kubectl names what it applies.
struct Manifest {
    path: &'static str,
    /// The prefix of `kubectl apply`'s line for each route object.
    applied: &'static str,
    /// Namespace prefix and artifacts directory of its run.
    tag: &'static str,
    artifacts: &'static str,
    /// Its objects report `Ready` in their status (`kubectl get <this>`).
    ready_status: Option<&'static str>,
}

const INGRESSES: Manifest = Manifest {
    path: "manifests/cross-origin/ingresses.yaml",
    applied: "ingress.networking.k8s.io/",
    tag: "xo",
    artifacts: "tests/artifacts/k8s",
    ready_status: None,
};
const ROUTES: Manifest = Manifest {
    path: "manifests/cross-origin/routes.yaml",
    applied: "route.postern.dev/",
    tag: "xr",
    artifacts: "tests/artifacts/k8s-routes",
    ready_status: Some("routes"),
};
const GUIDE: &str = "cross-origin.postern.dev/guide=true";
const SINGLE_DOMAIN: &str = "cross-origin.postern.dev/single-domain=true";

/// A phase of the browser test and what it runs against.
struct Phase {
    name: &'static str,
    /// The example config whose settings (everything but `routes:`) it uses.
    config: &'static str,
    /// The label selector of its objects in the manifest (`None`: all).
    selector: Option<&'static str>,
    /// Its routes: (host label, path) each answers at.
    routes: &'static [(&'static str, &'static str)],
}

const PHASES: [Phase; 5] = [
    Phase { name: "guide", config: "config.yaml", selector: Some(GUIDE), routes: &[("api", "/"), ("app", "/")] },
    Phase {
        name: "single-domain",
        config: "single-domain.yaml",
        selector: Some(SINGLE_DOMAIN),
        routes: &[("app", "/api"), ("app", "/")],
    },
    Phase { name: "header", config: "header.yaml", selector: Some(GUIDE), routes: &[("api", "/"), ("app", "/")] },
    Phase {
        name: "shared-cookie",
        config: "shared-cookie.yaml",
        selector: Some(GUIDE),
        routes: &[("api", "/"), ("app", "/")],
    },
    Phase {
        name: "demo",
        config: "demo.yaml",
        selector: None,
        routes: &[("api", "/"), ("app", "/api"), ("app", "/"), ("api2", "/"), ("other", "/")],
    },
];
const CLIENT_ID: &str = "cross-origin-demo";
const CLIENT_SECRET: &str = "cross-origin-demo-secret";
const PARENT: &str = "cors.localhost";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings of example config `name` for this run: its text up to
/// `routes:` (the routes come from the cluster), the listen port, the IdP
/// and the certificate directory replaced, and the controller turned on for
/// namespace `ns`. Every placeholder must be there, so a config that drifts
/// fails here rather than silently.
fn settings(name: &str, port: u16, idp: &str, certs: &Path, ns: &str) -> String {
    let text = std::fs::read_to_string(example_dir().join(name)).expect("read example config");
    let at = text.find("\nroutes:\n").unwrap_or_else(|| panic!("{name} has no `routes:`"));
    let (head, routes) = text.split_at(at + 1);
    assert!(
        routes.lines().skip(1).all(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#')),
        "{name}: settings after `routes:` would be lost:\n{routes}"
    );
    let mut out = head.to_string();
    for (from, to) in [
        ("http://127.0.0.1:8100", idp.to_string()),
        (":8443", format!(":{port}")),
        (".demo/", format!("{}/", certs.display())),
    ] {
        assert!(out.contains(from), "{name} has no {from:?}");
        out = out.replace(from, &to);
    }
    out.push_str(&format!("\nkubernetes:\n  enabled: true\n  namespaces: [{ns}]\n"));
    out
}

/// `manifest` for a Postern on `port`: the origins in the CORS headers
/// and policy carry the port.
fn manifest_text(manifest: &Manifest, port: u16) -> String {
    let text = std::fs::read_to_string(repo().join(manifest.path)).expect("read the manifest");
    let origin = "https://app.cors.localhost:8443";
    assert_eq!(text.matches(origin).count(), 2, "{}: the app origin in api's header and api2's policy", manifest.path);
    text.replace(origin, &format!("https://app.{PARENT}:{port}"))
}

/// `kubectl` through the control plane, bounded: (ok, stdout, stderr).
fn kubectl(plane: &control_plane::ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let (tx, rx) = mpsc::channel();
    let (args, stdin): (Vec<String>, Option<String>) =
        (args.iter().map(|s| s.to_string()).collect(), stdin.map(str::to_string));
    let kubeconfig = plane.kubeconfig.clone();
    std::thread::spawn(move || {
        let mut cmd = Command::new(control_plane::kubectl());
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(&args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let result = cmd.spawn().and_then(|mut child| {
            if let Some(input) = &stdin {
                child.stdin.take().expect("stdin").write_all(input.as_bytes())?;
            }
            child.wait_with_output()
        });
        let _ = tx.send(result);
    });
    let out = rx
        .recv_timeout(KUBECTL_TIMEOUT)
        .unwrap_or_else(|_| panic!("kubectl took over {KUBECTL_TIMEOUT:?}"))
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The EndpointSlice of Service `service`: one ready endpoint.
fn endpoint_slice(service: &str, addr: IpAddr, port: u16) -> String {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{service}-1"), "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [addr.to_string()], "conditions": { "ready": true } }],
    })
    .to_string()
}

/// The port of `url` (`http://host:port`).
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or_else(|| panic!("{url}"))
}

/// Every Event of namespace `ns`, one line each.
fn events(plane: &control_plane::ControlPlane, ns: &str) -> String {
    let (_, out, err) = kubectl(plane, &["get", "events", "-n", ns, "-o", "wide"], None);
    format!("{out}{err}")
}

/// Waits for Postern's first cluster sync and checks it has `want` routes;
/// otherwise panics with the Events of `ns` and the log.
fn wait_synced(p: &Postern, plane: &control_plane::ControlPlane, ns: &str, want: usize) {
    let line = p.wait_for_log("\"cluster synced\"", 0, SYNC_TIMEOUT);
    let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
    let routes = v["routes"].as_u64().or_else(|| v["fields"]["routes"].as_u64());
    let left_out: Vec<String> = p.logs().into_iter().filter(|l| l.contains("cluster route left out")).collect();
    assert!(
        routes == Some(want as u64) && left_out.is_empty(),
        "namespace {ns}: the cluster gave {routes:?} routes, want {want}: {line}\n{}\nEvents:\n{}\nlog:\n{}",
        left_out.join("\n"),
        events(plane, ns),
        p.logs().join("\n")
    );
}

/// Until `kubectl get <kind> -n <ns>` shows every object of `phase` with
/// `Ready` `True` (the leader writes status after it serves).
async fn wait_ready(plane: &control_plane::ControlPlane, kind: &str, ns: &str, phase: &Phase) {
    let ready =
        r#"-o=jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let (ok, out, err) = kubectl(plane, &["get", kind, "-n", ns, ready], None);
        let lines: Vec<&str> = out.lines().collect();
        if ok && lines.len() == phase.routes.len() && lines.iter().all(|l| l.ends_with("=True")) {
            if phase.name == "demo" {
                let (_, table, _) = kubectl(plane, &["get", kind, "-n", ns], None);
                println!("---- kubectl get {kind} -n {ns} ----\n{table}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "phase {}: not every {kind} in {ns} is Ready after {SYNC_TIMEOUT:?}: {out}{err}\n{}",
            phase.name,
            kubectl(plane, &["get", kind, "-n", ns, "-o", "yaml"], None).1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until every route of `phase` answers something else than Postern's
/// "no route" 404 (a sign-in redirect, as nobody is signed in).
async fn wait_routed(p: &Postern, phase: &Phase) {
    let client = p.client();
    for (label, path) in phase.routes {
        let host = format!("{label}.{PARENT}");
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let last = match client.get(p.url(&host, path)).header("accept", "text/html").send().await {
                Ok(resp) if resp.status() != 404 => break,
                Ok(resp) => format!("{} {}", resp.status(), resp.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "phase {}: https://{host}{path} is not routed after {SYNC_TIMEOUT:?}: {last}\nlog:\n{}",
                phase.name,
                p.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_guide_from_ingresses_in_chromium() {
    run_guide(&INGRESSES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_guide_from_routes_in_chromium() {
    run_guide(&ROUTES).await;
}

/// One run at a time: each starts five Posterns and a Chromium.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The guide's five phases in Chromium, with the routes from `manifest`.
async fn run_guide(manifest: &Manifest) {
    let _turn = ONE_AT_A_TIME.lock().await;
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-test-deps.sh (installs Debian's chromium and the npm packages)"
    );
    require_installed(&repo().join("tests/browser"), "playwright-core");
    require_installed(&example_dir(), "jose");
    let started = Instant::now();

    let plane = control_plane::shared();
    plane.install_route_crd();
    let net = netns::Netns::create("xorigin");
    let backend = net.host_addr();

    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join(".demo");
    make_certs(&certs, PARENT);
    let ports: Vec<u16> = PHASES.iter().map(|_| support::free_port()).collect();
    let auth = |port: u16| format!("https://authenticate.{PARENT}:{port}");

    let mut client = IdpClient::new(
        CLIENT_ID,
        CLIENT_SECRET,
        &format!("{}/oauth2/callback", auth(ports[0])),
        &format!("{}/.postern/signed_out", auth(ports[0])),
    );
    for &port in &ports[1..] {
        client.redirect_uris.push(format!("{}/oauth2/callback", auth(port)));
        client.post_logout_redirect_uris.push(format!("{}/.postern/signed_out", auth(port)));
    }
    let idp = Idp::start(&[client]);

    // The example's servers, on a non-loopback address of this namespace.
    let listen = ("LISTEN_HOST", backend.to_string());
    let app = NodeServer::start("app-server.mjs", &[("PORT", "0".into()), listen.clone()]);
    let jwks: Vec<String> = ports.iter().map(|&p| format!("{}/.well-known/postern/jwks.json", auth(p))).collect();
    let api = NodeServer::start(
        "api-server.mjs",
        &[
            ("PORT", "0".into()),
            listen,
            ("ADMIN_PORT", "0".into()),
            ("POSTERN_JWKS_URLS", jwks.join(",")),
            ("POSTERN_CA", certs.join("ca.pem").display().to_string()),
        ],
    );
    let (app_port, api_port) = (port_of(&app.url("app")), port_of(&api.url("api")));
    assert_eq!(app.url("app"), format!("http://{backend}:{app_port}"));

    // Per phase: a namespace with the phase's objects, and a Postern watching it.
    let mut posterns: Vec<(&Phase, String, Postern)> = Vec::new();
    for (phase, &port) in PHASES.iter().zip(&ports) {
        let ns = plane.namespace(&format!("{}-{}", manifest.tag, phase.name)).await;
        let mut args = vec!["apply", "-n", &ns, "-f", "-"];
        if let Some(selector) = phase.selector {
            args.extend(["-l", selector]);
        }
        let (ok, out, err) = kubectl(plane, &args, Some(&manifest_text(manifest, port)));
        assert!(ok, "phase {}: kubectl apply {}: {out}{err}", phase.name, manifest.path);
        let applied = out.lines().filter(|l| l.starts_with(manifest.applied)).count();
        assert_eq!(applied, phase.routes.len(), "phase {}: the route objects applied:\n{out}", phase.name);
        for (service, port) in [("app", app_port), ("api", api_port)] {
            let (ok, out, err) =
                kubectl(plane, &["apply", "-n", &ns, "-f", "-"], Some(&endpoint_slice(service, backend, port)));
            assert!(ok, "EndpointSlice of {service}: {out}{err}");
        }
        let config = settings(phase.config, port, &idp.issuer, &certs, &ns);
        let options = Options {
            extra_args: vec!["--kubeconfig".into(), plane.kubeconfig.display().to_string()],
            ..Default::default()
        };
        let p = Postern::start_with(&config, options);
        assert_eq!(p.addr.port(), port);
        posterns.push((phase, ns, p));
    }
    for (phase, ns, p) in &posterns {
        tokio::task::block_in_place(|| wait_synced(p, plane, ns, phase.routes.len()));
        wait_routed(p, phase).await;
    }
    let phases: Vec<String> =
        posterns.iter().map(|(phase, _, p)| format!("{}={}", phase.name, p.addr.port())).collect();
    println!("servers up in {:.1}s: {}", started.elapsed().as_secs_f64(), phases.join(", "));
    if let Some((_, ns, p)) = posterns.iter().find(|(phase, _, _)| phase.name == "demo") {
        let (kubeconfig, config) = (plane.kubeconfig.display().to_string(), p.config_path.display().to_string());
        let (code, out, err) = support::run_cli(
            &["routes", "--config", &config, "--kubernetes", "--kubeconfig", &kubeconfig],
            p.dir.path(),
        );
        println!("---- postern routes --kubernetes (namespace {ns}) ----\n{out}{err}");
        assert_eq!(code, 0, "postern routes --kubernetes: {out}{err}");
    }

    let browser_started = Instant::now();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/browser/cross_origin.mjs"))
        .current_dir(repo())
        .env("CROSS_ORIGIN_PORTS", phases.join(","))
        .env("CROSS_ORIGIN_PARENT", PARENT)
        .env("API_ADMIN_URL", api.url("admin"))
        .env("ARTIFACTS_DIR", manifest.artifacts)
        .env("CHROMIUM", CHROMIUM)
        .env("BROWSER_TEST_TIMEOUT_MS", (BROWSER_TIMEOUT.as_millis() - 10_000).to_string());
    let (code, output) = tokio::task::block_in_place(|| run_bounded(command, BROWSER_TIMEOUT));
    println!("---- tests/browser/cross_origin.mjs ----\n{output}\n---- end ----");
    println!(
        "browser test: {:.1}s (whole test {:.1}s)",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if code != Some(0) {
        let mut report = String::new();
        for (phase, ns, p) in &posterns {
            report.push_str(&format!("---- postern {} (last lines) ----\n{}\n", phase.name, tail(&p.logs(), 40)));
            report.push_str(&format!("---- Events in {ns} ----\n{}\n", events(plane, ns)));
        }
        report.push_str(&format!("---- api-server ----\n{}\n", api.logs()));
        report.push_str(&format!("---- app-server ----\n{}\n", app.logs()));
        report.push_str(&format!("---- IdP (last lines) ----\n{}\n", tail(&idp.logs(), 40)));
        let _ = std::io::stderr().write_all(report.as_bytes());
        panic!("the browser test failed (exit {code:?}); its output is above");
    }
    // Nothing in the cluster was refused or ignored (the route counts say
    // the same; this names it if not).
    for (phase, ns, _) in &posterns {
        // Postern's own Events: the API server's repair loops may warn
        // about a fresh control plane's Service IPs meanwhile.
        let (ok, out, err) = kubectl(
            plane,
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "type=Warning,reportingComponent=postern.dev/ingress-controller",
            ],
            None,
        );
        assert!(ok && out.trim().is_empty(), "phase {}: Warning Events in {ns}:\n{out}{err}", phase.name);
        let (_, out, _) =
            kubectl(plane, &["get", "events", "-n", ns, "--field-selector", "reason=IgnoredAnnotations"], None);
        assert!(out.trim().is_empty(), "phase {}: ignored annotations in {ns}:\n{out}", phase.name);
        if let Some(kind) = manifest.ready_status {
            wait_ready(plane, kind, ns, phase).await;
        }
    }
    // The servers go before the namespace whose address they listen on.
    drop(posterns);
    drop((app, api));
    drop(net);
}
