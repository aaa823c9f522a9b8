//! Service backends → upstream URLs, from the reflector stores of
//! Services and EndpointSlices: the ready addresses of a Service's slices
//! (terminating ones left out, so they drain), ExternalName Services by
//! their name, and the cluster DNS name when asked or when a Service has
//! no EndpointSlices at all.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use super::translate::{PortRef, Resolve};

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Resolves against the controller's caches.
pub(crate) struct Backends<'a> {
    /// One store per watched namespace.
    pub services: &'a [Store<Service>],
    pub slices: &'a [Store<EndpointSlice>],
}

impl Resolve for Backends<'_> {
    fn service(&self, namespace: &str, name: &str, port: &PortRef, dns: bool) -> Result<Vec<String>, String> {
        let key = ObjectRef::new(name).within(namespace);
        let svc = self
            .services
            .iter()
            .find_map(|s| s.get(&key))
            .ok_or_else(|| format!("Service {namespace}/{name} not found"))?;
        let spec = svc.spec.as_ref().ok_or_else(|| format!("Service {namespace}/{name} has no spec"))?;
        let svc_port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| match port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
            })
            .ok_or_else(|| format!("Service {namespace}/{name} has no port {port}"))?;
        if spec.type_.as_deref() == Some("ExternalName") {
            let external = spec
                .external_name
                .as_deref()
                .ok_or_else(|| format!("ExternalName Service {namespace}/{name} has no externalName"))?;
            return Ok(vec![format!("http://{}:{}", external.trim_end_matches('.'), svc_port.port)]);
        }
        let dns_url = || format!("http://{name}.{namespace}.svc.cluster.local:{}", svc_port.port);
        if dns {
            return Ok(vec![dns_url()]);
        }
        let slices: Vec<_> = self
            .slices
            .iter()
            .flat_map(|store| {
                store.state_filter(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str)
                            == Some(name)
                })
            })
            .collect();
        if slices.is_empty() {
            return Ok(vec![dns_url()]);
        }
        let want_name = svc_port.name.as_deref().unwrap_or("");
        let mut urls = Vec::new();
        for slice in &slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let conditions = ep.conditions.as_ref();
                // Kubernetes: a missing `ready` means ready; `serving` and
                // not `terminating` is what a draining endpoint loses.
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                if !ready || terminating {
                    continue;
                }
                for addr in &ep.addresses {
                    let host = if addr.contains(':') { format!("[{addr}]") } else { addr.clone() };
                    urls.push(format!("http://{host}:{target}"));
                }
            }
        }
        urls.sort();
        urls.dedup();
        Ok(urls)
    }
}
