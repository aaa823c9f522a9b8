//! The cross-origin guide (`examples/cross-origin`) in a real browser.
//!
//! Starts the bundled OpenID provider, the example's app and API servers
//! and one Postern per example config (the guide's `config.yaml`, each
//! solution's variant, and `demo.yaml` with everything), all on free ports
//! (the configs are templated: port, IdP, upstreams, certificate paths),
//! then runs `tests/browser/cross_origin.mjs`: Debian's Chromium signs in
//! through the IdP's login page and checks every approach, in the page and
//! at the API. Needs `/usr/bin/chromium`: run `scripts/install-test-deps.sh`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Postern;
use support::idp::{Idp, IdpClient};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Phase of the browser test → example config it runs against.
const PHASES: [(&str, &str); 5] = [
    ("guide", "config.yaml"),
    ("single-domain", "single-domain.yaml"),
    ("header", "header.yaml"),
    ("shared-cookie", "shared-cookie.yaml"),
    ("demo", "demo.yaml"),
];
const CLIENT_ID: &str = "cross-origin-demo";
const CLIENT_SECRET: &str = "cross-origin-demo-secret";
const PARENT: &str = "cors.localhost";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const NPM_TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_dir() -> PathBuf {
    repo().join("examples/cross-origin")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `make-certs.sh`: a throwaway CA and a certificate for `*.cors.localhost`.
fn make_certs(out: &Path) {
    let status = Command::new("bash")
        .arg(example_dir().join("make-certs.sh"))
        .arg(out)
        .arg(PARENT)
        .status()
        .expect("run make-certs.sh (needs bash and openssl)");
    assert!(status.success(), "make-certs.sh failed ({status}); is openssl installed?");
}

/// An example config for this run: the listen port, the IdP, the upstream
/// addresses and the certificate directory replaced. Every placeholder must
/// be there, so a config that drifts fails here rather than silently.
fn template(name: &str, port: u16, idp: &str, app: &str, api: &str, certs: &Path) -> String {
    let text = std::fs::read_to_string(example_dir().join(name)).expect("read example config");
    let replacements = [
        ("http://127.0.0.1:8100", idp.to_string()),
        ("http://127.0.0.1:8101", app.to_string()),
        ("http://127.0.0.1:8102", api.to_string()),
        (":8443", format!(":{port}")),
        (".demo/", format!("{}/", certs.display())),
    ];
    let mut out = text;
    for (from, to) in replacements {
        assert!(out.contains(from), "{name} has no {from:?}");
        out = out.replace(from, &to);
    }
    out
}

/// A Node server of the example, killed on drop. It prints one JSON line
/// when listening, and exits by itself if this process goes away (its
/// stdin closes).
struct NodeServer {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: serde_json::Value,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeServer {
    fn start(script: &str, envs: &[(&str, String)]) -> NodeServer {
        let mut command = Command::new("node");
        command
            .arg(example_dir().join(script))
            .current_dir(example_dir())
            .env("EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn node {script}: {e} (is Node.js installed?)"));
        let stdin = child.stdin.take();
        let logs = Arc::new(Mutex::new(Vec::new()));
        spawn_reader(child.stderr.take().expect("stderr"), logs.clone(), None);
        let (tx, rx) = mpsc::channel();
        spawn_reader(child.stdout.take().expect("stdout"), logs.clone(), Some(tx));
        let ready = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("{script} printed {line:?}: {e}")),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{script} did not start within {START_TIMEOUT:?}; log:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        NodeServer { child, stdin, ready, logs }
    }

    fn url(&self, key: &str) -> String {
        self.ready[key].as_str().unwrap_or_else(|| panic!("no {key:?} in {}", self.ready)).to_string()
    }

    fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `from` line by line into `logs` (and the lines to `tx`).
fn spawn_reader(
    from: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            logs.lock().expect("logs").push(line);
        }
    })
}

/// `npm ci` in `dir` unless `marker` (a package of it) is installed.
fn npm_ci_if_missing(dir: &Path, marker: &str) {
    if dir.join("node_modules").join(marker).join("package.json").exists() {
        return;
    }
    eprintln!("npm ci in {} (or run scripts/install-test-deps.sh)", dir.display());
    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("run npm ci in {}: {e}; run scripts/install-test-deps.sh", dir.display()));
    let deadline = Instant::now() + NPM_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait npm") {
            assert!(status.success(), "npm ci in {} failed; run scripts/install-test-deps.sh", dir.display());
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("npm ci in {} took over {NPM_TIMEOUT:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` to completion within `timeout`: (exit code, output).
fn run_bounded(mut command: Command, timeout: Duration) -> (Option<i32>, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn node");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let out = spawn_reader(child.stdout.take().expect("stdout"), logs.clone(), None);
    let err = spawn_reader(child.stderr.take().expect("stderr"), logs.clone(), None);
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            // SIGTERM first: playwright then closes the browser it started.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = out.join();
    let _ = err.join();
    let text = logs.lock().expect("logs").join("\n");
    (code, text)
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn example_configs_pass_postern_check_and_keep_the_guide() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certs(&dir.path().join(".demo"));
    for (_, name) in PHASES {
        std::fs::copy(example_dir().join(name), dir.path().join(name)).expect("copy config");
        let path = dir.path().join(name);
        let (code, stdout, stderr) =
            support::run_cli(&["check", "--config", path.to_str().expect("utf-8 path")], dir.path());
        assert_eq!(code, 0, "postern check {name}:\n{stdout}{stderr}");
    }
    // The problem is shown with the guide's config as it is: its routes and
    // headers, no shared cookie, the cookie hidden from JavaScript.
    let guide = std::fs::read_to_string(example_dir().join("config.yaml")).expect("read config.yaml");
    for line in [
        "cookie_secret: V2JBZk0zWGtsL29UcFUvWjVDWWQ2UHExNXJ0b2VhcDI=",
        "  - from: https://api.cors.localhost\n",
        "    cors_allow_preflight: true\n",
        "      'Access-Control-Allow-Credentials': 'true'\n",
        "      'Access-Control-Allow-Origin': 'https://app.cors.localhost:8443'\n",
        "      'Access-Control-Allow-Headers': 'X-Pomerium-Authorization'\n",
        "  - from: https://app.cors.localhost\n",
    ] {
        assert!(guide.contains(line), "config.yaml lost the guide's {line:?}");
    }
    let settings: Vec<&str> = guide.lines().filter(|l| !l.starts_with('#') && !l.starts_with(' ')).collect();
    assert!(!settings.iter().any(|l| l.starts_with("cookie_domain") || l.starts_with("cookie_http_only")), "{guide}");
}

#[test]
fn cross_origin_guide_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-test-deps.sh (installs Debian's chromium and the npm packages)"
    );
    npm_ci_if_missing(&repo().join("tests/browser"), "playwright-core");
    npm_ci_if_missing(&example_dir(), "jose");
    let started = Instant::now();

    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join(".demo");
    make_certs(&certs);
    let ports: Vec<u16> = PHASES.iter().map(|_| free_port()).collect();
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

    let app = NodeServer::start("app-server.mjs", &[("PORT", "0".into())]);
    let jwks: Vec<String> = ports.iter().map(|&p| format!("{}/.well-known/postern/jwks.json", auth(p))).collect();
    let api = NodeServer::start(
        "api-server.mjs",
        &[
            ("PORT", "0".into()),
            ("ADMIN_PORT", "0".into()),
            ("POSTERN_JWKS_URLS", jwks.join(",")),
            ("POSTERN_CA", certs.join("ca.pem").display().to_string()),
        ],
    );

    let posterns: Vec<(&str, Postern)> = PHASES
        .iter()
        .zip(&ports)
        .map(|(&(phase, file), &port)| {
            let config = template(file, port, &idp.issuer, &app.url("app"), &api.url("api"), &certs);
            (phase, Postern::start(&config))
        })
        .collect();
    let phases: Vec<String> = posterns.iter().map(|(phase, p)| format!("{phase}={}", p.addr.port())).collect();
    println!("servers up in {:.1}s: {}", started.elapsed().as_secs_f64(), phases.join(", "));

    let browser_started = Instant::now();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/browser/cross_origin.mjs"))
        .current_dir(repo())
        .env("CROSS_ORIGIN_PORTS", phases.join(","))
        .env("CROSS_ORIGIN_PARENT", PARENT)
        .env("API_ADMIN_URL", api.url("admin"))
        .env("CHROMIUM", CHROMIUM)
        .env("BROWSER_TEST_TIMEOUT_MS", (BROWSER_TIMEOUT.as_millis() - 10_000).to_string());
    let (code, output) = run_bounded(command, BROWSER_TIMEOUT);
    println!("---- tests/browser/cross_origin.mjs ----\n{output}\n---- end ----");
    println!(
        "browser test: {:.1}s (whole test {:.1}s)",
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if code != Some(0) {
        let mut report = String::new();
        for (phase, p) in &posterns {
            report.push_str(&format!("---- postern {phase} (last lines) ----\n{}\n", tail(&p.logs(), 40)));
        }
        report.push_str(&format!("---- api-server ----\n{}\n", api.logs()));
        report.push_str(&format!("---- app-server ----\n{}\n", app.logs()));
        report.push_str(&format!("---- IdP (last lines) ----\n{}\n", tail(&idp.logs(), 40)));
        let _ = std::io::stderr().write_all(report.as_bytes());
        panic!("the browser test failed (exit {code:?}); its output is above");
    }
}
