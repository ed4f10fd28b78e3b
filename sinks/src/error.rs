//! The one error type every sink reports.

use std::fmt;
use std::sync::Arc;

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
    /// The destination took too long to answer.
    TimedOut,
    /// The destination answered, but not in the form its protocol requires.
    InvalidResponse,
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
    /// An HTTP endpoint speaking Firehose's HTTP delivery protocol.
    HttpEndpoint,
}

impl Service {
    /// The stable code of a `kind` failure at this kind of destination, as Firehose names
    /// them where it has a name.
    pub fn code(self, kind: SinkErrorKind) -> &'static str {
        use SinkErrorKind as K;
        match (self, kind) {
            (Service::ObjectStore, K::AccessDenied) => "S3.AccessDenied",
            (Service::ObjectStore, K::NotFound) => "S3.NoSuchBucket",
            (Service::ObjectStore, K::AlreadyExists) => "S3.AlreadyExists",
            (Service::ObjectStore, K::Unavailable | K::TimedOut) => "S3.ServiceUnavailable",
            (Service::ObjectStore, K::Rejected | K::InvalidResponse) => "S3.InvalidRequest",
            (Service::Postgres, K::AccessDenied) => "Postgres.AccessDenied",
            (Service::Postgres, K::NotFound) => "Postgres.NoSuchTable",
            (Service::Postgres, K::AlreadyExists) => "Postgres.AlreadyLoaded",
            (Service::Postgres, K::Unavailable | K::TimedOut) => "Postgres.Unavailable",
            (Service::Postgres, K::Rejected | K::InvalidResponse) => "Postgres.Rejected",
            (Service::Search, K::AccessDenied) => "OpenSearch.AccessDenied",
            (Service::Search, K::NotFound) => "OpenSearch.NotFound",
            (Service::Search, K::AlreadyExists) => "OpenSearch.AlreadyExists",
            (Service::Search, K::Unavailable | K::TimedOut) => "OpenSearch.Unavailable",
            (Service::Search, K::Rejected | K::InvalidResponse) => "OpenSearch.InvalidRequest",
            (Service::HttpEndpoint, K::Unavailable) => "HttpEndpoint.ConnectionFailed",
            (Service::HttpEndpoint, K::TimedOut) => "HttpEndpoint.RequestTimeout",
            (Service::HttpEndpoint, K::InvalidResponse) => {
                "HttpEndpoint.InvalidResponseFromDestination"
            }
            (Service::HttpEndpoint, _) => "HttpEndpoint.DestinationException",
        }
    }
}

/// A failed delivery attempt: which destination, which object, and why.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// Whether the same request may succeed later (an outage, a throttle, a timeout), as
    /// opposed to a refusal that repeats on every attempt.
    pub retriable: bool,
    /// The HTTP status the destination answered with, when it spoke HTTP.
    pub status: Option<u16>,
    /// The error of the client library underneath, kept for `source()`.
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// A `kind` failure of `service` `destination` while writing `target`; retriable when
    /// the kind is one that passes ([`SinkErrorKind::Unavailable`], [`SinkErrorKind::TimedOut`]).
    pub fn new(
        kind: SinkErrorKind,
        service: Service,
        destination: impl Into<String>,
        target: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            service,
            destination: destination.into(),
            target: target.into(),
            reason: reason.into(),
            retriable: matches!(kind, SinkErrorKind::Unavailable | SinkErrorKind::TimedOut),
            status: None,
            source: None,
        }
    }

    /// The same error, naming the HTTP status the destination answered with.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The same error, keeping the client library's error underneath it.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same error, retriable or not whatever its kind says.
    pub fn retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    /// A short stable code, used in logs and as the `errorCode` of error-output records.
    pub fn code(&self) -> &'static str {
        self.service.code(self.kind)
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
