#![allow(dead_code)]
//! A real Kubernetes control plane for tests: etcd and kube-apiserver, built
//! from their Go modules by `tests/support/k8s/build.sh`, run as local
//! processes on loopback ports in a temporary directory.
//!
//! One control plane per test binary ([`shared`]); each test takes a fresh
//! namespace ([`ControlPlane::namespace`]). The processes are children of a
//! supervisor thread that lives as long as the test binary and are started
//! with `PR_SET_PDEATHSIG`, so they die with the test process whether tests
//! pass, fail or panic, and also if the binary is killed.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "supervised.rs"]
mod supervised;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where the binaries are: built (or found in the cache) once per test binary.
pub fn tools_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/k8s/build.sh");
        let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run build.sh");
        assert!(out.status.success(), "tests/support/k8s/build.sh failed");
        let stdout = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(stdout.lines().last().expect("build.sh prints the tools directory").trim())
    })
}

pub fn kubectl() -> PathBuf {
    tools_dir().join("kubectl")
}

pub fn helm() -> PathBuf {
    tools_dir().join("helm")
}

/// The control plane shared by every test in this binary.
/// A start-up failure is remembered, so the other tests fail at once with
/// the same message instead of each starting (and failing) its own.
pub fn shared() -> &'static ControlPlane {
    static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let plane = PLANE.get_or_init(|| {
        std::panic::catch_unwind(ControlPlane::start).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "control plane failed to start".into())
        })
    });
    match plane {
        Ok(plane) => plane,
        Err(message) => panic!("{message}"),
    }
}

pub struct ControlPlane {
    pub dir: PathBuf,
    /// Admin kubeconfig (`system:masters`), for kube clients, kubectl and helm.
    pub kubeconfig: PathBuf,
    pub api_addr: SocketAddr,
    pub etcd_addr: SocketAddr,
    apiserver: Mutex<Option<Child>>,
    apiserver_args: Vec<String>,
    ca_pem: String,
}

/// Spawns a control-plane process that dies with the test binary.
fn spawn(mut command: Command) -> Child {
    command.stdin(Stdio::null());
    supervised::spawn(command).expect("spawn control-plane process")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// CA, apiserver serving cert, admin client cert and service-account key.
struct Pki {
    ca_pem: String,
    serving: (String, String),
    admin: (String, String),
    service_account_key: String,
    service_account_pub: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "postern-test-ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().expect("serving key");
    let mut serving = CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()]).expect("params");
    serving.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer).expect("serving cert");

    let admin_key = KeyPair::generate().expect("admin key");
    let mut admin = CertificateParams::new(Vec::<String>::new()).expect("params");
    admin.distinguished_name.push(DnType::CommonName, "postern-test-admin");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).expect("admin cert");

    let sa = KeyPair::generate().expect("service account key");
    Pki {
        ca_pem: ca.pem(),
        serving: (serving_cert.pem(), serving_key.serialize_pem()),
        admin: (admin_cert.pem(), admin_key.serialize_pem()),
        service_account_key: sa.serialize_pem(),
        service_account_pub: sa.public_key_pem(),
    }
}

fn b64(s: &str) -> String {
    use std::fmt::Write as _;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let tools = tools_dir();
        let dir = tempfile::Builder::new().prefix("postern-k8s-").tempdir().expect("temp dir").keep();
        remove_at_exit(&dir);
        let pki = make_pki();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pki file");
            path
        };
        let ca = write("ca.pem", &pki.ca_pem);
        let serving_cert = write("apiserver.pem", &pki.serving.0);
        let serving_key = write("apiserver-key.pem", &pki.serving.1);
        let sa_key = write("sa-key.pem", &pki.service_account_key);
        let sa_pub = write("sa-pub.pem", &pki.service_account_pub);

        let etcd_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let peer = free_port();
        let etcd_log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let mut etcd = Command::new(tools.join("etcd"));
        etcd.args([
            "--name=default",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls=http://{etcd_addr}"),
            &format!("--advertise-client-urls=http://{etcd_addr}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        .stdout(Stdio::null())
        .stderr(etcd_log);
        let etcd_child = spawn(etcd);
        wait_until(Duration::from_secs(30), "etcd to accept connections", || {
            std::net::TcpStream::connect(etcd_addr).is_ok()
        });
        // etcd lives as long as the process (killed by the death signal).
        std::mem::forget(etcd_child);

        let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let apiserver_args = vec![
            format!("--etcd-servers=http://{etcd_addr}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", api_addr.port()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--client-ca-file={}", ca.display()),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            format!("--cert-dir={}", dir.join("certs").display()),
            // Compaction happens when a test asks for it, not on a timer.
            "--etcd-compaction-interval=0".into(),
            // Watches go to etcd, so a compacted resourceVersion gets a
            // real `410 Gone` instead of being served from the cache.
            "--watch-cache=false".into(),
            "--v=1".into(),
        ];
        let kubeconfig = dir.join("kubeconfig");
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{api_addr}\n    certificate-authority-data: {}\n\
             users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
            b64(&pki.ca_pem),
            b64(&pki.admin.0),
            b64(&pki.admin.1),
        );
        std::fs::write(&kubeconfig, kc).expect("write kubeconfig");
        let plane = ControlPlane {
            dir,
            kubeconfig,
            api_addr,
            etcd_addr,
            apiserver: Mutex::new(None),
            apiserver_args,
            ca_pem: pki.ca_pem,
        };
        plane.start_apiserver();
        plane
    }

    pub fn start_apiserver(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-apiserver.log"))
            .expect("apiserver log");
        let mut cmd = Command::new(tools_dir().join("kube-apiserver"));
        cmd.args(&self.apiserver_args).stdout(Stdio::null()).stderr(log);
        *self.apiserver.lock().expect("apiserver lock") = Some(spawn(cmd));
        self.wait_ready(Duration::from_secs(120));
    }

    /// Waits for `/readyz` to answer 200 with admin credentials (via kubectl,
    /// which is what users run too).
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = match self.apiserver.lock().expect("apiserver lock").as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "kube-apiserver exited ({status}) before it was ready\n--- log tail ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let out = Command::new(kubectl())
                .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .args(["get", "--raw=/readyz", "--request-timeout=2s"])
                .output()
                .expect("run kubectl");
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "kube-apiserver not ready after {timeout:?}: {}\n--- log tail ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the API server (etcd keeps running).
    pub fn stop_apiserver(&self) {
        if let Some(mut child) = self.apiserver.lock().expect("apiserver lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the API server on the same address, waiting until ready.
    pub fn restart_apiserver(&self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// An admin client (`system:masters`).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
        kube::Client::try_from(config).expect("client")
    }

    /// A client that authenticates with a bearer token (a ServiceAccount's).
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::new(format!("https://{}", self.api_addr).parse().expect("url"));
        use rustls_pki_types::pem::PemObject;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("CA PEM");
        config.root_cert = Some(vec![ca.to_vec()]);
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("client")
    }

    /// A kubeconfig in `dir` for this API server that authenticates with
    /// `token` (a ServiceAccount's), for a Postern run as that account.
    pub fn kubeconfig_with_token(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join("sa.kubeconfig");
        std::fs::copy(&self.kubeconfig, &path).expect("copy kubeconfig");
        let p = path.display().to_string();
        for args in [
            vec!["--kubeconfig", &p, "config", "set-credentials", "postern-sa", &format!("--token={token}")],
            vec!["--kubeconfig", &p, "config", "set-context", "--current", "--user=postern-sa"],
        ] {
            let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
            let (ok, _, err) = self.kubectl(&args, None);
            assert!(ok, "{err}");
        }
        path
    }

    /// Creates a namespace with a unique name for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).expect("ns");
        api.create(&PostParams::default(), &ns).await.expect("create namespace");
        name
    }

    /// Creates a ServiceAccount, optionally bound to a Role with `rules`
    /// in `namespace`, and returns a token for it from the TokenRequest API.
    pub async fn service_account(&self, namespace: &str, name: &str, rules: Option<Vec<PolicyRule>>) -> String {
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).expect("sa");
        sas.create(&PostParams::default(), &sa).await.expect("create service account");
        if let Some(rules) = rules {
            self.bind_role(namespace, name, rules).await;
        }
        self.token(namespace, name).await
    }

    /// A token of the ServiceAccount `namespace/name` from the TokenRequest
    /// API, as the kubelet gets one for a pod.
    pub async fn token(&self, namespace: &str, name: &str) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let request: TokenRequest =
            serde_json::from_value(serde_json::json!({ "spec": { "expirationSeconds": 3600 } })).expect("request");
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("a token for the ServiceAccount {namespace}/{name}: {e}"));
        token.status.and_then(|s| s.token).expect("token in the TokenRequest status")
    }

    /// Grants the ServiceAccount `name` a Role with `rules` in `namespace`.
    pub async fn bind_role(&self, namespace: &str, name: &str, rules: Vec<PolicyRule>) {
        let client = self.client().await;
        let role: Role =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": name }, "rules": rules })).expect("role");
        Api::<Role>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &role)
            .await
            .expect("create role");
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": namespace }],
        }))
        .expect("role binding");
        Api::<RoleBinding>::namespaced(client, namespace)
            .create(&PostParams::default(), &binding)
            .await
            .expect("create role binding");
    }

    /// Applies Postern's Route CRD (`crds/`) and waits until it is served.
    pub fn install_route_crd(&self) {
        let crd = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/routes.postern.dev.yaml"))
            .expect("read crds/routes.postern.dev.yaml");
        let (ok, out, err) = self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&crd));
        assert!(ok, "kubectl apply crd: {out}{err}");
        let (ok, out, err) =
            self.kubectl(&["wait", "--for=condition=Established", "crd/routes.postern.dev", "--timeout=30s"], None);
        assert!(ok, "crd established: {out}{err}");
    }

    /// Compacts etcd up to its current revision (physically), so any watch
    /// from an older resourceVersion gets `410 Gone`. Returns that revision.
    pub async fn compact_etcd(&self) -> i64 {
        let http = reqwest::Client::new();
        let base = format!("http://{}", self.etcd_addr);
        // Any range request reports the store's current revision.
        let range: serde_json::Value = http
            .post(format!("{base}/v3/kv/range"))
            .json(&serde_json::json!({ "key": b64("/"), "limit": 1 }))
            .send()
            .await
            .expect("etcd range")
            .json()
            .await
            .expect("etcd range json");
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .or_else(|| range["header"]["revision"].as_i64())
            .expect("etcd revision");
        let resp = http
            .post(format!("{base}/v3/kv/compaction"))
            .json(&serde_json::json!({ "revision": revision, "physical": true }))
            .send()
            .await
            .expect("etcd compaction");
        assert!(resp.status().is_success(), "etcd compaction failed: {}", resp.text().await.unwrap_or_default());
        revision
    }

    /// Runs kubectl against this cluster; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(kubectl());
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Removes the control plane's directory (etcd data, logs) when the test
/// binary exits; `POSTERN_KEEP_K8S_DIR=1` keeps it for inspection.
fn remove_at_exit(dir: &Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some(dir) = DIR.get() {
            if std::env::var_os("POSTERN_KEEP_K8S_DIR").is_some() {
                eprintln!("control plane files kept in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(cleanup);
        }
    }
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
