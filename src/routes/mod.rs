//! The route table: compiled once per config, immutable, shared by requests.
//!
//! Lookup is a hash probe on the exact host, then on the one-label wildcard
//! parent, then a scan of that host's routes in source order (first match
//! wins, as in Pomerium). Routes on other hosts are never looked at.

mod compile;
pub(crate) mod host;
pub(crate) mod path;
mod route;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

pub use route::{Action, FromUrl, HostHeader, PathRule, Route, Upstream, UpstreamTls, Upstreams};

use crate::config::{Problem, RouteSpec, Settings};

/// Routes by host. A fast seeded hash rather than SipHash: requests only
/// probe it, so a client cannot pile up colliding keys, and SipHash of
/// the host was a measurable share of a request's own work.
type HostIndex = HashMap<String, Vec<Arc<Route>>, foldhash::fast::RandomState>;

/// All routes, indexed by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Every route in source order (for listing).
    routes: Vec<Arc<Route>>,
    exact: HostIndex,
    /// Keyed by the parent domain: `*.example.com` is under `example.com`.
    wildcard: HostIndex,
    /// `from: https://*`: any host no other route serves (Ingress rules
    /// without a host, default backends).
    any_host: Vec<Arc<Route>>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    trusted_proxies: Vec<IpNet>,
}

impl RouteTable {
    /// Compiles every spec; a spec that fails becomes a [`Problem`] and is
    /// left out, the rest still compile.
    pub fn compile(settings: &Settings, specs: Vec<RouteSpec>) -> (RouteTable, Vec<Problem>) {
        let mut table = RouteTable { trusted_proxies: settings.trusted_proxies.clone(), ..RouteTable::default() };
        let mut problems = Vec::new();
        for spec in specs {
            match compile::compile_route(settings, spec) {
                Ok(route) => table.insert(Arc::new(route)),
                Err(problem) => problems.push(problem),
            }
        }
        (table, problems)
    }

    /// One route, compiled alone (for sources that keep compiled routes of
    /// unchanged specs; see [`RouteTable::from_routes`]).
    pub fn compile_one(settings: &Settings, spec: RouteSpec) -> Result<Arc<Route>, Problem> {
        compile::compile_route(settings, spec).map(Arc::new)
    }

    /// A table of routes already compiled with `settings`, in match order.
    pub fn from_routes(settings: &Settings, routes: impl IntoIterator<Item = Arc<Route>>) -> RouteTable {
        let mut table = RouteTable { trusted_proxies: settings.trusted_proxies.clone(), ..RouteTable::default() };
        for route in routes {
            table.insert(route);
        }
        table
    }

    /// Whether `spec` compiles, with the problem if not (for sources that
    /// decide per object whether a new version replaces the last good one).
    pub fn check(settings: &Settings, spec: &RouteSpec) -> Result<(), Problem> {
        compile::compile_route(settings, spec.clone()).map(|_| ())
    }

    fn insert(&mut self, route: Arc<Route>) {
        let bucket = match route.from.host.strip_prefix("*.") {
            _ if route.from.host == "*" => &mut self.any_host,
            Some(parent) => self.wildcard.entry(parent.to_string()).or_default(),
            None => self.exact.entry(route.from.host.clone()).or_default(),
        };
        bucket.push(route.clone());
        self.routes.push(route);
    }

    /// The route for a request. `host` must be lowercase without a port;
    /// `path` must be normalized (see [`path::normalize`]).
    pub fn lookup(&self, host: &str, port: Option<u16>, path: &str) -> Option<&Arc<Route>> {
        let pick = |routes: &'_ Vec<Arc<Route>>| -> Option<usize> {
            routes.iter().position(|r| (r.from.port.is_none() || r.from.port == port) && r.rule.matches(path))
        };
        if let Some(routes) = self.exact.get(host)
            && let Some(i) = pick(routes)
        {
            return Some(&routes[i]);
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some(routes) = self.wildcard.get(parent)
            && let Some(i) = pick(routes)
        {
            return Some(&routes[i]);
        }
        pick(&self.any_host).map(|i| &self.any_host[i])
    }

    /// Some route on `host` (for Postern's own endpoints, which every route
    /// host serves whatever its path rules).
    pub fn first_route_for_host(&self, host: &str, port: Option<u16>) -> Option<&Arc<Route>> {
        fn on_port(routes: &[Arc<Route>], port: Option<u16>) -> Option<&Arc<Route>> {
            routes.iter().find(|r| r.from.port.is_none() || r.from.port == port)
        }
        if let Some(r) = self.exact.get(host).and_then(|routes| on_port(routes, port)) {
            return Some(r);
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some(r) = self.wildcard.get(parent).and_then(|routes| on_port(routes, port))
        {
            return Some(r);
        }
        on_port(&self.any_host, port)
    }

    /// Whether a route names `host` (for return URLs and TLS). Routes for
    /// any host do not count: a return URL must be on a host someone
    /// configured.
    pub fn has_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host.split_once('.').is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }

    /// Routes in source order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Routes in match order: exact hosts, then wildcards; within a host,
    /// source order.
    pub fn routes_in_match_order(&self) -> Vec<&Arc<Route>> {
        let mut hosts: Vec<(&String, &Vec<Arc<Route>>, bool)> = self
            .exact
            .iter()
            .map(|(h, r)| (h, r, false))
            .chain(self.wildcard.iter().map(|(h, r)| (h, r, true)))
            .collect();
        hosts.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(b.0)));
        hosts.into_iter().flat_map(|(_, routes, _)| routes.iter()).chain(&self.any_host).collect()
    }

    /// Whether `ip` is one of the `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The live table. Swapped whole; readers never see a half-built table.
#[derive(Debug, Default)]
pub struct Routes(ArcSwap<RouteTable>);

impl Routes {
    pub fn new(table: RouteTable) -> Self {
        Routes(ArcSwap::from_pointee(table))
    }

    /// The table for one request; load once per request.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    pub fn publish(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests;
