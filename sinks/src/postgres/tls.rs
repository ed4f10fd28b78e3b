//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode`: `prefer` and
//! `require` encrypt without checking the server's certificate (as libpq does), while
//! `verify-full` checks it against `sslrootcert` (or the system's roots) and the host name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// TLS when the server offers it, certificate not checked.
    Prefer,
    /// TLS always, certificate not checked.
    Require,
    /// TLS always; the certificate must chain to these roots (PEM file; `None`: the
    /// system's) and name the host.
    VerifyFull {
        /// A PEM file of trusted root certificates.
        root_cert: Option<std::path::PathBuf>,
    },
}

use crate::roots::provider;

/// The rustls connector for `mode` (not called for `Disable`).
pub(super) fn connector(mode: &TlsMode) -> Result<MakeRustlsConnect, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        TlsMode::VerifyFull { root_cert } => {
            let roots = crate::roots::trusted_roots(root_cert.as_deref(), "sslrootcert")?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's `require`: encrypted, but any certificate is accepted (signatures are still
/// checked, so the session key belongs to whoever holds the certificate's key).
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
