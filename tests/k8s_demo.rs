//! `examples/kubernetes/run.sh`, headless: the cluster demo with no cluster.
//!
//! Runs the script as a user would (in its own process group, as a
//! terminal runs a command), with every port it listens on passed through
//! the environment (free ports, so it runs beside the other tests and a
//! user's demo), its state in a temporary `DEMO_DIR`, and `POSTERN_BIN` set
//! to the debug binary cargo built for this test (the script's own
//! `cargo build --release` takes minutes with fat LTO). Waits for the
//! printed URL, then checks what the printout promises: the guide's routes
//! answer through Postern (from the cluster's Ingresses: the app redirects
//! to sign-in; the API's `401` carries the CORS headers; api2.'s preflight
//! is answered by Postern), the Route answers, and the printed `kubectl`
//! lines work with the printed kubeconfig. Then Ctrl-C (SIGINT to the
//! process group) must stop everything: the script exits, no process of
//! its group is left and none of its ports still listens.
//!
//! Needs the tools of `tests/support/k8s/build.sh` (built here if not
//! cached, as the other k8s tests do), Node.js with the npm packages the
//! script installs, openssl and curl.

// `control_plane.rs` loads `supervised.rs` itself, as `support` does.
#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARENT: &str = "cors.localhost";
/// From the start of run.sh to its "Ctrl-C stops everything." (tools
/// built, npm packages installed: the control plane, the chart and five
/// servers start).
const START_TIMEOUT: Duration = Duration::from_secs(240);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
const PORTS: [&str; 8] = [
    "DEMO_PORT",
    "DEMO_IDP_PORT",
    "DEMO_APP_PORT",
    "DEMO_API_PORT",
    "DEMO_ADMIN_PORT",
    "DEMO_APISERVER_PORT",
    "DEMO_ETCD_PORT",
    "DEMO_ETCD_PEER_PORT",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// run.sh, in its own process group; the group is killed on drop, so a
/// failed assertion leaves nothing behind.
struct Demo {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    fn output(&self) -> String {
        self.output.lock().expect("output").join("\n")
    }

    fn pgid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Whether any process of the demo's group is still there.
    fn group_alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks for existence.
        unsafe { libc::kill(-self.pgid(), 0) == 0 }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: signals the group this test started.
        unsafe {
            libc::kill(-self.pgid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn start_demo(ports: &BTreeMap<&str, u16>, dir: &std::path::Path) -> Demo {
    let mut command = Command::new("bash");
    command
        .arg(repo().join("examples/kubernetes/run.sh"))
        .current_dir(repo())
        .env("DEMO_DIR", dir)
        .env("POSTERN_BIN", env!("CARGO_BIN_EXE_postern"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, port) in ports {
        command.env(name, port.to_string());
    }
    let mut child = command.spawn().expect("run examples/kubernetes/run.sh");
    let output = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().expect("stdout"), output.clone(), "");
    collect(child.stderr.take().expect("stderr"), output.clone(), "[stderr] ");
    Demo { child, output }
}

/// Appends the lines of `from` to `output`, each after `tag`.
fn collect(from: impl std::io::Read + Send + 'static, output: Arc<Mutex<Vec<String>>>, tag: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            output.lock().expect("output").push(format!("{tag}{line}"));
        }
    });
}

/// Runs a command line as printed (words split on spaces), bounded.
fn run_printed(line: &str) -> (bool, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {line:?}: {e}"));
    let deadline = Instant::now() + KUBECTL_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{line:?} took over {KUBECTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A client that trusts only the demo's CA and sends the demo's host
/// names to loopback, as a browser that was told to trust the CA would.
/// `browser`: asks for HTML first, as a navigation does.
fn client(ca_pem: &[u8], port: u16, browser: bool) -> reqwest::Client {
    support::init_crypto();
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("the demo CA is PEM");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .cookie_store(true)
        .default_headers(if browser {
            reqwest::header::HeaderMap::from_iter([(
                reqwest::header::ACCEPT,
                reqwest::header::HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
            )])
        } else {
            reqwest::header::HeaderMap::new()
        })
        .redirect(reqwest::redirect::Policy::none())
        .timeout(KUBECTL_TIMEOUT);
    for host in ["app", "api", "api2", "hello", "authenticate"] {
        builder = builder.resolve(&format!("{host}.{PARENT}"), addr);
    }
    builder.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_demo_serves_the_guide_from_the_cluster_and_stops_on_ctrl_c() {
    // Built (or found in the cache) before the clock starts, as for the
    // other k8s tests; run.sh then finds them cached.
    let tools = control_plane::tools_dir();
    let started = Instant::now();
    let mut ports = BTreeMap::new();
    while ports.len() < PORTS.len() {
        let port = support::free_port();
        if !ports.values().any(|&p| p == port) {
            ports.insert(PORTS[ports.len()], port);
        }
    }
    let port = ports["DEMO_PORT"];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = start_demo(&ports, dir.path());

    let url = format!("https://app.{PARENT}:{port}/");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let output = demo.output();
        if output.contains("Ctrl-C stops everything.") {
            break;
        }
        let exited = demo.child.try_wait().expect("try_wait");
        assert!(exited.is_none(), "run.sh exited ({exited:?}) before it was up:\n{output}");
        assert!(Instant::now() < deadline, "run.sh did not come up within {START_TIMEOUT:?}:\n{output}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = demo.output();
    println!("run.sh up in {:.1}s", started.elapsed().as_secs_f64());
    assert!(output.contains(&format!("Open   {url}")), "run.sh does not print {url}:\n{output}");
    assert!(output.contains("builds kube-apiserver, etcd, kubectl and helm"), "the first-run note:\n{output}");

    // What Postern serves, from the cluster's objects.
    let ca = std::fs::read(dir.path().join("certs/ca.pem")).expect("the demo CA");
    let (client, browser) = (client(&ca, port, false), client(&ca, port, true));
    let app_origin = format!("https://app.{PARENT}:{port}");
    let resp = client.get(&url).header("accept", "text/html").send().await.expect("GET app");
    assert_eq!(resp.status(), 302, "the app (Ingress app) redirects to sign-in");
    let location = resp.headers()["location"].to_str().expect("location").to_string();
    assert!(location.starts_with(&format!("https://authenticate.{PARENT}:{port}/")), "{location}");

    let resp = client
        .post(format!("https://api.{PARENT}:{port}/"))
        .header("origin", &app_origin)
        .send()
        .await
        .expect("POST api");
    assert_eq!(resp.status(), 401, "the API (Ingress api) without a session");
    assert_eq!(resp.headers()["access-control-allow-origin"], app_origin.as_str(), "the guide's hand-set header");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");

    let resp = client
        .request(reqwest::Method::OPTIONS, format!("https://api2.{PARENT}:{port}/"))
        .header("origin", &app_origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-pomerium-authorization")
        .send()
        .await
        .expect("preflight api2");
    assert_eq!(resp.status(), 204, "api2.'s preflight, answered by Postern's cors policy (postern.dev/cors)");
    assert_eq!(resp.headers()["access-control-allow-origin"], app_origin.as_str());
    assert_eq!(resp.headers()["access-control-max-age"], "600");

    let resp = client.get(format!("https://hello.{PARENT}:{port}/")).send().await.expect("GET hello");
    assert_eq!(resp.status(), 200, "the Route hello");
    assert_eq!(resp.text().await.expect("body"), "hello from a Route\n");

    // Signed in as alice through the demo's IdP, the app and the API
    // answer from their processes (the ExternalName Services), and the
    // API verifies Postern's identity assertion.
    let idp = support::idp::Idp::attach(&format!("http://127.0.0.1:{}", ports["DEMO_IDP_PORT"]));
    let trace = support::idp::browse(&browser, &url, Some(("alice", "password")), &idp).await;
    assert_eq!((trace.final_status, trace.final_url.as_str()), (200, url.as_str()), "{}", trace.describe());
    assert!(trace.final_body.contains("<title>Example Application</title>"), "the app's page:\n{}", trace.describe());
    let resp = browser
        .post(format!("https://api.{PARENT}:{port}/"))
        .header("origin", &app_origin)
        .header("accept", "application/json")
        .send()
        .await
        .expect("POST api, signed in");
    assert_eq!(resp.status(), 200, "the API with the shared cookie (cookie_domain)");
    let body: serde_json::Value = resp.json().await.expect("the API answers JSON");
    assert_eq!(body["user"]["email"], "alice@example.com", "{body}");
    assert_eq!(body["assertion_verified"], true, "{body}");

    // The printed kubectl lines, as printed.
    let kubectl = tools.join("kubectl").display().to_string();
    let line = |needle: &str| {
        output
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&kubectl) && l.contains(needle))
            .unwrap_or_else(|| panic!("run.sh prints no `kubectl ... {needle}` line:\n{output}"))
            .to_string()
    };
    let get_routes = line("get routes");
    assert!(get_routes.contains(&format!("--kubeconfig {}", dir.path().join("cluster/kubeconfig").display())));
    let (ok, out) = tokio::task::block_in_place(|| run_printed(&get_routes));
    assert!(ok, "{get_routes}: {out}");
    let hello = out.lines().find(|l| l.split_whitespace().nth(1) == Some("hello")).unwrap_or("");
    assert!(hello.contains(&format!("https://hello.{PARENT}")) && hello.contains("True"), "{get_routes}:\n{out}");
    let describe = line("describe ingress");
    let (ok, out) = tokio::task::block_in_place(|| run_printed(&describe));
    assert!(ok, "{describe}: {out}");
    let named = |key: &str, value: &str| {
        out.lines().any(|l| l.trim_start().starts_with(key) && l.split_whitespace().last() == Some(value))
    };
    assert!(named("Name:", "api2") && named("Ingress Class:", "postern"), "{describe}:\n{out}");
    assert!(out.contains("ingress.pomerium.io/allow_any_authenticated_user: true"), "{describe}:\n{out}");

    // Ctrl-C: SIGINT to the foreground process group, as a terminal sends it.
    let stopping = Instant::now();
    // SAFETY: signals the group this test started.
    assert_eq!(unsafe { libc::kill(-demo.pgid(), libc::SIGINT) }, 0);
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            stopping.elapsed() < STOP_TIMEOUT,
            "run.sh still runs {STOP_TIMEOUT:?} after SIGINT:\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = demo.output();
    println!("stopped in {:.1}s", stopping.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(130), "run.sh's exit after Ctrl-C:\n{output}");
    assert!(output.contains("stopped"), "{output}");
    // The processes it started may take a moment to be reaped by init.
    let deadline = Instant::now() + Duration::from_secs(5);
    while demo.group_alive() {
        let left = Command::new("pgrep").arg("-a").arg("-g").arg(demo.pgid().to_string()).output().expect("pgrep");
        assert!(Instant::now() < deadline, "left running after Ctrl-C:\n{}", String::from_utf8_lossy(&left.stdout));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, port) in &ports {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "{name} {port} still accepts connections after Ctrl-C"
        );
    }
    println!("whole test {:.1}s", started.elapsed().as_secs_f64());
}
