//! The OpenID Connect relying party: discovery, the authorization request
//! (code + PKCE S256 + state + nonce), code exchange, ID token
//! verification and refresh, with the `openidconnect` crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use tokio::sync::RwLock;

use super::identity::Identity;
use crate::config::IdpSettings;

type OidcClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// Why talking to the identity provider failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    #[error("identity provider discovery failed: {0}")]
    Discovery(String),
    #[error("identity provider configuration: {0}")]
    Configuration(String),
    /// The IdP refused the code or refresh token (replayed, expired, revoked).
    #[error("identity provider refused the grant: {0}")]
    Refused(String),
    #[error("ID token rejected: {0}")]
    BadIdToken(String),
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
}

/// Tokens and identity from a successful exchange or refresh.
pub(crate) struct Tokens {
    pub identity: Identity,
    /// Unix seconds when the ID token (or, without one, the access token) expires.
    pub expires_at: i64,
    pub refresh_token: Option<String>,
}

/// The relying party. Discovery runs on first use and is retried until it
/// succeeds, so Postern starts even while the IdP is down.
pub(crate) struct Oidc {
    settings: IdpSettings,
    redirect_uri: String,
    http: IdpHttp,
    discovered: RwLock<Option<Arc<Discovered>>>,
}

struct Discovered {
    client: OidcClient,
    /// Signature algorithms accepted for ID tokens: what the IdP advertises,
    /// minus `none` and the HMAC family (which would let a public key be
    /// used as a shared secret).
    algs: Vec<CoreJwsSigningAlgorithm>,
    end_session_endpoint: Option<String>,
}

impl Oidc {
    pub(crate) fn new(settings: IdpSettings, authenticate_service_url: &str) -> Self {
        Oidc {
            settings,
            redirect_uri: format!("{authenticate_service_url}/oauth2/callback"),
            http: IdpHttp::new(),
            discovered: RwLock::new(None),
        }
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            return Ok(d.clone());
        }
        let mut slot = self.discovered.write().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let issuer =
            IssuerUrl::new(self.settings.provider_url.clone()).map_err(|e| OidcError::Configuration(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        let algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    CoreJwsSigningAlgorithm::None
                        | CoreJwsSigningAlgorithm::HmacSha256
                        | CoreJwsSigningAlgorithm::HmacSha384
                        | CoreJwsSigningAlgorithm::HmacSha512
                )
            })
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(OidcError::Configuration(
                "the provider advertises no asymmetric ID token signing algorithm".into(),
            ));
        }
        let end_session_endpoint = self.end_session_endpoint().await;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(String::from_utf8_lossy(&self.settings.client_secret.0).into_owned())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect_uri.clone()).map_err(|e| OidcError::Configuration(e.to_string()))?,
        );
        let d = Arc::new(Discovered { client, algs, end_session_endpoint });
        *slot = Some(d.clone());
        Ok(d)
    }

    /// `end_session_endpoint` is not part of the core metadata type.
    async fn end_session_endpoint(&self) -> Option<String> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.provider_url);
        let req = http::Request::get(url).body(Vec::new()).ok()?;
        let resp = openidconnect::AsyncHttpClient::call(&self.http, req).await.ok()?;
        let doc: serde_json::Value = serde_json::from_slice(resp.body()).ok()?;
        doc["end_session_endpoint"].as_str().map(str::to_string)
    }

    /// The IdP authorization URL: code flow with `state`, `nonce` and a
    /// PKCE S256 challenge of `pkce_verifier` (all chosen by the caller,
    /// which seals them into `state`).
    pub(crate) async fn authorization_url(
        &self,
        state: String,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<String, OidcError> {
        let d = self.discovered().await?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(pkce_verifier.to_string()));
        let nonce = nonce.to_string();
        let mut request = d.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        );
        for scope in &self.settings.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, _, _) = request.set_pkce_challenge(challenge).url();
        Ok(url.to_string())
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID
    /// token: signature by the IdP's keys with an allowed algorithm,
    /// issuer, audience, expiry and `nonce`.
    pub(crate) async fn exchange(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: String,
    ) -> Result<Tokens, OidcError> {
        let d = self.discovered().await?;
        let response: CoreTokenResponse = d
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Configuration(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| grant_error(&e))?;
        let nonce = Nonce::new(nonce);
        let id_token =
            response.id_token().ok_or_else(|| OidcError::BadIdToken("no ID token in the token response".into()))?;
        let verifier = d.client.id_token_verifier().set_allowed_algs(d.algs.clone());
        id_token.claims(&verifier, &nonce).map_err(|e| OidcError::BadIdToken(error_chain(&e)))?;
        tokens(&response, id_token.to_string(), None)
    }

    /// Trades a refresh token for fresh tokens. A refused refresh token
    /// (revoked, expired) is [`OidcError::Refused`]: the session ends.
    pub(crate) async fn refresh(&self, refresh_token: &str, previous: &Identity) -> Result<Tokens, OidcError> {
        let d = self.discovered().await?;
        let rt = RefreshToken::new(refresh_token.to_string());
        let response: CoreTokenResponse = d
            .client
            .exchange_refresh_token(&rt)
            .map_err(|e| OidcError::Configuration(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| grant_error(&e))?;
        match response.id_token() {
            Some(id_token) => {
                // Refreshed ID tokens carry no nonce (OIDC Core §12.2).
                let verifier = d.client.id_token_verifier().set_allowed_algs(d.algs.clone());
                id_token
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| OidcError::BadIdToken(error_chain(&e)))?;
                let mut t = tokens(&response, id_token.to_string(), None)?;
                if t.identity.subject != previous.subject {
                    return Err(OidcError::BadIdToken("refreshed ID token is for another subject".into()));
                }
                t.refresh_token = t.refresh_token.or_else(|| Some(refresh_token.to_string()));
                Ok(t)
            }
            None => {
                let mut t = tokens(&response, String::new(), Some(previous.clone()))?;
                t.refresh_token = t.refresh_token.or_else(|| Some(refresh_token.to_string()));
                Ok(t)
            }
        }
    }

    /// The IdP's logout URL, if it supports RP-initiated logout.
    pub(crate) async fn end_session_url(&self, post_logout_redirect_uri: &str) -> Option<String> {
        let d = self.discovered().await.ok()?;
        let endpoint = d.end_session_endpoint.as_ref()?;
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Some(format!(
            "{endpoint}{sep}client_id={}&post_logout_redirect_uri={}",
            enc(&self.settings.client_id),
            enc(post_logout_redirect_uri)
        ))
    }
}

/// Builds the identity from a verified ID token's payload (every claim,
/// so `claim/<name>` policies and `groups` work for any IdP).
fn tokens(response: &CoreTokenResponse, id_token: String, previous: Option<Identity>) -> Result<Tokens, OidcError> {
    let now = super::now();
    let access_expiry = response.expires_in().map(|d| now + d.as_secs() as i64);
    let (identity, expires_at) = if id_token.is_empty() {
        let identity = previous.ok_or_else(|| OidcError::BadIdToken("no ID token".into()))?;
        (identity, access_expiry.unwrap_or(now + 300))
    } else {
        let claims = payload(&id_token)?;
        let exp = claims.get("exp").and_then(serde_json::Value::as_i64).unwrap_or(now + 300);
        (identity_from_claims(claims)?, exp)
    };
    Ok(Tokens { identity, expires_at, refresh_token: response.refresh_token().map(|t| t.secret().clone()) })
}

/// The JSON payload of a JWS whose signature was already verified.
fn payload(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    let part = jwt.split('.').nth(1).ok_or_else(|| OidcError::BadIdToken("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcError::BadIdToken("payload is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| OidcError::BadIdToken("payload is not a JSON object".into()))
}

pub(crate) fn identity_from_claims(
    mut claims: serde_json::Map<String, serde_json::Value>,
) -> Result<Identity, OidcError> {
    let subject = claims
        .remove("sub")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| OidcError::BadIdToken("no `sub` claim".into()))?;
    let email = claims.get("email").and_then(|v| v.as_str()).map(str::to_string);
    let email_verified = match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => email.is_some() && !claims.contains_key("email_verified"),
    };
    let name = claims.get("name").and_then(|v| v.as_str()).map(str::to_string);
    let groups = match claims.get("groups") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    // Token plumbing is not identity; keep the cookie small.
    for key in ["iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "auth_time", "azp", "sid", "jti"] {
        claims.remove(key);
    }
    Ok(Identity { subject, email, email_verified, name, groups, claims })
}

fn grant_error<E: std::error::Error>(e: &E) -> OidcError {
    let text = error_chain(e);
    if text.contains("invalid_grant") || text.contains("Server returned error response") {
        OidcError::Refused(text)
    } else {
        OidcError::Unreachable(text)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The HTTP client for the IdP: hyper with rustls (system and webpki roots),
/// no redirects followed, a timeout on every call.
#[derive(Clone)]
pub(crate) struct IdpHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdpHttpError {
    #[error("{0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
}

impl IdpHttp {
    fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        IdpHttp { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for IdpHttp {
    type Error = IdpHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, IdpHttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let req = http::Request::from_parts(parts, Full::new(bytes::Bytes::from(body)));
            let resp = tokio::time::timeout(Duration::from_secs(15), self.client.request(req))
                .await
                .map_err(|_| IdpHttpError::Timeout)?
                .map_err(|e| IdpHttpError::Request(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = tokio::time::timeout(Duration::from_secs(15), body.collect())
                .await
                .map_err(|_| IdpHttpError::Timeout)?
                .map_err(|e| IdpHttpError::Request(e.to_string()))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        })
    }
}
