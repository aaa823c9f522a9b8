//! Compiling a route's policy keys and PPL into a [`Policy`]: every mistake
//! is found here, with its key path, when the configuration loads.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::{ClaimTest, Expr, Policy, PolicyError, PolicySpec, Scalar, StrMatcher, StrOp, cmp_str};
use crate::suggest::closest;

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
}

impl StrMatcher {
    /// `in: values`, as used for `allowed_users` and `allowed_domains`.
    pub(super) fn one_of(values: &[String], fold: bool) -> Self {
        StrMatcher { ops: vec![StrOp::In(sorted_set(values.to_vec(), fold))], fold }
    }
}

pub(super) fn sorted_set(mut values: Vec<String>, fold: bool) -> Vec<String> {
    values.sort_by(|a, b| cmp_str(a, b, fold));
    values.dedup_by(|a, b| cmp_str(a, b, fold) == Ordering::Equal);
    values
}

pub(super) const OPERATORS: &[&str] = &["and", "or", "not", "nor"];
pub(super) const CRITERIA: &[&str] = &[
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
