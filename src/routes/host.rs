//! The host a request is for, from its `Host` header or `:authority`.
//!
//! Read on every request, so it is a single pass over the bytes with no
//! allocation until the (already lowercase, in practice) result is copied;
//! `http::uri::Authority` would copy the text, scan it three times (`@`,
//! `:`, brackets) and accept userinfo, which a `Host` never carries.

/// Splits `host[:port]` into the host and the port. `None` when it is not a
/// valid `Host` value (RFC 9110 §7.2: `uri-host [":" port]`): empty host,
/// userinfo, a port that is not a number that fits in 16 bits, or a byte
/// that no host may contain. An empty port (`example.com:`) means none, as
/// RFC 3986 allows. IPv6 literals keep their brackets.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        if !host[1..end - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if !host.bytes().all(is_reg_name_byte) {
            return None;
        }
        (host, port)
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// RFC 3986 `reg-name`: unreserved, sub-delims and percent-encoding.
fn is_reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// [`is_reg_name_byte`] as a table: every request's host goes through it.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn splits_hosts_ports_and_ipv6_literals() {
        assert_eq!(split_host_port("app.example.com"), Some(("app.example.com", None)));
        assert_eq!(split_host_port("App.Example.com:8443"), Some(("App.Example.com", Some(8443))));
        assert_eq!(split_host_port("example.com:"), Some(("example.com", None)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("[::1]", Some(8080))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("127.0.0.1:80"), Some(("127.0.0.1", Some(80))));
    }

    #[test]
    fn refuses_what_no_host_header_may_be() {
        for bad in [
            "",
            ":80",
            "user@example.com",
            "example.com:99999",
            "example.com:+80",
            "example.com:8a",
            "exa mple.com",
            "example.com/x",
            "::1",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "a\u{e9}.example.com",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
    }
}
