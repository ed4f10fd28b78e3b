//! The one error type every sink reports.

use std::fmt;

/// What kind of failure a delivery attempt met; decides retry and the error-output code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Credentials were refused (wrong secret, unknown key, expired token).
    AccessDenied,
    /// The bucket, table or index does not exist.
    NotFound,
    /// An object with the same key already exists and the write asked not to overwrite it.
    AlreadyExists,
    /// The destination could not be reached or answered with a server-side fault.
    Unavailable,
    /// The destination rejected the request as invalid.
    Rejected,
}

impl SinkErrorKind {
    /// A short stable code, used in logs and as the `errorCode` of error-output records.
    pub fn code(self) -> &'static str {
        match self {
            SinkErrorKind::AccessDenied => "S3.AccessDenied",
            SinkErrorKind::NotFound => "S3.NoSuchBucket",
            SinkErrorKind::AlreadyExists => "S3.AlreadyExists",
            SinkErrorKind::Unavailable => "S3.ServiceUnavailable",
            SinkErrorKind::Rejected => "S3.InvalidRequest",
        }
    }
}

/// A failed delivery attempt: which destination, which object, and why.
#[derive(Debug, thiserror::Error)]
pub struct SinkError {
    /// Classification of the failure.
    pub kind: SinkErrorKind,
    /// Human-readable destination, e.g. `s3://bucket` or `file:///var/lib/hydrant`.
    pub destination: String,
    /// The object key (or batch id) the attempt was writing.
    pub target: String,
    /// The underlying reason, as reported by the destination or its client.
    pub reason: String,
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writing {} to {}: {}",
            self.kind.code(),
            self.target,
            self.destination,
            self.reason
        )
    }
}
