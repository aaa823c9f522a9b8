//! Route policy end to end: real sign-ins as alice, bob and carol, then the
//! answer (200 or 403) of routes that each use one policy criterion.
//!
//! Users (see `support/idp.rs`): alice (alice@example.com, verified, groups
//! admins + staff), bob (bob@example.org, verified, staff), carol
//! (carol@other.test, NOT verified, no groups).

#[path = "support/auth_env.rs"]
mod auth_env;
mod support;

use auth_env::{Browser, Env};
use reqwest::header::ACCEPT;

/// One route per criterion, all on app.example.com, told apart by path.
/// The catch-all last route lets anyone signed in land after sign-in.
const ROUTES: &str = r#"
  - from: https://app.example.com
    prefix: /users/
    to: UPSTREAM
    allowed_users: [alice@example.com, bob, carol@other.test]
  - from: https://app.example.com
    prefix: /domains/
    to: UPSTREAM
    allowed_domains: [example.com, other.test]
  - from: https://app.example.com
    prefix: /email/
    to: UPSTREAM
    policy: {allow: {or: [{email: {is: Bob@Example.org}}]}}
  - from: https://app.example.com
    prefix: /domain/
    to: UPSTREAM
    policy: {allow: {or: [{domain: {in: [example.org, other.test]}}]}}
  - from: https://app.example.com
    prefix: /claim-email/
    to: UPSTREAM
    policy: {allow: {or: [{claim/email: {ends_with: "@other.test"}}]}}
  - from: https://app.example.com
    prefix: /claim-name/
    to: UPSTREAM
    policy: {allow: {or: [{claim/name: Bob Builder}]}}
  - from: https://app.example.com
    prefix: /admins/
    to: UPSTREAM
    policy: {allow: {or: [{claim/groups: {has: admins}}]}}
  - from: https://app.example.com
    prefix: /staff/
    to: UPSTREAM
    policy: {allow: {or: [{claim/groups: staff}]}}
  - from: https://app.example.com
    prefix: /user/
    to: UPSTREAM
    policy: {allow: {or: [{user: carol}]}}
  - from: https://app.example.com
    prefix: /method/
    to: UPSTREAM
    policy: {allow: {and: [{authenticated_user: true}, {http_method: {in: [GET, HEAD]}}]}}
  - from: https://app.example.com
    prefix: /path/
    to: UPSTREAM
    policy: {allow: {and: [{authenticated_user: true}, {http_path: {starts_with: /path/open/}}]}}
  - from: https://app.example.com
    prefix: /deny/
    to: UPSTREAM
    policy:
      - allow: {or: [{authenticated_user: true}]}
      - deny: {or: [{claim/groups: {has: admins}}]}
  - from: https://app.example.com
    prefix: /not/
    to: UPSTREAM
    policy: {allow: {and: [{authenticated_user: true}, {not: [{domain: example.com}]}]}}
  - from: https://app.example.com
    prefix: /anon-get/
    to: UPSTREAM
    policy: {allow: {or: [{http_method: GET}]}}
  - from: https://app.example.com
    to: UPSTREAM
    allow_any_authenticated_user: true
"#;

/// (method, path, alice, bob, carol): the status each user gets.
const TABLE: &[(&str, &str, u16, u16, u16)] = &[
    // allowed_users: by verified email or by user ID; carol's email is unverified.
    ("GET", "/users/x", 200, 200, 403),
    // allowed_domains: verified emails only.
    ("GET", "/domains/x", 200, 403, 403),
    // email (case-insensitive), verified only.
    ("GET", "/email/x", 403, 200, 403),
    ("GET", "/domain/x", 403, 200, 403),
    // claim/email is the raw claim: carol's unverified address counts there.
    ("GET", "/claim-email/x", 403, 403, 200),
    ("GET", "/claim-name/x", 403, 200, 403),
    // groups, through claim/groups.
    ("GET", "/admins/x", 200, 403, 403),
    ("GET", "/staff/x", 200, 200, 403),
    ("GET", "/user/x", 403, 403, 200),
    ("GET", "/method/x", 200, 200, 200),
    ("POST", "/method/x", 403, 403, 403),
    ("DELETE", "/method/x", 403, 403, 403),
    ("GET", "/path/open/x", 200, 200, 200),
    ("GET", "/path/closed", 403, 403, 403),
    // deny wins over allow.
    ("GET", "/deny/x", 403, 200, 200),
    ("GET", "/not/x", 403, 200, 200),
    ("GET", "/anon-get/x", 200, 200, 200),
    ("POST", "/anon-get/x", 403, 403, 403),
    ("GET", "/anything", 200, 200, 200),
];

async fn status(env: &Env, browser: &Browser, method: &str, path: &str) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let resp = browser
        .client
        .request(method, env.url("app.example.com", path))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    if status == 403 {
        let body: serde_json::Value = resp.json().await.expect("403 is JSON for API clients");
        assert_eq!(body["error"], "forbidden", "{body}");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_criterion_allows_and_denies_the_right_users() {
    let env = Env::start(ROUTES).await;
    let users = [
        ("alice", env.sign_in("alice").await),
        ("bob", env.sign_in("bob").await),
        ("carol", env.sign_in("carol").await),
    ];

    let mut failures = Vec::new();
    for &(method, path, alice, bob, carol) in TABLE {
        for ((user, browser), want) in users.iter().zip([alice, bob, carol]) {
            let before = env.upstream.seen().len();
            let got = status(&env, browser, method, path).await;
            let reached = env.upstream.seen().len() > before;
            if got != want {
                failures.push(format!("{user} {method} {path}: got {got}, want {want}"));
            }
            if got == 403 && reached {
                failures.push(format!("{user} {method} {path}: a denied request reached the upstream"));
            }
        }
    }
    assert!(failures.is_empty(), "policy mismatches:\n{}", failures.join("\n"));

    // Without a session: criteria about the user are false, so the
    // request is asked to sign in, except where policy needs no user.
    let anonymous = env.client();
    for (method, path, want) in
        [("GET", "/users/x", 401), ("GET", "/anon-get/x", 200), ("POST", "/anon-get/x", 401), ("GET", "/not/x", 401)]
    {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = anonymous
            .request(method.clone(), env.url("app.example.com", path))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), want, "anonymous {method} {path}");
    }
}
