//! Faults under a steady, counted load (file mode): a config reload every
//! 100 ms for a minute, SIGTERM, and the upstream killed and restarted.
//! Every request the load sends is recorded (tests/support/load.rs); each
//! test prints its figures and asserts what a user would check: no failed
//! request, exit 0, recovery, no leak.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::load::{Limits, Load, Outcome, fd_count};
use support::upstream::{Upstream, WsEcho, tls_connect};
use support::{Options, Postern, events_named};
use tokio_tungstenite::tungstenite::Message;

fn route(host: &str, to: &str, extra: &str) -> String {
    format!("  - from: https://{host}\n    to: {to}\n    allow_public_unauthenticated_access: true\n{extra}")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn ws_connect(p: &Postern, host: &str) -> Ws {
    let tls = tls_connect(p.addr, host, &[b"http/1.1"]).await.expect("TLS to proxy");
    let url = format!("wss://{host}:{}/echo", p.addr.port());
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, tls))
        .await
        .expect("handshake within 10s")
        .expect("WebSocket through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, msg: &str) {
    ws.send(Message::text(msg.to_string())).await.expect("send on the open WebSocket");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time") {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), msg),
        other => panic!("the WebSocket did not survive: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. A reload every 100 ms for a minute

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_every_100ms_for_a_minute_fail_no_request_and_keep_websockets() {
    let a = Upstream::start("a").await;
    let ws_up = WsEcho::start().await;
    let config = |v: usize| {
        format!(
            "routes:\n{}{}",
            route("a.example.com", &a.url(), &format!("    set_response_headers:\n      X-Config-Version: v{v}\n")),
            route("ws.example.com", &ws_up.url(), "    allow_websockets: true\n"),
        )
    };
    let p = Postern::start(&config(0));
    let mut ws = ws_connect(&p, "ws.example.com").await;
    echo(&mut ws, "before").await;

    let load = Load::start(|| p.client(), &p.url("a.example.com", "/load"), Limits::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let skip = p.logs().len();
    // 600 writes, one per 100 ms: the minute of reloads.
    let writes = 600;
    let mut baseline = (0, 0);
    let started = Instant::now();
    for i in 1..=writes {
        p.write_config(&config(i));
        if i % 100 == 0 {
            echo(&mut ws, &format!("during {i}")).await;
        }
        if i == 50 {
            baseline = (fd_count(p.pid()), p.rss_kib());
        }
        let next = started + Duration::from_millis(100 * i as u64);
        tokio::time::sleep_until(next.into()).await;
    }
    // The last write is applied (so the load saw the final table too).
    support::wait_for_event(&p, skip, "config reloaded", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fd_after, rss_after) = (fd_count(p.pid()), p.rss_kib());
    let report = load.stop().await;
    echo(&mut ws, "after a minute of reloads").await;
    let (fd_before, rss_before) = baseline;

    let reloaded = events_named(&p, skip, "config reloaded").len();
    let rejected = events_named(&p, skip, "config reload rejected").len();
    println!(
        "reloads: {writes} writes over {:?}, {reloaded} applied, {rejected} rejected; load: {}; \
         fds {fd_before} -> {fd_after}; RSS {rss_before} KiB -> {rss_after} KiB (from the 50th write)",
        started.elapsed(),
        report.summary()
    );
    assert_eq!(rejected, 0, "no write was rejected");
    // The watcher may coalesce writes that land within one debounce window,
    // but most must be applied, or this did not test reloads under load.
    assert!(reloaded >= writes / 4, "only {reloaded} of {writes} writes applied");
    assert!(report.ok() >= 1000, "too little load to mean anything: {}", report.summary());
    assert!(report.failed().is_empty(), "failed requests during reloads: {}", report.summary());
    // No leak across reloads: a file watcher, listener or old table kept
    // per reload would add one fd or a table's worth of memory each, 150+
    // times over; 16 fds and 16 MiB leave room for the load's reconnects
    // and allocator warm-up only.
    assert!(fd_after <= fd_before + 16, "fds {fd_before} -> {fd_after} over the reloads");
    assert!(rss_after <= rss_before + 16 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB over the reloads");
    assert_eq!(ws_up.upgraded.load(std::sync::atomic::Ordering::SeqCst), 1, "one WebSocket, never re-opened");
}

// ---------------------------------------------------------------------------
// 2. SIGTERM under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_refuses_new_connections_and_exits_0() {
    let a = Upstream::start("a").await;
    let mut p = Postern::start(&format!("routes:\n{}", route("a.example.com", &a.url(), "")));
    let load = Load::start(|| p.client(), &p.url("a.example.com", "/load"), Limits::default());
    // Slow requests in flight when the signal comes; each takes 1.5 s,
    // well inside the default 30 s grace.
    let slow: Vec<_> = (0..8)
        .map(|i| {
            let (client, url) = (p.client(), p.url("a.example.com", &format!("/slow/1500?n={i}")));
            tokio::spawn(async move {
                let resp = client.get(url).send().await?;
                let status = resp.status().as_u16();
                Ok::<_, reqwest::Error>((status, resp.text().await?))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let skip = p.logs().len();
    let signalled = Instant::now();
    p.signal("TERM");
    support::wait_for_event(&p, skip, "shutting down", Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = std::net::TcpStream::connect_timeout(&p.addr, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a new connection while draining must be refused, got {refused:?}"
    );
    let code = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    let exited = signalled.elapsed();
    let report = load.stop().await;
    let mut slow_ok = 0;
    for s in slow {
        let (status, body) = s.await.expect("task").expect("the in-flight slow request completes");
        assert_eq!((status, body.as_str()), (200, "slow done"));
        slow_ok += 1;
    }

    // Before the signal every request succeeds. After it, a request either
    // completes or finds the port closed (refused); a reset or a cut-off
    // answer on a connection the proxy had accepted is a failure.
    let before: Vec<_> = report.samples.iter().filter(|s| s.started < signalled).collect();
    let after: Vec<_> = report.samples.iter().filter(|s| s.started >= signalled).collect();
    let unclean: Vec<_> = after.iter().filter(|s| !matches!(s.outcome, Outcome::Ok | Outcome::Refused)).collect();
    println!(
        "sigterm: exit {code:?} after {exited:?}; {slow_ok}/8 slow in-flight finished; load: {}; \
         before the signal {} sent, {} failed; after it {} ok, {} refused, {} unclean",
        report.summary(),
        before.len(),
        before.iter().filter(|s| s.outcome != Outcome::Ok).count(),
        after.iter().filter(|s| s.outcome == Outcome::Ok).count(),
        after.iter().filter(|s| s.outcome == Outcome::Refused).count(),
        unclean.len(),
    );
    assert_eq!(code, Some(0), "exit code after a clean drain");
    assert!(
        before.iter().all(|s| s.outcome == Outcome::Ok),
        "requests sent before SIGTERM failed: {}",
        report.summary()
    );
    assert!(before.len() >= 50, "too little load to mean anything: {}", report.summary());
    assert!(unclean.is_empty(), "requests after SIGTERM ended uncleanly: {:?}", &unclean[..unclean.len().min(5)]);
}

// ---------------------------------------------------------------------------
// 3. The upstream killed and restarted

/// The upstream as its own process (a Postern answering directly), so it
/// can be killed for real (SIGKILL: listener and open connections gone at
/// once) and restarted on the same port.
fn start_upstream(port: u16) -> Postern {
    Postern::start(&format!(
        "address: 127.0.0.1:{port}\ninsecure_server: true\nroutes:\n  - from: http://a.example.com\n    response: {{status: 200, body: up}}\n    allow_public_unauthenticated_access: true\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_answers_502_while_down_recovers_and_leaks_nothing() {
    let port = support::free_port();
    let mut upstream = start_upstream(port);
    let p = Postern::start_with(
        &format!(
            "routes:\n{}",
            route("a.example.com", &format!("http://127.0.0.1:{port}"), "    preserve_host_header: true\n")
        ),
        Options::default(),
    );
    let limits = Limits { clients: 8, ..Limits::default() };
    let load = Load::start(|| p.client(), &p.url("a.example.com", "/"), limits);

    // Warm up, then take the baseline with the load running (its keep-alive
    // connections are part of it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (fd_before, rss_before) = (fd_count(p.pid()), p.rss_kib());

    let cycles = 5;
    let mut windows = Vec::new();
    let mut recoveries = Vec::new();
    for _ in 0..cycles {
        let down = Instant::now();
        upstream.signal("KILL");
        tokio::task::block_in_place(|| upstream.wait_exit(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        upstream = tokio::task::block_in_place(|| start_upstream(port));
        let up = Instant::now();
        // Recovered once every client has had a 200 that started after the
        // upstream was back, with no failure started after that.
        let deadline = up + Duration::from_secs(10);
        let recovered = loop {
            let samples = load.snapshot();
            let after: Vec<_> = samples.iter().filter(|s| s.started >= up).collect();
            let all_ok = (0..limits.clients).all(|c| after.iter().any(|s| s.client == c && s.outcome == Outcome::Ok));
            if all_ok {
                // The later of: every client's first 200 since, the end of
                // the last failure started since.
                let first_ok = (0..limits.clients)
                    .filter_map(|c| {
                        after
                            .iter()
                            .filter(|s| s.client == c && s.outcome == Outcome::Ok)
                            .map(|s| s.started + s.took)
                            .min()
                    })
                    .max();
                let last_failure = after.iter().filter(|s| s.outcome != Outcome::Ok).map(|s| s.started + s.took).max();
                break first_ok.max(last_failure).map_or(Duration::ZERO, |t| t.saturating_duration_since(up));
            }
            assert!(Instant::now() < deadline, "no recovery 10 s after the upstream came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        recoveries.push(recovered);
        windows.push((down, up));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fd_after, rss_after) = (fd_count(p.pid()), p.rss_kib());
    let report = load.stop().await;

    // Failures outside the down windows (plus the recovery time measured)
    // are the ones that should not happen at all.
    // A request is in a down window if it was in flight at some moment
    // between the kill and the restart (one cut off mid-way counts too).
    let in_window =
        |s: &support::load::Sample| windows.iter().any(|(d, u)| s.started + s.took >= *d && s.started <= *u);
    let while_down: Vec<_> = report.failed().into_iter().filter(|s| in_window(s)).collect();
    let elsewhere: Vec<_> = report
        .failed()
        .into_iter()
        .filter(|s| !in_window(s))
        .filter(|s| !windows.iter().zip(&recoveries).any(|((_, u), r)| s.started >= *u && s.started <= *u + *r))
        .collect();
    println!(
        "upstream kill: {cycles} cycles, down 2 s each; load: {}; {} failed while down {:?}; \
         {} failed outside; recovery after restart {recoveries:?}; fds {fd_before} -> {fd_after}; \
         RSS {rss_before} KiB -> {rss_after} KiB",
        report.summary(),
        while_down.len(),
        support::load::Report { samples: while_down.iter().map(|s| (*s).clone()).collect() }.failures_by_reason(),
        elsewhere.len(),
    );
    assert!(
        while_down.iter().all(|s| matches!(s.outcome, Outcome::Status(502 | 503))),
        "while the upstream is down the proxy answers 502/503 (not errors or hangs): {}",
        report.summary()
    );
    assert!(!while_down.is_empty(), "the load did meet the dead upstream");
    assert!(elsewhere.is_empty(), "failures outside the down windows: {:?}", &elsewhere[..elsewhere.len().min(5)]);
    // The issue asks for recovery within a second. Measured from the moment
    // the restarted upstream listens to the end of the last failed request
    // started after that; 2 s allows a loaded 2-core CI machine one missed
    // scheduling slice on top, still far below anything a backoff or
    // ejection timer (several seconds) would produce.
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    assert!(worst <= Duration::from_secs(2), "recovery took {worst:?}");
    // No leak: after 5 cycles and thousands of 502s the proxy holds about
    // what it held before. The load's 8 clients keep at most a couple of
    // connections each (client side and upstream pool), so 24 fds of slack
    // covers reconnects; a leak of one fd per failed request would be
    // thousands. RSS may grow by allocator arenas warming up; 16 MiB is far
    // above that and far below what thousands of leaked requests keep.
    assert!(fd_after <= fd_before + 24, "fds {fd_before} -> {fd_after}");
    assert!(rss_after <= rss_before + 16 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
}
