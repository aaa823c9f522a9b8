//! Control-plane disruptions the controller must survive: the API server
//! restarting, and etcd compaction making a watch's resourceVersion `410 Gone`.
//! Its own binary (own control plane), and the tests take turns, because
//! they restart the API server under everyone.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({ "metadata": { "name": name }, "data": { "k": "v" } })).expect("cm")
}

#[derive(Debug, PartialEq)]
enum Seen {
    Relist,
    Apply(String),
}

/// Next Init (re-list) or Apply event, skipping errors (the server may be down).
async fn next<S>(stream: &mut S, timeout: Duration) -> Seen
where
    S: futures_util::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await.expect("watch event in time") {
            Some(Ok(Event::Init)) => return Seen::Relist,
            Some(Ok(Event::Apply(o))) | Some(Ok(Event::InitApply(o))) => {
                return Seen::Apply(o.metadata.name.unwrap_or_default());
            }
            Some(_) => continue,
            None => panic!("watch stream ended"),
        }
    }
}

/// Waits for an Apply of `name`, passing over any other event.
async fn wait_for_apply<S>(stream: &mut S, name: &str, timeout: Duration) -> Vec<Seen>
where
    S: futures_util::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next(stream, left).await;
        let done = event == Seen::Apply(name.into());
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reconnects_after_the_api_server_restarts() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("restart").await;
    let api: Api<ConfigMap> = Api::namespaced(plane.client().await, &ns);
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff().boxed();
    api.create(&PostParams::default(), &config_map("before")).await.expect("create");
    wait_for_apply(&mut stream, "before", Duration::from_secs(30)).await;

    let watching = tokio::spawn(async move {
        let seen = wait_for_apply(&mut stream, "after", Duration::from_secs(120)).await;
        (stream, seen)
    });
    tokio::task::spawn_blocking(|| control_plane::shared().restart_apiserver()).await.expect("restart");
    let api: Api<ConfigMap> = Api::namespaced(plane.client().await, &ns);
    api.create(&PostParams::default(), &config_map("after")).await.expect("create after restart");
    let (_, seen) = watching.await.expect("watcher task");
    assert_eq!(seen.last(), Some(&Seen::Apply("after".into())), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_makes_old_watches_gone_and_the_watcher_relists() {
    let _turn = TURN.lock().await;
    let plane = control_plane::shared();
    let ns = plane.namespace("compact").await;
    let other = plane.namespace("compact-churn").await;
    let client = plane.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let first = api.create(&PostParams::default(), &config_map("first")).await.expect("create");
    let old_rv = first.metadata.resource_version.expect("resourceVersion");

    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff().boxed();
    wait_for_apply(&mut stream, "first", Duration::from_secs(30)).await;

    // Changes the watcher does not see (another namespace) move etcd's
    // revision past the watcher's resourceVersion; then compact past it.
    let churn: Api<ConfigMap> = Api::namespaced(client.clone(), &other);
    for i in 0..5 {
        churn.create(&PostParams::default(), &config_map(&format!("c{i}"))).await.expect("churn");
    }
    plane.compact_etcd().await;

    // A plain watch from the old resourceVersion is refused with 410 Gone.
    let mut old_watch = api.watch(&WatchParams::default().timeout(10), &old_rv).await.expect("watch request").boxed();
    let first_event = tokio::time::timeout(Duration::from_secs(10), old_watch.next()).await.expect("watch answer");
    match first_event {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        Some(Err(kube::Error::Api(s))) => assert_eq!(s.code, 410, "{s:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // The running watcher loses its connection (restart), comes back with
    // its now-compacted resourceVersion, gets 410, and recovers by re-listing.
    tokio::task::spawn_blocking(|| control_plane::shared().restart_apiserver()).await.expect("restart");
    let api: Api<ConfigMap> = Api::namespaced(plane.client().await, &ns);
    api.create(&PostParams::default(), &config_map("second")).await.expect("create after compaction");
    let seen = wait_for_apply(&mut stream, "second", Duration::from_secs(120)).await;
    assert!(seen.contains(&Seen::Relist), "the watcher re-listed after 410: {seen:?}");
}
