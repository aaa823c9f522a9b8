//! The per-request pipeline: a fixed sequence of small phases.
//!
//! `target` (host and normalized path) → Postern's own endpoints (the
//! authenticate host, `/.postern/*`) → `lookup` → `authorize` (session,
//! policy) → `act` (direct response or forward) → `finish` (cookies, route
//! response headers, accounting). Each phase is a plain function; only
//! [`respond`](super::respond) turns an error into a response.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Proxy;
use super::body::{BodyCut, BodyLimits, Observed, ProxyBody, empty, full};
use super::forward::{self, Outbound, Peer};
use super::respond::{ProxyError, error_response, is_navigation};
use crate::auth::endpoints::{self, EndpointRequest, Reply, RouteHost};
use crate::auth::{AccessRequest, Authn, CredentialSource, session};
use crate::cors;
use crate::routes::{Action, Route, RouteTable, host, path};

/// Largest form body Postern reads for its own endpoints (sign-out).
const FORM_LIMIT: usize = 16 * 1024;

/// What the pipeline knows about one request, for logs, cookies and errors.
pub(crate) struct RequestCtx {
    started: Instant,
    method: Method,
    host: String,
    path: String,
    navigation: bool,
    /// `https` unless the client reached us over plain HTTP.
    scheme: &'static str,
    route: Option<Arc<Route>>,
    upstream: Option<Arc<str>>,
    subject: Option<String>,
    /// `Set-Cookie` values to add to whatever response is sent.
    cookies: Vec<HeaderValue>,
    /// The request's `Origin`, for the route's CORS policy.
    origin: Option<HeaderValue>,
    /// Postern answered a preflight: its CORS headers are already final.
    preflight_answered: bool,
}

/// Serves one request; never fails (errors become responses).
pub(crate) async fn handle(proxy: Arc<Proxy>, peer: Peer, req: Request<Incoming>) -> Response<Observed> {
    let table = proxy.routes.snapshot();
    let peer = Peer { trusted: table.trusts(peer.ip), ..peer };
    let mut ctx = RequestCtx {
        started: Instant::now(),
        method: req.method().clone(),
        host: String::new(),
        // Set to the normalized path once it is known (the raw one if it is
        // refused), so the access log names what was matched.
        path: String::new(),
        navigation: is_navigation(req.headers()),
        scheme: scheme(&req, &peer),
        route: None,
        upstream: None,
        subject: None,
        cookies: Vec::new(),
        origin: req.headers().get(header::ORIGIN).cloned(),
        preflight_answered: false,
    };
    let response = match run(&proxy, &table, &peer, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(err) => {
            match &err {
                ProxyError::BadPath(e) => tracing::debug!(http.path = %ctx.path, error = %e, "refused request path"),
                ProxyError::Auth(e) => tracing::info!(http.host = %ctx.host, error = %e, "sign-in step refused"),
                _ => {}
            }
            error_response(&err, ctx.navigation)
        }
    };
    finish(&proxy, ctx, response)
}

/// Whether a request that reached the plain-HTTP listener is served there:
/// its route says `http://` (an Ingress host without TLS, a Route with an
/// `http://` from) and needs no sign-in, since session cookies are
/// `Secure` and credentials must not cross the network in the clear.
/// Everything else is redirected to https. A request refused by
/// [`check_head`](super::limits::check_head) is "served" so that `handle`
/// answers it rather than redirecting it under a host it may not mean.
pub(crate) fn served_over_plain_http(proxy: &Proxy, req: &Request<Incoming>) -> bool {
    let table = proxy.routes.snapshot();
    if super::limits::check_head(req, table.limits()).is_err() {
        // Refused by `handle`, not redirected under the wrong host.
        return true;
    }
    let Ok((host, port)) = target(req) else { return false };
    let Ok(path) = path::normalize(req.uri().path()) else { return false };
    if endpoints::is_own_path(&path) || proxy.auth.authenticate.as_ref().is_some_and(|a| a.host == host) {
        return false;
    }
    table
        .lookup(&host, port, &path)
        .is_some_and(|r| r.from.scheme == http::uri::Scheme::HTTP && r.policy.is_public() && !r.pass_identity_headers)
}

/// The scheme the client used: TLS to us, or a trusted proxy's word.
fn scheme(req: &Request<Incoming>, peer: &Peer) -> &'static str {
    if peer.tls {
        return "https";
    }
    let forwarded_https = peer.trusted
        && req.headers().get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if forwarded_https { "https" } else { "http" }
}

async fn run(
    proxy: &Proxy,
    table: &RouteTable,
    peer: &Peer,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let Err(e) = super::limits::check_head(&req, table.limits()) {
        ctx.path = req.uri().path().to_string();
        return Err(e);
    }
    let (host, port, path) =
        match target(&req).and_then(|(host, port)| Ok((host, port, path::normalize(req.uri().path())?))) {
            Ok(t) => t,
            Err(e) => {
                ctx.path = req.uri().path().to_string();
                return Err(e);
            }
        };
    (ctx.host, ctx.path) = (host, path);
    let known_host = |h: &str| table.has_host(h);
    if let Some(a) = &proxy.auth.authenticate
        && a.host == ctx.host
    {
        let ereq = endpoint_request(ctx, req, &known_host).await?;
        let reply = Box::pin(endpoints::authenticate_host(&proxy.auth, ereq)).await?;
        return Ok(render(reply, ctx));
    }
    if endpoints::is_own_path(&ctx.path) {
        let route = table.first_route_for_host(&ctx.host, port).ok_or(ProxyError::NoRoute)?.clone();
        ctx.route = Some(route.clone());
        let owner = RouteHost { cookie: &route.cookie, route_name: &route.name, audience: &route.from.host };
        let ereq = endpoint_request(ctx, req, &known_host).await?;
        let reply = Box::pin(endpoints::route_host(&proxy.auth, owner, ereq)).await?;
        return Ok(render(reply, ctx));
    }
    let route = table.lookup(&ctx.host, port, &ctx.path).ok_or(ProxyError::NoRoute)?.clone();
    ctx.route = Some(route.clone());
    let preflight = cors::is_preflight(req.method(), req.headers());
    if preflight && let Some(policy) = &route.cors {
        // Answered here: never forwarded, no session needed.
        let (status, headers) = policy.preflight(req.headers());
        let mut resp = Response::new(empty());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        ctx.preflight_answered = true;
        return Ok(resp);
    }
    let authn = if preflight && route.cors_allow_preflight {
        // Pomerium's `cors_allow_preflight`: the upstream answers it.
        Authn::default()
    } else {
        authorize(proxy, &route, ctx, &req).await?
    };
    act(proxy, &route, peer, ctx, req, authn).await
}

/// Host (lowercase, no port) and port the request is for: the request
/// target's authority (HTTP/2, absolute-form) or the `Host` header.
fn target(req: &Request<Incoming>) -> Result<(String, Option<u16>), ProxyError> {
    let (host, port) = client_authority(req).and_then(host::split_host_port).ok_or(ProxyError::NoHost)?;
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return Err(ProxyError::NoHost);
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The authority the client asked for, exactly as sent.
fn client_authority(req: &Request<Incoming>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// [`client_authority`] as a header value: the `Host` header itself when
/// that is where it came from (no copy).
fn client_authority_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// `scheme://authority` as the client sees this host.
fn origin(ctx: &RequestCtx, req: &Request<Incoming>) -> String {
    format!("{}://{}", ctx.scheme, client_authority(req).unwrap_or(&ctx.host))
}

/// The sign-in phase: one call into `auth`, which reads the session and
/// evaluates the route's policy. No identity and not allowed: sign in;
/// identity but not allowed: 403.
async fn authorize(
    proxy: &Proxy,
    route: &Route,
    ctx: &mut RequestCtx,
    req: &Request<Incoming>,
) -> Result<Authn, ProxyError> {
    if crate::auth::session::cookie_is_ambiguous(req.headers(), &route.cookie.name) {
        return Err(ProxyError::AmbiguousSessionCookie);
    }
    let origin = origin(ctx, req);
    let access = proxy
        .auth
        .authorize(&AccessRequest {
            headers: req.headers(),
            method: req.method().as_str(),
            path: &ctx.path,
            origin: &origin,
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            cors_preflight: cors::is_preflight(req.method(), req.headers()),
            policy: &route.policy,
            cookie: &route.cookie,
            wants_identity: route.pass_identity_headers,
        })
        .await;
    ctx.cookies.extend(access.set_cookies);
    let authn = access.decision?;
    ctx.subject = authn.session.as_ref().map(|s| s.identity.subject.clone());
    Ok(authn)
}

async fn act(
    proxy: &Proxy,
    route: &Arc<Route>,
    peer: &Peer,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
    authn: Authn,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstreams = match &route.action {
        Action::Respond(direct) => {
            let mut resp = Response::new(full(direct.body.clone()));
            *resp.status_mut() = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
            if let Ok(ct) = HeaderValue::from_str(&direct.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return Ok(resp);
        }
        Action::Forward(upstreams) => upstreams,
    };
    session::strip_credentials(
        req.headers_mut(),
        &route.cookie.name,
        authn.source == Some(CredentialSource::Authorization),
    );
    if route.pass_identity_headers
        && let Some(s) = &authn.session
    {
        let jwt = proxy.auth.signer.assertion(&s.id, &route.name, &ctx.host, &route.from.host, &s.identity);
        if let Ok(v) = HeaderValue::from_str(&jwt) {
            req.headers_mut().insert(HeaderName::from_static("x-postern-jwt-assertion"), v.clone());
            // Apps written for Pomerium verify this one.
            req.headers_mut().insert(HeaderName::from_static("x-pomerium-jwt-assertion"), v);
        }
    }
    let client_upgrade =
        (route.allow_websockets && forward::upgrade_requested(&req).is_some()).then(|| hyper::upgrade::on(&mut req));
    let authority = client_authority_value(&req).ok_or(ProxyError::NoHost)?;
    let limits = body_limits(proxy, route, &req, client_upgrade.is_some())?;
    let out = Outbound::new(req, route, peer, authority, &ctx.path, limits);
    let body = out.body.clone();
    let metrics = proxy.metrics.clone();
    let name = route.name.clone();
    // Boxed, as are the endpoint and sign-in futures: each enclosing
    // future would otherwise carry its kilobytes, and every level of
    // `.await` copies its child whole (measured: memcpy was the largest
    // single item in a request's profile).
    let forwarded = Box::pin(forward::forward(route, upstreams, out, client_upgrade, move |kind| {
        metrics.upstream_error(&name, kind)
    }))
    .await;
    // A body cut off by a limit fails the upstream request; the answer is
    // the client's fault, not the upstream's.
    let (resp, upstream) = match (forwarded, body.cut()) {
        (Err(_), Some(BodyCut::TooLarge)) => return Err(ProxyError::BodyTooLarge),
        (Err(_), Some(BodyCut::Stalled)) => return Err(ProxyError::BodyTimeout),
        (Err(_), Some(BodyCut::Unreadable)) => return Err(ProxyError::BadBody),
        (result, _) => result?,
    };
    ctx.upstream = Some(upstream);
    Ok(resp)
}

/// The route's body limits for this request. A `Content-Length` over
/// `max_request_body` is refused before anything is sent upstream; a
/// chunked body is counted as it streams. An upgrade (WebSocket) gets no
/// stall timer: its traffic may rightly pause for long, and the route's
/// `idle_timeout` bounds it.
fn body_limits(proxy: &Proxy, route: &Route, req: &Request<Incoming>, upgrade: bool) -> Result<BodyLimits, ProxyError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let (Some(max), Some(len)) = (route.max_request_body, declared)
        && len > max
    {
        return Err(ProxyError::BodyTooLarge);
    }
    let stall = proxy.routes.snapshot().limits().request_body_timeout;
    Ok(BodyLimits { max: route.max_request_body, stall: (!stall.is_zero() && !upgrade).then_some(stall) })
}

/// Collects what an endpoint needs from the request (and a small form body).
async fn endpoint_request<'a>(
    ctx: &'a RequestCtx,
    req: Request<Incoming>,
    known_host: &'a (dyn Fn(&str) -> bool + Sync),
) -> Result<EndpointRequest<'a>, ProxyError> {
    let origin = origin(ctx, &req);
    let (parts, body) = req.into_parts();
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    let form = if parts.method == Method::POST && is_form {
        let bytes = http_body_util::Limited::new(body, FORM_LIMIT)
            .collect()
            .await
            .map_err(|_| ProxyError::BodyTooLarge)?
            .to_bytes();
        endpoints::query_pairs(&String::from_utf8_lossy(&bytes))
    } else {
        Vec::new()
    };
    Ok(EndpointRequest {
        method: parts.method,
        path: &ctx.path,
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        origin,
        host: &ctx.host,
        form,
        navigation: ctx.navigation,
        known_host,
    })
}

/// Turns an endpoint's reply into a response.
fn render(reply: Reply, ctx: &mut RequestCtx) -> Response<ProxyBody> {
    let (status, content_type, body, location, cookies) = match reply {
        Reply::Redirect { location, cookies } => (StatusCode::FOUND, None, String::new(), Some(location), cookies),
        Reply::Page { status, html, cookies } => (status, Some("text/html; charset=utf-8"), html, None, cookies),
        Reply::Json { status, body } => (status, Some("application/json"), format!("{body}\n"), None, vec![]),
        Reply::Text { content_type, body } => (StatusCode::OK, Some(content_type), body, None, vec![]),
    };
    ctx.cookies.extend(cookies);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The sign-in pages and the callbacks carry the authorization code,
    // state and return URLs in their URLs: never in a Referer
    // (RFC 9700 §4.2).
    resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// Adds cookies and the route's response headers (to every response,
/// including our own errors), and wraps the body for the access log and
/// metrics.
fn finish(proxy: &Proxy, mut ctx: RequestCtx, mut resp: Response<ProxyBody>) -> Response<Observed> {
    for cookie in ctx.cookies.drain(..) {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if let Some(route) = &ctx.route {
        if let Some(policy) = route.cors.as_ref().filter(|_| !ctx.preflight_answered) {
            policy.apply(ctx.origin.as_ref(), resp.headers_mut());
        }
        for (name, value) in &route.set_response_headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let status = resp.status().as_u16();
    let idle = ctx.route.as_ref().and_then(|r| r.idle_timeout);
    let metrics = proxy.metrics.clone();
    let on_end = Box::new(move |bytes: u64| {
        let elapsed = ctx.started.elapsed();
        static NO_ROUTE: std::sync::LazyLock<Arc<String>> = std::sync::LazyLock::new(|| Arc::new(String::new()));
        let name = ctx.route.as_ref().map_or(&*NO_ROUTE, |r| &r.name);
        metrics.observe_request(name, status, elapsed);
        let route = name.as_str();
        tracing::event!(
            target: crate::telemetry::ACCESS_LOG,
            tracing::Level::INFO,
            http.method = ctx.method.as_str(),
            http.host = ctx.host.as_str(),
            http.path = ctx.path.as_str(),
            http.status = status,
            route.name = route,
            upstream = ctx.upstream.as_deref().unwrap_or(""),
            auth.subject = ctx.subject.as_deref().unwrap_or(""),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            http.bytes = bytes,
            navigation = ctx.navigation,
            "request"
        );
    });
    resp.map(|body| Observed::new(body, idle, on_end))
}
