//! The Helm chart `charts/postern` and `manifests/install.yaml`, with the
//! real helm and kubectl of tests/support/k8s and the real API server of
//! tests/support/control_plane.rs: lint, what `helm template` renders, a
//! wrong value refused by name, every object accepted by the API server,
//! install / upgrade (the generated secrets kept) / uninstall, and the
//! controller run with the chart's settings, secrets and ServiceAccount
//! routing an Ingress and a Route.

// `control_plane.rs` loads `supervised.rs` itself, as `support` does.
#[path = "support/chart_pod.rs"]
mod chart_pod;
#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/netns.rs"]
mod netns;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use chart_pod::ChartPod;
use support::Postern;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs helm (from the repository root, so the commands read as a user
/// types them); returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(control_plane::helm())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // A private Helm home: no user repositories or plugins leak in.
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("postern-helm-test/cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("postern-helm-test/config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("postern-helm-test/data"))
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// helm against the test control plane.
fn helm_on(plane: &control_plane::ControlPlane, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = format!("--kubeconfig={}", plane.kubeconfig.display());
    let mut all: Vec<&str> = args.to_vec();
    all.push(&kubeconfig);
    helm(&all)
}

/// YAML (as yaml-rust2 reads it) to JSON, for asserting on objects.
fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

/// Every non-empty document of a YAML stream, as JSON.
fn documents(text: &str) -> Vec<Value> {
    yaml_rust2::YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
        .iter()
        .map(to_json)
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template postern charts/postern --namespace NS` with `extra`
/// arguments (e.g. `--values FILE`), as objects.
fn template(namespace: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "postern", "charts/postern", "--namespace", namespace];
    args.extend(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    documents(&out)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered; rendered: {:?}", names(objects)))
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().map(|n| format!("{n}/")).unwrap_or_default();
            format!("{} {ns}{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
        })
        .collect()
}

/// The ClusterRoles of manifests/rbac.yaml: (name, rules).
fn manifest_rbac() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(repo("manifests/rbac.yaml")).expect("read manifests/rbac.yaml");
    documents(&text)
        .into_iter()
        .map(|o| (o["metadata"]["name"].as_str().expect("name").to_string(), o["rules"].clone()))
        .collect()
}

/// A values file setting every option the defaults leave off.
const ALL_OPTIONS: &str = "\
replicaCount: 2
watchNamespaces: [team-a, team-b]
secrets:
  existingSecret: my-postern-secrets
serviceMonitor:
  enabled: true
  labels: {release: prometheus}
ingressClass:
  default: true
service:
  type: NodePort
  nodePorts: {https: 30443, http: 30080}
  externalTrafficPolicy: Local
settings:
  authenticateServiceUrl: https://authenticate.example.com
  idp:
    providerUrl: https://accounts.example.com
    clientId: postern
  cookie: {domain: .example.com, expire: 8h}
  trustedProxies: [10.0.0.0/8]
  routeDefaults: {allow_any_authenticated_user: true, timeout: 10s}
";

fn values_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write values file");
    path.display().to_string()
}

#[test]
fn lint_strict_is_clean_with_the_defaults_and_with_every_option() {
    let dir = tempfile::tempdir().expect("dir");
    let all = values_file(dir.path(), "all.yaml", ALL_OPTIONS);
    for extra in [vec![], vec!["--values", all.as_str()]] {
        let mut args = vec!["lint", "--strict", "charts/postern"];
        args.extend(&extra);
        let (ok, out, err) = helm(&args);
        assert!(
            ok && out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict {extra:?}:\n{out}{err}"
        );
        // --strict turns warnings into failures; say so if one slips in anyway.
        assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "helm lint {extra:?}:\n{out}");
    }
}

#[test]
fn rendered_defaults_are_locked_down_probed_labelled_and_least_privileged() {
    let objects = template("postern-system", &[]);
    let deploy = find(&objects, "Deployment", "postern");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], "postern");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
    assert_eq!(c["image"], "ghcr.io/postern/postern:0.1.0", "the image tag is the appVersion");
    assert_eq!(
        c["args"],
        json!([
            "--log-format=json",
            "--log-level=info",
            "serve",
            "--config=/etc/postern/config.yaml",
            "--kubernetes",
            "--shutdown-grace=30s"
        ])
    );
    let port_of = |name: &str| {
        c["ports"].as_array().expect("ports").iter().find(|p| p["name"] == name).map(|p| p["containerPort"].clone())
    };
    assert_eq!(
        (port_of("https"), port_of("http"), port_of("metrics")),
        (Some(json!(8443)), Some(json!(8080)), Some(json!(9090)))
    );
    assert_eq!(c["livenessProbe"]["httpGet"], json!({ "path": "/healthz", "port": "metrics" }));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({ "path": "/readyz", "port": "metrics" }));
    assert!(c["resources"]["requests"]["memory"].is_string(), "resources are set: {}", c["resources"]);
    // One replica: nothing to spread, no budget.
    assert!(pod["topologySpreadConstraints"].is_null());
    assert!(!objects.iter().any(|o| o["kind"] == "PodDisruptionBudget"), "{:?}", names(&objects));
    assert!(!objects.iter().any(|o| o["kind"] == "ServiceMonitor"), "off by default");

    // Standard labels on every object; the selector is the stable subset.
    for o in &objects {
        let labels = &o["metadata"]["labels"];
        for (key, want) in [
            ("app.kubernetes.io/name", "postern"),
            ("app.kubernetes.io/instance", "postern"),
            ("app.kubernetes.io/version", "0.1.0"),
            ("app.kubernetes.io/component", "controller"),
            ("app.kubernetes.io/managed-by", "Helm"),
            ("helm.sh/chart", "postern-0.1.0"),
        ] {
            assert_eq!(labels[key], want, "label {key} on {}: {labels}", names(std::slice::from_ref(o))[0]);
        }
    }
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"],
        json!({ "app.kubernetes.io/name": "postern", "app.kubernetes.io/instance": "postern" })
    );

    // The public Service: LoadBalancer, 443 -> 8443 and 80 -> 8080, and not
    // the metrics port, which has a ClusterIP Service of its own.
    let svc = find(&objects, "Service", "postern");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    let ports: Vec<(Value, Value)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["port"].clone(), p["targetPort"].clone()))
        .collect();
    assert_eq!(ports, vec![(json!(443), json!("https")), (json!(80), json!("http"))]);
    let metrics = find(&objects, "Service", "postern-metrics");
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    assert_eq!(metrics["spec"]["ports"][0]["port"], 9090);

    let class = find(&objects, "IngressClass", "postern");
    assert_eq!(class["spec"]["controller"], "postern.dev/ingress-controller");
    assert!(class["metadata"]["annotations"].is_null(), "not the default class unless asked: {class}");

    // The settings: the listeners the ports and probes expect, secrets as
    // files from the Secret, and Ingress status from the chart's Service.
    let config = settings_of(&objects);
    assert_eq!(config["address"], ":8443");
    assert_eq!(config["http_redirect_addr"], ":8080");
    assert_eq!(config["metrics_address"], "0.0.0.0:9090");
    assert_eq!(config["cookie_secret_file"], "/var/run/secrets/postern/cookie_secret");
    assert_eq!(config["signing_key_file"], "/var/run/secrets/postern/signing_key");
    assert_eq!(
        config["kubernetes"],
        json!({ "enabled": true, "ingress_class": "postern", "controller_name": "postern.dev/ingress-controller",
                "leader_election": true, "publish_service": "postern-system/postern" })
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/postern" && m["readOnly"] == true), "{mounts:?}");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/var/run/secrets/postern" && m["readOnly"] == true), "{mounts:?}");
    let secret = find(&objects, "Secret", "postern");
    assert!(secret["data"]["cookie_secret"].is_string() && secret["data"]["signing_key"].is_string(), "{secret}");

    // RBAC: exactly the rules of manifests/rbac.yaml, cluster-wide, which
    // tests/k8s_rbac.rs shows minimal and complete (it runs the controller
    // with them, then without each one and sees the refusal). The chart's
    // rules are checked equal to them here rather than re-proven.
    let rbac = manifest_rbac();
    assert_eq!(rbac[0].0, "postern");
    assert_eq!(rbac[1].0, "postern-ingressclasses");
    assert_eq!(
        find(&objects, "ClusterRole", "postern")["rules"],
        rbac[0].1,
        "the chart's ClusterRole drifted from manifests/rbac.yaml"
    );
    assert_eq!(find(&objects, "ClusterRole", "postern-ingressclasses")["rules"], rbac[1].1);
    for binding in ["postern", "postern-ingressclasses"] {
        let b = find(&objects, "ClusterRoleBinding", binding);
        assert_eq!(b["roleRef"]["name"], binding);
        assert_eq!(
            b["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "postern", "namespace": "postern-system" }])
        );
    }
    assert!(!objects.iter().any(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding"), "{:?}", names(&objects));
}

/// The settings file of the rendered ConfigMap.
fn settings_of(objects: &[Value]) -> Value {
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").expect("a ConfigMap");
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    documents(text).into_iter().next().expect("one document")
}

#[test]
fn rendered_options_replicas_namespaces_existing_secret_monitor_default_class() {
    let dir = tempfile::tempdir().expect("dir");
    let all = values_file(dir.path(), "all.yaml", ALL_OPTIONS);
    let objects = template("edge", &["--values", &all]);
    let deploy = find(&objects, "Deployment", "postern");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let spread: Vec<&Value> = pod["topologySpreadConstraints"]
        .as_array()
        .expect("spread with 2 replicas")
        .iter()
        .map(|t| &t["topologyKey"])
        .collect();
    assert_eq!(spread, [&json!("kubernetes.io/hostname"), &json!("topology.kubernetes.io/zone")]);
    let pdb = find(&objects, "PodDisruptionBudget", "postern");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"]);

    // The user's Secret: none rendered, and the pods mount it.
    assert!(!objects.iter().any(|o| o["kind"] == "Secret"), "{:?}", names(&objects));
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "my-postern-secrets"), "{volumes:?}");

    let monitor = find(&objects, "ServiceMonitor", "postern");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!(["edge"]));

    let class = find(&objects, "IngressClass", "postern");
    assert_eq!(class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"], "true");
    let svc = find(&objects, "Service", "postern");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30443);
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");

    let config = settings_of(&objects);
    assert_eq!(config["kubernetes"]["namespaces"], json!(["team-a", "team-b"]));
    assert_eq!(
        config["kubernetes"]["route_defaults"],
        json!({ "allow_any_authenticated_user": true, "timeout": "10s" })
    );
    assert_eq!(config["idp_provider_url"], "https://accounts.example.com");
    assert_eq!(config["idp_client_secret_file"], "/var/run/secrets/postern/idp_client_secret");
    assert_eq!(config["authenticate_service_url"], "https://authenticate.example.com");
    assert_eq!(config["cookie_expire"], "8h");

    // Namespaced RBAC: a Role with exactly manifests/rbac.yaml's `postern`
    // rules in each watched namespace, the IngressClass ClusterRole (they
    // are cluster-scoped), and in the release namespace, which is not
    // watched, only the Lease and a get of the chart's own Service (for
    // publish_service), a subset of those rules.
    let rbac = manifest_rbac();
    assert!(
        !objects.iter().any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "postern"),
        "{:?}",
        names(&objects)
    );
    assert_eq!(find(&objects, "ClusterRole", "postern-ingressclasses")["rules"], rbac[1].1);
    for ns in ["team-a", "team-b"] {
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}: {:?}", names(&objects)));
        assert_eq!(role["rules"], rbac[0].1, "the Role in {ns} drifted from manifests/rbac.yaml");
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["namespace"], "edge");
    }
    let leader = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "edge")
        .expect("a Role in the release namespace");
    assert_eq!(
        leader["rules"],
        json!([
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"] },
            { "apiGroups": [""], "resources": ["services"], "verbs": ["get"] },
        ])
    );
}

#[test]
fn a_wrong_value_fails_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    for (values, named) in [
        ("replicaCount: two\n", "/replicaCount"),
        ("replicaCunt: 2\n", "'replicaCunt' not allowed"),
        ("service:\n  type: Ingress\n", "/service/type"),
        ("service:\n  prots: {https: 443}\n", "'prots' not allowed"),
        ("watchNamespaces: [Team_A]\n", "/watchNamespaces/0"),
        ("settings:\n  cookie:\n    sameSite: sometimes\n", "/settings/cookie/sameSite"),
        ("secrets:\n  existingSecret: 42\n", "/secrets/existingSecret"),
    ] {
        let file = values_file(dir.path(), "wrong.yaml", values);
        for command in ["template", "install"] {
            // `install --dry-run=client` validates exactly as install does,
            // without a cluster.
            let mut args = vec![command, "postern", "charts/postern", "--values", &file];
            if command == "install" {
                args.push("--dry-run=client");
            }
            let (ok, out, err) = helm(&args);
            assert!(!ok, "helm {command} accepted {values:?}:\n{out}");
            assert!(err.contains(named), "helm {command} with {values:?} does not name {named:?}:\n{err}");
        }
    }
    // Combinations the schema cannot express fail in the templates, by name.
    let file =
        values_file(dir.path(), "idp.yaml", "settings:\n  idp: {providerUrl: https://idp.example.com, clientId: c}\n");
    let (ok, _, err) = helm(&["template", "postern", "charts/postern", "--values", &file]);
    assert!(!ok && err.contains("settings.authenticateServiceUrl"), "{err}");
    let file = values_file(dir.path(), "extra.yaml", "settings:\n  extra: {address: ':443'}\n");
    let (ok, _, err) = helm(&["template", "postern", "charts/postern", "--values", &file]);
    assert!(!ok && err.contains("settings.extra.address"), "{err}");
}

#[test]
fn chart_crds_and_install_yaml_do_not_drift() {
    let top = std::fs::read_to_string(repo("crds/routes.postern.dev.yaml")).expect("crds/");
    let chart = std::fs::read_to_string(repo("charts/postern/crds/routes.postern.dev.yaml")).expect("chart crds/");
    assert!(top == chart, "charts/postern/crds/ drifted: run `cp crds/routes.postern.dev.yaml charts/postern/crds/`");

    let out = Command::new("bash")
        .arg(repo("scripts/render-install.sh"))
        .arg("--stdout")
        .output()
        .expect("run render-install.sh");
    assert!(out.status.success(), "scripts/render-install.sh: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(repo("manifests/install.yaml")).expect("manifests/install.yaml");
    assert!(rendered == committed, "manifests/install.yaml drifted from the chart: run scripts/render-install.sh");
    // What it holds: the chart with its defaults, apart from the secrets.
    let objects = documents(&committed);
    for (kind, name) in [
        ("Namespace", "postern-system"),
        ("CustomResourceDefinition", "routes.postern.dev"),
        ("Deployment", "postern"),
        ("IngressClass", "postern"),
        ("ClusterRole", "postern"),
    ] {
        find(&objects, kind, name);
    }
    assert!(!objects.iter().any(|o| o["kind"] == "Secret"), "no secret keys committed in install.yaml");
}

/// Held by the tests that touch the cluster-wide objects of the release
/// `postern` in postern-system (the IngressClass, the ClusterRoles, the Route
/// CRD that the install test deletes at its end), so neither sees the
/// other's half-done state.
static CLUSTER_WIDE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A minimal ServiceMonitor CRD: the Prometheus Operator's is not in this
/// repository. It accepts any spec (`x-kubernetes-preserve-unknown-fields`),
/// so the dry run below proves only that the group, version, kind and
/// metadata are served and valid; the ServiceMonitor's spec is checked by
/// field in `rendered_options_...` instead.
const SERVICE_MONITOR_CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
 "metadata":{"name":"servicemonitors.monitoring.coreos.com"},
 "spec":{"group":"monitoring.coreos.com","scope":"Namespaced",
  "names":{"kind":"ServiceMonitor","plural":"servicemonitors","singular":"servicemonitor","listKind":"ServiceMonitorList"},
  "versions":[{"name":"v1","served":true,"storage":true,
   "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_every_rendered_object() {
    let plane = control_plane::shared();
    let _cluster_wide = CLUSTER_WIDE.lock().await;
    let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(SERVICE_MONITOR_CRD));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = plane.kubectl(
        &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=30s"],
        None,
    );
    assert!(ok, "{out}{err}");
    let ns = plane.namespace("dry").await;
    let dir = tempfile::tempdir().expect("dir");
    // The option set's watched namespaces must exist for their Roles.
    let team_a = plane.namespace("team-a").await;
    let team_b = plane.namespace("team-b").await;
    let options = ALL_OPTIONS
        .replace("[team-a, team-b]", &format!("[{team_a}, {team_b}]"))
        .replace("existingSecret: my-postern-secrets", "idpClientSecret: from-the-idp");
    let all = values_file(dir.path(), "all.yaml", &options);
    for extra in [vec![], vec!["--values", all.as_str()]] {
        let mut args = vec!["template", "postern", "charts/postern", "--namespace", &ns];
        args.extend(&extra);
        let (ok, rendered, err) = helm(&args);
        assert!(ok, "{err}");
        let kinds = names(&documents(&rendered));
        let (ok, out, err) = plane.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(ok, "the API server refused an object rendered with {extra:?}:\n{err}\n{out}");
        // One line per object, each accepted.
        let accepted = out.lines().filter(|l| l.contains("(server dry run)")).count();
        assert_eq!(accepted, kinds.len(), "{out}\nrendered: {kinds:?}");
    }

    // manifests/install.yaml as a user applies it: its Namespace comes
    // first in the file, but a dry run creates nothing, so the namespaced
    // objects need it to exist already.
    let _ = plane.kubectl(&["create", "namespace", "postern-system"], None);
    let (ok, out, err) = plane
        .kubectl(&["apply", "--dry-run=server", "-f", &repo("manifests/install.yaml").display().to_string()], None);
    assert!(ok, "the API server refused manifests/install.yaml:\n{err}\n{out}");
    assert!(out.contains("deployment.apps/postern") && out.contains("ingressclass.networking.k8s.io/postern"), "{out}");
}

/// The install.yaml header's commands for the Secret make a cookie secret
/// and a signing key Postern accepts.
#[test]
fn install_yaml_secret_commands_make_keys_postern_accepts() {
    let dir = tempfile::tempdir().expect("dir");
    let sh = |script: &str| {
        let out = Command::new("bash").args(["-c", script]).output().expect("bash");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let header = std::fs::read_to_string(repo("manifests/install.yaml")).expect("install.yaml");
    for command in ["head -c32 /dev/urandom | base64", "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"]
    {
        assert!(header.contains(command), "install.yaml no longer says {command:?}");
    }
    // As `--from-literal="$(...)"` stores them: the command's output
    // without its trailing newline.
    std::fs::write(dir.path().join("cookie_secret"), sh("head -c32 /dev/urandom | base64").trim_end()).expect("write");
    std::fs::write(
        dir.path().join("signing_key"),
        sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256").trim_end(),
    )
    .expect("write");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "address: 127.0.0.1:0\ncookie_secret_file: cookie_secret\nsigning_key_file: signing_key\n")
        .expect("write");
    let (code, out, err) = support::run_cli(&["check", "--config", &config.display().to_string()], dir.path());
    assert_eq!(code, 0, "{out}{err}");
}

/// GETs `https://host/path` through Postern until `want` says yes (or 20 s pass).
async fn eventually(p: &Postern, host: &str, path: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
    let client = p.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(p.url(host, path)).send().await {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if want(status, &body) {
                return body;
            }
            last = (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: last answer {} {}\nlog:\n{}", last.0, last.1, p.logs().join("\n"));
}

/// Waits (20 s at most) until `kubectl get ... -o jsonpath=PATH` prints
/// something `want` accepts; returns it.
async fn kubectl_until(
    plane: &control_plane::ControlPlane,
    args: &[&str],
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, err) = plane.kubectl(args, None);
        if want(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: kubectl {args:?} printed {out:?} {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The commands of the "Install with Helm" block of the README, in order,
/// with `--kubeconfig` for the test cluster; then the controller runs with
/// what was installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_as_the_chart_account_upgrade_keeps_secrets_uninstall() {
    let plane = control_plane::shared();
    let _cluster_wide = CLUSTER_WIDE.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = format!("--kubeconfig={}", plane.kubeconfig.display());
    let kubectl_here = |args: &[&str]| {
        let out = Command::new(control_plane::kubectl())
            .arg(&kubeconfig)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run kubectl");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    };

    // 1. The CRDs, then the chart.
    kubectl_here(&["apply", "--server-side", "-f", "charts/postern/crds/"]);
    kubectl_here(&["wait", "--for=condition=Established", "crd/routes.postern.dev", "--timeout=30s"]);
    let (ok, out, err) = helm_on(
        plane,
        &["install", "postern", "charts/postern", "--namespace", "postern-system", "--create-namespace"],
    );
    assert!(ok, "helm install: {out}{err}");
    assert!(out.contains("STATUS: deployed"), "{out}");
    // NOTES.txt tells what to do next.
    for next in
        ["rollout status deployment/postern", "get service postern", "ingressClassName: postern", "kubectl get routes"]
    {
        assert!(out.contains(next), "NOTES.txt does not say {next:?}:\n{out}");
    }
    // Everything the chart renders exists in the cluster.
    let (ok, manifest, err) = helm_on(plane, &["get", "manifest", "postern", "--namespace", "postern-system"]);
    assert!(ok, "{err}");
    let installed = documents(&manifest);
    let (mut want, mut got) = (names(&template("postern-system", &[])), names(&installed));
    want.sort();
    got.sort();
    assert_eq!(got, want, "helm install applied what helm template renders");
    for o in &installed {
        let kind = o["kind"].as_str().expect("kind");
        let name = o["metadata"]["name"].as_str().expect("name");
        let mut args = vec!["get", kind, name];
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        let (ok, _, err) = plane.kubectl(&args, None);
        assert!(ok, "helm install did not create {kind} {name}: {err}");
    }
    let secrets_at_install = chart_pod::secret_files(plane, "postern-system", "postern");
    let names_in_secret: Vec<&str> = secrets_at_install.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names_in_secret, ["cookie_secret", "signing_key"]);

    // 2. The controller as the chart's pod would run it, as a local process
    // (support/chart_pod.rs): the installed settings and secrets, the token
    // of the chart's ServiceAccount, so it has exactly the chart's RBAC.
    let pod = ChartPod::of(plane, "postern-system", "postern", dir.path()).await;
    assert!(pod.config.contains("publish_service: postern-system/postern"), "{}", pod.config);
    assert!(pod.files == secrets_at_install, "the pod gets the Secret's files");
    let start = || Postern::start_with(&pod.config, pod.options());
    let p = start();

    // An Ingress to a Service whose EndpointSlice lists a real upstream (in
    // a network namespace: EndpointSlices refuse loopback), and a Route
    // that answers itself.
    let app = plane.namespace("app").await;
    let net = netns::Netns::create("helm");
    let upstream = net.serve(net.addr(), 0, "web");
    let objects = json!({ "apiVersion": "v1", "kind": "List", "items": [
        { "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web", "namespace": app },
          "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": upstream.port() }] } },
        { "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": { "name": "web-1", "namespace": app, "labels": { "kubernetes.io/service-name": "web" } },
          "addressType": "IPv4", "ports": [{ "name": "http", "port": upstream.port(), "protocol": "TCP" }],
          "endpoints": [{ "addresses": [net.addr().to_string()], "conditions": { "ready": true } }] },
        { "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "web", "namespace": app,
            "annotations": { "postern.dev/allow_public_unauthenticated_access": "true" } },
          "spec": { "ingressClassName": "postern", "rules": [{ "host": "web.helm.test", "http": { "paths": [{
            "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "name": "http" } } } }] } }] } },
        { "apiVersion": "postern.dev/v1alpha1", "kind": "Route", "metadata": { "name": "hello", "namespace": app },
          "spec": { "from": "https://hello.helm.test", "response": { "status": 200, "body": "hello from a Route" },
                    "allowPublicUnauthenticatedAccess": true } },
    ]});
    let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(&objects.to_string()));
    assert!(ok, "{out}{err}");

    let body = eventually(&p, "web.helm.test", "/through/the/chart", "the Ingress routed", |s, b| {
        s == 200 && b.contains("\"upstream\":\"web\"")
    })
    .await;
    assert!(body.contains("/through/the/chart"), "{body}");
    let body = eventually(&p, "hello.helm.test", "/", "the Route routed", |s, _| s == 200).await;
    assert_eq!(body, "hello from a Route");
    kubectl_until(plane, &["get", "routes", "-n", &app], "kubectl get routes shows it Ready", |out| {
        out.lines().any(|l| l.starts_with("hello ") && l.contains("True"))
    })
    .await;
    // publish_service names the chart's Service: the Ingress status gets its
    // address (its cluster IP: nothing provisions a load balancer here).
    let (_, cluster_ip, _) =
        plane.kubectl(&["get", "service", "postern", "-n", "postern-system", "-o", "jsonpath={.spec.clusterIP}"], None);
    assert!(!cluster_ip.is_empty(), "the chart's Service has a cluster IP");
    kubectl_until(
        plane,
        &["get", "ingress", "web", "-n", &app, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"],
        "Ingress status has the chart Service's address",
        |ip| ip == cluster_ip,
    )
    .await;
    // With the chart's RBAC nothing the controller asked for was refused.
    let refused: Vec<String> = p.logs().into_iter().filter(|l| l.contains("forbidden")).collect();
    assert!(refused.is_empty(), "refused with the chart's RBAC: {refused:?}");

    // A second replica with the same Secret publishes the same JWKS, so an
    // upstream verifies assertions from either (and sessions open on both).
    let second = start();
    let jwks_first = eventually(&p, "hello.helm.test", "/.well-known/postern/jwks.json", "jwks", |s, _| s == 200).await;
    let jwks_second =
        eventually(&second, "hello.helm.test", "/.well-known/postern/jwks.json", "jwks", |s, _| s == 200).await;
    let keys: Value = serde_json::from_str(&jwks_first).expect("jwks json");
    assert_eq!(keys["keys"][0]["crv"], "P-256", "{jwks_first}");
    assert_eq!(jwks_first, jwks_second, "two replicas with the chart's Secret publish different keys");
    let warned: Vec<String> = p
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("cookie_secret is not set")
                || l.contains("signing_key is not set")
                || l.contains("signing_key unusable")
        })
        .collect();
    assert!(warned.is_empty(), "the chart's secrets were not used: {warned:?}");
    drop(second);
    drop(p);

    // 3. Upgrade with a values file: the change is applied, the generated
    // secrets are the same bytes.
    let values = values_file(dir.path(), "my-values.yaml", "replicaCount: 2\n");
    let (ok, out, err) =
        helm_on(plane, &["upgrade", "postern", "charts/postern", "--namespace", "postern-system", "--values", &values]);
    assert!(ok, "helm upgrade: {out}{err}");
    assert!(out.contains("REVISION: 2"), "{out}");
    let (_, replicas, _) = plane
        .kubectl(&["get", "deployment", "postern", "-n", "postern-system", "-o", "jsonpath={.spec.replicas}"], None);
    assert_eq!(replicas, "2");
    kubectl_here(&["get", "poddisruptionbudget", "postern", "-n", "postern-system"]);
    assert!(
        chart_pod::secret_files(plane, "postern-system", "postern") == secrets_at_install,
        "helm upgrade changed the generated secrets"
    );

    // 4. Uninstall: the release's objects go (cluster-scoped ones too); the
    // CRD stays (Helm never deletes crds/), and is deleted by hand.
    let (ok, out, err) = helm_on(plane, &["uninstall", "postern", "--namespace", "postern-system"]);
    assert!(ok, "helm uninstall: {out}{err}");
    for (kind, name, ns) in [
        ("deployment", "postern", Some("postern-system")),
        ("secret", "postern", Some("postern-system")),
        ("clusterrole", "postern", None),
        ("clusterrolebinding", "postern-ingressclasses", None),
        ("ingressclass", "postern", None),
    ] {
        let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        kubectl_until(plane, &args, &format!("{kind} {name} deleted by helm uninstall"), |out| out.trim().is_empty())
            .await;
    }
    kubectl_here(&["get", "crd", "routes.postern.dev"]);
    kubectl_here(&["delete", "-f", "charts/postern/crds/"]);
    drop(upstream);
}
