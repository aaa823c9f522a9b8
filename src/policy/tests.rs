use serde_json::json;

use serde_json::{Map, Value};

use super::compile::{CRITERIA, OPERATORS, sorted_set};
use super::evaluate::set_contains;
use super::*;
use crate::identity::Identity;
use crate::suggest::closest;

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
        assert_eq!(policy.evaluate(&req), expected, "{label}: {who:?} {method} {path} (preflight: {cors_preflight})");
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
        (json!({"allow": {"and": {"accept": true}}}), "policy.allow.and: expected a list of criteria, found a mapping"),
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
            PolicySpec { allowed_users: &users, allowed_domains: &at_domain, policy: Some(&accept), ..public.clone() },
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

#[test]
fn an_email_with_two_ats_or_an_empty_part_has_no_domain() {
    let policy = Policy::compile(&PolicySpec { allowed_domains: &strings(&["corp.com"]), ..PolicySpec::default() })
        .expect("compiles");
    for email in ["a@evil.com@corp.com", "@corp.com", "a@@corp.com", "corp.com"] {
        let who = Identity {
            subject: "s".into(),
            email: Some(email.into()),
            email_verified: true,
            name: None,
            groups: vec![],
            claims: Map::new(),
        };
        let req = Request { identity: Some(&who), method: "GET", path: "/", cors_preflight: false };
        assert_eq!(policy.evaluate(&req), Deny, "{email}");
    }
    let ok = Identity {
        subject: "s".into(),
        email: Some("a@Corp.com".into()),
        email_verified: true,
        name: None,
        groups: vec![],
        claims: Map::new(),
    };
    let req = Request { identity: Some(&ok), method: "GET", path: "/", cors_preflight: false };
    assert_eq!(policy.evaluate(&req), Allow);
}
