//! Request-path normalization.
//!
//! Route matching and the upstream must agree on what was requested: if the
//! proxy matched `/api/../admin` against a `prefix: /api` route while the
//! upstream resolved it to `/admin`, every path-based rule could be bypassed.
//! So the path is normalized once, routes are matched against the result, and
//! the upstream receives exactly that result, followed by the query as sent.
//! Path rules never see the query, and they never see a fragment either: the
//! HTTP parser drops a raw `#...` from the request target before we get it,
//! while `%23` is data like any other escape.
//!
//! "The upstream" is many different readers: servers that decode the path once
//! more, Java containers that strip `;parameters` from each segment, servers
//! that fold Unicode compatibility characters (NFKC, Windows "best-fit").
//! Normal form must mean the same path to all of them. A path that has no
//! such form is refused (400) rather than guessed at. The rules are listed
//! here in the order they rank when a path breaks several:
//!
//! 1. It starts with `/` ([`PathError::NotAbsolute`]).
//! 2. Every `%` is followed by two hex digits ([`PathError::BadPercentEncoding`]).
//! 3. No NUL byte, raw or encoded ([`PathError::Nul`]).
//! 4. The decoded bytes are well-formed UTF-8, so there are no overlong forms
//!    (`%C0%AE` is not `.`), surrogates or stray bytes
//!    ([`PathError::InvalidUtf8`]).
//! 5. No raw `\`, which Windows servers and some frameworks read as `/`
//!    ([`PathError::Backslash`]).
//! 6. No `%2F` or `%5C`. An upstream that decodes them sees a separator the
//!    route never saw (`/x%2F..%2Fadmin`). This is Envoy's
//!    `path_with_escaped_slashes_action: REJECT_REQUEST` and Pomerium's
//!    default ([`PathError::EncodedSeparator`]).
//! 7. No double encoding: once decoded, no `%` is followed by two hex digits
//!    (`%252e`, `%252f`, `%25%32%65`) or by IIS's `u` and four hex digits
//!    (`%25u002e`). A server that decodes once more reads `.`, `/` or any
//!    other byte there. Envoy's guidance is never to decode `%25`. We go one
//!    step further and refuse the only cases where keeping it is ambiguous.
//!    `%25` followed by anything else (`100%25`, `%25off`, `%25up`) is data
//!    ([`PathError::DoubleEncoding`]).
//! 8. No raw `;`. Tomcat, Jetty, Undertow and Spring strip `;parameters` from
//!    each segment before routing. To them `/pub/..;/admin` is `/admin` and
//!    `/admin;jsessionid=1` is `/admin`. Every other server reads `;` as
//!    data, and no single form serves both readings: keeping `;` lets a
//!    request get past an exact `path: /admin` rule to a catch-all route,
//!    and stripping it silently changes paths where `;` is data
//!    (`/route/1,2;3,4`). Spring Security's `StrictHttpFirewall` also refuses
//!    it by default. An encoded `%3B` is data to all of these servers,
//!    because they split off parameters before decoding, so it is forwarded
//!    as is. That is how a client sends a literal `;` ([`PathError::Semicolon`]).
//! 9. No character that Unicode compatibility folding (NFKC) turns into `.`,
//!    `/`, `\`, `%`, `;`, `?` or `#`, such as U+FF0E FULLWIDTH FULL STOP,
//!    U+2024 ONE DOT LEADER, U+FF0F, U+FF3C or U+FF1F FULLWIDTH QUESTION
//!    MARK (a folded `?` or `#` ends the path early: `/admin？x` is `/admin`
//!    there, but matches no `/admin` rule here). The same goes for the
//!    look-alike slashes and stops that best-fit mappings and IDNA turn into
//!    `/`, `\` or `.`, such as U+2215 DIVISION SLASH, U+2044 FRACTION SLASH
//!    and U+3002 IDEOGRAPHIC FULL STOP. This holds raw or percent-encoded:
//!    after folding, `/pub/．．/admin` is `/pub/../admin`
//!    ([`PathError::Confusable`]).
//!
//! What is accepted is then written in one form. Percent-encoded unreserved
//! characters (RFC 3986 §2.3) are decoded (`%2e` is `.`, `%61` is `a`). Every
//! other escape is written in uppercase, and raw non-ASCII bytes are
//! percent-encoded. Empty segments are merged (`//admin` is `/admin`, Envoy's
//! `merge_slashes`). Then dot segments are removed (RFC 3986 §5.2.4, Envoy's
//! `normalize_path`), so `/pub/%2e%2e/admin` is `/admin`. Normal form is
//! ASCII and has no empty or dot segments, no `;` and no double encoding.
//! Decoding it once yields no separator, dot segment or escape that was not
//! already visible in it, and normalizing it again returns it unchanged.
//!
//! Not covered: servers that compare paths case-insensitively (`/ADMIN`), or
//! that drop trailing dots and spaces from file names (`/admin.`). A route
//! meant to protect such a server should use a regex rule that covers those
//! spellings. A fold followed by yet another decode (`%25` followed by
//! fullwidth hex digits) is not refused either.
//!
//! ## Cost
//!
//! Most paths are already normal, so [`validate`] reads the input once. In
//! that one pass it checks every rule above and notes whether anything would
//! change. A path that needs no change is answered with one copy. Rules 7 to
//! 9 add no extra pass: double encoding is a few states carried byte to byte,
//! `;` is one byte compare, and the Unicode check runs only when the UTF-8
//! check completes a non-ASCII character (a binary search in a table of about
//! sixty characters). Only a path that must change goes on to [`rewrite`],
//! a second linear pass into a buffer allocated once with an exact upper
//! bound.

/// Why a request path was refused (the proxy answers 400). Each message
/// names what was wrong, as the client sent it.
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
    /// `%25` followed by two hex digits (or `u` and four): a second decode
    /// gives another byte.
    #[error("path is double-encoded ('%25' followed by an escape)")]
    DoubleEncoding,
    /// A raw `;`, which starts path parameters that some servers strip.
    #[error("path contains ';' (path parameters); send a literal ';' as %3B")]
    Semicolon,
    /// A character that Unicode folding or look-alike mapping turns into a
    /// path delimiter. With several, the first one in the path is named.
    #[error("path contains U+{:04X}, which some servers read as {reads_as:?}", u32::from(*character))]
    Confusable { character: char, reads_as: &'static str },
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
            Self::DoubleEncoding => 6,
            Self::Semicolon => 7,
            Self::Confusable { .. } => 8,
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

/// Checks rules 2 to 9 over the whole path and, in the same pass, notes
/// whether anything would have to change.
///
/// The scan does not stop at the first fault (except a malformed escape, which
/// outranks everything else) so that the highest-ranked fault is reported.
fn validate(bytes: &[u8]) -> Result<Scan, PathError> {
    let mut decoded = DecodedState::default();
    let mut worst: Option<PathError> = None;
    let mut already_normal = true;
    let mut non_ascii = 0;
    let mut segment_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let raw = bytes[i];
        let (byte, width) = if raw == b'%' { (decode_escape(bytes, i)?, 3) } else { (raw, 1) };
        if let Some(fault) = decoded.fault_of(raw, byte) {
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
    if !decoded.utf8.is_complete() {
        worst = Some(worse(worst, PathError::InvalidUtf8));
    }
    already_normal &= !is_dot_segment(&bytes[segment_start..]);
    match worst {
        Some(fault) => Err(fault),
        None => Ok(Scan { already_normal, non_ascii }),
    }
}

/// What the scan remembers about the decoded bytes seen so far.
#[derive(Default)]
struct DecodedState {
    utf8: Utf8Decoder,
    /// How far a second-level escape after the last decoded `%` has got
    /// (rule 7), if one is open: 0 just after `%`, 1 after one hex digit,
    /// 2 to 5 after `u` and 0 to 3 hex digits.
    after_percent: Option<u8>,
}

impl DecodedState {
    /// Returns the fault carried by one input unit, `raw` being its first
    /// input byte and `byte` its decoded value (the same unless `raw` is `%`).
    fn fault_of(&mut self, raw: u8, byte: u8) -> Option<PathError> {
        let double_encoded = self.double_encoding(byte);
        if byte == 0 {
            return Some(PathError::Nul);
        }
        let character = match self.utf8.push(byte) {
            Utf8Step::Invalid => return Some(PathError::InvalidUtf8),
            Utf8Step::Char(c) => Some(c),
            Utf8Step::Ascii | Utf8Step::Partial => None,
        };
        if raw == b'\\' {
            Some(PathError::Backslash)
        } else if raw == b'%' && matches!(byte, b'/' | b'\\') {
            Some(PathError::EncodedSeparator)
        } else if double_encoded {
            Some(PathError::DoubleEncoding)
        } else if raw == b';' {
            Some(PathError::Semicolon)
        } else {
            character.and_then(confusable)
        }
    }

    /// Rule 7: whether `byte` completes an escape after a decoded `%`: the
    /// second hex digit of `%XX`, or the fourth of IIS's `%uXXXX`. A raw `%`
    /// always starts an escape, so a decoded `%` came from `%25`.
    fn double_encoding(&mut self, byte: u8) -> bool {
        let hex = byte.is_ascii_hexdigit();
        let (next, found) = match (self.after_percent, byte) {
            (_, b'%') => (Some(0), false),
            (Some(0), b'u' | b'U') => (Some(2), false),
            (Some(0), _) if hex => (Some(1), false),
            (Some(1 | 5), _) if hex => (None, true),
            (Some(n @ 2..=4), _) if hex => (Some(n + 1), false),
            _ => (None, false),
        };
        self.after_percent = next;
        found
    }
}

/// Rule 9 for one decoded character.
fn confusable(character: char) -> Option<PathError> {
    let found = CONFUSABLES.binary_search_by_key(&character, |&(c, _)| c).ok()?;
    Some(PathError::Confusable { character, reads_as: CONFUSABLES[found].1 })
}

/// Non-ASCII characters that some server may read as a path delimiter, with
/// what it reads. Sorted by character, for the binary search.
///
/// These are every character whose NFKC form contains `.`, `/`, `\`, `%`,
/// `;`, `?` or `#` (Unicode 14 data, by `unicodedata.normalize('NFKC', c)`
/// over all code points), plus the look-alikes that best-fit code-page mappings and IDNA
/// turn into `/`, `\` or `.`.
const CONFUSABLES: &[(char, &str)] = &[
    ('\u{037E}', ";"),    // GREEK QUESTION MARK
    ('\u{2024}', "."),    // ONE DOT LEADER
    ('\u{2025}', ".."),   // TWO DOT LEADER
    ('\u{2026}', "..."),  // HORIZONTAL ELLIPSIS
    ('\u{2044}', "/"),    // FRACTION SLASH (look-alike)
    ('\u{2047}', "??"),   // DOUBLE QUESTION MARK
    ('\u{2048}', "?!"),   // QUESTION EXCLAMATION MARK
    ('\u{2049}', "!?"),   // EXCLAMATION QUESTION MARK
    ('\u{2100}', "a/c"),  // ACCOUNT OF
    ('\u{2101}', "a/s"),  // ADDRESSED TO THE SUBJECT
    ('\u{2105}', "c/o"),  // CARE OF
    ('\u{2106}', "c/u"),  // CADA UNA
    ('\u{2215}', "/"),    // DIVISION SLASH (look-alike)
    ('\u{2216}', "\\"),   // SET MINUS (look-alike)
    ('\u{2488}', "1."),   // DIGIT ONE FULL STOP
    ('\u{2489}', "2."),   // DIGIT TWO FULL STOP
    ('\u{248A}', "3."),   // DIGIT THREE FULL STOP
    ('\u{248B}', "4."),   // DIGIT FOUR FULL STOP
    ('\u{248C}', "5."),   // DIGIT FIVE FULL STOP
    ('\u{248D}', "6."),   // DIGIT SIX FULL STOP
    ('\u{248E}', "7."),   // DIGIT SEVEN FULL STOP
    ('\u{248F}', "8."),   // DIGIT EIGHT FULL STOP
    ('\u{2490}', "9."),   // DIGIT NINE FULL STOP
    ('\u{2491}', "10."),  // NUMBER TEN FULL STOP
    ('\u{2492}', "11."),  // NUMBER ELEVEN FULL STOP
    ('\u{2493}', "12."),  // NUMBER TWELVE FULL STOP
    ('\u{2494}', "13."),  // NUMBER THIRTEEN FULL STOP
    ('\u{2495}', "14."),  // NUMBER FOURTEEN FULL STOP
    ('\u{2496}', "15."),  // NUMBER FIFTEEN FULL STOP
    ('\u{2497}', "16."),  // NUMBER SIXTEEN FULL STOP
    ('\u{2498}', "17."),  // NUMBER SEVENTEEN FULL STOP
    ('\u{2499}', "18."),  // NUMBER EIGHTEEN FULL STOP
    ('\u{249A}', "19."),  // NUMBER NINETEEN FULL STOP
    ('\u{249B}', "20."),  // NUMBER TWENTY FULL STOP
    ('\u{29F5}', "\\"),   // REVERSE SOLIDUS OPERATOR (look-alike)
    ('\u{29F8}', "/"),    // BIG SOLIDUS (look-alike)
    ('\u{29F9}', "\\"),   // BIG REVERSE SOLIDUS (look-alike)
    ('\u{3002}', "."),    // IDEOGRAPHIC FULL STOP (look-alike)
    ('\u{33C2}', "a.m."), // SQUARE AM
    ('\u{33C7}', "Co."),  // SQUARE CO
    ('\u{33D8}', "p.m."), // SQUARE PM
    ('\u{FE14}', ";"),    // PRESENTATION FORM FOR VERTICAL SEMICOLON
    ('\u{FE16}', "?"),    // PRESENTATION FORM FOR VERTICAL QUESTION MARK
    ('\u{FE19}', "..."),  // PRESENTATION FORM FOR VERTICAL HORIZONTAL ELLIPSIS
    ('\u{FE30}', ".."),   // PRESENTATION FORM FOR VERTICAL TWO DOT LEADER
    ('\u{FE52}', "."),    // SMALL FULL STOP
    ('\u{FE54}', ";"),    // SMALL SEMICOLON
    ('\u{FE56}', "?"),    // SMALL QUESTION MARK
    ('\u{FE5F}', "#"),    // SMALL NUMBER SIGN
    ('\u{FE68}', "\\"),   // SMALL REVERSE SOLIDUS
    ('\u{FE6A}', "%"),    // SMALL PERCENT SIGN
    ('\u{FF03}', "#"),    // FULLWIDTH NUMBER SIGN
    ('\u{FF05}', "%"),    // FULLWIDTH PERCENT SIGN
    ('\u{FF0E}', "."),    // FULLWIDTH FULL STOP
    ('\u{FF0F}', "/"),    // FULLWIDTH SOLIDUS
    ('\u{FF1B}', ";"),    // FULLWIDTH SEMICOLON
    ('\u{FF1F}', "?"),    // FULLWIDTH QUESTION MARK
    ('\u{FF3C}', "\\"),   // FULLWIDTH REVERSE SOLIDUS
    ('\u{FF61}', "."),    // HALFWIDTH IDEOGRAPHIC FULL STOP (look-alike)
    ('\u{1F100}', "0."),  // DIGIT ZERO FULL STOP
];

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

/// Streaming UTF-8 decoder over the decoded bytes.
///
/// `str::from_utf8` would need the decoded bytes in a buffer of their own;
/// this follows the well-formed byte sequences table (Unicode §3.9, table
/// 3-7) byte by byte instead, which rejects overlong forms such as `C0 AE`
/// and `E0 80 AE`, surrogates, code points above U+10FFFF and stray
/// continuation bytes. It also hands back each completed non-ASCII character
/// for rule 9.
#[derive(Default)]
struct Utf8Decoder {
    /// Continuation bytes still expected.
    pending: u8,
    /// Inclusive range allowed for the next continuation byte.
    low: u8,
    high: u8,
    /// The bits of the character so far.
    code_point: u32,
}

/// What one byte did to the [`Utf8Decoder`].
enum Utf8Step {
    Ascii,
    /// A multi-byte sequence started or went on, and is not complete yet.
    Partial,
    /// A multi-byte sequence completed this character.
    Char(char),
    /// The sequence is ill-formed.
    Invalid,
}

impl Utf8Decoder {
    /// Feeds one byte. After [`Utf8Step::Invalid`] the state is reset so
    /// that scanning can go on looking for other faults.
    fn push(&mut self, byte: u8) -> Utf8Step {
        if self.pending > 0 {
            return self.continuation(byte);
        }
        let (pending, low, high) = match byte {
            0x00..=0x7F => return Utf8Step::Ascii,
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Utf8Step::Invalid,
        };
        // The lead byte keeps 5, 4 or 3 bits for 1, 2 or 3 continuations.
        let code_point = u32::from(byte & (0x3F >> pending));
        *self = Self { pending, low, high, code_point };
        Utf8Step::Partial
    }

    fn continuation(&mut self, byte: u8) -> Utf8Step {
        if !(self.low..=self.high).contains(&byte) {
            *self = Self::default();
            return Utf8Step::Invalid;
        }
        self.pending -= 1;
        self.low = 0x80;
        self.high = 0xBF;
        self.code_point = self.code_point << 6 | u32::from(byte & 0x3F);
        if self.pending > 0 {
            return Utf8Step::Partial;
        }
        // The table above admits only scalar values.
        char::from_u32(self.code_point).map_or(Utf8Step::Invalid, Utf8Step::Char)
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
        ("/100%25up", "/100%25up"),
        ("/%25u", "/%25u"),
        ("/%25u00/x", "/%25u00/x"),
        ("/%25u002", "/%25u002"),
        ("/a/b..", "/a/b.."),
        ("/a/.b", "/a/.b"),
        ("/%2e", "/"),
        ("/%2e%2e/%2e%2e/etc", "/etc"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        // Catalogue A.2 and A.4: dot segments and slashes merged before matching.
        ("/pub/../admin", "/admin"),
        ("/pub/%2e%2e/admin", "/admin"),
        ("/pub//../admin", "/admin"),
        // A.5: `%23` is data, not a fragment.
        ("/foo/secret%23/bar", "/foo/secret%23/bar"),
        // An encoded `;` is data to every server, parameter-stripping or not.
        ("/a%3Bb", "/a%3Bb"),
        ("/a%3bb", "/a%3Bb"),
        ("/pub/..%3B/admin", "/pub/..%3B/admin"),
        // `%25` not followed by two hex digits is a literal percent sign.
        ("/100%25", "/100%25"),
        ("/%25off", "/%25off"),
        ("/%252", "/%252"),
        ("/%25%25", "/%25%25"),
        ("/50%25/2e", "/50%25/2e"),
        ("/%25x41", "/%25x41"),
        // Non-ASCII that folds to nothing structural stays accepted.
        ("/%E3%80%81", "/%E3%80%81"),
        ("/\u{BD}", "/%C2%BD"),
        ("/\u{FF21}", "/%EF%BC%A1"),
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
        // Rule 7: double encoding, however the escape itself is spelled.
        ("/pub/%252e%252e/admin", PathError::DoubleEncoding),
        ("/%252f", PathError::DoubleEncoding),
        ("/%252F..%252Fadmin", PathError::DoubleEncoding),
        ("/%255c", PathError::DoubleEncoding),
        ("/%2500", PathError::DoubleEncoding),
        ("/%2541", PathError::DoubleEncoding),
        ("/a%25Fb", PathError::DoubleEncoding),
        ("/%25%32%65", PathError::DoubleEncoding),
        ("/%25%32e", PathError::DoubleEncoding),
        ("/%25EF%25BC%258E", PathError::DoubleEncoding),
        ("/pub/%25u002e%25u002e/admin", PathError::DoubleEncoding),
        ("/%25U002F", PathError::DoubleEncoding),
        ("/%25%75%30%30%32%65", PathError::DoubleEncoding),
        ("/%25uFF0E", PathError::DoubleEncoding),
        ("/%25u%25u002e", PathError::DoubleEncoding),
        // Rule 8: raw `;`, with or without a dot segment in front.
        ("/a/..;x=1/admin", PathError::Semicolon),
        ("/pub/..;/admin", PathError::Semicolon),
        ("/pub/.;/admin", PathError::Semicolon),
        ("/pub/%2e%2e;/admin", PathError::Semicolon),
        ("/;x/admin", PathError::Semicolon),
        ("/admin;jsessionid=1", PathError::Semicolon),
        ("/a;", PathError::Semicolon),
        ("/a:b@c!$&'()*+,;=", PathError::Semicolon),
        // Rule 9: characters that fold or map to delimiters, raw or encoded.
        ("/pub/\u{FF0E}\u{FF0E}/admin", confusable('\u{FF0E}', ".")),
        ("/pub/%EF%BC%8E%EF%BC%8E/admin", confusable('\u{FF0E}', ".")),
        ("/pub/%ef%bc%8e./admin", confusable('\u{FF0E}', ".")),
        ("/pub\u{FF0F}..\u{FF0F}admin", confusable('\u{FF0F}', "/")),
        ("/pub%EF%BC%8F..%EF%BC%8Fadmin", confusable('\u{FF0F}', "/")),
        ("/pub\u{FF3C}admin", confusable('\u{FF3C}', "\\")),
        ("/pub/\u{2024}\u{2024}/admin", confusable('\u{2024}', ".")),
        ("/pub/\u{2025}/admin", confusable('\u{2025}', "..")),
        ("/pub/\u{FE52}\u{FE52}/admin", confusable('\u{FE52}', ".")),
        ("/pub\u{2215}admin", confusable('\u{2215}', "/")),
        ("/pub\u{2044}admin", confusable('\u{2044}', "/")),
        ("/pub\u{FF05}2e\u{FF05}2e", confusable('\u{FF05}', "%")),
        ("/admin\u{FF1B}x", confusable('\u{FF1B}', ";")),
        ("/admin\u{37E}x", confusable('\u{37E}', ";")),
        ("/pub/\u{3002}\u{3002}/admin", confusable('\u{3002}', ".")),
        ("/\u{1F100}", confusable('\u{1F100}', "0.")),
        ("/admin\u{FF1F}x", confusable('\u{FF1F}', "?")),
        ("/admin%EF%BC%9Fx", confusable('\u{FF1F}', "?")),
        ("/admin\u{FF03}/public", confusable('\u{FF03}', "#")),
        ("/admin\u{FE56}", confusable('\u{FE56}', "?")),
        // Several faults of the new rules: still the earliest rule.
        ("/%252e;", PathError::DoubleEncoding),
        ("/\u{FF0E};", PathError::Semicolon),
        ("/;%2541", PathError::DoubleEncoding),
        ("/\u{FF0E}%2F", PathError::EncodedSeparator),
        ("/%2541\\", PathError::Backslash),
        ("/\u{FF0F}\u{FF0E}", confusable('\u{FF0F}', "/")),
    ];

    const fn confusable(character: char, reads_as: &'static str) -> PathError {
        PathError::Confusable { character, reads_as }
    }

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
        assert_eq!(PathError::DoubleEncoding.to_string(), "path is double-encoded ('%25' followed by an escape)");
        assert_eq!(PathError::Semicolon.to_string(), "path contains ';' (path parameters); send a literal ';' as %3B");
        assert_eq!(confusable('\u{FF0E}', ".").to_string(), "path contains U+FF0E, which some servers read as \".\"");
        assert_eq!(
            confusable('\u{FF3C}', "\\").to_string(),
            "path contains U+FF3C, which some servers read as \"\\\\\""
        );
    }

    #[test]
    fn confusables_are_sorted_non_ascii_and_name_a_delimiter() {
        assert!(CONFUSABLES.windows(2).all(|w| w[0].0 < w[1].0), "sorted for binary search");
        for (c, reads_as) in CONFUSABLES {
            assert!(!c.is_ascii(), "{c:?}");
            assert!(reads_as.contains(['.', '/', '\\', '%', ';', '?', '#']), "{c:?} reads as {reads_as:?}");
        }
    }

    /// Every listed character is refused wherever it sits, raw, encoded in
    /// uppercase and in lowercase, and is the one the error names.
    #[test]
    fn every_confusable_is_refused_raw_and_encoded() {
        for &(c, reads_as) in CONFUSABLES {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            let upper: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
            let lower = upper.to_ascii_lowercase();
            for form in [c.to_string(), upper, lower] {
                for input in [format!("/{form}"), format!("/pub/{form}{form}/admin"), format!("/a{form}b/")] {
                    assert_eq!(normalize(&input), Err(confusable(c, reads_as)), "input {input:?}");
                }
            }
        }
    }

    /// A property test without a property-testing crate: random paths built
    /// from pieces that matter to the rules, from a fixed seed so a failure
    /// reproduces. Whatever is accepted must be a fixed point, take the fast
    /// path, and, decoded once more, show no separator, dot segment, escape
    /// or folding character that was not visible in it.
    #[test]
    fn random_paths_are_unambiguous_once_normal() {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2e%2e",
            "a",
            "admin",
            "%61",
            "%41",
            "é",
            "%C3%A9",
            "%c3%a9",
            "~",
            "%7e",
            "%25",
            "%252e",
            "%252f",
            "%25%32%65",
            "%25u",
            "u",
            "002e",
            "%32",
            "%65",
            "2",
            "e",
            "f",
            "%3B",
            "%3b",
            ";",
            "x=1",
            "%23",
            "%20",
            ":",
            "\u{FF0E}",
            "%EF%BC%8E",
            "%EF%BC",
            "%8E",
            "\u{2024}",
            "\u{FF0F}",
            "\u{BD}",
            "%2F",
            "%5C",
            "\\",
            "%00",
            "%C0%AE",
            "%",
            "%zz",
            "%E3%80%82",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: fast, deterministic, good enough to pick pieces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..100_000 {
            let mut input = String::from("/");
            for _ in 0..1 + next() % 8 {
                input.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            match normalize(&input) {
                Ok(once) => {
                    accepted += 1;
                    assert_invariants(&input, &once);
                    assert_unambiguous(&input, &once);
                }
                Err(_) => refused += 1,
            }
        }
        assert!(accepted > 10_000 && refused > 10_000, "accepted {accepted}, refused {refused}");
    }

    /// Decoding `once` one more time, segment by segment, must not create
    /// structure: no separator, no dot segment, no escape, no NUL, no
    /// character some server folds into a delimiter.
    fn assert_unambiguous(input: &str, once: &str) {
        assert!(validate(once.as_bytes()).is_ok_and(|s| s.already_normal), "{input:?} -> {once:?}");
        assert!(!once.contains([';', '\\']), "{input:?} -> {once:?}");
        for segment in once.split('/') {
            let decoded = decode_once(segment);
            let context = format!("{input:?} -> {once:?}, segment {segment:?} decodes to {decoded:?}");
            assert!(!decoded.contains(['/', '\\', '\0']), "{context}");
            assert!(decoded != "." && decoded != "..", "{context}");
            let bytes = decoded.as_bytes();
            let escape = bytes.windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit());
            assert!(!escape, "{context}");
            let iis_escape = bytes
                .windows(6)
                .any(|w| w[0] == b'%' && w[1].eq_ignore_ascii_case(&b'u') && w[2..].iter().all(u8::is_ascii_hexdigit));
            assert!(!iis_escape, "{context}");
            assert!(!decoded.contains(['\u{FF0E}', '\u{FF0F}', '\u{FF3C}', '\u{2024}', '\u{3002}']), "{context}");
        }
    }

    /// Plain percent-decoding, as an upstream would do it.
    fn decode_once(segment: &str) -> String {
        let bytes = segment.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(decode_escape(bytes, i).expect("normal form has only valid escapes"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("normal form decodes to UTF-8")
    }
}
