//! Postern: an identity-aware access proxy and Kubernetes ingress controller.
//!
//! Data flows one way: config source → [`config::RouteSpec`] →
//! [`routes::RouteTable`] → the per-request pipeline in [`proxy`].

pub mod auth;
pub mod cli;
pub mod config;
pub mod cors;
pub mod identity;
pub(crate) mod policy;
pub mod proxy;
pub mod routes;
pub mod serve;
pub(crate) mod suggest;
pub mod telemetry;
pub(crate) mod trust;
