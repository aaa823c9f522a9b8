//! The open-redirect payload list (`tests/open_redirect_payloads.txt`),
//! shared by the return-URL unit tests and the end-to-end attack tests.
//! Lines are payloads; `#` starts a comment; `\t \n \r \0 \\ \xHH \u{H..}`
//! are escapes; `{port}` is the proxy's port.

/// The payloads of `tests/open_redirect_payloads.txt`, escapes decoded and
/// `{port}` replaced.
pub fn payloads(port: u16) -> Vec<String> {
    let text = include_str!("../open_redirect_payloads.txt");
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| decode_escapes(l).replace("{port}", &port.to_string()))
        .collect()
}

fn decode_escapes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.peek().copied() {
            Some('t') => Some('\t'),
            Some('n') => Some('\n'),
            Some('r') => Some('\r'),
            Some('0') => Some('\0'),
            Some('\\') => Some('\\'),
            Some('x') => {
                chars.next();
                let hex: String = [chars.next(), chars.next()].into_iter().flatten().collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).expect("\\xHH")));
                continue;
            }
            Some('u') => {
                chars.next();
                assert_eq!(chars.next(), Some('{'), "\\u{{...}} in {line:?}");
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).expect("hex")).expect("code point"));
                continue;
            }
            _ => None,
        };
        match decoded {
            Some(d) => {
                chars.next();
                out.push(d);
            }
            None => out.push('\\'),
        }
    }
    out
}
