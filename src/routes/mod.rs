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

use crate::config::{Limits, Problem, RouteSpec, Settings};

/// Routes by host. A persistent (structurally shared) map, so a table that
/// differs from the live one in a few hosts is built in time proportional
/// to those hosts, not to the whole table (the cluster publishes after
/// every change, at tens of thousands of routes). A fast seeded hash
/// rather than SipHash: requests only probe it, so a client cannot pile up
/// colliding keys, and SipHash of the host was a measurable share of a
/// request's own work.
/// One host's routes in match order.
type Bucket = Arc<[Arc<Route>]>;

type HostIndex = imbl::GenericHashMap<String, Bucket, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// All routes, indexed by host.
#[derive(Debug, Clone)]
pub struct RouteTable {
    exact: HostIndex,
    /// Keyed by the parent domain: `*.example.com` is under `example.com`.
    wildcard: HostIndex,
    /// `from: https://*`: any host no other route serves (Ingress rules
    /// without a host, default backends).
    any_host: Bucket,
    /// Routes in all buckets.
    len: usize,
    /// Peers whose `X-Forwarded-*` headers are believed.
    trusted_proxies: Vec<IpNet>,
    /// Request and connection limits, carried with the table so that the
    /// listeners read the settings the table was compiled with.
    limits: Arc<Limits>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            exact: HostIndex::with_hasher(foldhash::fast::RandomState::default()),
            wildcard: HostIndex::with_hasher(foldhash::fast::RandomState::default()),
            any_host: Arc::new([]),
            len: 0,
            trusted_proxies: Vec::new(),
            limits: Arc::default(),
        }
    }
}

impl RouteTable {
    /// Compiles every spec; a spec that fails becomes a [`Problem`] and is
    /// left out, the rest still compile.
    pub fn compile(settings: &Settings, specs: Vec<RouteSpec>) -> (RouteTable, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            match compile::compile_route(settings, spec) {
                Ok(route) => routes.push(Arc::new(route)),
                Err(problem) => problems.push(problem),
            }
        }
        (RouteTable::from_routes(settings, routes), problems)
    }

    /// One route, compiled alone (for sources that keep compiled routes of
    /// unchanged specs; see [`RouteTable::from_routes`]).
    pub fn compile_one(settings: &Settings, spec: RouteSpec) -> Result<Arc<Route>, Problem> {
        compile::compile_route(settings, spec).map(Arc::new)
    }

    /// A table of routes already compiled with `settings`, in match order.
    pub fn from_routes(settings: &Settings, routes: impl IntoIterator<Item = Arc<Route>>) -> RouteTable {
        let mut buckets: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        let mut order = Vec::new();
        for route in routes {
            let bucket = buckets.entry(route.from.host.clone()).or_insert_with_key(|host| {
                order.push(host.clone());
                Vec::new()
            });
            bucket.push(route);
        }
        let table = RouteTable {
            trusted_proxies: settings.trusted_proxies.clone(),
            limits: Arc::new(settings.limits.clone()),
            ..RouteTable::default()
        };
        table.with_buckets(order.into_iter().map(|host| {
            let routes = buckets.remove(&host).unwrap_or_default();
            (host, routes)
        }))
    }

    /// This table with the routes of some hosts replaced, each given as the
    /// `from` host its routes share (`a.example.com`, `*.example.com`, `*`)
    /// and its routes in match order (none: the host is gone). Hosts not
    /// named keep their routes, shared with this table.
    pub fn with_buckets(&self, buckets: impl IntoIterator<Item = (String, Vec<Arc<Route>>)>) -> RouteTable {
        let mut table = self.clone();
        for (host, routes) in buckets {
            debug_assert!(routes.iter().all(|r| r.from.host == host), "routes filed under another host");
            let added = routes.len();
            let routes: Bucket = routes.into();
            let removed = if host == "*" {
                std::mem::replace(&mut table.any_host, routes).len()
            } else {
                let (index, key) = match host.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent.to_string()),
                    None => (&mut table.exact, host),
                };
                let old = if added == 0 { index.remove(&key) } else { index.insert(key, routes) };
                old.map_or(0, |r| r.len())
            };
            table.len = table.len + added - removed;
        }
        table
    }

    /// Whether `spec` compiles, with the problem if not (for sources that
    /// decide per object whether a new version replaces the last good one).
    pub fn check(settings: &Settings, spec: &RouteSpec) -> Result<(), Problem> {
        compile::compile_route(settings, spec.clone()).map(|_| ())
    }

    /// The route for a request. `host` must be lowercase without a port;
    /// `path` must be normalized (see [`path::normalize`]).
    pub fn lookup(&self, host: &str, port: Option<u16>, path: &str) -> Option<&Arc<Route>> {
        let pick = |routes: &'_ [Arc<Route>]| -> Option<usize> {
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

    /// The `from` hosts that have routes (`*.example.com` for wildcards;
    /// not `*`), in no particular order.
    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        self.exact.keys().cloned().chain(self.wildcard.keys().map(|parent| format!("*.{parent}")))
    }

    /// Routes in match order: exact hosts, then wildcards; within a host,
    /// source order.
    pub fn routes_in_match_order(&self) -> Vec<&Arc<Route>> {
        let mut hosts: Vec<(&String, &Bucket, bool)> = self
            .exact
            .iter()
            .map(|(h, r)| (h, r, false))
            .chain(self.wildcard.iter().map(|(h, r)| (h, r, true)))
            .collect();
        hosts.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(b.0)));
        hosts.into_iter().flat_map(|(_, routes, _)| routes.iter()).chain(self.any_host.iter()).collect()
    }

    /// The limits of the settings this table was compiled with.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Whether `ip` is one of the `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
