//! TLS end to end: serving certificates by SNI, ALPN, plain HTTP modes, and
//! verifying https upstreams.

mod support;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::upstream::{Upstream, tls_connect};
use support::{Options, Postern, self_signed};

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// The leaf certificate the proxy presents for `sni`.
async fn served_cert(p: &Postern, sni: &str) -> CertificateDer<'static> {
    let tls = tls_connect(p.addr, sni, &[b"http/1.1"]).await.expect("TLS handshake");
    let certs = tls.get_ref().1.peer_certificates().expect("server sent certificates");
    certs.first().expect("a leaf certificate").clone().into_owned()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn public_route(from: &str, to: &str, extra: &str) -> String {
    format!("  - from: {from}\n    to: {to}\n    allow_public_unauthenticated_access: true\n{extra}")
}

#[tokio::test]
async fn sni_selects_the_configured_certificate() {
    let (a_cert, a_key) = self_signed(&["a.example.com"]);
    let (b_cert, b_key) = self_signed(&["*.b.example.com"]);
    let up = Upstream::start("up").await;
    let config = format!(
        "certificates:\n  - cert: a.pem\n    key: a.key\n  - cert: b.pem\n    key: b.key\nroutes:\n{}{}",
        public_route("https://a.example.com", &up.url(), ""),
        public_route("https://*.b.example.com", &up.url(), ""),
    );
    let p = Postern::start_with(
        &config,
        Options {
            files: vec![
                ("a.pem".into(), a_cert.clone().into_bytes()),
                ("a.key".into(), a_key.into_bytes()),
                ("b.pem".into(), b_cert.clone().into_bytes()),
                ("b.key".into(), b_key.into_bytes()),
            ],
            ..Options::default()
        },
    );
    let (a, b) = (der(&a_cert), der(&b_cert));
    assert!(served_cert(&p, "a.example.com").await == a, "a.example.com got the wrong certificate");
    assert!(served_cert(&p, "x.b.example.com").await == b, "x.b.example.com got the wrong certificate");
    assert!(served_cert(&p, "X.B.Example.COM").await == b, "SNI is case-insensitive");
    assert!(served_cert(&p, "other.b.example.com").await == b);
    // No name matches: the first configured certificate is the default.
    assert!(served_cert(&p, "nothing.example.org").await == a);

    // And the connection then carries requests.
    let resp = p.client().get(p.url("x.b.example.com", "/hi")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().target, "/hi");
}

#[tokio::test]
async fn without_certificates_a_generated_self_signed_one_is_served_with_a_warning() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!("routes:\n{}", public_route("https://app.example.com", &up.url(), "")));
    let leaf = served_cert(&p, "app.example.com").await;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("X.509");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("SAN extension present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert!(names.iter().any(|n| n == "app.example.com"), "names {names:?}");

    let warning = p
        .logs()
        .into_iter()
        .find(|l| l.contains("self-signed"))
        .unwrap_or_else(|| panic!("no self-signed warning in the log:\n{}", p.logs().join("\n")));
    let v: serde_json::Value = serde_json::from_str(&warning).expect("JSON log line");
    assert_eq!(v["level"].as_str().map(str::to_ascii_uppercase).as_deref(), Some("WARN"), "{warning}");

    let resp = p.client().get(p.url("app.example.com", "/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn alpn_gives_http2_to_h2_clients_and_http1_otherwise() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!("routes:\n{}", public_route("https://app.example.com", &up.url(), "")));

    let resp = p.client().get(p.url("app.example.com", "/h2")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);

    let http1 = reqwest::Client::builder()
        .http1_only()
        .tls_danger_accept_invalid_certs(true)
        .resolve("app.example.com", p.addr)
        .build()
        .expect("client");
    let resp = http1.get(p.url("app.example.com", "/h1")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    // The negotiated protocol, as a TLS client sees it.
    let tls = tls_connect(p.addr, "app.example.com", &[b"h2", b"http/1.1"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls = tls_connect(p.addr, "app.example.com", &[b"http/1.1"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn insecure_server_serves_plain_http() {
    let up = Upstream::start("up").await;
    let p = Postern::start(&format!(
        "insecure_server: true\nroutes:\n{}",
        public_route("http://app.example.com", &up.url(), "")
    ));
    let url = p.url("app.example.com", "/plain?x=1");
    assert!(url.starts_with("http://"), "{url}");
    let resp = p.client().get(url).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.target, "/plain?x=1");
    assert_eq!(seen.headers.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"http"[..]));

    // A TLS handshake on the plain listener fails.
    assert!(tls_connect(p.addr, "app.example.com", &[b"http/1.1"]).await.is_err());
}

async fn assert_redirects(p: &Postern, redirect_port: u16, https_port: u16) {
    let client = p.client();
    for (host, path) in [("app.example.com", "/same/path?q=1"), ("other.example.com", "/")] {
        let resp =
            client.get(format!("http://{host}:{redirect_port}{path}")).send().await.expect("send to redirect port");
        assert_eq!(resp.status(), 308, "{host}{path}");
        assert_eq!(
            resp.headers().get("location").and_then(|v| v.to_str().ok()),
            Some(format!("https://{host}:{https_port}{path}").as_str()),
            "{host}{path}"
        );
    }
}

#[tokio::test]
async fn http_redirect_addr_sends_plain_http_to_https() {
    let up = Upstream::start("up").await;
    let (main_port, redirect_port) = (free_port(), free_port());
    let p = Postern::start(&format!(
        "address: 127.0.0.1:{main_port}\nhttp_redirect_addr: 127.0.0.1:{redirect_port}\nroutes:\n{}",
        public_route("https://app.example.com", &up.url(), "")
    ));
    assert_eq!(p.addr.port(), main_port);
    assert_redirects(&p, redirect_port, main_port).await;
    assert!(up.seen().is_empty(), "a redirect never reaches the upstream");
}

/// With `address: 127.0.0.1:0` the OS picks the port; the redirect must
/// point at the port actually listened on.
#[tokio::test]
async fn http_redirect_points_at_the_bound_port() {
    let up = Upstream::start("up").await;
    let redirect_port = free_port();
    let p = Postern::start(&format!(
        "http_redirect_addr: 127.0.0.1:{redirect_port}\nroutes:\n{}",
        public_route("https://app.example.com", &up.url(), "")
    ));
    assert_redirects(&p, redirect_port, p.addr.port()).await;
}

#[tokio::test]
async fn https_upstream_is_verified_with_the_route_ca() {
    let (up_cert, up_key) = self_signed(&["127.0.0.1", "localhost"]);
    let (other_ca, _) = self_signed(&["127.0.0.1"]);
    let up = Upstream::start_tls("secure", &up_cert, &up_key).await;
    let inline_ca: String = up_cert.lines().map(|l| format!("      {l}\n")).collect();
    let config = format!(
        "routes:\n{}{}{}{}{}",
        public_route("https://ca.example.com", &up.https_url(), "    tls_custom_ca_file: upstream-ca.pem\n"),
        public_route("https://inline.example.com", &up.https_url(), &format!("    tls_custom_ca: |\n{inline_ca}")),
        public_route("https://noca.example.com", &up.https_url(), ""),
        public_route("https://wrongca.example.com", &up.https_url(), "    tls_custom_ca_file: other-ca.pem\n"),
        public_route("https://skip.example.com", &up.https_url(), "    tls_skip_verify: true\n"),
    );
    let p = Postern::start_with(
        &config,
        Options {
            files: vec![
                ("upstream-ca.pem".into(), up_cert.clone().into_bytes()),
                ("other-ca.pem".into(), other_ca.into_bytes()),
            ],
            ..Options::default()
        },
    );
    let client = p.client();
    for (host, status) in [
        ("ca.example.com", 200),
        ("inline.example.com", 200),
        ("noca.example.com", 502),
        ("wrongca.example.com", 502),
        ("skip.example.com", 200),
    ] {
        let before = up.seen().len();
        let resp = client.get(p.url(host, "/secure")).send().await.expect("send");
        assert_eq!(resp.status(), status, "{host}");
        let reached = up.seen().len() - before;
        if status == 200 {
            assert_eq!(resp.headers()["x-upstream"], "secure", "{host}");
            assert_eq!(reached, 1, "{host}");
        } else {
            assert_eq!(reached, 0, "{host}: an unverified upstream got the request");
            let json: serde_json::Value = resp.json().await.expect("JSON");
            assert_eq!(json["error"], "upstream_unavailable", "{host}");
        }
    }
}
