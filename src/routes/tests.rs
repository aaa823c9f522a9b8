use super::*;
use crate::config::{DirectResponse, RouteSpec};

fn spec(from: &str) -> RouteSpec {
    RouteSpec { from: from.to_string(), to: vec!["http://127.0.0.1:9".into()], ..RouteSpec::default() }
}

fn respond(from: &str, body: &str) -> RouteSpec {
    RouteSpec {
        from: from.to_string(),
        response: Some(DirectResponse { status: 200, body: body.into(), content_type: "text/plain".into() }),
        ..RouteSpec::default()
    }
}

fn table(specs: Vec<RouteSpec>) -> RouteTable {
    let (table, problems) = RouteTable::compile(&Settings::default(), specs);
    assert!(problems.is_empty(), "{problems:?}");
    table
}

fn body(t: &RouteTable, host: &str, port: Option<u16>, path: &str) -> Option<String> {
    t.lookup(host, port, path).map(|r| match &r.action {
        Action::Respond(d) => d.body.clone(),
        Action::Forward(_) => "forward".into(),
    })
}

#[test]
fn exact_host_before_wildcard_and_wildcards_cover_one_label() {
    let t = table(vec![respond("https://*.example.com", "wild"), respond("https://a.example.com", "exact")]);
    assert_eq!(body(&t, "a.example.com", None, "/"), Some("exact".into()));
    assert_eq!(body(&t, "b.example.com", None, "/"), Some("wild".into()));
    assert_eq!(body(&t, "x.b.example.com", None, "/"), None);
    assert_eq!(body(&t, "example.com", None, "/"), None);
}

#[test]
fn first_match_wins_in_source_order() {
    let mut api = respond("https://a", "api");
    api.prefix = Some("/api".into());
    let mut exact = respond("https://a", "exact");
    exact.path = Some("/api/health".into());
    let mut re = respond("https://a", "regex");
    re.regex = Some("/v[0-9]+/.*".into());
    let t = table(vec![api, exact, re, respond("https://a", "rest")]);
    assert_eq!(body(&t, "a", None, "/api/health"), Some("api".into()));
    assert_eq!(body(&t, "a", None, "/apiary"), Some("api".into()), "prefix is a string prefix, as in Pomerium");
    assert_eq!(body(&t, "a", None, "/v2/x"), Some("regex".into()));
    assert_eq!(body(&t, "a", None, "/xv2/x"), Some("rest".into()), "regex is anchored");
}

#[test]
fn a_from_with_a_port_matches_only_that_port() {
    let t = table(vec![respond("https://a:8443", "8443"), respond("https://a", "any")]);
    assert_eq!(body(&t, "a", Some(8443), "/"), Some("8443".into()));
    assert_eq!(body(&t, "a", Some(443), "/"), Some("any".into()));
    assert_eq!(body(&t, "a", None, "/"), Some("any".into()));
}

#[test]
fn a_bad_spec_is_left_out_and_the_rest_compile() {
    let mut bad = spec("https://a");
    bad.regex = Some("(".into());
    let (t, problems) = RouteTable::compile(&Settings::default(), vec![spec("https://a"), bad, spec("https://b")]);
    assert_eq!(t.len(), 2);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().starts_with("regex: invalid regular expression"), "{}", problems[0]);
}

#[test]
fn contradictory_settings_are_problems() {
    let cases: Vec<(RouteSpec, &str)> = vec![
        (RouteSpec { path: Some("/a".into()), prefix: Some("/b".into()), ..spec("https://a") }, "set only one of"),
        (RouteSpec { to: vec![], ..spec("https://a") }, "route needs `to`"),
        (
            RouteSpec { preserve_host_header: true, host_rewrite: Some("x".into()), ..spec("https://a") },
            "either `host_rewrite`",
        ),
        (RouteSpec { prefix: Some("api".into()), ..spec("https://a") }, "must start with '/'"),
        (RouteSpec { remove_request_headers: vec!["Host".into()], ..spec("https://a") }, "managed by the proxy"),
        (RouteSpec { tls_custom_ca: Some("not pem".into()), ..spec("https://a") }, "holds no PEM certificate"),
        (
            RouteSpec {
                response: Some(DirectResponse { status: 42, body: String::new(), content_type: "t/p".into() }),
                to: vec![],
                ..spec("https://a")
            },
            "not an HTTP status",
        ),
    ];
    for (s, expected) in cases {
        let (_, problems) = RouteTable::compile(&Settings::default(), vec![s]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains(expected), "{} does not contain {expected}", problems[0]);
    }
}

#[test]
fn zero_timeout_disables_and_default_applies() {
    let t = table(vec![RouteSpec { timeout: Some(std::time::Duration::ZERO), ..spec("https://a") }, spec("https://b")]);
    assert_eq!(t.lookup("a", None, "/").expect("route").timeout, None);
    assert_eq!(t.lookup("b", None, "/").expect("route").timeout, Some(std::time::Duration::from_secs(30)));
}

#[test]
fn segment_prefixes_match_whole_segments_and_any_host_is_last() {
    let segments =
        |p: &str, body: &str| RouteSpec { segment_prefix: Some(p.into()), ..respond("https://a.example.com", body) };
    let t = table(vec![segments("/foo/", "foo"), segments("/", "root"), respond("https://*", "anyhost")]);
    assert_eq!(body(&t, "a.example.com", None, "/foo"), Some("foo".into()));
    assert_eq!(body(&t, "a.example.com", None, "/foo/bar"), Some("foo".into()));
    assert_eq!(body(&t, "a.example.com", None, "/foobar"), Some("root".into()), "not a segment of /foo");
    assert_eq!(body(&t, "other.example.com", None, "/foo"), Some("anyhost".into()));
    assert!(!t.has_host("other.example.com"), "a catch-all route does not make every host a return-URL host");
}
