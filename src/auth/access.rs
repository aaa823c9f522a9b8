//! The sign-in phase of a request to a route: read the session (refreshing
//! it when due), evaluate the route's policy, and say what to do: let the
//! request through with its identity, refuse it (403), or ask for sign-in
//! (a redirect for browser navigations, a 401 for everything else).
//!
//! This is the one entry the request pipeline calls; the cookie attributes
//! and the policy come with the request, already compiled into the route.

use http::{HeaderMap, HeaderValue};

use super::endpoints::encode;
use super::{Auth, Authn, CookieAttrs, CredentialSource, now};
use crate::policy::{self, Decision, Policy};

/// What the sign-in phase looks at in one request.
pub(crate) struct AccessRequest<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// The normalized path, as the route matched it.
    pub path: &'a str,
    /// `scheme://authority` as the client sees this host.
    pub origin: &'a str,
    /// Path and query as the client sent them: where to return after sign-in.
    pub path_and_query: &'a str,
    pub cors_preflight: bool,
    /// The matched route's policy and session cookie.
    pub policy: &'a Policy,
    pub cookie: &'a CookieAttrs,
    /// The upstream gets an identity assertion, so read the session even on
    /// a public route.
    pub wants_identity: bool,
}

/// Why a request may not go on.
#[derive(Debug)]
pub(crate) enum Denied {
    /// Signed in, but the policy says no.
    Forbidden,
    /// Not signed in (or the session ended) and the policy needs someone.
    SignInRequired {
        /// `/.postern/sign_in` on this host, for API clients; `None` when
        /// sign-in is not configured.
        sign_in_url: Option<String>,
        /// Where a browser navigation is sent (the authenticate host).
        redirect: Option<String>,
    },
}

/// The outcome of the sign-in phase.
#[derive(Debug)]
pub(crate) struct Access {
    /// `Set-Cookie` values for whatever response is sent: the refreshed
    /// session, or clearing one that ended.
    pub set_cookies: Vec<HeaderValue>,
    pub decision: Result<Authn, Denied>,
}

impl Auth {
    /// Decides one request to a route. Reads the session only when the
    /// route's policy or its upstream needs it.
    pub(crate) async fn authorize(&self, req: &AccessRequest<'_>) -> Access {
        let authn = if !req.policy.is_public() || req.wants_identity {
            self.authenticate(req.headers).await
        } else {
            Authn::default()
        };
        let mut set_cookies = Vec::new();
        if authn.ended {
            set_cookies.push(req.cookie.clear());
        }
        if let Some(s) = &authn.session
            && authn.refreshed
            && authn.source == Some(CredentialSource::Cookie)
        {
            set_cookies.push(req.cookie.set(&self.seal_session(s), s.expires_at - now()));
        }
        let decision = req.policy.evaluate(&policy::Request {
            identity: authn.session.as_ref().map(|s| &s.identity),
            method: req.method,
            path: req.path,
            cors_preflight: req.cors_preflight,
        });
        let decision = match (decision, &authn.session) {
            (Decision::Allow, _) => Ok(authn),
            (Decision::Deny, Some(_)) => Err(Denied::Forbidden),
            (Decision::Deny, None) => {
                let here = format!("{}{}", req.origin, req.path_and_query);
                Err(Denied::SignInRequired {
                    sign_in_url: self
                        .can_sign_in()
                        .then(|| format!("{}/.postern/sign_in?redirect_uri={}", req.origin, encode(&here))),
                    redirect: self.sign_in_redirect(&here),
                })
            }
        };
        Access { set_cookies, decision }
    }
}
