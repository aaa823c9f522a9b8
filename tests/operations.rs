//! Operating a running proxy: reloads (file, SIGHUP, under load), shutdown,
//! metrics, the access log, and startup failures.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{Postern, events_named, metric, scrape, serve_until_exit, wait_for_event};

const RELOADED: &str = "config reloaded";
const REJECTED: &str = "config reload rejected";
const REJECTED_SUMMARY: &str = "config reload rejected; keeping the last good config";

/// A public route from `https://<host>` to `to`, as YAML list item lines.
fn route(host: &str, to: &str) -> String {
    format!("  - from: https://{host}\n    to: {to}\n    allow_public_unauthenticated_access: true\n")
}

/// A config (after the `address` line the harness adds) with a metrics
/// listener and `routes`: line 2 is `metrics_address`, line 3 `routes:`,
/// line 4 the first route.
fn with_metrics(routes: &[String]) -> String {
    format!("metrics_address: 127.0.0.1:0\nroutes:\n{}", routes.concat())
}

async fn status_of(client: &reqwest::Client, url: String) -> u16 {
    client.get(url).send().await.expect("request reaches the proxy").status().as_u16()
}

/// A loopback address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Polls `/metrics` until `name{labels}` reaches at least `want` (the proxy
/// counts a request when its body ends, just after the client has it).
async fn wait_for_metric(p: &Postern, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(p).await;
        if metric(&text, name, labels).is_some_and(|v| v >= want) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{name}{labels:?} never reached {want}; /metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Reload on file change

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_the_route_table() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let first = with_metrics(&[route("a.example.com", &a.url())]);
    let p = Postern::start(&first);
    let client = p.client();
    assert_eq!(status_of(&client, p.url("b.example.com", "/")).await, 404, "b is not routed yet");
    let before = scrape(&p).await;
    let successes_before = metric(&before, "postern_config_reloads_total", &[("result", "success")]).unwrap_or(0.0);
    assert_eq!(metric(&before, "postern_routes_loaded", &[]), Some(1.0));

    let skip = p.logs().len();
    p.write_config(&with_metrics(&[route("a.example.com", &a.url()), route("b.example.com", &b.url())]));
    let reloaded = wait_for_event(&p, skip, RELOADED, Duration::from_secs(5)).await;
    assert_eq!(reloaded["routes"], 2, "{reloaded}");
    assert_eq!(reloaded["trigger"], "FileChanged", "{reloaded}");

    let resp = client.get(p.url("b.example.com", "/new")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "b");
    assert_eq!(status_of(&client, p.url("a.example.com", "/")).await, 200, "the old route still serves");

    let text =
        wait_for_metric(&p, "postern_config_reloads_total", &[("result", "success")], successes_before + 1.0).await;
    assert_eq!(metric(&text, "postern_config_reloads_total", &[("result", "failure")]), None, "{text}");
    assert_eq!(metric(&text, "postern_routes_loaded", &[]), Some(2.0), "{text}");
}

// ---------------------------------------------------------------------------
// 2. A bad reload keeps the last good table

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_are_rejected_with_a_location_and_the_old_table_serves() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let good_a = route("a.example.com", &a.url());
    let good_b = route("b.example.com", &b.url());
    let first = with_metrics(std::slice::from_ref(&good_a));
    let p = Postern::start(&first);
    let successes = metric(&scrape(&p).await, "postern_config_reloads_total", &[("result", "success")]);
    let client = p.client();
    let file = p.config_path.display().to_string();

    // Each bad file also adds route b, which must not appear: the file is
    // rejected whole. Lines: 1 address, 2 metrics_address, 3 routes:, 4-6
    // route a, 7-9 route b, 10 onwards the mistake.
    let cases: [(&str, String, String); 3] = [
        (
            "unknown key",
            with_metrics(&[good_a.clone(), good_b.clone(), "    timout: 5s\n".into()]),
            format!("{file}:10:5: routes[1].timout: unknown key `timout`; did you mean `timeout`?"),
        ),
        (
            "bad URL",
            with_metrics(&[
                good_a.clone(),
                good_b.clone(),
                route("c.example.com", "htp://x"), // lines 10-12
            ]),
            format!("{file}:11:5: routes[2].to: \"htp://x\" is not an http, https or h2c URL"),
        ),
        (
            "YAML syntax error",
            with_metrics(&[
                good_a.clone(),
                good_b.clone(),
                "  - from: https://c.example.com\n    to: http://x: y\n".into(),
            ]),
            format!("{file}:11:17: YAML syntax error: mapping values are not allowed in this context"),
        ),
    ];

    for (i, (name, yaml, expected)) in cases.iter().enumerate() {
        let skip = p.logs().len();
        p.write_config(yaml);
        let summary = wait_for_event(&p, skip, REJECTED_SUMMARY, Duration::from_secs(5)).await;
        assert_eq!(summary["problems"], 1, "{name}: {summary}");
        let problems: Vec<String> =
            events_named(&p, skip, REJECTED).iter().filter_map(|e| e["problem"].as_str().map(str::to_string)).collect();
        assert!(problems.contains(expected), "{name}: expected problem {expected:?}, logged {problems:?}");
        assert!(events_named(&p, skip, RELOADED).is_empty(), "{name}: a bad file must not be applied");

        assert_eq!(status_of(&client, p.url("a.example.com", "/")).await, 200, "{name}: old route");
        assert_eq!(status_of(&client, p.url("b.example.com", "/")).await, 404, "{name}: route b must not be added");
        let text = wait_for_metric(&p, "postern_config_reloads_total", &[("result", "failure")], (i + 1) as f64).await;
        assert_eq!(metric(&text, "postern_config_reloads_total", &[("result", "success")]), successes, "{name}");
        assert_eq!(metric(&text, "postern_routes_loaded", &[]), Some(1.0), "{name}: {text}");
    }

    // And a good file afterwards is applied again.
    let skip = p.logs().len();
    p.write_config(&with_metrics(&[good_a, good_b]));
    wait_for_event(&p, skip, RELOADED, Duration::from_secs(5)).await;
    assert_eq!(status_of(&client, p.url("b.example.com", "/")).await, 200);
}

// ---------------------------------------------------------------------------
// 3. SIGHUP

/// The config path becomes a symlink to a file in another directory, which
/// the watcher (config directory, config file name) does not see. Changes
/// to that file are then picked up only by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_file_watcher_cannot_see() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let first = route_list(&[route("a.example.com", &a.url())]);
    let mut p = Postern::start(&first);
    let client = p.client();

    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real.yaml");
    let write_target = |routes: &[String]| {
        let tmp = elsewhere.path().join("real.yaml.tmp");
        std::fs::write(&tmp, format!("address: {}\n{}", p.addr, route_list(routes))).expect("write");
        std::fs::rename(&tmp, &target).expect("rename");
    };
    write_target(&[route("a.example.com", &a.url())]);
    let link = p.path("link.tmp");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let skip = p.logs().len();
    std::fs::rename(&link, &p.config_path).expect("replace config with symlink");
    // The watcher sees the symlink replace the file.
    let first = wait_for_event(&p, skip, RELOADED, Duration::from_secs(5)).await;
    assert_eq!(first["trigger"], "FileChanged", "{first}");

    // Wait out any second event of that rename (the settle window is 200 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let skip = p.logs().len();
    write_target(&[route("a.example.com", &a.url()), route("b.example.com", &b.url())]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(events_named(&p, skip, RELOADED).is_empty(), "the watcher must not see the target change");
    assert_eq!(status_of(&client, p.url("b.example.com", "/")).await, 404, "b not loaded without SIGHUP");

    p.signal("HUP");
    let reloaded = wait_for_event(&p, skip, RELOADED, Duration::from_secs(5)).await;
    assert_eq!(reloaded["trigger"], "Hangup", "{reloaded}");
    assert_eq!(reloaded["routes"], 2, "{reloaded}");
    let resp = client.get(p.url("b.example.com", "/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "b");
    assert_eq!(p.wait_exit(Duration::ZERO), None, "SIGHUP must not stop the proxy");
}

fn route_list(routes: &[String]) -> String {
    format!("routes:\n{}", routes.concat())
}

// ---------------------------------------------------------------------------
// 4. Swapping the table under steady load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_configs_under_load_drops_no_request() {
    let a = Upstream::start("a").await;
    let versioned = |v: &str| {
        format!("routes:\n{}    set_response_headers:\n      X-Config-Version: {v}\n", route("a.example.com", &a.url()))
    };
    let p = Postern::start(&versioned("one"));
    let url = p.url("a.example.com", "/load");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, stop, ok) = (p.client(), url.clone(), stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut versions = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.get(&url).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        if let Some(v) = resp.headers().get("x-config-version") {
                            versions.insert(v.to_str().unwrap_or("?").to_string());
                        }
                        match resp.bytes().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.push(format!("body: {e}"));
                                0
                            }
                        };
                    }
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(format!("error: {e:?}")),
                }
            }
            (failures, versions)
        }));
    }

    // Let the load start, then swap ten times, each applied before the next.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut applied = 0;
    for i in 0..10 {
        let skip = p.logs().len();
        p.write_config(&versioned(if i % 2 == 0 { "two" } else { "one" }));
        wait_for_event(&p, skip, RELOADED, Duration::from_secs(5)).await;
        applied += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        let (f, v) = t.await.expect("load task");
        failures.extend(f);
        versions.extend(v);
    }
    assert_eq!(applied, 10);
    assert!(failures.is_empty(), "{} failed requests, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok.load(Ordering::Relaxed) >= 100, "too little load to mean anything: {}", ok.load(Ordering::Relaxed));
    let expected: std::collections::BTreeSet<String> = ["one", "two"].map(String::from).into();
    assert_eq!(versions, expected, "both config versions were served");
    assert!(p.logs().iter().all(|l| !l.contains(REJECTED)), "no reload was rejected");
}

// ---------------------------------------------------------------------------
// 5. SIGTERM drains in-flight requests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let a = Upstream::start("a").await;
    let mut p = Postern::start(&route_list(&[route("a.example.com", &a.url())]));
    let client = p.client();
    let slow = tokio::spawn(client.get(p.url("a.example.com", "/slow/1500")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let skip = p.logs().len();
    p.signal("TERM");
    wait_for_event(&p, skip, "shutting down", Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(!slow.is_finished(), "the slow request is still in flight while draining");
    let refused = TcpStream::connect_timeout(&p.addr, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a new connection while draining must be refused, got {refused:?}"
    );

    let resp = slow.await.expect("task").expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "slow done");
    let code = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(5)));
    assert_eq!(code, Some(0), "exit code after a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let a = Upstream::start("a").await;
    let mut p = Postern::start_with(
        &route_list(&[route("a.example.com", &a.url())]),
        support::Options { extra_args: vec!["--shutdown-grace".into(), "300ms".into()], ..Default::default() },
    );
    let client = p.client();
    let slow = tokio::spawn(client.get(p.url("a.example.com", "/slow/5000")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!a.seen().is_empty(), "the slow request reached the upstream");
    let sent = Instant::now();
    p.signal("TERM");
    let code = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(4)));
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "exit code after the grace period");
    assert!(took < Duration::from_secs(2), "exited {took:?} after SIGTERM with a 300ms grace");
    assert!(took >= Duration::from_millis(250), "exited after {took:?}: the grace period was not honoured");
    let outcome = tokio::time::timeout(Duration::from_secs(3), slow).await.expect("client notices").expect("task");
    assert!(outcome.is_err(), "the cut-off request must fail, got {:?}", outcome.map(|r| r.status()));
    assert!(p.logs().iter().any(|l| l.contains("grace period over")), "the log says the grace period ran out");
}

// ---------------------------------------------------------------------------
// 6. Metrics and health endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_durations_upstream_errors_and_routes() {
    let a = Upstream::start("a").await;
    let dead = format!("http://{}", dead_addr());
    let slow = format!("{}    timeout: 300ms\n", route("slow.example.com", &a.url()));
    let p = Postern::start(&with_metrics(&[route("a.example.com", &a.url()), route("dead.example.com", &dead), slow]));
    let metrics = p.metrics.expect("metrics listener");
    assert_eq!(support::get_plain(metrics, "/healthz").await, (200, "ok\n".to_string()));
    // Readiness is set just after "proxy listening" is logged.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ready = support::get_plain(metrics, "/readyz").await;
    while ready.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = support::get_plain(metrics, "/readyz").await;
    }
    assert_eq!(ready, (200, "ready\n".to_string()));
    assert_eq!(support::get_plain(metrics, "/nope").await.0, 404);

    let client = p.client();
    for _ in 0..3 {
        assert_eq!(status_of(&client, p.url("a.example.com", "/")).await, 200);
    }
    assert_eq!(status_of(&client, p.url("a.example.com", "/status/503")).await, 503);
    assert_eq!(status_of(&client, p.url("dead.example.com", "/")).await, 502);
    assert_eq!(status_of(&client, p.url("slow.example.com", "/slow/3000")).await, 504);

    let ok = [("route", "a.example.com"), ("status", "200")];
    let text = wait_for_metric(&p, "postern_http_requests_total", &ok, 3.0).await;
    let text = if metric(&text, "postern_http_requests_total", &[("route", "dead.example.com")]).is_none() {
        wait_for_metric(&p, "postern_http_requests_total", &[("route", "dead.example.com"), ("status", "502")], 1.0)
            .await
    } else {
        text
    };
    assert_eq!(metric(&text, "postern_http_requests_total", &ok), Some(3.0), "{text}");
    assert_eq!(
        metric(&text, "postern_http_requests_total", &[("route", "a.example.com"), ("status", "503")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "postern_http_requests_total", &[("route", "dead.example.com"), ("status", "502")]),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("# TYPE postern_http_request_duration_seconds histogram"), "{text}");
    let route_a = [("route", "a.example.com")];
    assert_eq!(metric(&text, "postern_http_request_duration_seconds_count", &route_a), Some(4.0), "{text}");
    assert_eq!(
        metric(&text, "postern_http_request_duration_seconds_bucket", &[("route", "a.example.com"), ("le", "+Inf")]),
        Some(4.0),
        "{text}"
    );
    let sum = metric(&text, "postern_http_request_duration_seconds_sum", &route_a).expect("duration sum");
    assert!(sum > 0.0 && sum < 10.0, "duration sum {sum}");
    assert_eq!(
        metric(&text, "postern_upstream_errors_total", &[("route", "dead.example.com"), ("kind", "connect")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "postern_upstream_errors_total", &[("route", "slow.example.com"), ("kind", "timeout")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "postern_upstream_errors_total", &[("route", "a.example.com")]), None, "{text}");
    assert_eq!(metric(&text, "postern_routes_loaded", &[]), Some(3.0), "{text}");
}

// ---------------------------------------------------------------------------
// 7. Access log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_with_its_fields() {
    let a = Upstream::start("a").await;
    let p = Postern::start(&format!(
        "routes:\n  - from: https://app.example.com\n    prefix: /api/\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        a.url()
    ));
    let client = p.client();
    let skip = p.logs().len();
    let resp = client.post(p.url("app.example.com", "/api/items?q=1")).body("hello").send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("body");
    assert_eq!(status_of(&client, p.url("app.example.com", "/api/second")).await, 200);
    assert_eq!(status_of(&client, p.url("app.example.com", "/elsewhere")).await, 404);

    let deadline = Instant::now() + Duration::from_secs(5);
    while events_named(&p, skip, "request").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a duplicate line a moment to show up before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = events_named(&p, skip, "request");
    assert_eq!(lines.len(), 3, "one access log line per request: {lines:#?}");

    // A line is written when the response body ends, so lines of quick
    // successive requests may come in either order.
    let by_path = |path: &str| {
        let found: Vec<&serde_json::Value> = lines.iter().filter(|l| l["http.path"] == path).collect();
        assert_eq!(found.len(), 1, "one line for {path}: {lines:#?}");
        found[0].clone()
    };
    let first = by_path("/api/items");
    assert_eq!(first["http.method"], "POST", "{first}");
    assert_eq!(first["http.host"], "app.example.com", "{first}");
    assert_eq!(first["http.path"], "/api/items", "{first}");
    assert_eq!(first["http.status"], 200, "{first}");
    assert_eq!(first["route.name"], "app.example.com/api/*", "{first}");
    assert_eq!(first["upstream"], a.url(), "{first}");
    assert_eq!(first["http.bytes"], body.len() as u64, "{first}");
    let ms = first["duration_ms"].as_f64().expect("duration_ms is a number");
    assert!(ms > 0.0 && ms < 5000.0, "duration_ms {ms}");
    assert_eq!(first["level"], "INFO");

    assert_eq!(by_path("/api/second")["http.status"], 200);
    let miss = by_path("/elsewhere");
    assert_eq!(miss["http.status"], 404, "{miss}");
    assert_eq!(miss["route.name"], "", "{miss}");
    assert_eq!(miss["upstream"], "", "{miss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_written_out_at_exit_counts_drops_and_turns_off_alone() {
    let a = Upstream::start("a").await;
    let config = format!(
        "metrics_address: 127.0.0.1:0\nroutes:\n  - from: https://app.example.com\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        a.url()
    );
    let mut p = Postern::start(&config);
    let metrics = scrape(&p).await;
    assert_eq!(metric(&metrics, "postern_access_log_lines_dropped_total", &[]), Some(0.0), "{metrics}");
    // The lines are queued for a writer thread; the ones still queued when
    // SIGTERM comes are written before the process exits.
    let client = p.client();
    for i in 0..50 {
        assert_eq!(status_of(&client, p.url("app.example.com", &format!("/n{i}"))).await, 200);
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0));
    // The pipe's reader thread may still be catching up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while events_named(&p, 0, "request").len() < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = events_named(&p, 0, "request");
    assert_eq!(lines.len(), 50, "every request's line is on stderr after exit: {lines:#?}");
    assert!(lines.iter().all(|l| l["target"] == "postern::access"), "{lines:#?}");

    // `postern::access=off` silences the access log and nothing else.
    let options =
        support::Options { env: vec![("RUST_LOG".into(), "info,postern::access=off".into())], ..Default::default() };
    let quiet = Postern::start_with(&config, options);
    assert_eq!(status_of(&quiet.client(), quiet.url("app.example.com", "/")).await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(events_named(&quiet, 0, "request").is_empty(), "{:#?}", quiet.logs());
    assert!(!quiet.logs().is_empty(), "the other info lines stay");
}

// ---------------------------------------------------------------------------
// 8. A bad route is left out; the rest serve

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_route_is_left_out_and_the_others_serve() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // Lines: 1 address, 2 metrics_address, 3 routes:, 4-6 a, 7-9 bad, 10-12 b.
    let p = Postern::start(&with_metrics(&[
        route("a.example.com", &a.url()),
        route("bad.example.com", "htp://x"),
        route("b.example.com", &b.url()),
    ]));
    let client = p.client();
    assert_eq!(status_of(&client, p.url("a.example.com", "/")).await, 200);
    assert_eq!(status_of(&client, p.url("b.example.com", "/")).await, 200);
    assert_eq!(status_of(&client, p.url("bad.example.com", "/")).await, 404);

    let left_out = events_named(&p, 0, "route left out");
    let problems: Vec<&str> = left_out.iter().filter_map(|e| e["problem"].as_str()).collect();
    let expected =
        format!("{}:8:5: routes[1].to: \"htp://x\" is not an http, https or h2c URL", p.config_path.display());
    assert_eq!(problems, vec![expected.as_str()]);
    assert_eq!(left_out[0]["level"], "ERROR");
    let compiled = events_named(&p, 0, "route table compiled");
    assert_eq!(compiled.first().map(|e| e["routes"].clone()), Some(2.into()));
    assert_eq!(metric(&scrape(&p).await, "postern_routes_loaded", &[]), Some(2.0));
}

// ---------------------------------------------------------------------------
// 9. Startup failures

#[test]
fn bad_settings_stop_startup_with_exit_code_1() {
    let (code, stderr) = serve_until_exit(
        "address: nope\nroutes:\n  - from: https://a.example.com\n    response: {body: hi}\n",
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains(r#"config.yaml:1:1: address: \"nope\" is not a listen address"#), "stderr:\n{stderr}");
    assert!(stderr.contains("postern: 1 problem(s) in the config; not starting"), "stderr:\n{stderr}");
}

#[test]
fn a_missing_config_file_stops_startup_with_exit_code_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.yaml");
    let args = ["serve", "--config", missing.to_str().expect("utf-8 path")];
    let (code, stderr) = support::run_cli_bounded(&args, dir.path(), Duration::from_secs(10));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("postern: {}: cannot read the config file", missing.display())),
        "stderr:\n{stderr}"
    );
}

#[test]
fn an_address_in_use_stops_startup_with_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (code, stderr) =
        serve_until_exit(&format!("address: {addr}\ninsecure_server: true\n"), &[], Duration::from_secs(10));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains(&format!("postern: cannot listen on {addr} (address): ")), "stderr:\n{stderr}");
    assert!(!stderr.contains("proxy listening"), "stderr:\n{stderr}");

    let (code, stderr) = serve_until_exit(
        &format!("address: 127.0.0.1:0\ninsecure_server: true\nmetrics_address: {addr}\n"),
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains(&format!("postern: cannot listen on {addr} (metrics_address): ")), "stderr:\n{stderr}");
    drop(taken);
}

// ---------------------------------------------------------------------------
// Reload race at startup

/// Kills the child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config change made while the proxy starts (after it has read its file,
/// before it listens) must still be picked up. The proxy is held at exactly that
/// point by not reading its stderr: it logs thousands of left-out routes
/// right after loading, and blocks once the pipe is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_startup_is_picked_up() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    let config = |body: &str, bad_routes: usize| {
        let mut text = format!(
            "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n  - from: http://a.example.com\n    response: {{body: {body}}}\n    allow_public_unauthenticated_access: true\n"
        );
        for i in 0..bad_routes {
            text.push_str(&format!("  - from: https://bad{i}.example.com\n    to: htp://x\n"));
        }
        text
    };
    std::fs::write(&path, config("old", 3000)).expect("write config");
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn postern"),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().expect("stderr piped"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("read the first log line");
    assert!(first.contains("route left out"), "the file was loaded: {first}");

    // The proxy has read the file and is stuck logging. Change the file now.
    let tmp = dir.path().join("config.yaml.tmp");
    std::fs::write(&tmp, config("new", 0)).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("postern starts listening");
            if line.contains("\"proxy listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
                break v["address"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).expect("address");
            }
        }
    });
    std::thread::spawn(move || while rx.recv().is_ok() {});

    let client = support::client_to(addr);
    let url = format!("http://a.example.com:{}/", addr.port());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = client.get(&url).send().await.expect("send").text().await.expect("body");
        if body == "new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body, "new", "the change made during startup was never loaded");
    assert_eq!(child.0.try_wait().expect("try_wait"), None, "still running");
}
