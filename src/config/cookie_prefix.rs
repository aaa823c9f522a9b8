//! Cookie name prefixes browsers enforce (`__Secure-`, `__Host-`,
//! `__Http-`, `__Host-Http-`; RFC 6265bis and its successor,
//! draft-ietf-httpbis-layered-cookies). A browser drops a `Set-Cookie`
//! whose name has a prefix its attributes do not honour, so a session
//! cookie named so would never come back and nobody could sign in: the
//! config refuses such combinations instead, naming the setting.
//!
//! Browsers match the prefixes in any letter case (the drafts' storage
//! model byte-lowercases the name; servers that read cookie names
//! case-insensitively would otherwise take `__HOST-x` for `__Host-x`), so
//! Postern does too.

/// The prefix a cookie name starts with, and what it makes browsers demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookiePrefix {
    /// `__Secure-`: `Secure`.
    Secure,
    /// `__Host-`: `Secure`, `Path=/` and no `Domain` (host-only).
    Host,
    /// `__Http-`: `Secure` and `HttpOnly`.
    Http,
    /// `__Host-Http-`: both of the above.
    HostHttp,
}

impl CookiePrefix {
    /// The prefix of cookie `name`, matched ASCII case-insensitively.
    pub fn of(name: &str) -> Option<CookiePrefix> {
        let starts = |prefix: &str| name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
        // Longest first: `__Host-Http-x` also starts with `__Host-`.
        [
            (CookiePrefix::HostHttp, "__Host-Http-"),
            (CookiePrefix::Host, "__Host-"),
            (CookiePrefix::Http, "__Http-"),
            (CookiePrefix::Secure, "__Secure-"),
        ]
        .into_iter()
        .find(|(_, p)| starts(p))
        .map(|(prefix, _)| prefix)
    }

    /// The prefix as the specification spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CookiePrefix::Secure => "__Secure-",
            CookiePrefix::Host => "__Host-",
            CookiePrefix::Http => "__Http-",
            CookiePrefix::HostHttp => "__Host-Http-",
        }
    }

    /// No `Domain` attribute allowed: the cookie is host-only.
    pub fn forbids_domain(self) -> bool {
        matches!(self, CookiePrefix::Host | CookiePrefix::HostHttp)
    }

    /// `HttpOnly` required.
    pub fn needs_http_only(self) -> bool {
        matches!(self, CookiePrefix::Http | CookiePrefix::HostHttp)
    }

    /// Why `cookie_domain` cannot be set with session cookie `name`.
    pub fn domain_refused(self, name: &str) -> String {
        let p = self.as_str();
        format!(
            "cannot be used with a {p} cookie_name ({name:?}{}): browsers drop a {p} cookie that has a Domain \
             attribute, so the session cookie would never be kept; leave cookie_domain out (the cookie is then \
             host-only), or use a cookie_name without {p} (such as __Secure-postern) to share the cookie between hosts",
            self.case_note(name)
        )
    }

    /// Why `insecure_server: true` (no `Secure` attribute) cannot go with
    /// session cookie `name`.
    pub fn secure_refused(self, name: &str) -> String {
        let p = self.as_str();
        format!(
            "{name:?} is a {p} name{}, which browsers keep only with the Secure attribute, and Postern leaves \
             Secure off with insecure_server: true; serve TLS, or use a cookie_name without {p}",
            self.case_note(name)
        )
    }

    /// Why `cookie_http_only: false` cannot go with session cookie `name`.
    pub fn http_only_refused(self, name: &str) -> String {
        let p = self.as_str();
        format!(
            "cannot be false with a {p} cookie_name ({name:?}{}): browsers drop a {p} cookie without HttpOnly; \
             use a cookie_name without {p} for a cookie scripts may read",
            self.case_note(name)
        )
    }

    /// Says so when `name` spells the prefix in other letter case.
    fn case_note(self, name: &str) -> &'static str {
        if name.starts_with(self.as_str()) { "" } else { ", a prefix browsers match in any letter case" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_in_any_letter_case_longest_first() {
        assert_eq!(CookiePrefix::of("__Host-postern"), Some(CookiePrefix::Host));
        assert_eq!(CookiePrefix::of("__HOST-postern"), Some(CookiePrefix::Host));
        assert_eq!(CookiePrefix::of("__host-postern"), Some(CookiePrefix::Host));
        assert_eq!(CookiePrefix::of("__Host-Http-postern"), Some(CookiePrefix::HostHttp));
        assert_eq!(CookiePrefix::of("__Secure-postern"), Some(CookiePrefix::Secure));
        assert_eq!(CookiePrefix::of("__secure-postern"), Some(CookiePrefix::Secure));
        assert_eq!(CookiePrefix::of("__Http-postern"), Some(CookiePrefix::Http));
        for plain in ["_postern", "__Host", "_Host-postern", "__Hostpostern", "x__Host-postern", "", "__Securé-"] {
            assert_eq!(CookiePrefix::of(plain), None, "{plain:?}");
        }
        assert!(CookiePrefix::Host.forbids_domain() && CookiePrefix::HostHttp.forbids_domain());
        assert!(!CookiePrefix::Secure.forbids_domain() && !CookiePrefix::Http.forbids_domain());
        assert!(CookiePrefix::Http.needs_http_only() && CookiePrefix::HostHttp.needs_http_only());
        assert!(!CookiePrefix::Host.needs_http_only() && !CookiePrefix::Secure.needs_http_only());
    }
}
