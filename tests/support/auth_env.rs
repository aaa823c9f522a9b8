//! Sign-in test environment: the real oidc-provider IdP, Postern and an echo
//! upstream, wired for `app.`, `api.` and `authenticate.example.com`, all on
//! one loopback port; plus a browser-like client with an inspectable cookie
//! jar, and helpers to read `Set-Cookie` and verify identity assertions.
//!
//! Included by the `auth_*` test binaries with
//! `#[path = "support/auth_env.rs"] mod auth_env;` (next to `mod support;`).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};

use crate::support::Postern;
use crate::support::idp::{self, Idp, IdpClient, IdpOptions};
use crate::support::upstream::Upstream;

/// `cookie_secret` of the environment (32 bytes, base64).
pub const COOKIE_SECRET: &str = "V2JBZk0zWGtsL29UcFUvWjVDWWQ2UHExNXJ0b2VhcDI=";
/// Another valid `cookie_secret`, for a Postern that must not accept our sessions.
pub const OTHER_SECRET: &str = "b3RoZXItc2VjcmV0LTMyLWJ5dGVzLWxvbmctLS0tLS0=";
pub const COOKIE_NAME: &str = "_postern";
/// The hosts the browser sends to Postern.
pub const HOSTS: [&str; 4] = ["app.example.com", "api.example.com", "authenticate.example.com", "other.example.com"];

/// Two route hosts, both for any signed-in user; `app` passes identity headers.
pub const TWO_HOSTS: &str = "  - from: https://app.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n    pass_identity_headers: true\n  - from: https://api.example.com\n    to: UPSTREAM\n    allow_any_authenticated_user: true\n";

/// Postern + IdP + an echo upstream.
pub struct Env {
    pub idp: Idp,
    pub postern: Postern,
    pub upstream: Upstream,
    pub port: u16,
    /// The whole config minus its `address:` line, to start replicas.
    config_without_address: String,
    idp_client: IdpClient,
    idp_options: IdpOptions,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Env {
    pub async fn start(routes: &str) -> Env {
        Self::start_with(routes, "", IdpOptions::default()).await
    }

    /// `routes` is the YAML list under `routes:` (`UPSTREAM` is replaced by
    /// the echo upstream's URL); `extra_settings` are top-level YAML lines.
    pub async fn start_with(routes: &str, extra_settings: &str, idp_options: IdpOptions) -> Env {
        let port = free_port();
        let auth_url = format!("https://authenticate.example.com:{port}");
        let idp_client = IdpClient::new(
            "postern",
            "postern-secret",
            &format!("{auth_url}/oauth2/callback"),
            &format!("{auth_url}/.postern/signed_out"),
        );
        let idp = Idp::start_with(std::slice::from_ref(&idp_client), idp_options.clone());
        let upstream = Upstream::start("echo").await;
        let routes = routes.replace("UPSTREAM", &upstream.url());
        let config_without_address = format!(
            "authenticate_service_url: {auth_url}\nidp_provider: oidc\n\
             idp_provider_url: {}\nidp_client_id: postern\nidp_client_secret: postern-secret\n\
             {extra_settings}\nroutes:\n{routes}",
            idp.issuer
        );
        let with_secret = format!("cookie_secret: {COOKIE_SECRET}\n{config_without_address}");
        let postern = Postern::start(&format!("address: 127.0.0.1:{port}\n{with_secret}"));
        Env { idp, postern, upstream, port, config_without_address, idp_client, idp_options }
    }

    /// Restarts the IdP at the same issuer URL: new signing keys, no
    /// sessions or grants (stops it first if it still runs).
    pub fn restart_idp(&mut self) {
        let port = self.idp.port();
        self.idp.stop();
        self.idp = Idp::start_on(std::slice::from_ref(&self.idp_client), self.idp_options.clone(), port);
    }

    /// Another Postern with the same configuration (same IdP, same
    /// authenticate URL) on another port, with `cookie_secret`.
    pub fn replica(&self, cookie_secret: &str) -> Postern {
        Postern::start(&format!(
            "address: 127.0.0.1:{}\ncookie_secret: {cookie_secret}\n{}",
            free_port(),
            self.config_without_address
        ))
    }

    /// `https://host:port/path` on this Postern.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        self.postern.addr
    }

    /// A browser: keeps cookies, asks for HTML, follows nothing by itself.
    pub fn browser(&self) -> Browser {
        Browser::new(self.addr())
    }

    /// A client with no cookies, sending the route hosts to this Postern.
    pub fn client(&self) -> reqwest::Client {
        client_for(self.addr())
    }

    /// A browser signed in as `user` (through the IdP's login form), by
    /// visiting `https://app.example.com/` and landing on the upstream.
    pub async fn sign_in(&self, user: &str) -> Browser {
        let browser = self.browser();
        let trace =
            idp::browse(&browser.client, &self.url("app.example.com", "/"), Some((user, "password")), &self.idp).await;
        assert_eq!(trace.final_status, 200, "sign-in as {user} failed:\n{}", trace.describe());
        assert_eq!(trace.final_url, self.url("app.example.com", "/"), "{}", trace.describe());
        browser
    }

    /// Runs a sign-in from `start` up to (not including) the route host's
    /// `/.postern/callback`, whose URL (with the one-time token) it returns.
    pub async fn callback_url(&self, browser: &Browser, start: &str, user: Option<&str>) -> String {
        let host = reqwest::Url::parse(start).expect("start URL").host_str().expect("host").to_string();
        let stop = self.url(&host, "/.postern/callback?");
        let trace =
            idp::browse_until(&browser.client, start, user.map(|u| (u, "password")), &self.idp, Some(&stop)).await;
        trace
            .final_location()
            .filter(|l| l.starts_with(&stop))
            .unwrap_or_else(|| panic!("no redirect to {stop}:\n{}", trace.describe()))
            .to_string()
    }

    /// The session token of a browser for a route host (the cookie value).
    pub fn session_of(&self, browser: &Browser, host: &str) -> String {
        browser
            .cookie(&self.url(host, "/"), COOKIE_NAME)
            .unwrap_or_else(|| panic!("no {COOKIE_NAME} cookie for {host}; jar has {:?}", browser.cookies(host, self)))
    }

    /// As [`Env::session_of`], `None` when the browser has no session there.
    pub fn session_of_opt(&self, browser: &Browser, host: &str) -> Option<String> {
        browser.cookie(&self.url(host, "/"), COOKIE_NAME)
    }

    /// The JWKS a route host publishes.
    pub async fn jwks(&self, host: &str) -> String {
        let resp = self.client().get(self.url(host, "/.well-known/postern/jwks.json")).send().await.expect("jwks");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("jwks body")
    }
}

/// A browser-like client whose cookie jar the test can read.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        crate::support::init_crypto();
        let jar = Arc::new(Jar::default());
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(30));
        for host in HOSTS {
            builder = builder.resolve(host, addr);
        }
        Browser { client: builder.build().expect("browser"), jar }
    }

    /// The `Cookie` header this browser would send to `url` (what
    /// `document.cookie` shows there, HttpOnly aside).
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        let url = reqwest::Url::parse(url).expect("url");
        self.jar.cookies(&url).map(|v| v.to_str().expect("ascii cookies").to_string())
    }

    /// The value of cookie `name` the browser would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookie_header(url)?
            .split("; ")
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn cookies(&self, host: &str, env: &Env) -> Option<String> {
        self.cookie_header(&env.url(host, "/"))
    }
}

/// A client with no cookie store that sends every route host to `addr`.
pub fn client_for(addr: SocketAddr) -> reqwest::Client {
    crate::support::init_crypto();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30));
    for host in HOSTS {
        builder = builder.resolve(host, addr);
    }
    builder.build().expect("client")
}

/// One `Set-Cookie` header, parsed.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub raw: String,
    pub name: String,
    pub value: String,
    /// Attribute names lowercased, values as sent.
    pub attrs: Vec<(String, Option<String>)>,
}

impl SetCookie {
    pub fn parse(raw: &str) -> SetCookie {
        let mut parts = raw.split(';');
        let (name, value) = parts.next().and_then(|p| p.trim().split_once('=')).expect("name=value");
        let attrs = parts
            .map(|a| {
                let a = a.trim();
                match a.split_once('=') {
                    Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                    None => (a.to_ascii_lowercase(), None),
                }
            })
            .collect();
        SetCookie { raw: raw.to_string(), name: name.to_string(), value: value.to_string(), attrs }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    pub fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(k, _)| k == name)
    }

    /// `Max-Age=0` (or an empty value): the cookie is deleted.
    pub fn clears(&self) -> bool {
        self.attr("max-age") == Some("0")
    }
}

/// Every `Set-Cookie` of a response.
pub fn set_cookies(headers: &reqwest::header::HeaderMap) -> Vec<SetCookie> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| SetCookie::parse(v.to_str().expect("ascii Set-Cookie")))
        .collect()
}

/// The `Location` of a response, if any.
pub fn location(resp: &reqwest::Response) -> Option<String> {
    resp.headers().get(reqwest::header::LOCATION).map(|v| v.to_str().expect("ascii location").to_string())
}

/// Verifies an identity assertion against a JWKS document (ES256, `iss`,
/// `aud`, expiry) and returns its claims.
pub fn verify_assertion(jwks: &str, token: &str, issuer: &str, audience: &str) -> serde_json::Value {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).expect("JWKS parses");
    let header = jsonwebtoken::decode_header(token).unwrap_or_else(|e| panic!("assertion header ({e}): {token}"));
    assert_eq!(header.alg, Algorithm::ES256, "assertion algorithm");
    let kid = header.kid.expect("assertion has a kid");
    let jwk = jwks.find(&kid).unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).expect("decoding key from JWK");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("assertion does not verify ({e}): {token}"))
        .claims
}

/// Whether `token` verifies against `jwks` at all (any issuer/audience).
pub fn assertion_verifies(jwks: &str, token: &str) -> bool {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let Ok(jwks) = serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(jwks) else { return false };
    let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
    let Some(jwk) = header.kid.as_deref().and_then(|k| jwks.find(k)) else { return false };
    let Ok(key) = DecodingKey::from_jwk(jwk) else { return false };
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
}

/// A URL-encoded query value.
pub fn enc(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://x.invalid/").expect("url");
    url.query_pairs_mut().append_pair("v", s);
    url.query().expect("query")["v=".len()..].to_string()
}

/// A browser whose every host name resolves to Postern's IP, so that even a
/// redirect to another name is followed on loopback (and fails there)
/// instead of reaching out to the network.
pub fn loopback_browser(addr: SocketAddr) -> Browser {
    crate::support::init_crypto();
    let jar = Arc::new(Jar::default());
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"));
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .default_headers(headers)
        .dns_resolver(Arc::new(AllTo(addr.ip())))
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("loopback browser");
    Browser { client, jar }
}

struct AllTo(std::net::IpAddr);

impl reqwest::dns::Resolve for AllTo {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        // Port 0: the URL's port is used.
        let addr = SocketAddr::new(self.0, 0);
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}
