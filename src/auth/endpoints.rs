//! Postern's own endpoints: `/.postern/*` on every route host, and the
//! authenticate host (`/.postern/sign_in`, `/oauth2/callback`, sign-out).
//! Each returns a [`Reply`] or an [`AuthError`]; the proxy renders both.

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::session::{self, CookieAttrs};
use super::{
    AUTHENTICATE_COOKIE_SUFFIX, Auth, AuthError, CALLBACK_TTL, CSRF_COOKIE_SUFFIX, CallbackToken, OAuthState, Purpose,
    SIGN_IN_TTL, Session, SignInRequest, SignOutRequest, now, redirect,
};

/// What an endpoint answers.
#[derive(Debug)]
pub(crate) enum Reply {
    Redirect { location: String, cookies: Vec<HeaderValue> },
    Page { status: StatusCode, html: String, cookies: Vec<HeaderValue> },
    Json { status: StatusCode, body: serde_json::Value },
    Text { content_type: &'static str, body: String },
}

/// Paths under this prefix belong to Postern on every route host.
pub(crate) const PREFIX: &str = "/.postern/";
pub(crate) const JWKS_PATH: &str = "/.well-known/postern/jwks.json";

/// Whether `path` is one of Postern's own endpoints on a route host.
pub(crate) fn is_own_path(path: &str) -> bool {
    path.starts_with(PREFIX) || path == JWKS_PATH
}

/// One request to an endpoint.
pub(crate) struct EndpointRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// `scheme://authority` the client used (for relative return URLs).
    pub origin: String,
    /// Lowercase host, no port.
    pub host: &'a str,
    /// Form fields of a POST body (`application/x-www-form-urlencoded`).
    pub form: Vec<(String, String)>,
    pub navigation: bool,
    /// Whether a host is served by some route: return URLs must be.
    pub known_host: &'a (dyn Fn(&str) -> bool + Sync),
}

/// What a route host's endpoints need of the route that owns the host.
pub(crate) struct RouteHost<'a> {
    /// The session cookie on this host, as the route compiled it.
    pub cookie: &'a CookieAttrs,
    /// For the identity assertion cache and logs.
    pub route_name: &'a str,
    /// The route's `from` host: the audience of identity assertions.
    pub audience: &'a str,
}

impl EndpointRequest<'_> {
    fn param(&self, name: &str) -> Option<String> {
        query_pairs(self.query.as_deref().unwrap_or("")).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// `/.postern/*` and the JWKS on a route host.
pub(crate) async fn route_host(
    auth: &Auth,
    route: RouteHost<'_>,
    req: EndpointRequest<'_>,
) -> Result<Reply, AuthError> {
    let cookie = route.cookie;
    match req.path {
        JWKS_PATH => Ok(Reply::Text { content_type: "application/json", body: auth.jwks().to_string() }),
        "/.postern/sign_in" => {
            let target =
                req.param("redirect_uri").or_else(|| req.param("pomerium_redirect_uri")).unwrap_or_else(|| "/".into());
            let return_url = redirect::validate(&target, Some(&req.origin), req.known_host)?;
            let location = auth.sign_in_redirect(&return_url).ok_or(AuthError::NotConfigured)?;
            // No session fixation: whatever session this browser carries
            // here (perhaps one planted by someone else) ends before the
            // sign-in, and the callback sets a fresh one.
            Ok(Reply::Redirect { location, cookies: vec![cookie.clear()] })
        }
        "/.postern/callback" => {
            let token = req.param("token").ok_or(AuthError::BadRequest("callback without a token"))?;
            let t: CallbackToken = auth
                .sealer
                .open(Purpose::Callback, &token)
                .map_err(|_| AuthError::BadRequest("invalid callback token"))?;
            if t.exp < now() {
                return Err(AuthError::BadRequest("expired callback token"));
            }
            if !t.host.eq_ignore_ascii_case(req.host) {
                return Err(AuthError::BadRequest("callback token is for another host"));
            }
            if !auth.redeem(&t.jti, t.exp) {
                return Err(AuthError::BadRequest("callback token was already used"));
            }
            let value = auth.seal_session(&t.session);
            let set = cookie.set(&value, t.session.expires_at - now());
            tracing::info!(auth.subject = %t.session.identity.subject, http.host = %req.host, "signed in");
            Ok(Reply::Redirect { location: t.return_url, cookies: vec![set] })
        }
        "/.postern/user" => {
            let authn = auth.authenticate(&req.headers).await;
            let Some(session) = authn.session else {
                return Ok(unauthenticated(auth, &req));
            };
            let csrf = auth.sealer.csrf_token(&session.id);
            if req.navigation {
                Ok(Reply::Page { status: StatusCode::OK, html: user_page(&session, &csrf), cookies: vec![] })
            } else {
                let i = &session.identity;
                Ok(Reply::Json {
                    status: StatusCode::OK,
                    body: serde_json::json!({
                        "user": i.subject, "email": i.email, "email_verified": i.email_verified,
                        "name": i.name, "groups": i.groups, "claims": i.claims,
                        "expires_at": session.expires_at, "csrf_token": csrf,
                    }),
                })
            }
        }
        "/.postern/jwt" => {
            let authn = auth.authenticate(&req.headers).await;
            let Some(session) = authn.session else {
                return Ok(unauthenticated(auth, &req));
            };
            let jwt = auth.signer.assertion(&session.id, route.route_name, req.host, route.audience, &session.identity);
            Ok(Reply::Text { content_type: "application/jwt", body: jwt })
        }
        "/.postern/sign_out" if req.method == Method::POST => {
            let authn = auth.authenticate(&req.headers).await;
            if let Some(session) = &authn.session {
                let token = req
                    .form
                    .iter()
                    .find(|(k, _)| k == "csrf_token")
                    .map(|(_, v)| v.clone())
                    .or_else(|| req.headers.get("x-postern-csrf").and_then(|v| v.to_str().ok()).map(str::to_string))
                    .ok_or(AuthError::Csrf)?;
                if !auth.sealer.check_csrf(&session.id, &token) {
                    return Err(AuthError::Csrf);
                }
                tracing::info!(auth.subject = %session.identity.subject, "signed out");
            }
            let location = match &auth.authenticate {
                Some(a) => {
                    let r = auth.sealer.seal(Purpose::SignOut, &SignOutRequest { exp: now() + SIGN_IN_TTL });
                    format!("{}/.postern/sign_out?r={r}", a.url)
                }
                None => "/".into(),
            };
            Ok(Reply::Redirect { location, cookies: vec![cookie.clear()] })
        }
        "/.postern/sign_out" => {
            let authn = auth.authenticate(&req.headers).await;
            let csrf = authn.session.as_ref().map(|s| auth.sealer.csrf_token(&s.id)).unwrap_or_default();
            Ok(Reply::Page { status: StatusCode::OK, html: sign_out_page(&csrf), cookies: vec![] })
        }
        _ => Err(AuthError::BadRequest("no such Postern endpoint")),
    }
}

/// No session on an endpoint that needs one.
fn unauthenticated(auth: &Auth, req: &EndpointRequest<'_>) -> Reply {
    let here = format!("{}{}", req.origin, req.path);
    let sign_in_url = format!("{}/.postern/sign_in?redirect_uri={}", req.origin, encode(&here));
    if req.navigation
        && let Ok(ret) = redirect::validate(&here, None, req.known_host)
        && let Some(location) = auth.sign_in_redirect(&ret)
    {
        return Reply::Redirect { location, cookies: vec![] };
    }
    Reply::Json {
        status: StatusCode::UNAUTHORIZED,
        body: serde_json::json!({ "error": "unauthenticated", "sign_in_url": sign_in_url }),
    }
}

/// Everything on the authenticate host.
pub(crate) async fn authenticate_host(auth: &Auth, req: EndpointRequest<'_>) -> Result<Reply, AuthError> {
    let auth_cookie_name = format!("{}{AUTHENTICATE_COOKIE_SUFFIX}", auth.cookie.name);
    let csrf_cookie_name = format!("{}{CSRF_COOKIE_SUFFIX}", auth.cookie.name);
    match req.path {
        JWKS_PATH => Ok(Reply::Text { content_type: "application/json", body: auth.jwks().to_string() }),
        "/.postern/sign_in" => {
            let r = req.param("r").ok_or(AuthError::BadRequest("sign-in request missing"))?;
            let request: SignInRequest =
                auth.sealer.open(Purpose::SignIn, &r).map_err(|_| AuthError::BadRequest("invalid sign-in request"))?;
            if request.exp < now() {
                return Err(AuthError::BadRequest("expired sign-in request"));
            }
            let return_url = redirect::validate(&request.return_url, None, req.known_host)?;
            // Already signed in here: straight back, no IdP round trip.
            if let Some(value) = session::cookie_value(&req.headers, &auth_cookie_name)
                && let Ok(existing) = auth.sealer.open::<Session>(Purpose::Session, value)
                && existing.expires_at > now()
            {
                return Ok(callback_redirect(auth, existing, &return_url, vec![]));
            }
            let oidc = auth.oidc()?;
            let csrf = auth.sealer.random_token(16);
            let pkce_verifier = auth.sealer.random_token(48);
            let nonce = auth.sealer.random_token(16);
            let state = OAuthState { return_url, pkce_verifier, nonce, csrf: csrf.clone(), exp: now() + SIGN_IN_TTL };
            let sealed = auth.sealer.seal(Purpose::State, &state);
            let location = oidc.authorization_url(sealed, &state.pkce_verifier, &state.nonce).await?;
            let flow_cookie = csrf_cookie_for(&csrf_cookie_name, &csrf);
            let mut cookies = clear_if_too_many(auth, &req.headers, &format!("{csrf_cookie_name}_"));
            cookies.push(auth.authenticate_cookie(&flow_cookie).set(&csrf, SIGN_IN_TTL));
            Ok(Reply::Redirect { location, cookies })
        }
        "/oauth2/callback" => {
            if let Some(error) = req.param("error") {
                tracing::info!(idp.error = %error, "identity provider refused sign-in");
                return Err(AuthError::BadRequest("the identity provider refused the sign-in"));
            }
            // RFC 9207: an `iss` that is not our IdP means the response came
            // from another authorization server (a mix-up); refuse it before
            // the code goes anywhere.
            if let Some(iss) = req.param("iss")
                && !auth.oidc()?.is_our_issuer(&iss)
            {
                return Err(AuthError::BadRequest("callback from another issuer"));
            }
            let state = req.param("state").ok_or(AuthError::BadRequest("callback without state"))?;
            let code = req.param("code").ok_or(AuthError::BadRequest("callback without code"))?;
            let state: OAuthState =
                auth.sealer.open(Purpose::State, &state).map_err(|_| AuthError::BadRequest("state mismatch"))?;
            let flow_cookie = csrf_cookie_for(&csrf_cookie_name, &state.csrf);
            let cookie = session::cookie_value(&req.headers, &flow_cookie);
            if state.exp < now() || cookie != Some(state.csrf.as_str()) {
                return Err(AuthError::BadRequest("state mismatch"));
            }
            let tokens = auth.oidc()?.exchange(code, state.pkce_verifier, state.nonce).await?;
            let now = now();
            let session = Session {
                id: auth.sealer.random_token(16),
                identity: tokens.identity,
                issued_at: now,
                expires_at: now + auth.cookie.expire.as_secs() as i64,
                id_token_expires_at: tokens.expires_at,
                refresh_token: tokens.refresh_token,
            };
            tracing::info!(auth.subject = %session.identity.subject, "authenticated with the identity provider");
            let cookies = vec![
                auth.authenticate_cookie(&auth_cookie_name).set(&auth.seal_session(&session), session.expires_at - now),
                auth.authenticate_cookie(&flow_cookie).clear(),
            ];
            Ok(callback_redirect(auth, session, &state.return_url, cookies))
        }
        "/.postern/sign_out" => {
            let r = req.param("r").ok_or(AuthError::BadRequest("sign-out request missing"))?;
            let request: SignOutRequest = auth
                .sealer
                .open(Purpose::SignOut, &r)
                .map_err(|_| AuthError::BadRequest("invalid sign-out request"))?;
            if request.exp < now() {
                return Err(AuthError::BadRequest("expired sign-out request"));
            }
            let signed_out = format!("{}/.postern/signed_out", req.origin);
            let location = match auth.oidc() {
                Ok(oidc) => oidc.end_session_url(&signed_out).await.unwrap_or(signed_out),
                Err(_) => signed_out,
            };
            Ok(Reply::Redirect { location, cookies: vec![auth.authenticate_cookie(&auth_cookie_name).clear()] })
        }
        "/.postern/signed_out" => Ok(Reply::Page {
            status: StatusCode::OK,
            html: page("Signed out", "<h1>Signed out</h1><p>You are signed out.</p>"),
            cookies: vec![],
        }),
        _ => Err(AuthError::BadRequest("no such endpoint on the authenticate host")),
    }
}

/// Most login-CSRF cookies a browser keeps: one per sign-in attempt still
/// in flight (tabs), each living [`SIGN_IN_TTL`].
const MAX_CSRF_COOKIES: usize = 8;

/// Clears every cookie named `prefix*` the request carries once there are
/// [`MAX_CSRF_COOKIES`] of them, so abandoned or planted attempts cannot
/// pile up until the browser's `Cookie` header is too large to send
/// (oauth2-proxy #2615). The attempts they belonged to fail with "state
/// mismatch" and can be started again.
fn clear_if_too_many(auth: &Auth, headers: &HeaderMap, prefix: &str) -> Vec<HeaderValue> {
    let names: std::collections::BTreeSet<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('=').map(|(k, _)| k.trim()))
        .filter(|name| name.starts_with(prefix))
        .collect();
    if names.len() < MAX_CSRF_COOKIES {
        return Vec::new();
    }
    names.into_iter().map(|name| auth.authenticate_cookie(name).clear()).collect()
}

/// The login-CSRF cookie of one sign-in attempt: named after its value, so
/// that attempts started in several tabs of one browser do not overwrite
/// each other's cookie (and fail with "state mismatch").
fn csrf_cookie_for(base: &str, csrf: &str) -> String {
    format!("{base}_{}", csrf.get(..8).unwrap_or(csrf))
}

/// Sends the browser to the route host's callback with a one-time token.
fn callback_redirect(auth: &Auth, session: Session, return_url: &str, cookies: Vec<HeaderValue>) -> Reply {
    let (origin, host) = match return_url.parse::<http::Uri>() {
        Ok(u) => (
            format!("{}://{}", u.scheme_str().unwrap_or("https"), u.authority().map_or("", |a| a.as_str())),
            u.host().unwrap_or("").to_ascii_lowercase(),
        ),
        Err(_) => (String::new(), String::new()),
    };
    let token = CallbackToken {
        session,
        host,
        return_url: return_url.to_string(),
        exp: now() + CALLBACK_TTL,
        jti: auth.sealer.random_token(16),
    };
    let sealed = auth.sealer.seal(Purpose::Callback, &token);
    Reply::Redirect { location: format!("{origin}/.postern/callback?token={sealed}"), cookies }
}

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;color:#222}}\
         dt{{font-weight:600}}</style></head><body>{body}<hr><small>Postern</small></body></html>\n",
        escape(title)
    )
}

fn user_page(session: &Session, csrf: &str) -> String {
    let i = &session.identity;
    let field = |v: Option<&str>| escape(v.unwrap_or("—"));
    let groups = if i.groups.is_empty() { "—".to_string() } else { escape(&i.groups.join(", ")) };
    page(
        "Signed in",
        &format!(
            "<h1>Signed in</h1><dl><dt>Name</dt><dd id=\"name\">{}</dd><dt>Email</dt><dd id=\"email\">{}</dd>\
             <dt>User ID</dt><dd id=\"user\">{}</dd><dt>Groups</dt><dd id=\"groups\">{groups}</dd></dl>\
             <form method=\"post\" action=\"/.postern/sign_out\"><input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            field(i.name.as_deref()),
            field(i.email.as_deref()),
            escape(&i.subject),
            escape(csrf),
        ),
    )
}

fn sign_out_page(csrf: &str) -> String {
    page(
        "Sign out",
        &format!(
            "<h1>Sign out?</h1><form method=\"post\" action=\"/.postern/sign_out\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            escape(csrf)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode() {
        assert_eq!(
            query_pairs("a=1&redirect_uri=https%3A%2F%2Fx%2Fy%3Fq%3D1&b=x+y&flag"),
            vec![
                ("a".into(), "1".into()),
                ("redirect_uri".into(), "https://x/y?q=1".into()),
                ("b".into(), "x y".into()),
                ("flag".into(), String::new())
            ]
        );
    }

    #[test]
    fn pages_escape_identity() {
        let html = escape("<script>alert('x')</script>");
        assert!(!html.contains('<'));
    }
}
