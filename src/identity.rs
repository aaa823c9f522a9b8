//! Who the signed-in user is, as far as policy and upstreams are concerned.

use serde::{Deserialize, Serialize};

/// The identity carried by a session, taken from the verified ID token
/// (and refreshed with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The IdP's stable user ID (`sub`).
    pub subject: String,
    pub email: Option<String>,
    /// Whether the IdP vouched for the email (`email_verified`); absent counts as verified
    /// only if the IdP does not send the claim at all.
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// Every other claim of the ID token, for `claim/<name>` policy criteria.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    /// The domain part of the email, lowercase.
    pub fn email_domain(&self) -> Option<String> {
        self.email.as_deref().and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase())
    }
}
