//! The session: what the cookie (or an authorization header) carries, and
//! how Postern reads and writes it on the wire.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::{CookieSettings, SameSite};
use crate::identity::Identity;

/// One signed-in user. Stateless: the whole session lives, encrypted, in
/// the cookie, so any Postern with the same `cookie_secret` accepts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    /// Random; keys the assertion cache and the sign-out CSRF token.
    pub id: String,
    pub identity: Identity,
    /// Unix seconds.
    pub issued_at: i64,
    /// End of the session (`cookie_expire` after sign-in).
    pub expires_at: i64,
    /// When the ID token expires; past it, the session is refreshed.
    pub id_token_expires_at: i64,
    pub refresh_token: Option<String>,
}

/// Where the credential of a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    Cookie,
    /// `X-Postern-Authorization` or `X-Pomerium-Authorization`.
    TokenHeader,
    /// `Authorization: Bearer` or `Authorization: Pomerium`.
    Authorization,
}

/// Headers that may carry a session token in place of the cookie, in the
/// order they are tried. `Authorization` takes `Bearer` or `Pomerium`.
const TOKEN_HEADERS: [&str; 2] = ["x-postern-authorization", "x-pomerium-authorization"];

/// The session token sent with a request, if any.
#[cfg(test)]
fn credential<'a>(headers: &'a HeaderMap, cookie_name: &'a str) -> Option<(&'a str, CredentialSource)> {
    credentials(headers, cookie_name).next()
}

/// Every session token sent with a request, in the order they are tried:
/// token headers, `Authorization`, then the cookie. A stale or foreign
/// token in a header must not hide a valid cookie.
pub(crate) fn credentials<'a>(
    headers: &'a HeaderMap,
    cookie_name: &'a str,
) -> impl Iterator<Item = (&'a str, CredentialSource)> + 'a {
    let token_headers = TOKEN_HEADERS.into_iter().filter_map(move |name| {
        let v = headers.get(name)?.to_str().ok()?.trim();
        let v = v.strip_prefix("Pomerium ").or_else(|| v.strip_prefix("Bearer ")).unwrap_or(v);
        (!v.is_empty()).then_some((v, CredentialSource::TokenHeader))
    });
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let v = v.trim();
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("Pomerium "))
            .map(|t| (t.trim(), CredentialSource::Authorization))
    });
    let cookie = cookie_value(headers, cookie_name).map(|v| (v, CredentialSource::Cookie));
    token_headers.chain(authorization).chain(cookie)
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether cookie `name` arrives twice with different values. A sibling
/// host under a shared `cookie_domain` can plant a same-named cookie with a
/// longer `Path` (cookie tossing); browsers send it first, so "first wins"
/// would sign the victim in as whoever planted it. Neither is believed.
pub(crate) fn cookie_is_ambiguous(headers: &HeaderMap, name: &str) -> bool {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'));
    let Some(first) = values.next() else { return false };
    values.any(|v| v != first)
}

/// Removes Postern's credentials before a request goes upstream: its
/// cookie (other cookies stay), the token headers, an `Authorization`
/// that carried a session token, and every client-sent `X-Postern-*` and
/// `X-Pomerium-*` header (identity headers are Postern's to set).
pub(crate) fn strip_credentials(headers: &mut HeaderMap, cookie_name: &str, authorization_was_ours: bool) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    let rebuild = match (fields.next(), fields.next()) {
        (None, _) => false,
        // HTTP/2 clients send a field per cookie; an HTTP/1.1 upstream
        // expects them joined into one header.
        (Some(_), Some(_)) => true,
        (Some(field), None) => field.as_bytes().split(|&b| b == b';').any(|pair| {
            let pair = pair.trim_ascii_start();
            pair.strip_prefix(cookie_name.as_bytes()).is_some_and(|rest| rest.trim_ascii_start().starts_with(b"="))
        }),
    };
    if rebuild {
        rebuild_cookie_without(headers, cookie_name);
    }
    if authorization_was_ours {
        headers.remove(header::AUTHORIZATION);
    }
    let ours: Vec<header::HeaderName> = headers.keys().filter(|k| is_identity_header(k.as_str())).cloned().collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Joins the `Cookie` fields into one, leaving out `cookie_name`.
fn rebuild_cookie_without(headers: &mut HeaderMap, cookie_name: &str) {
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k.trim_end() != cookie_name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// `x-postern-*` or `x-pomerium-*`, and the identity headers other
/// identity-aware proxies set (oauth2-proxy's `X-Forwarded-User`,
/// `X-Forwarded-Email`, ... and `X-Auth-Request-*`): an app moved behind
/// Postern may still read those, and Postern never sets them, so a client
/// that sends one is forging it. Also spelled with underscores: CGI, WSGI,
/// Rack and PHP upstreams read `X_Postern_Jwt_Assertion` as the same
/// variable as `X-Postern-Jwt-Assertion`. Names are lowercase (hyper).
fn is_identity_header(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["x-postern-", "x-pomerium-", "x-auth-request-"];
    const NAMES: [&str; 5] = [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
    ];
    let dash = |b: u8| if b == b'_' { b'-' } else { b };
    let starts =
        |prefix: &str| name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(a, p)| dash(a) == p);
    PREFIXES.iter().any(|p| starts(p)) || NAMES.iter().any(|n| name.len() == n.len() && starts(n))
}

/// Attributes of one cookie Postern sets. For a route host's session
/// cookie this is computed once, when the route table is compiled
/// ([`CookieAttrs::session`]); requests only format it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub name: Arc<str>,
    pub domain: Option<String>,
    pub http_only: bool,
    pub same_site: SameSite,
    pub secure: bool,
}

impl CookieAttrs {
    /// The session cookie on a route host: the global cookie settings with
    /// the route's `cookie_domain` / `cookie_http_only` overrides. `Secure`
    /// unless Postern serves plain HTTP.
    pub fn session(
        settings: &CookieSettings,
        insecure_server: bool,
        domain: Option<&str>,
        http_only: Option<bool>,
    ) -> Self {
        CookieAttrs {
            name: Arc::from(settings.name.as_str()),
            domain: domain.or(settings.domain.as_deref()).map(str::to_string),
            http_only: http_only.unwrap_or(settings.http_only),
            same_site: settings.same_site,
            secure: !insecure_server,
        }
    }

    /// `Set-Cookie` for `value`, living `max_age` seconds.
    pub(crate) fn set(&self, value: &str, max_age: i64) -> HeaderValue {
        let mut s = format!("{}={value}; Path=/; Max-Age={}", self.name, max_age.max(0));
        if let Some(d) = &self.domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        if self.secure {
            s.push_str("; Secure");
        }
        if self.http_only {
            s.push_str("; HttpOnly");
        }
        s.push_str("; SameSite=");
        s.push_str(self.same_site.as_str());
        HeaderValue::from_str(&s).expect("cookie values are base64url and attributes are validated")
    }

    /// `Set-Cookie` that deletes the cookie.
    pub(crate) fn clear(&self) -> HeaderValue {
        self.set("", 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn a_session_cookie_with_two_values_is_ambiguous() {
        let name = "_postern";
        let ambiguous = |v: &'static str| cookie_is_ambiguous(&headers(&[("cookie", v)]), name);
        assert!(ambiguous("_postern=a; _postern=b"));
        assert!(!ambiguous("_postern=a; _postern=a"), "the same value twice is one cookie");
        assert!(!ambiguous("_postern=a; _postern_csrf=b; x_postern=c"), "other names are other cookies");
        assert!(!ambiguous("x=1"));
    }

    #[test]
    fn token_from_every_accepted_place() {
        let name = "_postern";
        assert_eq!(
            credential(&headers(&[("cookie", "a=1; _postern=tok; b=2")]), name),
            Some(("tok", CredentialSource::Cookie))
        );
        assert_eq!(
            credential(&headers(&[("x-postern-authorization", "tok")]), name),
            Some(("tok", CredentialSource::TokenHeader))
        );
        assert_eq!(
            credential(&headers(&[("x-pomerium-authorization", "tok")]), name),
            Some(("tok", CredentialSource::TokenHeader))
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer tok")]), name),
            Some(("tok", CredentialSource::Authorization))
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Pomerium tok")]), name),
            Some(("tok", CredentialSource::Authorization))
        );
        assert_eq!(credential(&headers(&[("authorization", "Basic dXNlcjpwdw==")]), name), None);
        assert_eq!(credential(&headers(&[("cookie", "_posternX=tok")]), name), None);
    }

    #[test]
    fn strips_only_postern_credentials() {
        let mut h = headers(&[
            ("cookie", "a=1; _postern=tok; b=2"),
            ("x-postern-jwt-assertion", "forged"),
            ("x-pomerium-authorization", "tok"),
            ("authorization", "Bearer tok"),
            ("x-other", "kept"),
        ]);
        strip_credentials(&mut h, "_postern", true);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut u = headers(&[
            ("x_postern_jwt_assertion", "forged"),
            ("x-pomerium_jwt_assertion", "forged"),
            ("x_pomerium-claim-email", "forged"),
            ("x_posternx", "kept"),
        ]);
        strip_credentials(&mut u, "_postern", false);
        assert_eq!(
            u.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x_posternx"],
            "underscore spellings are ours too"
        );
        assert!(h.get("x-postern-jwt-assertion").is_none());
        assert!(h.get("x-pomerium-authorization").is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h["x-other"], "kept");
        let mut h = headers(&[("cookie", "_postern=tok"), ("authorization", "Basic x")]);
        strip_credentials(&mut h, "_postern", false);
        assert!(h.get("cookie").is_none());
        assert_eq!(h["authorization"], "Basic x");
    }

    #[test]
    fn other_proxies_identity_headers_are_stripped_and_forwarding_headers_kept() {
        let mut h = headers(&[
            ("x-forwarded-user", "mallory"),
            ("x_forwarded_email", "mallory@example.com"),
            ("x-forwarded-groups", "admins"),
            ("x-forwarded-preferred-username", "mallory"),
            ("x-forwarded-access-token", "t"),
            ("x-auth-request-email", "mallory@example.com"),
            ("x_auth_request_user", "mallory"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-username", "kept: not a name any proxy sets"),
        ]);
        strip_credentials(&mut h, "_postern", false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-for", "x-forwarded-host", "x-forwarded-username"]);
    }

    #[test]
    fn cookies_without_ours_pass_as_sent_and_split_fields_are_joined() {
        let mut h = headers(&[("cookie", "a=1;b=2; _posternX=3")]);
        strip_credentials(&mut h, "_postern", false);
        assert_eq!(h["cookie"], "a=1;b=2; _posternX=3", "untouched, spacing and all");
        let mut h = HeaderMap::new();
        for field in ["a=1", "_postern=tok", "b=2"] {
            h.append("cookie", HeaderValue::from_static(field));
        }
        strip_credentials(&mut h, "_postern", false);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        strip_credentials(&mut h, "_postern", false);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"], "HTTP/2 cookie fields joined");
    }

    #[test]
    fn set_cookie_attributes() {
        let attrs = CookieAttrs {
            name: Arc::from("_postern"),
            domain: Some(".example.com".into()),
            http_only: false,
            same_site: SameSite::Lax,
            secure: true,
        };
        assert_eq!(attrs.set("v", 60), "_postern=v; Path=/; Max-Age=60; Domain=.example.com; Secure; SameSite=Lax");
        let attrs = CookieAttrs { domain: None, http_only: true, ..attrs };
        assert_eq!(attrs.clear(), "_postern=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax");
    }
}
