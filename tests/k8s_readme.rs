//! The README's "Kubernetes" section as a user follows it: every command of
//! its `sh` blocks, read from README.md when the test runs, typed into bash
//! in order against the real control plane of tests/support — with kubectl,
//! helm and postern on PATH, and `~/.kube/config` naming the cluster
//! `my-cluster` as the README assumes. What the README says each command
//! shows is checked after it. The chart's Deployment is played by a local
//! Postern run as the chart's ServiceAccount (support/chart_pod.rs), since
//! that control plane has no nodes.

#[path = "support/chart_pod.rs"]
mod chart_pod;
#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chart_pod::ChartPod;
use support::Postern;

/// The commands of every `sh` block in README.md's "## Kubernetes" section,
/// in order, with the `###` heading each is under.
fn readme_commands() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let mut commands = Vec::new();
    let (mut in_section, mut in_sh, mut heading) = (false, false, String::new());
    for line in readme.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            in_section = title.trim() == "Kubernetes";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            heading = title.trim().to_string();
        } else if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
        } else if in_sh && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            commands.push((heading.clone(), line.trim().to_string()));
        }
    }
    commands
}

/// A user's shell: a working directory holding the repository's `charts/`
/// and `examples/` (so paths read as in the README), a HOME of its own with
/// `~/.kube/config`, and PATH with the tools and postern first.
struct Shell {
    work: PathBuf,
    home: PathBuf,
    path: String,
}

impl Shell {
    fn new(plane: &control_plane::ControlPlane, root: &Path) -> Shell {
        let work = root.join("work");
        let home = root.join("home");
        std::fs::create_dir_all(&work).expect("work dir");
        std::fs::create_dir_all(home.join(".kube")).expect("~/.kube");
        for dir in ["charts", "examples"] {
            std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), work.join(dir))
                .expect("symlink");
        }
        let config = home.join(".kube/config");
        std::fs::copy(&plane.kubeconfig, &config).expect("copy kubeconfig");
        let config_arg = format!("--kubeconfig={}", config.display());
        let (ok, current, err) = plane.kubectl(&[&config_arg, "config", "current-context"], None);
        assert!(ok, "{err}");
        let (ok, _, err) =
            plane.kubectl(&[&config_arg, "config", "rename-context", current.trim(), "my-cluster"], None);
        assert!(ok, "{err}");
        let postern_dir = Path::new(env!("CARGO_BIN_EXE_postern")).parent().expect("bin dir");
        let path = format!(
            "{}:{}:{}",
            control_plane::tools_dir().display(),
            postern_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Shell { work, home, path }
    }

    fn command(&self, line: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", line])
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env("PATH", &self.path)
            .env_remove("KUBECONFIG")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `line` to its end; returns (success, stdout + stderr).
    fn run(&self, line: &str) -> (bool, String) {
        let out = self.command(line).output().expect("run bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs `line` until its output satisfies `want` (20 s at most).
    async fn run_until(&self, line: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out) = self.run(line);
            if ok && want(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: `{line}` printed\n{out}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// GETs `https://host/` through `p` until `want` accepts the answer (20 s
/// at most); returns (status, headers, body).
async fn answer_until(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(url).send().await {
            Ok(resp) => {
                let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
                let body = resp.text().await.unwrap_or_default();
                if want(status, &body) {
                    return (status, headers, body);
                }
                last = format!("{status} {body}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: last answer {last}");
}

/// Postern's own answer for an Ingress whose Service has no ready
/// endpoint to send to (the walkthrough's `hello` has no pods here).
fn is_backend_unavailable(status: u16, body: &str) -> bool {
    matches!(status, 502 | 503) && body.contains("\"error\"")
}

/// A `postern serve` line of the README, run as typed: in the background
/// until `/readyz` says ready and the walkthrough's Ingress is served, then
/// SIGTERM, which must end it with status 0.
async fn serve_briefly(shell: &Shell, line: &str, address: u16, metrics: u16) {
    let mut child = shell
        .command(&format!("exec {line}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postern serve");
    let log = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || std::io::read_to_string(log).unwrap_or_default());
    let ready = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ready.get(format!("http://127.0.0.1:{metrics}/readyz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{line}` did not turn ready; log:\n{}", log.join().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = support::client_to(format!("127.0.0.1:{address}").parse().expect("addr"));
    answer_until(&client, &format!("https://hello.example.test:{address}/"), line, is_backend_unavailable).await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{line}` did not exit within 15 s of SIGTERM; log:\n{}", log.join().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = log.join().unwrap_or_default();
    assert!(status.success(), "`{line}` exited with {status} after SIGTERM; log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_kubernetes_section_works_as_shown() {
    let plane = control_plane::shared();
    let root = tempfile::tempdir().expect("dir");
    let shell = Shell::new(plane, root.path());
    // The settings file the README's `postern serve` lines name.
    let (address, metrics) = (support::free_port(), support::free_port());
    std::fs::write(
        shell.work.join("settings.yaml"),
        format!("address: 127.0.0.1:{address}\nmetrics_address: 127.0.0.1:{metrics}\n"),
    )
    .expect("settings.yaml");

    let commands = readme_commands();
    assert!(commands.len() >= 15, "the README's Kubernetes section lost its commands: {commands:?}");
    // What each command the README shows is checked against; every one of
    // these must be met, so a command dropped from the README fails here.
    let mut checked = BTreeSet::new();
    let mut stand_in: Option<Postern> = None;
    let mut hello_before = None;
    for (heading, line) in &commands {
        let at = format!("README, {heading}: `{line}`");
        if line.starts_with("postern serve") {
            serve_briefly(&shell, line, address, metrics).await;
            checked.insert(if line.contains("--context my-cluster") { "serve --context" } else { "serve" });
            continue;
        }
        if line.starts_with("helm uninstall") {
            // The pod goes with the Deployment.
            drop(stand_in.take());
        }
        if line.starts_with("kubectl get events") {
            // The Event is written by the controller, not by kubectl: the
            // README says it appears within a second.
            let out =
                shell.run_until(line, &at, |out| out.contains("postern.dev/allow_public_unauthenticated_acess")).await;
            assert!(out.contains("did you mean `postern.dev/allow_public_unauthenticated_access`? (the last valid version keeps serving)"), "{at}:\n{out}");
            let (ok, described) = shell.run("kubectl describe ingress -n web hello");
            assert!(ok && described.contains("allow_public_unauthenticated_acess"), "describe ingress:\n{described}");
            // The last valid version keeps serving.
            let p = stand_in.as_ref().expect("the chart's pod runs");
            let (status, _, _) =
                answer_until(&p.client(), &p.url("hello.example.test", "/"), &at, is_backend_unavailable).await;
            assert_eq!(Some(status), hello_before, "{at}: the Ingress's answer changed after a bad annotation");
            checked.insert("events");
            continue;
        }
        let (ok, out) = shell.run(line);
        assert!(ok, "{at} failed:\n{out}");
        match line.as_str() {
            l if l.starts_with("helm install") => {
                assert!(out.contains("STATUS: deployed") && out.contains("kubectl get routes"), "{at}:\n{out}");
                let pod = ChartPod::of(plane, "postern-system", "postern", root.path()).await;
                stand_in = Some(Postern::start_with(&pod.config, pod.options()));
                checked.insert("install");
            }
            "kubectl get routes -n web" => {
                assert!(
                    out.lines().any(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        cols.first() == Some(&"status")
                            && cols.get(1) == Some(&"https://status.example.test")
                            && cols.contains(&"True")
                    }),
                    "{at}:\n{out}"
                );
                let p = stand_in.as_ref().expect("the chart's pod runs");
                let (_, _, body) =
                    answer_until(&p.client(), &p.url("status.example.test", "/"), &at, |s, _| s == 200).await;
                assert_eq!(body, "ok\n", "{at}: the Route's answer");
                let (status, _, _) =
                    answer_until(&p.client(), &p.url("hello.example.test", "/"), &at, is_backend_unavailable).await;
                hello_before = Some(status);
                checked.insert("routes");
            }
            l if l.starts_with("kubectl annotate") && l.ends_with("_acess-") => {
                shell
                    .run_until("kubectl get ingress -n web hello -o jsonpath={.metadata.annotations}", &at, |o| {
                        !o.contains("_acess")
                    })
                    .await;
                let p = stand_in.as_ref().expect("the chart's pod runs");
                let (status, _, _) =
                    answer_until(&p.client(), &p.url("hello.example.test", "/"), &at, is_backend_unavailable).await;
                assert_eq!(Some(status), hello_before, "{at}");
                checked.insert("fixed");
            }
            l if l.starts_with("kubectl describe ingress") => {
                assert!(out.contains("hello.example.test"), "{at}:\n{out}");
                checked.insert("describe");
            }
            l if l.starts_with("helm upgrade") => {
                assert!(out.contains("REVISION: 2"), "{at}:\n{out}");
                let (_, replicas) =
                    shell.run("kubectl get deployment postern -n postern-system -o jsonpath={.spec.replicas}");
                assert_eq!(replicas, "2", "{at}");
                checked.insert("upgrade");
            }
            l if l.starts_with("helm uninstall") => {
                shell
                    .run_until("kubectl get -n postern-system deployment/postern secret/postern configmap/postern --ignore-not-found -o name", &at, |o| {
                        o.trim().is_empty()
                    })
                    .await;
                checked.insert("uninstall");
            }
            l if l.starts_with("kubectl delete -f charts/postern/crds/") => {
                shell
                    .run_until("kubectl get crd --ignore-not-found -o name routes.postern.dev", &at, |o| {
                        o.trim().is_empty()
                    })
                    .await;
                checked.insert("delete crd");
            }
            l if l.starts_with("postern crd | kubectl apply") => {
                let (ok, out) = shell.run("kubectl get crd routes.postern.dev");
                assert!(ok, "{at}: {out}");
                checked.insert("postern crd");
            }
            l if l.starts_with("postern routes") => {
                assert!(out.contains("hello.example.test"), "{at}:\n{out}");
                checked.insert("postern routes");
            }
            _ => {}
        }
    }
    let want: BTreeSet<&str> = [
        "install",
        "routes",
        "describe",
        "events",
        "fixed",
        "upgrade",
        "uninstall",
        "delete crd",
        "postern crd",
        "serve",
        "serve --context",
        "postern routes",
    ]
    .into();
    assert_eq!(checked, want, "README commands this test checks, against those it found");
    let _ = shell.run("kubectl delete namespace web --wait=false");
}
