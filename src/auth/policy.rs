//! Per-route authorization policy, in Pomerium's policy language (PPL).
//!
//! A route's policy comes from its keys `allow_public_unauthenticated_access`,
//! `allow_any_authenticated_user`, `allowed_users`, `allowed_domains` and
//! `policy` (PPL). [`Policy::compile`] validates all of them once, when the
//! configuration loads, so that mistakes are reported with their exact path
//! instead of silently denying (or allowing) requests later; the compiled
//! [`Policy`] is then evaluated per request without allocating.
//!
//! Semantics, following Pomerium where it has an answer:
//!
//! - `deny` wins over `allow`; a request that no allow condition matches is denied.
//! - `allow_public_unauthenticated_access` allows everything and therefore may
//!   not be combined with any other allow setting or with `policy` (it would
//!   make them dead configuration).
//! - Criteria about the user (`authenticated_user`, `email`, `user`, `domain`,
//!   `claim/*`) are false when the request has no identity. As in Pomerium this
//!   means `not`/`nor` over such criteria is *true* for anonymous requests;
//!   combine them with `authenticated_user: true` when that is not wanted.
//! - The email-derived criteria (`email`, `domain`, `allowed_users` by email,
//!   `allowed_domains`) only see an email the IdP verified: an unverified
//!   address is whatever the user typed, so it must not grant (or be trusted
//!   to identify someone for) access. `claim/email` is the raw claim.
//! - Email, domain and HTTP method comparisons ignore ASCII case (domains and
//!   methods are case-insensitive; email providers treat addresses that way in
//!   practice); `user`, `http_path` and claims compare exactly.
//! - String matchers (`is`, `starts_with`, `ends_with`, `contains`, `in`,
//!   `not_in`) apply to string values; `has` applies to list values only.
//!   A plain value given for a claim is compared as a JSON scalar, or checked
//!   for membership when the claim is a list.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::identity::Identity;

/// A policy that cannot be compiled, with the configuration path of the
/// offending value so the operator can find it in a large file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub(crate) struct PolicyError {
    pub path: String,
    pub message: String,
}

impl PolicyError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError { path: path.into(), message: message.into() }
    }
}

/// The policy-related keys of one route, borrowed from the parsed configuration.
#[derive(Debug, Default, Clone)]
pub(crate) struct PolicySpec<'a> {
    pub allow_public_unauthenticated_access: bool,
    pub allow_any_authenticated_user: bool,
    pub allowed_users: &'a [String],
    pub allowed_domains: &'a [String],
    /// The route's `policy:` value, already parsed from YAML by the caller.
    pub policy: Option<&'a Value>,
}

/// What policy may look at in a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The signed-in user, if any.
    pub identity: Option<&'a Identity>,
    /// The HTTP method as received.
    pub method: &'a str,
    /// The request path (without query), matched as given; normalizing it is the
    /// caller's job so that every route matcher sees the same path.
    pub path: &'a str,
    /// Whether this is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), which browsers send without credentials.
    pub cors_preflight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
}

/// A compiled route policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    public: bool,
    /// The request is allowed when any of these holds (and no deny does).
    allow: Vec<Expr>,
    /// The request is denied when any of these holds, whatever `allow` says.
    deny: Vec<Expr>,
}

impl Policy {
    /// Validates `spec` and compiles it; the first problem found is returned.
    pub(crate) fn compile(spec: &PolicySpec<'_>) -> Result<Policy, PolicyError> {
        if spec.allow_public_unauthenticated_access {
            let others: Vec<&str> = [
                (spec.allow_any_authenticated_user, "allow_any_authenticated_user"),
                (!spec.allowed_users.is_empty(), "allowed_users"),
                (!spec.allowed_domains.is_empty(), "allowed_domains"),
                (spec.policy.is_some(), "policy"),
            ]
            .into_iter()
            .filter_map(|(set, key)| set.then_some(key))
            .collect();
            if !others.is_empty() {
                return Err(PolicyError::new(
                    "allow_public_unauthenticated_access",
                    format!(
                        "cannot be combined with {}: a public route allows every request, so they would never apply",
                        others.join(", ")
                    ),
                ));
            }
            return Ok(Policy { public: true, allow: Vec::new(), deny: Vec::new() });
        }

        let mut policy = Policy { public: false, allow: Vec::new(), deny: Vec::new() };
        if spec.allow_any_authenticated_user {
            policy.allow.push(Expr::AuthenticatedUser);
        }
        if !spec.allowed_users.is_empty() {
            for (i, user) in spec.allowed_users.iter().enumerate() {
                if user.trim().is_empty() {
                    return Err(PolicyError::new(format!("allowed_users[{i}]"), "must not be empty"));
                }
            }
            // Each entry is an email or a user ID; which one is not knowable from
            // the string, so it is tried as both.
            policy.allow.push(Expr::Any(vec![
                Expr::Email(StrMatcher::one_of(spec.allowed_users, true)),
                Expr::User(StrMatcher::one_of(spec.allowed_users, false)),
            ]));
        }
        if !spec.allowed_domains.is_empty() {
            for (i, domain) in spec.allowed_domains.iter().enumerate() {
                let path = || format!("allowed_domains[{i}]");
                if domain.trim().is_empty() {
                    return Err(PolicyError::new(path(), "must not be empty"));
                }
                if domain.contains('@') {
                    return Err(PolicyError::new(
                        path(),
                        format!("{domain:?} must be a bare domain such as \"example.com\", without \"@\""),
                    ));
                }
            }
            policy.allow.push(Expr::Domain(StrMatcher::one_of(spec.allowed_domains, true)));
        }
        if let Some(ppl) = spec.policy {
            compile_ppl(ppl, &mut policy)?;
        }
        Ok(policy)
    }

    /// Decides one request: any matching deny denies, else any matching allow
    /// allows, else deny — so a policy that says nothing lets nobody in.
    pub(crate) fn evaluate(&self, req: &Request<'_>) -> Decision {
        if self.public {
            return Decision::Allow;
        }
        let cx = Context::new(req);
        if self.deny.iter().any(|e| e.eval(&cx)) {
            Decision::Deny
        } else if self.allow.iter().any(|e| e.eval(&cx)) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// Whether the route is public (`allow_public_unauthenticated_access`), so
    /// the proxy never needs to ask for sign-in or look at a session.
    ///
    /// Other policies can still allow some anonymous requests (`accept`,
    /// `cors_preflight`, `http_*`), so callers should [`evaluate`](Self::evaluate)
    /// a request without identity before redirecting it to sign in.
    pub(crate) fn is_public(&self) -> bool {
        self.public
    }
}

// ---------------------------------------------------------------------------
// Compiled form

/// A compiled condition. Logical operators own their operands directly, so
/// evaluation is a plain recursive walk.
#[derive(Debug, Clone)]
enum Expr {
    /// `and`: every operand holds.
    All(Vec<Expr>),
    /// `or`: some operand holds.
    Any(Vec<Expr>),
    /// `not` and `nor`: no operand holds (Pomerium gives both this meaning).
    NoneOf(Vec<Expr>),
    Accept,
    Reject,
    AuthenticatedUser,
    CorsPreflight,
    /// The verified email.
    Email(StrMatcher),
    /// The user ID (`sub`).
    User(StrMatcher),
    /// The domain of the verified email.
    Domain(StrMatcher),
    HttpMethod(StrMatcher),
    HttpPath(StrMatcher),
    Claim {
        name: String,
        test: ClaimTest,
    },
}

/// A matcher: every operator must hold.
#[derive(Debug, Clone)]
struct StrMatcher {
    ops: Vec<StrOp>,
    /// Compare ignoring ASCII case.
    fold: bool,
}

#[derive(Debug, Clone)]
enum StrOp {
    Is(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    /// Sorted by [`cmp_str`] with the matcher's `fold`, for binary search:
    /// `allowed_users` lists can be long.
    In(Vec<String>),
    NotIn(Vec<String>),
    /// List membership; only ever compiled for claims.
    Has(String),
}

#[derive(Debug, Clone)]
enum ClaimTest {
    /// A plain value: equal to a scalar claim, or an element of a list claim.
    Equals(Scalar),
    Matcher(StrMatcher),
}

#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Bool(bool),
    Num(Number),
}

/// The per-request inputs, derived once so each criterion is a cheap lookup.
struct Context<'a> {
    identity: Option<&'a Identity>,
    /// The email, only when verified.
    email: Option<&'a str>,
    /// The domain of `email`, as written (comparisons fold case).
    domain: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    cors_preflight: bool,
}

impl<'a> Context<'a> {
    fn new(req: &Request<'a>) -> Self {
        let email = req.identity.filter(|i| i.email_verified).and_then(|i| i.email.as_deref());
        Context {
            identity: req.identity,
            email,
            domain: email.and_then(|e| e.rsplit_once('@')).map(|(_, d)| d),
            method: req.method,
            path: req.path,
            cors_preflight: req.cors_preflight,
        }
    }
}

impl Expr {
    fn eval(&self, cx: &Context<'_>) -> bool {
        match self {
            Expr::All(es) => es.iter().all(|e| e.eval(cx)),
            Expr::Any(es) => es.iter().any(|e| e.eval(cx)),
            Expr::NoneOf(es) => !es.iter().any(|e| e.eval(cx)),
            Expr::Accept => true,
            Expr::Reject => false,
            Expr::AuthenticatedUser => cx.identity.is_some(),
            Expr::CorsPreflight => cx.cors_preflight,
            Expr::Email(m) => cx.email.is_some_and(|e| m.test(e)),
            Expr::User(m) => cx.identity.is_some_and(|i| m.test(&i.subject)),
            Expr::Domain(m) => cx.domain.is_some_and(|d| m.test(d)),
            Expr::HttpMethod(m) => m.test(cx.method),
            Expr::HttpPath(m) => m.test(cx.path),
            Expr::Claim { name, test } => {
                cx.identity.and_then(|i| ClaimRef::lookup(i, name)).is_some_and(|c| test.test(c))
            }
        }
    }
}

impl StrMatcher {
    /// `in: values`, as used for `allowed_users` and `allowed_domains`.
    fn one_of(values: &[String], fold: bool) -> Self {
        StrMatcher { ops: vec![StrOp::In(sorted_set(values.to_vec(), fold))], fold }
    }

    fn test(&self, s: &str) -> bool {
        self.ops.iter().all(|op| op.test(s, self.fold))
    }

    fn test_claim(&self, claim: ClaimRef<'_>) -> bool {
        self.ops.iter().all(|op| match (op, claim) {
            (StrOp::Has(v), ClaimRef::Strings(items)) => items.iter().any(|i| i == v),
            (StrOp::Has(v), ClaimRef::Json(Value::Array(items))) => items.iter().any(|i| i.as_str() == Some(v)),
            (StrOp::Has(_), _) => false,
            (op, ClaimRef::Str(s)) => op.test(s, self.fold),
            _ => false,
        })
    }
}

impl StrOp {
    fn test(&self, s: &str, fold: bool) -> bool {
        match self {
            StrOp::Is(v) => eq_str(s, v, fold),
            StrOp::StartsWith(v) => s.len() >= v.len() && eq_bytes(&s.as_bytes()[..v.len()], v.as_bytes(), fold),
            StrOp::EndsWith(v) => {
                s.len() >= v.len() && eq_bytes(&s.as_bytes()[s.len() - v.len()..], v.as_bytes(), fold)
            }
            // `windows(0)` would panic; compile rejects empty patterns, but a request
            // must never be able to crash the proxy.
            StrOp::Contains(v) if fold => {
                v.is_empty() || s.as_bytes().windows(v.len()).any(|w| w.eq_ignore_ascii_case(v.as_bytes()))
            }
            StrOp::Contains(v) => s.contains(v.as_str()),
            StrOp::In(set) => set_contains(set, s, fold),
            StrOp::NotIn(set) => !set_contains(set, s, fold),
            // A single string is not a list; compile only allows `has` on claims.
            StrOp::Has(_) => false,
        }
    }
}

/// A claim's value, borrowed from wherever the identity keeps it.
#[derive(Clone, Copy)]
enum ClaimRef<'a> {
    Str(&'a str),
    Bool(bool),
    Strings(&'a [String]),
    Json(&'a Value),
}

impl<'a> ClaimRef<'a> {
    /// `groups` lives in `Identity::groups`; the standard claims the identity
    /// lifts into fields (`sub`, `email`, `email_verified`, `name`) are found
    /// there, so `claim/<name>` sees every claim the ID token had.
    fn lookup(identity: &'a Identity, name: &str) -> Option<Self> {
        if name == "groups" {
            return Some(ClaimRef::Strings(&identity.groups));
        }
        if let Some(value) = identity.claims.get(name) {
            return Some(match value {
                Value::String(s) => ClaimRef::Str(s),
                other => ClaimRef::Json(other),
            });
        }
        match name {
            "sub" => Some(ClaimRef::Str(&identity.subject)),
            "email" => identity.email.as_deref().map(ClaimRef::Str),
            "name" => identity.name.as_deref().map(ClaimRef::Str),
            "email_verified" => Some(ClaimRef::Bool(identity.email_verified)),
            _ => None,
        }
    }
}

impl ClaimTest {
    fn test(&self, claim: ClaimRef<'_>) -> bool {
        match self {
            ClaimTest::Matcher(m) => m.test_claim(claim),
            ClaimTest::Equals(want) => match claim {
                ClaimRef::Str(s) => matches!(want, Scalar::Str(w) if w == s),
                ClaimRef::Bool(b) => matches!(want, Scalar::Bool(w) if *w == b),
                ClaimRef::Strings(items) => matches!(want, Scalar::Str(w) if items.iter().any(|i| i == w)),
                ClaimRef::Json(Value::Array(items)) => items.iter().any(|i| want.eq_json(i)),
                ClaimRef::Json(v) => want.eq_json(v),
            },
        }
    }
}

impl Scalar {
    fn eq_json(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => a == b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => num_eq(a, b),
            _ => false,
        }
    }
}

/// Numbers compare by value, so `3` in YAML matches a claim of `3.0`.
fn num_eq(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    a.as_f64() == b.as_f64()
}

fn eq_str(a: &str, b: &str, fold: bool) -> bool {
    eq_bytes(a.as_bytes(), b.as_bytes(), fold)
}

/// Byte-wise comparison is safe for UTF-8 slices cut at a pattern's length:
/// a match means the slice equals a whole valid pattern.
fn eq_bytes(a: &[u8], b: &[u8], fold: bool) -> bool {
    if fold { a.eq_ignore_ascii_case(b) } else { a == b }
}

fn cmp_str(a: &str, b: &str, fold: bool) -> Ordering {
    if fold {
        a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
    } else {
        a.cmp(b)
    }
}

fn sorted_set(mut values: Vec<String>, fold: bool) -> Vec<String> {
    values.sort_by(|a, b| cmp_str(a, b, fold));
    values.dedup_by(|a, b| cmp_str(a, b, fold) == Ordering::Equal);
    values
}

fn set_contains(set: &[String], s: &str, fold: bool) -> bool {
    set.binary_search_by(|item| cmp_str(item, s, fold)).is_ok()
}

// ---------------------------------------------------------------------------
// Compilation of PPL

const OPERATORS: &[&str] = &["and", "or", "not", "nor"];
const CRITERIA: &[&str] = &[
    "accept",
    "reject",
    "authenticated_user",
    "email",
    "user",
    "domain",
    "http_method",
    "http_path",
    "cors_preflight",
    "claim/",
];
const MATCHERS: &[&str] = &["is", "starts_with", "ends_with", "contains", "in", "not_in", "has"];
/// Pomerium criteria Postern does not implement, named as such so the operator
/// is not told they misspelled something.
const UNSUPPORTED_CRITERIA: &[&str] =
    &["client_certificate", "day_of_week", "device", "invalid_client_certificate", "pomerium_route", "time_of_day"];

fn compile_ppl(ppl: &Value, policy: &mut Policy) -> Result<(), PolicyError> {
    match ppl {
        Value::Object(rule) => compile_rule(rule, "policy", policy),
        Value::Array(rules) if rules.is_empty() => Err(PolicyError::new("policy", "must contain at least one rule")),
        Value::Array(rules) => rules.iter().enumerate().try_for_each(|(i, rule)| {
            let path = format!("policy[{i}]");
            match rule {
                Value::Object(rule) => compile_rule(rule, &path, policy),
                other => {
                    Err(PolicyError::new(path, format!("expected a rule (allow and/or deny), found {}", kind(other))))
                }
            }
        }),
        other => Err(PolicyError::new(
            "policy",
            format!("expected a rule (allow and/or deny) or a list of rules, found {}", kind(other)),
        )),
    }
}

fn compile_rule(rule: &Map<String, Value>, path: &str, policy: &mut Policy) -> Result<(), PolicyError> {
    let mut actions = 0;
    for (key, value) in rule {
        let target = match key.as_str() {
            "allow" => &mut policy.allow,
            "deny" => &mut policy.deny,
            op if OPERATORS.contains(&op) => {
                return Err(PolicyError::new(path, format!("{op:?} must be under allow or deny")));
            }
            other => return Err(PolicyError::new(path, unknown("action", other, &["allow", "deny"]))),
        };
        target.push(compile_block(value, &format!("{path}.{key}"))?);
        actions += 1;
    }
    if actions == 0 {
        return Err(PolicyError::new(path, "a rule needs allow or deny (or both)"));
    }
    Ok(())
}

/// An `allow`/`deny` block: a mapping of operators, all of which must hold.
fn compile_block(block: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Object(ops) = block else {
        return Err(PolicyError::new(
            path,
            format!("expected a mapping with one of and, or, not, nor, found {}", kind(block)),
        ));
    };
    if ops.is_empty() {
        return Err(PolicyError::new(path, "empty block: expected one of and, or, not, nor"));
    }
    let mut parts = Vec::with_capacity(ops.len());
    for (key, value) in ops {
        if !OPERATORS.contains(&key.as_str()) {
            let message = if is_criterion_name(key) {
                format!("{key:?} is a criterion; list it under and, or, not or nor")
            } else {
                unknown("operator", key, OPERATORS)
            };
            return Err(PolicyError::new(path, message));
        }
        parts.push(compile_operator(key, value, &format!("{path}.{key}"))?);
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::All(parts) })
}

fn compile_operator(op: &str, items: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Array(items) = items else {
        return Err(PolicyError::new(path, format!("expected a list of criteria, found {}", kind(items))));
    };
    if items.is_empty() {
        return Err(PolicyError::new(path, "must list at least one criterion"));
    }
    let exprs = items
        .iter()
        .enumerate()
        .map(|(i, item)| compile_item(item, &format!("{path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match op {
        "and" => Expr::All(exprs),
        "or" => Expr::Any(exprs),
        _ => Expr::NoneOf(exprs),
    })
}

/// One list item: a criterion, or a nested operator such as `{or: [...]}`.
fn compile_item(item: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Object(map) = item else {
        return Err(PolicyError::new(
            path,
            format!("expected a criterion such as {{email: ...}}, found {}", kind(item)),
        ));
    };
    let mut entries = map.iter();
    let (name, value) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        (None, _) => return Err(PolicyError::new(path, "empty criterion")),
        (Some(_), Some(_)) => {
            let names: Vec<String> = map.keys().map(|k| format!("{k:?}")).collect();
            return Err(PolicyError::new(
                path,
                format!("one criterion per list item, found {}; use separate items", names.join(", ")),
            ));
        }
    };
    let value_path = format!("{path}.{name}");
    if OPERATORS.contains(&name.as_str()) {
        return compile_operator(name, value, &value_path);
    }
    Ok(match name.as_str() {
        "accept" => expect_true(value, &value_path).map(|()| Expr::Accept)?,
        "reject" => expect_true(value, &value_path).map(|()| Expr::Reject)?,
        "authenticated_user" => expect_true(value, &value_path).map(|()| Expr::AuthenticatedUser)?,
        "cors_preflight" => expect_true(value, &value_path).map(|()| Expr::CorsPreflight)?,
        "email" => Expr::Email(compile_matcher(value, &value_path, true, false)?),
        "user" => Expr::User(compile_matcher(value, &value_path, false, false)?),
        "domain" => Expr::Domain(compile_matcher(value, &value_path, true, false)?),
        "http_method" => Expr::HttpMethod(compile_matcher(value, &value_path, true, false)?),
        "http_path" => Expr::HttpPath(compile_matcher(value, &value_path, false, false)?),
        "groups" => {
            return Err(PolicyError::new(path, "criterion \"groups\" is not supported; use \"claim/groups\""));
        }
        other => match other.strip_prefix("claim/") {
            Some("") => return Err(PolicyError::new(path, "claim name missing: write \"claim/<name>\"")),
            Some(claim) => Expr::Claim { name: claim.to_string(), test: compile_claim_test(value, &value_path)? },
            None if UNSUPPORTED_CRITERIA.contains(&other) => {
                return Err(PolicyError::new(path, format!("criterion {other:?} is not supported")));
            }
            None => {
                // "claims/x" or "clam/x" should suggest "claim/x", not "claim/".
                let with_name = other.split_once('/').map(|(_, n)| format!("claim/{n}"));
                let mut known: Vec<&str> = CRITERIA.iter().copied().filter(|c| *c != "claim/").collect();
                let listed = format!("{}, claim/<name>", known.join(", "));
                known.extend(with_name.as_deref());
                let message = match closest(other, &known) {
                    Some(best) => format!("unknown criterion {other:?}; did you mean {best:?}?"),
                    None => format!("unknown criterion {other:?}; expected one of {listed}"),
                };
                return Err(PolicyError::new(path, message));
            }
        },
    })
}

fn is_criterion_name(name: &str) -> bool {
    name.starts_with("claim/") || CRITERIA.contains(&name)
}

/// Flag criteria only take `true`: `false` would read as "not", which PPL spells
/// with the `not` operator, so accepting it would invite misreadings.
fn expect_true(value: &Value, path: &str) -> Result<(), PolicyError> {
    match value {
        Value::Bool(true) => Ok(()),
        other => Err(PolicyError::new(path, format!("must be true, found {}", describe(other)))),
    }
}

fn compile_claim_test(value: &Value, path: &str) -> Result<ClaimTest, PolicyError> {
    Ok(match value {
        Value::Object(_) => ClaimTest::Matcher(compile_matcher(value, path, false, true)?),
        Value::String(s) => ClaimTest::Equals(Scalar::Str(non_empty(s, path)?)),
        Value::Bool(b) => ClaimTest::Equals(Scalar::Bool(*b)),
        Value::Number(n) => ClaimTest::Equals(Scalar::Num(n.clone())),
        Value::Array(_) => {
            return Err(PolicyError::new(
                path,
                "expected a value or a matcher, found a list; use {in: [...]} or one criterion per value under or",
            ));
        }
        Value::Null => {
            return Err(PolicyError::new(
                path,
                "expected a value (string, number, true/false) or a matcher, found null",
            ));
        }
    })
}

/// A plain string (`is`) or a mapping of matcher operators. `has` is only
/// accepted where the input can be a list (`list_input`).
fn compile_matcher(value: &Value, path: &str, fold: bool, list_input: bool) -> Result<StrMatcher, PolicyError> {
    let map = match value {
        Value::String(s) => return Ok(StrMatcher { ops: vec![StrOp::Is(non_empty(s, path)?)], fold }),
        Value::Object(map) => map,
        other => {
            return Err(PolicyError::new(
                path,
                format!(
                    "expected a string or a matcher (is, starts_with, ends_with, contains, in, not_in), found {}",
                    kind(other)
                ),
            ));
        }
    };
    if map.is_empty() {
        return Err(PolicyError::new(
            path,
            "empty matcher: expected is, starts_with, ends_with, contains, in or not_in",
        ));
    }
    let mut ops = Vec::with_capacity(map.len());
    for (key, value) in map {
        let key_path = format!("{path}.{key}");
        let string = || string_value(value, &key_path);
        ops.push(match key.as_str() {
            "is" => StrOp::Is(string()?),
            "starts_with" => StrOp::StartsWith(string()?),
            "ends_with" => StrOp::EndsWith(string()?),
            "contains" => StrOp::Contains(string()?),
            "in" => StrOp::In(sorted_set(string_list(value, &key_path)?, fold)),
            "not_in" => StrOp::NotIn(sorted_set(string_list(value, &key_path)?, fold)),
            "has" if list_input => StrOp::Has(string()?),
            "has" => {
                return Err(PolicyError::new(
                    key_path,
                    "\"has\" applies only to list-valued claims such as claim/groups",
                ));
            }
            other => return Err(PolicyError::new(path, unknown("matcher", other, MATCHERS))),
        });
    }
    Ok(StrMatcher { ops, fold })
}

fn string_value(value: &Value, path: &str) -> Result<String, PolicyError> {
    match value {
        Value::String(s) => non_empty(s, path),
        other => Err(PolicyError::new(path, format!("expected a string, found {}", kind(other)))),
    }
}

fn string_list(value: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    let Value::Array(items) = value else {
        return Err(PolicyError::new(path, format!("expected a list of strings, found {}", kind(value))));
    };
    if items.is_empty() {
        return Err(PolicyError::new(path, "must list at least one value"));
    }
    items.iter().enumerate().map(|(i, item)| string_value(item, &format!("{path}[{i}]"))).collect()
}

/// Empty patterns are always mistakes: `starts_with: ""` matches everything and
/// `is: ""` matches nothing a real identity has.
fn non_empty(s: &str, path: &str) -> Result<String, PolicyError> {
    if s.is_empty() { Err(PolicyError::new(path, "must not be empty")) } else { Ok(s.to_string()) }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Like [`kind`], but shows scalars, for messages where the value itself is wrong.
fn describe(value: &Value) -> String {
    match value {
        Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Null => value.to_string(),
        other => kind(other).to_string(),
    }
}

fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    match closest(name, known) {
        Some(best) => format!("unknown {what} {name:?}; did you mean {best:?}?"),
        None => format!("unknown {what} {name:?}; expected one of {}", known.join(", ")),
    }
}

/// The known name within a small edit distance of `name`, for typos such as
/// transposed or dropped letters; nothing when no name is plausibly meant.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (levenshtein(name, k), *k))
        .filter(|(d, k)| {
            // A third of the longer name, so "authenticated" still finds "authenticated_user".
            let longer = name.chars().count().max(k.chars().count());
            *d <= (longer / 3).max(2) && *d < longer
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use Decision::{Allow, Deny};

    /// The requesters the tables refer to.
    #[derive(Clone, Copy, Debug)]
    enum Who {
        Anonymous,
        /// Verified `Alice@Example.com`, groups eng + admins, assorted claims.
        Alice,
        /// Verified `bob@other.org`, group sales.
        Bob,
        /// Unverified `mallory@example.com`.
        Mallory,
        /// A service account without email.
        Robot,
    }

    fn identity(who: Who) -> Option<Identity> {
        let make = |sub: &str, email: Option<&str>, verified: bool, groups: &[&str], claims: Value| Identity {
            subject: sub.to_string(),
            email: email.map(str::to_string),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: match claims {
                Value::Object(map) => map,
                _ => Map::new(),
            },
        };
        match who {
            Who::Anonymous => None,
            Who::Alice => Some(make(
                "u-alice",
                Some("Alice@Example.com"),
                true,
                &["eng", "admins"],
                json!({"department": "research", "roles": ["viewer", "editor"], "level": 3, "contractor": false}),
            )),
            Who::Bob => Some(make("u-bob", Some("bob@other.org"), true, &["sales"], json!({"department": "sales"}))),
            Who::Mallory => Some(make("u-mallory", Some("mallory@example.com"), false, &[], json!({}))),
            Who::Robot => Some(make("svc-robot", None, true, &[], json!({"roles": "deployer"}))),
        }
    }

    /// One request: who, method, path, CORS preflight, and the expected decision.
    type Case = (Who, &'static str, &'static str, bool, Decision);

    fn get(who: Who, expected: Decision) -> Case {
        (who, "GET", "/", false, expected)
    }

    fn check(label: &str, policy: &Policy, cases: &[Case]) {
        for &(who, method, path, cors_preflight, expected) in cases {
            let identity = identity(who);
            let req = Request { identity: identity.as_ref(), method, path, cors_preflight };
            assert_eq!(
                policy.evaluate(&req),
                expected,
                "{label}: {who:?} {method} {path} (preflight: {cors_preflight})"
            );
        }
    }

    fn ppl(policy: &Value) -> Result<Policy, PolicyError> {
        Policy::compile(&PolicySpec { policy: Some(policy), ..PolicySpec::default() })
    }

    fn compile_ppl_ok(label: &str, policy: &Value) -> Policy {
        match ppl(policy) {
            Ok(p) => p,
            Err(e) => panic!("{label}: {e}"),
        }
    }

    #[test]
    fn ppl_criteria_and_matchers() {
        use Who::*;
        let table: Vec<(&str, Value, Vec<Case>)> = vec![
            ("accept", json!({"allow": {"and": [{"accept": true}]}}), vec![get(Anonymous, Allow), get(Alice, Allow)]),
            ("reject", json!({"allow": {"or": [{"reject": true}]}}), vec![get(Anonymous, Deny), get(Alice, Deny)]),
            (
                "authenticated_user",
                json!({"allow": {"and": [{"authenticated_user": true}]}}),
                vec![get(Anonymous, Deny), get(Alice, Allow), get(Mallory, Allow), get(Robot, Allow)],
            ),
            (
                "email plain, case-insensitive",
                json!({"allow": {"or": [{"email": "alice@example.COM"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Anonymous, Deny), get(Robot, Deny)],
            ),
            (
                "email is",
                json!({"allow": {"or": [{"email": {"is": "ALICE@example.com"}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "email starts_with",
                json!({"allow": {"or": [{"email": {"starts_with": "aLiCe@"}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Anonymous, Deny)],
            ),
            (
                "email ends_with",
                json!({"allow": {"or": [{"email": {"ends_with": "@EXAMPLE.com"}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "email contains",
                json!({"allow": {"or": [{"email": {"contains": "ICE@ex"}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "email in",
                json!({"allow": {"or": [{"email": {"in": ["zed@example.com", "ALICE@EXAMPLE.COM"]}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Anonymous, Deny)],
            ),
            (
                "email not_in",
                json!({"allow": {"or": [{"email": {"not_in": ["alice@example.com"]}}]}}),
                vec![get(Alice, Deny), get(Bob, Allow), get(Anonymous, Deny), get(Robot, Deny)],
            ),
            (
                "email matcher keys all hold",
                json!({"allow": {"or": [{"email": {"ends_with": "example.com", "not_in": ["zed@example.com"]}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "unverified email matches nothing",
                json!({"allow": {"or": [{"email": "mallory@example.com"}, {"domain": "example.com"}]}}),
                vec![get(Mallory, Deny), get(Alice, Allow)],
            ),
            (
                "user",
                json!({"allow": {"or": [{"user": "u-bob"}]}}),
                vec![get(Bob, Allow), get(Alice, Deny), get(Anonymous, Deny)],
            ),
            ("user is case-sensitive", json!({"allow": {"or": [{"user": {"is": "U-BOB"}}]}}), vec![get(Bob, Deny)]),
            (
                "user starts_with",
                json!({"allow": {"or": [{"user": {"starts_with": "svc-"}}]}}),
                vec![get(Robot, Allow), get(Alice, Deny)],
            ),
            (
                "domain, case-insensitive",
                json!({"allow": {"or": [{"domain": "EXAMPLE.com"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Mallory, Deny), get(Robot, Deny), get(Anonymous, Deny)],
            ),
            (
                "domain in",
                json!({"allow": {"or": [{"domain": {"in": ["other.org", "corp.net"]}}]}}),
                vec![get(Bob, Allow), get(Alice, Deny)],
            ),
            (
                "domain ends_with",
                json!({"allow": {"or": [{"domain": {"ends_with": ".ORG"}}]}}),
                vec![get(Bob, Allow), get(Alice, Deny)],
            ),
            (
                "claim groups plain value is membership",
                json!({"allow": {"or": [{"claim/groups": "admins"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Robot, Deny), get(Anonymous, Deny)],
            ),
            (
                "claim groups has",
                json!({"allow": {"or": [{"claim/groups": {"has": "sales"}}]}}),
                vec![get(Bob, Allow), get(Alice, Deny)],
            ),
            (
                "custom array claim plain and has",
                json!({"allow": {"and": [{"claim/roles": "editor"}, {"claim/roles": {"has": "viewer"}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Robot, Deny)],
            ),
            (
                "has does not match a string claim",
                json!({"allow": {"or": [{"claim/roles": {"has": "deployer"}}]}}),
                vec![get(Robot, Deny)],
            ),
            (
                "string claim plain value",
                json!({"allow": {"or": [{"claim/department": "research"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Robot, Deny)],
            ),
            (
                "string claim is case-sensitive",
                json!({"allow": {"or": [{"claim/department": "Research"}]}}),
                vec![get(Alice, Deny)],
            ),
            (
                "string claim matchers",
                json!({"allow": {"or": [{"claim/department": {"starts_with": "res", "contains": "ear", "not_in": ["x"]}}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "string claim in",
                json!({"allow": {"or": [{"claim/department": {"in": ["sales", "ops"]}}]}}),
                vec![get(Bob, Allow), get(Alice, Deny)],
            ),
            (
                "string matchers do not apply to list claims",
                json!({"allow": {"or": [{"claim/groups": {"is": "eng"}}]}}),
                vec![get(Alice, Deny)],
            ),
            ("number claim", json!({"allow": {"or": [{"claim/level": 3.0}]}}), vec![get(Alice, Allow), get(Bob, Deny)]),
            (
                "bool claim",
                json!({"allow": {"or": [{"claim/contractor": false}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            ("value type matters for claims", json!({"allow": {"or": [{"claim/level": "3"}]}}), vec![get(Alice, Deny)]),
            (
                "standard claims lifted into identity fields",
                json!({"allow": {"or": [{"claim/sub": "u-alice"}, {"claim/email_verified": false}]}}),
                vec![get(Alice, Allow), get(Mallory, Allow), get(Bob, Deny), get(Anonymous, Deny)],
            ),
            (
                "http_method, uppercase compare",
                json!({"allow": {"or": [{"http_method": "get"}]}}),
                vec![
                    (Anonymous, "GET", "/", false, Allow),
                    (Anonymous, "get", "/", false, Allow),
                    (Anonymous, "POST", "/", false, Deny),
                ],
            ),
            (
                "http_method in",
                json!({"allow": {"or": [{"http_method": {"in": ["GET", "head"]}}]}}),
                vec![(Anonymous, "HEAD", "/", false, Allow), (Alice, "DELETE", "/", false, Deny)],
            ),
            (
                "http_path starts_with",
                json!({"allow": {"or": [{"http_path": {"starts_with": "/public/"}}]}}),
                vec![
                    (Anonymous, "GET", "/public/logo.png", false, Allow),
                    (Anonymous, "GET", "/PUBLIC/logo.png", false, Deny),
                    (Anonymous, "GET", "/private", false, Deny),
                ],
            ),
            (
                "http_path is and ends_with",
                json!({"allow": {"or": [{"http_path": "/healthz"}, {"http_path": {"ends_with": ".css"}}]}}),
                vec![
                    (Anonymous, "GET", "/healthz", false, Allow),
                    (Anonymous, "GET", "/a/b.css", false, Allow),
                    (Anonymous, "GET", "/healthz/x", false, Deny),
                ],
            ),
            (
                "cors_preflight",
                json!({"allow": {"or": [{"cors_preflight": true}]}}),
                vec![(Anonymous, "OPTIONS", "/api", true, Allow), (Anonymous, "OPTIONS", "/api", false, Deny)],
            ),
            (
                "criteria needing an identity are false without one",
                json!({"allow": {"or": [
                    {"authenticated_user": true}, {"email": {"not_in": ["x@y.z"]}}, {"user": {"starts_with": "u"}},
                    {"domain": {"not_in": ["x.y"]}}, {"claim/groups": {"has": "eng"}}, {"claim/sub": {"contains": "-"}}
                ]}}),
                vec![get(Anonymous, Deny), get(Alice, Allow)],
            ),
        ];
        for (label, policy, cases) in &table {
            check(label, &compile_ppl_ok(label, policy), cases);
        }
    }

    #[test]
    fn ppl_logic() {
        use Who::*;
        let table: Vec<(&str, Value, Vec<Case>)> = vec![
            (
                "and: all must hold",
                json!({"allow": {"and": [{"domain": "example.com"}, {"claim/groups": "admins"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny)],
            ),
            (
                "or: any holds",
                json!({"allow": {"or": [{"domain": "other.org"}, {"claim/groups": "admins"}]}}),
                vec![get(Alice, Allow), get(Bob, Allow), get(Robot, Deny)],
            ),
            (
                "not: none holds",
                json!({"allow": {"not": [{"domain": "other.org"}, {"user": "svc-robot"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Robot, Deny)],
            ),
            (
                "nor: same as not",
                json!({"allow": {"nor": [{"domain": "other.org"}, {"user": "svc-robot"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Robot, Deny)],
            ),
            (
                // As in Pomerium: the criterion is false without identity, so its negation holds.
                "not over identity criteria lets anonymous requests through",
                json!({"allow": {"not": [{"email": "bob@other.org"}]}}),
                vec![get(Anonymous, Allow), get(Bob, Deny)],
            ),
            (
                "several operators in one block must all hold",
                json!({"allow": {"and": [{"authenticated_user": true}], "not": [{"claim/groups": "sales"}]}}),
                vec![get(Alice, Allow), get(Bob, Deny), get(Anonymous, Deny)],
            ),
            (
                "nested blocks",
                json!({"allow": {"and": [
                    {"or": [{"domain": "example.com"}, {"domain": "other.org"}]},
                    {"not": [{"and": [{"claim/groups": "sales"}, {"http_method": "DELETE"}]}]},
                    {"nor": [{"user": "svc-robot"}]}
                ]}}),
                vec![
                    (Alice, "DELETE", "/", false, Allow),
                    (Bob, "GET", "/", false, Allow),
                    (Bob, "DELETE", "/", false, Deny),
                    (Robot, "GET", "/", false, Deny),
                ],
            ),
            (
                "deny wins over allow",
                json!({"allow": {"or": [{"accept": true}]}, "deny": {"or": [{"email": "alice@example.com"}]}}),
                vec![get(Alice, Deny), get(Bob, Allow), get(Anonymous, Allow)],
            ),
            (
                "deny alone denies everything",
                json!({"deny": {"or": [{"reject": true}]}}),
                vec![get(Alice, Deny), get(Anonymous, Deny)],
            ),
            (
                "multiple rules: any allow, every deny",
                json!([
                    {"allow": {"or": [{"domain": "example.com"}]}},
                    {"allow": {"or": [{"user": "u-bob"}]}},
                    {"deny": {"or": [{"http_method": "DELETE"}]}},
                    {"allow": {"or": [{"cors_preflight": true}]}, "deny": {"or": [{"http_path": "/admin"}]}}
                ]),
                vec![
                    (Alice, "GET", "/", false, Allow),
                    (Bob, "GET", "/", false, Allow),
                    (Robot, "GET", "/", false, Deny),
                    (Alice, "DELETE", "/", false, Deny),
                    (Bob, "GET", "/admin", false, Deny),
                    (Anonymous, "OPTIONS", "/", true, Allow),
                    (Anonymous, "OPTIONS", "/admin", true, Deny),
                ],
            ),
        ];
        for (label, policy, cases) in &table {
            check(label, &compile_ppl_ok(label, policy), cases);
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn route_settings() {
        use Who::*;
        let users = strings(&["ALICE@example.com", "svc-robot"]);
        let domains = strings(&["Other.ORG"]);
        let deny_delete = json!({"deny": {"or": [{"http_method": "DELETE"}]}});
        let example_com = strings(&["example.com"]);
        let mallory = strings(&["mallory@example.com"]);
        let table: Vec<(&str, PolicySpec<'_>, Vec<Case>)> = vec![
            ("nothing allows nothing", PolicySpec::default(), vec![get(Alice, Deny), get(Anonymous, Deny)]),
            (
                "public",
                PolicySpec { allow_public_unauthenticated_access: true, ..PolicySpec::default() },
                vec![get(Anonymous, Allow), get(Alice, Allow), (Anonymous, "DELETE", "/x", false, Allow)],
            ),
            (
                "any authenticated user",
                PolicySpec { allow_any_authenticated_user: true, ..PolicySpec::default() },
                vec![get(Anonymous, Deny), get(Alice, Allow), get(Mallory, Allow), get(Robot, Allow)],
            ),
            (
                "allowed_users by email (any case) or sub",
                PolicySpec { allowed_users: &users, ..PolicySpec::default() },
                vec![get(Alice, Allow), get(Robot, Allow), get(Bob, Deny), get(Anonymous, Deny)],
            ),
            (
                "allowed_domains, verified emails only",
                PolicySpec { allowed_domains: &domains, ..PolicySpec::default() },
                vec![get(Bob, Allow), get(Alice, Deny), get(Robot, Deny), get(Anonymous, Deny)],
            ),
            (
                "unverified email does not match allowed_domains",
                PolicySpec { allowed_domains: &example_com, ..PolicySpec::default() },
                vec![get(Mallory, Deny), get(Alice, Allow)],
            ),
            (
                "unverified email does not match allowed_users",
                PolicySpec { allowed_users: &mallory, ..PolicySpec::default() },
                vec![get(Mallory, Deny)],
            ),
            (
                "settings add allow conditions; policy deny still wins",
                PolicySpec {
                    allowed_users: &users,
                    allowed_domains: &domains,
                    policy: Some(&deny_delete),
                    ..PolicySpec::default()
                },
                vec![
                    get(Alice, Allow),
                    get(Bob, Allow),
                    get(Mallory, Deny),
                    (Alice, "DELETE", "/", false, Deny),
                    (Bob, "DELETE", "/", false, Deny),
                ],
            ),
        ];
        for (label, spec, cases) in &table {
            let policy = match Policy::compile(spec) {
                Ok(p) => p,
                Err(e) => panic!("{label}: {e}"),
            };
            assert_eq!(policy.is_public(), spec.allow_public_unauthenticated_access, "{label}");
            check(label, &policy, cases);
        }
    }

    #[test]
    fn is_public_only_for_public_routes() {
        let policy = compile_ppl_ok("accept", &json!({"allow": {"or": [{"accept": true}]}}));
        assert!(!policy.is_public());
    }

    #[test]
    fn ppl_errors() {
        let table: Vec<(Value, &str)> = vec![
            (json!("allow"), "policy: expected a rule (allow and/or deny) or a list of rules, found a string"),
            (json!(null), "policy: expected a rule (allow and/or deny) or a list of rules, found null"),
            (json!([]), "policy: must contain at least one rule"),
            (
                json!([{"allow": {"or": [{"accept": true}]}}, 3]),
                "policy[1]: expected a rule (allow and/or deny), found a number",
            ),
            (json!({}), "policy: a rule needs allow or deny (or both)"),
            (json!([{}]), "policy[0]: a rule needs allow or deny (or both)"),
            (json!({"alow": {}}), "policy: unknown action \"alow\"; did you mean \"allow\"?"),
            (json!({"permit": {}}), "policy: unknown action \"permit\"; expected one of allow, deny"),
            (json!({"or": [{"accept": true}]}), "policy: \"or\" must be under allow or deny"),
            (json!({"allow": []}), "policy.allow: expected a mapping with one of and, or, not, nor, found a list"),
            (json!({"allow": {}}), "policy.allow: empty block: expected one of and, or, not, nor"),
            (json!({"deny": {"andd": []}}), "policy.deny: unknown operator \"andd\"; did you mean \"and\"?"),
            (json!({"deny": {"xor": []}}), "policy.deny: unknown operator \"xor\"; did you mean \"or\"?"),
            (
                json!({"allow": {"whatever": []}}),
                "policy.allow: unknown operator \"whatever\"; expected one of and, or, not, nor",
            ),
            (
                json!({"allow": {"email": "a@b.c"}}),
                "policy.allow: \"email\" is a criterion; list it under and, or, not or nor",
            ),
            (json!({"allow": {"and": []}}), "policy.allow.and: must list at least one criterion"),
            (
                json!({"allow": {"and": {"accept": true}}}),
                "policy.allow.and: expected a list of criteria, found a mapping",
            ),
            (
                json!({"allow": {"or": ["accept"]}}),
                "policy.allow.or[0]: expected a criterion such as {email: ...}, found a string",
            ),
            (json!({"allow": {"or": [{}]}}), "policy.allow.or[0]: empty criterion"),
            (
                json!({"allow": {"or": [{"email": "a@b.c", "domain": "b.c"}]}}),
                "policy.allow.or[0]: one criterion per list item, found \"domain\", \"email\"; use separate items",
            ),
            (
                json!([{"allow": {"and": [{"emial": "a@b.c"}]}}]),
                "policy[0].allow.and[0]: unknown criterion \"emial\"; did you mean \"email\"?",
            ),
            (
                json!({"allow": {"and": [{"authenticated": true}]}}),
                "policy.allow.and[0]: unknown criterion \"authenticated\"; did you mean \"authenticated_user\"?",
            ),
            (
                json!({"allow": {"and": [{"claims/groups": "eng"}]}}),
                "policy.allow.and[0]: unknown criterion \"claims/groups\"; did you mean \"claim/groups\"?",
            ),
            (
                json!({"allow": {"and": [{"source_ip": "10.0.0.0/8"}]}}),
                "policy.allow.and[0]: unknown criterion \"source_ip\"; expected one of accept, reject, authenticated_user, email, user, domain, http_method, http_path, cors_preflight, claim/<name>",
            ),
            (
                json!({"allow": {"and": [{"groups": {"has": "eng"}}]}}),
                "policy.allow.and[0]: criterion \"groups\" is not supported; use \"claim/groups\"",
            ),
            (
                json!({"allow": {"and": [{"device": {"is": "x"}}]}}),
                "policy.allow.and[0]: criterion \"device\" is not supported",
            ),
            (
                json!({"allow": {"and": [{"claim/": "x"}]}}),
                "policy.allow.and[0]: claim name missing: write \"claim/<name>\"",
            ),
            (json!({"allow": {"or": [{"accept": false}]}}), "policy.allow.or[0].accept: must be true, found false"),
            (json!({"allow": {"or": [{"reject": "yes"}]}}), "policy.allow.or[0].reject: must be true, found \"yes\""),
            (
                json!({"allow": {"or": [{"authenticated_user": 1}]}}),
                "policy.allow.or[0].authenticated_user: must be true, found 1",
            ),
            (
                json!({"allow": {"or": [{"cors_preflight": null}]}}),
                "policy.allow.or[0].cors_preflight: must be true, found null",
            ),
            (
                json!([{"deny": {"or": [{"accept": true}]}}, {"allow": {"or": [{"domain": "x"}, {"email": {"starts_with": 5}}]}}]),
                "policy[1].allow.or[1].email.starts_with: expected a string, found a number",
            ),
            (
                json!({"allow": {"or": [{"email": {"start_with": "a"}}]}}),
                "policy.allow.or[0].email: unknown matcher \"start_with\"; did you mean \"starts_with\"?",
            ),
            (
                json!({"allow": {"or": [{"email": {"matches": "a"}}]}}),
                "policy.allow.or[0].email: unknown matcher \"matches\"; expected one of is, starts_with, ends_with, contains, in, not_in, has",
            ),
            (
                json!({"allow": {"or": [{"email": {}}]}}),
                "policy.allow.or[0].email: empty matcher: expected is, starts_with, ends_with, contains, in or not_in",
            ),
            (
                json!({"allow": {"or": [{"user": ["a"]}]}}),
                "policy.allow.or[0].user: expected a string or a matcher (is, starts_with, ends_with, contains, in, not_in), found a list",
            ),
            (json!({"allow": {"or": [{"domain": ""}]}}), "policy.allow.or[0].domain: must not be empty"),
            (
                json!({"allow": {"or": [{"http_path": {"starts_with": ""}}]}}),
                "policy.allow.or[0].http_path.starts_with: must not be empty",
            ),
            (
                json!({"allow": {"or": [{"email": {"in": []}}]}}),
                "policy.allow.or[0].email.in: must list at least one value",
            ),
            (
                json!({"allow": {"or": [{"email": {"not_in": "a"}}]}}),
                "policy.allow.or[0].email.not_in: expected a list of strings, found a string",
            ),
            (
                json!({"allow": {"or": [{"domain": {"in": ["a.b", 7]}}]}}),
                "policy.allow.or[0].domain.in[1]: expected a string, found a number",
            ),
            (
                json!({"allow": {"or": [{"email": {"has": "a"}}]}}),
                "policy.allow.or[0].email.has: \"has\" applies only to list-valued claims such as claim/groups",
            ),
            (
                json!({"allow": {"or": [{"claim/groups": ["a", "b"]}]}}),
                "policy.allow.or[0].claim/groups: expected a value or a matcher, found a list; use {in: [...]} or one criterion per value under or",
            ),
            (
                json!({"allow": {"or": [{"claim/groups": null}]}}),
                "policy.allow.or[0].claim/groups: expected a value (string, number, true/false) or a matcher, found null",
            ),
            (
                json!({"allow": {"or": [{"claim/groups": {"has": 1}}]}}),
                "policy.allow.or[0].claim/groups.has: expected a string, found a number",
            ),
            (
                json!({"allow": {"and": [{"or": [{"accept": true}, {"not": [{"emal": "x"}]}]}]}}),
                "policy.allow.and[0].or[1].not[0]: unknown criterion \"emal\"; did you mean \"email\"?",
            ),
            (json!({"allow": {"and": [{"nor": []}]}}), "policy.allow.and[0].nor: must list at least one criterion"),
        ];
        for (policy, expected) in &table {
            match ppl(policy) {
                Ok(_) => panic!("{policy} compiled; expected {expected}"),
                Err(e) => assert_eq!(e.to_string(), *expected, "{policy}"),
            }
        }
    }

    #[test]
    fn setting_errors() {
        let empty_user = strings(&["a@b.c", "", "  "]);
        let at_domain = strings(&["example.com", "@corp.net"]);
        let users = strings(&["a@b.c"]);
        let blank_domain = strings(&[""]);
        let accept = json!({"allow": {"or": [{"accept": true}]}});
        let public = PolicySpec { allow_public_unauthenticated_access: true, ..PolicySpec::default() };
        let table: Vec<(PolicySpec<'_>, &str)> = vec![
            (PolicySpec { allowed_users: &empty_user, ..PolicySpec::default() }, "allowed_users[1]: must not be empty"),
            (
                PolicySpec { allowed_domains: &at_domain, ..PolicySpec::default() },
                "allowed_domains[1]: \"@corp.net\" must be a bare domain such as \"example.com\", without \"@\"",
            ),
            (
                PolicySpec { allowed_domains: &blank_domain, ..PolicySpec::default() },
                "allowed_domains[0]: must not be empty",
            ),
            (
                PolicySpec { allow_any_authenticated_user: true, ..public.clone() },
                "allow_public_unauthenticated_access: cannot be combined with allow_any_authenticated_user: a public route allows every request, so they would never apply",
            ),
            (
                PolicySpec {
                    allowed_users: &users,
                    allowed_domains: &at_domain,
                    policy: Some(&accept),
                    ..public.clone()
                },
                "allow_public_unauthenticated_access: cannot be combined with allowed_users, allowed_domains, policy: a public route allows every request, so they would never apply",
            ),
        ];
        for (spec, expected) in &table {
            match Policy::compile(spec) {
                Ok(_) => panic!("{spec:?} compiled; expected {expected}"),
                Err(e) => {
                    assert_eq!(e.to_string(), *expected);
                    assert_eq!(format!("{}: {}", e.path, e.message), *expected);
                }
            }
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("emial", "email"), 2);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(closest("usr", CRITERIA), Some("user"));
        assert_eq!(closest("x", OPERATORS), None);
        assert_eq!(closest("totally_different", CRITERIA), None);
    }

    #[test]
    fn folded_set_lookup() {
        let set = sorted_set(strings(&["b@x.io", "A@x.io", "a@X.io", "c@x.io"]), true);
        assert_eq!(set.len(), 3);
        assert!(set_contains(&set, "A@X.IO", true));
        assert!(set_contains(&set, "c@x.io", true));
        assert!(!set_contains(&set, "d@x.io", true));
        let exact = sorted_set(strings(&["B", "a"]), false);
        assert!(set_contains(&exact, "B", false));
        assert!(!set_contains(&exact, "b", false));
    }
}
