//! The container image (`Dockerfile`): hadolint finds nothing in it, and its
//! final stage, built with buildah, holds a binary that runs from the
//! image's own root filesystem as the image's user.
//!
//! No container engine runs and no registry is reachable where these tests
//! run, so neither base image (`rust:*-slim-bookworm`,
//! `gcr.io/distroless/cc-debian12:nonroot`) can be pulled, and the build
//! stage (`cargo build --release` inside the Rust image) is not run here.
//! What is tested instead: the Dockerfile's final stage, as written from its
//! last `FROM` on, with two lines replaced: `FROM scratch` for the
//! distroless base, and the `COPY --from=build` of the binary by a copy of
//! a root filesystem made here (the binary cargo built for this test,
//! debug symbols stripped as the build stage strips them, plus the shared
//! libraries and the loader `ldd` names, which distroless `cc` ships). It
//! is built by Debian's buildah daemonless (vfs storage, chroot isolation,
//! in a temporary storage root), then checked: the image's configuration
//! (entrypoint, command, user, ports, labels) and, through `buildah mount`,
//! its `/usr/local/bin/postern` run with `chroot` as 65532:65532:
//! `--version`, `crd`, and `serve` with the quickstart config.
//!
//! Needs root (buildah's vfs storage and `chroot`), buildah and hadolint:
//! `scripts/install-test-deps.sh` installs both. A missing tool fails the
//! test, naming what to run; nothing is skipped.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "FROM gcr.io/distroless/cc-debian12:nonroot";
const COPY_BINARY: &str = "COPY --from=build /out/postern /usr/local/bin/postern";
const BINARY: &str = "/usr/local/bin/postern";
const USER: &str = "65532:65532";
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const IMAGE: &str = "localhost/postern:container-image-test";
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const SERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// What `gcr.io/distroless/cc-debian12` ships (glibc, libgcc, libstdc++,
/// OpenSSL): the binary may link these and nothing else.
const DISTROLESS_CC_LIBS: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libssl.so.3",
    "libcrypto.so.3",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` to completion within `timeout`, or panics naming it.
fn run(mut command: Command, timeout: Duration) -> Output {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let readers = [child.stdout.take().map(read_all), child.stderr.take().map(read_all)];
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took over {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|r| r.map(|h| h.join().unwrap_or_default()).unwrap_or_default());
    Output { status, stdout, stderr }
}

fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// hadolint: on PATH, or where `scripts/install-test-deps.sh` puts it.
fn hadolint() -> PathBuf {
    let cache = std::env::var_os("POSTERN_TOOLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/postern-tools"));
    let installed = cache.join("hadolint-2.15.1/bin/hadolint");
    if installed.exists() {
        return installed;
    }
    if let Some(found) = which("hadolint") {
        return found;
    }
    panic!("hadolint is missing (looked in {} and PATH): run scripts/install-test-deps.sh", installed.display());
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[test]
fn dockerfile_is_hadolint_clean() {
    let mut command = Command::new(hadolint());
    command.arg("--no-color").arg(repo().join("Dockerfile"));
    let out = run(command, COMMAND_TIMEOUT);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "hadolint Dockerfile ({}):\n{report}", out.status);
}

/// The Dockerfile's final stage with the two replacements the module doc
/// describes; panics if the stage does not read as expected.
fn final_stage_on_scratch(dockerfile: &str) -> String {
    let at = dockerfile.rfind("\nFROM ").expect("the Dockerfile has stages") + 1;
    let stage = &dockerfile[at..];
    assert_eq!(stage.lines().next(), Some(BASE), "the final stage's base image");
    assert_eq!(stage.matches(COPY_BINARY).count(), 1, "the final stage copies the built binary once: {COPY_BINARY}");
    assert_eq!(stage.matches("\nFROM ").count(), 0);
    let stage = stage.replacen(BASE, "FROM scratch", 1).replacen(COPY_BINARY, "COPY rootfs/ /", 1);
    // The build stage is not in this file, so nothing may still refer to it.
    assert!(!stage.contains("--from="), "the final stage copies from another stage too:\n{stage}");
    stage
}

/// The shared libraries and the loader that `binary` links, as absolute
/// paths (the vDSO has none).
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let mut command = Command::new("ldd");
    command.arg(binary);
    let out = run(command, COMMAND_TIMEOUT);
    assert!(out.status.success(), "ldd {}: {}", binary.display(), text(&out.stderr));
    let mut names = BTreeSet::new();
    let mut paths = Vec::new();
    for line in text(&out.stdout).lines() {
        let line = line.trim();
        let (name, rest) = match line.split_once(" => ") {
            Some((name, rest)) => (name.trim(), rest),
            None => (line.split_whitespace().next().unwrap_or_default(), line),
        };
        let name = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or(name).to_string();
        names.insert(name);
        if let Some(path) = rest.split_whitespace().next().filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    let extra: Vec<&String> = names.iter().filter(|n| !DISTROLESS_CC_LIBS.contains(&n.as_str())).collect();
    assert!(extra.is_empty(), "postern links libraries distroless cc-debian12 does not ship: {extra:?}");
    assert!(paths.iter().any(|p| p.ends_with("libc.so.6")), "ldd found no libc: {paths:?}");
    paths
}

/// buildah with its own storage in `root`, so the test leaves nothing in
/// the machine's container storage and runs beside other builds.
struct Buildah {
    root: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Buildah {
        let found = which("buildah").unwrap_or_else(|| {
            panic!("buildah is missing: run scripts/install-test-deps.sh (installs Debian's buildah)")
        });
        let mut version = Command::new(found);
        version.arg("--version");
        let out = run(version, COMMAND_TIMEOUT);
        assert!(out.status.success(), "buildah --version: {}", text(&out.stderr));
        Buildah { root: tempfile::Builder::new().prefix("postern-buildah-").tempdir().expect("temp dir") }
    }

    /// Runs `buildah <args>`; panics with its output unless it succeeds.
    fn run(&self, args: &[&str], timeout: Duration) -> String {
        let mut command = Command::new("buildah");
        command
            .arg("--root")
            .arg(self.root.path().join("storage"))
            .arg("--runroot")
            .arg(self.root.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        let out = run(command, timeout);
        assert!(
            out.status.success(),
            "buildah {} failed ({}); buildah needs root and a kernel that allows chroot:\n{}{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

/// The working container of the image, its root filesystem mounted;
/// removed (with the image) on drop.
struct Mounted<'a> {
    buildah: &'a Buildah,
    container: String,
    root: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        // Best effort: the storage root is a temporary directory anyway.
        for args in [vec!["umount", &self.container], vec!["rm", &self.container], vec!["rmi", "-f", IMAGE]] {
            let mut command = Command::new("buildah");
            command
                .arg("--root")
                .arg(self.buildah.root.path().join("storage"))
                .arg("--runroot")
                .arg(self.buildah.root.path().join("run"))
                .args(["--storage-driver", "vfs"])
                .args(&args);
            let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// `chroot --userspec=65532:65532 <root> /usr/local/bin/postern <args>`.
fn in_image(root: &Path, args: &[&str]) -> Command {
    let chroot = which("chroot").expect("chroot (coreutils) on PATH");
    let mut command = Command::new(chroot);
    // The environment a runtime gives the image: its own PATH, nothing else.
    command.arg(format!("--userspec={USER}")).arg(root).arg(BINARY).args(args).env_clear().env("PATH", IMAGE_PATH);
    command
}

/// Kills the process on drop (a failed assertion must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_stage_builds_with_buildah_and_its_binary_runs_as_nonroot() {
    let started = Instant::now();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");
    let containerfile = final_stage_on_scratch(&dockerfile);
    let buildah = Buildah::new();

    // The build context: the final stage and the root filesystem it copies.
    let context = tempfile::tempdir().expect("temp dir");
    let rootfs = context.path().join("rootfs");
    let binary = rootfs.join(BINARY.trim_start_matches('/'));
    std::fs::create_dir_all(binary.parent().expect("has a parent")).expect("mkdir");
    let host_binary = env!("CARGO_BIN_EXE_postern");
    let mut strip = Command::new("strip");
    strip.arg("--strip-debug").arg("-o").arg(&binary).arg(host_binary);
    let out = run(strip, COMMAND_TIMEOUT);
    assert!(out.status.success(), "strip {host_binary}: {}", text(&out.stderr));
    for lib in linked_libraries(Path::new(host_binary)) {
        let to = rootfs.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("has a parent")).expect("mkdir");
        std::fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    std::fs::write(context.path().join("Containerfile"), &containerfile).expect("write Containerfile");

    let built = Instant::now();
    let context_dir = context.path().to_str().expect("utf-8 temp path");
    let containerfile_path = format!("{context_dir}/Containerfile");
    buildah.run(
        &["bud", "--isolation", "chroot", "--layers=false", "-f", &containerfile_path, "-t", IMAGE, context_dir],
        BUILD_TIMEOUT,
    );
    println!("buildah bud: {:.1}s", built.elapsed().as_secs_f64());

    // The image's configuration, as a container runtime reads it.
    let inspect: serde_json::Value =
        serde_json::from_str(&buildah.run(&["inspect", "--type", "image", IMAGE], COMMAND_TIMEOUT))
            .expect("buildah inspect prints JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!([BINARY]), "{config}");
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/postern/config.yaml", "--kubernetes"]),
        "{config}"
    );
    assert_eq!(config["User"], USER, "{config}");
    let ports: BTreeSet<&str> =
        config["ExposedPorts"].as_object().expect("exposed ports").keys().map(String::as_str).collect();
    assert_eq!(ports, BTreeSet::from(["8443/tcp", "8080/tcp", "9090/tcp"]), "{config}");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "postern", "{labels}");
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"), "{labels}");
    assert!(labels["org.opencontainers.image.description"].as_str().is_some_and(|d| !d.is_empty()), "{labels}");

    // The image's own root filesystem.
    let container = buildah.run(&["from", "--pull-never", IMAGE], COMMAND_TIMEOUT).trim().to_string();
    let root = PathBuf::from(buildah.run(&["mount", &container], COMMAND_TIMEOUT).trim());
    let mounted = Mounted { buildah: &buildah, container, root };
    assert!(mounted.root.join(BINARY.trim_start_matches('/')).is_file(), "{BINARY} in the image");

    let out = run(in_image(&mounted.root, &["--version"]), COMMAND_TIMEOUT);
    assert!(out.status.success(), "postern --version in the image: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("postern {}", env!("CARGO_PKG_VERSION")));

    let out = run(in_image(&mounted.root, &["crd"]), COMMAND_TIMEOUT);
    assert!(out.status.success(), "postern crd in the image: {}", text(&out.stderr));
    let crd = std::fs::read_to_string(repo().join("crds/routes.postern.dev.yaml")).expect("read the CRD");
    assert!(text(&out.stdout) == crd, "`postern crd` in the image differs from crds/routes.postern.dev.yaml");

    // The image's command without `--kubernetes` (there is no cluster
    // here): the quickstart config at /etc/postern/config.yaml, on ports
    // free on this machine.
    let (https, http, metrics) = (support::free_port(), support::free_port(), support::free_port());
    let quickstart = std::fs::read_to_string(repo().join("examples/quickstart.yaml")).expect("read quickstart");
    let mut config_text = quickstart;
    for (from, to) in [(":8443", https), (":8080", http), (":9090", metrics)] {
        assert!(config_text.contains(from), "examples/quickstart.yaml has no {from}");
        config_text = config_text.replace(from, &format!(":{to}"));
    }
    let etc = mounted.root.join("etc/postern");
    std::fs::create_dir_all(&etc).expect("mkdir /etc/postern");
    std::fs::write(etc.join("config.yaml"), config_text).expect("write config");
    let mut serve = in_image(&mounted.root, &["serve", "--config", "/etc/postern/config.yaml"]);
    let child = serve.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("chroot");
    let mut proxy = Running(child);
    let log = read_all(proxy.0.stderr.take().expect("stderr piped"));
    let client = support::client_to(format!("127.0.0.1:{https}").parse().expect("addr"));
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let hello = loop {
        match client.get(format!("https://localhost:{https}/api/hello")).send().await {
            Ok(resp) => break resp,
            Err(e) => {
                if Instant::now() > deadline || proxy.0.try_wait().expect("try_wait").is_some() {
                    let _ = proxy.0.kill();
                    let _ = proxy.0.wait();
                    panic!(
                        "postern serve in the image does not answer: {e}\n{}",
                        text(&log.join().unwrap_or_default())
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.headers()["x-served-by"], "postern-quickstart");
    assert_eq!(hello.text().await.expect("body"), r#"{"message": "hello from Postern"}"#);
    for path in ["/healthz", "/readyz"] {
        let (status, body) = support::get_plain(format!("127.0.0.1:{metrics}").parse().expect("addr"), path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.0.id())).expect("proc status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["Uid:", "65532", "65532", "65532", "65532"]);
    let term = Command::new("kill").arg("-TERM").arg(proxy.0.id().to_string()).status().expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let exit = loop {
        if let Some(status) = proxy.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "postern in the image did not stop on SIGTERM within {SERVE_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = text(&log.join().unwrap_or_default());
    assert!(exit.success(), "postern in the image exited {exit} on SIGTERM:\n{log}");
    drop(mounted);
    println!("image built and run in {:.1}s", started.elapsed().as_secs_f64());
}
