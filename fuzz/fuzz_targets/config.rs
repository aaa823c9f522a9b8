//! The config file parser never panics, gives the same answer twice, and
//! every message it gives (a refused file, or a route left out) names the
//! file and, where it has one, the place in it; a refused file has at least
//! one message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::fuzzing::{self, CONFIG_FILE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let first = fuzzing::parse_config(text);
    assert_eq!(first, fuzzing::parse_config(text), "config parse is not deterministic");
    let messages = match &first {
        Ok((_, problems)) => problems,
        Err(messages) => {
            assert!(!messages.is_empty(), "refused with no message");
            messages
        }
    };
    for m in messages {
        assert!(m.starts_with(CONFIG_FILE), "message names no location: {m:?}");
        assert!(m.len() > CONFIG_FILE.len() + 2, "message is only a location: {m:?}");
    }
});
