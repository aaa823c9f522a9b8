//! Request-path normalization.
//!
//! Route matching and the upstream must agree on what was requested: if the
//! proxy matched `/api/../admin` against a `prefix: /api` route while the
//! upstream resolved it to `/admin`, every path-based rule could be bypassed.
//! So the path is normalized once, routes are matched against the result, and
//! the upstream receives exactly that result. Anything whose meaning depends
//! on how the upstream would decode it (encoded separators, overlong UTF-8,
//! NUL bytes, backslashes) is refused instead of guessed at.
//!
//! The work is two linear scans at most: [`validate`] reads the input once
//! and also tells whether it is already normal (the common case, answered
//! with a plain copy); only otherwise does [`rewrite`] build the output, in a
//! buffer allocated once with an exact upper bound.

/// Why a request path was refused (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("path has a malformed percent-encoding")]
    BadPercentEncoding,
}

impl PathError {
    /// Precedence when a path has several faults, following the documented
    /// rule order, so the reported error never depends on where in the path
    /// each fault sits. Lower wins.
    fn rank(&self) -> u8 {
        match self {
            Self::NotAbsolute => 0,
            Self::BadPercentEncoding => 1,
            Self::Nul => 2,
            Self::InvalidUtf8 => 3,
            Self::Backslash => 4,
            Self::EncodedSeparator => 5,
        }
    }
}

/// Normalizes the path component of a request target (no query string).
///
/// The result starts with `/`, contains only ASCII, has no empty or dot
/// segments (a trailing `/` is kept), decodes percent-encoded unreserved
/// characters and writes every remaining percent-encoding in uppercase, so
/// normalizing it again returns it unchanged.
pub(crate) fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let scan = validate(raw.as_bytes())?;
    if scan.already_normal {
        return Ok(raw.to_owned());
    }
    // Every input byte yields at most one output byte, except raw non-ASCII
    // bytes (three: `%XX`); `rewrite` may add one transient trailing `/`.
    Ok(rewrite(raw, raw.len() + 2 * scan.non_ascii + 1))
}

/// What [`validate`] learned about a path it accepted.
struct Scan {
    /// The path is already in normal form and can be returned verbatim.
    already_normal: bool,
    /// Raw bytes >= 0x80, which grow to three bytes when percent-encoded.
    non_ascii: usize,
}

/// Checks rules 2 and 3 over the whole path and, in the same pass, notes
/// whether anything would have to change.
///
/// The scan does not stop at the first fault (except a malformed escape, which
/// outranks everything else) so that the highest-ranked fault is reported.
fn validate(bytes: &[u8]) -> Result<Scan, PathError> {
    let mut utf8 = Utf8Validator::default();
    let mut worst: Option<PathError> = None;
    let mut already_normal = true;
    let mut non_ascii = 0;
    let mut segment_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let raw = bytes[i];
        let (byte, width) = if raw == b'%' { (decode_escape(bytes, i)?, 3) } else { (raw, 1) };
        if let Some(fault) = fault_of(raw, byte, &mut utf8) {
            worst = Some(worse(worst, fault));
        }
        if raw == b'/' {
            already_normal &= !is_removable_segment(&bytes[segment_start..i], i);
            segment_start = i + 1;
        }
        already_normal &= if raw == b'%' { is_canonical_escape(&bytes[i..i + 3], byte) } else { raw.is_ascii() };
        non_ascii += usize::from(!raw.is_ascii());
        i += width;
    }
    if !utf8.is_complete() {
        worst = Some(worse(worst, PathError::InvalidUtf8));
    }
    already_normal &= !is_dot_segment(&bytes[segment_start..]);
    match worst {
        Some(fault) => Err(fault),
        None => Ok(Scan { already_normal, non_ascii }),
    }
}

/// Returns the fault carried by one input unit, `raw` being its first input
/// byte and `byte` its decoded value (the same unless `raw` is `%`).
fn fault_of(raw: u8, byte: u8, utf8: &mut Utf8Validator) -> Option<PathError> {
    if byte == 0 {
        Some(PathError::Nul)
    } else if !utf8.push(byte) {
        Some(PathError::InvalidUtf8)
    } else if raw == b'\\' {
        Some(PathError::Backslash)
    } else if raw == b'%' && matches!(byte, b'/' | b'\\') {
        Some(PathError::EncodedSeparator)
    } else {
        None
    }
}

/// Keeps whichever of the two faults ranks higher.
fn worse(current: Option<PathError>, new: PathError) -> PathError {
    match current {
        Some(old) if old.rank() <= new.rank() => old,
        _ => new,
    }
}

/// An escape that normal form keeps as is: its byte must stay escaped and
/// its hex digits are already uppercase. Common percent-encoded paths
/// (`%20`, UTF-8 text) then still take the copy-only path.
fn is_canonical_escape(escape: &[u8], byte: u8) -> bool {
    !is_unreserved(byte) && !escape.iter().any(u8::is_ascii_lowercase)
}

/// A segment ending at a `/` at index `slash_at` that forces a rewrite: an
/// empty one (a `//`, but not the leading `/` itself) or a dot segment.
fn is_removable_segment(segment: &[u8], slash_at: usize) -> bool {
    (segment.is_empty() && slash_at > 0) || is_dot_segment(segment)
}

/// `.` or `..`, compared after decoding, which the caller guarantees.
fn is_dot_segment(segment: &[u8]) -> bool {
    matches!(segment, b"." | b"..")
}

/// Decodes the `%XX` escape starting at `at`.
fn decode_escape(bytes: &[u8], at: usize) -> Result<u8, PathError> {
    let hi = bytes.get(at + 1).copied().and_then(hex_value);
    let lo = bytes.get(at + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadPercentEncoding),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Streaming UTF-8 check over the decoded bytes.
///
/// `str::from_utf8` would need the decoded bytes in a buffer of their own;
/// this follows the well-formed byte sequences table (Unicode §3.9, table
/// 3-7) byte by byte instead, which rejects overlong forms such as `C0 AE`
/// and `E0 80 AE`, surrogates, code points above U+10FFFF and stray
/// continuation bytes.
#[derive(Default)]
struct Utf8Validator {
    /// Continuation bytes still expected.
    pending: u8,
    /// Inclusive range allowed for the next continuation byte.
    low: u8,
    high: u8,
}

impl Utf8Validator {
    /// Feeds one byte; `false` means the sequence is ill-formed. The state is
    /// then reset so that scanning can go on looking for other faults.
    fn push(&mut self, byte: u8) -> bool {
        if self.pending > 0 {
            return self.continuation(byte);
        }
        let (pending, low, high) = match byte {
            0x00..=0x7F => return true,
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return false,
        };
        *self = Self { pending, low, high };
        true
    }

    fn continuation(&mut self, byte: u8) -> bool {
        if !(self.low..=self.high).contains(&byte) {
            *self = Self::default();
            return false;
        }
        self.pending -= 1;
        self.low = 0x80;
        self.high = 0xBF;
        true
    }

    /// A sequence cut short by the end of the path is ill-formed too.
    fn is_complete(&self) -> bool {
        self.pending == 0
    }
}

/// Builds the normal form of a path that [`validate`] accepted.
///
/// `out` is kept as `/` followed by each retained segment and its trailing
/// `/`, so dropping the last segment for `..` is a truncation and merging
/// `//` is simply not pushing an empty segment.
fn rewrite(raw: &str, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    out.push('/');
    let mut ends_with_segment = false;
    // Encoded separators were refused, so every separator is a literal `/`.
    for segment in raw[1..].split('/') {
        let start = out.len();
        push_segment(&mut out, segment.as_bytes());
        ends_with_segment = match &out[start..] {
            "" | "." => {
                out.truncate(start);
                false
            }
            ".." => {
                out.truncate(start);
                pop_segment(&mut out);
                false
            }
            _ => {
                out.push('/');
                true
            }
        };
    }
    // A final empty or dot segment means a trailing `/` (RFC 3986 §5.2.4:
    // `/a/b/..` is `/a/`); otherwise drop the separator pushed after the
    // last segment.
    if ends_with_segment {
        out.pop();
    }
    out
}

/// Removes the last retained segment; at the root, `..` has nothing to
/// remove and stays at the root.
fn pop_segment(out: &mut String) {
    let without_slash = &out[..out.len() - 1];
    if let Some(previous) = without_slash.rfind('/') {
        out.truncate(previous + 1);
    }
}

/// Writes one segment in normal form: unreserved characters literally, every
/// other byte that was or must be escaped as uppercase `%XX`.
fn push_segment(out: &mut String, segment: &[u8]) {
    let mut i = 0;
    while i < segment.len() {
        let raw = segment[i];
        if raw == b'%' {
            // Validated already: two hex digits follow.
            let byte = decode_escape(segment, i).unwrap_or(raw);
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                push_escaped(out, byte);
            }
            i += 3;
        } else {
            if raw.is_ascii() {
                out.push(char::from(raw));
            } else {
                push_escaped(out, raw);
            }
            i += 1;
        }
    }
}

/// RFC 3986 §2.3: escaping these never changes meaning, so their escaped
/// and literal forms must normalize alike.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that normalize successfully, with their exact output.
    const VALID: &[(&str, &str)] = &[
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2e/admin", "/admin"),
        ("/api/.%2e/admin", "/admin"),
        ("/api/%2E./admin", "/admin"),
        ("//admin", "/admin"),
        ("/a///b", "/a/b"),
        ("/a//", "/a/"),
        ("///", "/"),
        ("/a//../b", "/b"),
        ("/%7e%41", "/~A"),
        ("/a%3ab", "/a%3Ab"),
        ("/a%3Ab", "/a%3Ab"),
        ("/a%25b", "/a%25b"),
        ("/a%20b", "/a%20b"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/café", "/caf%C3%A9"),
        ("/caf\u{e9}%C3%A9", "/caf%C3%A9%C3%A9"),
        ("/%F0%9F%A6%80", "/%F0%9F%A6%80"),
        ("/🦀", "/%F0%9F%A6%80"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/./", "/a/b/"),
        ("/../../x", "/x"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/./", "/"),
        ("/a/...", "/a/..."),
        ("/a/..b", "/a/..b"),
        ("/a/b..", "/a/b.."),
        ("/a/.b", "/a/.b"),
        ("/%2e", "/"),
        ("/%2e%2e/%2e%2e/etc", "/etc"),
        ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
        ("/a/b/c/../../d", "/a/d"),
    ];

    /// Inputs that are refused, with their exact error.
    const INVALID: &[(&str, PathError)] = &[
        ("relative", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
        ("a/b", PathError::NotAbsolute),
        ("/%2Fadmin", PathError::EncodedSeparator),
        ("/%2fadmin", PathError::EncodedSeparator),
        ("/api%2F..%2Fadmin", PathError::EncodedSeparator),
        ("/api%5c..%5cadmin", PathError::EncodedSeparator),
        ("/api%5C..%5Cadmin", PathError::EncodedSeparator),
        ("/a\\b", PathError::Backslash),
        ("/..\\admin", PathError::Backslash),
        ("/%C0%AE%C0%AE/admin", PathError::InvalidUtf8),
        ("/%c0%af", PathError::InvalidUtf8),
        ("/%E0%80%AE", PathError::InvalidUtf8),
        ("/%80", PathError::InvalidUtf8),
        ("/%FF", PathError::InvalidUtf8),
        ("/%ED%A0%80", PathError::InvalidUtf8),
        ("/%F4%90%80%80", PathError::InvalidUtf8),
        ("/%C3", PathError::InvalidUtf8),
        ("/%C3/", PathError::InvalidUtf8),
        ("/%C3é", PathError::InvalidUtf8),
        ("/a%00b", PathError::Nul),
        ("/a\0b", PathError::Nul),
        ("/%zz", PathError::BadPercentEncoding),
        ("/%4", PathError::BadPercentEncoding),
        ("/%", PathError::BadPercentEncoding),
        ("/%4g", PathError::BadPercentEncoding),
        ("/%%41", PathError::BadPercentEncoding),
        // Several faults: the earliest rule wins wherever each fault sits.
        ("/a\\b%zz", PathError::BadPercentEncoding),
        ("/%2F%00", PathError::Nul),
        ("/%2F%FF", PathError::InvalidUtf8),
        ("/%5C\\", PathError::Backslash),
        ("/%FF%00", PathError::Nul),
    ];

    #[test]
    fn valid_paths_normalize_exactly() {
        for (input, expected) in VALID {
            assert_eq!(normalize(input).as_deref(), Ok(*expected), "input {input:?}");
        }
    }

    #[test]
    fn invalid_paths_are_refused() {
        for (input, expected) in INVALID {
            assert_eq!(normalize(input), Err(expected.clone()), "input {input:?}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for (input, _) in VALID {
            let once = normalize(input).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "input {input:?}");
        }
    }

    /// The output must be something `validate` considers final, otherwise
    /// the fast path and the rewrite would disagree.
    #[test]
    fn outputs_take_the_fast_path() {
        for (input, _) in VALID {
            let once = normalize(input).unwrap();
            let scan = validate(once.as_bytes()).unwrap();
            assert!(scan.already_normal, "output {once:?} of {input:?}");
        }
    }

    /// Every combination of a few tricky pieces, checked against properties
    /// rather than fixed outputs.
    #[test]
    fn generated_paths_keep_invariants() {
        const PIECES: &[&str] = &["/", ".", "..", "%2e", "%2E", "a", "%41", "%3a", "é", "%C3%A9", "~", "//"];
        let mut count = 0;
        for a in PIECES {
            for b in PIECES {
                for c in PIECES {
                    for d in PIECES {
                        let input = format!("/{a}{b}{c}{d}");
                        let Ok(once) = normalize(&input) else {
                            continue;
                        };
                        count += 1;
                        assert_invariants(&input, &once);
                    }
                }
            }
        }
        assert!(count > 10_000);
    }

    fn assert_invariants(input: &str, once: &str) {
        assert!(once.starts_with('/'), "{input:?} -> {once:?}");
        assert!(once.is_ascii(), "{input:?} -> {once:?}");
        assert!(!once.contains("//"), "{input:?} -> {once:?}");
        assert!(once.split('/').all(|s| s != "." && s != ".."), "{input:?} -> {once:?}");
        assert_eq!(normalize(once).as_deref(), Ok(once), "input {input:?}");
    }

    #[test]
    fn errors_render_their_messages() {
        assert_eq!(PathError::EncodedSeparator.to_string(), "path contains an encoded '/' or '\\'");
    }
}
