//! The watch-and-rebuild loop.
//!
//! kube-runtime reflectors (watchers with their backoff and re-list on
//! `410 Gone`) keep a cache of Ingresses, Routes, IngressClasses, Services,
//! EndpointSlices and TLS Secrets. Each event names what changed; the loop
//! drains whatever has queued up (so a burst is one rebuild), retranslates
//! only the objects it touches (an EndpointSlice change touches the objects
//! that use its Service), assembles the cluster's routes from the cached
//! per-object results, and hands them to the publisher. A re-list replaces
//! the cache whole at its end (the reflector's buffered init), so an empty
//! or partial list after an error never reads as "everything was deleted".

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

use super::assembly::{Assembly, Entry};
use super::backends::Backends;
use super::compact::{self, Compact};
use super::crd::Route;
use super::leader::Election;
use super::object::{Key, Kind, Subject};
use super::status::{Report, StatusWriter};
use super::translate;
use super::{Check, ClusterRoutes, Publish};
use crate::config::{CertifiedKey, KubernetesSettings, Problem};

/// What a watch event says changed.
#[derive(Debug)]
enum Change {
    Object(Key),
    /// A Service or its EndpointSlices (`namespace`, `service`).
    Service(String, String),
    /// A TLS Secret.
    Secret,
    /// IngressClasses: which class is the default may have changed.
    Classes,
    /// A watcher finished a (re-)list: every object of that stream may
    /// have changed.
    Listed(Stream_),
}

/// Which watch stream finished listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stream_ {
    Ingress,
    Route,
    Class,
    Service,
    Slice,
    Secret,
}

const ALL_STREAMS: usize = 6;

/// The caches of every namespace watched, per kind.
struct Stores {
    ingresses: Vec<Store<Compact<Ingress>>>,
    routes: Vec<Store<Compact<Route>>>,
    classes: Store<IngressClass>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
}

fn find<K>(stores: &[Store<K>], namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let key = ObjectRef::new(name).within(namespace);
    stores.iter().find_map(|s| s.get(&key))
}

/// Runs until `stop` turns true. `publish` receives the cluster's routes
/// after the first full sync and after every change. `write_status`: tell
/// the cluster (status, Events) what was made of each object.
pub(crate) async fn run(
    client: Client,
    settings: KubernetesSettings,
    check: Check,
    publish: Publish,
    write_status: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let api = |ns: &Option<String>| -> (Client, Option<String>) { (client.clone(), ns.clone()) };

    let mut stores = Stores {
        ingresses: Vec::new(),
        routes: Vec::new(),
        classes: spawn_watch(Api::all(client.clone()), watcher::Config::default(), &tx, Stream_::Class, |_| {
            Some(Change::Classes)
        }),
        services: Vec::new(),
        slices: Vec::new(),
        secrets: Vec::new(),
    };
    for ns in &namespaces {
        let (c, n) = api(ns);
        stores.ingresses.push(spawn_watch(scoped(&c, &n), watcher::Config::default(), &tx, Stream_::Ingress, |i| {
            Some(Change::Object((Kind::Ingress, i.namespace().unwrap_or_default(), i.name_any())))
        }));
        stores.routes.push(spawn_watch(scoped(&c, &n), watcher::Config::default(), &tx, Stream_::Route, |r| {
            Some(Change::Object((Kind::Route, r.namespace().unwrap_or_default(), r.name_any())))
        }));
        stores.services.push(spawn_watch(scoped(&c, &n), watcher::Config::default(), &tx, Stream_::Service, |s| {
            Some(Change::Service(s.namespace().unwrap_or_default(), s.name_any()))
        }));
        stores.slices.push(spawn_watch(scoped(&c, &n), watcher::Config::default(), &tx, Stream_::Slice, |s| {
            let service = s.labels().get("kubernetes.io/service-name")?.clone();
            Some(Change::Service(s.namespace().unwrap_or_default(), service))
        }));
        stores.secrets.push(spawn_watch(
            scoped(&c, &n),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            &tx,
            Stream_::Secret,
            |_| Some(Change::Secret),
        ));
    }
    drop(tx);

    let status = StatusWriter::new(client.clone(), &settings);
    // Only the Lease holder writes status and Events; every replica serves.
    let (leading_tx, mut leading) = tokio::sync::watch::channel(!settings.leader_election);
    let mut election = None;
    if write_status && settings.leader_election {
        let namespace = settings.namespaces.first().map_or("default", String::as_str);
        let lease = Election::new(client.clone(), namespace, &format!("{}-leader", settings.ingress_class));
        election = Some(tokio::spawn(lease.run(leading_tx, stop.clone())));
    }
    let mut assembly = Assembly::default();
    let mut certs: (Arc<[CertifiedKey]>, Vec<(Key, Problem)>) = (Arc::new([]), Vec::new());
    let mut listed: BTreeSet<Stream_> = BTreeSet::new();
    let per_stream = namespaces.len();
    let mut list_counts: HashMap<Stream_, usize> = HashMap::new();
    let mut synced = false;
    let mut dirty: BTreeSet<Key> = BTreeSet::new();
    let mut all_dirty = false;
    let mut stop = stop;
    let mut election_open = true;
    loop {
        let first = tokio::select! {
            change = rx.recv() => match change {
                Some(c) => c,
                None => break,
            },
            changed = leading.changed(), if election_open => {
                if changed.is_err() {
                    election_open = false;
                    continue;
                }
                if *leading.borrow_and_update() {
                    // A new leader says everything once more: status may
                    // have been written by another replica, or not at all.
                    status.forget();
                    Change::Classes
                } else {
                    continue;
                }
            }
            _ = stop.changed() => break,
        };
        // Coalesce: everything already queued is part of this round, and
        // so is what the watch tasks still hold: a round at 20,000 objects
        // takes tens of milliseconds without yielding, and events that
        // piled up in the streams meanwhile must join the next round whole
        // rather than one per round (a backlog that would only grow).
        let mut changes = vec![first];
        for _ in 0..16 {
            tokio::task::yield_now().await;
            let before = changes.len();
            while let Ok(c) = rx.try_recv() {
                changes.push(c);
            }
            if changes.len() == before {
                break;
            }
        }
        let mut touched_services: BTreeSet<(String, String)> = BTreeSet::new();
        let mut touched_secrets = false;
        for change in changes {
            match change {
                Change::Object(key) => {
                    dirty.insert(key);
                }
                Change::Service(ns, name) => {
                    touched_services.insert((ns, name));
                }
                Change::Secret => touched_secrets = true,
                Change::Classes => all_dirty = true,
                Change::Listed(stream) => {
                    let n = list_counts.entry(stream).or_default();
                    *n += 1;
                    let needed = if stream == Stream_::Class { 1 } else { per_stream };
                    if *n >= needed {
                        listed.insert(stream);
                    }
                    all_dirty = true;
                    touched_secrets = true;
                }
            }
        }
        if !synced && listed.len() < ALL_STREAMS {
            continue;
        }
        if !touched_services.is_empty() {
            for (key, entry) in assembly.entries() {
                if entry.services.iter().any(|s| touched_services.contains(s)) {
                    dirty.insert(key.clone());
                }
            }
        }
        if all_dirty {
            for s in &stores.ingresses {
                dirty
                    .extend(s.state().iter().map(|i| (Kind::Ingress, i.namespace().unwrap_or_default(), i.name_any())));
            }
            for s in &stores.routes {
                dirty.extend(s.state().iter().map(|r| (Kind::Route, r.namespace().unwrap_or_default(), r.name_any())));
            }
            dirty.extend(assembly.keys().cloned());
            all_dirty = false;
        }
        if dirty.is_empty() && !touched_secrets && synced {
            continue;
        }
        let default_class = default_class(&stores.classes, &settings);
        let mut reports = Vec::new();
        let round = std::time::Instant::now();
        let objects = dirty.len();
        for key in std::mem::take(&mut dirty) {
            reconcile(&key, &stores, &settings, default_class, &check, &mut assembly, &mut reports);
        }
        let translated = round.elapsed();
        let routes_changed = assembly.assemble();
        let certs_changed = assembly.take_tls_changed() || touched_secrets;
        if certs_changed {
            let (list, problems) = certificates(&assembly, &stores.secrets);
            certs = (list.into(), problems);
        }
        let assembled = round.elapsed();
        // Nothing the table is made of changed (a label, a status, the same
        // endpoints): the live table stays as it is.
        if routes_changed || certs_changed || !synced {
            let hosts = assembly.hosts();
            let count = hosts.len();
            publish(ClusterRoutes { hosts, certificates: certs.0.clone() });
            // Where a round's time goes, for the scale benchmark.
            tracing::debug!(
                k8s.objects = objects,
                hosts = count,
                translate_ms = translated.as_secs_f64() * 1e3,
                assemble_ms = (assembled - translated).as_secs_f64() * 1e3,
                publish_ms = (round.elapsed() - assembled).as_secs_f64() * 1e3,
                "cluster routes rebuilt"
            );
        }
        if !synced {
            synced = true;
            let hosts = assembly.hosts();
            let routes = hosts.values().map(|h| h.0.len()).sum::<usize>();
            tracing::info!(routes, hosts = hosts.len(), objects = assembly.len(), "cluster synced");
        }
        if write_status && *leading.borrow() {
            status.report(reports, assembly.conflicts(), certs.1.clone());
        }
    }
    // Let the election release the Lease before the process exits.
    if let Some(election) = election {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), election).await;
    }
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts a reflector for `api` whose events become [`Change`]s.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    tx: &mpsc::UnboundedSender<Change>,
    stream: Stream_,
    change: fn(&K) -> Option<Change>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + ResourceExt
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let watch = watcher::watcher(api, config).default_backoff().modify(compact::slim);
    let events = reflector::reflector(writer, watch);
    let tx = tx.clone();
    tokio::spawn(forward(events, tx, stream, change));
    reader
}

async fn forward<K, S>(events: S, tx: mpsc::UnboundedSender<Change>, stream: Stream_, change: fn(&K) -> Option<Change>)
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut events = std::pin::pin!(events);
    let mut listed = false;
    while let Some(event) = events.next().await {
        let message = match event {
            Ok(Event::Apply(o) | Event::Delete(o)) => change(&o),
            Ok(Event::InitDone) => {
                listed = true;
                Some(Change::Listed(stream))
            }
            Ok(Event::Init | Event::InitApply(_)) => None,
            Err(e) => {
                // The watcher backs off and retries (re-listing after 410).
                let status = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) => Some(s.code),
                    _ => None,
                };
                match status {
                    // Not installed or not allowed: nothing of this kind can
                    // be had until that changes, and the rest of the cluster
                    // must not wait for it. Counted as listed (empty) once;
                    // the watcher keeps retrying and picks it up later.
                    Some(code @ (403 | 404)) if !listed => {
                        listed = true;
                        let hint = match (code, stream) {
                            (404, Stream_::Route) => {
                                "the Route CRD is not installed (`postern crd | kubectl apply -f -`); Routes are ignored until it is"
                            }
                            (404, _) => "the API server does not serve this kind",
                            _ => {
                                "forbidden: the service account lacks list/watch on this kind (see the RBAC in the README)"
                            }
                        };
                        tracing::error!(k8s.stream = ?stream, error = %e, "{hint}");
                        Some(Change::Listed(stream))
                    }
                    _ => {
                        tracing::warn!(k8s.stream = ?stream, error = %e, "watch failed; retrying");
                        None
                    }
                }
            }
        };
        if let Some(m) = message
            && tx.send(m).is_err()
        {
            return;
        }
    }
}

/// Whether Ingresses without a class are ours: our IngressClass is marked
/// as the cluster default.
fn default_class(classes: &Store<IngressClass>, settings: &KubernetesSettings) -> bool {
    classes.state().iter().any(|c| {
        c.name_any() == settings.ingress_class
            && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(settings.controller_name.as_str())
            && c.annotations().get("ingressclass.kubernetes.io/is-default-class").map(String::as_str) == Some("true")
    })
}

/// Retranslates one object into its cache entry.
fn reconcile(
    key: &Key,
    stores: &Stores,
    settings: &KubernetesSettings,
    default_class: bool,
    check: &Check,
    assembly: &mut Assembly,
    reports: &mut Vec<Report>,
) {
    let (kind, ns, name) = key;
    // The cache holds what `Compact::new` wrote, so a failure to read it
    // back is a bug: said loudly, and the object's last routes keep serving.
    let unreadable = |e: &serde_json::Error| {
        tracing::error!(k8s.object = %format!("{kind:?} {ns}/{name}"), error = %e, "cached object unreadable");
    };
    let backends = Backends { services: &stores.services, slices: &stores.slices };
    let (mut translated, created, generation, reference) = match kind {
        Kind::Ingress => {
            let Ok(found) = cached(&stores.ingresses, ns, name).inspect_err(unreadable) else { return };
            let Some(ing) = found.filter(|i| translate::ingress_is_ours(i, &settings.ingress_class, default_class))
            else {
                assembly.remove(key);
                return;
            };
            let ing = Arc::new(ing);
            let t = translate::ingress(&ing, &settings.route_defaults, &backends);
            (t, ing.metadata.creation_timestamp.clone(), ing.metadata.generation, Subject::Ingress(ing))
        }
        Kind::Route => {
            let Ok(found) = cached(&stores.routes, ns, name).inspect_err(unreadable) else { return };
            let Some(route) = found else {
                assembly.remove(key);
                return;
            };
            let route = Arc::new(route);
            let t = translate::route(&route, &settings.route_defaults, &backends);
            (t, route.metadata.creation_timestamp.clone(), route.metadata.generation, Subject::Route(route))
        }
    };
    let mut problems = translated.problems;
    for r in &translated.routes {
        if let Err(p) = check(&r.spec) {
            // Named as the object's own field, as translation names its own.
            problems.push(match kind {
                Kind::Route => translate::rename_route_field(p),
                Kind::Ingress => translate::rename_ingress_field(p, "spec"),
            });
        }
    }
    // Kept for the object's lifetime, 20,000 times over at scale: no spare
    // capacity (a one-route Vec grown by push holds four).
    translated.routes.shrink_to_fit();
    translated.services.shrink_to_fit();
    translated.tls.shrink_to_fit();
    let previous = assembly.get(key);
    // Dependencies always follow the latest version, so a fix to a Service
    // the new version needs is noticed.
    let mut entry = Entry {
        created,
        good: previous.and_then(|e| e.good.clone()),
        services: translated.services,
        tls: previous.map(|e| e.tls.clone()).unwrap_or_default(),
    };
    if problems.is_empty() {
        entry.good = Some(translated.routes);
        entry.tls = translated.tls;
    }
    let report = Report {
        subject: reference,
        generation,
        problems,
        ignored: translated.ignored,
        serving: entry.good.is_some(),
        to: entry
            .good
            .as_ref()
            .map(|routes| routes.iter().flat_map(|r| r.spec.to.iter().cloned()).collect::<Vec<_>>().join(", ")),
    };
    assembly.put(key.clone(), entry);
    reports.push(report);
}

/// A cached object, parsed back.
fn cached<K>(stores: &[Store<Compact<K>>], namespace: &str, name: &str) -> Result<Option<K>, serde_json::Error>
where
    K: Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    find(stores, namespace, name).map(|c| c.object()).transpose()
}

/// The serving certificates of the Ingresses' `spec.tls` Secrets; a
/// missing or bad Secret is a problem for its Ingress (its hosts get the
/// default certificate meanwhile).
fn certificates(assembly: &Assembly, secrets: &[Store<Secret>]) -> (Vec<CertifiedKey>, Vec<(Key, Problem)>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, entry) in assembly.entries() {
        for (_, secret) in &entry.tls {
            let (_, ns, name) = key;
            let origin = crate::config::Origin::Object { kind: "Ingress", namespace: ns.clone(), name: name.clone() };
            let field = format!("spec.tls (secret {secret})");
            match find(secrets, ns, secret).as_deref().map(|s| tls_secret(s, ns)) {
                Some(Ok(ck)) => {
                    if seen.insert((ns.clone(), secret.clone())) {
                        certs.push(ck);
                    }
                }
                Some(Err(e)) => problems.push((key.clone(), Problem::new(&origin, Some(&field), e))),
                None => problems.push((
                    key.clone(),
                    Problem::new(
                        &origin,
                        Some(&field),
                        format!(
                            "Secret {ns}/{secret} of type kubernetes.io/tls not found; serving the default certificate"
                        ),
                    ),
                )),
            }
        }
    }
    (certs, problems)
}

fn tls_secret(secret: &Secret, ns: &str) -> Result<CertifiedKey, String> {
    let name = secret.name_any();
    let data = secret.data.as_ref().ok_or_else(|| format!("Secret {ns}/{name} has no data"))?;
    let get = |k: &str| data.get(k).map(|b| b.0.clone()).ok_or_else(|| format!("Secret {ns}/{name} has no {k}"));
    let (cert, key) = (get("tls.crt")?, get("tls.key")?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("Secret {ns}/{name}: tls.crt is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("Secret {ns}/{name}: tls.crt holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("Secret {ns}/{name}: tls.key: {e}"))?;
    Ok(CertifiedKey { chain, key, origin: format!("Secret {ns}/{name}") })
}
