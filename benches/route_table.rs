//! Route table benchmarks: lookup cost as the table grows, and compile cost.
//!
//! Run with `cargo bench --bench route_table`.
//!
//! * `lookup/{10,1000,100000}`: one `RouteTable::lookup` per iteration, cycling
//!   through 1,024 precomputed (host, path) queries spread over the table's
//!   hosts: hits on the first, middle and last route of a host, hits on
//!   wildcard hosts, and misses. Target: ≤ 200 ns per lookup at 100,000
//!   routes, and flat as the table grows.
//! * `compile/10000`: `RouteTable::compile` of 10,000 specs (1,000 hosts × 10
//!   routes). Target: ≤ 50 ms.
//! * `publish_cluster/20000`: what the controller's publish step costs at
//!   20,000 cluster routes when one of them changed (`RouteSources::
//!   publish_cluster` with one new spec among unchanged ones, certificates
//!   generated as a server with no `certificates` does). It is part of
//!   every apply → live (issue 15's goal: p50 ≤ 10 ms in all).
//!
//! Every table is checked once, outside the timed code, to compile without
//! problems and to answer every query with the route it is meant to hit.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use postern::config::{RouteSpec, Settings};
use postern::routes::RouteTable;

/// Distinct hosts the largest table is spread over.
const MAX_HOSTS: usize = 10_000;
/// Queries each lookup benchmark cycles through (a power of two).
const QUERIES: usize = 1024;

/// The shape of a generated table: `hosts` hosts, `per_host` routes each.
#[derive(Clone, Copy)]
struct Shape {
    hosts: usize,
    per_host: usize,
}

impl Shape {
    /// `routes` routes over `min(routes, 10_000)` hosts.
    fn for_routes(routes: usize) -> Shape {
        let hosts = routes.min(MAX_HOSTS);
        assert_eq!(routes % hosts, 0, "{routes} routes do not spread evenly over {hosts} hosts");
        Shape { hosts, per_host: routes / hosts }
    }

    fn routes(self) -> usize {
        self.hosts * self.per_host
    }

    /// About 1% of hosts are wildcards (at least one, so every table has
    /// some), spread evenly through the host list.
    fn is_wildcard(self, host: usize) -> bool {
        let every = (self.hosts / self.hosts.div_ceil(100)).max(1);
        host % every == every / 2
    }

    /// The `from` host of host number `host`.
    fn route_host(self, host: usize) -> String {
        if self.is_wildcard(host) { format!("*.zone{host}.example.com") } else { format!("host{host}.example.com") }
    }

    /// A request host served by host number `host`.
    fn request_host(self, host: usize, salt: u64) -> String {
        if self.is_wildcard(host) {
            format!("svc{}.zone{host}.example.com", salt % 1000)
        } else {
            format!("host{host}.example.com")
        }
    }
}

/// The path rule of route `j` of a host with `per_host` routes: the last one
/// is the host's catch-all; before it, prefixes and exact paths alternate.
enum Rule {
    Prefix(String),
    Path(String),
    Any,
}

fn rule(j: usize, per_host: usize) -> Rule {
    if j + 1 == per_host {
        Rule::Any
    } else if j.is_multiple_of(2) {
        Rule::Prefix(format!("/api/v{j}/"))
    } else {
        Rule::Path(format!("/static/item{j}"))
    }
}

/// The specs of a table, in source order.
fn specs(shape: Shape) -> Vec<RouteSpec> {
    let mut specs = Vec::with_capacity(shape.routes());
    for host in 0..shape.hosts {
        let from = format!("https://{}", shape.route_host(host));
        for j in 0..shape.per_host {
            let (prefix, path) = match rule(j, shape.per_host) {
                Rule::Prefix(p) => (Some(p), None),
                Rule::Path(p) => (None, Some(p)),
                Rule::Any => (None, None),
            };
            specs.push(RouteSpec {
                from: from.clone(),
                to: vec![format!("http://10.{}.{}.{}:8080", host / 65536 % 256, host / 256 % 256, host % 256)],
                prefix,
                path,
                allow_public_unauthenticated_access: true,
                ..RouteSpec::default()
            });
        }
    }
    specs
}

/// A compiled table; panics if any spec failed to compile.
fn table(shape: Shape) -> RouteTable {
    let (table, problems) = RouteTable::compile(&Settings::default(), specs(shape));
    assert!(problems.is_empty(), "benchmark specs failed to compile: {problems:#?}");
    assert_eq!(table.len(), shape.routes());
    table
}

/// One lookup, with the name of the route it must find (`None`: a miss).
struct Query {
    host: String,
    port: Option<u16>,
    path: String,
    expect: Option<String>,
}

/// SplitMix64: a small deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The request path that hits route `j`, and that route's name.
fn hit(shape: Shape, host: usize, j: usize, salt: u64) -> (String, String) {
    let from = shape.route_host(host);
    match rule(j, shape.per_host) {
        Rule::Prefix(p) => (format!("{p}users/{}", salt % 1000), format!("{from}{p}*")),
        Rule::Path(p) => (p.clone(), format!("{from}{p}")),
        // The catch-all gets a path no earlier route of the host matches.
        Rule::Any => (format!("/index/{}.html", salt % 1000), from),
    }
}

/// `QUERIES` lookups over random hosts: 25% first route, 25% middle route,
/// 25% last (catch-all) route of an exact host; 12.5% wildcard hosts (first,
/// middle or last route); 12.5% misses (unknown host, unknown wildcard zone).
fn queries(shape: Shape) -> Vec<Query> {
    let wildcards: Vec<usize> = (0..shape.hosts).filter(|&h| shape.is_wildcard(h)).collect();
    let exact: Vec<usize> = (0..shape.hosts).filter(|&h| !shape.is_wildcard(h)).collect();
    let mut rng = Rng(0x5eed);
    (0..QUERIES)
        .map(|i| {
            let salt = rng.next();
            let port = if i.is_multiple_of(2) { None } else { Some(443) };
            let (host, path, expect) = match i % 8 {
                0..=5 => {
                    let h = exact[rng.below(exact.len())];
                    let j = match i % 8 {
                        0 | 1 => 0,
                        2 | 3 => shape.per_host / 2,
                        _ => shape.per_host - 1,
                    };
                    let (path, name) = hit(shape, h, j, salt);
                    (shape.request_host(h, salt), path, Some(name))
                }
                6 => {
                    let h = wildcards[rng.below(wildcards.len())];
                    let j = rng.below(3) * (shape.per_host - 1) / 2;
                    let (path, name) = hit(shape, h, j, salt);
                    (shape.request_host(h, salt), path, Some(name))
                }
                _ => {
                    let host = if salt.is_multiple_of(2) {
                        format!("unknown{}.example.net", salt % 100_000)
                    } else {
                        format!("svc1.nozone{}.example.com", salt % 100_000)
                    };
                    (host, "/api/v0/users/1".to_string(), None)
                }
            };
            Query { host, port, path, expect }
        })
        .collect()
}

fn check(table: &RouteTable, queries: &[Query]) {
    for q in queries {
        let got = table.lookup(&q.host, q.port, &q.path).map(|r| r.name.as_str());
        assert_eq!(got, q.expect.as_deref(), "lookup({:?}, {:?}, {:?})", q.host, q.port, q.path);
    }
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for routes in [10, 1_000, 100_000] {
        let shape = Shape::for_routes(routes);
        let table = table(shape);
        let queries = queries(shape);
        check(&table, &queries);
        group.bench_function(routes.to_string(), |b| {
            let mut i = 0;
            b.iter(|| {
                let q = &queries[i % QUERIES];
                i += 1;
                table.lookup(black_box(&q.host), black_box(q.port), black_box(&q.path))
            })
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(20);
    let shape = Shape { hosts: 1_000, per_host: 10 };
    let settings = Settings::default();
    // Once untimed: every spec compiles, so the timed runs build the whole table.
    drop(table(shape));
    group.throughput(Throughput::Elements(shape.routes() as u64));
    group.bench_function(shape.routes().to_string(), |b| {
        b.iter_batched(|| specs(shape), |specs| RouteTable::compile(&settings, specs), BatchSize::LargeInput)
    });
    group.finish();
}

fn publish_cluster(c: &mut Criterion) {
    use std::sync::Arc;

    use postern::k8s::{ClusterRoutes, HostRoutes};
    use postern::serve::RouteSources;
    use postern::telemetry::Metrics;

    let mut group = c.benchmark_group("publish_cluster");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(30);
    let shape = Shape { hosts: 10_000, per_host: 2 };
    let sources = RouteSources::new(Settings::default(), Arc::new(Metrics::new()));
    // Filed by host, as the controller hands them over.
    let mut by_host: std::collections::BTreeMap<String, Vec<Arc<RouteSpec>>> = Default::default();
    for spec in specs(shape) {
        by_host.entry(spec.from.trim_start_matches("https://").to_string()).or_default().push(Arc::new(spec));
    }
    let mut cluster = ClusterRoutes {
        hosts: by_host.into_iter().map(|(h, s)| (h, HostRoutes(s.into()))).collect(),
        certificates: Arc::new([]),
    };
    let hosts: Vec<String> = cluster.hosts.keys().cloned().collect();
    sources.publish_cluster(cluster.clone());
    assert_eq!(sources.routes.snapshot().len(), shape.routes(), "every route published");
    let mut n = 0usize;
    group.bench_function(shape.routes().to_string(), |b| {
        b.iter(|| {
            // One object changed: a new allocation for its host's routes.
            n += 1;
            let host = &hosts[n % hosts.len()];
            let mut routes: Vec<Arc<RouteSpec>> = cluster.hosts[host].0.to_vec();
            routes[0] = Arc::new((*routes[0]).clone());
            cluster.hosts.insert(host.clone(), HostRoutes(routes.into()));
            sources.publish_cluster(cluster.clone());
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, compile, publish_cluster);
criterion_main!(benches);
