//! Attacks on sign-in and sessions, end to end against the real IdP:
//! forged, expired and foreign sessions; OAuth state and code replay;
//! callback token replay and host binding; identity headers sent by the
//! client; open redirects through the return URL.
//!
//! (Forged ID tokens — `alg: none`, wrong audience, wrong nonce — are unit
//! tests in `src/auth/oidc.rs`: the real IdP cannot be made to sign them.)

#[path = "support/auth_env.rs"]
mod auth_env;
mod support;

use std::time::Duration;

use auth_env::{
    Browser, COOKIE_NAME, Env, OTHER_SECRET, assertion_verifies, enc, location, loopback_browser, set_cookies,
    verify_assertion,
};
use reqwest::header::ACCEPT;
use support::idp::{self, IdpOptions, Trace};
use support::redirect_payloads::payloads;

/// Login-CSRF cookies on the authenticate host: one per sign-in attempt.
const CSRF_COOKIE_PREFIX: &str = "_postern_csrf";
const AUTHENTICATE_COOKIE: &str = "_postern_authenticate";

/// Routes: `app` passes identity headers, `api` does not, `other` is public.
const ROUTES: &str = "  - from: https://app.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n    pass_identity_headers: true\n  - from: https://api.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n  - from: https://other.example.com\n    to: UPSTREAM\n    allow_public_unauthenticated_access: true\n";

/// Flips one character in the middle of a token (still base64url).
fn tamper(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// Asserts that `token`, sent as a cookie and as a header, gives no session
/// on `url`'s Postern: browsers are sent to sign in and told to drop the
/// cookie, API clients get 401, `/.postern/user` knows nobody.
async fn refused(client: &reqwest::Client, base: &str, token: &str, what: &str) {
    let cookie = format!("{COOKIE_NAME}={token}");
    let resp = client.get(format!("{base}/page")).header(ACCEPT, "text/html").header("cookie", &cookie).send().await;
    let resp = resp.expect("send");
    assert_eq!(resp.status(), 302, "{what}: a browser is sent to sign in");
    let cookies = set_cookies(resp.headers());
    assert!(cookies.iter().any(|c| c.name == COOKIE_NAME && c.clears()), "{what}: cookie cleared: {cookies:?}");
    assert!(!cookies.iter().any(|c| c.name == COOKIE_NAME && !c.clears()), "{what}: no session set");

    for (name, value) in [("cookie", cookie.clone()), ("x-postern-authorization", token.to_string())] {
        let resp = client
            .get(format!("{base}/api"))
            .header(ACCEPT, "application/json")
            .header(name, &value)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 401, "{what} in {name}");
        let resp = client
            .get(format!("{base}/.postern/user"))
            .header(ACCEPT, "application/json")
            .header(name, &value)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 401, "{what} in {name}: /.postern/user knows nobody");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_key_sessions_are_refused() {
    let env = Env::start(ROUTES).await;
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    let client = env.client();
    let base = env.url("app.example.com", "");

    // Control: the genuine token works in both forms.
    for (name, value) in [("cookie", format!("{COOKIE_NAME}={token}")), ("x-postern-authorization", token.clone())] {
        let resp = client.get(env.url("app.example.com", "/ok")).header(name, value).send().await.expect("send");
        assert_eq!(resp.status(), 200, "genuine token in {name}");
    }

    refused(&client, &base, &tamper(&token), "a token with one character changed").await;
    refused(&client, &base, &token[..token.len() - 4], "a truncated token").await;
    refused(&client, &base, &format!("{token}AAAA"), "a token with bytes appended").await;
    refused(&client, &base, "", "an empty token").await;
    refused(&client, &base, "bm90IGEgdG9rZW4", "base64 that is no token").await;

    // Sealed by Postern, but for another purpose: the callback token.
    let other = env.browser();
    let callback = env.callback_url(&other, &env.url("app.example.com", "/"), Some("bob")).await;
    let callback_token = callback.split_once("token=").expect("token").1.to_string();
    refused(&client, &base, &callback_token, "a callback token used as a session").await;

    // Sealed for a session by a Postern with another cookie_secret.
    let foreign = env.replica(OTHER_SECRET);
    let foreign_base = format!("https://app.example.com:{}", foreign.addr.port());
    refused(&client, &foreign_base, &token, "a session from a Postern with another cookie_secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_cookie_is_refused() {
    let env = Env::start_with(ROUTES, "cookie_expire: 3s", IdpOptions::default()).await;
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    let client = env.client();
    let resp = client
        .get(env.url("app.example.com", "/fresh"))
        .header("x-postern-authorization", &token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "valid before cookie_expire");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The browser drops it by Max-Age; a client that replays it anyway:
    assert_eq!(env.session_of_opt(&browser, "app.example.com"), None, "the browser dropped the cookie");
    refused(&client, &env.url("app.example.com", ""), &token, "a session past cookie_expire").await;
}

/// Signs in as alice up to the IdP's redirect to `/oauth2/callback`, whose
/// URL it returns (with code and state), and the login-CSRF cookie
/// (`name=value`).
async fn oauth_callback(env: &Env, browser: &Browser) -> (String, String) {
    let stop = env.url("authenticate.example.com", "/oauth2/callback?");
    let trace = idp::browse_until(
        &browser.client,
        &env.url("app.example.com", "/start"),
        Some(("alice", "password")),
        &env.idp,
        Some(&stop),
    )
    .await;
    let url = trace.final_location().filter(|l| l.starts_with(&stop)).unwrap_or_else(|| panic!("{}", trace.describe()));
    let jar = browser.cookie_header(&env.url("authenticate.example.com", "/")).expect("authenticate-host cookies");
    let csrf = jar
        .split("; ")
        .find(|pair| pair.starts_with(CSRF_COOKIE_PREFIX))
        .unwrap_or_else(|| panic!("no login-CSRF cookie in {jar:?}"));
    (url.to_string(), csrf.to_string())
}

fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = reqwest::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u.query_pairs().into_owned().filter(|(k, _)| k != name).collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url).expect("url").query_pairs().find(|(k, _)| k == name).expect("param").1.into_owned()
}

/// A refused OAuth callback: 400, no redirect, no session cookie.
async fn refused_callback(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 400, "{what}");
    assert!(location(&resp).is_none(), "{what}: no redirect");
    let cookies = set_cookies(resp.headers());
    assert!(
        !cookies.iter().any(|c| (c.name == AUTHENTICATE_COOKIE || c.name == COOKIE_NAME) && !c.clears()),
        "{what}: no session: {cookies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_callback_refuses_state_mismatch_and_replayed_codes() {
    let env = Env::start(ROUTES).await;
    let browser = env.browser();
    let (callback, csrf) = oauth_callback(&env, &browser).await;
    let state = param(&callback, "state");
    let client = env.client();
    let with_csrf = |url: String, cookie: &str| client.get(url).header("cookie", cookie.to_string()).send();

    // The state altered, or missing, in this browser.
    let resp = browser.client.get(with_param(&callback, "state", Some(&tamper(&state)))).send().await;
    refused_callback(resp.expect("send"), "tampered state").await;
    let resp = browser.client.get(with_param(&callback, "state", None)).send().await;
    refused_callback(resp.expect("send"), "no state").await;
    // Login CSRF: the right URL in a browser without (or with another) CSRF cookie.
    refused_callback(client.get(&callback).send().await.expect("send"), "no login-CSRF cookie").await;
    let (name, _) = csrf.split_once('=').expect("name=value");
    let resp = with_csrf(callback.clone(), &format!("{name}=c29tZW9uZSBlbHNl")).await.expect("send");
    refused_callback(resp, "another browser's CSRF cookie").await;
    // The IdP reporting an error.
    let resp = browser.client.get(with_param(&callback, "error", Some("access_denied"))).send().await;
    refused_callback(resp.expect("send"), "an IdP error").await;

    // None of those spent the code: the genuine callback still signs in.
    let resp = browser.client.get(&callback).send().await.expect("send");
    assert_eq!(resp.status(), 302, "the genuine callback");
    assert!(location(&resp).expect("location").starts_with(&env.url("app.example.com", "/.postern/callback?token=")));
    assert!(set_cookies(resp.headers()).iter().any(|c| c.name == AUTHENTICATE_COOKIE && !c.clears()));

    // Replayed: the code is spent, even with state and CSRF cookie intact.
    let logs = env.postern.logs().len();
    refused_callback(with_csrf(callback.clone(), &csrf).await.expect("send"), "a replayed code").await;
    let log = env.postern.wait_for_log("sign-in step refused", logs, Duration::from_secs(5));
    assert!(log.contains("refused the grant"), "the IdP refused the spent code: {log}");
    // The replayed state in another sign-in attempt is no good either.
    let (second, _) = oauth_callback(&env, &env.browser()).await;
    let resp = with_csrf(with_param(&second, "state", Some(&state)), &csrf).await.expect("send");
    refused_callback(resp, "a fresh code with an old state").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_tokens_work_once_and_only_on_their_host() {
    let env = Env::start(ROUTES).await;
    let browser = env.browser();
    let callback = env.callback_url(&browser, &env.url("app.example.com", "/dest"), Some("alice")).await;
    let token = param(&callback, "token");
    let client = env.client();

    let refused = |resp: reqwest::Response, what: &'static str| async move {
        assert_eq!(resp.status(), 400, "{what}");
        assert!(location(&resp).is_none(), "{what}");
        assert!(set_cookies(resp.headers()).is_empty(), "{what}: no cookie");
    };
    // On another route host, or on the authenticate host.
    for host in ["api.example.com", "other.example.com", "authenticate.example.com"] {
        let url = env.url(host, &format!("/.postern/callback?token={token}"));
        refused(client.get(&url).send().await.expect("send"), "another host").await;
    }
    refused(client.get(with_param(&callback, "token", Some(&tamper(&token)))).send().await.expect("send"), "tampered")
        .await;
    refused(client.get(with_param(&callback, "token", None)).send().await.expect("send"), "no token").await;
    // Not a session either.
    let resp = client
        .get(env.url("app.example.com", "/x"))
        .header(ACCEPT, "application/json")
        .header("x-postern-authorization", &token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401, "a callback token is not a session token");

    // The genuine use, once.
    let resp = browser.client.get(&callback).send().await.expect("send");
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp).as_deref(), Some(env.url("app.example.com", "/dest").as_str()));
    assert_eq!(set_cookies(resp.headers()).len(), 1);
    // Replayed: by someone else, and by the same browser.
    refused(client.get(&callback).send().await.expect("send"), "replayed elsewhere").await;
    refused(browser.client.get(&callback).send().await.expect("send"), "replayed by the same browser").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let env = Env::start(ROUTES).await;
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    let jwks = env.jwks("app.example.com").await;
    let client = env.client();
    let forged: &[(&str, &str)] = &[
        ("x-postern-jwt-assertion", "forged"),
        ("x-pomerium-jwt-assertion", "forged"),
        ("x-pomerium-claim-email", "mallory@example.com"),
        ("x-postern-user", "mallory"),
    ];
    let ours = [
        "x-postern-authorization",
        "x-pomerium-authorization",
        "x-pomerium-claim-email",
        "x-postern-user",
        "x-postern-csrf",
    ];

    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("cookie", vec![("cookie", format!("theme=dark; {COOKIE_NAME}={token}; lang=en"))]),
        (
            "two cookie headers",
            vec![("cookie", format!("theme=dark; {COOKIE_NAME}={token}")), ("cookie", "lang=en".into())],
        ),
        (
            "x-postern-authorization",
            vec![("x-postern-authorization", token.clone()), ("cookie", "theme=dark; lang=en".into())],
        ),
        (
            "x-pomerium-authorization",
            vec![("x-pomerium-authorization", token.clone()), ("cookie", "theme=dark; lang=en".into())],
        ),
        (
            "authorization bearer",
            vec![("authorization", format!("Bearer {token}")), ("cookie", "theme=dark; lang=en".into())],
        ),
        (
            "authorization pomerium",
            vec![("authorization", format!("Pomerium {token}")), ("cookie", "theme=dark; lang=en".into())],
        ),
    ];
    for (what, credentials) in cases {
        let mut req = client.get(env.url("app.example.com", "/headers"));
        for (k, v) in forged.iter().copied().chain(credentials.iter().map(|(k, v)| (*k, v.as_str()))) {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 200, "{what}");
        let seen = env.upstream.last();
        for name in ours {
            assert!(seen.headers.get(name).is_none(), "{what}: {name} reached the upstream: {:?}", seen.headers);
        }
        assert!(seen.headers.get("authorization").is_none(), "{what}: the session token in Authorization is Postern's");
        let cookies: Vec<&str> = seen.headers.get_all("cookie").iter().map(|v| v.to_str().expect("ascii")).collect();
        assert_eq!(cookies.join("; "), "theme=dark; lang=en", "{what}: only the app's own cookies remain");
        // The assertions are Postern's own, for alice.
        let postern = seen.headers["x-postern-jwt-assertion"].to_str().expect("ascii");
        assert_eq!(seen.headers.get_all("x-postern-jwt-assertion").iter().count(), 1, "{what}: one assertion");
        assert_eq!(seen.headers.get_all("x-pomerium-jwt-assertion").iter().count(), 1, "{what}: one assertion");
        assert_eq!(seen.headers["x-pomerium-jwt-assertion"], postern);
        let claims = verify_assertion(&jwks, postern, "app.example.com", "app.example.com");
        assert_eq!(claims["sub"], "alice", "{what}");
    }

    // The app's own Authorization (not a Postern token) is left alone.
    let resp = client
        .get(env.url("app.example.com", "/basic"))
        .header("cookie", format!("{COOKIE_NAME}={token}"))
        .header("authorization", "Basic dXNlcjpwdw==")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(env.upstream.last().headers["authorization"], "Basic dXNlcjpwdw==");

    // A route without pass_identity_headers (signed in), and a public route
    // (no session at all): forged assertions are removed and none is added.
    for (host, cookie) in [("api.example.com", Some(format!("{COOKIE_NAME}={token}"))), ("other.example.com", None)] {
        let mut req = client.get(env.url(host, "/headers"));
        for (k, v) in forged {
            req = req.header(*k, *v);
        }
        if let Some(c) = &cookie {
            req = req.header("cookie", c);
        } else {
            req = req.header("x-postern-authorization", "not-a-token");
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 200, "{host}");
        let seen = env.upstream.last();
        assert_eq!(seen.target, "/headers");
        for name in ["x-postern-jwt-assertion", "x-pomerium-jwt-assertion", "x-postern-authorization", "cookie"] {
            assert!(seen.headers.get(name).is_none(), "{host}: {name} reached the upstream: {:?}", seen.headers);
        }
    }

    // Header names some upstream stacks (CGI, WSGI, Rack, PHP) read as the
    // same variable as X-Postern-Jwt-Assertion.
    let resp = client
        .get(env.url("other.example.com", "/underscores"))
        .header("x_postern_jwt_assertion", "forged")
        .header("x_pomerium_jwt_assertion", "forged")
        .header("x-postern_jwt-assertion", "forged")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen = env.upstream.last();
    let smuggled: Vec<&str> = seen
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| {
            let k = k.replace('_', "-");
            k.starts_with("x-postern-") || k.starts_with("x-pomerium-")
        })
        .collect();
    assert!(smuggled.is_empty(), "identity look-alike headers reached the upstream: {smuggled:?}");
    assert!(!assertion_verifies(&jwks, "forged"));
}

// ---- open redirects ----

/// Whether a browser at `url` is still on a configured host (or the IdP).
fn on_configured_host(env: &Env, url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("unparseable URL {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} in {url:?}", u.scheme()));
    }
    if env.idp.owns(u.as_str()) {
        return Ok(());
    }
    match u.host_str() {
        Some("app.example.com" | "api.example.com" | "authenticate.example.com") => Ok(()),
        other => Err(format!("host {other:?} in {url:?}")),
    }
}

/// Every redirect of a trace, and where it ended, stays on configured hosts.
fn check_trace(env: &Env, payload: &str, trace: &Trace) -> Result<(), String> {
    for hop in &trace.hops {
        if let Some(l) = &hop.location {
            on_configured_host(env, l)
                .map_err(|e| format!("{payload:?}: redirect off-site: {e}\n{}", trace.describe()))?;
        }
    }
    on_configured_host(env, &trace.final_url)
        .map_err(|e| format!("{payload:?}: landed off-site: {e}\n{}", trace.describe()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirect_payloads_never_leave_the_configured_hosts() {
    let env = Env::start(ROUTES).await;
    let payloads = payloads(env.port);
    assert!(payloads.len() >= 100, "{} payloads", payloads.len());
    // Signed in at the authenticate host: each sign-in chain runs without the IdP.
    let signed_in = loopback_browser(env.addr());
    let trace =
        idp::browse(&signed_in.client, &env.url("app.example.com", "/"), Some(("alice", "password")), &env.idp).await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());

    let mut failures = Vec::new();
    let mut accepted = Vec::new();
    for payload in &payloads {
        for param in ["redirect_uri", "pomerium_redirect_uri"] {
            let start = env.url("app.example.com", &format!("/.postern/sign_in?{param}={}", enc(payload)));
            let resp = env.client().get(&start).send().await.expect("send");
            let status = resp.status().as_u16();
            let to = location(&resp);
            let refresh = resp.headers().get("refresh").is_some();
            let body = resp.text().await.unwrap_or_default();
            match (status, to) {
                (400, None) if !refresh && !body.contains("<script>") && !body.contains("evil") => {}
                (302, Some(to)) if to.starts_with(&env.url("authenticate.example.com", "/.postern/sign_in?r=")) => {
                    if param == "redirect_uri" {
                        accepted.push(payload.clone());
                    }
                }
                (status, to) => failures.push(format!("{payload:?} in {param}: {status} {to:?} {body}")),
            }
        }
        // The whole chain, as a signed-in browser follows it.
        let start = env.url("app.example.com", &format!("/.postern/sign_in?redirect_uri={}", enc(payload)));
        let trace = idp::browse(&signed_in.client, &start, None, &env.idp).await;
        if let Err(e) = check_trace(&env, payload, &trace) {
            failures.push(e);
        }
    }

    // A sample through a full sign-in at the IdP, in a fresh browser each.
    let step = payloads.len() / 20;
    let sample: Vec<&String> = payloads.iter().step_by(step).chain(accepted.iter().take(5)).collect();
    assert!(sample.len() >= 20);
    for payload in sample {
        let browser = loopback_browser(env.addr());
        let start = env.url("app.example.com", &format!("/.postern/sign_in?redirect_uri={}", enc(payload)));
        let trace = idp::browse(&browser.client, &start, Some(("alice", "password")), &env.idp).await;
        if let Err(e) = check_trace(&env, payload, &trace) {
            failures.push(e);
        }
        if accepted.contains(payload) && !trace.visited(&env.idp.url("/interaction/")) {
            failures.push(format!("{payload:?}: accepted but never reached the IdP login\n{}", trace.describe()));
        }
    }
    assert!(failures.is_empty(), "{} open-redirect failures:\n{}", failures.len(), failures.join("\n"));

    // Controls: legitimate return URLs are accepted and land where asked.
    for (payload, landing) in [
        ("/dashboard?tab=1".to_string(), env.url("app.example.com", "/dashboard?tab=1")),
        (env.url("api.example.com", "/v1/x"), env.url("api.example.com", "/v1/x")),
        (env.url("APP.example.com", "/Case"), env.url("app.example.com", "/Case")),
    ] {
        let start = env.url("app.example.com", &format!("/.postern/sign_in?redirect_uri={}", enc(&payload)));
        let trace = idp::browse(&signed_in.client, &start, None, &env.idp).await;
        assert_eq!(trace.final_url, landing, "{}", trace.describe());
        assert_eq!(trace.final_status, 200, "{}", trace.describe());
    }
    eprintln!(
        "{} payloads: {} accepted (all landing on route hosts), the rest refused",
        payloads.len(),
        accepted.len()
    );
}
