//! Trust anchors for Postern's outgoing TLS (to upstreams and to the
//! identity provider): one place, so both trust the same roots.

/// Mozilla's roots (webpki-roots) plus the system's.
pub(crate) fn client_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}
