//! TLS on the API listener: rustls with the ring provider, TLS 1.2 and 1.3 only, a PEM
//! certificate chain and key, and optionally client certificates that must chain to
//! `client_ca` (mutual TLS). The files are read at start-up and again on SIGHUP, so a renewed
//! certificate is served to new connections without dropping the open ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;

/// Why the listener's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("server.tls.{key}: {path}: {reason}")]
    File {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file, as resolved.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, ...).
    #[error("server.tls: {0}")]
    Config(String),
}

/// The listener's TLS files, resolved against the configuration file's directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `config` names, relative to `base_dir`.
    pub fn new(config: &TlsConfig, base_dir: &Path) -> Self {
        Self {
            cert: base_dir.join(&config.cert.value),
            key: base_dir.join(&config.key.value),
            client_ca: config.client_ca.as_ref().map(|ca| base_dir.join(&ca.value)),
        }
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Reads the files into a rustls server configuration.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("cert", &self.cert)?;
        let key = read_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs("client_ca", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("client_ca", path, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("the key does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn file_error(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(key, path, e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE block in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error("key", path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error("key", path, format!("not PEM: {e}")))?
        .ok_or_else(|| file_error("key", path, "no PRIVATE KEY block in it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> String {
        std::fs::write(dir.join(name), text).unwrap();
        name.to_string()
    }

    fn files(dir: &Path, cert: &str, key: &str, client_ca: Option<&str>) -> TlsFiles {
        TlsFiles {
            cert: dir.join(cert),
            key: dir.join(key),
            client_ca: client_ca.map(|ca| dir.join(ca)),
        }
    }

    #[test]
    fn good_files_load_and_bad_ones_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &issued.cert.pem());
        let key = write(dir.path(), "key.pem", &issued.signing_key.serialize_pem());
        let other_key = write(dir.path(), "other.pem", &other.signing_key.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not a pem file\n");
        assert!(files(dir.path(), &cert, &key, None).load().is_ok());
        assert!(files(dir.path(), &cert, &key, Some(&cert)).load().is_ok());

        let error = files(dir.path(), "missing.pem", &key, None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("server.tls.cert: ") && error.contains("missing.pem"),
            "{error}"
        );
        let error = files(dir.path(), &junk, &key, None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(error.contains("no CERTIFICATE block"), "{error}");
        let error = files(dir.path(), &cert, &junk, None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("server.tls.key: ") && error.contains("no PRIVATE KEY"),
            "{error}"
        );
        let error = files(dir.path(), &cert, &other_key, None)
            .load()
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not fit the certificate"), "{error}");
        let error = files(dir.path(), &cert, &key, Some(&junk))
            .load()
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("server.tls.client_ca: "), "{error}");
    }
}
