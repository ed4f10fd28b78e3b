//! The pipeline YAML: its shape (these types are the reference), loading with `${ENV}`
//! substitution, and validation that reports every problem as `FILE:LINE:COLUMN: message`.

mod auth;
mod cluster;
mod encryption;
mod http_endpoint;
mod load;
mod object;
mod parquet;
#[cfg(test)]
mod parquet_tests;
mod partitioning;
mod postgres;
mod processors;
#[cfg(test)]
mod reference_tests;
mod search;
mod sources;
mod streams;
mod validate;

pub use auth::{ACTIONS, AccessKeyConfig, AllowConfig, AuthConfig, Secret, TlsConfig};
pub use cluster::{JetStreamConfig, JetStreamTlsConfig};
pub use encryption::encryption_notes;
pub use http_endpoint::{ContentEncoding, HttpEndpointDestination};
pub use load::{ConfigError, ConfigProblem, load_config, parse_config};
pub use parquet::{ColumnConfig, EpochUnit, ParquetCompression, ParquetConfig, SchemaSource};
pub use partitioning::{OnLimitConfig, PartitioningConfig};
pub use postgres::{PostgresColumn, PostgresDestination, PostgresMode};
pub use processors::{ProcessorConfig, WasmProcessorConfig};
pub use search::{
    BackupMode, DocumentIdConfig, IndexRotation, SearchAuthConfig, SearchBackup, SearchDestination,
    check_index_name,
};
pub use sources::{FileSourceConfig, MAX_LINE_KIB, MultilineConfig, SourceConfig, StartAt};
pub use streams::Streams;

use hydrant_sinks::prelude::{ObjectSink, ObjectStoreSink, S3Options, SinkError};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP API.
    #[serde(default)]
    pub server: ServerConfig,
    /// The on-disk spool that makes acknowledged records durable.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Delivery streams by name.
    pub streams: Streams,
}

/// Where and how the ingest API listens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address of the API. Default `127.0.0.1:4573`.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Requests processed at once; further connections wait. Bounds memory spent on request
    /// bodies (each at most ~6 MiB). Default 64.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: Spanned<u32>,
    /// Memory request bodies may hold at once, in MiB: a request waits for its share (twice
    /// its body: the body and the decoded records) before it is read. Default 256.
    #[serde(default = "default_max_request_memory_mib")]
    pub max_request_memory_mib: Spanned<u32>,
    /// How long a put waits for buffer space when a stream's buffers are full before the
    /// record is refused with `ServiceUnavailableException` ("Slow down."). Default 2000.
    #[serde(default = "default_backpressure_wait_ms")]
    pub backpressure_wait_ms: u64,
    /// Access keys that may call the API; without it, unsigned calls are accepted.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS on the listener; without it, the API speaks plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long a client may take to send a request's headers before the connection is
    /// closed. Default 10.
    #[serde(default = "default_header_read_timeout_seconds")]
    pub header_read_timeout_seconds: Spanned<u64>,
    /// How long a client may take to send a request's body before it is answered
    /// `RequestTimeoutException` (408). The body arrives before the request takes one of
    /// `max_concurrent_requests`, so slow senders never hold those. Default 30.
    #[serde(default = "default_body_read_timeout_seconds")]
    pub body_read_timeout_seconds: Spanned<u64>,
    /// The status console at `GET /` and its JSON at `GET /console/status`.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// The status console: a page for people, its JSON for scripts and `hydrant status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Whether `GET /` and `GET /console/status` are served. Default true.
    #[serde(default = "parquet::yes")]
    pub enabled: bool,
    /// Seconds between the points of the console's plots (the last hour is kept). Default 10.
    #[serde(default = "default_console_resolution_seconds")]
    pub resolution_seconds: Spanned<u64>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            resolution_seconds: default_console_resolution_seconds(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_request_memory_mib: default_max_request_memory_mib(),
            backpressure_wait_ms: default_backpressure_wait_ms(),
            auth: None,
            tls: None,
            header_read_timeout_seconds: default_header_read_timeout_seconds(),
            body_read_timeout_seconds: default_body_read_timeout_seconds(),
            console: ConsoleConfig::default(),
        }
    }
}

/// Where and how accepted records are made durable before the put is acknowledged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool (one subdirectory per stream), relative to the configuration
    /// file. Default `hydrant-spool`.
    #[serde(default = "default_spool_path")]
    pub path: Spanned<String>,
    /// `always` (default): acknowledge after fdatasync, nothing acknowledged is ever lost;
    /// `{ interval_ms: N }`: acknowledge after the write, sync every N ms (a machine crash
    /// can lose the last N ms; a process crash loses nothing); `disabled`: no spool,
    /// records are held in memory until delivered (a crash loses them).
    #[serde(default)]
    pub fsync: FsyncConfig,
    /// Most MiB of spooled, undelivered records per stream; beyond that puts are refused
    /// with "Slow down.". Default 1024.
    #[serde(default = "default_spool_max_mib")]
    pub max_mib: Spanned<u64>,
    /// Encryption of the spool's records at rest; without it they are stored in clear.
    #[serde(default)]
    pub encryption: Option<SpoolEncryptionConfig>,
    /// Keep accepted records in a NATS JetStream cluster instead of on this machine: this
    /// process becomes one node of a Hydrant cluster.
    #[serde(default)]
    pub jetstream: Option<JetStreamConfig>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: default_spool_path(),
            fsync: FsyncConfig::default(),
            max_mib: default_spool_max_mib(),
            encryption: None,
            jetstream: None,
        }
    }
}

/// `spool.encryption`: the key records are encrypted with (AES-256-GCM), and older keys
/// still needed to read what was spooled before a key change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolEncryptionConfig {
    /// 32 random bytes in base64 (`openssl rand -base64 32`); write `${ENV}`.
    pub key: Spanned<Secret>,
    /// Keys the spool was written with before, still read until what they encrypted is
    /// delivered.
    #[serde(default)]
    pub previous_keys: Vec<Spanned<Secret>>,
}

impl SpoolEncryptionConfig {
    /// The keys, decoded; `Err` names the first that is not 32 bytes of base64.
    pub fn keys(&self) -> Result<crate::spool::SpoolKeys, (&Spanned<Secret>, String)> {
        Ok(crate::spool::SpoolKeys {
            current: Secret::key_32(&self.key, "`spool.encryption.key`")?,
            previous: self
                .previous_keys
                .iter()
                .map(|key| Secret::key_32(key, "each of `spool.encryption.previous_keys`"))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The spool's flush policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncConfig {
    /// fdatasync before every acknowledgement (grouped across concurrent puts).
    #[default]
    Always,
    /// Sync at this interval; acknowledge after the write.
    IntervalMs(u64),
    /// No spool at all.
    Disabled,
}

/// One delivery stream: buffering, encoding, compression and where batches go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// When a batch is flushed.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// How records are written into an object: `raw` (default), `ndjson` or `parquet`.
    #[serde(default = "default_format")]
    pub format: Spanned<Format>,
    /// Schema and writer settings of `format: parquet`.
    #[serde(default)]
    pub parquet: Option<ParquetConfig>,
    /// What separates records inside an object. Default `newline`.
    #[serde(default)]
    pub record_delimiter: RecordDelimiter,
    /// Compression of whole objects. Default `none`.
    #[serde(default = "default_compression")]
    pub compression: Spanned<Compression>,
    /// Codec level (gzip: 0–9, default 6; zstd: 1–19, default 3; snappy has none).
    #[serde(default)]
    pub compression_level: Option<Spanned<u32>>,
    /// How a gzip object's chunks are joined: `multiple` members (default, the fastest) or
    /// `single`, for readers that stop after the first member.
    #[serde(default = "default_gzip_members")]
    pub gzip_members: Spanned<GzipMembersConfig>,
    /// Inputs the service reads itself (tailed files), beside the API.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Transforms run over records before they are encoded, in order.
    #[serde(default)]
    pub processors: Vec<ProcessorConfig>,
    /// Dynamic partitioning: objects filed under keys taken from each record.
    #[serde(default)]
    pub partitioning: Option<PartitioningConfig>,
    /// Where batches are delivered.
    pub destination: Destination,
}

/// Flush thresholds: whichever is reached first flushes the batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Flush when this many MiB (before compression) are buffered. 1–128, default 5.
    #[serde(default = "default_size_mib")]
    pub size_mib: Spanned<u32>,
    /// Flush when the oldest buffered record is this old. 0–900, default 60; 0 delivers as
    /// soon as possible.
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: Spanned<u32>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            size_mib: default_size_mib(),
            interval_seconds: default_interval_seconds(),
        }
    }
}

/// How records are laid out in an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Record bytes as sent, followed by the record delimiter.
    #[default]
    Raw,
    /// Each record must be one JSON value; written as one line. Records that are not go to
    /// the `format-conversion-failed` error output.
    Ndjson,
    /// Each record is one JSON object, written as a row of a Parquet file with the schema
    /// in the stream's `parquet:` section. Records that do not fit it go to the
    /// `format-conversion-failed` error output.
    Parquet,
}

/// Separator written after each record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordDelimiter {
    /// `\n` after each record that does not already end with one (NDJSON-friendly).
    #[default]
    Newline,
    /// Records concatenated exactly as sent (Firehose's default).
    None,
}

/// How a gzip object's chunks are joined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GzipMembersConfig {
    /// One gzip member per chunk (RFC 1952 allows many; every common reader reads them all).
    #[default]
    Multiple,
    /// One gzip member for the whole object.
    Single,
}

/// Whole-object compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// gzip (RFC 1952), `.gz` extension.
    Gzip,
    /// zstd (RFC 8878), `.zst` extension.
    Zstd,
    /// Snappy framing format, `.snappy` extension.
    Snappy,
}

/// Where a stream's batches go.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// A directory on the local filesystem, laid out like a bucket.
    Local(Box<LocalDestination>),
    /// An S3-compatible object store.
    S3(Box<S3Destination>),
    /// A PostgreSQL table.
    Postgres(Box<PostgresDestination>),
    /// An OpenSearch or Elasticsearch cluster.
    #[serde(alias = "elasticsearch")]
    Opensearch(Box<SearchDestination>),
    /// An HTTP endpoint speaking Firehose's HTTP delivery protocol.
    HttpEndpoint(Box<HttpEndpointDestination>),
}

/// A local directory destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDestination {
    /// Directory that plays the bucket; created if missing.
    pub path: Spanned<String>,
    /// Key prefix, with `!{timestamp:...}` and `!{firehose:random-string}` expressions.
    /// Without expressions, `YYYY/MM/dd/HH/` is appended, as Firehose does. Default empty.
    #[serde(default = "empty_prefix")]
    pub prefix: Spanned<String>,
    /// Where batches go once `retry_duration_seconds` of failed writes have passed: JSON
    /// lines, one per record, under this prefix (`!{firehose:error-output-type}` is
    /// `s3-failed`). Default `!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/`.
    #[serde(default = "default_error_output_prefix")]
    pub error_output_prefix: Spanned<String>,
    /// How long a failing batch is retried before it goes to the error output (with the
    /// spool; without it, batches are retried until they succeed). 0–604800, default 86400.
    #[serde(default = "default_retry_duration_seconds")]
    pub retry_duration_seconds: Spanned<u64>,
    /// First retry delay after a failed write, in milliseconds. Default 200.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, in seconds. Default 30.
    #[serde(default = "default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
}

/// An S3-compatible destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Destination {
    /// Bucket name.
    pub bucket: Spanned<String>,
    /// Endpoint URL for non-AWS stores (MinIO, SeaweedFS, Garage...). Default: AWS, or
    /// `AWS_ENDPOINT_URL`.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// Signing region. Default: `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted stores.
    /// Default `false` (virtual-hosted style, as AWS prefers).
    #[serde(default)]
    pub force_path_style: bool,
    /// Access key id. Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials. Default: `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Objects at least this large go up as multipart uploads. Default 16.
    #[serde(default = "default_multipart_threshold_mib")]
    pub multipart_threshold_mib: Spanned<u32>,
    /// Part size of multipart uploads, at least 5. Default 8.
    #[serde(default = "default_multipart_part_mib")]
    pub multipart_part_mib: Spanned<u32>,
    /// Timeout of one request to the store. Default 30.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// Encryption at rest the store applies to every object: `AES256` (SSE-S3), `aws:kms`,
    /// `aws:kms:dsse` (with `kms_key_id`, or the store's default key) or `SSE-C` (with
    /// `sse_customer_key`). Default: none asked for (the bucket's default applies).
    #[serde(default)]
    pub server_side_encryption: Option<Spanned<String>>,
    /// The KMS key id or ARN for `aws:kms` and `aws:kms:dsse`.
    #[serde(default)]
    pub kms_key_id: Option<Spanned<String>>,
    /// The SSE-C key: 32 bytes in base64 (write `${ENV}`); readers need the same key.
    #[serde(default)]
    pub sse_customer_key: Option<Spanned<Secret>>,
    /// Key prefix, with `!{timestamp:...}` and `!{firehose:random-string}` expressions.
    /// Without expressions, `YYYY/MM/dd/HH/` is appended, as Firehose does. Default empty.
    #[serde(default = "empty_prefix")]
    pub prefix: Spanned<String>,
    /// Where batches go once `retry_duration_seconds` of failed writes have passed: JSON
    /// lines, one per record, under this prefix (`!{firehose:error-output-type}` is
    /// `s3-failed`). Default `!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/`.
    #[serde(default = "default_error_output_prefix")]
    pub error_output_prefix: Spanned<String>,
    /// How long a failing batch is retried before it goes to the error output (with the
    /// spool; without it, batches are retried until they succeed). 0–604800, default 86400.
    #[serde(default = "default_retry_duration_seconds")]
    pub retry_duration_seconds: Spanned<u64>,
    /// First retry delay after a failed write, in milliseconds. Default 200.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, in seconds. Default 30.
    #[serde(default = "default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
}

/// Key layout and retry settings every object destination has.
#[derive(Debug, Clone)]
pub struct ObjectLayout<'a> {
    /// Key prefix template, with its location in the file.
    pub prefix: &'a Spanned<String>,
    /// Error output prefix template.
    pub error_output_prefix: &'a Spanned<String>,
    /// How long a failing batch is retried.
    pub retry_duration: &'a Spanned<u64>,
    /// First retry delay.
    pub initial_backoff: std::time::Duration,
    /// Longest retry delay.
    pub max_backoff: std::time::Duration,
}

/// Where a stream delivers, as `DescribeDeliveryStream` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSummary {
    /// An ARN naming the destination (`arn:aws:s3:::bucket`, `arn:hydrant:postgres:::table`).
    pub arn: String,
    /// The endpoint reached, when it is not AWS's.
    pub endpoint: Option<String>,
}

/// A destination delivered through the seam, built from its configuration.
#[derive(Debug, Clone)]
pub struct SeamDestination {
    /// The destination.
    pub destination: std::sync::Arc<dyn hydrant_sinks::prelude::AnyDestination>,
    /// Requests of one batch in flight at once.
    pub concurrency: usize,
    /// Whether every record is also written to the backup destination.
    pub backup_all: bool,
    /// Longest one attempt may take (the destination's request timeout, and a margin).
    pub attempt_timeout: std::time::Duration,
}

impl<'a> ObjectLayout<'a> {
    /// This layout with another destination's retry settings.
    fn retrying(self, retry_duration: &'a Spanned<u64>, initial_ms: u64, max_s: u64) -> Self {
        ObjectLayout {
            retry_duration,
            initial_backoff: std::time::Duration::from_millis(initial_ms.max(1)),
            max_backoff: std::time::Duration::from_secs(max_s.max(1)),
            ..self
        }
    }
}

impl Destination {
    /// The destination behind the seam this configuration describes (`None` for the
    /// destinations not yet moved behind it); relative paths are taken from `base_dir`;
    /// `run` is the stream's record id prefix, which names batches and documents, and
    /// `stream` its name. Connects to a table (to check its columns).
    pub async fn seam(
        &self,
        base_dir: &std::path::Path,
        stream: &str,
        run: u64,
    ) -> Option<Result<SeamDestination, hydrant_sinks::prelude::SinkError>> {
        match self {
            Destination::Postgres(pg) => Some(pg.build(stream, base_dir).await.map(|built| {
                SeamDestination {
                    destination: std::sync::Arc::new(built),
                    concurrency: 1,
                    backup_all: false,
                    // A load's statements have no timeout of their own.
                    attempt_timeout: std::time::Duration::from_secs(600),
                }
            })),
            Destination::Opensearch(search) => {
                Some(search.build(base_dir, run).map(|built| SeamDestination {
                    destination: std::sync::Arc::new(built),
                    concurrency: search.concurrency.value as usize,
                    backup_all: search.backup.mode == BackupMode::All,
                    attempt_timeout: std::time::Duration::from_secs(
                        search.request_timeout_seconds + 30,
                    ),
                }))
            }
            Destination::HttpEndpoint(endpoint) => {
                Some(endpoint.build(base_dir).map(|built| SeamDestination {
                    destination: built,
                    concurrency: endpoint.concurrency.value as usize,
                    backup_all: endpoint.backup.mode == BackupMode::All,
                    attempt_timeout: std::time::Duration::from_secs(
                        endpoint.request_timeout_seconds.value + 30,
                    ),
                }))
            }
            _ => None,
        }
    }

    /// The object store that takes this destination's objects: its batches for `local` and
    /// `s3`, the error output and backups for the others. Relative paths are taken from
    /// `base_dir`.
    pub fn object_sink(
        &self,
        base_dir: &std::path::Path,
    ) -> Result<std::sync::Arc<dyn ObjectSink>, SinkError> {
        const MIB: usize = 1024 * 1024;
        Ok(match self.object_destination() {
            Destination::Local(local) => {
                std::sync::Arc::new(ObjectStoreSink::local(&base_dir.join(&local.path.value))?)
            }
            Destination::S3(s3) => std::sync::Arc::new(ObjectStoreSink::s3(&S3Options {
                bucket: s3.bucket.value.clone(),
                endpoint: s3.endpoint.as_ref().map(|e| e.value.clone()),
                region: s3.region.clone(),
                force_path_style: s3.force_path_style,
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
                session_token: s3.session_token.clone(),
                multipart_threshold_bytes: s3.multipart_threshold_mib.value as usize * MIB,
                multipart_part_bytes: s3.multipart_part_mib.value as usize * MIB,
                request_timeout: std::time::Duration::from_secs(s3.request_timeout_seconds.max(1)),
                server_side_encryption: s3.server_side_encryption().ok().flatten(),
            })?),
            other => unreachable!("object_destination() is local or s3, got {other:?}"),
        })
    }

    /// The destination's kind, as its configuration key names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Local(_) => "local",
            Destination::S3(_) => "s3",
            Destination::Postgres(_) => "postgres",
            Destination::Opensearch(_) => "opensearch",
            Destination::HttpEndpoint(_) => "http_endpoint",
        }
    }

    /// What `DescribeDeliveryStream` says about this destination.
    pub fn summary(&self) -> DestinationSummary {
        let (arn, endpoint) = match self {
            Destination::Local(local) => {
                (format!("arn:hydrant:local:::{}", local.path.value), None)
            }
            Destination::S3(s3) => (
                format!("arn:aws:s3:::{}", s3.bucket.value),
                s3.endpoint.as_ref().map(|e| e.value.clone()),
            ),
            Destination::Postgres(pg) => {
                (format!("arn:hydrant:postgres:::{}", pg.table.value), None)
            }
            Destination::Opensearch(search) => (
                format!("arn:hydrant:opensearch:::{}", search.index.value),
                Some(search.endpoint_urls().join(",")),
            ),
            Destination::HttpEndpoint(endpoint) => (
                format!("arn:hydrant:http-endpoint:::{}", endpoint.url.value),
                Some(endpoint.url.value.clone()),
            ),
        };
        DestinationSummary { arn, endpoint }
    }

    /// The object destination that takes this destination's error output and backups
    /// (itself, for an object destination).
    pub fn object_destination(&self) -> &Destination {
        match self {
            Destination::Local(_) | Destination::S3(_) => self,
            Destination::Postgres(pg) => pg.error_output.object_destination(),
            Destination::Opensearch(search) => search.backup.destination.object_destination(),
            Destination::HttpEndpoint(endpoint) => endpoint.backup.destination.object_destination(),
        }
    }

    /// Whether this is an object destination (`local` or `s3`): the only kind that can
    /// take error outputs and backups.
    pub fn is_object_store(&self) -> bool {
        matches!(self, Destination::Local(_) | Destination::S3(_))
    }

    /// The settings shared by every object destination.
    pub fn layout(&self) -> ObjectLayout<'_> {
        let (prefix, error_output_prefix, retry_duration, initial_ms, max_s) = match self {
            Destination::Local(d) => (
                &d.prefix,
                &d.error_output_prefix,
                &d.retry_duration_seconds,
                d.initial_backoff_ms,
                d.max_backoff_seconds,
            ),
            Destination::S3(d) => (
                &d.prefix,
                &d.error_output_prefix,
                &d.retry_duration_seconds,
                d.initial_backoff_ms,
                d.max_backoff_seconds,
            ),
            // Objects (error output, backups) follow the object destination's layout;
            // retries follow the destination's own settings.
            Destination::Postgres(d) => {
                return d.error_output.layout().retrying(
                    &d.retry_duration_seconds,
                    d.initial_backoff_ms,
                    d.max_backoff_seconds,
                );
            }
            Destination::Opensearch(d) => {
                return d.backup.destination.layout().retrying(
                    &d.retry_duration_seconds,
                    d.initial_backoff_ms,
                    d.max_backoff_seconds,
                );
            }
            Destination::HttpEndpoint(d) => {
                return d.backup.destination.layout().retrying(
                    &d.retry_duration_seconds,
                    d.initial_backoff_ms,
                    d.max_backoff_seconds,
                );
            }
        };
        ObjectLayout {
            prefix,
            error_output_prefix,
            retry_duration,
            initial_backoff: std::time::Duration::from_millis(initial_ms.max(1)),
            max_backoff: std::time::Duration::from_secs(max_s.max(1)),
        }
    }
}

fn default_format() -> Spanned<Format> {
    spanned(Format::default())
}

fn default_compression() -> Spanned<Compression> {
    spanned(Compression::default())
}

fn default_gzip_members() -> Spanned<GzipMembersConfig> {
    spanned(GzipMembersConfig::default())
}

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned {
        value,
        referenced: serde_saphyr::Location::UNKNOWN,
        defined: serde_saphyr::Location::UNKNOWN,
    }
}

pub(super) fn empty_prefix() -> Spanned<String> {
    spanned(String::new())
}
pub(super) fn default_error_output_prefix() -> Spanned<String> {
    spanned("!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/".to_string())
}
pub(super) fn default_retry_duration_seconds() -> Spanned<u64> {
    spanned(86_400)
}
fn default_spool_path() -> Spanned<String> {
    spanned("hydrant-spool".to_string())
}
fn default_spool_max_mib() -> Spanned<u64> {
    spanned(1024)
}
fn default_listen() -> Spanned<String> {
    spanned("127.0.0.1:4573".to_string())
}
fn default_max_concurrent_requests() -> Spanned<u32> {
    spanned(64)
}
fn default_max_request_memory_mib() -> Spanned<u32> {
    spanned(256)
}
fn default_header_read_timeout_seconds() -> Spanned<u64> {
    spanned(10)
}
fn default_body_read_timeout_seconds() -> Spanned<u64> {
    spanned(30)
}
fn default_console_resolution_seconds() -> Spanned<u64> {
    spanned(10)
}
fn default_backpressure_wait_ms() -> u64 {
    2000
}
fn default_size_mib() -> Spanned<u32> {
    spanned(5)
}
fn default_interval_seconds() -> Spanned<u32> {
    spanned(60)
}
fn default_multipart_threshold_mib() -> Spanned<u32> {
    spanned(16)
}
fn default_multipart_part_mib() -> Spanned<u32> {
    spanned(8)
}
fn default_request_timeout_seconds() -> u64 {
    30
}
pub(super) fn default_initial_backoff_ms() -> u64 {
    200
}
pub(super) fn default_max_backoff_seconds() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        parse_config(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse("streams:\n  s:\n    destination:\n      s3: { bucket: b }\n");
        assert_eq!(config.server.listen.value, "127.0.0.1:4573");
        assert_eq!(config.server.max_concurrent_requests.value, 64);
        assert_eq!(config.server.max_request_memory_mib.value, 256);
        assert_eq!(config.server.backpressure_wait_ms, 2000);
        let (name, stream) = config.streams.iter().next().unwrap();
        assert_eq!(name.value, "s");
        assert_eq!(stream.buffer.size_mib.value, 5);
        assert_eq!(stream.buffer.interval_seconds.value, 60);
        assert_eq!(stream.format.value, Format::Raw);
        assert_eq!(stream.record_delimiter, RecordDelimiter::Newline);
        assert_eq!(stream.compression.value, Compression::None);
        let Destination::S3(s3) = &stream.destination else {
            panic!("expected s3")
        };
        assert_eq!(s3.multipart_threshold_mib.value, 16);
        assert_eq!(s3.multipart_part_mib.value, 8);
        assert_eq!(s3.request_timeout_seconds, 30);
        assert!(!s3.force_path_style);
        let layout = stream.destination.layout();
        assert_eq!(layout.prefix.value, "");
        assert_eq!(
            layout.initial_backoff,
            std::time::Duration::from_millis(200)
        );
        assert_eq!(layout.max_backoff, std::time::Duration::from_secs(30));
    }

    #[test]
    fn streams_keep_file_order_and_duplicates_are_rejected() {
        let config = parse(
            "streams:\n  zeta: { destination: { local: { path: a } } }\n  alpha: { destination: { local: { path: b } } }\n",
        );
        let names: Vec<_> = config
            .streams
            .iter()
            .map(|(n, _)| n.value.as_str())
            .collect();
        assert_eq!(names, ["zeta", "alpha"]);
        let error = parse_config(
            "streams:\n  a: { destination: { local: { path: a } } }\n  a: { destination: { local: { path: b } } }\n",
            "dup.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("dup.yaml:3:"), "{error}");
        assert!(error.to_lowercase().contains("duplicate"), "{error}");
    }

    #[test]
    fn spool_and_retry_settings_have_documented_defaults_and_limits() {
        let config = parse("streams:\n  s:\n    destination:\n      local: { path: x }\n");
        assert_eq!(config.spool.path.value, "hydrant-spool");
        assert_eq!(config.spool.fsync, FsyncConfig::Always);
        assert_eq!(config.spool.max_mib.value, 1024);
        let layout = config.streams.0[0].1.destination.layout();
        assert_eq!(layout.retry_duration.value, 86_400);
        assert_eq!(
            layout.error_output_prefix.value,
            "!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/"
        );
        let config = parse(
            "spool:\n  fsync: { interval_ms: 10 }\nstreams:\n  s:\n    destination:\n      local: { path: x }\n",
        );
        assert_eq!(config.spool.fsync, FsyncConfig::IntervalMs(10));
        let config = parse(
            "spool: { fsync: disabled }\nstreams:\n  s:\n    destination:\n      local: { path: x }\n",
        );
        assert_eq!(config.spool.fsync, FsyncConfig::Disabled);

        let error = parse_config(
            "spool: { max_mib: 2 }\nstreams:\n  s:\n    destination:\n      local:\n        path: x\n        retry_duration_seconds: 700000\n        error_output_prefix: \"bad/!{nope:x}/\"\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("r.yaml:1:19: `spool.max_mib` must be at least 8"),
            "{error}"
        );
        assert!(
            error.contains("r.yaml:7:33: stream `s`: `retry_duration_seconds`"),
            "{error}"
        );
        assert!(
            error.contains("`error_output_prefix`: unknown expression namespace `nope`"),
            "{error}"
        );
    }

    #[test]
    fn search_destinations_have_documented_defaults_and_an_elasticsearch_alias() {
        let config = parse(
            "streams:\n  s:\n    destination:\n      elasticsearch: { endpoint: \"http://127.0.0.1:9200\", index: logs }\n",
        );
        let Destination::Opensearch(search) = &config.streams.0[0].1.destination else {
            panic!("elasticsearch is the opensearch destination")
        };
        assert_eq!(search.index_rotation, IndexRotation::None);
        assert_eq!(search.document_id, DocumentIdConfig::Deterministic);
        assert_eq!(search.compression.value, Compression::None);
        assert_eq!(search.max_bulk_mib.value, 5);
        assert_eq!(search.concurrency.value, 2);
        assert_eq!(search.retry_duration_seconds.value, 300);
        assert_eq!(search.backup.mode, BackupMode::FailedOnly);
        assert!(matches!(*search.backup.destination, Destination::Local(_)));
        assert_eq!(search.endpoint_urls(), ["http://127.0.0.1:9200"]);
        let layout = config.streams.0[0].1.destination.layout();
        assert_eq!(layout.retry_duration.value, 300);

        let config = parse(
            "streams:\n  s:\n    destination:\n      opensearch:\n        endpoints: [\"http://a:9200\", \"http://b:9200\"]\n        index: logs\n        index_rotation: week\n        document_id: { field: request.id }\n        auth: { api_key: k }\n        backup: { mode: all }\n",
        );
        let Destination::Opensearch(search) = &config.streams.0[0].1.destination else {
            panic!("opensearch")
        };
        assert_eq!(search.endpoint_urls().len(), 2);
        assert_eq!(search.index_rotation, IndexRotation::Week);
        assert_eq!(
            search.document_id,
            DocumentIdConfig::Field("request.id".into())
        );
        assert!(matches!(search.auth, Some(SearchAuthConfig::ApiKey(_))));
        assert_eq!(search.backup.mode, BackupMode::All);

        let error = parse_config(
            "streams:\n  s:\n    destination:\n      opensearch:\n        index: logs\n        compression: zstd\n        max_bulk_mib: 0\n        backup: { destination: { postgres: { table: t, columns: [ { name: a } ] } } }\n",
            "o.yaml",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "set `endpoint` (or `endpoints`)",
            "o.yaml:6:22: stream `s`: bulk requests take `compression: none` or `gzip`",
            "o.yaml:7:23: stream `s`: `max_bulk_mib` must be between 1 and 100",
            "`backup.destination` must be a `local` or `s3` destination",
        ] {
            assert!(
                error.contains(expected),
                "missing {expected:?} in:\n{error}"
            );
        }
    }

    #[test]
    fn processors_have_documented_defaults_and_limits() {
        let config = parse(
            "streams:\n  s:\n    processors:\n      - wasm: { module: t.wasm, config: { fields: [a, b], n: 1 } }\n      - wasm: { module: u.wasm }\n    destination: { local: { path: x } }\n",
        );
        let processors = &config.streams.0[0].1.processors;
        assert_eq!(processors.len(), 2);
        let ProcessorConfig::Wasm(first) = &processors[0];
        assert_eq!(first.module.value, "t.wasm");
        assert_eq!(
            first.config.as_ref().unwrap(),
            &serde_json::json!({ "fields": ["a", "b"], "n": 1 })
        );
        assert_eq!(first.timeout_ms.value, 3000);
        assert_eq!(first.max_memory_mib.value, 64);
        assert_eq!(first.buffer_size_mib.value, 1.0);
        assert_eq!(first.buffer_interval_seconds.value, 60);
        assert_eq!(first.retries.value, 3);
        let ProcessorConfig::Wasm(second) = &processors[1];
        assert!(second.config.is_none());

        let error = parse_config(
            "streams:\n  s:\n    processors:\n      - wasm:\n          module: t.wasm\n          timeout_ms: 0\n          max_memory_mib: 9999\n          buffer_size_mib: 5\n          retries: 11\n    destination: { local: { path: x } }\n",
            "w.yaml",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "w.yaml:6:23: stream `s`: `timeout_ms` must be between 1 and 300000, got 0",
            "w.yaml:7:27: stream `s`: `max_memory_mib` must be between 1 and 4096, got 9999",
            "w.yaml:8:28: stream `s`: `buffer_size_mib` must be between 0.2 and 3, got 5",
            "w.yaml:9:20: stream `s`: `retries` must be between 0 and 10, got 11",
        ] {
            assert!(
                error.contains(expected),
                "missing {expected:?} in:\n{error}"
            );
        }
        let error = parse_config(
            "streams:\n  s:\n    processors:\n      - lambda: { arn: x }\n    destination: { local: { path: x } }\n",
            "l.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("l.yaml:4:"), "{error}");
        assert!(error.contains("wasm"), "{error}");
    }

    #[test]
    fn an_empty_streams_mapping_is_a_problem() {
        let error = parse_config("streams: {}\n", "empty.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least one delivery stream"), "{error}");
    }

    #[test]
    fn parquet_settings_have_defaults_and_every_mistake_is_located() {
        let config = parse(
            "streams:\n  s:\n    format: parquet\n    parquet:\n      schema: infer\n    destination: { local: { path: x } }\n",
        );
        let parquet = config.streams.0[0].1.parquet.as_ref().unwrap();
        assert!(matches!(parquet.schema.value, SchemaSource::Infer));
        assert!(parquet.case_insensitive);
        assert!(!parquet.convert_dots_in_json_keys_to_underscores);
        assert!(parquet.dictionary);
        assert_eq!(parquet.compression.value, ParquetCompression::Snappy);
        assert_eq!(parquet.row_group_mib.value, 128);
        assert_eq!(parquet.page_size_kib.value, 1024);
        assert_eq!(parquet.timestamp_numbers, EpochUnit::Auto);

        let error = parse_config(
            concat!(
                "streams:\n",
                "  a:\n",
                "    format: parquet\n",
                "    compression: gzip\n",
                "    parquet:\n",
                "      schema:\n",
                "        - { name: id, type: int64 }\n",
                "        - { name: ID, type: string }\n",
                "        - { name: at, type: timestamp(ns) }\n",
                "      column_to_json_key_mappings: { nope: x }\n",
                "      compression: snappy\n",
                "      compression_level: 3\n",
                "    destination: { local: { path: x } }\n",
                "  b:\n",
                "    format: parquet\n",
                "    destination: { local: { path: x } }\n",
            ),
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "p.yaml:4:18: stream `a`: Parquet files compress their columns themselves",
            "p.yaml:8:19: stream `a`: column `ID` is declared twice",
            "p.yaml:9:29: stream `a`: column `at`: expected `ms` or `us`",
            "`column_to_json_key_mappings` names `nope`, which is not a declared column",
            "p.yaml:12:26: stream `a`: `parquet.compression_level` needs `compression: zstd` or `gzip`",
            "p.yaml:15:13: stream `b`: `format: parquet` needs a `parquet:` section",
        ] {
            assert!(
                error.contains(expected),
                "missing {expected:?} in:\n{error}"
            );
        }
        let error = parse_config(
            "streams:\n  s:\n    parquet: { schema: [ { name: a, type: int64 } ] }\n    destination: { local: { path: x } }\n",
            "q.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("a `parquet:` section needs `format: parquet`"),
            "{error}"
        );
        let error = parse_config(
            "streams:\n  s:\n    format: parquet\n    parquet: { schema: guess }\n    destination: { local: { path: x } }\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("r.yaml:4:"), "{error}");
        assert!(error.contains("`infer` or a list of columns"), "{error}");
    }

    #[test]
    fn auth_keys_are_checked_and_secrets_never_printed() {
        let text = "server:\n  auth:\n    access_keys:\n      - id: short\n        secret: tiny\n        allow: { streams: [\"app-*\", \"bad name\"], actions: [PutRecord, Delete] }\n      - id: AKIDOPS0000000001\n        secret: a-long-enough-secret-value\n        allow: { streams: [\"*\"], actions: [\"*\"] }\n    region: US_EAST\nstreams:\n  s:\n    destination: { local: { path: x } }\n";
        let error = parse_config(text, "auth.yaml").unwrap_err().to_string();
        for expected in [
            "auth.yaml:4:",
            "access key id `short` must be 16 to 128 letters and digits",
            "auth.yaml:5:",
            "the secret of access key `short` must be at least 16 characters",
            "`bad name` is not a stream name pattern",
            "unknown action `Delete`",
            "`region` `US_EAST` is not a region name",
        ] {
            assert!(
                error.contains(expected),
                "missing {expected:?} in:\n{error}"
            );
        }
        let config = parse(
            &text
                .replace("id: short", "id: AKIDSHIPPER000001")
                .replace("tiny", "shipper-secret-0123456789")
                .replace(", \"bad name\"", "")
                .replace(", Delete", "")
                .replace("US_EAST", "us-east-1"),
        );
        let auth = config.server.auth.expect("auth");
        assert_eq!(auth.access_keys.value.len(), 2);
        let printed = format!("{:?}", auth.access_keys.value);
        assert!(
            printed.contains("AKIDSHIPPER000001") && printed.contains("<redacted>"),
            "{printed}"
        );
        assert!(!printed.contains("shipper-secret"), "{printed}");
    }

    #[test]
    fn spool_keys_are_32_bytes_of_base64() {
        let text = "spool:\n  encryption:\n    key: c2hvcnQ=\n    previous_keys: [\"not base64!\"]\nstreams:\n  s:\n    destination: { local: { path: x } }\n";
        let error = parse_config(text, "spool.yaml").unwrap_err().to_string();
        assert!(
            error.contains("spool.yaml:3:")
                && error.contains("`spool.encryption.key` must be 32 bytes in base64"),
            "{error}"
        );
        assert!(
            !error.contains("c2hvcnQ"),
            "the key is not printed: {error}"
        );
        let good = text
            .replace("c2hvcnQ=", "c3Bvb2wtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=")
            .replace(
                "\"not base64!\"",
                "YmVuY2htYXJrLWtleS1ub3QtYS1zZWNyZXQtMzJieXQ=",
            );
        let keys = parse(&good).spool.encryption.unwrap().keys().unwrap();
        assert_eq!(&keys.current, b"spool-test-key-32-bytes-long!!!!");
        assert_eq!(keys.previous.len(), 1);
    }

    #[test]
    fn server_side_encryption_settings_are_checked_where_written() {
        let config = |sse: &str| {
            format!("streams:\n  s:\n    destination:\n      s3:\n        bucket: b\n{sse}")
        };
        for (sse, expected) in [
            (
                "        server_side_encryption: DES\n",
                "must be AES256, aws:kms, aws:kms:dsse or SSE-C, got `DES`",
            ),
            (
                "        server_side_encryption: SSE-C\n",
                "needs `sse_customer_key`",
            ),
            (
                "        server_side_encryption: SSE-C\n        sse_customer_key: c2hvcnQ=\n",
                "`sse_customer_key` must be 32 bytes",
            ),
            (
                "        server_side_encryption: AES256\n        kms_key_id: k\n",
                "`kms_key_id` is only for aws:kms",
            ),
            (
                "        kms_key_id: k\n",
                "`kms_key_id` needs `server_side_encryption: aws:kms`",
            ),
        ] {
            let error = parse_config(&config(sse), "sse.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected) && error.contains("sse.yaml:"),
                "{sse}: {error}"
            );
            assert!(!error.contains("c2hvcnQ"), "no key in errors: {error}");
        }
        let parsed = parse(&config(
            "        server_side_encryption: aws:kms\n        kms_key_id: alias/hydrant\n",
        ));
        let Destination::S3(s3) = &parsed.streams.0[0].1.destination else {
            panic!("s3")
        };
        assert_eq!(
            s3.server_side_encryption().unwrap(),
            Some(hydrant_sinks::prelude::ServerSideEncryption::Kms {
                key_id: Some("alias/hydrant".into())
            })
        );
        assert!(encryption_notes(&parsed)[0].contains("aws:kms: the store needs a KMS"));
    }

    mod hostile {
        use proptest::prelude::*;

        use super::*;

        const QUICKSTART: &str = include_str!("../../examples/quickstart.yaml");

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn hostile_yaml_loads_or_fails_with_located_problems(
                text in prop_oneof![
                    "[ -~\n\t]{0,300}",
                    prop::collection::vec((0usize..QUICKSTART.len(), "[ -~\n:{}\\[\\]-]{0,3}", any::<bool>()), 1..6)
                        .prop_map(|edits| {
                            let mut text = QUICKSTART.to_string();
                            for (at, insert, cut) in edits {
                                let at = (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                                if cut {
                                    let end = (at..=text.len()).find(|&i| text.is_char_boundary(i) && i >= at + 2).unwrap_or(text.len());
                                    text.replace_range(at..end, "");
                                }
                                text.insert_str(at, &insert);
                            }
                            text
                        }),
                ]
            ) {
                if let Err(error) = parse_config(&text, "fuzz.yaml") {
                    let message = error.to_string();
                    prop_assert!(message.starts_with("fuzz.yaml"), "{}", message);
                }
            }
        }
    }
}
