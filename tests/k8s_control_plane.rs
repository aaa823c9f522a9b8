//! The real control plane works for what the controller will need: CRUD
//! and server-side apply, ordered watch events, CRD schema validation,
//! RBAC for ServiceAccounts.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

fn ingress(name: &str, host: &str) -> Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": name },
        "spec": {
            "ingressClassName": "postern",
            "rules": [{ "host": host, "http": { "paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": { "service": { "name": "web", "port": { "number": 80 } } }
            }]}}]
        }
    }))
    .expect("ingress")
}

/// Next watcher event that is about an object (skipping Init/InitDone and
/// transient errors), within `timeout`.
async fn next_object_event<S>(stream: &mut S, timeout: Duration) -> (String, String)
where
    S: futures_util::Stream<Item = Result<Event<Ingress>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next()).await.expect("watch event in time");
        match item {
            Some(Ok(Event::Apply(i))) | Some(Ok(Event::InitApply(i))) => {
                return ("apply".into(), i.metadata.name.unwrap_or_default());
            }
            Some(Ok(Event::Delete(i))) => return ("delete".into(), i.metadata.name.unwrap_or_default()),
            Some(Ok(_)) | Some(Err(_)) => continue,
            None => panic!("watch stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_crud_patch_apply_and_ordered_watch() {
    let plane = control_plane::shared();
    let ns = plane.namespace("crud").await;
    let client = plane.client().await;
    let api: Api<Ingress> = Api::namespaced(client, &ns);

    // Watchers start on first poll: wait for the initial (empty) list
    // before changing anything, so every change arrives as an event.
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await.expect("initial list") {
            Some(Ok(Event::InitDone)) => break,
            Some(_) => continue,
            None => panic!("watch stream ended"),
        }
    }

    api.create(&PostParams::default(), &ingress("one", "one.example.com")).await.expect("create");
    let listed = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("one"));

    // Merge patch: an annotation.
    let merged = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "metadata": { "annotations": { "postern.dev/allow_websockets": "true" } } }),
            ),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.metadata.annotations.unwrap_or_default()["postern.dev/allow_websockets"], "true");

    // Server-side apply as a fixed field manager creates and then updates.
    let ssa = PatchParams::apply("postern-test").force();
    let mut two = ingress("two", "two.example.com");
    two.metadata.namespace = Some(ns.clone());
    let applied = api.patch("two", &ssa, &Patch::Apply(&two)).await.expect("apply create");
    let managers: Vec<String> =
        applied.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"postern-test".to_string()), "{managers:?}");
    two.spec.as_mut().expect("spec").rules.as_mut().expect("rules")[0].host = Some("two.example.org".into());
    let applied = api.patch("two", &ssa, &Patch::Apply(&two)).await.expect("apply update");
    assert_eq!(applied.spec.expect("spec").rules.expect("rules")[0].host.as_deref(), Some("two.example.org"));

    api.delete("one", &DeleteParams::default()).await.expect("delete");

    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(next_object_event(&mut events, Duration::from_secs(20)).await);
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        seen,
        vec![("apply", "one"), ("apply", "one"), ("apply", "two"), ("apply", "two"), ("delete", "one")],
        "events in the order the changes were made"
    );
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.postern.dev
spec:
  group: test.postern.dev
  names: { kind: Widget, plural: widgets, singular: widget }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [from]
              properties:
                from: { type: string, pattern: '^https?://' }
                replicas: { type: integer, minimum: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_applied_with_kubectl_is_served_and_validates() {
    let plane = control_plane::shared();
    let ns = plane.namespace("crd").await;
    let (ok, _, err) = plane.kubectl(&["apply", "-f", "-"], Some(WIDGET_CRD));
    assert!(ok, "kubectl apply CRD: {err}");
    let (ok, _, err) =
        plane.kubectl(&["wait", "--for=condition=Established", "crd/widgets.test.postern.dev", "--timeout=60s"], None);
    assert!(ok, "CRD established: {err}");

    let good = "apiVersion: test.postern.dev/v1\nkind: Widget\nmetadata: {name: good}\nspec: {from: 'https://a.example.com', replicas: 2}\n";
    let (ok, out, err) = plane.kubectl(&["apply", "-n", &ns, "-f", "-"], Some(good));
    assert!(ok, "valid object: {err}");
    assert!(out.contains("widget.test.postern.dev/good created"), "{out}");
    let (ok, out, _) = plane.kubectl(&["get", "widgets", "-n", &ns, "-o", "name"], None);
    assert!(ok);
    assert_eq!(out.trim(), "widget.test.postern.dev/good");

    let bad =
        "apiVersion: test.postern.dev/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {from: 'ftp://x', replicas: 0}\n";
    let (ok, _, err) = plane.kubectl(&["apply", "-n", &ns, "-f", "-"], Some(bad));
    assert!(!ok, "the server must reject an object that breaks the schema");
    assert!(err.contains("spec.from"), "the rejection names spec.from: {err}");
    assert!(err.contains("spec.replicas"), "the rejection names spec.replicas: {err}");

    let missing = "apiVersion: test.postern.dev/v1\nkind: Widget\nmetadata: {name: missing}\nspec: {replicas: 1}\n";
    let (ok, _, err) = plane.kubectl(&["apply", "-n", &ns, "-f", "-"], Some(missing));
    assert!(!ok);
    assert!(err.contains("spec.from: Required value"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_needs_a_role_to_list_ingresses() {
    let plane = control_plane::shared();
    let ns = plane.namespace("rbac").await;
    let token = plane.service_account(&ns, "reader", None).await;
    let as_reader: Api<Ingress> = Api::namespaced(plane.client_with_token(&token), &ns);
    match as_reader.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    plane
        .bind_role(
            &ns,
            "reader",
            vec![
                serde_json::from_value::<PolicyRule>(serde_json::json!({
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["ingresses"],
                    "verbs": ["get", "list", "watch"],
                }))
                .expect("rule"),
            ],
        )
        .await;
    // RBAC changes reach the authorizer's informer shortly after the write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match as_reader.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(list.items.is_empty());
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 403 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("with the role, list must be allowed: {e:?}"),
        }
    }
    // Still read-only.
    match as_reader.create(&PostParams::default(), &ingress("nope", "nope.example.com")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("create must be forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_talks_to_the_cluster_with_the_kubeconfig() {
    let plane = control_plane::shared();
    let ns = plane.namespace("helm").await;
    let out = std::process::Command::new(control_plane::helm())
        .args(["list", "--namespace", &ns, "--output", "json", "--kubeconfig"])
        .arg(&plane.kubeconfig)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm list: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a fresh namespace has no releases");
    let version = std::process::Command::new(control_plane::helm()).arg("version").output().expect("helm version");
    assert!(String::from_utf8_lossy(&version.stdout).contains("Version:\"v4.3.1\""), "pinned helm version");
    // The server reports its real release, so charts' kubeVersion checks work.
    let (ok, out, err) = plane.kubectl(&["version", "-o", "json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("version json");
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.36.3");
    assert_eq!(v["clientVersion"]["gitVersion"], "v1.36.3");
}
