//! `server.auth` and `server.tls`: who may call the API, and how the connection is protected.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// Who may call the API. Without it, every caller may do everything (and the service says so
/// at start-up).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The keys callers sign requests with (AWS Signature Version 4, as the AWS SDKs and
    /// CLI do) or present as `Authorization: Bearer <id>:<secret>`.
    pub access_keys: Spanned<Vec<AccessKeyConfig>>,
    /// The only region signatures may be scoped to; any region when absent.
    #[serde(default)]
    pub region: Option<Spanned<String>>,
}

/// One access key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The access key id, as clients send it (`AKID...`); 16–128 letters and digits.
    pub id: Spanned<String>,
    /// The secret access key (write `${ENV}` rather than the secret itself).
    pub secret: Spanned<Secret>,
    /// What the key may do.
    pub allow: AllowConfig,
}

/// The streams and operations a key is allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Stream name patterns (`*` matches any run of characters): `["app-*"]`, `["*"]`.
    pub streams: Vec<Spanned<String>>,
    /// Operations: `PutRecord`, `PutRecordBatch` (also the NDJSON endpoint),
    /// `ListDeliveryStreams`, `DescribeDeliveryStream` (also a stream's stats and the
    /// console), `GetMetrics` (`/metrics`), `Reload` (`hydrant reload`), or `*` for all.
    pub actions: Vec<Spanned<String>>,
}

/// A secret from the configuration: never printed (`Debug` shows `<redacted>`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for signing and comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The 32-byte key written in base64 in `key`, or the problem (naming `what`, never the
    /// key) with where it is.
    pub fn key_32<'k>(
        key: &'k Spanned<Secret>,
        what: &str,
    ) -> Result<[u8; 32], (&'k Spanned<Secret>, String)> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(key.value.expose().trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                (
                    key,
                    format!(
                        "{what} must be 32 bytes in base64 (make one with `openssl rand -base64 32`)"
                    ),
                )
            })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The operations a key can be allowed, as written in `actions`.
pub const ACTIONS: [&str; 6] = [
    "PutRecord",
    "PutRecordBatch",
    "ListDeliveryStreams",
    "DescribeDeliveryStream",
    "GetMetrics",
    "Reload",
];

/// TLS on the API listener (TLS 1.2 and 1.3), re-read on SIGHUP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (the server's certificate first), relative to the
    /// configuration file.
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), relative to the configuration file.
    pub key: Spanned<String>,
    /// PEM certificates of the CAs client certificates must chain to; when set, every client
    /// must present one (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
}
