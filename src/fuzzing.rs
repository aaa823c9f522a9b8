//! Entry points for the `cargo-fuzz` targets in `fuzz/` (feature `fuzzing`).
//!
//! Thin wrappers only: each hands fuzzer input to the real parser, checker
//! or codec and returns what the target needs to check its invariants. No
//! logic of the wrapped code is repeated here, so a finding is always a
//! finding in the code the proxy runs. Not part of the public API.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::auth::redirect;
use crate::auth::seal::{Purpose, Sealer};
use crate::auth::session::Session;
use crate::config::{self, Origin};
use crate::identity::Identity;
use crate::k8s::annotations;
use crate::policy::{Decision, Policy, PolicySpec, Request};

/// The file name [`parse_config`] parses under; every message it returns
/// starts with it.
pub const CONFIG_FILE: &str = "fuzz.yaml";

/// Parses config file text (`config::parse`, as `postern --config` reads
/// it). `Ok` holds the number of routes and the problems of routes left
/// out; `Err` the messages the file is refused with (one per problem for
/// `Error::Invalid`), each as the operator would read it.
pub fn parse_config(text: &str) -> Result<(usize, Vec<String>), Vec<String>> {
    match config::parse(CONFIG_FILE, text, Path::new("/nonexistent")) {
        Ok(c) => Ok((c.routes.len(), c.problems.iter().map(ToString::to_string).collect())),
        Err(config::Error::Invalid { problems, .. }) => Err(problems.iter().map(ToString::to_string).collect()),
        Err(e) => Err(vec![e.to_string()]),
    }
}

/// The object [`read_annotations`] reads as; every problem it returns
/// starts with it.
pub const ANNOTATED_OBJECT: &str = "Ingress fuzz/fuzz";

/// Reads an Ingress's annotations (`k8s::annotations::read`) and checks the
/// route keys they give as the translator does (`config::route_from_keys`,
/// with the spec's `from` and `to` filled in). Returns the route keys read,
/// whether the route was accepted, and every problem found.
pub fn read_annotations(pairs: &BTreeMap<String, String>) -> (Map<String, Value>, bool, Vec<String>) {
    let origin = Origin::Object { kind: "Ingress", namespace: "fuzz".into(), name: "fuzz".into() };
    let mut problems = Vec::new();
    let read = annotations::read(&origin, pairs, &mut problems);
    let mut keys = read.keys.clone();
    keys.insert("from".into(), Value::String("https://app.example.com".into()));
    keys.insert("to".into(), Value::String("http://web.fuzz.svc:80".into()));
    let accepted = config::route_from_keys(&origin, keys, &mut problems).is_some();
    (read.keys, accepted, problems.iter().map(ToString::to_string).collect())
}

/// The request-path normalizer (`routes::path::normalize`).
pub fn normalize_path(raw: &str) -> Result<String, String> {
    crate::routes::path::normalize(raw).map_err(|e| e.to_string())
}

/// The origin [`validate_return_url`] resolves paths against.
pub const RETURN_URL_ORIGIN: &str = "https://app.example.com";

/// The route hosts [`validate_return_url`] allows.
pub const RETURN_URL_HOSTS: &[&str] = &["app.example.com", "api.example.com"];

/// The sign-in return-URL validator (`auth::redirect::validate`) with
/// [`RETURN_URL_ORIGIN`] as the current origin and [`RETURN_URL_HOSTS`] as
/// the route hosts.
pub fn validate_return_url(raw: &str) -> Result<String, String> {
    redirect::validate(raw, Some(RETURN_URL_ORIGIN), |h| RETURN_URL_HOSTS.contains(&h)).map_err(|e| e.to_string())
}

/// The session cookie codec (`Sealer` with `Purpose::Session`, decoding
/// into `Session`), under a fixed key.
pub struct SessionCodec(Sealer);

/// A session cookie that opened.
pub struct DecodedSession(Session);

impl SessionCodec {
    pub fn new() -> Self {
        Self(Sealer::new(&[7; 32]))
    }

    /// Decodes a cookie value as the proxy does for each credential.
    pub fn open(&self, token: &str) -> Option<DecodedSession> {
        self.0.open::<Session>(Purpose::Session, token).ok().map(DecodedSession)
    }

    /// Seals an arbitrary JSON payload under the session key, so the fuzzer
    /// can reach the payload decoding behind the authentication tag.
    pub fn seal_json(&self, payload: &Value) -> String {
        self.0.seal(Purpose::Session, payload)
    }

    /// Encodes a session as the proxy sets it in the cookie.
    pub fn seal(&self, session: &DecodedSession) -> String {
        self.0.seal(Purpose::Session, &session.0)
    }
}

impl Default for SessionCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl DecodedSession {
    /// The session as JSON, for comparing two decodings.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).expect("a session serializes")
    }
}

/// Compiles a route's `policy:` value given as YAML or JSON text
/// (`Policy::compile`), with the other policy keys set from `flags` bits:
/// 1 public, 2 any authenticated user, 4 an `allowed_users` entry, 8 an
/// `allowed_domains` entry. `Ok` holds the decisions for a fixed set of
/// requests (see [`PROBE_REQUESTS`]).
pub fn compile_policy(text: &str, flags: u8) -> Result<Vec<bool>, String> {
    let value = config::parse_yaml_value(text)?;
    let users = if flags & 4 != 0 { vec!["alice@example.com".to_string()] } else { Vec::new() };
    let domains = if flags & 8 != 0 { vec!["example.com".to_string()] } else { Vec::new() };
    let spec = PolicySpec {
        allow_public_unauthenticated_access: flags & 1 != 0,
        allow_any_authenticated_user: flags & 2 != 0,
        allowed_users: &users,
        allowed_domains: &domains,
        policy: (!value.is_null()).then_some(&value),
    };
    let policy = Policy::compile(&spec).map_err(|e| format!("{}: {}", e.path, e.message))?;
    Ok(probe(&policy))
}

/// How many requests [`compile_policy`] evaluates: (anonymous, alice, bob)
/// × (`GET /`, `POST /admin/x`, a CORS preflight).
pub const PROBE_REQUESTS: usize = 9;

fn probe(policy: &Policy) -> Vec<bool> {
    let alice = identity("alice", "alice@example.com", &["admins"]);
    let bob = identity("bob", "bob@other.example", &[]);
    let mut out = Vec::with_capacity(PROBE_REQUESTS);
    for who in [None, Some(&alice), Some(&bob)] {
        for (method, path, cors_preflight) in [("GET", "/", false), ("POST", "/admin/x", false), ("OPTIONS", "/", true)]
        {
            let req = Request { identity: who, method, path, cors_preflight };
            out.push(policy.evaluate(&req) == Decision::Allow);
        }
    }
    out
}

fn identity(subject: &str, email: &str, groups: &[&str]) -> Identity {
    let mut claims = Map::new();
    claims.insert("groups".into(), Value::from(groups.to_vec()));
    claims.insert("level".into(), Value::from(3));
    Identity {
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: true,
        name: Some(subject.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims,
    }
}
