//! Signals that the config file may have changed: file events and SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChanged,
    Hangup,
}

/// Keeps the file watcher alive; dropping it stops file events.
pub struct ReloadTriggers {
    pub rx: mpsc::Receiver<Trigger>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Coalescing window: editors and `kubectl` write a file in several steps.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Watches the directory holding `file` (editors and Kubernetes ConfigMaps
/// replace files rather than write them in place) and listens for SIGHUP.
/// A watcher that cannot start is logged; SIGHUP still works.
pub fn watch(file: &Path) -> ReloadTriggers {
    let (tx, rx) = mpsc::channel(16);
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = file.file_name().map(|n| n.to_os_string());
    let file_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            let n = p.file_name();
            n == name.as_deref() || n.and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".."))
        });
        if relevant {
            let _ = file_tx.try_send(Trigger::FileChanged);
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
            None
        }
    };
    // Registered here, not in the task, so a SIGHUP right after start-up
    // reloads instead of killing the process.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send(Trigger::Hangup).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
    }
    ReloadTriggers { rx, _watcher: watcher }
}
