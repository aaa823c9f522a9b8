//! Postern: an identity-aware access proxy and Kubernetes ingress controller.
//!
//! Data flows one way: config source → [`config::RouteSpec`] →
//! [`routes::RouteTable`] → the per-request pipeline in [`proxy`].
//!
//! Dependency order (a module imports only modules below it; no module
//! imports one that imports it back, folders included):
//!
//! ```text
//! cli → serve → proxy → routes → auth → policy → config → cors
//!         └───→ k8s ───────────────────────────→ config
//!                                                  ↘ identity, suggest, trust, telemetry, background (leaves)
//! ```
//!
//! - `config` is the model every source produces (`Settings`, `RouteSpec`).
//! - `routes` compiles specs into the table; a route carries its compiled
//!   `policy` and its session cookie attributes (`auth::CookieAttrs`).
//! - `auth` is the sign-in phase (`Auth::authorize`) and Postern's endpoints;
//!   it is handed the matched route's settings, never the table.
//! - `proxy` is the server: listeners, the request pipeline, forwarding and
//!   the admin listener (`/metrics`, `/healthz`, `/readyz`).
//! - `k8s` turns cluster objects into `RouteSpec`s and certificates; it
//!   knows only the config model, and the route check is injected.
//! - `serve` wires sources to the live table: the file reloader and the
//!   cluster (`k8s`) hand their specs to the same place (`RouteSources`).

pub mod auth;
mod background;
pub mod cli;
pub mod config;
pub mod cors;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod k8s;
pub(crate) mod policy;
pub mod proxy;
pub mod routes;
pub mod serve;
pub(crate) mod suggest;
pub mod telemetry;
pub(crate) mod trust;
