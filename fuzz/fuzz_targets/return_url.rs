//! The sign-in return-URL validator: an accepted URL is, as a browser
//! parses it (the `url` crate, WHATWG), an http(s) URL without userinfo on
//! one of the validator's own allowed hosts, and validating it again gives
//! it back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::fuzzing::{self, RETURN_URL_HOSTS, RETURN_URL_ORIGIN};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(out) = fuzzing::validate_return_url(raw) else { return };
    let parsed = url::Url::parse(&out).unwrap_or_else(|e| panic!("{raw:?} -> {out:?}: browsers cannot parse it ({e})"));
    assert!(matches!(parsed.scheme(), "http" | "https"), "{raw:?} -> {out:?}: scheme");
    assert!(parsed.username().is_empty() && parsed.password().is_none(), "{raw:?} -> {out:?}: userinfo");
    let host = parsed.host_str().unwrap_or_default();
    assert!(RETURN_URL_HOSTS.contains(&host), "{raw:?} -> {out:?}: browser host {host:?} not allowed");
    if raw.starts_with('/') {
        assert!(out.starts_with(&format!("{RETURN_URL_ORIGIN}/")), "{raw:?} -> {out:?}: path left the origin");
    }
    assert_eq!(fuzzing::validate_return_url(&out).as_deref(), Ok(out.as_str()), "not stable for {raw:?}");
});
