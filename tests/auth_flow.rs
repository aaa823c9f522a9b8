//! Sign-in end to end against a real OpenID provider (oidc-provider), with
//! a real HTTP client keeping cookies like a browser.

mod support;

use std::net::{SocketAddr, TcpListener};

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use support::Postern;
use support::idp::{self, Idp, IdpClient};
use support::upstream::Upstream;

const COOKIE_SECRET: &str = "V2JBZk0zWGtsL29UcFUvWjVDWWQ2UHExNXJ0b2VhcDI=";

/// Postern + IdP + an echo upstream, wired for `app.`, `api.` and the
/// authenticate host under `example.com`, all on one loopback port.
struct Env {
    idp: Idp,
    postern: Postern,
    upstream: Upstream,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Env {
    async fn start(routes: &str) -> Env {
        Self::start_with(routes, "", 300).await
    }

    async fn start_with(routes: &str, extra_settings: &str, id_token_ttl: u64) -> Env {
        let port = free_port();
        let auth_url = format!("https://authenticate.example.com:{port}");
        let idp = Idp::start_with_ttl(
            &[IdpClient::new(
                "postern",
                "postern-secret",
                &format!("{auth_url}/oauth2/callback"),
                &format!("{auth_url}/.postern/signed_out"),
            )],
            id_token_ttl,
        );
        let upstream = Upstream::start("echo").await;
        let routes = routes.replace("UPSTREAM", &upstream.url());
        let config = format!(
            "address: 127.0.0.1:{port}\nauthenticate_service_url: {auth_url}\nidp_provider: oidc\n\
             idp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: postern-secret\n\
             cookie_secret: {COOKIE_SECRET}\n{extra_settings}\nroutes:\n{routes}",
            idp.issuer
        );
        let postern = Postern::start(&config);
        Env { idp, postern, upstream, port }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        self.postern.addr
    }

    /// A browser: keeps cookies, asks for HTML, follows nothing by itself.
    fn browser(&self) -> reqwest::Client {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        let mut builder = reqwest::Client::builder()
            .cookie_store(true)
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true);
        for host in ["app.example.com", "api.example.com", "authenticate.example.com", "other.example.com"] {
            builder = builder.resolve(host, self.addr());
        }
        builder.build().expect("browser")
    }
}

const TWO_HOSTS: &str = "  - from: https://app.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n    pass_identity_headers: true\n  - from: https://api.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sign_in_then_a_second_host_without_the_idp() {
    let env = Env::start(TWO_HOSTS).await;
    let browser = env.browser();
    let trace =
        idp::browse(&browser, &env.url("app.example.com", "/hello?x=1"), Some(("alice", "password")), &env.idp).await;
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
    let trace = idp::browse(&browser, &env.url("api.example.com", "/v1"), None, &env.idp).await;
    assert_eq!(trace.final_status, 200, "{}", trace.describe());
    assert!(!trace.visited(&env.idp.url("/interaction/")), "no second login: {}", trace.describe());
    assert!(trace.visited(&env.url("authenticate.example.com", "/.postern/sign_in")), "{}", trace.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigation_redirects_and_api_calls_get_401_json() {
    let env = Env::start(TWO_HOSTS).await;
    let plain = env.browser();
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
}
