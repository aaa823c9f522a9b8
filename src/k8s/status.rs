//! What the controller tells the cluster: Route `status.conditions`,
//! `Ingress.status.loadBalancer`, and Events that `kubectl describe` shows.
//! Writes run off the rebuild loop, and each is made only when what it says
//! changed, so a resync does not rewrite every object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::object::{Conflict, Key, Kind, Subject};
use crate::config::{KubernetesSettings, Problem, Publish};

/// The field manager of every status write.
const MANAGER: &str = "postern";

/// The outcome of reconciling one object.
pub(crate) struct Report {
    pub subject: Subject,
    pub generation: Option<i64>,
    pub problems: Vec<Problem>,
    pub ignored: Vec<String>,
    /// Some version of it is serving (this one, or the last good one).
    pub serving: bool,
    pub to: Option<String>,
}

/// Writes status and Events.
pub(crate) struct StatusWriter {
    client: Client,
    recorder: Recorder,
    publish: Option<Publish>,
    /// What was last said about each object (a hash of it: this map holds
    /// an entry per object), to say it once.
    said: Arc<Mutex<HashMap<Key, u64>>>,
}

impl StatusWriter {
    pub(crate) fn new(client: Client, settings: &KubernetesSettings) -> Self {
        let reporter =
            Reporter { controller: settings.controller_name.clone(), instance: std::env::var("POD_NAME").ok() };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            publish: settings.publish.clone(),
            said: Arc::default(),
        }
    }

    /// Forgets what was said, so everything is said again (a new leader).
    pub(crate) fn forget(&self) {
        self.said.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Writes what changed, in the background.
    pub(crate) fn report(&self, reports: Vec<Report>, conflicts: Vec<Conflict>, tls: Vec<(Key, Problem)>) {
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let publish = self.publish.clone();
        let said = self.said.clone();
        tokio::spawn(async move {
            let address = match &publish {
                Some(p) => published_address(&client, p).await,
                None => None,
            };
            for r in reports {
                let key = match &r.subject {
                    Subject::Ingress(i) => (Kind::Ingress, i.namespace().unwrap_or_default(), i.name_any()),
                    Subject::Route(o) => (Kind::Route, o.namespace().unwrap_or_default(), o.name_any()),
                };
                let summary = said_hash(&(
                    r.generation,
                    messages(&r.problems),
                    r.serving,
                    &r.to,
                    &r.ignored,
                    address.as_ref().map(ToString::to_string),
                ));
                if said.lock().unwrap_or_else(|p| p.into_inner()).get(&key) == Some(&summary) {
                    continue;
                }
                if let Err(e) = write(&client, &recorder, &r, address.as_ref()).await {
                    tracing::warn!(k8s.object = %format!("{}/{}", key.1, key.2), error = %e, "status write failed");
                    continue;
                }
                said.lock().unwrap_or_else(|p| p.into_inner()).insert(key, summary);
            }
            for c in conflicts {
                let note = c.note();
                let said_note = said_hash(&note);
                // One remembered note per host and path, so an object that
                // loses two rules does not alternate between them.
                let key = (
                    c.loser.0,
                    c.loser.1.clone(),
                    format!("{}#conflict {} {}", c.loser.2, c.host, c.path.as_deref().unwrap_or("*")),
                );
                if said.lock().unwrap_or_else(|p| p.into_inner()).get(&key) == Some(&said_note) {
                    continue;
                }
                let reference = reference_of(&client, &c.loser).await;
                if let Some(reference) = reference {
                    let _ = event(&recorder, &reference, EventType::Warning, "HostConflict", &note).await;
                }
                said.lock().unwrap_or_else(|p| p.into_inner()).insert(key, said_note);
            }
            for (key, problem) in tls {
                let note = problem.to_string();
                let said_note = said_hash(&note);
                let said_key = (key.0, key.1.clone(), format!("{}#tls", key.2));
                if said.lock().unwrap_or_else(|p| p.into_inner()).get(&said_key) == Some(&said_note) {
                    continue;
                }
                if let Some(reference) = reference_of(&client, &key).await {
                    let _ = event(&recorder, &reference, EventType::Warning, "BadTLSSecret", &note).await;
                }
                said.lock().unwrap_or_else(|p| p.into_inner()).insert(said_key, said_note);
            }
        });
    }
}

/// What [`StatusWriter`] remembers of a message. A collision would only
/// skip one rewrite of an unchanged-looking status, at odds of 2^-64.
fn said_hash(what: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(what)
}

fn messages(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

async fn write(
    client: &Client,
    recorder: &Recorder,
    r: &Report,
    address: Option<&serde_json::Value>,
) -> Result<(), kube::Error> {
    let reference = match &r.subject {
        Subject::Ingress(i) => i.object_ref(&()),
        Subject::Route(o) => o.object_ref(&()),
    };
    if !r.problems.is_empty() {
        let why = if r.serving { " (the last valid version keeps serving)" } else { "" };
        event(recorder, &reference, EventType::Warning, "Invalid", &format!("{}{why}", messages(&r.problems))).await?;
    }
    if !r.ignored.is_empty() {
        let note = format!("ignored (no meaning in Postern): {}", r.ignored.join(", "));
        event(recorder, &reference, EventType::Normal, "IgnoredAnnotations", &note).await?;
    }
    match &r.subject {
        Subject::Route(route) => {
            let api: Api<super::crd::Route> = Api::namespaced(client.clone(), &route.namespace().unwrap_or_default());
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let old = route.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            let condition = |type_: &str, ok: bool, reason: &str, message: String| {
                let status = if ok { "True" } else { "False" };
                // The transition time moves only when the status does.
                let since = old
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map_or(now.clone(), |c| c.last_transition_time.clone());
                Condition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    observed_generation: r.generation,
                    last_transition_time: since,
                }
            };
            let accepted = r.problems.is_empty();
            let conditions = vec![
                condition(
                    "Accepted",
                    accepted,
                    if accepted { "Accepted" } else { "Invalid" },
                    if accepted { "the spec is valid".into() } else { messages(&r.problems) },
                ),
                condition(
                    "Ready",
                    r.serving,
                    match (accepted, r.serving) {
                        (true, true) => "Serving",
                        (false, true) => "LastValidVersionServing",
                        _ => "NotServing",
                    },
                    if r.serving { "the route is serving".into() } else { "nothing of this Route is serving".into() },
                ),
            ];
            let patch = json!({
                "apiVersion": "postern.dev/v1alpha1", "kind": "Route",
                "status": { "observedGeneration": r.generation, "conditions": conditions, "to": r.to }
            });
            api.patch_status(&route.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        }
        Subject::Ingress(ing) => {
            if let Some(address) = address {
                let current = ing
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .map(|lb| serde_json::to_value(lb).unwrap_or_default());
                let wanted = json!({ "ingress": address });
                if current.as_ref() != Some(&wanted) {
                    let api: Api<Ingress> = Api::namespaced(client.clone(), &ing.namespace().unwrap_or_default());
                    let patch = json!({ "status": { "loadBalancer": wanted } });
                    api.patch_status(&ing.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                }
            }
        }
    }
    Ok(())
}

async fn event(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) -> Result<(), kube::Error> {
    // Events hold at most 1 kB of message.
    let mut note = note.to_string();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    recorder
        .publish(
            &Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None },
            reference,
        )
        .await
}

/// An object reference for `key`, read from the API server (conflict and
/// TLS events name objects the caller only has keys for).
async fn reference_of(client: &Client, key: &Key) -> Option<ObjectReference> {
    let (kind, ns, name) = key;
    match kind {
        Kind::Ingress => Api::<Ingress>::namespaced(client.clone(), ns).get(name).await.ok().map(|o| o.object_ref(&())),
        Kind::Route => {
            Api::<super::crd::Route>::namespaced(client.clone(), ns).get(name).await.ok().map(|o| o.object_ref(&()))
        }
    }
}

/// `status.loadBalancer.ingress` entries: the configured address, or the
/// publish Service's load-balancer address (its cluster IP if it has none).
async fn published_address(client: &Client, publish: &Publish) -> Option<serde_json::Value> {
    match publish {
        Publish::Address(a) if a.parse::<std::net::IpAddr>().is_ok() => Some(json!([{ "ip": a }])),
        Publish::Address(a) => Some(json!([{ "hostname": a }])),
        Publish::Service { namespace, name } => {
            let svc = Api::<Service>::namespaced(client.clone(), namespace).get(name).await.ok()?;
            let lb = svc.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
            if !lb.is_empty() {
                return serde_json::to_value(lb).ok();
            }
            let ip = svc.spec.and_then(|s| s.cluster_ip).filter(|ip| ip != "None")?;
            Some(json!([{ "ip": ip }]))
        }
    }
}
