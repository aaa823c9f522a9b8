//! The one place routes are published: the config file and the cluster
//! each hand their part here, and every change compiles the whole table
//! (file routes first, in file order, then the cluster's in match order)
//! and swaps it in atomically, with the certificates of both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Problem, RouteSpec, Settings};
use crate::k8s::ClusterRoutes;
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

/// What each source last handed over.
struct Parts {
    settings: Settings,
    file_routes: Vec<RouteSpec>,
    cluster: ClusterRoutes,
    /// Compiled cluster routes by the address of their spec: the controller
    /// hands over the same `Arc` for an unchanged object, so a change to
    /// one object compiles only its routes. Emptied when settings change.
    compiled: HashMap<usize, (Arc<RouteSpec>, Arc<Route>)>,
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
            parts: Mutex::new(Parts {
                settings,
                file_routes: Vec::new(),
                cluster: ClusterRoutes::default(),
                compiled: HashMap::new(),
            }),
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
        // New settings: every compiled route is compiled afresh.
        let next = Parts { settings, file_routes: routes, cluster: ClusterRoutes::default(), compiled: HashMap::new() };
        let previous = std::mem::replace(&mut *parts, next);
        parts.cluster = previous.cluster;
        match self.rebuild(&mut parts) {
            Ok(done) => Ok(done),
            Err(e) => {
                let cluster = std::mem::take(&mut parts.cluster);
                *parts = Parts { cluster, ..previous };
                Err(e)
            }
        }
    }

    /// The cluster's routes and certificates (after every change there).
    pub fn publish_cluster(&self, cluster: ClusterRoutes) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.cluster = cluster;
        match self.rebuild(&mut parts) {
            Ok((problems, _)) => {
                // Objects were checked one by one before they got here;
                // what is left is a clash with a file route.
                for p in problems {
                    tracing::warn!(problem = %p, "cluster route left out");
                }
            }
            Err(e) => tracing::error!(error = %e, "cluster certificates rejected; keeping the last ones"),
        }
    }

    fn rebuild(&self, parts: &mut Parts) -> Result<(Vec<Problem>, bool), PublishError> {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(parts.file_routes.len() + parts.cluster.routes.len());
        for spec in &parts.file_routes {
            match RouteTable::compile_one(&parts.settings, spec.clone()) {
                Ok(route) => routes.push(route),
                Err(p) => problems.push(p),
            }
        }
        let mut compiled = HashMap::with_capacity(parts.cluster.routes.len());
        for spec in &parts.cluster.routes {
            let key = Arc::as_ptr(spec) as usize;
            let route = match parts.compiled.remove(&key) {
                Some((same, route)) if Arc::ptr_eq(&same, spec) => route,
                _ => match RouteTable::compile_one(&parts.settings, (**spec).clone()) {
                    Ok(route) => route,
                    Err(p) => {
                        problems.push(p);
                        continue;
                    }
                },
            };
            compiled.insert(key, (spec.clone(), route.clone()));
            routes.push(route);
        }
        parts.compiled = compiled;
        let table = RouteTable::from_routes(&parts.settings, routes);
        let mut generated = false;
        if !parts.settings.insecure_server {
            // The generated certificate names the first hosts only: it is a
            // stand-in no browser trusts, and one naming 20,000 cluster hosts
            // is a 400 KB certificate that every handshake would carry.
            let mut hosts: Vec<String> =
                table.routes().iter().map(|r| r.from.host.clone()).filter(|h| h != "*").collect();
            hosts.dedup();
            hosts.truncate(MAX_GENERATED_NAMES);
            let (g, skipped) =
                self.certs.replace_with(&parts.settings.certificates, &parts.cluster.certificates, &hosts)?;
            generated = g;
            for e in skipped {
                tracing::error!(error = %e, "certificate left out");
            }
        }
        self.metrics.set_routes_loaded(table.len());
        self.routes.publish(table);
        Ok((problems, generated))
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

    fn insecure() -> Settings {
        Settings { insecure_server: true, ..Settings::default() }
    }

    #[test]
    fn unchanged_cluster_specs_keep_their_compiled_routes() {
        let sources = RouteSources::new(insecure(), Arc::new(Metrics::new()));
        let (a, b) = (spec("a.example.com"), spec("b.example.com"));
        sources.publish_cluster(ClusterRoutes { routes: vec![a.clone(), b.clone()], certificates: vec![] });
        let first = sources.routes.snapshot();
        let route_a = first.lookup("a.example.com", None, "/").expect("a").clone();
        // `b` changes (a new allocation); `a` is handed over as it was.
        sources.publish_cluster(ClusterRoutes { routes: vec![a, spec("b.example.com")], certificates: vec![] });
        let second = sources.routes.snapshot();
        assert!(Arc::ptr_eq(&route_a, second.lookup("a.example.com", None, "/").expect("a")), "not recompiled");
        assert!(!Arc::ptr_eq(
            first.lookup("b.example.com", None, "/").expect("b"),
            second.lookup("b.example.com", None, "/").expect("b")
        ));
        // New settings compile everything afresh.
        sources.publish_file(insecure(), vec![]).expect("publish");
        let third = sources.routes.snapshot();
        assert!(!Arc::ptr_eq(&route_a, third.lookup("a.example.com", None, "/").expect("a")));
        assert_eq!(third.len(), 2, "the cluster's routes stay when the file is published");
    }
}
