//! The one place routes are published: the config file and the cluster
//! each hand their part here, and the table is rebuilt from both (on each
//! host, the file's routes first, in file order, then the cluster's in
//! match order) and swapped in atomically, with the certificates of both.
//!
//! A new config file rebuilds everything. A cluster change rebuilds only
//! the hosts whose routes changed: the controller hands over the same
//! allocation for an unchanged host, the table shares every unchanged host
//! with the last one, and the certificates are remade only when their
//! inputs changed; so an apply costs what it changed, not the size of the
//! cluster.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::config::{CertifiedKey, Problem, RouteSpec, Settings};
use crate::k8s::{ClusterRoutes, HostRoutes};
use crate::proxy::tls::CertResolver;
use crate::routes::{Route, RouteTable, Routes};
use crate::telemetry::Metrics;

/// Most names the generated self-signed certificate lists.
const MAX_GENERATED_NAMES: usize = 100;

/// Why a set of routes was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Tls(#[from] crate::proxy::tls::TlsError),
}

/// A cluster host's compiled routes, with the specs they came from.
type Compiled = Vec<(Arc<RouteSpec>, Arc<Route>)>;

/// What each source last handed over, compiled, and the table made of it.
#[derive(Default)]
struct Parts {
    settings: Settings,
    /// The file's routes by `from` host, in file order.
    file: HashMap<String, Vec<Arc<Route>>>,
    /// The file's hosts in file order (the generated certificate's names).
    file_hosts: Vec<String>,
    cluster: ClusterRoutes,
    /// The cluster's routes by host, compiled with `settings`.
    compiled: HashMap<String, Compiled>,
    table: RouteTable,
    /// What the serving certificates were last made from (the cluster's
    /// certificates and the generated one's names), and whether one was
    /// generated: unchanged inputs keep them.
    certs_from: Option<(Arc<[CertifiedKey]>, Vec<String>, bool)>,
}

impl Parts {
    /// A host's bucket: the file's routes, then the cluster's.
    fn bucket(&self, host: &str) -> Vec<Arc<Route>> {
        let file = self.file.get(host).into_iter().flatten().cloned();
        file.chain(self.compiled.get(host).into_iter().flatten().map(|(_, r)| r.clone())).collect()
    }

    /// The generated certificate's names: the file's hosts, then the
    /// cluster's, at most [`MAX_GENERATED_NAMES`] (it is a stand-in no
    /// browser trusts, and one naming 20,000 cluster hosts is a 400 KB
    /// certificate that every handshake would carry).
    fn fallback_names(&self) -> Vec<String> {
        let cluster = self.cluster.hosts.keys().filter(|h| *h != "*" && !self.file.contains_key(*h));
        self.file_hosts.iter().chain(cluster).take(MAX_GENERATED_NAMES).cloned().collect()
    }
}

/// Compiles one cluster host's specs, reusing the compiled route of every
/// spec handed over before (the same `Arc`).
fn compile_host(
    settings: &Settings,
    specs: &HostRoutes,
    before: Option<Compiled>,
    problems: &mut Vec<Problem>,
) -> Compiled {
    let mut before: HashMap<usize, Arc<Route>> =
        before.into_iter().flatten().map(|(spec, route)| (Arc::as_ptr(&spec) as usize, route)).collect();
    let mut compiled = Vec::with_capacity(specs.0.len());
    for spec in specs.0.iter() {
        let route = match before.remove(&(Arc::as_ptr(spec) as usize)) {
            Some(route) => route,
            None => match RouteTable::compile_one(settings, (**spec).clone()) {
                Ok(route) => route,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            },
        };
        compiled.push((spec.clone(), route));
    }
    compiled
}

/// The live table's sources.
pub struct RouteSources {
    parts: Mutex<Parts>,
    pub routes: Arc<Routes>,
    pub certs: Arc<CertResolver>,
    metrics: Arc<Metrics>,
}

impl RouteSources {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        RouteSources {
            parts: Mutex::new(Parts { settings, ..Parts::default() }),
            routes: Arc::new(Routes::default()),
            certs: Arc::new(CertResolver::default()),
            metrics,
        }
    }

    /// The file's settings and routes (at start-up and on every good reload).
    /// Returns the compile problems and whether a self-signed certificate
    /// was generated; on a certificate error nothing changes.
    pub fn publish_file(
        &self,
        settings: Settings,
        routes: Vec<RouteSpec>,
    ) -> Result<(Vec<Problem>, bool), PublishError> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        let mut next = Parts { cluster: parts.cluster.clone(), ..Parts::default() };
        for spec in routes {
            match RouteTable::compile_one(&settings, spec) {
                Ok(route) => {
                    let host = route.from.host.clone();
                    if host != "*" && !next.file.contains_key(&host) {
                        next.file_hosts.push(host.clone());
                    }
                    next.file.entry(host).or_default().push(route);
                }
                Err(p) => problems.push(p),
            }
        }
        // New settings: every cluster route is compiled afresh.
        for (host, specs) in &next.cluster.hosts {
            let compiled = compile_host(&settings, specs, None, &mut problems);
            next.compiled.insert(host.clone(), compiled);
        }
        next.settings = settings;
        let hosts: BTreeSet<&String> = next.file.keys().chain(next.compiled.keys()).collect();
        let buckets: Vec<(String, Vec<Arc<Route>>)> = hosts.into_iter().map(|h| (h.clone(), next.bucket(h))).collect();
        let empty = RouteTable::from_routes(&next.settings, []);
        next.table = empty.with_buckets(buckets);
        let generated = self.replace_certificates(&mut next)?;
        self.go_live(&next);
        *parts = next;
        Ok((problems, generated))
    }

    /// The cluster's routes and certificates (after every change there).
    pub fn publish_cluster(&self, cluster: ClusterRoutes) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let changed: Vec<String> = parts
            .cluster
            .hosts
            .diff(&cluster.hosts)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(host, _)
                | imbl::ordmap::DiffItem::Remove(host, _)
                | imbl::ordmap::DiffItem::Update { new: (host, _), .. } => host.clone(),
            })
            .collect();
        let mut problems = Vec::new();
        for host in &changed {
            let before = parts.compiled.remove(host);
            if let Some(specs) = cluster.hosts.get(host) {
                let compiled = compile_host(&parts.settings, specs, before, &mut problems);
                parts.compiled.insert(host.clone(), compiled);
            }
        }
        // Objects were checked one by one before they got here; what is
        // left is a clash with the file's settings.
        for p in problems {
            tracing::warn!(problem = %p, "cluster route left out");
        }
        parts.cluster = cluster;
        let buckets: Vec<(String, Vec<Arc<Route>>)> = changed
            .into_iter()
            .map(|h| {
                let bucket = parts.bucket(&h);
                (h, bucket)
            })
            .collect();
        parts.table = parts.table.with_buckets(buckets);
        if let Err(e) = self.replace_certificates(&mut parts) {
            tracing::error!(error = %e, "cluster certificates rejected; keeping the last ones");
        }
        self.go_live(&parts);
    }

    /// Makes the serving certificates from `parts` unless they were made
    /// from the same inputs before. Returns whether one was generated.
    fn replace_certificates(&self, parts: &mut Parts) -> Result<bool, PublishError> {
        if parts.settings.insecure_server {
            return Ok(false);
        }
        let names = parts.fallback_names();
        if let Some((certs, last_names, generated)) = &parts.certs_from
            && (Arc::ptr_eq(certs, &parts.cluster.certificates)
                || certs.is_empty() && parts.cluster.certificates.is_empty())
            && *last_names == names
        {
            return Ok(*generated);
        }
        let (generated, skipped) =
            self.certs.replace_with(&parts.settings.certificates, &parts.cluster.certificates, &names)?;
        for e in skipped {
            tracing::error!(error = %e, "certificate left out");
        }
        parts.certs_from = Some((parts.cluster.certificates.clone(), names, generated));
        Ok(generated)
    }

    fn go_live(&self, parts: &Parts) {
        self.metrics.set_routes_loaded(parts.table.len());
        self.routes.publish(parts.table.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str) -> Arc<RouteSpec> {
        Arc::new(RouteSpec {
            from: format!("https://{host}"),
            response: Some(crate::config::DirectResponse {
                status: 200,
                body: host.into(),
                content_type: "text/plain".into(),
            }),
            ..RouteSpec::default()
        })
    }

    /// What the controller hands over: the specs filed by host.
    fn cluster(specs: &[Arc<RouteSpec>]) -> ClusterRoutes {
        let mut hosts: std::collections::BTreeMap<String, Vec<Arc<RouteSpec>>> = Default::default();
        for s in specs {
            hosts.entry(crate::k8s::table_host(s.from.trim_start_matches("https://"))).or_default().push(s.clone());
        }
        ClusterRoutes {
            hosts: hosts.into_iter().map(|(h, s)| (h, HostRoutes(s.into()))).collect(),
            certificates: Arc::new([]),
        }
    }

    fn insecure() -> Settings {
        Settings { insecure_server: true, ..Settings::default() }
    }

    #[test]
    fn unchanged_cluster_specs_keep_their_compiled_routes() {
        let sources = RouteSources::new(insecure(), Arc::new(Metrics::new()));
        let (a, b) = (spec("a.example.com"), spec("b.example.com"));
        let first_cluster = cluster(&[a.clone(), b.clone()]);
        sources.publish_cluster(first_cluster.clone());
        let first = sources.routes.snapshot();
        let route_a = first.lookup("a.example.com", None, "/").expect("a").clone();
        // `b` changes (a new allocation); `a`'s host is handed over as it was.
        let mut second_cluster = first_cluster.clone();
        second_cluster.hosts.insert("b.example.com".into(), HostRoutes(vec![spec("b.example.com")].into()));
        sources.publish_cluster(second_cluster);
        let second = sources.routes.snapshot();
        assert!(Arc::ptr_eq(&route_a, second.lookup("a.example.com", None, "/").expect("a")), "not recompiled");
        assert!(!Arc::ptr_eq(
            first.lookup("b.example.com", None, "/").expect("b"),
            second.lookup("b.example.com", None, "/").expect("b")
        ));
        // A host handed over anew but holding the same spec keeps its route.
        sources.publish_cluster(cluster(std::slice::from_ref(&a)));
        let third = sources.routes.snapshot();
        assert!(Arc::ptr_eq(&route_a, third.lookup("a.example.com", None, "/").expect("a")));
        assert!(third.lookup("b.example.com", None, "/").is_none(), "a host the cluster dropped is gone");
        assert_eq!(third.len(), 1);
        // New settings compile everything afresh.
        sources.publish_file(insecure(), vec![]).expect("publish");
        let fourth = sources.routes.snapshot();
        assert!(!Arc::ptr_eq(&route_a, fourth.lookup("a.example.com", None, "/").expect("a")));
        assert_eq!(fourth.len(), 1, "the cluster's routes stay when the file is published");
    }

    #[test]
    fn on_a_shared_host_the_file_routes_come_first_and_survive_cluster_changes() {
        let sources = RouteSources::new(insecure(), Arc::new(Metrics::new()));
        let file = RouteSpec { prefix: Some("/admin".into()), ..(*spec("a.example.com")).clone() };
        sources.publish_file(insecure(), vec![file]).expect("publish");
        let from_cluster = spec("a.example.com");
        sources.publish_cluster(cluster(std::slice::from_ref(&from_cluster)));
        let table = sources.routes.snapshot();
        assert_eq!(table.len(), 2);
        let admin = table.lookup("a.example.com", None, "/admin/x").expect("file route");
        assert!(
            matches!(&admin.rule, crate::routes::PathRule::Prefix(p) if p == "/admin"),
            "the file's route matches first"
        );
        assert!(table.lookup("a.example.com", None, "/other").is_some(), "the cluster's route serves the rest");
        sources.publish_cluster(cluster(&[]));
        let table = sources.routes.snapshot();
        assert_eq!(table.len(), 1, "the file's route stays when the cluster's goes");
        assert!(table.lookup("a.example.com", None, "/other").is_none());
    }

    #[test]
    fn certificates_are_made_again_only_when_their_inputs_change() {
        let sources = RouteSources::new(Settings::default(), Arc::new(Metrics::new()));
        sources.publish_cluster(cluster(&[spec("a.example.com")]));
        let first = sources.certs.fallback_certificate().expect("a generated certificate");
        // A new route on a host the certificate already names: same certificate.
        sources.publish_cluster(cluster(&[spec("a.example.com"), spec("a.example.com")]));
        assert!(Arc::ptr_eq(&first, &sources.certs.fallback_certificate().expect("cert")), "kept");
        // A new host: a certificate that names it.
        sources.publish_cluster(cluster(&[spec("a.example.com"), spec("b.example.com")]));
        assert!(!Arc::ptr_eq(&first, &sources.certs.fallback_certificate().expect("cert")), "made again");
    }
}
