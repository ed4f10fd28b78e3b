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
}
