//! The TLS pieces every network sink shares: the crypto provider and the set of root
//! certificates a server's certificate must chain to.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

/// The crypto provider of every TLS session (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Root certificates from the PEM file at `path` (named `setting` in errors), or the
/// system's when there is none.
pub(crate) fn trusted_roots(path: Option<&Path>, setting: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read {setting} {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| format!("{setting} {} is not PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted root certificates to verify the server with".into());
    }
    Ok(roots)
}
