#![allow(dead_code)]
//! A real OpenID Connect provider for tests: `tests/support/oidc/server.mjs`
//! (panva/oidc-provider on Node), run as a child process on 127.0.0.1 with a
//! port the OS picks. Plain http; the issuer is `http://127.0.0.1:PORT`.
//!
//! * Users (password `password` for all): `alice` (alice@example.com,
//!   verified, "Alice Admin", groups admins+staff), `bob` (bob@example.org,
//!   verified, "Bob Builder", staff), `carol` (carol@other.test, NOT verified,
//!   "Carol", no groups). Scopes: `openid`, `profile` (name, groups),
//!   `email` (email, email_verified), `groups` (groups); these claims are in
//!   the ID token itself, not only at userinfo.
//! * Authorization code flow only, PKCE with S256 required (the RP must send
//!   `code_challenge_method=S256` explicitly). `state` comes back, and so does
//!   `iss` (RFC 9207). Default client auth: `client_secret_basic`.
//! * Every client gets a refresh token without asking for `offline_access`.
//!   Refresh tokens rotate: a refresh returns a new one and the old one is
//!   spent; presenting a spent one revokes the whole grant (`invalid_grant`).
//!   Without `offline_access` the grant is bound to the IdP session, so
//!   RP-initiated logout revokes it too.
//! * Login: `GET /interaction/<uid>` is an HTML form (`login`, `password`)
//!   posting to `/interaction/<uid>/login`; consent is implicit. [`browse`]
//!   fills it in.
//! * Logout: `GET /session/end?id_token_hint=..&post_logout_redirect_uri=..&state=..`
//!   answers 200 with a form (`id="op.logoutForm"`, hidden `xsrf` and
//!   `logout=yes`) to POST to `/session/end/confirm`, which 303s to the
//!   post-logout URI. [`browse`] submits it.
//!
//! The process is killed when [`Idp`] drops. It is spawned from a supervisor
//! thread that lives as long as the test binary, with `PR_SET_PDEATHSIG`
//! (SIGKILL), so it also dies if the test process dies. (Gotcha: that signal
//! fires when the *thread* that forked the child exits, not the process; that
//! is why we never spawn from the test's own thread, which may be gone while
//! the `Idp` lives on in a static or another thread.) As a second line, the
//! server exits when its stdin (a pipe we hold) reaches EOF.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most requests one [`browse`] makes.
pub const MAX_HOPS: usize = 20;
/// Longest one [`browse`] may take.
pub const BROWSE_TIMEOUT: Duration = Duration::from_secs(60);
// Generous: on a loaded 2-core CI machine several tests start Node at once.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A client registered at the IdP (authorization code + refresh token grants).
#[derive(Clone, Debug)]
pub struct IdpClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
}

impl IdpClient {
    pub fn new(client_id: &str, client_secret: &str, redirect_uri: &str, post_logout_redirect_uri: &str) -> IdpClient {
        IdpClient {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uris: vec![redirect_uri.into()],
            post_logout_redirect_uris: vec![post_logout_redirect_uri.into()],
        }
    }
}

/// Lifetimes and refresh behaviour of the IdP.
#[derive(Clone, Debug)]
pub struct IdpOptions {
    pub id_token_ttl_secs: u64,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// A refresh returns a new refresh token and spends the old one.
    pub rotate_refresh_token: bool,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            id_token_ttl_secs: 300,
            access_token_ttl_secs: 300,
            refresh_token_ttl_secs: 86_400,
            rotate_refresh_token: true,
        }
    }
}

/// A running IdP, killed on drop.
pub struct Idp {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Idp {
    /// Installs `node_modules` if needed (`npm ci`, once per process, under a
    /// lock file so parallel test binaries don't collide), starts
    /// `server.mjs` and waits (20 s at most) for it to listen.
    pub fn start(clients: &[IdpClient]) -> Idp {
        Self::start_with(clients, IdpOptions::default())
    }

    pub fn start_with_ttl(clients: &[IdpClient], id_token_ttl_secs: u64) -> Idp {
        Self::start_with(clients, IdpOptions { id_token_ttl_secs, ..IdpOptions::default() })
    }

    pub fn start_with(clients: &[IdpClient], options: IdpOptions) -> Idp {
        Self::start_on(clients, options, 0)
    }

    /// As [`Idp::start_with`], listening on `port` (0: any), e.g. to
    /// restart an IdP at the same issuer URL (with new keys, no grants).
    pub fn start_on(clients: &[IdpClient], options: IdpOptions, port: u16) -> Idp {
        ensure_installed();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = serde_json::json!({
            "clients": clients.iter().map(|c| serde_json::json!({
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "redirect_uris": c.redirect_uris,
                "post_logout_redirect_uris": c.post_logout_redirect_uris,
            })).collect::<Vec<_>>(),
            "id_token_ttl": options.id_token_ttl_secs,
            "access_token_ttl": options.access_token_ttl_secs,
            "refresh_token_ttl": options.refresh_token_ttl_secs,
            "rotate_refresh_token": options.rotate_refresh_token,
        });
        let config_path = dir.path().join("idp.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).expect("json")).expect("write idp config");

        let mut command = Command::new(node());
        command
            .arg(oidc_dir().join("server.mjs"))
            .current_dir(oidc_dir())
            .env("IDP_CONFIG", &config_path)
            .env("PORT", port.to_string())
            .env("IDP_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = super::supervised::spawn(command).unwrap_or_else(|e| panic!("spawn {}: {e}", node().display()));
        let stdin = child.stdin.take();

        let logs = Arc::new(Mutex::new(Vec::new()));
        {
            let logs = logs.clone();
            let stderr = child.stderr.take().expect("stderr piped");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().expect("idp log lock").push(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let stdout = child.stdout.take().expect("stdout piped");
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    logs.lock().expect("idp log lock").push(format!("[stdout] {line}"));
                    let _ = tx.send(line);
                }
            });
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let issuer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(issuer) = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["issuer"].as_str().map(str::to_string))
                    {
                        break issuer;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Give the stderr reader a moment to collect the last lines.
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "the test IdP did not start within {START_TIMEOUT:?}; log:\n{}",
                        logs.lock().expect("idp log lock").join("\n")
                    );
                }
            }
        };
        Idp { issuer, child: Some(child), stdin, dir, logs }
    }

    /// `issuer + path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// Whether `url` is on this IdP.
    /// An IdP this process did not start (a demo script's), at `issuer`:
    /// [`browse`] signs in through it; dropping it stops nothing.
    pub fn attach(issuer: &str) -> Idp {
        Idp {
            issuer: issuer.trim_end_matches('/').to_string(),
            child: None,
            stdin: None,
            dir: tempfile::tempdir().expect("temp dir"),
            logs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn owns(&self, url: &str) -> bool {
        url == self.issuer || url.starts_with(&format!("{}/", self.issuer))
    }

    /// The IdP's log (stderr, one entry a line).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("idp log lock").clone()
    }

    /// Revokes every grant of `sub` and every token issued under them
    /// (refresh, access, codes): the RP's next refresh gets `invalid_grant`.
    /// The user's IdP session stays, so a new authorization request is
    /// answered without a login form (single sign-on).
    pub async fn revoke(&self, sub: &str) {
        self.revoke_hook(sub, false).await;
    }

    /// As [`Idp::revoke`], and also ends the user's IdP sessions: the next
    /// authorization request shows the login form again.
    pub async fn revoke_and_end_sessions(&self, sub: &str) {
        self.revoke_hook(sub, true).await;
    }

    async fn revoke_hook(&self, sub: &str, sessions: bool) {
        let mut url = reqwest::Url::parse(&self.url("/test/revoke")).expect("revoke url");
        url.query_pairs_mut().append_pair("sub", sub);
        if sessions {
            url.query_pairs_mut().append_pair("sessions", "1");
        }
        let resp = plain_client().post(url).send().await.expect("POST /test/revoke");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "/test/revoke answered {status}: {body}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The temporary directory that holds the IdP's config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- test IdP log ({}) ----\n{}\n---- end of IdP log ----", self.issuer, self.logs().join("\n"));
        }
    }
}

/// One request [`browse`] made.
#[derive(Clone, Debug)]
pub struct Hop {
    pub url: String,
    pub status: u16,
    /// The `Location` header, resolved against `url` (absolute).
    pub location: Option<String>,
}

/// What [`browse`] saw. `hops` holds every request made, in order, the last
/// one included; `final_*` describe the last response. A transport error
/// (e.g. nothing listening) ends the trace with `final_status` 0 and the error
/// in `final_body`.
#[derive(Clone, Debug)]
pub struct Trace {
    pub hops: Vec<Hop>,
    pub final_status: u16,
    pub final_url: String,
    pub final_body: String,
}

impl Trace {
    /// The `Location` of the last response, if it was a redirect.
    pub fn final_location(&self) -> Option<&str> {
        self.hops.last().and_then(|h| h.location.as_deref())
    }

    /// The first redirect target that starts with `prefix`.
    pub fn location_starting_with(&self, prefix: &str) -> Option<&str> {
        self.hops.iter().filter_map(|h| h.location.as_deref()).find(|l| l.starts_with(prefix))
    }

    /// Whether any request went to `url_prefix`.
    pub fn visited(&self, url_prefix: &str) -> bool {
        self.hops.iter().any(|h| h.url.starts_with(url_prefix))
    }

    /// The hops, one a line, for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for h in &self.hops {
            out.push_str(&format!("{} {}", h.status, h.url));
            if let Some(l) = &h.location {
                out.push_str(&format!(" -> {l}"));
            }
            out.push('\n');
        }
        out.push_str(&format!("final: {} {}\n", self.final_status, self.final_url));
        out
    }
}

/// A browser-like client: cookie store, no automatic redirects, 30 s
/// timeout, any TLS certificate accepted. Each of `hosts` resolves to `addr`
/// (for a proxy under test); the IdP's IP-literal URLs are not affected.
pub fn browser(hosts: &[&str], addr: Option<std::net::SocketAddr>) -> reqwest::Client {
    super::init_crypto();
    let mut builder = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30));
    if let Some(addr) = addr {
        for host in hosts {
            builder = builder.resolve(host, addr);
        }
    }
    builder.build().expect("browser client")
}

fn plain_client() -> reqwest::Client {
    super::init_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Drives a browser-like sign-in from `url`: follows every redirect itself
/// (`client` must not follow redirects and should keep cookies, see
/// [`browser`]); on this IdP's login form submits `credentials` (once; a
/// wrong password ends on the 401 form); on the IdP's logout confirmation
/// (or any IdP page that is a form of hidden inputs only) submits it. Ends at
/// the first response that is not a redirect and not one of those forms.
pub async fn browse(client: &reqwest::Client, url: &str, credentials: Option<(&str, &str)>, idp: &Idp) -> Trace {
    browse_until(client, url, credentials, idp, None).await
}

/// As [`browse`], but also stops at a redirect whose (resolved) `Location`
/// is off the IdP and starts with `stop_at`, without following it: the
/// trace's last hop then carries that location (see [`Trace::final_location`]).
/// Use it to catch the authorization code for a `redirect_uri` nothing serves.
pub async fn browse_until(
    client: &reqwest::Client,
    url: &str,
    credentials: Option<(&str, &str)>,
    idp: &Idp,
    stop_at: Option<&str>,
) -> Trace {
    let deadline = Instant::now() + BROWSE_TIMEOUT;
    let mut hops = Vec::new();
    let mut credentials = credentials;
    let mut current = url.to_string();
    // Some(body) = POST this urlencoded body.
    let mut post: Option<String> = None;
    let stops_here = |target: &str| !idp.owns(target) && stop_at.is_some_and(|p| target.starts_with(p));

    for _ in 0..MAX_HOPS {
        let request = match &post {
            Some(body) => client
                .post(&current)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.clone()),
            None => client.get(&current),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let response = match tokio::time::timeout(left, request.send()).await {
            Err(_) => return ended(hops, &current, 0, format!("browse timed out after {BROWSE_TIMEOUT:?}")),
            Ok(Err(e)) => return ended(hops, &current, 0, format!("request failed: {e:?}")),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| resolve(&current, l));
        let left = deadline.saturating_duration_since(Instant::now());
        let body = match tokio::time::timeout(left, response.text()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => format!("(body unreadable: {e})"),
            Err(_) => "(body timed out)".into(),
        };
        hops.push(Hop { url: current.clone(), status, location: location.clone() });

        if let (true, Some(next)) = ((300..400).contains(&status), location) {
            if stops_here(&next) {
                return Trace { hops, final_status: status, final_url: current, final_body: body };
            }
            // 307/308 repeat the request as it was; the others become GETs.
            if status != 307 && status != 308 {
                post = None;
            }
            current = next;
            continue;
        }

        if status == 200 && idp.owns(&current) {
            let forms = parse_forms(&body);
            if let Some(form) = forms.iter().find(|f| f.has_field("password")) {
                if let Some((user, password)) = credentials.take() {
                    let mut fields = form.hidden_fields();
                    fields.retain(|(k, _)| k != "login" && k != "password");
                    fields.push(("login".into(), user.into()));
                    fields.push(("password".into(), password.into()));
                    current = resolve(&current, &form.action);
                    post = Some(urlencode(&fields));
                    continue;
                }
            } else if let Some(form) = forms.iter().find(|f| f.method_is_post() && f.only_hidden()) {
                let target = resolve(&current, &form.action);
                if stops_here(&target) {
                    return Trace { hops, final_status: status, final_url: current, final_body: body };
                }
                current = target;
                post = Some(urlencode(&form.hidden_fields()));
                continue;
            }
        }
        return Trace { hops, final_status: status, final_url: current, final_body: body };
    }
    let last = hops.last().map(|h| h.url.clone()).unwrap_or_default();
    let trace = Trace { hops, final_status: 0, final_url: last, final_body: String::new() };
    panic!("browse: more than {MAX_HOPS} hops:\n{}", trace.describe());
}

fn ended(hops: Vec<Hop>, url: &str, status: u16, body: String) -> Trace {
    Trace { hops, final_status: status, final_url: url.to_string(), final_body: body }
}

fn resolve(base: &str, location: &str) -> String {
    match reqwest::Url::parse(base).and_then(|b| b.join(location)) {
        Ok(u) => u.to_string(),
        Err(_) => location.to_string(),
    }
}

/// `application/x-www-form-urlencoded`, as browsers encode forms.
pub fn urlencode(fields: &[(String, String)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("url");
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in fields {
            pairs.append_pair(k, v);
        }
    }
    url.query().unwrap_or("").to_string()
}

// ---- a very small HTML form reader (enough for the IdP's own pages) ----

#[derive(Debug, Default)]
struct Form {
    action: String,
    method: String,
    /// (type, name, value)
    inputs: Vec<(String, String, String)>,
}

impl Form {
    fn has_field(&self, name: &str) -> bool {
        self.inputs.iter().any(|(_, n, _)| n == name)
    }
    fn method_is_post(&self) -> bool {
        self.method.eq_ignore_ascii_case("post")
    }
    fn only_hidden(&self) -> bool {
        !self.inputs.is_empty() && self.inputs.iter().all(|(t, _, _)| t.eq_ignore_ascii_case("hidden"))
    }
    fn hidden_fields(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter(|(t, n, _)| t.eq_ignore_ascii_case("hidden") && !n.is_empty())
            .map(|(_, n, v)| (n.clone(), v.clone()))
            .collect()
    }
}

fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut pos = 0;
    while let Some(start) = lower[pos..].find("<form").map(|i| i + pos) {
        let Some(tag_end) = lower[start..].find('>').map(|i| i + start) else { break };
        let attrs = parse_attrs(&html[start + 5..tag_end]);
        let end = lower[tag_end..].find("</form").map(|i| i + tag_end).unwrap_or(html.len());
        let mut form = Form {
            action: attr(&attrs, "action").unwrap_or_default(),
            method: attr(&attrs, "method").unwrap_or_else(|| "get".into()),
            inputs: Vec::new(),
        };
        let mut p = tag_end;
        while let Some(i) = lower[p..end].find("<input").map(|i| i + p) {
            let Some(e) = lower[i..end].find('>').map(|e| e + i) else { break };
            let a = parse_attrs(&html[i + 6..e]);
            form.inputs.push((
                attr(&a, "type").unwrap_or_else(|| "text".into()),
                attr(&a, "name").unwrap_or_default(),
                attr(&a, "value").unwrap_or_default(),
            ));
            p = e;
        }
        forms.push(form);
        pos = end.max(tag_end);
        if pos >= html.len() {
            break;
        }
    }
    forms
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// `name="value" name='value' name=value name` inside a tag.
fn parse_attrs(text: &str) -> Vec<(String, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' && bytes[i] != b'/' {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name = text[start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let quote = bytes[i];
                i += 1;
                let vs = i;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                value = text[vs..i].to_string();
                i += 1;
            } else {
                let vs = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                value = text[vs..i].to_string();
            }
        }
        out.push((name, unescape(&value)));
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

// ---- small helpers for tests that talk OAuth themselves ----

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64url (padding optional); `None` on a bad character.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

/// The payload of a JWT, unverified.
pub fn jwt_payload(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = b64url_decode(part).unwrap_or_else(|| panic!("JWT payload is not base64url: {jwt}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT payload is not JSON ({e}): {jwt}"))
}

/// A fresh PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce_pair() -> (String, String) {
    let verifier = b64url_encode(&random_bytes(32));
    let challenge = b64url_encode(&sha256(verifier.as_bytes()));
    (verifier, challenge)
}

/// Random bytes from ring (through rustls' provider).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut buf).expect("random bytes");
    buf
}

/// SHA-256 from ring (through rustls' provider).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let rustls::SupportedCipherSuite::Tls13(suite) = suite else { unreachable!("a TLS 1.3 suite") };
    suite.common.hash_provider.hash(data).as_ref().to_vec()
}

// ---- node, npm, the supervisor ----

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc")
}

/// `node`, or `$POSTERN_TEST_NODE`.
fn node() -> PathBuf {
    std::env::var_os("POSTERN_TEST_NODE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("node"))
}

/// Runs `npm ci` in `tests/support/oidc` unless `node_modules` matches
/// `package-lock.json` (a copy of the lock file is kept in node_modules as a
/// stamp). Once per process; across processes serialised by `flock` on
/// `tests/support/oidc/.install.lock` (git-ignored).
fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(message) = DONE.get_or_init(install) {
        panic!("{message}");
    }
}

fn install() -> Result<(), String> {
    let dir = oidc_dir();
    let lock_path = dir.join(".install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {}", lock_path.display()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The lock is released when `lock` is closed, at the end of this function.

    let package_lock =
        std::fs::read(dir.join("package-lock.json")).map_err(|e| format!("read package-lock.json: {e}"))?;
    let stamp = dir.join("node_modules/.postern-package-lock.json");
    let installed = dir.join("node_modules/oidc-provider/package.json").exists()
        && std::fs::read(&stamp).is_ok_and(|s| s == package_lock);
    if installed {
        return Ok(());
    }

    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run npm ci in {}: {e} (is Node.js/npm installed?)", dir.display()))?;
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait npm ci: {e}"))? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}{}", out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("npm ci in {} failed ({s}):\n{output}", dir.display())),
        None => return Err(format!("npm ci in {} timed out after {INSTALL_TIMEOUT:?}:\n{output}", dir.display())),
    }
    let _ = std::io::stderr().write_all(format!("test IdP: npm ci done in {}\n", dir.display()).as_bytes());
    std::fs::write(&stamp, &package_lock).map_err(|e| format!("write {}: {e}", stamp.display()))?;
    Ok(())
}

impl Idp {
    /// Stops the IdP now (as dropping it would); the value stays usable
    /// for its URLs and logs.
    pub fn stop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port the IdP listens on.
    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().and_then(|p| p.parse().ok()).expect("issuer has a port")
    }
}
