//! The controller as a ServiceAccount (a TokenRequest token) with exactly
//! the rules of `manifests/rbac.yaml`: with all of them everything works and
//! nothing is refused; without any one of them, the feature that needs it
//! fails with a log line naming the refused resource. So the list stays
//! minimal and complete.

#[allow(clippy::duplicate_mod)]
#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{Options, Postern};

/// The ClusterRoles of manifests/rbac.yaml, as JSON (read by kubectl).
fn manifest_roles(plane: &control_plane::ControlPlane) -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/rbac.yaml");
    let (ok, out, err) = plane.kubectl(&["create", "--dry-run=client", "-o", "json", "-f", path], None);
    assert!(ok, "{err}");
    // One JSON document per object.
    serde_json::Deserializer::from_str(&out).into_iter::<Value>().map(|v| v.expect("json")).collect()
}

/// Applies `obj` (JSON) with kubectl.
fn kubectl_apply(plane: &control_plane::ControlPlane, obj: &Value) {
    let (ok, out, err) = plane.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(ok, "{out}{err}");
}

fn kubectl_delete(plane: &control_plane::ControlPlane, kind: &str, name: &str, ns: Option<&str>) {
    let mut args = vec!["delete", kind, name, "--ignore-not-found", "--wait=false"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    plane.kubectl(&args, None);
}

/// The objects every feature is exercised on.
fn objects(plane: &control_plane::ControlPlane, ns: &str) {
    let (cert, key) = support::self_signed(&["good.rbac.test"]);
    let items = json!({ "apiVersion": "v1", "kind": "List", "items": [
        { "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web", "namespace": ns },
          "spec": { "ports": [{ "name": "http", "port": 80 }] } },
        { "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": { "name": "cert", "namespace": ns },
          "stringData": { "tls.crt": cert, "tls.key": key } },
        { "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "good", "namespace": ns,
            "annotations": { "postern.dev/allow_public_unauthenticated_access": "true" } },
          "spec": { "ingressClassName": "postern", "tls": [{ "hosts": ["good.rbac.test"], "secretName": "cert" }],
            "rules": [{ "host": "good.rbac.test", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
              "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] } },
        { "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "bad", "namespace": ns,
            "annotations": { "postern.dev/no_such_key": "1" } },
          "spec": { "ingressClassName": "postern", "rules": [{ "host": "bad.rbac.test", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
              "backend": { "service": { "name": "web", "port": { "number": 80 } } } }] } }] } },
        { "apiVersion": "postern.dev/v1alpha1", "kind": "Route", "metadata": { "name": "r", "namespace": ns },
          "spec": { "from": "https://r.rbac.test", "response": { "status": 200, "body": "ok" }, "allowPublicUnauthenticatedAccess": true } },
    ]});
    kubectl_apply(plane, &items);
}

fn jsonpath(plane: &control_plane::ControlPlane, ns: &str, what: &[&str], path: &str) -> String {
    let mut args: Vec<&str> = vec!["get"];
    args.extend(what);
    let jp = format!("jsonpath={path}");
    args.extend(["-n", ns, "-o", &jp]);
    plane.kubectl(&args, None).1
}

/// Everything the controller does, as a user would see it.
fn all_features_work(plane: &control_plane::ControlPlane, ns: &str, p: &Postern) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let holder = jsonpath(plane, ns, &["lease", "postern-leader"], "{.spec.holderIdentity}");
    if !holder.ends_with(&format!("-{}", p.pid())) {
        missing.push("lease");
    }
    if !jsonpath(plane, ns, &["route", "r"], "{.status.conditions[?(@.type==\"Ready\")].status}").contains("True") {
        missing.push("route status");
    }
    if jsonpath(plane, ns, &["ingress", "good"], "{.status.loadBalancer.ingress[0].ip}").trim().is_empty() {
        missing.push("ingress status");
    }
    let events = plane
        .kubectl(
            &["get", "events.events.k8s.io", "-n", ns, "--field-selector", "regarding.name=bad", "-o", "name"],
            None,
        )
        .1;
    if events.trim().is_empty() {
        missing.push("events");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_manifest_rules_each_one_needed() {
    let plane = control_plane::shared();
    plane.install_route_crd();
    let ns = plane.namespace("rbac").await;
    let token = plane.service_account(&ns, "postern", None).await;
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = plane.kubeconfig_with_token(dir.path(), &token);
    objects(plane, &ns);
    let roles = manifest_roles(plane);
    let main_rules = roles[0]["rules"].as_array().cloned().expect("rules");
    let class_rules = roles[1]["rules"].as_array().cloned().expect("rules");

    // `None`: every rule; `Some(i)`: all but rule i (the last index is the
    // IngressClass role's).
    let mut variants: Vec<Option<usize>> = vec![None];
    variants.extend((0..=main_rules.len()).map(Some));
    for (round, without) in variants.into_iter().enumerate() {
        let name = format!("{ns}-{round}");
        let keep = |i: usize| without != Some(i);
        let rules: Vec<&Value> = main_rules.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, r)| r).collect();
        let classes: Vec<&Value> = if keep(main_rules.len()) { class_rules.iter().collect() } else { vec![] };
        let sa = json!([{ "kind": "ServiceAccount", "name": "postern", "namespace": ns }]);
        for obj in [
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": { "name": name }, "rules": rules }),
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": name, "namespace": ns },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name }, "subjects": sa }),
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": { "name": format!("{name}-classes") }, "rules": classes }),
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": { "name": format!("{name}-classes") },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{name}-classes") }, "subjects": sa }),
        ] {
            kubectl_apply(plane, &obj);
        }
        // A fresh status slate each round, so this round's writes are its own.
        plane.kubectl(&["delete", "lease", "postern-leader", "-n", &ns, "--ignore-not-found"], None);
        plane.kubectl(&["delete", "events.events.k8s.io", "--all", "-n", &ns], None);
        let clear = r#"{"status":null}"#;
        plane.kubectl(&["patch", "route", "r", "-n", &ns, "--subresource=status", "--type=merge", "-p", clear], None);
        plane.kubectl(
            &["patch", "ingress", "good", "-n", &ns, "--subresource=status", "--type=merge", "-p", clear],
            None,
        );

        let mut p = Postern::start_with(
            &format!("kubernetes:\n  enabled: true\n  namespaces: [{ns}]\n  publish_service: {ns}/web\n"),
            Options { extra_args: vec!["--kubeconfig".into(), kubeconfig.display().to_string()], ..Default::default() },
        );
        let deadline = Instant::now() + Duration::from_secs(25);
        match without {
            None => loop {
                let missing = all_features_work(plane, &ns, &p);
                if missing.is_empty() {
                    let refused: Vec<String> = p.logs().into_iter().filter(|l| l.contains("forbidden")).collect();
                    assert!(refused.is_empty(), "nothing is refused with every rule: {refused:?}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "with every rule, still missing: {missing:?}\n{}",
                    p.logs().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            },
            Some(i) => {
                let rule = if i == main_rules.len() { &class_rules[0] } else { &main_rules[i] };
                let resource = rule["resources"][0].as_str().expect("resource").to_string();
                loop {
                    let logs = p.logs();
                    // The API server's own words, as logged (JSON-escaped).
                    let named = logs
                        .iter()
                        .any(|l| l.contains("forbidden") && l.contains(&format!("resource \\\"{resource}\\\"")));
                    if named {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "without the rule for {resource}, no log line names it as refused:\n{}",
                        logs.join("\n")
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        p.signal("TERM");
        p.wait_exit(Duration::from_secs(10));
        kubectl_delete(plane, "clusterrolebinding", &format!("{name}-classes"), None);
        kubectl_delete(plane, "clusterrole", &format!("{name}-classes"), None);
        kubectl_delete(plane, "rolebinding", &name, Some(&ns));
        kubectl_delete(plane, "clusterrole", &name, None);
    }
}
