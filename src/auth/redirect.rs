//! Return URLs after sign-in: only absolute http(s) URLs on configured
//! route hosts, or paths on the current host. Every other form (`//evil`,
//! `/\evil`, `https:evil`, userinfo, encoded tricks, other schemes,
//! control characters) is refused rather than repaired.

/// Why a return URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RedirectError {
    #[error("return URL is not an absolute http(s) URL or a path")]
    Malformed,
    #[error("return URL host is not a configured route host")]
    ForeignHost,
}

/// Checks `raw` and returns it in normalized form (`scheme://host[:port]/path?query`,
/// fragment dropped). `origin` is the current request's `scheme://authority`,
/// used for paths. `allowed` says whether a (lowercase) host is a route host.
pub(crate) fn validate(
    raw: &str,
    origin: Option<&str>,
    allowed: impl Fn(&str) -> bool,
) -> Result<String, RedirectError> {
    if raw.is_empty() || raw.len() > 4096 || raw.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'\\' || b >= 0x80) {
        return Err(RedirectError::Malformed);
    }
    // Decoded once, a path must still be a plain path: `/%2F%2Fevil.com`
    // and `/%5Cevil.com` are refused, not trusted to stay encoded.
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| RedirectError::Malformed)?;
    if decoded.contains('\\') || decoded.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(RedirectError::Malformed);
    }
    let absolute = if raw.starts_with('/') {
        if raw.starts_with("//") || decoded.starts_with("//") {
            return Err(RedirectError::Malformed);
        }
        let origin = origin.ok_or(RedirectError::Malformed)?;
        format!("{origin}{raw}")
    } else {
        raw.to_string()
    };
    // The limit holds for the URL as returned too (a path grows by the
    // origin), so an accepted URL always validates again to itself.
    if absolute.len() > 4096 {
        return Err(RedirectError::Malformed);
    }
    let uri: http::Uri = absolute.parse().map_err(|_| RedirectError::Malformed)?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        _ => return Err(RedirectError::Malformed),
    };
    // `https:evil.com` and `https:/evil.com` have no `//` authority.
    let after_scheme = &absolute[scheme.len()..];
    if !after_scheme.starts_with("://") {
        return Err(RedirectError::Malformed);
    }
    let authority = uri.authority().ok_or(RedirectError::Malformed)?;
    if authority.as_str().contains('@') || authority.as_str().contains('%') {
        return Err(RedirectError::Malformed);
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return Err(RedirectError::Malformed);
    }
    if !allowed(host) {
        return Err(RedirectError::ForeignHost);
    }
    // A port that is not a number in range would be dropped by `port_u16`
    // (silently sending the user to the default port): refuse it instead.
    let port = match authority.as_str().split_once(':') {
        Some((_, p)) => format!(":{}", p.parse::<u16>().map_err(|_| RedirectError::Malformed)?),
        None => String::new(),
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let path_and_query = path_and_query.split('#').next().unwrap_or("/");
    if path_and_query.starts_with("//") {
        return Err(RedirectError::Malformed);
    }
    Ok(format!("{scheme}://{host}{port}{path_and_query}"))
}

/// The shared open-redirect payload list (its loader lives with the
/// integration tests that use it too).
#[cfg(test)]
#[path = "../../tests/support/redirect_payloads.rs"]
mod redirect_payloads;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<String, RedirectError> {
        validate(raw, Some("https://app.example.com"), |h| h == "app.example.com" || h == "api.example.com")
    }

    #[test]
    fn accepts_route_hosts_and_paths() {
        assert_eq!(check("/dashboard?x=1").as_deref(), Ok("https://app.example.com/dashboard?x=1"));
        assert_eq!(check("https://API.example.com/v1#frag").as_deref(), Ok("https://api.example.com/v1"));
        assert_eq!(check("https://app.example.com:8443").as_deref(), Ok("https://app.example.com:8443/"));
    }

    #[test]
    fn refuses_tricks() {
        for raw in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https:evil.com",
            "https:/evil.com",
            "https://evil.com",
            "https://app.example.com@evil.com",
            "https://evil.com#@app.example.com",
            "javascript:alert(1)",
            "data:text/html,x",
            "/%2F%2Fevil.com",
            "/%5Cevil.com",
            "https://app.example.com.evil.com",
            "https://evil.com\\@app.example.com",
            "https://app.example.com%2eevil.com",
            " https://app.example.com",
            "https://app.example.com/\n",
            "",
            "ftp://app.example.com",
            "https://app.example.com:99999/",
            "https://app.example.com:-1/",
            "https://app.example.com:0x50/",
            "https://app.example.com:/",
        ] {
            assert!(check(raw).is_err(), "{raw:?} must be refused, got {:?}", check(raw));
        }
    }

    /// Found by the `return_url` fuzz target: a path just under the limit
    /// was accepted, but its absolute form (origin prepended) was over it
    /// and refused when validated again.
    #[test]
    fn accepted_urls_validate_again_to_themselves() {
        let long = format!("/{}", "a".repeat(4090));
        match check(&long) {
            Ok(url) => assert_eq!(check(&url).as_deref(), Ok(url.as_str())),
            Err(e) => assert_eq!(e, RedirectError::Malformed),
        }
        assert!(check(&format!("/{}", "a".repeat(4000))).is_ok());
    }

    /// Every payload of the shared list is refused, or normalized to a URL
    /// whose host (as a browser parses it) is a route host.
    #[test]
    fn payload_list_never_yields_another_host() {
        let payloads = super::redirect_payloads::payloads(8443);
        assert!(payloads.len() >= 100);
        let mut accepted = 0;
        for payload in &payloads {
            let Ok(url) = check(payload) else { continue };
            accepted += 1;
            let parsed = reqwest::Url::parse(&url).unwrap_or_else(|e| panic!("{payload:?} gave {url:?} ({e})"));
            assert!(matches!(parsed.scheme(), "http" | "https"), "{payload:?} gave {url:?}");
            assert!(
                matches!(parsed.host_str(), Some("app.example.com" | "api.example.com")),
                "{payload:?} gave {url:?}, host {:?} for a browser",
                parsed.host_str()
            );
            assert_eq!(check(&url).as_deref(), Ok(url.as_str()), "normalized form is stable for {payload:?}");
        }
        assert!(accepted < payloads.len() / 4, "{accepted} of {} accepted", payloads.len());
    }
}
