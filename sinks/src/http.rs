//! What the destinations that speak HTTP share.

/// A transport error with its causes (reqwest's own message is often just "error sending
/// request").
pub(crate) fn describe_transport_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

/// An HTTP client trusting the roots in the PEM file `ca_file` (the system's without one),
/// with `timeout` per request; `Err` says why it cannot be built.
pub(crate) fn client(
    ca_file: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let roots = crate::roots::trusted_roots(ca_file, "ca_file")?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::roots::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}
