//! The per-request pipeline: a fixed sequence of small phases.
//!
//! `target` (host and normalized path) → `select` (route lookup) →
//! `authorize` → `act` (direct response or forward) → `finish` (route
//! response headers, accounting). Each phase is a plain function; only
//! [`respond::error_response`] turns an error into a response.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Proxy;
use super::body::{Observed, ProxyBody, full};
use super::forward::{self, Outbound, Peer};
use super::respond::{ProxyError, error_response, is_navigation};
use crate::routes::{Action, Route, RouteTable, path};

/// What the pipeline knows about one request, for logs and error pages.
pub(crate) struct RequestCtx {
    started: Instant,
    method: Method,
    host: String,
    path: String,
    navigation: bool,
    route: Option<Arc<Route>>,
    upstream: Option<String>,
}

/// Serves one request; never fails (errors become responses).
pub(crate) async fn handle(proxy: Arc<Proxy>, peer: Peer, req: Request<Incoming>) -> Response<ProxyBody> {
    let table = proxy.routes.snapshot();
    let mut ctx = RequestCtx {
        started: Instant::now(),
        method: req.method().clone(),
        host: String::new(),
        path: req.uri().path().to_string(),
        navigation: is_navigation(req.headers()),
        route: None,
        upstream: None,
    };
    let peer = Peer { trusted: table.trusts(peer.ip), ..peer };
    let response = match run(&proxy, &table, peer, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(err) => {
            if let ProxyError::BadPath(e) = &err {
                tracing::debug!(http.path = %ctx.path, error = %e, "refused request path");
            }
            error_response(&err, ctx.navigation)
        }
    };
    finish(&proxy, ctx, response)
}

async fn run(
    proxy: &Proxy,
    table: &RouteTable,
    peer: Peer,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (host, port) = target(&req)?;
    ctx.host = host;
    ctx.path = path::normalize(req.uri().path())?;
    let route = table.lookup(&ctx.host, port, &ctx.path).ok_or(ProxyError::NoRoute)?.clone();
    ctx.route = Some(route.clone());
    authorize(&route, &req)?;
    act(proxy, &route, peer, ctx, req).await
}

/// Host (lowercase, no port) and port the request is for: the request
/// target's authority (HTTP/2, absolute-form) or the `Host` header.
fn target(req: &Request<Incoming>) -> Result<(String, Option<u16>), ProxyError> {
    let authority: http::uri::Authority =
        client_authority(req).ok_or(ProxyError::NoHost)?.parse().map_err(|_| ProxyError::NoHost)?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(ProxyError::NoHost);
    }
    Ok((host, authority.port_u16()))
}

/// The authority the client asked for, exactly as sent.
fn client_authority(req: &Request<Incoming>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// Policy. Until sign-in exists, only public routes are served.
fn authorize(route: &Route, _req: &Request<Incoming>) -> Result<(), ProxyError> {
    if route.allow_public_unauthenticated_access { Ok(()) } else { Err(ProxyError::Unauthenticated) }
}

async fn act(
    proxy: &Proxy,
    route: &Arc<Route>,
    peer: Peer,
    ctx: &mut RequestCtx,
    mut req: Request<Incoming>,
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
    let client_upgrade =
        (route.allow_websockets && forward::upgrade_requested(&req).is_some()).then(|| hyper::upgrade::on(&mut req));
    let authority = client_authority(&req).unwrap_or(&ctx.host).to_string();
    let out = Outbound::new(req, route, peer, authority, ctx.path.clone());
    let metrics = proxy.metrics.clone();
    let name = route.name.clone();
    let (resp, upstream) =
        forward::forward(route, upstreams, out, move |kind| metrics.upstream_error(&name, kind)).await?;
    ctx.upstream = Some(upstream);
    let resp = forward::finish_upstream_response(resp, client_upgrade, route.idle_timeout);
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// Applies the route's response headers (to every response, including our
/// own errors) and wraps the body for the access log and metrics.
fn finish(proxy: &Proxy, ctx: RequestCtx, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Some(route) = &ctx.route {
        for (name, value) in &route.set_response_headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let status = resp.status().as_u16();
    let idle = ctx.route.as_ref().and_then(|r| r.idle_timeout);
    let metrics = proxy.metrics.clone();
    let on_end = Box::new(move |bytes: u64| {
        let elapsed = ctx.started.elapsed();
        let route = ctx.route.as_ref().map_or("", |r| r.name.as_str());
        metrics.observe_request(route, status, elapsed);
        tracing::info!(
            http.method = %ctx.method,
            http.host = %ctx.host,
            http.path = %ctx.path,
            http.status = status,
            route.name = route,
            upstream = ctx.upstream.as_deref().unwrap_or(""),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            http.bytes = bytes,
            navigation = ctx.navigation,
            "request"
        );
    });
    resp.map(|body| Observed::new(body, idle, on_end).boxed())
}
