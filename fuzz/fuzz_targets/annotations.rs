//! Ingress annotations: the reader and the route check never panic, no
//! annotation ever sets a key the Ingress spec owns, every problem names
//! the object, and a route that is refused has at least one problem.
//!
//! Input: one annotation per line, `name=value`; a line starting with a
//! space or a tab continues the previous value (joined with `\n`), so
//! multi-line YAML values can be written. A name without `/` gets the
//! `postern.dev/` prefix.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use postern::fuzzing::{self, ANNOTATED_OBJECT};

const FROM_SPEC: &[&str] = &["from", "to", "prefix", "path", "regex", "response"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut pairs: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|name| pairs.get_mut(name)) {
                value.push('\n');
                value.push_str(line);
            }
            continue;
        }
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let name = if name.contains('/') { name.to_string() } else { format!("postern.dev/{name}") };
        pairs.insert(name.clone(), value.to_string());
        last = Some(name);
    }
    let (keys, accepted, problems) = fuzzing::read_annotations(&pairs);
    for key in keys.keys() {
        assert!(!FROM_SPEC.contains(&key.as_str()), "annotation set spec key {key:?}");
    }
    assert!(accepted || !problems.is_empty(), "route refused with no problem");
    for p in &problems {
        assert!(p.starts_with(ANNOTATED_OBJECT), "problem names no object: {p:?}");
    }
});
