//! Leader election on a `coordination.k8s.io` Lease, so that of several
//! replicas only one writes status and Events (every replica serves the
//! full table all the time). The holder renews every `RENEW`; a Lease not
//! renewed for its duration is taken over; writes are guarded by the
//! Lease's resourceVersion, so two replicas never both win a round. The
//! holder releases the Lease when it stops, so a successor need not wait.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// How long a Lease stays valid without renewal.
pub(crate) const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and others look).
const RENEW: Duration = Duration::from_secs(2);

/// The Lease this controller competes for.
pub(crate) struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
}

impl Election {
    /// `POD_NAME` / `POD_NAMESPACE` when running in a pod (the chart sets
    /// them), else the host name and process id, in `namespace`.
    pub(crate) fn new(client: Client, namespace: &str, name: &str) -> Self {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| namespace.to_string());
        Election { api: Api::namespaced(client, &namespace), name: name.to_string(), identity }
    }

    /// Competes until `stop` fires, telling `leading` whether we hold the
    /// Lease; then releases it if we do.
    pub(crate) async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            let held = match self.round().await {
                Ok(held) => held,
                Err(e) => {
                    // Cannot tell: stop writing until the Lease says so again.
                    tracing::warn!(error = %e, lease = %self.name, "leader election round failed");
                    false
                }
            };
            // Receivers wake only on a change: a renewal is not news.
            leading.send_if_modified(|was| {
                let changed = *was != held;
                if changed {
                    tracing::info!(lease = %self.name, identity = %self.identity, leading = held, "leadership changed");
                }
                *was = held;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(RENEW) => {}
                _ = stop.changed() => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            // (The loop that reads this is stopping too.)
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not release the Lease");
            }
        }
    }

    /// One look at the Lease: renew it, take it over, or leave it.
    async fn round(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": { "name": self.name },
                "spec": {
                    "holderIdentity": self.identity, "leaseDurationSeconds": DURATION.as_secs(),
                    "acquireTime": now, "renewTime": now, "leaseTransitions": 0,
                }
            }))
            .expect("a Lease from literals");
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.holder_identity.as_deref()) {
            (_, None | Some("")) => true,
            (None, _) => true,
            (Some(renewed), _) => {
                let duration = spec.lease_duration_seconds.unwrap_or(DURATION.as_secs() as i32);
                renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(duration)) < now.0
            }
        };
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
        // `replace` carries the resourceVersion we read: if another replica
        // wrote in between, this fails with 409 and we do not lead.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
    }
}
