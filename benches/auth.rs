//! Sign-in layer benchmarks: what every authenticated request pays.
//!
//! Run with `cargo bench --bench auth`.
//!
//! * `session/cookie`: the authorize phase's session read for a request with
//!   `Cookie: theme=dark; _postern=<token>; lang=en` — find the credential,
//!   open the sealed session (base64url, ChaCha20-Poly1305, JSON), check
//!   expiry, return the identity. Target: ≤ 2 µs.
//! * `session/bearer`: the same token in `Authorization: Bearer`.
//! * `session/tampered`: a token with one byte changed (refused); what a
//!   flood of forged cookies costs.
//! * `session/seal`: sealing a session (done at sign-in and refresh only).
//! * `assertion/sign`: signing one ES256 identity assertion (no cache).
//! * `assertion/cached`: the assertion for a session and route from the
//!   cache, as every request after the first gets it.
//!
//! The identity is realistic: email, name, five groups, a few extra claims.
//!
//! These use `postern::auth::bench`, a `#[doc(hidden)]` module of thin
//! wrappers over the crate-private functions on the request path.

mod benches {
    use std::hint::black_box;
    use std::time::Duration;

    use criterion::{Criterion, criterion_group};
    use http::{HeaderMap, HeaderValue, header};
    use postern::auth::{Auth, Identity, bench};
    use postern::config::{AuthSettings, Secret};

    fn auth() -> Auth {
        let settings = AuthSettings { cookie_secret: Some(Secret(vec![7u8; 32])), ..AuthSettings::default() };
        Auth::new(&settings, false).0
    }

    fn identity() -> Identity {
        let mut claims = serde_json::Map::new();
        claims.insert("preferred_username".into(), "alice".into());
        claims.insert("locale".into(), "en-GB".into());
        claims.insert("department".into(), "platform engineering".into());
        claims.insert("employee_number".into(), 4242.into());
        Identity {
            subject: "00u1a2b3c4d5e6f7g8h9".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice Admin".into()),
            groups: ["admins", "staff", "platform", "on-call", "eu-west"].map(String::from).to_vec(),
            claims,
        }
    }

    fn headers(pairs: &[(header::HeaderName, String)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).expect("header value"))).collect()
    }

    fn session(c: &mut Criterion) {
        let auth = auth();
        let identity = identity();
        let token = bench::session_token(&auth, &identity);
        let cookie = headers(&[(header::COOKIE, format!("theme=dark; _postern={token}; lang=en"))]);
        let bearer = headers(&[(header::AUTHORIZATION, format!("Bearer {token}"))]);
        let mut forged = token.clone().into_bytes();
        let mid = forged.len() / 2;
        forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        let tampered = headers(&[(header::COOKIE, format!("theme=dark; _postern={forged}; lang=en"))]);

        // Checked once, outside the timed code.
        assert_eq!(bench::authenticate(&auth, &cookie).as_ref(), Some(&identity));
        assert_eq!(bench::authenticate(&auth, &bearer).as_ref(), Some(&identity));
        assert_eq!(bench::authenticate(&auth, &tampered), None);

        let mut group = c.benchmark_group("session");
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_millis(500));
        group.bench_function("cookie", |b| b.iter(|| bench::authenticate(black_box(&auth), black_box(&cookie))));
        group.bench_function("bearer", |b| b.iter(|| bench::authenticate(black_box(&auth), black_box(&bearer))));
        group.bench_function("tampered", |b| b.iter(|| bench::authenticate(black_box(&auth), black_box(&tampered))));
        group.bench_function("seal", |b| b.iter(|| bench::session_token(black_box(&auth), black_box(&identity))));
        group.finish();
    }

    fn assertion(c: &mut Criterion) {
        let auth = auth();
        let identity = identity();
        assert_eq!(bench::cached_assertion(&auth, "s1", &identity), bench::cached_assertion(&auth, "s1", &identity));
        let mut group = c.benchmark_group("assertion");
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_millis(500));
        group.bench_function("sign", |b| b.iter(|| bench::sign_assertion(black_box(&auth), black_box(&identity))));
        group.bench_function("cached", |b| {
            b.iter(|| bench::cached_assertion(black_box(&auth), black_box("s1"), black_box(&identity)))
        });
        group.finish();
    }

    criterion_group!(benches, session, assertion);
}

criterion::criterion_main!(benches::benches);
