//! The policy compiler: never panics on any `policy:` value (YAML or JSON)
//! combined with the other policy keys, and a compiled policy decides the
//! same way every time; a public route allows everything.
//!
//! Input: the first byte gives the other keys (see
//! `postern::fuzzing::compile_policy`), the rest is the `policy:` text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::fuzzing::{self, PROBE_REQUESTS};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(decisions) = fuzzing::compile_policy(text, flags) else { return };
    assert_eq!(decisions.len(), PROBE_REQUESTS);
    assert_eq!(fuzzing::compile_policy(text, flags), Ok(decisions.clone()), "policy decides differently");
    if flags & 1 != 0 {
        assert!(decisions.iter().all(|&d| d), "a public route denied a request");
    }
});
