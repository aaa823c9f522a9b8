//! The `serve` command: load, compile, listen, reload, drain; and, with
//! Kubernetes on, the controller feeding the same table.

mod sources;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, KeyReload};
use crate::config::{self, Config, reload};
pub use sources::{PublishError, RouteSources};

use crate::proxy::tls::{TlsError, server_config};
use crate::proxy::{self, Proxy, Transport, admin};
use crate::routes::RouteTable;
use crate::telemetry::Metrics;

/// Whether and how to take routes from a cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// `--kubernetes` (the settings' `kubernetes.enabled` also turns it on).
    pub enable: bool,
    pub client: crate::k8s::ClientOptions,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::Error),
}

/// Runs the proxy until SIGTERM or SIGINT, then drains for up to `grace`.
pub async fn run(config_path: PathBuf, grace: Duration, cluster: Cluster) -> Result<(), ServeError> {
    // Watch before the first load, so an edit made while starting up is
    // not missed.
    let triggers = reload::watch(&config_path);
    let shutdown = ShutdownSignal::install()?;
    let Config { settings, routes: specs, problems } = config::load(&config_path)?;
    let metrics = Arc::new(Metrics::new());
    let sources = Arc::new(RouteSources::new(settings.clone(), metrics.clone()));
    let (compile_problems, generated) = sources.publish_file(settings.clone(), specs)?;
    for problem in problems.iter().chain(&compile_problems) {
        tracing::error!(problem = %problem, "route left out");
    }
    if generated {
        tracing::warn!(
            "no certificates configured: serving a generated self-signed certificate that browsers will not trust"
        );
    }
    tracing::info!(routes = sources.routes.snapshot().len(), config = %config_path.display(), "route table compiled");
    let (routes, certs) = (sources.routes.clone(), sources.certs.clone());
    let (auth, warnings) = Auth::new(&settings.auth, settings.insecure_server);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let auth = Arc::new(auth);
    let proxy = Arc::new(Proxy::new(routes.clone(), metrics.clone(), certs.clone(), auth.clone()));
    // Ready once the cluster's first full sync is in the table.
    let mut controller = None;
    let cluster_synced = if cluster.enable || settings.kubernetes.enabled {
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
        let synced_tx = std::sync::Mutex::new(Some(synced_tx));
        let check_settings = settings.clone();
        let check: crate::k8s::Check = Arc::new(move |spec| RouteTable::check(&check_settings, spec));
        let feed = sources.clone();
        let publish: crate::k8s::Publish = Box::new(move |cluster| {
            feed.publish_cluster(cluster);
            if let Some(tx) = synced_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(());
            }
        });
        tracing::info!(ingress_class = %settings.kubernetes.ingress_class, "watching the cluster");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let thread =
            crate::k8s::spawn(cluster.client.clone(), settings.kubernetes.clone(), check, publish, stop_rx).await?;
        controller = Some((stop_tx, thread));
        Some(synced_rx)
    } else {
        None
    };

    let stop = CancellationToken::new();
    let main = admin::bind(settings.address, "address").await?;
    let transport =
        if settings.insecure_server { Transport::Plain } else { Transport::Tls(server_config(certs.clone())) };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = settings.http_redirect_addr {
        let listener = admin::bind(addr, "http_redirect_addr").await?;
        // The bound port, not the configured one: `address` may say port 0.
        tasks.spawn(proxy::serve_redirect(proxy.clone(), listener, main.local_addr()?.port(), stop.clone()));
    }
    if let Some(addr) = settings.metrics_address {
        let listener = admin::bind(addr, "metrics_address").await?;
        tracing::info!(address = %listener.local_addr()?, "metrics listening");
        tasks.spawn(admin::serve(listener, metrics.clone(), stop.clone()));
    }
    let main_addr = main.local_addr()?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let worker_threads =
        proxy::spawn_workers(proxy.clone(), main.into_std()?, transport, stop.clone(), grace, workers)?;
    tasks.spawn_blocking(move || {
        for worker in worker_threads {
            let _ = worker.join();
        }
    });
    tracing::info!(address = %main_addr, tls = !settings.insecure_server, workers, "proxy listening");
    match cluster_synced {
        Some(synced) => {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if synced.await.is_ok() {
                    metrics.set_ready(true);
                }
            });
        }
        None => metrics.set_ready(true),
    }

    let reloader = tokio::spawn(reload_loop(triggers, config_path, settings, sources, auth, metrics.clone()));
    shutdown.wait().await;
    tracing::info!("shutting down");
    metrics.set_ready(false);
    reloader.abort();
    if let Some((stop_controller, thread)) = controller {
        // It releases the leader Lease, so a successor need not wait it out.
        let _ = stop_controller.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), thread.finished()).await;
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Reloads on every trigger. A config with any problem is rejected whole
/// and the last good table (and signing keys) keep serving. Of the sign-in
/// settings only the signing keys are reloaded (see
/// [`Auth::reload_signing_keys`]).
async fn reload_loop(
    mut triggers: reload::ReloadTriggers,
    path: PathBuf,
    mut settings: config::Settings,
    sources: Arc<RouteSources>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
) {
    while let Some(trigger) = triggers.rx.recv().await {
        tokio::time::sleep(reload::SETTLE).await;
        while triggers.rx.try_recv().is_ok() {}
        match load_clean(&path) {
            Ok((mut next_settings, specs)) => {
                warn_about_restart_only_settings(&settings, &next_settings);
                // Restart-only settings keep their running values.
                let running = config::Settings { kubernetes: settings.kubernetes.clone(), ..next_settings.clone() };
                if let Err(e) = sources.publish_file(running, specs) {
                    tracing::error!(error = %e, "config reload rejected; keeping the last good config");
                    metrics.reloaded(false);
                    continue;
                }
                reload_signing_keys(&auth, &settings.auth, &mut next_settings.auth);
                tracing::info!(routes = sources.routes.snapshot().len(), ?trigger, "config reloaded");
                metrics.reloaded(true);
                settings = next_settings;
            }
            Err(problems) => {
                for problem in &problems {
                    tracing::error!(problem = %problem, "config reload rejected");
                }
                tracing::error!(problems = problems.len(), "config reload rejected; keeping the last good config");
                metrics.reloaded(false);
            }
        }
    }
}

/// Loads and compiles; any problem at all rejects the file. The error
/// lists every problem, one message each.
fn load_clean(path: &Path) -> Result<(config::Settings, Vec<config::RouteSpec>), Vec<String>> {
    let Config { settings, routes, mut problems } = match config::load(path) {
        Ok(c) => c,
        Err(config::Error::Invalid { problems, .. }) => return Err(problems.iter().map(ToString::to_string).collect()),
        Err(other) => return Err(vec![other.to_string()]),
    };
    let (_, compile_problems) = RouteTable::compile(&settings, routes.clone());
    problems.extend(compile_problems);
    if problems.is_empty() { Ok((settings, routes)) } else { Err(problems.iter().map(ToString::to_string).collect()) }
}

/// Hands a reloaded config's signing keys to `auth`. If they cannot be
/// used (the config check makes that unlikely), `next` is given the
/// running keys back, so it says what is in use.
fn reload_signing_keys(auth: &Auth, running: &config::AuthSettings, next: &mut config::AuthSettings) {
    match auth.reload_signing_keys(running, next) {
        Ok(KeyReload::Unchanged) => {}
        Ok(KeyReload::Rotated { kid, previous }) => {
            tracing::info!(signing.kid = %kid, signing.previous = ?previous, "signing keys reloaded");
        }
        Ok(KeyReload::KeptRunning) => {
            tracing::warn!(
                "signing_key was removed: assertions are signed with the running key until a restart, \
                 which generates a random one"
            );
            next.signing_key = running.signing_key.clone();
            next.previous_signing_keys = running.previous_signing_keys.clone();
        }
        Err(e) => {
            tracing::error!(error = %e, "reloaded signing keys unusable; keeping the running ones");
            next.signing_key = running.signing_key.clone();
            next.previous_signing_keys = running.previous_signing_keys.clone();
        }
    }
}

fn warn_about_restart_only_settings(old: &config::Settings, new: &config::Settings) {
    // The signing keys are reloaded; the rest of the sign-in settings not.
    let restart_only = |auth: &config::AuthSettings| config::AuthSettings {
        signing_key: None,
        previous_signing_keys: Vec::new(),
        ..auth.clone()
    };
    let changed = [
        ("address", old.address != new.address),
        ("http_redirect_addr", old.http_redirect_addr != new.http_redirect_addr),
        ("insecure_server", old.insecure_server != new.insecure_server),
        ("metrics_address", old.metrics_address != new.metrics_address),
        ("sign-in and cookie settings", restart_only(&old.auth) != restart_only(&new.auth)),
        ("kubernetes", old.kubernetes != new.kubernetes),
    ];
    for (key, differs) in changed {
        if differs {
            tracing::warn!(key, "this setting changed but only takes effect on restart");
        }
    }
}

/// SIGTERM and SIGINT, registered at start-up so a signal that arrives
/// while starting still shuts down cleanly.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignal { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
