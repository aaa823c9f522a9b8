//! Sign-in end to end against a real OpenID provider (oidc-provider), with
//! a real HTTP client keeping cookies like a browser: the flow, session
//! tokens in headers, cookie attributes, identity assertions, sign-out,
//! stateless sessions across replicas, refresh.

#[path = "support/auth_env.rs"]
mod auth_env;
mod support;

use std::time::Duration;

use auth_env::{COOKIE_NAME, COOKIE_SECRET, Env, TWO_HOSTS, location, set_cookies, verify_assertion};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use support::idp::{self, IdpOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sign_in_then_a_second_host_without_the_idp() {
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.browser();
    let trace =
        idp::browse(&browser.client, &env.url("app.example.com", "/hello?x=1"), Some(("alice", "password")), &env.idp)
            .await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());
    assert_eq!(trace.final_url, env.url("app.example.com", "/hello?x=1"), "{}", trace.describe());
    assert!(trace.visited(&env.idp.url("/interaction/")), "went through the IdP login");
    let seen = env.upstream.last();
    assert_eq!(seen.target, "/hello?x=1");
    assert!(seen.headers.get("x-postern-jwt-assertion").is_some(), "identity assertion passed");
    assert!(
        !seen.headers.get("cookie").map(|c| c.to_str().unwrap_or("")).unwrap_or("").contains("_postern"),
        "the session cookie never reaches the upstream"
    );

    // The second host: signed in at the authenticate host already, so no IdP page.
    let trace = idp::browse(&browser.client, &env.url("api.example.com", "/v1"), None, &env.idp).await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());
    assert!(!trace.visited(&env.idp.url("/interaction/")), "no second login: {}", trace.describe());
    assert!(trace.visited(&env.url("authenticate.example.com", "/.postern/sign_in")), "{}", trace.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigation_redirects_and_api_calls_get_401_json() {
    let env = Env::start(TWO_HOSTS).await;
    let plain = env.browser().client;
    let resp = plain.get(env.url("app.example.com", "/page")).send().await.expect("send");
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().expect("location").to_string();
    assert!(location.starts_with(&env.url("authenticate.example.com", "/.postern/sign_in?r=")), "{location}");

    let resp =
        plain.get(env.url("app.example.com", "/data")).header("accept", "application/json").send().await.expect("send");
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "unauthenticated");
    assert!(
        body["sign_in_url"]
            .as_str()
            .expect("sign_in_url")
            .starts_with(&env.url("app.example.com", "/.postern/sign_in?redirect_uri="))
    );

    let resp = plain
        .get(env.url("app.example.com", "/data"))
        .header("accept", "text/html")
        .header("sec-fetch-mode", "cors")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401, "a fetch() never gets a redirect");

    // A browser navigation says so in Sec-Fetch-Mode, whatever it accepts.
    let resp = env
        .client()
        .get(env.url("app.example.com", "/page"))
        .header("accept", "*/*")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 302, "Sec-Fetch-Mode: navigate with Accept: */* is a navigation");
    let to = auth_env::location(&resp).expect("location");
    assert!(to.starts_with(&env.url("authenticate.example.com", "/.postern/sign_in?r=")), "{to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_token_works_in_every_header_form() {
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    let api = env.client();
    let url = env.url("api.example.com", "/v1/me");

    let resp = api.get(&url).header(ACCEPT, "application/json").send().await.expect("send");
    assert_eq!(resp.status(), 401, "no credential, no access");

    let forms = [
        ("x-postern-authorization", token.clone()),
        ("x-pomerium-authorization", token.clone()),
        ("authorization", format!("Bearer {token}")),
        ("authorization", format!("Pomerium {token}")),
        // The token headers also take the Authorization-style prefixes.
        ("x-pomerium-authorization", format!("Pomerium {token}")),
        ("x-postern-authorization", format!("Bearer {token}")),
    ];
    for (name, value) in forms {
        let resp = api.get(&url).header(ACCEPT, "application/json").header(name, &value).send().await.expect("send");
        let what = format!("{name}: {}…", &value[..value.len().min(20)]);
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["x-upstream"], "echo", "{what}: answered by the upstream");
        assert!(set_cookies(resp.headers()).is_empty(), "{what}: a header credential gets no cookie");
    }

    // The same token under a wrong scheme or altered is no credential.
    for (name, value) in [("authorization", format!("Basic {token}")), ("x-postern-authorization", format!("{token}x"))]
    {
        let resp = api.get(&url).header(ACCEPT, "application/json").header(name, &value).send().await.expect("send");
        assert_eq!(resp.status(), 401, "{name} with {}", &value[..10]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readable_cookie_works_as_the_pomerium_header_like_the_guide_says() {
    let env = Env::start_with(TWO_HOSTS, "cookie_http_only: false", IdpOptions::default()).await;
    let browser = env.browser();
    let callback = env.callback_url(&browser, &env.url("app.example.com", "/"), Some("alice")).await;
    let resp = browser.client.get(&callback).send().await.expect("callback");
    assert_eq!(resp.status(), 302);
    let cookies = set_cookies(resp.headers());
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(!cookies[0].has("httponly"), "cookie_http_only: false lets scripts read it: {}", cookies[0].raw);

    // `document.cookie` on the app: exactly the session cookie.
    let document_cookie = browser.cookie_header(&env.url("app.example.com", "/")).expect("document.cookie");
    assert!(document_cookie.starts_with(&format!("{COOKIE_NAME}=")), "{document_cookie}");
    assert!(!document_cookie.contains("; "), "one cookie only: {document_cookie}");
    // The guide's snippet: document.cookie.split('=')… at the first '='.
    let (_, value) = document_cookie.split_once('=').expect("name=value");

    let resp = env
        .client()
        .get(env.url("api.example.com", "/from-script"))
        .header(ACCEPT, "application/json")
        .header("x-pomerium-authorization", value)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(env.upstream.last().target, "/from-script");
}

/// Each `(host, route YAML)` pair: the `Set-Cookie` of that host's
/// `/.postern/callback` after signing in as alice.
async fn callback_cookie(env: &Env, host: &str) -> auth_env::SetCookie {
    let browser = env.browser();
    let callback = env.callback_url(&browser, &env.url(host, "/"), Some("alice")).await;
    let resp = browser.client.get(&callback).send().await.expect("callback");
    assert_eq!(resp.status(), 302, "{host}: callback answered {}", resp.status());
    let cookies = set_cookies(resp.headers());
    assert_eq!(cookies.len(), 1, "{host}: the callback sets exactly one cookie: {cookies:?}");
    let cookie = cookies.into_iter().next().expect("one cookie");
    assert_eq!(cookie.name, COOKIE_NAME);
    assert!(!cookie.value.is_empty());
    // Land, then check the jar: on a route host, Postern's cookie is the only one.
    let landing = location(&resp).expect("location");
    let resp = browser.client.get(&landing).send().await.expect("landing");
    assert_eq!(resp.status(), 200, "{host}: signed in");
    assert!(set_cookies(resp.headers()).is_empty(), "{host}: nothing more set on landing");
    let jar = browser.cookie_header(&env.url(host, "/")).expect("cookies for the route host");
    assert_eq!(jar, format!("{COOKIE_NAME}={}", cookie.value), "{host}: the only cookie on a route host");
    cookie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_attributes_defaults_and_route_overrides() {
    let routes = "  - from: https://app.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n\
                  \x20 - from: https://api.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n\
                  \x20   cookie_http_only: false\n    cookie_domain: api.example.com\n";
    let env = Env::start(routes).await;

    let app = callback_cookie(&env, "app.example.com").await;
    assert_eq!(app.attr("path"), Some("/"), "{}", app.raw);
    assert!(app.has("secure"), "{}", app.raw);
    assert!(app.has("httponly"), "HttpOnly by default: {}", app.raw);
    assert_eq!(app.attr("samesite"), Some("Lax"), "{}", app.raw);
    assert_eq!(app.attr("domain"), None, "host-only by default: {}", app.raw);
    let max_age: i64 = app.attr("max-age").expect("Max-Age").parse().expect("number");
    assert!((14 * 3600 - 60..=14 * 3600).contains(&max_age), "cookie_expire defaults to 14h: {}", app.raw);

    let api = callback_cookie(&env, "api.example.com").await;
    assert!(!api.has("httponly"), "route cookie_http_only: false: {}", api.raw);
    assert_eq!(api.attr("domain"), Some("api.example.com"), "route cookie_domain: {}", api.raw);
    assert!(api.has("secure") && api.attr("path") == Some("/") && api.attr("samesite") == Some("Lax"), "{}", api.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_attributes_from_global_settings_and_overrides() {
    let routes = "  - from: https://app.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n\
                  \x20 - from: https://api.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n\
                  \x20   cookie_http_only: true\n    cookie_domain: api.example.com\n";
    let settings = "cookie_domain: example.com\ncookie_http_only: false\ncookie_same_site: strict\ncookie_expire: 1h";
    let env = Env::start_with(routes, settings, IdpOptions::default()).await;

    let app = callback_cookie(&env, "app.example.com").await;
    assert_eq!(app.attr("domain"), Some("example.com"), "global cookie_domain: {}", app.raw);
    assert!(!app.has("httponly"), "global cookie_http_only: false: {}", app.raw);
    assert_eq!(app.attr("samesite"), Some("Strict"), "cookie_same_site: strict: {}", app.raw);
    assert!(app.has("secure") && app.attr("path") == Some("/"), "{}", app.raw);
    let max_age: i64 = app.attr("max-age").expect("Max-Age").parse().expect("number");
    assert!((3600 - 60..=3600).contains(&max_age), "cookie_expire: 1h: {}", app.raw);

    let api = callback_cookie(&env, "api.example.com").await;
    assert_eq!(api.attr("domain"), Some("api.example.com"), "route cookie_domain wins: {}", api.raw);
    assert!(api.has("httponly"), "route cookie_http_only: true wins: {}", api.raw);
    assert_eq!(api.attr("samesite"), Some("Strict"), "{}", api.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_can_verify_the_identity_assertion_against_the_jwks() {
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.sign_in("alice").await;
    let seen = env.upstream.last();
    let assertion = seen.headers["x-postern-jwt-assertion"].to_str().expect("ascii").to_string();
    assert_eq!(seen.headers["x-pomerium-jwt-assertion"], assertion.as_str(), "the Pomerium name carries the same JWT");

    let jwks = env.jwks("app.example.com").await;
    let claims = verify_assertion(&jwks, &assertion, "app.example.com", "app.example.com");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice Admin");
    assert_eq!(claims["groups"], serde_json::json!(["admins", "staff"]));
    let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
    assert!(exp > iat && exp - iat <= 300, "short-lived: iat {iat} exp {exp}");
    // Every host publishes the same keys.
    assert_eq!(env.jwks("api.example.com").await, jwks);
    assert_eq!(env.jwks("authenticate.example.com").await, jwks);

    // /.postern/jwt: the assertion for the host it is asked on.
    for host in ["app.example.com", "api.example.com"] {
        let resp = browser.client.get(env.url(host, "/.postern/jwt")).send().await.expect("jwt");
        if host == "api.example.com" {
            // Not signed in on api yet: the browser is sent to sign in (SSO, no password).
            assert_eq!(resp.status(), 302);
            let trace = idp::browse(&browser.client, &env.url(host, "/.postern/jwt"), None, &env.idp).await;
            assert_eq!(trace.final_status, 200, "{}", trace.describe());
            let claims = verify_assertion(&jwks, trace.final_body.trim(), host, host);
            assert_eq!(claims["sub"], "alice");
            continue;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/jwt");
        let jwt = resp.text().await.expect("body");
        let claims = verify_assertion(&jwks, jwt.trim(), host, host);
        assert_eq!(claims["email"], "alice@example.com");
    }

    // /.postern/user: JSON for API clients, a page for browsers.
    let resp = browser
        .client
        .get(env.url("app.example.com", "/.postern/user"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("user");
    assert_eq!(resp.status(), 200);
    let user: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(user["user"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["name"], "Alice Admin");
    assert_eq!(user["groups"], serde_json::json!(["admins", "staff"]));
    assert!(user["csrf_token"].as_str().is_some_and(|t| !t.is_empty()), "{user}");
    assert!(user["expires_at"].as_i64().is_some(), "{user}");

    let resp = browser.client.get(env.url("app.example.com", "/.postern/user")).send().await.expect("user page");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()[CONTENT_TYPE].to_str().expect("ct").starts_with("text/html"));
    let html = resp.text().await.expect("html");
    assert!(html.contains("alice@example.com"), "{html}");
    assert!(html.contains("Alice Admin"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_needs_the_csrf_token_then_ends_every_session() {
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.sign_in("alice").await;
    let sign_out = env.url("app.example.com", "/.postern/sign_out");
    let post = |body: String| {
        browser.client.post(&sign_out).header(CONTENT_TYPE, "application/x-www-form-urlencoded").body(body).send()
    };

    for body in ["", "csrf_token=", "csrf_token=forged"] {
        let resp = post(body.to_string()).await.expect("sign-out");
        assert_eq!(resp.status(), 403, "sign-out with {body:?}");
        assert!(set_cookies(resp.headers()).is_empty(), "no cookie change with {body:?}");
    }
    let resp = browser.client.get(env.url("app.example.com", "/still")).send().await.expect("still signed in");
    assert_eq!(resp.status(), 200, "a refused sign-out leaves the session alone");

    let resp = browser
        .client
        .get(env.url("app.example.com", "/.postern/user"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("user");
    let user: serde_json::Value = resp.json().await.expect("json");
    let csrf = user["csrf_token"].as_str().expect("csrf_token").to_string();

    let resp = post(idp::urlencode(&[("csrf_token".into(), csrf)])).await.expect("sign-out");
    assert_eq!(resp.status(), 302);
    let cleared = set_cookies(resp.headers());
    assert!(cleared.iter().any(|c| c.name == COOKIE_NAME && c.clears()), "cookie cleared: {cleared:?}");
    let next = location(&resp).expect("location");
    assert!(next.starts_with(&env.url("authenticate.example.com", "/.postern/sign_out?r=")), "{next}");

    // Through the authenticate host to the IdP's end_session and back.
    let trace = idp::browse(&browser.client, &next, None, &env.idp).await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());
    assert_eq!(trace.final_url, env.url("authenticate.example.com", "/.postern/signed_out"), "{}", trace.describe());
    assert!(trace.final_body.contains("Signed out"), "{}", trace.final_body);
    assert!(trace.hops.iter().any(|h| env.idp.owns(&h.url) && h.url.contains("/session/end")), "{}", trace.describe());
    assert_eq!(browser.cookie(&env.url("app.example.com", "/"), COOKIE_NAME), None, "no session cookie left");
    assert_eq!(
        browser.cookie(&env.url("authenticate.example.com", "/"), &format!("{COOKIE_NAME}_authenticate")),
        None,
        "no authenticate-host session left"
    );

    // The route asks for sign-in again, and the IdP asks for the password again.
    let resp = browser.client.get(env.url("app.example.com", "/again")).send().await.expect("again");
    assert_eq!(resp.status(), 302);
    let trace = idp::browse(&browser.client, &env.url("app.example.com", "/again"), None, &env.idp).await;
    assert!(env.idp.owns(&trace.final_url) && trace.final_url.contains("/interaction/"), "{}", trace.describe());
    assert!(trace.final_body.contains("name=\"password\""), "the IdP shows its login form: {}", trace.final_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_stateless_across_replicas() {
    let env = Env::start(TWO_HOSTS).await;
    let replica = env.replica(COOKIE_SECRET);
    let port2 = replica.addr.port();
    let on_replica = |host: &str, path: &str| format!("https://{host}:{port2}{path}");

    // Signed in through the first process; its token works on the second.
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    let client = env.client();
    for (name, value) in [("x-postern-authorization", token.clone()), ("cookie", format!("{COOKIE_NAME}={token}"))] {
        let resp = client
            .get(on_replica("api.example.com", "/replica"))
            .header(ACCEPT, "application/json")
            .header(name, &value)
            .send()
            .await
            .expect("replica");
        assert_eq!(resp.status(), 200, "the replica accepts the session in {name}");
    }

    // A sign-in that starts on the replica: the authenticate host (the first
    // process) hands the session to the replica's callback.
    let fresh = env.browser();
    let trace =
        idp::browse(&fresh.client, &on_replica("app.example.com", "/r2"), Some(("bob", "password")), &env.idp).await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());
    assert_eq!(trace.final_url, on_replica("app.example.com", "/r2"), "{}", trace.describe());
    let minted_by_replica =
        fresh.cookie(&on_replica("app.example.com", "/"), COOKIE_NAME).expect("cookie set by the replica");
    let resp = client
        .get(env.url("app.example.com", "/back"))
        .header(ACCEPT, "application/json")
        .header("authorization", format!("Bearer {minted_by_replica}"))
        .send()
        .await
        .expect("first");
    assert_eq!(resp.status(), 200, "the first process accepts the replica's session");
    let seen = env.upstream.last();
    assert_eq!(auth_env_sub(&seen), "bob");
}

fn auth_env_sub(seen: &support::upstream::Seen) -> String {
    let jwt = seen.headers["x-postern-jwt-assertion"].to_str().expect("ascii");
    idp::jwt_payload(jwt)["sub"].as_str().expect("sub").to_string()
}

/// Waits until the current ID token (of `ttl` seconds, issued just now)
/// has expired for Postern, which compares whole seconds.
async fn outlive_id_token(ttl: u64) {
    tokio::time::sleep(Duration::from_millis(ttl * 1000 + 1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_is_refreshed_and_revocation_ends_the_session() {
    const TTL: u64 = 2;
    let options = IdpOptions { id_token_ttl_secs: TTL, ..IdpOptions::default() };
    let env = Env::start_with(TWO_HOSTS, "", options).await;
    let browser = env.sign_in("alice").await;
    let first = env.session_of(&browser, "app.example.com");

    outlive_id_token(TTL).await;
    let resp = browser.client.get(env.url("app.example.com", "/after-expiry")).send().await.expect("send");
    assert_eq!(resp.status(), 200, "the session outlives the ID token");
    let cookies = set_cookies(resp.headers());
    let renewed = cookies.iter().find(|c| c.name == COOKIE_NAME).unwrap_or_else(|| panic!("refreshed: {cookies:?}"));
    assert!(!renewed.clears() && renewed.value != first, "a new session cookie: {}", renewed.raw);
    assert!(renewed.has("httponly") && renewed.has("secure"), "same attributes: {}", renewed.raw);
    assert_eq!(env.session_of(&browser, "app.example.com"), renewed.value);

    // The refreshed session works without another refresh until it expires.
    let resp = browser.client.get(env.url("app.example.com", "/fresh")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert!(set_cookies(resp.headers()).is_empty(), "no refresh while the new ID token is valid");

    env.idp.revoke("alice").await;
    outlive_id_token(TTL).await;
    let resp = browser.client.get(env.url("app.example.com", "/after-revoke")).send().await.expect("send");
    assert_eq!(resp.status(), 302, "treated as signed out");
    assert!(location(&resp).expect("location").starts_with(&env.url("authenticate.example.com", "/.postern/sign_in")));
    let cookies = set_cookies(resp.headers());
    assert!(cookies.iter().any(|c| c.name == COOKIE_NAME && c.clears()), "cookie cleared: {cookies:?}");
    let resp = browser
        .client
        .get(env.url("app.example.com", "/api"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_after_id_token_expiry_keep_the_session() {
    // A page load after the ID token expired: the browser sends several
    // requests with the same cookie at once. Each must succeed, and the
    // session must survive (the IdP rotates refresh tokens and revokes the
    // grant when a spent one is presented again).
    const TTL: u64 = 2;
    let options = IdpOptions { id_token_ttl_secs: TTL, ..IdpOptions::default() };
    let env = Env::start_with(TWO_HOSTS, "", options).await;
    let browser = env.sign_in("alice").await;
    let token = env.session_of(&browser, "app.example.com");
    outlive_id_token(TTL).await;

    let client = env.client();
    let requests = (0..4).map(|i| {
        client
            .get(env.url("app.example.com", &format!("/asset/{i}")))
            .header(ACCEPT, "application/json")
            .header("cookie", format!("{COOKIE_NAME}={token}"))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut renewed = Vec::new();
    for (i, resp) in responses.into_iter().enumerate() {
        let resp = resp.expect("send");
        let cookies = set_cookies(resp.headers());
        assert_eq!(resp.status(), 200, "request {i} of the page load: {cookies:?}");
        renewed.extend(cookies.into_iter().filter(|c| c.name == COOKIE_NAME && !c.clears()).map(|c| c.value));
    }
    let last = renewed.last().expect("at least one refreshed cookie").clone();

    // The cookie the browser keeps (the last one set) still refreshes later.
    outlive_id_token(TTL).await;
    let resp = client
        .get(env.url("app.example.com", "/later"))
        .header(ACCEPT, "application/json")
        .header("cookie", format!("{COOKIE_NAME}={last}"))
        .send()
        .await
        .expect("send");
    let cookies = set_cookies(resp.headers());
    assert_eq!(resp.status(), 200, "the session survived the parallel refresh: {cookies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_keeps_sessions_and_a_restarted_idp_is_used_again() {
    const TTL: u64 = 2;
    let options = IdpOptions { id_token_ttl_secs: TTL, ..IdpOptions::default() };
    let mut env = Env::start_with(TWO_HOSTS, "", options).await;
    let browser = env.sign_in("alice").await;

    // The IdP goes down and the ID token expires: the session is kept.
    env.idp.stop();
    outlive_id_token(TTL).await;
    let resp = browser.client.get(env.url("app.example.com", "/during-outage")).send().await.expect("send");
    assert_eq!(resp.status(), 200, "an IdP outage does not sign users out");
    assert!(set_cookies(resp.headers()).is_empty(), "nothing to renew yet");

    // It comes back at the same address, with new signing keys and no
    // memory of the grant: the next request tries the refresh again, and
    // the IdP's refusal ends the session.
    env.restart_idp();
    let resp = browser.client.get(env.url("app.example.com", "/after-outage")).send().await.expect("send");
    let cookies = set_cookies(resp.headers());
    assert_eq!(resp.status(), 302, "the refresh is retried once the IdP is back, and refused: {cookies:?}");
    assert!(cookies.iter().any(|c| c.name == COOKIE_NAME && c.clears()), "cookie cleared: {cookies:?}");

    // Signing in again works: ID tokens signed with the IdP's new keys verify.
    let fresh = env.browser();
    let trace =
        idp::browse(&fresh.client, &env.url("app.example.com", "/again"), Some(("bob", "password")), &env.idp).await;
    assert_eq!(trace.final_status, 200, "sign-in after the IdP rotated its keys:\n{}", trace.describe());
    assert_eq!(trace.final_url, env.url("app.example.com", "/again"));
}

/// Follows redirects from `url` until one leaves for the IdP; returns that URL.
async fn until_idp(env: &Env, browser: &auth_env::Browser, url: &str) -> String {
    let mut current = url.to_string();
    for _ in 0..5 {
        let resp = browser.client.get(&current).send().await.expect("send");
        let next = location(&resp).unwrap_or_else(|| panic!("{current} answered {} without a redirect", resp.status()));
        if env.idp.owns(&next) {
            return next;
        }
        current = next;
    }
    panic!("no redirect to the IdP from {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_signing_in_at_once_both_land() {
    // Two tabs of one browser (say app and api, reopened after a restart)
    // both start a sign-in before the user completes either.
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.browser();
    let first = until_idp(&env, &browser, &env.url("app.example.com", "/one")).await;
    let second = until_idp(&env, &browser, &env.url("api.example.com", "/two")).await;

    let trace = idp::browse(&browser.client, &first, Some(("alice", "password")), &env.idp).await;
    assert_eq!(trace.final_status, 200, "the first tab:\n{}", trace.describe());
    assert_eq!(trace.final_url, env.url("app.example.com", "/one"), "{}", trace.describe());
    let trace = idp::browse(&browser.client, &second, Some(("alice", "password")), &env.idp).await;
    assert_eq!(trace.final_status, 200, "the second tab:\n{}", trace.describe());
    assert_eq!(trace.final_url, env.url("api.example.com", "/two"), "{}", trace.describe());
}

/// Follows a browser's redirects from `url` (through the IdP's login with
/// `credentials`): the final URL and status, and every `Set-Cookie`
/// Postern sent on the way, with the URL that sent it.
async fn walk(
    env: &Env,
    browser: &auth_env::Browser,
    url: &str,
    mut credentials: Option<(&str, &str)>,
) -> (String, u16, Vec<(String, auth_env::SetCookie)>) {
    let oauth_callback = env.url("authenticate.example.com", "/oauth2/callback");
    let mut current = url.to_string();
    let mut cookies = Vec::new();
    for _ in 0..12 {
        if env.idp.owns(&current) {
            let trace =
                idp::browse_until(&browser.client, &current, credentials.take(), &env.idp, Some(&oauth_callback)).await;
            current = trace
                .final_location()
                .filter(|l| l.starts_with(&oauth_callback))
                .unwrap_or_else(|| panic!("the IdP did not send the browser back:\n{}", trace.describe()))
                .to_string();
            continue;
        }
        let resp = browser.client.get(&current).send().await.expect("send");
        cookies.extend(set_cookies(resp.headers()).into_iter().map(|c| (current.clone(), c)));
        let status = resp.status().as_u16();
        match location(&resp) {
            Some(next) => {
                current = reqwest::Url::parse(&current).and_then(|u| u.join(&next)).expect("location").to_string()
            }
            None => return (current, status, cookies),
        }
    }
    panic!("too many redirects from {url}");
}

/// A `__Host-` cookie as browsers keep it: `Secure`, `Path=/`, no `Domain`.
fn assert_host_prefix_rules(from: &str, cookie: &auth_env::SetCookie) {
    assert!(cookie.name.starts_with("__Host-postern"), "{from}: {}", cookie.raw);
    assert!(cookie.has("secure"), "{from}: Secure: {}", cookie.raw);
    assert_eq!(cookie.attr("path"), Some("/"), "{from}: Path=/: {}", cookie.raw);
    assert!(!cookie.has("domain"), "{from}: no Domain: {}", cookie.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_prefixed_cookie_name_signs_in_and_out_with_every_cookie_host_only_secure_at_root() {
    const NAME: &str = "__Host-postern";
    let env = Env::start_with(TWO_HOSTS, &format!("cookie_name: {NAME}"), IdpOptions::default()).await;
    let browser = env.browser();

    // Sign-in on app: the login-CSRF cookie, the authenticate host's
    // session and the route host's session all keep the prefix's rules.
    let (url, status, cookies) =
        walk(&env, &browser, &env.url("app.example.com", "/hello"), Some(("alice", "password"))).await;
    assert_eq!((url.as_str(), status), (env.url("app.example.com", "/hello").as_str(), 200), "{cookies:#?}");
    for (from, cookie) in &cookies {
        assert_host_prefix_rules(from, cookie);
    }
    let set = |name: &str| cookies.iter().filter(|(_, c)| c.name == name && !c.clears()).count();
    assert_eq!(set(NAME), 1, "the route host's session: {cookies:#?}");
    assert_eq!(set(&format!("{NAME}_authenticate")), 1, "the authenticate host's session: {cookies:#?}");
    let csrf: Vec<_> = cookies.iter().filter(|(_, c)| c.name.starts_with(&format!("{NAME}_csrf_"))).collect();
    assert!(csrf.len() == 2 && csrf.iter().any(|(_, c)| c.clears()), "login-CSRF set, then cleared: {csrf:#?}");
    let (from, session) = cookies.iter().find(|(_, c)| c.name == NAME).expect("session cookie");
    assert!(from.starts_with(&env.url("app.example.com", "/.postern/callback")), "{from}");
    assert!(session.has("httponly") && session.attr("samesite") == Some("Lax"), "{}", session.raw);
    assert_eq!(browser.cookie(&env.url("app.example.com", "/"), NAME).as_deref(), Some(session.value.as_str()));
    let seen = env.upstream.last();
    assert_eq!(seen.target, "/hello");
    let upstream_cookies = seen.headers.get("cookie").map(|c| c.to_str().unwrap_or("").to_string()).unwrap_or_default();
    assert!(!upstream_cookies.contains(NAME), "the session cookie never reaches the upstream: {upstream_cookies}");

    // A second host: the authenticate host reads its __Host- session back
    // (no IdP page), and api gets its own host-only cookie.
    let (url, status, cookies) = walk(&env, &browser, &env.url("api.example.com", "/v1"), None).await;
    assert_eq!((url.as_str(), status), (env.url("api.example.com", "/v1").as_str(), 200), "{cookies:#?}");
    for (from, cookie) in &cookies {
        assert_host_prefix_rules(from, cookie);
    }
    assert!(cookies.iter().any(|(from, c)| c.name == NAME && from.contains("api.example.com")), "{cookies:#?}");
    let resp = env
        .client()
        .get(env.url("api.example.com", "/v1/token"))
        .header(ACCEPT, "application/json")
        .header("cookie", format!("{NAME}={}", browser.cookie(&env.url("api.example.com", "/"), NAME).expect("api")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "the session is read from the __Host- cookie");

    // Sign-out clears both sessions under the same rules.
    let resp = browser
        .client
        .get(env.url("app.example.com", "/.postern/user"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .expect("user");
    let user: serde_json::Value = resp.json().await.expect("json");
    let csrf_token = user["csrf_token"].as_str().expect("csrf_token").to_string();
    let resp = browser
        .client
        .post(env.url("app.example.com", "/.postern/sign_out"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(idp::urlencode(&[("csrf_token".into(), csrf_token)]))
        .send()
        .await
        .expect("sign-out");
    assert_eq!(resp.status(), 302);
    let cleared = set_cookies(resp.headers());
    assert!(cleared.iter().any(|c| c.name == NAME && c.clears()), "{cleared:?}");
    let next = location(&resp).expect("location");
    let resp = browser.client.get(&next).send().await.expect("authenticate sign-out");
    let cleared_there = set_cookies(resp.headers());
    assert!(cleared_there.iter().any(|c| c.name == format!("{NAME}_authenticate") && c.clears()), "{cleared_there:?}");
    for cookie in cleared.iter().chain(&cleared_there) {
        assert_host_prefix_rules("sign-out", cookie);
    }
    assert_eq!(browser.cookie(&env.url("app.example.com", "/"), NAME), None, "no session cookie left");
}
