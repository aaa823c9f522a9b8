//! The session cookie decoder: it never panics on any cookie value, and a
//! session that decodes re-encodes to a cookie that decodes the same.
//!
//! The input is tried twice: as the cookie value itself (which almost never
//! passes the authentication tag, but exercises the framing), and, if it
//! is JSON, as the payload sealed under the session key, which reaches the
//! session decoding behind the tag.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use postern::fuzzing::{DecodedSession, SessionCodec};

static CODEC: LazyLock<SessionCodec> = LazyLock::new(SessionCodec::new);

fn round_trip(session: &DecodedSession) {
    let again = CODEC.seal(session);
    let reopened = CODEC.open(&again).expect("a re-encoded session decodes");
    assert_eq!(reopened.to_json(), session.to_json(), "re-encoded session decodes differently");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data)
        && let Some(session) = CODEC.open(token)
    {
        round_trip(&session);
    }
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) {
        let token = CODEC.seal_json(&payload);
        if let Some(session) = CODEC.open(&token) {
            round_trip(&session);
        }
    }
});
