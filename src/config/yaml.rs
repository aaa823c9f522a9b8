//! YAML text → a JSON value tree plus a map from key paths to source positions.
//!
//! serde deserializes from the `serde_json::Value`; errors carry a key path
//! (`routes[2].to`), and [`SourceMap`] turns that path back into the line and
//! column the user has to edit. yaml-rust2 is used at the event level because
//! it is maintained and reports a position for every event.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the source text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Key path (`routes[2].to`) → where that key (or sequence item) starts.
#[derive(Debug, Default)]
pub struct SourceMap {
    positions: HashMap<String, Position>,
}

impl SourceMap {
    /// The position of `path`, or of its closest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return Some(*p);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(message) = builder.error {
        return Err(message);
    }
    let root = builder.root.unwrap_or_else(|| Value::Object(Map::new()));
    Ok((root, builder.map))
}

/// A container being filled; mappings alternate key and value events.
enum Frame {
    Seq { items: Vec<Value>, path: String, anchor: usize },
    Map { entries: Map<String, Value>, pending_key: Option<String>, path: String, anchor: usize },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    root: Option<Value>,
    map: SourceMap,
    anchors: HashMap<usize, Value>,
    error: Option<SyntaxError>,
    documents: usize,
}

impl TreeBuilder {
    /// The key path the next value will have, recording where it starts.
    fn child_path(&mut self, mark: Marker) -> String {
        let path = match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map { pending_key: Some(key), path, .. }) => {
                if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                }
            }
            // Keys themselves are scalars and never need a path.
            Some(Frame::Map { .. }) => return String::new(),
        };
        // Sequence items are located by their own start; mapping values by the key.
        if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
            self.map.positions.entry(path.clone()).or_insert(Position { line: mark.line(), column: mark.col() + 1 });
        }
        path
    }

    fn fail(&mut self, mark: Marker, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { line: mark.line(), column: mark.col() + 1, message: message.into() });
        }
    }

    /// Places a finished value into the enclosing container (or as the root).
    fn place(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { entries, pending_key, path, .. }) => match pending_key.take() {
                Some(key) => {
                    entries.insert(key, value);
                }
                None => {
                    let key = match value {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            self.fail(mark, "mapping keys must be plain strings");
                            return;
                        }
                    };
                    if entries.contains_key(&key) {
                        let message = format!("duplicate key `{key}`");
                        self.fail(mark, message);
                        return;
                    }
                    let at = Position { line: mark.line(), column: mark.col() + 1 };
                    // A block mapping in a list is marked after its first key;
                    // the first key is where the user sees the item begin.
                    if entries.is_empty() && path.ends_with(']') {
                        self.map.positions.insert(path.clone(), at);
                    }
                    let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    self.map.positions.insert(full, at);
                    *pending_key = Some(key);
                }
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                self.child_path(mark);
                let value = if style == TScalarStyle::Plain { resolve_plain(text) } else { Value::String(text) };
                self.place(value, anchor, mark);
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.child_path(mark);
                self.stack.push(Frame::Seq { items: Vec::new(), path, anchor });
            }
            Event::MappingStart(anchor, _) => {
                let path = self.child_path(mark);
                self.stack.push(Frame::Map { entries: Map::new(), pending_key: None, path, anchor });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
                    Some(Frame::Map { entries, anchor, .. }) => (Value::Object(entries), anchor),
                    None => return,
                };
                self.place(value, anchor, mark);
            }
            Event::Alias(id) => {
                self.child_path(mark);
                match self.anchors.get(&id).cloned() {
                    Some(value) => self.place(value, 0, mark),
                    None => self.fail(mark, "alias to an unknown anchor"),
                }
            }
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(mark, "only one YAML document is allowed (found a second `---`)");
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// YAML 1.2 core schema resolution for plain (unquoted) scalars.
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if text.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

/// `value` as a YAML document (`---` first), for generated manifests such
/// as the CRD. Key order is kept.
pub fn to_yaml(value: &Value) -> String {
    fn convert(v: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            Value::Object(map) => Yaml::Hash(map.iter().map(|(k, v)| (Yaml::String(k.clone()), convert(v))).collect()),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    emitter.dump(&convert(value)).expect("writing YAML into a String cannot fail");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_positions_of_keys_and_items() {
        let text = "address: :443\nroutes:\n  - from: https://a\n    to: http://b\n  - from: https://c\n";
        let (value, map) = parse(text).expect("valid yaml");
        assert_eq!(value["routes"][1]["from"], "https://c");
        assert_eq!(map.locate("address"), Some(Position { line: 1, column: 1 }));
        assert_eq!(map.locate("routes[0].to"), Some(Position { line: 4, column: 5 }));
        assert_eq!(map.locate("routes[1]"), Some(Position { line: 5, column: 5 }));
        assert_eq!(map.locate("routes[1].nope"), Some(Position { line: 5, column: 5 }));
    }

    #[test]
    fn resolves_plain_scalars_but_keeps_quoted_strings() {
        let (value, _) = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 30s\n").expect("valid yaml");
        assert_eq!(value["a"], 1);
        assert_eq!(value["b"], "1");
        assert_eq!(value["c"], true);
        assert!(value["d"].is_null());
        assert_eq!(value["e"], 1.5);
        assert_eq!(value["f"], "30s");
    }

    #[test]
    fn reports_syntax_errors_and_duplicate_keys_with_position() {
        let err = parse("a: [1, 2\n").expect_err("unterminated flow sequence");
        assert_eq!(err.line, 2);
        let err = parse("a: 1\nb: 2\na: 3\n").expect_err("duplicate key");
        assert_eq!((err.line, err.column), (3, 1));
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn expands_aliases() {
        let (value, _) = parse("x: &h {a: b}\ny: *h\n").expect("valid yaml");
        assert_eq!(value["y"]["a"], "b");
    }
}
