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

/// Which kind of destination failed: the first part of error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// An object store (S3-compatible or a local directory).
    ObjectStore,
    /// A PostgreSQL table.
    Postgres,
    /// An OpenSearch or Elasticsearch cluster.
    Search,
}

impl SinkErrorKind {
    /// A short stable code for an object store failure (as Firehose names them).
    pub fn code(self) -> &'static str {
        match self {
            SinkErrorKind::AccessDenied => "S3.AccessDenied",
            SinkErrorKind::NotFound => "S3.NoSuchBucket",
            SinkErrorKind::AlreadyExists => "S3.AlreadyExists",
            SinkErrorKind::Unavailable => "S3.ServiceUnavailable",
            SinkErrorKind::Rejected => "S3.InvalidRequest",
        }
    }

    /// A short stable code for a PostgreSQL failure.
    pub fn postgres_code(self) -> &'static str {
        match self {
            SinkErrorKind::AccessDenied => "Postgres.AccessDenied",
            SinkErrorKind::NotFound => "Postgres.NoSuchTable",
            SinkErrorKind::AlreadyExists => "Postgres.AlreadyLoaded",
            SinkErrorKind::Unavailable => "Postgres.Unavailable",
            SinkErrorKind::Rejected => "Postgres.Rejected",
        }
    }

    /// A short stable code for an OpenSearch / Elasticsearch failure.
    pub fn search_code(self) -> &'static str {
        match self {
            SinkErrorKind::AccessDenied => "OpenSearch.AccessDenied",
            SinkErrorKind::NotFound => "OpenSearch.NotFound",
            SinkErrorKind::AlreadyExists => "OpenSearch.AlreadyExists",
            SinkErrorKind::Unavailable => "OpenSearch.Unavailable",
            SinkErrorKind::Rejected => "OpenSearch.InvalidRequest",
        }
    }
}

/// A failed delivery attempt: which destination, which object, and why.
#[derive(Debug, thiserror::Error)]
pub struct SinkError {
    /// Classification of the failure.
    pub kind: SinkErrorKind,
    /// The kind of destination.
    pub service: Service,
    /// Human-readable destination, e.g. `s3://bucket` or `file:///var/lib/hydrant`.
    pub destination: String,
    /// The object key (or batch id) the attempt was writing.
    pub target: String,
    /// The underlying reason, as reported by the destination or its client.
    pub reason: String,
}

impl SinkError {
    /// A short stable code, used in logs and as the `errorCode` of error-output records.
    pub fn code(&self) -> &'static str {
        match self.service {
            Service::ObjectStore => self.kind.code(),
            Service::Postgres => self.kind.postgres_code(),
            Service::Search => self.kind.search_code(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writing {} to {}: {}",
            self.code(),
            self.target,
            self.destination,
            self.reason
        )
    }
}
