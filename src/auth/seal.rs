//! Authenticated encryption of small tokens (session cookies, sign-in
//! requests, OAuth state, callback tokens), with keys derived from
//! `cookie_secret` by HKDF-SHA256, one key per purpose, so a token minted
//! for one purpose never opens as another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Token format version, so the format can change without misreading old tokens.
const VERSION: u8 = 1;

/// What a sealed token is for; each has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The session cookie (and the same value in authorization headers).
    Session,
    /// The signed request a route host sends to the authenticate host.
    SignIn,
    /// OAuth `state`: return URL, PKCE verifier, nonce.
    State,
    /// Hands a session from the authenticate host to one route host.
    Callback,
    /// Sign-out hand-off to the authenticate host.
    SignOut,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"postern session v1",
            Purpose::SignIn => b"postern sign-in request v1",
            Purpose::State => b"postern oauth state v1",
            Purpose::Callback => b"postern callback token v1",
            Purpose::SignOut => b"postern sign-out request v1",
        }
    }
}

/// Why a token did not open. Deliberately coarse: callers treat every
/// case as "no valid token" and log at debug.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SealError {
    #[error("token is not well-formed")]
    Malformed,
    #[error("token was not sealed with this key for this purpose, or was altered")]
    Forged,
}

/// Seals and opens tokens. Cheap to share.
pub(crate) struct Sealer {
    keys: [LessSafeKey; 5],
    rng: SystemRandom,
    csrf: ring::hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<keys redacted>)")
    }
}

struct KeyLen(usize);

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl Sealer {
    /// Derives every key from the 32-byte `secret`.
    pub(crate) fn new(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"postern").extract(secret);
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            let info = [label];
            prk.expand(&info, KeyLen(32)).and_then(|okm| okm.fill(&mut out)).expect("HKDF-SHA256 can produce 32 bytes");
            out
        };
        let key = |p: Purpose| {
            let bytes = derive(p.label());
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32-byte ChaCha20 key"))
        };
        let csrf = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(b"postern csrf v1"));
        Sealer {
            keys: [
                key(Purpose::Session),
                key(Purpose::SignIn),
                key(Purpose::State),
                key(Purpose::Callback),
                key(Purpose::SignOut),
            ],
            rng: SystemRandom::new(),
            csrf,
        }
    }

    fn key(&self, purpose: Purpose) -> &LessSafeKey {
        &self.keys[match purpose {
            Purpose::Session => 0,
            Purpose::SignIn => 1,
            Purpose::State => 2,
            Purpose::Callback => 3,
            Purpose::SignOut => 4,
        }]
    }

    /// `value` as JSON, encrypted and authenticated, base64url without
    /// padding (so it is a valid cookie value and has no `=`).
    pub(crate) fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let mut data = serde_json::to_vec(value).expect("token payloads serialize");
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        self.key(purpose)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.label()), &mut data)
            .expect("sealing cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + nonce.len() + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub(crate) fn open<T: DeserializeOwned>(&self, purpose: Purpose, token: &str) -> Result<T, SealError> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 1 + aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() || bytes[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&bytes[1..1 + aead::NONCE_LEN]).map_err(|_| SealError::Malformed)?;
        let mut data = bytes[1 + aead::NONCE_LEN..].to_vec();
        let plain = self
            .key(purpose)
            .open_in_place(nonce, Aad::from(purpose.label()), &mut data)
            .map_err(|_| SealError::Forged)?;
        serde_json::from_slice(plain).map_err(|_| SealError::Malformed)
    }

    /// Random bytes, base64url: session IDs, CSRF values, PKCE verifiers.
    pub(crate) fn random_token(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill(&mut buf).expect("system randomness");
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// A CSRF token bound to one session (HMAC of its ID).
    pub(crate) fn csrf_token(&self, session_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&self.csrf, session_id.as_bytes()).as_ref())
    }

    pub(crate) fn check_csrf(&self, session_id: &str, token: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(token)
            .map(|tag| ring::hmac::verify(&self.csrf, session_id.as_bytes(), &tag).is_ok())
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_purpose_and_key() {
        let a = Sealer::new(&[7u8; 32]);
        let b = Sealer::new(&[8u8; 32]);
        let token = a.seal(Purpose::Session, &("alice", 42));
        assert!(!token.contains('='), "cookie-safe, no padding");
        assert_eq!(a.open::<(String, i32)>(Purpose::Session, &token), Ok(("alice".into(), 42)));
        assert_eq!(a.open::<(String, i32)>(Purpose::Callback, &token), Err(SealError::Forged));
        assert_eq!(b.open::<(String, i32)>(Purpose::Session, &token), Err(SealError::Forged));
    }

    #[test]
    fn tampering_is_detected() {
        let a = Sealer::new(&[7u8; 32]);
        let token = a.seal(Purpose::Session, &"payload");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(a.open::<String>(Purpose::Session, &URL_SAFE_NO_PAD.encode(&bytes)), Err(SealError::Forged));
        assert_eq!(a.open::<String>(Purpose::Session, "not a token"), Err(SealError::Malformed));
        assert_eq!(a.open::<String>(Purpose::Session, ""), Err(SealError::Malformed));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let a = Sealer::new(&[7u8; 32]);
        let t = a.csrf_token("s1");
        assert!(a.check_csrf("s1", &t));
        assert!(!a.check_csrf("s2", &t));
        assert!(!a.check_csrf("s1", "garbage"));
    }
}
