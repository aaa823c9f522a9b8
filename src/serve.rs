//! The `serve` command: load, compile, listen, reload, drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::{self, Config, reload};
use crate::proxy::tls::{CertResolver, TlsError, server_config};
use crate::proxy::{self, Proxy, Transport, admin};
use crate::routes::{RouteTable, Routes};
use crate::telemetry::Metrics;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Runs the proxy until SIGTERM or SIGINT, then drains for up to `grace`.
pub async fn run(config_path: PathBuf, grace: Duration) -> Result<(), ServeError> {
    // Watch before the first load, so an edit made while starting up is
    // not missed.
    let triggers = reload::watch(&config_path);
    let shutdown = ShutdownSignal::install()?;
    let Config { settings, routes: specs, problems } = config::load(&config_path)?;
    let (table, compile_problems) = RouteTable::compile(&settings, specs);
    for problem in problems.iter().chain(&compile_problems) {
        tracing::error!(problem = %problem, "route left out");
    }
    let metrics = Arc::new(Metrics::new());
    metrics.set_routes_loaded(table.len());
    let certs = Arc::new(CertResolver::default());
    if !settings.insecure_server && certs.replace(&settings.certificates, &route_hosts(&table))? {
        tracing::warn!(
            "no certificates configured: serving a generated self-signed certificate that browsers will not trust"
        );
    }
    tracing::info!(routes = table.len(), config = %config_path.display(), "route table compiled");
    let routes = Arc::new(Routes::new(table));
    let (auth, warnings) = Auth::new(&settings.auth, settings.insecure_server);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let proxy = Arc::new(Proxy::new(routes.clone(), metrics.clone(), certs.clone(), Arc::new(auth)));

    let stop = CancellationToken::new();
    let main = admin::bind(settings.address, "address").await?;
    let transport =
        if settings.insecure_server { Transport::Plain } else { Transport::Tls(server_config(certs.clone())) };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = settings.http_redirect_addr {
        let listener = admin::bind(addr, "http_redirect_addr").await?;
        // The bound port, not the configured one: `address` may say port 0.
        tasks.spawn(proxy::serve_redirect(listener, main.local_addr()?.port(), stop.clone()));
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
    metrics.set_ready(true);
    tracing::info!(address = %main_addr, tls = !settings.insecure_server, workers, "proxy listening");

    let reloader = tokio::spawn(reload_loop(triggers, config_path, settings, routes, certs, metrics.clone()));
    shutdown.wait().await;
    tracing::info!("shutting down");
    metrics.set_ready(false);
    reloader.abort();
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn route_hosts(table: &RouteTable) -> Vec<String> {
    table.routes().iter().map(|r| r.from.host.clone()).collect()
}

/// Reloads on every trigger. A config with any problem is rejected whole
/// and the last good table keeps serving.
async fn reload_loop(
    mut triggers: reload::ReloadTriggers,
    path: PathBuf,
    mut settings: config::Settings,
    routes: Arc<Routes>,
    certs: Arc<CertResolver>,
    metrics: Arc<Metrics>,
) {
    while let Some(trigger) = triggers.rx.recv().await {
        tokio::time::sleep(reload::SETTLE).await;
        while triggers.rx.try_recv().is_ok() {}
        match load_clean(&path) {
            Ok((next_settings, table)) => {
                if !next_settings.insecure_server
                    && let Err(e) = certs.replace(&next_settings.certificates, &route_hosts(&table))
                {
                    tracing::error!(error = %e, "config reload rejected; keeping the last good config");
                    metrics.reloaded(false);
                    continue;
                }
                warn_about_restart_only_settings(&settings, &next_settings);
                metrics.set_routes_loaded(table.len());
                tracing::info!(routes = table.len(), ?trigger, "config reloaded");
                routes.publish(table);
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
fn load_clean(path: &Path) -> Result<(config::Settings, RouteTable), Vec<String>> {
    let Config { settings, routes, mut problems } = match config::load(path) {
        Ok(c) => c,
        Err(config::Error::Invalid { problems, .. }) => return Err(problems.iter().map(ToString::to_string).collect()),
        Err(other) => return Err(vec![other.to_string()]),
    };
    let (table, compile_problems) = RouteTable::compile(&settings, routes);
    problems.extend(compile_problems);
    if problems.is_empty() { Ok((settings, table)) } else { Err(problems.iter().map(ToString::to_string).collect()) }
}

fn warn_about_restart_only_settings(old: &config::Settings, new: &config::Settings) {
    let changed = [
        ("address", old.address != new.address),
        ("http_redirect_addr", old.http_redirect_addr != new.http_redirect_addr),
        ("insecure_server", old.insecure_server != new.insecure_server),
        ("metrics_address", old.metrics_address != new.metrics_address),
        ("sign-in and cookie settings", old.auth != new.auth),
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
