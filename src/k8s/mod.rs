//! The cluster side: Ingress objects and `Route` resources become routes.
//!
//! This module depends only on the config model: it turns objects into
//! [`RouteSpec`]s and certificates and hands them to `publish`, the same
//! place the file reloader hands its routes (`serve`); it never reaches
//! into the proxy. Each route is checked by `check` (the route table's own
//! compile step, injected by the caller) before it counts as valid, so a
//! bad object keeps its last valid version serving.

pub(crate) mod annotations;
mod assembly;
mod backends;
mod compact;
mod controller;
pub mod crd;
mod leader;
mod object;
mod status;
mod translate;

use std::sync::Arc;

use crate::config::{CertifiedKey, KubernetesSettings, Problem, RouteSpec};

/// What the cluster contributes: routes by host, and the TLS certificates
/// of Ingress `spec.tls` Secrets. Cheap to clone and to compare with the
/// last one handed over: what did not change is the same allocation.
#[derive(Debug, Clone, Default)]
pub struct ClusterRoutes {
    /// Keyed by the `from` host as the route table files it (lowercase,
    /// without the port; `*.example.com`, or `*` for any host).
    pub hosts: imbl::OrdMap<String, HostRoutes>,
    pub certificates: Arc<[CertifiedKey]>,
}

impl ClusterRoutes {
    /// Every route, host by host.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteSpec>> {
        self.hosts.values().flat_map(|h| h.0.iter())
    }

    pub fn len(&self) -> usize {
        self.hosts.values().map(|h| h.0.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// One host's routes in match order. Equal means the same allocation: an
/// unchanged host is handed over as it was, and comparing by content would
/// cost what sharing saves.
#[derive(Debug, Clone)]
pub struct HostRoutes(pub Arc<[Arc<RouteSpec>]>);

impl PartialEq for HostRoutes {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The key [`ClusterRoutes::hosts`] files a route under, from the host (and
/// port) of its `from` URL: lowercase, without the port.
pub(crate) fn table_host(from_host: &str) -> String {
    let host = match from_host.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => from_host,
    };
    host.to_ascii_lowercase()
}

/// Checks that one route compiles (`RouteTable`'s compile step).
pub type Check = Arc<dyn Fn(&RouteSpec) -> Result<(), Problem> + Send + Sync>;

/// Receives the cluster's routes after the first full sync and after every
/// change.
pub type Publish = Box<dyn Fn(ClusterRoutes) + Send + Sync>;

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot start the controller's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How to reach the cluster: `kubeconfig` and `context` if given, else the
/// in-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
}

/// A client configured the standard way.
pub async fn client(options: &ClientOptions) -> Result<kube::Client, Error> {
    let kube_options = kube::config::KubeConfigOptions { context: options.context.clone(), ..Default::default() };
    let config = match &options.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube_options).await.map_err(|e| Error::Config(e.to_string()))?
        }
        None if options.context.is_some() => {
            kube::Config::from_kubeconfig(&kube_options).await.map_err(|e| Error::Config(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// How much less CPU the controller's thread gets than the proxy's workers
/// when they compete (a nice value: 5 is about a third of a worker's
/// share), so a burst of object changes waits for requests, not the other
/// way round (see [`crate::background`]).
const CONTROLLER_NICE: i32 = 5;

/// The running controller thread (see [`spawn`]).
pub struct ControllerThread {
    finished: tokio::sync::oneshot::Receiver<()>,
}

impl ControllerThread {
    /// Resolves when the controller has stopped (after `stop` turned true).
    pub async fn finished(self) {
        let _ = self.finished.await;
    }
}

/// Runs the controller ([`run`]) on a thread and runtime of its own, below
/// the proxy workers' CPU priority ([`CONTROLLER_NICE`]); its client, its
/// watches and its route compiles all run there. Returns once the client is
/// made, so a bad kubeconfig is the caller's error.
pub async fn spawn(
    options: ClientOptions,
    settings: KubernetesSettings,
    check: Check,
    publish: Publish,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ControllerThread, Error> {
    let (made_tx, made_rx) = tokio::sync::oneshot::channel();
    let (finished_tx, finished) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Thread)?;
    std::thread::Builder::new()
        .name("postern-k8s".into())
        .spawn(move || {
            crate::background::lower_this_threads_priority(CONTROLLER_NICE);
            runtime.block_on(async move {
                match client(&options).await {
                    Ok(client) => {
                        let _ = made_tx.send(Ok(()));
                        run(client, settings, check, publish, stop).await;
                    }
                    Err(e) => {
                        let _ = made_tx.send(Err(e));
                    }
                }
            });
            // The watches' tasks end with the runtime, before this says so.
            drop(runtime);
            let _ = finished_tx.send(());
        })
        .map_err(Error::Thread)?;
    match made_rx.await {
        Ok(made) => made.map(|()| ControllerThread { finished }),
        Err(_) => Err(Error::Thread(std::io::Error::other("the controller's thread ended before its client was made"))),
    }
}

/// Watches the cluster and publishes its routes until `stop` turns true
/// (then releases the leader Lease, if held).
async fn run(
    client: kube::Client,
    settings: KubernetesSettings,
    check: Check,
    publish: Publish,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    controller::run(client, settings, check, publish, true, stop).await
}

/// The routes the controller would build from the cluster now: one full
/// sync, nothing written back (no status, no Events). For `postern routes
/// --kubernetes`.
pub async fn snapshot(
    client: kube::Client,
    settings: KubernetesSettings,
    check: Check,
    timeout: std::time::Duration,
) -> Option<ClusterRoutes> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let publish: Publish = Box::new(move |routes| {
        if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(routes);
        }
    });
    let (_stop, never) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::run(client, settings, check, publish, false, never));
    let routes = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
    task.abort();
    routes
}
