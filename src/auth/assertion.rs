//! The identity assertion upstreams receive (`X-Postern-Jwt-Assertion`):
//! an ES256 JWT, verifiable with the keys at `/.well-known/postern/jwks.json`.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The DER of a PKCS#8 `PRIVATE KEY` PEM block, if that is what `pem` holds.
fn pkcs8_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    match rustls_pki_types::PrivateKeyDer::from_pem_slice(pem).ok()? {
        rustls_pki_types::PrivateKeyDer::Pkcs8(der) => Some(der.secret_pkcs8_der().to_vec()),
        _ => None,
    }
}

/// Lifetime of an assertion; upstreams should not accept older ones.
pub(crate) const LIFETIME_SECS: i64 = 300;
/// A cached assertion is reused until this close to its expiry.
const REUSE_MARGIN_SECS: i64 = 60;
/// Bound on cached assertions (one per session and route).
const CACHE_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SignerError {
    #[error("signing key is not an EC P-256 private key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    iat: i64,
    exp: i64,
}

/// Signs assertions and publishes the public key.
pub(crate) struct Signer {
    key: EncodingKey,
    /// The same key for ring, when it is PKCS#8 (generated keys and most
    /// PEM files): ring's P-256 signing is several times faster than the
    /// pure-Rust backend `jsonwebtoken` uses.
    fast: Option<ring::signature::EcdsaKeyPair>,
    /// `base64url({"alg":"ES256","typ":"JWT","kid":...})`, fixed per key.
    header_b64: String,
    kid: String,
    jwks: String,
    /// (session id, route) → (token, exp): signing costs tens of µs; a
    /// session's requests to one route reuse one assertion.
    cache: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    /// From an EC P-256 private key in PKCS#8 PEM (the config turns SEC1
    /// keys into PKCS#8).
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, SignerError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(SignerError::Key)?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(SignerError::Key)?;
        let thumb = ring::digest::digest(
            &ring::digest::SHA256,
            serde_json::to_string(&jwk.algorithm).unwrap_or_default().as_bytes(),
        );
        let kid: String = thumb.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("JWKS serializes");
        let fast = pkcs8_der(pem).and_then(|der| {
            ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &ring::rand::SystemRandom::new(),
            )
            .ok()
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.clone());
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
        Ok(Signer { key, fast, header_b64, kid, jwks, cache: Mutex::new(HashMap::new()) })
    }

    /// A fresh random key (with a warning from the caller: assertions
    /// change keys on every restart and differ between replicas).
    pub(crate) fn generate() -> Self {
        let pair = rcgen::KeyPair::generate().expect("generate P-256 key");
        Self::from_pem(pair.serialize_pem().as_bytes()).expect("a generated P-256 key is valid")
    }

    /// The JWKS document (`{"keys":[...]}`).
    pub(crate) fn jwks(&self) -> &str {
        &self.jwks
    }

    /// The assertion for `identity` on a route: `iss` the route host,
    /// `aud` the route's `from` host; reused from the cache when fresh.
    pub(crate) fn assertion(
        &self,
        session_id: &str,
        route: &str,
        issuer: &str,
        audience: &str,
        identity: &Identity,
    ) -> String {
        let now = super::now();
        let key = (session_id.to_string(), route.to_string());
        if let Ok(cache) = self.cache.lock()
            && let Some((token, exp)) = cache.get(&key)
            && *exp - now > REUSE_MARGIN_SECS
        {
            return token.clone();
        }
        let token = self.sign(issuer, audience, identity, now);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.retain(|_, (_, exp)| *exp - now > REUSE_MARGIN_SECS);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(key, (token.clone(), now + LIFETIME_SECS));
        }
        token
    }

    /// Signs one assertion (no cache); public for the benchmark's sake.
    pub(crate) fn sign(&self, issuer: &str, audience: &str, identity: &Identity, now: i64) -> String {
        let claims = Claims {
            iss: issuer,
            aud: audience,
            sub: &identity.subject,
            email: identity.email.as_deref(),
            name: identity.name.as_deref(),
            groups: &identity.groups,
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        match &self.fast {
            Some(key) => {
                let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
                let signing_input = format!("{}.{payload}", self.header_b64);
                let signature = key
                    .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                    .expect("ES256 signing with a valid key cannot fail");
                format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
            }
            None => {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(self.kid.clone());
                jsonwebtoken::encode(&header, &claims, &self.key).expect("ES256 signing with a valid key cannot fail")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_verify_against_the_published_jwks() {
        let signer = Signer::generate();
        let identity = Identity {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            groups: vec!["admins".into()],
            claims: Default::default(),
        };
        let token = signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity);
        assert_eq!(token, signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity), "cached");
        let jwks: JwkSet = serde_json::from_str(signer.jwks()).expect("jwks");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("kid in jwks");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&["app.example.com"]);
        validation.set_issuer(&["app.example.com"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).expect("verifies");
        assert_eq!(data.claims["email"], "alice@example.com");
        assert_eq!(data.claims["groups"][0], "admins");
        let lifetime = data.claims["exp"].as_i64().expect("exp") - data.claims["iat"].as_i64().expect("iat");
        assert!(lifetime <= 300);
    }
}
