//! The request-path normalizer: an accepted path normalizes to itself
//! again, and its output is plain: absolute, ASCII, no empty or dot
//! segments, no encoded separators or dots, no backslash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(out) = fuzzing::normalize_path(raw) else { return };
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}: not absolute");
    assert!(out.is_ascii(), "{raw:?} -> {out:?}: not ASCII");
    assert!(!out.contains("//"), "{raw:?} -> {out:?}: empty segment");
    assert!(!out.contains('\\'), "{raw:?} -> {out:?}: backslash");
    assert!(!out.contains('\0'), "{raw:?} -> {out:?}: NUL");
    let upper = out.to_ascii_uppercase();
    for encoded in ["%2F", "%5C", "%2E", "%00"] {
        assert!(!upper.contains(encoded), "{raw:?} -> {out:?}: contains {encoded}");
    }
    assert!(out.split('/').all(|s| s != "." && s != ".."), "{raw:?} -> {out:?}: dot segment");
    assert_eq!(fuzzing::normalize_path(&out).as_deref(), Ok(out.as_str()), "not idempotent for {raw:?}");
});
