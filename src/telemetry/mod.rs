//! Logging setup and Prometheus metrics: a leaf every module may use. The
//! listener that serves them is the server's (`proxy::admin`).
//!
//! Field names are stable and dotted (`route.name`, `http.status`); tokens,
//! cookies and secrets are never logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One open client connection, counted until dropped.
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Target of the access log's events: `RUST_LOG=info,postern::access=off`
/// turns the access log off and keeps the rest.
pub(crate) const ACCESS_LOG: &str = "postern::access";

mod access_log;

/// The installed access log, for its count of dropped lines.
static ACCESS_LOG_INSTALLED: std::sync::OnceLock<access_log::AccessLog> = std::sync::OnceLock::new();

/// Keeps the access log's writer thread; dropping it writes out what is
/// pending. Held by `main` until the process exits.
#[must_use = "dropping the guard stops the access log writer"]
pub struct LogGuard {
    _writer: Option<access_log::Writer>,
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
///
/// The access log (one line per request, target [`ACCESS_LOG`]) is
/// formatted on the worker and written in batches by a thread of its own
/// (`access_log`). Everything else is rare and written at once, so an
/// error is on stderr before the process can die of it.
pub fn init_logging(format: LogFormat, level: &str) -> LogGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn};

    let level_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (access_log, writer) = access_log::AccessLog::start(format);
    let events =
        fmt_layer(format).with_filter(level_filter()).with_filter(filter_fn(|meta| meta.target() != ACCESS_LOG));
    let access =
        access_log.clone().with_filter(level_filter()).with_filter(filter_fn(|meta| meta.target() == ACCESS_LOG));
    match tracing_subscriber::registry().with(events).with(access).try_init() {
        Ok(()) => {
            let _ = ACCESS_LOG_INSTALLED.set(access_log);
            LogGuard { _writer: writer }
        }
        // Already installed (tests): the first one stays.
        Err(_) => LogGuard { _writer: None },
    }
}

fn fmt_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).boxed(),
    }
}

/// `postern_access_log_lines_dropped_total`, read at each scrape.
#[derive(Debug)]
struct AccessLogDropped;

impl prometheus_client::collector::Collector for AccessLogDropped {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let dropped = ACCESS_LOG_INSTALLED.get().map_or(0, |log| log.dropped());
        let counter = prometheus_client::metrics::counter::ConstCounter::new(dropped);
        let metric = encoder.encode_descriptor(
            "access_log_lines_dropped",
            "Access log lines dropped because stderr fell behind (4 MiB of lines wait at most)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Route names are shared (`Arc`), so labelling a request costs a
/// reference count, not an allocation.
type RouteName = std::sync::Arc<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteName,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: RouteName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    route: RouteName,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Handles on one route's request series (the counter for one status and
/// the latency histogram), shared with the families they belong to.
struct CachedSeries {
    /// Held so the name's address, part of the key, is not reused.
    _route: RouteName,
    requests: Counter,
    duration: Histogram,
}

/// Cached series per worker thread. Looking a series up in its family
/// costs a lock and a SipHash of the route name, twice per request (about
/// 2% of the proxy's own work per request, measured); the cache costs a
/// hash of three integers. Keyed by metrics instance, the route name's
/// address and the status.
type SeriesCache = HashMap<(u64, usize, u16), CachedSeries, foldhash::fast::RandomState>;

/// Bound on [`SeriesCache`]: cleared when full.
const MAX_CACHED_SERIES: usize = 4096;

thread_local! {
    static SERIES: RefCell<SeriesCache> = RefCell::new(SeriesCache::default());
}

/// Every metric Postern exports.
pub struct Metrics {
    /// Tells this instance's entries in [`SERIES`] apart (tests run many).
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    routes_loaded: Gauge,
    /// Client connections being served (all workers).
    connections_open: Gauge,
    /// Client connections closed on accept because `max_connections` were open.
    connections_refused: Counter,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "Requests answered, by route and status", requests.clone());
        let duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request to the end of the response body",
            duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register("upstream_errors", "Failed upstream attempts, by route and kind", upstream_errors.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("config_reloads", "Config reloads, by result", reloads.clone());
        let routes_loaded = Gauge::default();
        registry.register("routes_loaded", "Routes in the live table", routes_loaded.clone());
        let connections_open = Gauge::default();
        registry.register("connections_open", "Client connections being served", connections_open.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed on accept because max_connections were open",
            connections_refused.clone(),
        );
        registry.register_collector(Box::new(AccessLogDropped));
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            duration,
            upstream_errors,
            reloads,
            routes_loaded,
            connections_open,
            connections_refused,
            ready: AtomicBool::new(false),
        }
    }

    pub(crate) fn observe_request(&self, route: &RouteName, status: u16, elapsed: Duration) {
        SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let key = (self.id, Arc::as_ptr(route) as usize, status);
            let series = match cache.get(&key) {
                Some(series) => series,
                None => {
                    if cache.len() >= MAX_CACHED_SERIES {
                        // Routes replaced by reloads pile up otherwise.
                        cache.clear();
                    }
                    let series = CachedSeries {
                        _route: route.clone(),
                        requests: self.requests.get_or_create(&RequestLabels { route: route.clone(), status }).clone(),
                        duration: self.duration.get_or_create(&RouteLabel { route: route.clone() }).clone(),
                    };
                    cache.entry(key).or_insert(series)
                }
            };
            series.requests.inc();
            series.duration.observe(elapsed.as_secs_f64());
        });
    }

    pub(crate) fn upstream_error(&self, route: &RouteName, kind: &'static str) {
        self.upstream_errors.get_or_create(&UpstreamErrorLabels { route: route.clone(), kind }).inc();
    }

    /// Reserves a place for a new client connection: `None` (counted as
    /// refused) if `max` are open already (`0`: no limit). The place is
    /// given back when the returned guard is dropped.
    pub(crate) fn open_connection(&self, max: usize) -> Option<ConnectionGuard> {
        // The gauge is the count itself: one atomic shared by the workers.
        let open = self.connections_open.inc();
        if max > 0 && open >= max as i64 {
            self.connections_open.dec();
            self.connections_refused.inc();
            return None;
        }
        Some(ConnectionGuard(self.connections_open.clone()))
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { result: if ok { "success" } else { "failure" } }).inc();
    }

    pub fn set_routes_loaded(&self, n: usize) {
        self.routes_loaded.set(n as i64);
    }

    /// Marks the proxy ready (listeners bound, a table published).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn cached_series_count_per_instance_route_and_status() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let route: RouteName = Arc::new("app".into());
        // Same name, another allocation (a reload): still the same series.
        let reloaded: RouteName = Arc::new("app".into());
        for _ in 0..3 {
            a.observe_request(&route, 200, Duration::from_millis(2));
        }
        a.observe_request(&reloaded, 200, Duration::from_millis(2));
        a.observe_request(&route, 404, Duration::from_millis(2));
        b.observe_request(&route, 200, Duration::from_millis(2));
        let text = a.encode();
        assert_eq!(
            series_line(&text, r#"postern_http_requests_total{route="app",status="200"}"#),
            Some(r#"postern_http_requests_total{route="app",status="200"} 4"#),
            "{text}"
        );
        assert_eq!(
            series_line(&text, r#"postern_http_requests_total{route="app",status="404"}"#),
            Some(r#"postern_http_requests_total{route="app",status="404"} 1"#)
        );
        assert_eq!(
            series_line(&text, r#"postern_http_request_duration_seconds_count{route="app"}"#),
            Some(r#"postern_http_request_duration_seconds_count{route="app"} 5"#)
        );
        assert!(
            b.encode().contains(r#"postern_http_requests_total{route="app",status="200"} 1"#),
            "another instance keeps its own counts"
        );
    }
}
