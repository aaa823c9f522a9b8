//! Sign-in, sessions, policy and identity assertions.
//!
//! The flow (as Pomerium's, so IdP registrations carry over): a route host
//! without a session sends the browser to the authenticate host with a
//! sealed, short-lived sign-in request; the authenticate host runs the
//! OpenID Connect code flow (PKCE, state, nonce) against the IdP at
//! `/oauth2/callback`, keeps its own session, and hands the session back
//! to the route host's `/.postern/callback` in a sealed token bound to that
//! host and usable once. The route host sets its cookie and sends the user
//! on to where they were going.

mod access;
mod assertion;
pub(crate) mod endpoints;
mod oidc;
pub(crate) mod redirect;
pub(crate) mod seal;
pub(crate) mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use crate::identity::Identity;
pub(crate) use access::{AccessRequest, Denied};
pub(crate) use oidc::OidcError;
pub(crate) use seal::{Purpose, Sealer};
pub use session::CookieAttrs;
pub(crate) use session::{CredentialSource, Session};

use crate::config::{AuthSettings, CookieSettings};
use assertion::Signer;
use oidc::Oidc;

/// Name of the authenticate host's own session cookie (host-only there).
pub(crate) const AUTHENTICATE_COOKIE_SUFFIX: &str = "_authenticate";
/// Login-CSRF cookie on the authenticate host, bound into `state`.
pub(crate) const CSRF_COOKIE_SUFFIX: &str = "_csrf";
/// How long a sign-in request and an OAuth round trip may take.
const SIGN_IN_TTL: i64 = 600;
/// How long a callback token is valid: one redirect.
const CALLBACK_TTL: i64 = 60;

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Why a sign-in step failed; `proxy::respond` maps these to responses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// A sign-in request, state or callback token that is missing, forged,
    /// expired, replayed or for another host (the client's fault).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The return URL is not on a configured host.
    #[error("refused redirect: {0}")]
    Redirect(#[from] redirect::RedirectError),
    /// Sign-out without the session's CSRF token.
    #[error("missing or wrong CSRF token")]
    Csrf,
    /// No identity provider configured, so nobody can sign in.
    #[error("sign-in is not configured (set idp_provider_url and authenticate_service_url)")]
    NotConfigured,
    #[error("sign-in failed: {0}")]
    Oidc(#[from] OidcError),
}

/// What a config reload did to the identity assertion keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyReload {
    /// `signing_key` and `previous_signing_keys` are as before.
    Unchanged,
    /// New assertions are signed with `kid`; the JWKS publishes it and
    /// `previous`.
    Rotated { kid: String, previous: Vec<String> },
    /// `signing_key` was removed: the running key stays (a random one
    /// would break every upstream's verification) until a restart.
    KeptRunning,
}

/// The previous signing keys' PEM, as the signer takes them.
fn previous_keys(settings: &AuthSettings) -> Vec<&[u8]> {
    settings.previous_signing_keys.iter().map(|k| k.0.as_slice()).collect()
}

/// What a route host asks the authenticate host to do (sealed, `SignIn`).
#[derive(Serialize, Deserialize)]
pub(crate) struct SignInRequest {
    pub return_url: String,
    pub exp: i64,
}

/// Carried through the IdP in `state` (sealed, `State`).
#[derive(Serialize, Deserialize)]
pub(crate) struct OAuthState {
    pub return_url: String,
    pub pkce_verifier: String,
    pub nonce: String,
    /// Must equal the login-CSRF cookie: the callback is for this browser.
    pub csrf: String,
    pub exp: i64,
}

/// The session, handed to one route host once (sealed, `Callback`).
#[derive(Serialize, Deserialize)]
pub(crate) struct CallbackToken {
    pub session: Session,
    /// The only host that may redeem it.
    pub host: String,
    pub return_url: String,
    pub exp: i64,
    pub jti: String,
}

/// Sign-out hand-off to the authenticate host (sealed, `SignOut`).
#[derive(Serialize, Deserialize)]
pub(crate) struct SignOutRequest {
    pub exp: i64,
}

/// The authenticate host, parsed from `authenticate_service_url`.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticateHost {
    /// `https://authenticate.example.com[:port]`, no trailing slash.
    pub url: String,
    /// Lowercase host, no port.
    pub host: String,
}

/// Everything sign-in needs at runtime. Built once at start-up.
pub struct Auth {
    pub(crate) sealer: Sealer,
    pub(crate) signer: Signer,
    oidc: Option<Oidc>,
    pub(crate) authenticate: Option<AuthenticateHost>,
    pub(crate) cookie: CookieSettings,
    /// Cookies get `Secure` unless Postern serves plain HTTP.
    pub(crate) secure_cookies: bool,
    /// Callback tokens already redeemed (jti → exp), so each works once.
    redeemed: Mutex<HashMap<String, i64>>,
    /// In-flight and recent refreshes, by session and ID-token expiry.
    refreshes: Mutex<HashMap<String, (RefreshSlot, i64)>>,
}

/// Where the requests for one refresh wait for its outcome.
type RefreshSlot = Arc<tokio::sync::OnceCell<Refresh>>;

/// The outcome of one refresh, shared by every request that waited on it.
#[derive(Debug)]
enum Refresh {
    Renewed(Box<Session>),
    /// The IdP refused the refresh token: the session is over.
    Ended,
    /// The IdP could not be asked: keep the session for now.
    Kept,
}

/// A request's session, after reading its credential.
#[derive(Debug, Default)]
pub(crate) struct Authn {
    pub session: Option<Session>,
    pub source: Option<CredentialSource>,
    /// The session was refreshed: the route host must set the new cookie.
    pub refreshed: bool,
    /// A credential was sent but is no longer valid: clear the cookie.
    pub ended: bool,
}

impl Auth {
    /// Builds the runtime from settings. Missing `cookie_secret` or
    /// `signing_key` are generated; the returned warnings say so. The
    /// public keys of `previous_signing_keys` are published with the
    /// signing key's.
    pub fn new(settings: &AuthSettings, insecure_server: bool) -> (Auth, Vec<String>) {
        let mut warnings = Vec::new();
        let secret = match &settings.cookie_secret {
            Some(s) => s.0.clone(),
            None => {
                warnings.push(
                    "cookie_secret is not set: using a random one, so sessions will not survive a restart \
                     and will not be shared between replicas"
                        .to_string(),
                );
                let mut b = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
                b.to_vec()
            }
        };
        let signer = match &settings.signing_key {
            Some(pem) => Signer::from_keys(&pem.0, &previous_keys(settings)).unwrap_or_else(|e| {
                // Config validation already parsed these keys.
                warnings.push(format!("signing keys unusable ({e}); using a random one"));
                Signer::generate()
            }),
            None => {
                warnings.push(
                    "signing_key is not set: identity assertions are signed with a random key that changes \
                     on every restart and differs between replicas"
                        .to_string(),
                );
                Signer::generate()
            }
        };
        let authenticate = settings.authenticate_service_url.as_ref().and_then(|url| {
            let uri: http::Uri = url.parse().ok()?;
            Some(AuthenticateHost { url: url.clone(), host: uri.host()?.to_ascii_lowercase() })
        });
        let oidc = match (&settings.idp, &authenticate) {
            (Some(idp), Some(a)) => Some(Oidc::new(idp.clone(), &a.url)),
            _ => None,
        };
        let auth = Auth {
            sealer: Sealer::new(&secret),
            signer,
            oidc,
            authenticate,
            cookie: settings.cookie.clone(),
            secure_cookies: !insecure_server,
            redeemed: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(HashMap::new()),
        };
        (auth, warnings)
    }

    pub(crate) fn jwks(&self) -> Arc<str> {
        self.signer.jwks()
    }

    /// Takes the signing keys of a reloaded config (`next`; `running` is
    /// the config the keys in use came from): the only sign-in settings a
    /// reload changes, so that keys rotate without a restart. Call it once
    /// the reloaded config has been accepted; on an error the running keys
    /// stay.
    pub(crate) fn reload_signing_keys(
        &self,
        running: &AuthSettings,
        next: &AuthSettings,
    ) -> Result<KeyReload, assertion::SignerError> {
        if (&running.signing_key, &running.previous_signing_keys) == (&next.signing_key, &next.previous_signing_keys) {
            return Ok(KeyReload::Unchanged);
        }
        let Some(pem) = &next.signing_key else {
            return Ok(KeyReload::KeptRunning);
        };
        self.signer.rotate(&pem.0, &previous_keys(next))?;
        Ok(KeyReload::Rotated { kid: self.signer.kid(), previous: self.signer.previous_kids() })
    }

    pub(crate) fn can_sign_in(&self) -> bool {
        self.oidc.is_some()
    }

    fn oidc(&self) -> Result<&Oidc, AuthError> {
        self.oidc.as_ref().ok_or(AuthError::NotConfigured)
    }

    /// Reads and checks the request's session; refreshes it through the
    /// IdP when its ID token has expired and a refresh token is at hand.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Authn {
        let mut rejected_cookie = false;
        let mut opened = None;
        for (token, source) in session::credentials(headers, &self.cookie.name) {
            match self.sealer.open::<Session>(Purpose::Session, token) {
                Ok(s) => {
                    opened = Some((s, source));
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?source, "session credential rejected");
                    rejected_cookie |= source == CredentialSource::Cookie;
                }
            }
        }
        let Some((session, source)) = opened else {
            return Authn { ended: rejected_cookie, ..Authn::default() };
        };
        let now = now();
        if session.expires_at <= now {
            tracing::debug!(auth.subject = %session.identity.subject, "session expired");
            return Authn { ended: source == CredentialSource::Cookie, ..Authn::default() };
        }
        if session.id_token_expires_at > now {
            return Authn { session: Some(session), source: Some(source), ..Authn::default() };
        }
        // Only a cookie can carry the refreshed session back, and IdPs
        // rotate refresh tokens: refreshing for a header credential would
        // spend the token the cookie still holds. Without a refresh token,
        // or for header credentials, the session lasts until cookie_expire.
        let (Some(refresh_token), Ok(oidc), CredentialSource::Cookie) = (&session.refresh_token, self.oidc(), source)
        else {
            return Authn { session: Some(session), source: Some(source), ..Authn::default() };
        };
        // One refresh per session at a time, its outcome shared: a page
        // loading ten assets at once must not spend the (rotating)
        // refresh token ten times, which makes IdPs revoke the grant.
        let cell = self.refresh_cell(&session);
        // Boxed: the refresh future is kilobytes, and every request future
        // that can reach this point would otherwise carry (and move) it.
        let outcome = Box::pin(cell.get_or_init(|| async {
                match oidc.refresh(refresh_token, &session.identity).await {
                    Ok(tokens) => {
                        tracing::debug!(auth.subject = %session.identity.subject, "session refreshed");
                        Refresh::Renewed(Box::new(Session {
                            identity: tokens.identity,
                            id_token_expires_at: tokens.expires_at,
                            refresh_token: tokens.refresh_token,
                            ..session.clone()
                        }))
                    }
                    Err(OidcError::Refused(reason)) => {
                        tracing::info!(auth.subject = %session.identity.subject, reason = %reason, "refresh refused; session ended");
                        Refresh::Ended
                    }
                    Err(e) => {
                        // An IdP outage should not sign everybody out: keep
                        // the session (it still ends at cookie_expire).
                        tracing::warn!(error = %e, "session refresh failed; keeping the session for now");
                        Refresh::Kept
                    }
                }
            }))
            .await;
        match outcome {
            Refresh::Renewed(s) => {
                Authn { session: Some((**s).clone()), source: Some(source), refreshed: true, ended: false }
            }
            Refresh::Ended => Authn { ended: true, ..Authn::default() },
            Refresh::Kept => Authn { session: Some(session), source: Some(source), ..Authn::default() },
        }
    }

    /// The shared refresh slot for one session's expired ID token. Slots
    /// live a couple of minutes, long enough for requests still carrying
    /// the old cookie to pick up the new session.
    fn refresh_cell(&self, session: &Session) -> RefreshSlot {
        let key = format!("{}:{}", session.id, session.id_token_expires_at);
        let now = now();
        let mut map = self.refreshes.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1_000 {
            map.retain(|_, (_, created)| now - *created < 120);
        }
        // A slot is reused while it is young, and never after `Kept`: the
        // IdP was unreachable, so the next request must try again.
        if let Some((cell, created)) = map.get(&key)
            && now - *created < 120
            && !matches!(cell.get(), Some(Refresh::Kept))
        {
            return cell.clone();
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        map.insert(key, (cell.clone(), now));
        cell
    }

    /// The URL a route host sends a browser to, to sign in and come back
    /// to `return_url`.
    pub(crate) fn sign_in_redirect(&self, return_url: &str) -> Option<String> {
        let a = self.authenticate.as_ref().filter(|_| self.can_sign_in())?;
        let request = SignInRequest { return_url: return_url.to_string(), exp: now() + SIGN_IN_TTL };
        Some(format!("{}/.postern/sign_in?r={}", a.url, self.sealer.seal(Purpose::SignIn, &request)))
    }

    pub(crate) fn seal_session(&self, session: &Session) -> String {
        self.sealer.seal(Purpose::Session, session)
    }

    /// Marks a callback token used; false if it was used before.
    fn redeem(&self, jti: &str, exp: i64) -> bool {
        let mut redeemed = self.redeemed.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        if redeemed.len() > 10_000 {
            redeemed.retain(|_, e| *e > now);
        }
        redeemed.insert(jti.to_string(), exp).is_none()
    }

    /// Cookie attributes for the authenticate host's own cookies.
    pub(crate) fn authenticate_cookie(&self, name: &str) -> CookieAttrs {
        CookieAttrs {
            name: Arc::from(name),
            domain: None,
            http_only: true,
            same_site: crate::config::SameSite::Lax,
            secure: self.secure_cookies,
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("authenticate", &self.authenticate).finish_non_exhaustive()
    }
}

/// Thin wrappers over the request-path functions, for `benches/auth.rs`.
#[doc(hidden)]
pub mod bench {
    use http::HeaderMap;

    use super::{Auth, Identity, Session, now};

    /// A session cookie value for `identity` (one hour, ID token valid),
    /// as `/.postern/callback` sets it.
    pub fn session_token(auth: &Auth, identity: &Identity) -> String {
        let now = now();
        auth.seal_session(&Session {
            id: auth.sealer.random_token(16),
            identity: identity.clone(),
            issued_at: now,
            expires_at: now + 3600,
            id_token_expires_at: now + 3600,
            refresh_token: Some("refresh-token".into()),
        })
    }

    /// The authorize phase's session read: credential, open, expiry; the
    /// identity if the session is valid. (A session whose ID token is
    /// still valid needs no refresh, so the future never waits.)
    pub fn authenticate(auth: &Auth, headers: &HeaderMap) -> Option<Identity> {
        use futures_util::FutureExt as _;
        auth.authenticate(headers).now_or_never()?.session.map(|s| s.identity)
    }

    /// One ES256 identity assertion, signed now (no cache).
    pub fn sign_assertion(auth: &Auth, identity: &Identity) -> String {
        auth.signer.sign("app.example.com", "app.example.com", identity, now())
    }

    /// The assertion for `session_id` on one route, from the cache when fresh.
    pub fn cached_assertion(auth: &Auth, session_id: &str, identity: &Identity) -> String {
        auth.signer.assertion(session_id, "app", "app.example.com", "app.example.com", identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn key() -> Secret {
        Secret(rcgen::KeyPair::generate().expect("P-256 key").serialize_pem().into_bytes())
    }

    fn kids(auth: &Auth) -> Vec<String> {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&auth.jwks()).expect("jwks");
        jwks.keys.iter().map(|k| k.common.key_id.clone().expect("kid")).collect()
    }

    #[test]
    fn a_reload_rotates_the_signing_keys_and_nothing_else() {
        let (a, b) = (key(), key());
        let at_start = AuthSettings { signing_key: Some(a.clone()), ..AuthSettings::default() };
        let (auth, warnings) = Auth::new(&at_start, false);
        assert!(warnings.iter().all(|w| !w.contains("signing")), "{warnings:?}");
        let kid_a = auth.signer.kid();
        assert_eq!(kids(&auth), vec![kid_a.clone()]);

        let same = AuthSettings { cookie: cookie_expire_probe(), ..at_start.clone() };
        assert_eq!(auth.reload_signing_keys(&at_start, &same).expect("reload"), KeyReload::Unchanged);

        let ahead = AuthSettings { previous_signing_keys: vec![b.clone()], ..at_start.clone() };
        let Ok(KeyReload::Rotated { kid, previous }) = auth.reload_signing_keys(&at_start, &ahead) else {
            panic!("rotated")
        };
        assert_eq!(kid, kid_a, "a still signs");
        let kid_b = previous[0].clone();
        assert_eq!(kids(&auth), vec![kid_a.clone(), kid_b.clone()]);

        let swapped =
            AuthSettings { signing_key: Some(b.clone()), previous_signing_keys: vec![a.clone()], ..at_start.clone() };
        let reload = auth.reload_signing_keys(&ahead, &swapped).expect("reload");
        assert_eq!(reload, KeyReload::Rotated { kid: kid_b.clone(), previous: vec![kid_a.clone()] });

        let removed = AuthSettings { signing_key: None, previous_signing_keys: Vec::new(), ..at_start.clone() };
        assert_eq!(auth.reload_signing_keys(&swapped, &removed).expect("reload"), KeyReload::KeptRunning);
        assert_eq!(kids(&auth), vec![kid_b, kid_a], "the running keys stay");
    }

    /// Settings that differ in something other than the keys.
    fn cookie_expire_probe() -> CookieSettings {
        CookieSettings { expire: std::time::Duration::from_secs(60), ..CookieSettings::default() }
    }

    #[test]
    fn every_cookie_keeps_a_host_prefix_valid() {
        let settings = AuthSettings {
            cookie: CookieSettings { name: "__Host-postern".into(), ..CookieSettings::default() },
            ..AuthSettings::default()
        };
        let (auth, _) = Auth::new(&settings, false);
        let route = CookieAttrs::session(&auth.cookie, false, None, Some(false));
        let csrf = format!("{}{CSRF_COOKIE_SUFFIX}_abcdefgh", auth.cookie.name);
        let authenticate = format!("{}{AUTHENTICATE_COOKIE_SUFFIX}", auth.cookie.name);
        for attrs in [route, auth.authenticate_cookie(&csrf), auth.authenticate_cookie(&authenticate)] {
            for value in [attrs.set("v", 60), attrs.clear()] {
                let value = value.to_str().expect("ascii").to_string();
                assert!(value.starts_with("__Host-postern"), "{value}");
                let attrs: Vec<&str> = value.split("; ").skip(1).collect();
                assert!(attrs.contains(&"Path=/") && attrs.contains(&"Secure"), "{value}");
                assert!(!attrs.iter().any(|a| a.to_ascii_lowercase().starts_with("domain")), "{value}");
            }
        }
    }
}
