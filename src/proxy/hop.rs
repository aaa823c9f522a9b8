//! Hop-by-hop headers (RFC 9110 §7.6.1): what never crosses the proxy, in
//! either direction. Both upstream paths apply these rules: the hyper
//! client path (`forward.rs`) on whole header maps, and the direct
//! exchange (`direct.rs`) while it reads a response head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` is a hop-by-hop header (not counting those a
/// `Connection` header names).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers and any header named in `Connection`. A
/// `TE: trailers` survives, as gRPC over HTTP/2 requires it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the headers finds which hop-by-hop names are present
    // (usually none, or `Connection: keep-alive` on responses) and what
    // `Connection` lists; only those are then removed.
    let mut present = 0u16;
    let mut named: Vec<HeaderName> = Vec::new();
    let mut keep_te = false;
    for (name, value) in headers.iter() {
        let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) else {
            continue;
        };
        present |= 1 << i;
        if name == header::CONNECTION {
            named.extend(connection_named_headers(value.as_bytes()));
        } else if name == header::TE {
            keep_te |= value.as_bytes().eq_ignore_ascii_case(b"trailers");
        }
    }
    if present == 0 {
        return;
    }
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The extra headers a `Connection` value names. `keep-alive` and `close`
/// are the usual tokens: options, not headers to look for.
pub(crate) fn connection_named_headers(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| !HOP_BY_HOP.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.get(header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-kept").is_some());
    }
}
