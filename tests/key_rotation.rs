//! Rotating the identity assertion key as an upstream sees it: the real
//! IdP and sign-in, a running Postern whose config is reloaded through the
//! steps the README gives (publish the new key as a previous key, swap,
//! drop the old one), and an upstream that verifies each assertion against
//! a JWKS it fetched earlier and cached.

#[path = "support/auth_env.rs"]
mod auth_env;
mod support;

use std::path::Path;
use std::time::Duration;

use auth_env::{Browser, Env, TWO_HOSTS, assertion_verifies, verify_assertion};
use support::idp::IdpOptions;

/// The route hosts and the authenticate host, which all publish the JWKS.
const JWKS_HOSTS: [&str; 3] = ["app.example.com", "api.example.com", "authenticate.example.com"];

/// A fresh EC P-256 key, PKCS#8 PEM, written to `dir/name`; its path.
fn write_key(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, rcgen::KeyPair::generate().expect("P-256 key").serialize_pem()).expect("write key");
    path.display().to_string()
}

/// The `kid`s a JWKS lists, in order.
fn kids(jwks: &str) -> Vec<String> {
    let jwks: serde_json::Value = serde_json::from_str(jwks).expect("JWKS parses");
    jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_string()).collect()
}

fn kid_of(assertion: &str) -> String {
    jsonwebtoken::decode_header(assertion).expect("assertion header").kid.expect("kid")
}

/// The assertion the upstream receives for the browser's next request.
async fn next_assertion(env: &Env, browser: &Browser, path: &str) -> String {
    let resp = browser.client.get(env.url("app.example.com", path)).send().await.expect("request");
    assert_eq!(resp.status(), 200, "{path}");
    let seen = env.upstream.last();
    assert_eq!(seen.target, path);
    seen.headers["x-postern-jwt-assertion"].to_str().expect("ascii").to_string()
}

/// The JWKS, the same on every host.
async fn jwks(env: &Env) -> String {
    let jwks = env.jwks(JWKS_HOSTS[0]).await;
    for host in &JWKS_HOSTS[1..] {
        assert_eq!(env.jwks(host).await, jwks, "{host} publishes the same keys");
    }
    jwks
}

/// Rewrites the running config with `keys` in place of the signing-key
/// lines (the line after `idp_client_secret` up to `routes:`) and waits
/// for the reload's log event `wait_for`; returns that event.
async fn reload(env: &Env, keys: &str, wait_for: &str) -> serde_json::Value {
    let config = std::fs::read_to_string(&env.postern.config_path).expect("read config");
    let (head, routes) = config.split_once("\nroutes:\n").expect("routes");
    let (head, _keys) = head.split_once("idp_client_secret: postern-secret\n").expect("secret line");
    let body = head.lines().filter(|l| !l.starts_with("address:")).collect::<Vec<_>>().join("\n");
    let skip = env.postern.logs().len();
    env.postern.write_config(&format!("{body}\nidp_client_secret: postern-secret\n{keys}\nroutes:\n{routes}"));
    support::wait_for_event(&env.postern, skip, wait_for, Duration::from_secs(15)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_three_reloads_never_leaves_an_upstream_with_an_assertion_it_cannot_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (write_key(dir.path(), "a.pem"), write_key(dir.path(), "b.pem"));
    let env = Env::start_with(TWO_HOSTS, &format!("signing_key_file: {a}"), IdpOptions::default()).await;
    let browser = env.sign_in("alice").await;

    // Before: key a signs; the upstream fetched and cached the JWKS.
    let with_a = next_assertion(&env, &browser, "/before").await;
    let cached_before = jwks(&env).await;
    let kid_a = kid_of(&with_a);
    assert_eq!(kids(&cached_before), vec![kid_a.clone()]);
    assert_eq!(verify_assertion(&cached_before, &with_a, "app.example.com", "app.example.com")["sub"], "alice");

    // 1. b is published ahead of use; a still signs.
    let event =
        reload(&env, &format!("signing_key_file: {a}\nprevious_signing_keys_file: [{b}]"), "signing keys reloaded")
            .await;
    assert_eq!(event["signing.kid"], kid_a.as_str(), "{event}");
    let cached_ahead = jwks(&env).await;
    let [listed_a, kid_b] = <[String; 2]>::try_from(kids(&cached_ahead)).expect("two keys");
    assert_eq!(listed_a, kid_a, "the current key first");
    assert_ne!(kid_b, kid_a);
    assert_eq!(kid_of(&next_assertion(&env, &browser, "/ahead").await), kid_a, "a previous key never signs");

    // 2. Swap: b signs, a is kept as previous.
    let event =
        reload(&env, &format!("signing_key_file: {b}\nprevious_signing_keys_file: [{a}]"), "signing keys reloaded")
            .await;
    assert_eq!(event["signing.kid"], kid_b.as_str(), "{event}");
    let after_swap = jwks(&env).await;
    assert_eq!(kids(&after_swap), vec![kid_b.clone(), kid_a.clone()], "both kids, the signing one first");
    let with_b = next_assertion(&env, &browser, "/swapped").await;
    assert_eq!(kid_of(&with_b), kid_b, "new assertions carry b's kid (none cached with a is handed out)");
    assert_eq!(verify_assertion(&after_swap, &with_b, "app.example.com", "app.example.com")["sub"], "alice");
    assert_eq!(
        verify_assertion(&cached_ahead, &with_b, "app.example.com", "app.example.com")["sub"],
        "alice",
        "an upstream that cached the JWKS after step 1 verifies b's assertions without fetching again"
    );
    assert_eq!(
        verify_assertion(&after_swap, &with_a, "app.example.com", "app.example.com")["sub"],
        "alice",
        "an assertion a made before the swap still verifies against the new JWKS"
    );
    assert!(
        !assertion_verifies(&cached_before, &with_b),
        "a JWKS cached before step 1 does not know b: why the new key is published first"
    );

    // A bad reload keeps the running keys and the last good config.
    std::fs::write(dir.path().join("garbage.pem"), "not a key").expect("write");
    let garbage = dir.path().join("garbage.pem").display().to_string();
    let event = reload(
        &env,
        &format!("signing_key_file: {b}\nprevious_signing_keys_file: [{a}, {garbage}]"),
        "config reload rejected",
    )
    .await;
    let problem = event["problem"].as_str().expect("problem");
    assert!(problem.contains("previous_signing_keys_file[1]: is not an EC P-256 private key in PEM form"), "{problem}");
    assert_eq!(jwks(&env).await, after_swap, "the running keys stay");
    assert_eq!(kid_of(&next_assertion(&env, &browser, "/after-bad-reload").await), kid_b);

    // 3. Once a's assertions have expired, a is dropped.
    let event = reload(&env, &format!("signing_key_file: {b}"), "signing keys reloaded").await;
    assert_eq!(event["signing.kid"], kid_b.as_str(), "{event}");
    let after_drop = jwks(&env).await;
    assert_eq!(kids(&after_drop), vec![kid_b.clone()], "a no longer appears");
    assert!(!assertion_verifies(&after_drop, &with_a), "a's assertions no longer verify");
    let still_b = next_assertion(&env, &browser, "/dropped").await;
    assert_eq!(kid_of(&still_b), kid_b);
    assert_eq!(verify_assertion(&after_drop, &still_b, "app.example.com", "app.example.com")["sub"], "alice");
    // Not reported as a setting that waits for a restart.
    assert!(env.postern.logs().iter().all(|l| !l.contains("only takes effect on restart")), "keys reload live");
}
