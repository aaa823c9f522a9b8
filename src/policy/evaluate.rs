//! Evaluating a compiled [`Policy`] against one request, without allocating.

use serde_json::{Number, Value};

use super::{ClaimTest, Decision, Expr, Policy, Request, Scalar, StrMatcher, StrOp, cmp_str};
use crate::identity::Identity;

impl Policy {
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
            domain: email.and_then(email_domain),
            method: req.method,
            path: req.path,
            cors_preflight: req.cors_preflight,
        }
    }
}

/// The domain of an email with exactly one `@` and text on both sides.
/// `a@evil.com@corp.com` has none: taking the part after the last `@`
/// would let such an IdP account pass a `corp.com` domain rule
/// (oauth2-proxy CVE-2026-40574).
fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then_some(domain)
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

pub(super) fn set_contains(set: &[String], s: &str, fold: bool) -> bool {
    set.binary_search_by(|item| cmp_str(item, s, fold)).is_ok()
}
