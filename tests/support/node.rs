//! The cross-origin guide's pieces for tests that run it
//! (`tests/cross_origin.rs`, `tests/k8s_cross_origin.rs`): the example's
//! Node servers, its certificates, bounded runs of Node scripts (the
//! browser test) and the npm packages they need.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a Node server may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const NPM_TIMEOUT: Duration = Duration::from_secs(600);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/cross-origin`.
pub fn example_dir() -> PathBuf {
    repo().join("examples/cross-origin")
}

/// `make-certs.sh`: a throwaway CA and a certificate for `*.<parent>`.
pub fn make_certs(out: &Path, parent: &str) {
    let status = Command::new("bash")
        .arg(example_dir().join("make-certs.sh"))
        .arg(out)
        .arg(parent)
        .status()
        .expect("run make-certs.sh (needs bash and openssl)");
    assert!(status.success(), "make-certs.sh failed ({status}); is openssl installed?");
}

/// A Node server of the example, killed on drop. It prints one JSON line
/// when listening, and exits by itself if this process goes away (its
/// stdin closes).
pub struct NodeServer {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: serde_json::Value,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeServer {
    /// Starts `examples/cross-origin/<script>` with `envs`; waits for its
    /// JSON line.
    pub fn start(script: &str, envs: &[(&str, String)]) -> NodeServer {
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

    /// A URL from its JSON line (`app`, `api`, `admin`).
    pub fn url(&self, key: &str) -> String {
        self.ready[key].as_str().unwrap_or_else(|| panic!("no {key:?} in {}", self.ready)).to_string()
    }

    pub fn logs(&self) -> String {
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
pub fn spawn_reader(
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

/// Runs `command` to completion within `timeout`: (exit code, output).
pub fn run_bounded(mut command: Command, timeout: Duration) -> (Option<i32>, String) {
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

/// The last `n` lines.
pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panics unless `marker` (a package of `dir`) is installed.
pub fn require_installed(dir: &Path, marker: &str) {
    assert!(
        dir.join("node_modules").join(marker).join("package.json").exists(),
        "{}/node_modules/{marker} is missing: run scripts/install-test-deps.sh",
        dir.display()
    );
}

/// `npm ci` in `dir` unless `marker` (a package of it) is installed.
pub fn npm_ci_if_missing(dir: &Path, marker: &str) {
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
