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

//!
//! A route's policy is a property of the route that the sign-in phase
//! evaluates: the route table compiles it ([`compile`]) and the request
//! pipeline evaluates it ([`evaluate`]); neither imports the other through
//! this module.

mod compile;
mod evaluate;

use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::identity::Identity;

/// A policy that cannot be compiled, with the configuration path of the
/// offending value so the operator can find it in a large file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

impl PolicyError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
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

// === Compiled form ===

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

fn cmp_str(a: &str, b: &str, fold: bool) -> Ordering {
    if fold {
        a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
    } else {
        a.cmp(b)
    }
}

#[cfg(test)]
mod tests;
