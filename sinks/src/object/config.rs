//! How to reach an S3-compatible store.

/// Connection settings for an S3-compatible store. Anything left `None` falls back to the
/// standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL for non-AWS stores, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region used for request signing.
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub force_path_style: bool,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Objects at least this large are sent as multipart uploads.
    pub multipart_threshold_bytes: usize,
    /// Size of each part of a multipart upload (S3 requires at least 5 MiB).
    pub multipart_part_bytes: usize,
    /// Timeout of one HTTP request to the store.
    pub request_timeout: std::time::Duration,
    /// Server-side encryption the store applies to every object written.
    pub server_side_encryption: Option<ServerSideEncryption>,
}

/// How the store encrypts objects at rest, asked for on every write.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`): keys managed by the store.
    S3Managed,
    /// SSE-KMS (`aws:kms`), with a key id or the store's default KMS key.
    Kms {
        /// The KMS key id or ARN.
        key_id: Option<String>,
    },
    /// DSSE-KMS (`aws:kms:dsse`), with a key id or the store's default KMS key.
    DualKms {
        /// The KMS key id or ARN.
        key_id: Option<String>,
    },
    /// SSE-C: the store encrypts with this key (32 bytes, base64) and keeps only its hash;
    /// every reader needs the same key.
    CustomerKey {
        /// The key, base64.
        key_base64: String,
    },
}

impl std::fmt::Debug for ServerSideEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerSideEncryption::S3Managed => f.write_str("AES256"),
            ServerSideEncryption::Kms { key_id } => write!(f, "aws:kms({key_id:?})"),
            ServerSideEncryption::DualKms { key_id } => write!(f, "aws:kms:dsse({key_id:?})"),
            ServerSideEncryption::CustomerKey { .. } => f.write_str("SSE-C(<redacted>)"),
        }
    }
}
