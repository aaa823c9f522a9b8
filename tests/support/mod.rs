//! Shared harness for integration tests: a real `postern` process, real
//! upstream servers on loopback, a real TLS client.
#![allow(dead_code)]

pub mod idp;
pub mod load;
pub mod node;
pub mod redirect_payloads;
pub mod supervised;
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
#[derive(Default)]
pub struct Options {
    pub extra_args: Vec<String>,
    /// Files written next to the config before start (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Environment variables set for the process (after the default
    /// `RUST_LOG`, so they may replace it).
    pub env: Vec<(String, String)>,
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
        let mut child = postern_command()
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config_path)
            .args(&options.extra_args)
            .env("RUST_LOG", "info,postern=debug")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A self-signed certificate for `names`, as (cert PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("generate cert");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

// ---- Operations helpers: logs as JSON events, metrics, runs that must exit ----

/// Every log line that is a JSON object, in order.
pub fn log_events(p: &Postern) -> Vec<serde_json::Value> {
    p.logs().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Log events after the first `skip` lines whose `message` is `message`.
pub fn events_named(p: &Postern, skip: usize, message: &str) -> Vec<serde_json::Value> {
    p.logs()
        .iter()
        .skip(skip)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == message)
        .collect()
}

/// Waits (without blocking the async runtime) for a log event after the first
/// `skip` lines with `message`; panics with the log after `timeout`.
pub async fn wait_for_event(p: &Postern, skip: usize, message: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = events_named(p, skip, message).into_iter().next() {
            return e;
        }
        if Instant::now() > deadline {
            panic!("no log event {message:?} within {timeout:?}; log:\n{}", p.logs().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `http://addr/path` (the metrics listener): (status, body).
pub async fn get_plain(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = client_to(addr).get(format!("http://{addr}{path}")).send().await.expect("plain GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("plain body"))
}

/// The proxy's `/metrics` text; the YAML must set `metrics_address`.
pub async fn scrape(p: &Postern) -> String {
    let addr = p.metrics.expect("metrics_address is set in the config");
    let (status, body) = get_plain(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    body
}

/// The sum of every sample of `name` whose labels include all of `labels`;
/// `None` if there is no such sample. `name` is the full sample name
/// (`postern_http_requests_total`, `..._bucket`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(sv) => sv,
            None => continue,
        };
        let (sample, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if sample != name {
            continue;
        }
        let found = parse_labels(label_text);
        if labels.iter().all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v))
            && let Ok(v) = value.parse::<f64>()
        {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Runs `postern --log-format json serve --config <dir>/config.yaml <extra>`
/// with `config` written as is, expecting it to exit by itself within
/// `timeout`. Returns (exit code, stderr); `None` (after killing it) if it
/// was still running.
pub fn serve_until_exit(config: &str, extra: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("write config");
    let path = path.to_str().expect("utf-8 temp path");
    let mut args = vec!["--log-format", "json", "serve", "--config", path];
    args.extend_from_slice(extra);
    run_cli_bounded(&args, dir.path(), timeout)
}

/// Runs `postern` with `args`, expecting it to exit within `timeout`.
/// Returns (exit code, stderr); `None` (after killing it) if it was still running.
pub fn run_cli_bounded(args: &[&str], cwd: &Path, timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postern");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap_or_default())
}

/// The Postern binary, or, with `POSTERN_TEST_WRAPPER` set (e.g.
/// `heaptrack -o /tmp/postern` or `perf record -g -o /tmp/perf.data --`),
/// the binary run under that command: for profiling a test or benchmark's
/// Postern as it runs there. The pid is then the wrapper's.
pub fn postern_command() -> Command {
    match std::env::var("POSTERN_TEST_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().expect("a wrapper command"));
            command.args(words).arg(env!("CARGO_BIN_EXE_postern"));
            command
        }
        _ => Command::new(env!("CARGO_BIN_EXE_postern")),
    }
}
