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
    /// The domain part of the email, lowercase; `None` unless the email
    /// has exactly one `@` with text on both sides. `a@evil.com@corp.com`
    /// has no domain: reading it as `corp.com` (the last `@`) would let an
    /// IdP account named like that pass a `corp.com` domain rule
    /// (oauth2-proxy CVE-2026-40574).
    pub fn email_domain(&self) -> Option<String> {
        let (local, domain) = self.email.as_deref()?.split_once('@')?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') {
            return None;
        }
        Some(domain.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::Identity;

    fn with_email(email: &str) -> Identity {
        Identity {
            subject: "s".into(),
            email: Some(email.into()),
            email_verified: true,
            name: None,
            groups: vec![],
            claims: serde_json::Map::new(),
        }
    }

    #[test]
    fn an_email_has_a_domain_only_with_exactly_one_at() {
        assert_eq!(with_email("alice@Corp.COM").email_domain().as_deref(), Some("corp.com"));
        for bad in ["a@evil.com@corp.com", "@corp.com", "alice@", "alice", "a@@corp.com"] {
            assert_eq!(with_email(bad).email_domain(), None, "{bad}");
        }
    }
}
