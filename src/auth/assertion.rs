//! The identity assertion upstreams receive (`X-Postern-Jwt-Assertion`):
//! an ES256 JWT, verifiable with the keys at `/.well-known/postern/jwks.json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
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
    #[error("previous signing key {index} is not an EC P-256 private key: {source}")]
    PreviousKey {
        index: usize,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
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

/// Signs assertions with the current key and publishes its public key,
/// with those of the previous keys, in the JWKS.
///
/// The keys are one [`KeySet`], swapped whole on reload ([`Signer::rotate`]):
/// a request signs with and caches into one set, so once a reload returns,
/// every new assertion carries the new key's `kid` (the old set's cache goes
/// with it).
pub(crate) struct Signer {
    keys: ArcSwap<KeySet>,
}

/// One generation of keys: the key that signs, the JWKS that publishes it
/// and the previous keys, and the assertions signed with it.
struct KeySet {
    current: SigningKey,
    /// The `kid`s of the previous keys, in config order, as published.
    previous: Vec<String>,
    jwks: Arc<str>,
    /// (session id, route) → (token, exp): signing costs tens of µs; a
    /// session's requests to one route reuse one assertion.
    cache: Mutex<HashMap<(String, String), (String, i64)>>,
}

/// The key assertions are signed with.
struct SigningKey {
    key: EncodingKey,
    /// The same key for ring, when it is PKCS#8 (generated keys and most
    /// PEM files): ring's P-256 signing is several times faster than the
    /// pure-Rust backend `jsonwebtoken` uses.
    fast: Option<ring::signature::EcdsaKeyPair>,
    /// `base64url({"alg":"ES256","typ":"JWT","kid":...})`, fixed per key.
    header_b64: String,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("Signer")
            .field("kid", &keys.current.kid)
            .field("previous", &keys.previous)
            .finish_non_exhaustive()
    }
}

/// The public JWK of an EC P-256 key, with its `kid`: the first 8 bytes of
/// the SHA-256 of the public key's JSON parameters, in hex. The same key
/// gets the same `kid` as the current key and as a previous one, on every
/// replica.
fn public_jwk(key: &EncodingKey) -> Result<Jwk, jsonwebtoken::errors::Error> {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::ES256)?;
    let thumb = ring::digest::digest(
        &ring::digest::SHA256,
        serde_json::to_string(&jwk.algorithm).unwrap_or_default().as_bytes(),
    );
    let kid: String = thumb.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
    jwk.common.key_id = Some(kid);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    Ok(jwk)
}

impl KeySet {
    /// `current` signs; `previous` are only published. A previous key with
    /// the `kid` of the current key or of an earlier previous key is left
    /// out, so the JWKS never lists a `kid` twice (the config refuses such
    /// a list; this keeps keys given in code honest too).
    fn parse(current: &[u8], previous: &[&[u8]]) -> Result<KeySet, SignerError> {
        let key = EncodingKey::from_ec_pem(current).map_err(SignerError::Key)?;
        let jwk = public_jwk(&key).map_err(SignerError::Key)?;
        let kid = jwk.common.key_id.clone().expect("public_jwk sets the kid");
        let mut keys = vec![jwk];
        let mut previous_kids = Vec::with_capacity(previous.len());
        for (index, pem) in previous.iter().enumerate() {
            let jwk = EncodingKey::from_ec_pem(pem)
                .and_then(|k| public_jwk(&k))
                .map_err(|source| SignerError::PreviousKey { index, source })?;
            let previous_kid = jwk.common.key_id.clone().expect("public_jwk sets the kid");
            if previous_kid == kid || previous_kids.contains(&previous_kid) {
                continue;
            }
            previous_kids.push(previous_kid);
            keys.push(jwk);
        }
        let jwks = serde_json::to_string(&JwkSet { keys }).expect("JWKS serializes");
        let fast = pkcs8_der(current).and_then(|der| {
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
        Ok(KeySet {
            current: SigningKey { key, fast, header_b64, kid },
            previous: previous_kids,
            jwks: Arc::from(jwks),
            cache: Mutex::new(HashMap::new()),
        })
    }
}

impl Signer {
    /// From EC P-256 private keys in PKCS#8 PEM (the config turns SEC1
    /// keys into PKCS#8): `current` signs every assertion; the public keys
    /// of `previous` are published next to it, so assertions a key signed
    /// before a rotation still verify until they expire.
    pub(crate) fn from_keys(current: &[u8], previous: &[&[u8]]) -> Result<Self, SignerError> {
        Ok(Signer { keys: ArcSwap::from_pointee(KeySet::parse(current, previous)?) })
    }

    /// From one key, with no previous keys.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, SignerError> {
        Self::from_keys(pem, &[])
    }

    /// A fresh random key (with a warning from the caller: assertions
    /// change keys on every restart and differ between replicas).
    pub(crate) fn generate() -> Self {
        let pair = rcgen::KeyPair::generate().expect("generate P-256 key");
        Self::from_pem(pair.serialize_pem().as_bytes()).expect("a generated P-256 key is valid")
    }

    /// Swaps in new keys (a config reload). On an error the running keys
    /// stay. Requests already signing finish with the keys they loaded.
    pub(crate) fn rotate(&self, current: &[u8], previous: &[&[u8]]) -> Result<(), SignerError> {
        self.keys.store(Arc::new(KeySet::parse(current, previous)?));
        Ok(())
    }

    /// The JWKS document (`{"keys":[...]}`): the current key first, then
    /// the previous keys.
    pub(crate) fn jwks(&self) -> Arc<str> {
        self.keys.load().jwks.clone()
    }

    /// The `kid` assertions are signed with now.
    pub(crate) fn kid(&self) -> String {
        self.keys.load().current.kid.clone()
    }

    /// The `kid`s of the previous keys, as published.
    pub(crate) fn previous_kids(&self) -> Vec<String> {
        self.keys.load().previous.clone()
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
        let keys = self.keys.load();
        let key = (session_id.to_string(), route.to_string());
        if let Ok(cache) = keys.cache.lock()
            && let Some((token, exp)) = cache.get(&key)
            && *exp - now > REUSE_MARGIN_SECS
        {
            return token.clone();
        }
        let token = keys.current.sign(issuer, audience, identity, now);
        if let Ok(mut cache) = keys.cache.lock() {
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
        self.keys.load().current.sign(issuer, audience, identity, now)
    }
}

impl SigningKey {
    fn sign(&self, issuer: &str, audience: &str, identity: &Identity, now: i64) -> String {
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

    fn alice() -> Identity {
        Identity {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            groups: vec!["admins".into()],
            claims: Default::default(),
        }
    }

    /// A fresh P-256 key in PKCS#8 PEM.
    fn key() -> String {
        rcgen::KeyPair::generate().expect("generate P-256 key").serialize_pem()
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
    }

    fn kids(jwks: &str) -> Vec<String> {
        let jwks: JwkSet = serde_json::from_str(jwks).expect("jwks");
        jwks.keys.iter().map(|k| k.common.key_id.clone().expect("kid")).collect()
    }

    /// The claims, if `token` verifies against `jwks` as an upstream checks it.
    fn verify(jwks: &str, token: &str) -> Option<serde_json::Value> {
        let jwks: JwkSet = serde_json::from_str(jwks).expect("jwks");
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = jwks.find(header.kid.as_deref().expect("kid"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&["app.example.com"]);
        validation.set_issuer(&["app.example.com"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).ok().map(|d| d.claims)
    }

    #[test]
    fn assertions_verify_against_the_published_jwks() {
        let signer = Signer::generate();
        let identity = alice();
        let token = signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity);
        assert_eq!(token, signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity), "cached");
        assert_eq!(kid_of(&token), signer.kid());
        let claims = verify(&signer.jwks(), &token).expect("verifies");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["groups"][0], "admins");
        let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
        assert!(lifetime <= 300);
    }

    #[test]
    fn previous_keys_are_published_with_their_own_kid_but_never_sign() {
        let (a, b) = (key(), key());
        let old = Signer::from_pem(a.as_bytes()).expect("a");
        let signer = Signer::from_keys(b.as_bytes(), &[a.as_bytes()]).expect("b with a as previous");
        let kid_b = Signer::from_pem(b.as_bytes()).expect("b").kid();
        assert_eq!(signer.kid(), kid_b, "the current key's kid does not depend on the previous keys");
        assert_eq!(signer.previous_kids(), vec![old.kid()], "a key has the same kid as current and as previous");
        assert_eq!(kids(&signer.jwks()), vec![kid_b.clone(), old.kid()], "current first, then previous");
        let jwks: serde_json::Value = serde_json::from_str(&signer.jwks()).expect("json");
        for key in jwks["keys"].as_array().expect("keys") {
            assert_eq!(
                (&key["alg"], &key["use"], &key["kty"], &key["crv"]),
                (&"ES256".into(), &"sig".into(), &"EC".into(), &"P-256".into())
            );
            assert!(key.get("d").is_none(), "only public keys are published: {key}");
        }

        let identity = alice();
        for token in [
            signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity),
            signer.sign("app.example.com", "app.example.com", &identity, crate::auth::now()),
        ] {
            assert_eq!(kid_of(&token), kid_b, "signed with the current key only");
            assert!(verify(&signer.jwks(), &token).is_some());
        }
        let before = old.sign("app.example.com", "app.example.com", &identity, crate::auth::now());
        assert!(verify(&signer.jwks(), &before).is_some(), "an assertion the previous key made still verifies");
    }

    #[test]
    fn rotate_swaps_the_keys_and_drops_assertions_cached_with_the_old_ones() {
        let (a, b) = (key(), key());
        let signer = Signer::from_pem(a.as_bytes()).expect("a");
        let kid_a = signer.kid();
        let identity = alice();
        let with_a = signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity);
        let cached_jwks = signer.jwks();

        // Step 1: b published ahead, a still signs.
        signer.rotate(a.as_bytes(), &[b.as_bytes()]).expect("a with b as previous");
        let ahead = signer.jwks();
        assert_eq!(signer.kid(), kid_a);
        assert_eq!(kids(&ahead).len(), 2);

        // Step 2: b signs, a is previous.
        signer.rotate(b.as_bytes(), &[a.as_bytes()]).expect("b with a as previous");
        let kid_b = signer.kid();
        assert_ne!(kid_b, kid_a);
        assert_eq!(kids(&signer.jwks()), vec![kid_b.clone(), kid_a.clone()]);
        let with_b = signer.assertion("s1", "r1", "app.example.com", "app.example.com", &identity);
        assert_eq!(kid_of(&with_b), kid_b, "the cached assertion signed with a is not handed out again");
        assert!(verify(&signer.jwks(), &with_a).is_some(), "a's assertion verifies against the new JWKS");
        assert!(verify(&ahead, &with_b).is_some(), "a JWKS cached after step 1 verifies b's assertions");
        assert!(verify(&cached_jwks, &with_b).is_none(), "one cached before step 1 does not know b");

        // Step 3: a dropped.
        signer.rotate(b.as_bytes(), &[]).expect("b alone");
        assert_eq!(kids(&signer.jwks()), vec![kid_b.clone()]);
        assert!(verify(&signer.jwks(), &with_a).is_none(), "a is no longer published");
        assert!(verify(&signer.jwks(), &with_b).is_some());

        // A bad key leaves the running ones.
        let err = signer.rotate(a.as_bytes(), &[b"not a key"]).expect_err("bad previous key");
        assert!(matches!(err, SignerError::PreviousKey { index: 0, .. }), "{err}");
        assert!(signer.rotate(b"not a key", &[]).is_err());
        assert_eq!(kids(&signer.jwks()), vec![kid_b]);
        assert!(verify(&signer.jwks(), &with_b).is_some(), "the running keys stay");
    }

    #[test]
    fn a_previous_key_equal_to_the_current_or_repeated_is_published_once() {
        let (a, b) = (key(), key());
        let signer = Signer::from_keys(a.as_bytes(), &[a.as_bytes(), b.as_bytes(), b.as_bytes()]).expect("keys");
        let kid_b = Signer::from_pem(b.as_bytes()).expect("b").kid();
        assert_eq!(kids(&signer.jwks()), vec![signer.kid(), kid_b.clone()]);
        assert_eq!(signer.previous_kids(), vec![kid_b]);
        let err = Signer::from_keys(
            a.as_bytes(),
            &[b.as_bytes(), b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
        )
        .expect_err("bad second previous key");
        assert!(matches!(err, SignerError::PreviousKey { index: 1, .. }), "{err}");
    }
}
