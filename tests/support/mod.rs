//! Shared harness for integration tests: a real `postern` process, real
//! upstream servers on loopback, a real TLS client.
#![allow(dead_code)]

pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Installs ring as rustls' process-wide provider (reqwest is built without one).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A running `postern serve`, killed on drop.
pub struct Postern {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The main listener (found in the log, so the OS can pick the port).
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    tls: bool,
}

/// How to start the proxy.
pub struct Options {
    pub extra_args: Vec<String>,
    /// Files written next to the config before start (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options { extra_args: Vec::new(), files: Vec::new() }
    }
}

impl Postern {
    /// Starts postern with `config` (YAML). Unless the YAML sets `address`,
    /// the proxy listens on 127.0.0.1 on a port the OS picks.
    pub fn start(config: &str) -> Postern {
        Self::start_with(config, Options::default())
    }

    pub fn start_with(config: &str, options: Options) -> Postern {
        init_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, contents) in &options.files {
            std::fs::write(dir.path().join(name), contents).expect("write file");
        }
        let config_path = dir.path().join("config.yaml");
        let mut text = String::new();
        if !config.lines().any(|l| l.starts_with("address:")) {
            text.push_str("address: 127.0.0.1:0\n");
        }
        text.push_str(config);
        std::fs::write(&config_path, &text).expect("write config");
        let tls = !config.lines().any(|l| l.trim() == "insecure_server: true");
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config_path)
            .args(&options.extra_args)
            .env("RUST_LOG", "info,postern=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postern");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        let mut addr = None;
        let mut metrics = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("postern did not start listening; log:\n{}", logs.lock().expect("log lock").join("\n"));
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let parsed = v["address"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
            match v["message"].as_str() {
                Some("proxy listening") => addr = parsed,
                Some("metrics listening") => metrics = parsed,
                _ => {}
            }
        }
        // Keep draining the channel so the reader thread never blocks.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Postern { child: Some(child), dir, config_path, addr: addr.expect("address found"), metrics, logs, tls }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `https://host:port/path` (or http for `insecure_server`).
    pub fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    /// A client that sends every host name to this proxy and accepts its
    /// self-signed certificate. No redirects are followed.
    pub fn client(&self) -> reqwest::Client {
        client_to(self.addr)
    }

    /// Replaces the config file (the proxy reloads on its own).
    pub fn write_config(&self, config: &str) {
        let mut text = format!("address: {}\n", self.addr);
        text.push_str(config);
        // Write then rename, as editors and ConfigMaps do.
        let tmp = self.dir.path().join("config.yaml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Waits until a log line contains `needle` (after `skip` lines).
    pub fn wait_for_log(&self, needle: &str, skip: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs().iter().skip(skip).find(|l| l.contains(needle)) {
                return line.clone();
            }
            if Instant::now() > deadline {
                panic!("no log line containing {needle:?} within {timeout:?}; log:\n{}", self.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the proxy process, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field")
}

/// A reqwest client that resolves every name to `addr` and trusts any certificate.
pub fn client_to(addr: SocketAddr) -> reqwest::Client {
    init_crypto();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(AllTo(addr)))
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

struct AllTo(SocketAddr);

impl reqwest::dns::Resolve for AllTo {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

/// Runs `postern` with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postern")).args(args).current_dir(cwd).output().expect("run postern");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A self-signed certificate for `names`, as (cert PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("generate cert");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}
