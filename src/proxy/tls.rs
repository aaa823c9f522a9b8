//! Serving certificates: chosen by SNI, replaceable on reload.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey as SigningKey;

use crate::config::CertifiedKey;

/// Why the serving certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {origin}: the private key is not usable: {source}")]
    Key {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate {origin}: cannot read its names: {reason}")]
    Names { origin: String, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Certificates indexed by the DNS names they cover.
#[derive(Debug, Default)]
struct SniCerts {
    exact: HashMap<String, Arc<SigningKey>>,
    /// `*.example.com` certificates, keyed by `example.com`.
    wildcard: HashMap<String, Arc<SigningKey>>,
    /// Used when no name matches (or the client sent no SNI).
    fallback: Option<Arc<SigningKey>>,
}

/// The rustls resolver; `replace` swaps the whole set atomically.
#[derive(Debug, Default)]
pub struct CertResolver(ArcSwap<SniCerts>);

impl CertResolver {
    /// Builds the set from configured certificates, or generates a
    /// self-signed one for `fallback_names` when there are none.
    pub fn replace(&self, certs: &[CertifiedKey], fallback_names: &[String]) -> Result<bool, TlsError> {
        self.replace_with(certs, &[], fallback_names).map(|(generated, _)| generated)
    }

    /// As [`replace`](Self::replace), plus certificates served only for
    /// the names they cover (the cluster's TLS Secrets), never as the
    /// fallback. One of those that cannot be used is left out and returned,
    /// not an error: one bad Secret must not take the listener down.
    pub fn replace_with(
        &self,
        certs: &[CertifiedKey],
        by_name: &[CertifiedKey],
        fallback_names: &[String],
    ) -> Result<(bool, Vec<TlsError>), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut set = SniCerts::default();
        let generated = certs.is_empty();
        let owned;
        let certs = if generated {
            owned = vec![self_signed(fallback_names)?];
            owned.as_slice()
        } else {
            certs
        };
        // Named certificates first: a host's own Secret wins over the
        // defaults (a generated certificate covers every route host).
        let mut skipped = Vec::new();
        for ck in by_name {
            let loaded = provider
                .key_provider
                .load_private_key(ck.key.clone_key())
                .map_err(|source| TlsError::Key { origin: ck.origin.clone(), source })
                .and_then(|key| Ok((Arc::new(SigningKey::new(ck.chain.clone(), key)), dns_names(ck)?)));
            match loaded {
                Ok((signing, names)) => {
                    for name in names {
                        match name.strip_prefix("*.") {
                            Some(parent) => set.wildcard.entry(parent.to_string()).or_insert_with(|| signing.clone()),
                            None => set.exact.entry(name).or_insert_with(|| signing.clone()),
                        };
                    }
                }
                Err(e) => skipped.push(e),
            }
        }
        for ck in certs {
            let key = provider
                .key_provider
                .load_private_key(ck.key.clone_key())
                .map_err(|source| TlsError::Key { origin: ck.origin.clone(), source })?;
            let signing = Arc::new(SigningKey::new(ck.chain.clone(), key));
            for name in dns_names(ck)? {
                match name.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_string()).or_insert_with(|| signing.clone()),
                    None => set.exact.entry(name).or_insert_with(|| signing.clone()),
                };
            }
            set.fallback.get_or_insert(signing);
        }
        self.0.store(Arc::new(set));
        Ok((generated, skipped))
    }

    /// The certificate for clients that name no known host.
    #[cfg(test)]
    pub(crate) fn fallback_certificate(&self) -> Option<Arc<SigningKey>> {
        self.pick(None)
    }

    fn pick(&self, server_name: Option<&str>) -> Option<Arc<SigningKey>> {
        let set = self.0.load();
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            if let Some(k) = set.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = set.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        set.fallback.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<SigningKey>> {
        self.pick(hello.server_name())
    }
}

/// The DNS names of the leaf certificate (SANs, or the CN if there are none).
fn dns_names(ck: &CertifiedKey) -> Result<Vec<String>, TlsError> {
    let bad = |reason: String| TlsError::Names { origin: ck.origin.clone(), reason };
    let leaf = ck.chain.first().ok_or_else(|| bad("empty chain".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// A throwaway certificate so the proxy can serve TLS with nothing configured.
fn self_signed(names: &[String]) -> Result<CertifiedKey, TlsError> {
    let mut names: Vec<String> = names.iter().filter(|n| !n.is_empty()).cloned().collect();
    names.push("localhost".into());
    names.sort();
    names.dedup();
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    Ok(CertifiedKey {
        chain: vec![cert.der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into()),
        origin: "generated self-signed certificate".into(),
    })
}

/// rustls server config with our resolver and ALPN for h2 and http/1.1.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
