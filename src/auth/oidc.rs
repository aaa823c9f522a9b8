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
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, NonceVerifier, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    TokenResponse,
};
use tokio::sync::RwLock;

use crate::config::IdpSettings;
use crate::identity::Identity;

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
/// succeeds, so Postern starts even while the IdP is down; it runs again
/// when an ID token does not verify, to pick up rotated signing keys.
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
        let algs = allowed_algs(metadata.id_token_signing_alg_values_supported());
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

    /// Whether `iss`, the authorization response's `iss` parameter (RFC
    /// 9207), names our IdP. Discovery checked that the IdP's metadata
    /// issuer equals the configured URL, so that URL is what it must be.
    pub(crate) fn is_our_issuer(&self, iss: &str) -> bool {
        iss.trim_end_matches('/') == self.settings.provider_url.trim_end_matches('/')
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
        self.verify_with_current_keys(&d, id_token, &nonce).await?;
        tokens(&response, id_token.to_string(), None)
    }

    /// Verifies an ID token with the keys found at discovery; if that
    /// fails, the IdP may have rotated its signing keys since, so its
    /// metadata and keys are fetched again (once) and the token re-checked.
    async fn verify_with_current_keys(
        &self,
        d: &Arc<Discovered>,
        id_token: &CoreIdToken,
        nonce: impl NonceVerifier + Clone,
    ) -> Result<(), OidcError> {
        let Err(first) = verify_id_token(d.client.id_token_verifier(), &d.algs, id_token, nonce.clone()) else {
            return Ok(());
        };
        {
            let mut slot = self.discovered.write().await;
            if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, d)) {
                *slot = None;
            }
        }
        let Ok(fresh) = self.discovered().await else { return Err(first) };
        verify_id_token(fresh.client.id_token_verifier(), &fresh.algs, id_token, nonce)
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
                self.verify_with_current_keys(&d, id_token, |_: Option<&Nonce>| Ok(())).await?;
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

/// The ID token signature algorithms Postern accepts from an IdP that
/// advertises `advertised`: all but `none` and the HMAC family (which would
/// let a public key, or the client secret, be used as a shared secret).
pub(super) fn allowed_algs(advertised: &[CoreJwsSigningAlgorithm]) -> Vec<CoreJwsSigningAlgorithm> {
    advertised
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
        .collect()
}

/// How far ahead of our clock an ID token's `nbf` and `iat` may be.
const MAX_CLOCK_SKEW_SECS: i64 = 60;

/// Verifies an ID token: signature by the IdP's keys with one of `algs`,
/// issuer, audience, expiry, and the nonce as `nonce` checks it; then
/// `nbf` and `iat`, which openidconnect leaves alone: a token not valid
/// yet, or issued in the future (beyond [`MAX_CLOCK_SKEW_SECS`]), is refused.
pub(super) fn verify_id_token(
    verifier: CoreIdTokenVerifier<'_>,
    algs: &[CoreJwsSigningAlgorithm],
    id_token: &CoreIdToken,
    nonce: impl NonceVerifier,
) -> Result<(), OidcError> {
    let verifier = verifier.set_allowed_algs(algs.to_vec());
    id_token.claims(&verifier, nonce).map_err(|e| OidcError::BadIdToken(error_chain(&e)))?;
    let claims = payload(&id_token.to_string())?;
    let now = super::now();
    for name in ["nbf", "iat"] {
        if let Some(t) = claims.get(name).and_then(serde_json::Value::as_i64)
            && t > now + MAX_CLOCK_SKEW_SECS
        {
            return Err(OidcError::BadIdToken(format!("{name} is {}s in the future", t - now)));
        }
    }
    Ok(())
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
        let roots = crate::trust::client_roots();
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use openidconnect::core::CoreJsonWebKeySet;

    use super::*;

    const ISSUER: &str = "https://idp.example.com";
    const CLIENT_ID: &str = "postern";
    const CLIENT_SECRET: &str = "postern-secret-that-is-long-enough-for-hs256";
    const NONCE: &str = "n-0S6_WzA2Mj";
    const KID: &str = "test-key";

    /// What a lenient (or hostile) IdP could advertise in its discovery
    /// document; Postern must narrow it to the asymmetric algorithms.
    fn advertised() -> Vec<CoreJwsSigningAlgorithm> {
        vec![
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::HmacSha256,
            CoreJwsSigningAlgorithm::HmacSha512,
            CoreJwsSigningAlgorithm::None,
        ]
    }

    /// An IdP signing key (ES256, from rcgen) and the JWKS it publishes.
    struct TestIdp {
        key: EncodingKey,
        public_pem: String,
        jwks: CoreJsonWebKeySet,
    }

    impl TestIdp {
        fn new() -> Self {
            let pair = rcgen::KeyPair::generate().expect("P-256 key");
            let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("JWK");
            jwk.common.key_id = Some(KID.into());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
            let json = serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("JWKS JSON");
            let jwks = serde_json::from_str(&json).expect("openidconnect reads the JWKS");
            TestIdp { key, public_pem: pair.public_key_pem(), jwks }
        }

        /// The client as Postern builds it: client ID and secret, the
        /// issuer, the IdP's keys.
        fn client(&self) -> CoreClient {
            CoreClient::new(
                ClientId::new(CLIENT_ID.into()),
                IssuerUrl::new(ISSUER.into()).expect("issuer"),
                self.jwks.clone(),
            )
            .set_client_secret(ClientSecret::new(CLIENT_SECRET.into()))
        }

        /// `token` through Postern's verification, with the nonce of the
        /// sign-in request and the algorithms Postern derives from `advertised`.
        fn verify_with(&self, token: &str, nonce: &str, algs: &[CoreJwsSigningAlgorithm]) -> Result<(), OidcError> {
            let id_token = CoreIdToken::from_str(token).map_err(|e| OidcError::BadIdToken(e.to_string()))?;
            verify_id_token(self.client().id_token_verifier(), algs, &id_token, &Nonce::new(nonce.into()))
        }

        fn verify(&self, token: &str) -> Result<(), OidcError> {
            self.verify_with(token, NONCE, &allowed_algs(&advertised()))
        }

        fn es256(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(KID.into());
            jsonwebtoken::encode(&header, claims, &self.key).expect("sign ES256")
        }
    }

    fn claims(changes: serde_json::Value) -> serde_json::Value {
        let now = crate::auth::now();
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": CLIENT_ID, "sub": "alice", "iat": now, "exp": now + 300,
            "nonce": NONCE, "email": "alice@example.com", "email_verified": true,
        });
        for (k, v) in changes.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    }

    fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign HS256")
    }

    fn unsigned(claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": KID});
        format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn rejected(result: Result<(), OidcError>, what: &str) -> String {
        match result {
            Err(OidcError::BadIdToken(reason)) => reason,
            other => panic!("{what}: expected BadIdToken, got {other:?}"),
        }
    }

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        assert_eq!(allowed_algs(&advertised()), vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
        assert!(allowed_algs(&[CoreJwsSigningAlgorithm::None, CoreJwsSigningAlgorithm::HmacSha384]).is_empty());
        assert_eq!(
            allowed_algs(&[CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, CoreJwsSigningAlgorithm::EcdsaP384Sha384]),
            vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, CoreJwsSigningAlgorithm::EcdsaP384Sha384]
        );
    }

    #[test]
    fn a_well_formed_id_token_verifies() {
        let idp = TestIdp::new();
        idp.verify(&idp.es256(&claims(serde_json::json!({})))).expect("a correct ES256 ID token verifies");
    }

    #[test]
    fn alg_none_is_rejected() {
        let idp = TestIdp::new();
        let reason = rejected(idp.verify(&unsigned(&claims(serde_json::json!({})))), "alg none");
        assert!(reason.contains("signature"), "{reason}");
        // Even if the IdP's metadata were trusted blindly.
        let reason = rejected(
            idp.verify_with(&unsigned(&claims(serde_json::json!({}))), NONCE, &advertised()),
            "alg none with none allowed",
        );
        assert!(reason.contains("signature"), "{reason}");
    }

    #[test]
    fn hmac_tokens_are_rejected_whatever_the_key() {
        let idp = TestIdp::new();
        let c = claims(serde_json::json!({}));
        // The classic confusion: the IdP's public key as an HMAC secret.
        let reason = rejected(idp.verify(&hs256(idp.public_pem.as_bytes(), &c)), "HS256 keyed with the public key");
        assert!(reason.contains("HS256"), "{reason}");
        // Keyed with the client secret, which the relying party does hold:
        // openidconnect would accept this if HS256 were allowed, so the
        // filter is what stops it.
        let with_secret = hs256(CLIENT_SECRET.as_bytes(), &c);
        rejected(idp.verify(&with_secret), "HS256 keyed with the client secret");
        idp.verify_with(&with_secret, NONCE, &advertised()).expect("control: accepted when HS256 is allowed");
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let idp = TestIdp::new();
        let reason = rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"aud": "another-client"})))), "aud");
        assert!(reason.to_lowercase().contains("aud"), "{reason}");
        // An audience list that does not include us, or that adds an untrusted one.
        rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"aud": ["a", "b"]})))), "aud list");
        rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"aud": [CLIENT_ID, "evil"]})))), "extra aud");
    }

    #[test]
    fn wrong_or_missing_nonce_is_rejected() {
        let idp = TestIdp::new();
        let reason = rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"nonce": "another"})))), "nonce");
        assert!(reason.to_lowercase().contains("nonce"), "{reason}");
        let mut no_nonce = claims(serde_json::json!({}));
        no_nonce.as_object_mut().expect("object").remove("nonce");
        rejected(idp.verify(&idp.es256(&no_nonce)), "missing nonce");
        // The right token checked against another sign-in request's nonce.
        let token = idp.es256(&claims(serde_json::json!({})));
        rejected(idp.verify_with(&token, "other-request", &allowed_algs(&advertised())), "nonce of another request");
    }

    #[test]
    fn nbf_or_iat_in_the_future_is_rejected_within_a_minute_of_skew() {
        let idp = TestIdp::new();
        let now = crate::auth::now();
        let reason = rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"nbf": now + 3600})))), "nbf");
        assert!(reason.contains("nbf"), "{reason}");
        let ahead = serde_json::json!({"iat": now + 3600, "exp": now + 7200});
        let reason = rejected(idp.verify(&idp.es256(&claims(ahead))), "iat");
        assert!(reason.contains("iat"), "{reason}");
        // A clock a little ahead of ours is fine.
        idp.verify(&idp.es256(&claims(serde_json::json!({"nbf": now + 30, "iat": now + 30}))))
            .expect("30 s of skew is accepted");
    }

    #[test]
    fn wrong_issuer_expired_and_foreign_key_are_rejected() {
        let idp = TestIdp::new();
        let now = crate::auth::now();
        rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"iss": "https://evil.example"})))), "iss");
        rejected(idp.verify(&idp.es256(&claims(serde_json::json!({"exp": now - 600, "iat": now - 900})))), "exp");
        let other = TestIdp::new();
        rejected(idp.verify(&other.es256(&claims(serde_json::json!({})))), "signed by another key");
        // A valid signature over other claims: a payload swapped under a header and signature.
        let good = idp.es256(&claims(serde_json::json!({})));
        let evil = URL_SAFE_NO_PAD.encode(claims(serde_json::json!({"sub": "mallory"})).to_string());
        let parts: Vec<&str> = good.split('.').collect();
        rejected(idp.verify(&format!("{}.{evil}.{}", parts[0], parts[2])), "swapped payload");
    }
}
