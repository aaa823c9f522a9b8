//! The objects the controller keeps track of: how they are named, and
//! what it reports about them (shared by the rebuild loop and the status
//! writer).

use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;

use super::crd::Route;

/// The kinds the controller caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Ingress,
    Route,
}

/// One watched object, by kind, namespace and name.
pub(crate) type Key = (Kind, String, String);

/// The object a report is about.
pub(crate) enum Subject {
    Ingress(Arc<Ingress>),
    Route(Arc<Route>),
}

/// A route another, older object already serves.
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    pub loser: Key,
    pub holder: Key,
    pub host: String,
    /// The path rule both claim; `None`: the whole host, which belongs to
    /// the holder's namespace.
    pub path: Option<String>,
}

impl Conflict {
    /// What the loser's Event says.
    pub(crate) fn note(&self) -> String {
        let (kind, namespace, name) = &self.holder;
        match &self.path {
            Some(path) => format!(
                "host {} path {path} is already served by {kind:?} {namespace}/{name} (the older object keeps it)",
                self.host
            ),
            None => format!(
                "host {} is served from namespace {namespace} ({kind:?} {namespace}/{name} is the oldest object on it); \
                 objects in other namespaces cannot add routes to it",
                self.host
            ),
        }
    }
}
