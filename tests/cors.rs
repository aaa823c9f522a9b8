//! CORS over HTTP: the headers Postern sends on preflights, actual
//! responses and its own errors, for each `cors:` combination; Pomerium's
//! `cors_allow_preflight`, the `cors_preflight` policy criterion, and the
//! cross-origin guide's hand-set headers (`set_response_headers`).
//!
//! The upstream here sends CORS headers of its own, so the tests can tell
//! Postern's answers from the upstream's.

mod support;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::Method;
use reqwest::cookie::{CookieStore, Jar};
use support::Postern;
use support::idp::{self, Idp, IdpClient};

const COOKIE_SECRET: &str = "V2JBZk0zWGtsL29UcFUvWjVDWWQ2UHExNXJ0b2VhcDI=";
const APP: &str = "https://app.example.com";

/// Every host the tests use; `UPSTREAM` is replaced by the upstream's URL.
const ROUTES: &str = r#"
  # A route that needs sign-in, with Postern's CORS policy (credentials on).
  - from: https://strict.example.com
    to: UPSTREAM
    allow_any_authenticated_user: true
    cors:
      allow_origins: [https://app.example.com]
      allow_methods: [GET, POST, PUT]
      allow_headers: [X-Pomerium-Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      allow_credentials: true
      max_age: 10m
  # The same policy on a public route (actual responses without a session).
  - from: https://open.example.com
    to: UPSTREAM
    allow_public_unauthenticated_access: true
    cors:
      allow_origins: [https://app.example.com]
      allow_methods: [GET, POST, PUT]
      allow_headers: [X-Pomerium-Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      allow_credentials: true
      max_age: 10m
  # One-label wildcard, no credentials, default methods.
  - from: https://wild.example.com
    to: UPSTREAM
    allow_public_unauthenticated_access: true
    cors:
      allow_origins: ['https://*.example.com']
  # Any origin, any requested header, no credentials.
  - from: https://any.example.com
    to: UPSTREAM
    allow_public_unauthenticated_access: true
    cors:
      allow_origins: ['*']
      allow_headers: ['*']
  # Only bob may pass: alice gets Postern's 403.
  - from: https://denied.example.com
    to: UPSTREAM
    allowed_users: [bob@example.org]
    cors:
      allow_origins: [https://app.example.com]
      allow_credentials: true
  # The cross-origin guide's API route.
  - from: https://guide.example.com
    to: UPSTREAM
    allow_any_authenticated_user: true
    cors_allow_preflight: true
    set_response_headers:
      'Access-Control-Allow-Credentials': 'true'
      'Access-Control-Allow-Origin': 'https://app.example.com'
      'Access-Control-Allow-Headers': 'X-Pomerium-Authorization'
  # Preflights are the only thing this policy allows.
  - from: https://preflight.example.com
    to: UPSTREAM
    policy:
      allow:
        or:
          - cors_preflight: true
  # No CORS settings at all.
  - from: https://plain.example.com
    to: UPSTREAM
    allow_any_authenticated_user: true
"#;

// ---------------------------------------------------------------------------
// an upstream with CORS headers of its own

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    headers: HeaderMap,
}

/// Answers `OPTIONS` with 204 and everything else with 200 JSON; both carry
/// CORS headers that Postern's `cors:` policy must replace.
struct CorsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CorsUpstream {
    async fn start() -> CorsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_task = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let seen = seen_task.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CorsUpstream { addr, seen, task }
    }

    /// What reached the upstream for `host` (the route's `from` host).
    fn seen_for(&self, host: &str) -> Vec<Seen> {
        let forwarded = |s: &Seen| s.headers.get("x-forwarded-host").and_then(|h| h.to_str().ok()).map(str::to_string);
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|s| forwarded(s).is_some_and(|h| h.split(':').next() == Some(host)))
            .cloned()
            .collect()
    }
}

impl Drop for CorsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    seen.lock().expect("seen").push(Seen { method: parts.method.to_string(), headers: parts.headers.clone() });
    let mut resp = if parts.method == Method::OPTIONS {
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert("access-control-allow-origin", "https://upstream-says.example".parse().expect("value"));
        h.insert("access-control-allow-methods", "PATCH".parse().expect("value"));
        h.insert("x-upstream-preflight", "yes".parse().expect("value"));
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")).boxed());
        let h = r.headers_mut();
        h.insert("content-type", "application/json".parse().expect("value"));
        h.insert("access-control-allow-origin", "*".parse().expect("value"));
        h.insert("access-control-expose-headers", "X-Upstream-Only".parse().expect("value"));
        h.insert("access-control-max-age", "1".parse().expect("value"));
        r
    };
    resp.headers_mut().insert("x-request-id", "42".parse().expect("value"));
    Ok(resp)
}

// ---------------------------------------------------------------------------
// environment

struct Env {
    postern: Postern,
    upstream: CorsUpstream,
    idp: Option<Idp>,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Env {
    /// Postern and the upstream; no IdP (nobody can sign in).
    async fn start() -> Env {
        Self::start_inner(false).await
    }

    /// Postern, the upstream and the test IdP.
    async fn with_idp() -> Env {
        Self::start_inner(true).await
    }

    async fn start_inner(with_idp: bool) -> Env {
        let upstream = CorsUpstream::start().await;
        let port = free_port();
        let auth_url = format!("https://authenticate.example.com:{port}");
        let idp = with_idp.then(|| {
            Idp::start(&[IdpClient::new(
                "postern",
                "postern-secret",
                &format!("{auth_url}/oauth2/callback"),
                &format!("{auth_url}/.postern/signed_out"),
            )])
        });
        let mut config = format!("address: 127.0.0.1:{port}\ncookie_secret: {COOKIE_SECRET}\n");
        if let Some(idp) = &idp {
            config.push_str(&format!(
                "authenticate_service_url: {auth_url}\nidp_provider: oidc\nidp_provider_url: {}\n\
                 idp_client_id: postern\nidp_client_secret: postern-secret\n",
                idp.issuer
            ));
        }
        config.push_str("routes:\n");
        config.push_str(&ROUTES.replace("UPSTREAM", &format!("http://{}", upstream.addr)));
        let postern = Postern::start(&config);
        Env { postern, upstream, idp, port }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn client(&self) -> reqwest::Client {
        self.postern.client()
    }

    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method` (and
    /// `Access-Control-Request-Headers` when given): a CORS preflight.
    async fn preflight(&self, host: &str, origin: &str, method: &str, headers: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client()
            .request(Method::OPTIONS, self.url(host, "/resource"))
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            req = req.header("access-control-request-headers", h);
        }
        req.send().await.expect("preflight")
    }

    /// A `fetch()`-like request: JSON wanted, `Sec-Fetch-Mode: cors`, `Origin` if given.
    async fn fetch(&self, method: Method, host: &str, origin: Option<&str>, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client()
            .request(method, self.url(host, "/resource"))
            .header("accept", "application/json")
            .header("sec-fetch-mode", "cors");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(t) = token {
            req = req.header("x-pomerium-authorization", t);
        }
        req.send().await.expect("request")
    }

    /// Signs alice in on `host` through the IdP's login form; returns her
    /// session token (the `_postern` cookie's value).
    async fn sign_in(&self, host: &str) -> String {
        let idp = self.idp.as_ref().expect("started with the IdP");
        let jar = Arc::new(Jar::default());
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("accept", "text/html".parse().expect("value"));
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true);
        for h in [host, "authenticate.example.com"] {
            builder = builder.resolve(h, self.postern.addr);
        }
        let browser = builder.build().expect("browser");
        let trace = idp::browse(&browser, &self.url(host, "/"), Some(("alice", "password")), idp).await;
        assert_eq!(trace.final_status, 200, "sign-in on {host}:\n{}", trace.describe());
        let url = reqwest::Url::parse(&self.url(host, "/")).expect("url");
        let cookies = jar.cookies(&url).expect("cookies for the route host");
        let cookies = cookies.to_str().expect("ascii cookies");
        cookies
            .split(';')
            .filter_map(|c| c.trim().strip_prefix("_postern="))
            .next()
            .unwrap_or_else(|| panic!("no _postern cookie in {cookies:?}"))
            .to_string()
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    let values: Vec<&str> = resp.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// `Vary` lists `Origin` (in any of its values).
fn varies_on_origin(resp: &reqwest::Response) -> bool {
    header(resp, "vary").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("origin")))
}

/// No `Access-Control-*` header at all.
fn no_cors_headers(resp: &reqwest::Response) -> bool {
    !resp.headers().keys().any(|k| k.as_str().starts_with("access-control-"))
}

// ---------------------------------------------------------------------------
// preflights answered by the `cors:` policy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_preflight_is_answered_by_postern_without_a_session() {
    let env = Env::start().await;
    let resp = env.preflight("strict.example.com", APP, "PUT", Some("x-pomerium-authorization, content-type")).await;
    assert_eq!(resp.status(), 204, "no session needed: Postern answers the preflight itself");
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP), "the origin echoed, never *");
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-allow-methods").as_deref(), Some("GET, POST, PUT"));
    assert_eq!(
        header(&resp, "access-control-allow-headers").as_deref(),
        Some("X-Pomerium-Authorization, Content-Type")
    );
    assert_eq!(header(&resp, "access-control-max-age").as_deref(), Some("600"), "max_age: 10m");
    assert_eq!(header(&resp, "access-control-expose-headers"), None, "expose_headers is for actual responses");
    assert!(varies_on_origin(&resp), "{:?}", resp.headers());
    assert_eq!(header(&resp, "x-upstream-preflight"), None, "the upstream never saw it");
    assert!(env.upstream.seen_for("strict.example.com").is_empty(), "the preflight was not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_a_disallowed_origin_or_for_a_disallowed_method_gets_no_allow_headers() {
    let env = Env::start().await;
    for (origin, method) in [
        ("https://evil.example.net", "POST"),
        ("https://app.example.com.evil.net", "POST"),
        ("https://evilapp.example.com", "POST"),
        ("http://app.example.com", "POST"),
        ("https://app.example.com:8443", "POST"),
        ("null", "POST"),
        (APP, "DELETE"),
    ] {
        let resp = env.preflight("strict.example.com", origin, method, None).await;
        assert_eq!(resp.status(), 204, "{origin} {method}");
        assert!(no_cors_headers(&resp), "{origin} {method}: {:?}", resp.headers());
        assert!(varies_on_origin(&resp), "{origin} {method}: {:?}", resp.headers());
    }
    assert!(env.upstream.seen_for("strict.example.com").is_empty(), "no preflight was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_allows_exactly_one_label_of_the_same_scheme_and_port() {
    let env = Env::start().await;
    let allowed = "https://x.example.com";
    let resp = env.preflight("wild.example.com", allowed, "POST", None).await;
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(allowed));
    assert_eq!(header(&resp, "access-control-allow-methods").as_deref(), Some("GET, HEAD, POST"), "default methods");
    assert_eq!(header(&resp, "access-control-allow-credentials"), None, "credentials off");
    let resp = env.fetch(Method::GET, "wild.example.com", Some(allowed), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(allowed), "echoed, not the upstream's *");
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);

    for refused in [
        "https://a.b.example.com",
        "https://example.com",
        "http://x.example.com",
        "https://x.example.com:8443",
        "https://x.example.com.evil.net",
        "https://xexample.com",
    ] {
        let resp = env.preflight("wild.example.com", refused, "POST", None).await;
        assert!(no_cors_headers(&resp), "preflight from {refused}: {:?}", resp.headers());
        let resp = env.fetch(Method::GET, "wild.example.com", Some(refused), None).await;
        assert_eq!(resp.status(), 200, "the request itself is served");
        assert!(no_cors_headers(&resp), "actual response for {refused}: {:?}", resp.headers());
        assert!(varies_on_origin(&resp));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_without_credentials_answers_star_and_echoes_requested_headers() {
    let env = Env::start().await;
    let resp = env.preflight("any.example.com", "https://anyone.test", "POST", Some("x-custom, content-type")).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    assert_eq!(header(&resp, "access-control-allow-headers").as_deref(), Some("x-custom, content-type"));
    assert!(varies_on_origin(&resp));
    let resp = env.fetch(Method::POST, "any.example.com", Some("https://anyone.test"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    assert!(varies_on_origin(&resp));
}

#[test]
fn star_with_credentials_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = "routes:\n  - from: https://api.example.com\n    to: http://127.0.0.1:1\n    \
                  allow_public_unauthenticated_access: true\n    cors:\n      allow_origins: ['*']\n      \
                  allow_credentials: true\n";
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("write config");
    let (code, stdout, stderr) =
        support::run_cli(&["check", "--config", path.to_str().expect("utf-8 path")], dir.path());
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("cors.allow_origins[0]") && stderr.contains("allow_credentials"), "{stderr}");
}

// ---------------------------------------------------------------------------
// actual responses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_responses_carry_the_policy_and_never_the_upstreams_cors_headers() {
    let env = Env::start().await;
    let resp = env.fetch(Method::POST, "open.example.com", Some(APP), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP), "not the upstream's *");
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-expose-headers").as_deref(), Some("X-Request-Id"), "not X-Upstream-Only");
    assert_eq!(header(&resp, "access-control-max-age"), None, "the upstream's max-age is dropped too");
    assert_eq!(header(&resp, "access-control-allow-methods"), None);
    assert!(varies_on_origin(&resp));
    assert_eq!(header(&resp, "x-request-id").as_deref(), Some("42"), "other upstream headers stay");

    let resp = env.fetch(Method::POST, "open.example.com", Some("https://evil.example.net"), None).await;
    assert_eq!(resp.status(), 200);
    assert!(no_cors_headers(&resp), "a disallowed origin gets none, not even the upstream's *: {:?}", resp.headers());
    assert!(varies_on_origin(&resp));

    let resp = env.fetch(Method::GET, "open.example.com", None, None).await;
    assert!(no_cors_headers(&resp), "no Origin, no CORS: {:?}", resp.headers());
    assert!(varies_on_origin(&resp), "Vary: Origin even without an Origin (caches)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postern_401_carries_cors_headers_for_an_allowed_origin_only() {
    let env = Env::start().await;
    let resp = env.fetch(Method::POST, "strict.example.com", Some(APP), None).await;
    assert_eq!(resp.status(), 401, "a fetch() gets 401, never a redirect");
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP));
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-expose-headers").as_deref(), Some("X-Request-Id"));
    assert!(varies_on_origin(&resp));
    let body: serde_json::Value = resp.json().await.expect("json body the SPA can read");
    assert_eq!(body["error"], "unauthenticated");

    let resp = env.fetch(Method::POST, "strict.example.com", Some("https://evil.example.net"), None).await;
    assert_eq!(resp.status(), 401);
    assert!(no_cors_headers(&resp), "{:?}", resp.headers());
    assert!(varies_on_origin(&resp));
    assert!(env.upstream.seen_for("strict.example.com").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_session_responses_403s_and_the_guides_headers() {
    let env = Env::with_idp().await;
    let token = env.sign_in("strict.example.com").await;

    // An actual response for a signed-in caller, token in the guide's header.
    let resp = env.fetch(Method::PUT, "strict.example.com", Some(APP), Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP));
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-expose-headers").as_deref(), Some("X-Request-Id"));
    assert!(varies_on_origin(&resp));
    let seen = env.upstream.seen_for("strict.example.com");
    let last = seen.last().expect("forwarded");
    assert_eq!(last.method, "PUT");
    assert!(last.headers.get("x-pomerium-authorization").is_none(), "the token never reaches the upstream");

    // Postern's 403, for an allowed and a disallowed origin.
    let resp = env.fetch(Method::GET, "denied.example.com", Some(APP), Some(&token)).await;
    assert_eq!(resp.status(), 403, "alice is not bob");
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP));
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert!(varies_on_origin(&resp));
    let resp = env.fetch(Method::GET, "denied.example.com", Some("https://evil.example.net"), Some(&token)).await;
    assert_eq!(resp.status(), 403);
    assert!(no_cors_headers(&resp), "{:?}", resp.headers());
    assert!(env.upstream.seen_for("denied.example.com").is_empty());

    // The guide's hand-set headers on the upstream's answer.
    let resp = env.fetch(Method::POST, "guide.example.com", Some(APP), Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP), "set_response_headers wins over *");
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-allow-headers").as_deref(), Some("X-Pomerium-Authorization"));

    // `cors_preflight` allows preflights only: a signed-in GET is denied.
    let resp = env.fetch(Method::GET, "preflight.example.com", Some(APP), Some(&token)).await;
    assert_eq!(resp.status(), 403, "signed in, but the policy only allows preflights");
    assert!(env.upstream.seen_for("preflight.example.com").is_empty());
}

// ---------------------------------------------------------------------------
// Pomerium's way: preflights to the upstream, hand-set headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allow_preflight_lets_only_real_preflights_reach_the_upstream() {
    let env = Env::start().await;
    let resp = env.preflight("guide.example.com", APP, "POST", Some("x-pomerium-authorization")).await;
    assert_eq!(resp.status(), 204, "the upstream's answer");
    assert_eq!(header(&resp, "x-upstream-preflight").as_deref(), Some("yes"), "the upstream answered it");
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(APP),
        "the guide's header replaces the upstream's"
    );
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-allow-headers").as_deref(), Some("X-Pomerium-Authorization"));
    assert_eq!(
        header(&resp, "access-control-allow-methods").as_deref(),
        Some("PATCH"),
        "without `cors:` the upstream's stay"
    );
    let seen = env.upstream.seen_for("guide.example.com");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "OPTIONS");
    assert!(seen[0].headers.get("x-postern-jwt-assertion").is_none(), "no identity: nobody signed in");

    // Anything short of a preflight still needs a session.
    let client = env.client();
    let url = env.url("guide.example.com", "/resource");
    let plain = client.request(Method::OPTIONS, &url).send().await.expect("plain OPTIONS");
    assert_eq!(plain.status(), 401, "plain OPTIONS");
    let origin_only = client.request(Method::OPTIONS, &url).header("origin", APP).send().await.expect("OPTIONS");
    assert_eq!(origin_only.status(), 401, "OPTIONS with only Origin");
    let method_only = client
        .request(Method::OPTIONS, &url)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(method_only.status(), 401, "OPTIONS with only Access-Control-Request-Method");
    let get = env.fetch(Method::GET, "guide.example.com", Some(APP), None).await;
    assert_eq!(get.status(), 401);
    assert_eq!(env.upstream.seen_for("guide.example.com").len(), 1, "only the preflight got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_hand_set_headers_are_on_postern_401_too() {
    let env = Env::start().await;
    let resp = env.fetch(Method::POST, "guide.example.com", Some(APP), None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP));
    assert_eq!(header(&resp, "access-control-allow-credentials").as_deref(), Some("true"));
    assert_eq!(header(&resp, "access-control-allow-headers").as_deref(), Some("X-Pomerium-Authorization"));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "unauthenticated", "so the SPA can read why");
    // They are set whatever the Origin: that is what hand-set headers do.
    let resp = env.fetch(Method::POST, "guide.example.com", Some("https://evil.example.net"), None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some(APP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cors_preflight_criterion_allows_preflights_and_nothing_else() {
    let env = Env::start().await;
    let resp = env.preflight("preflight.example.com", APP, "PUT", None).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(header(&resp, "x-upstream-preflight").as_deref(), Some("yes"), "reached the upstream without a session");
    let client = env.client();
    let url = env.url("preflight.example.com", "/resource");
    let resp = client.request(Method::OPTIONS, &url).header("origin", APP).send().await.expect("OPTIONS");
    assert_eq!(resp.status(), 401, "OPTIONS with only Origin is no preflight");
    let resp = env.fetch(Method::GET, "preflight.example.com", Some(APP), None).await;
    assert_eq!(resp.status(), 401);
    let seen = env.upstream.seen_for("preflight.example.com");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "OPTIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_settings_a_preflight_needs_a_session_and_gets_no_cors_headers() {
    let env = Env::start().await;
    let resp = env.preflight("plain.example.com", APP, "POST", Some("x-pomerium-authorization")).await;
    assert_eq!(resp.status(), 401);
    assert!(no_cors_headers(&resp), "{:?}", resp.headers());
    assert!(env.upstream.seen_for("plain.example.com").is_empty());
}
