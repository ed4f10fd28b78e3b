//! Running as one node of a Hydrant cluster on NATS JetStream.
//!
//! Every node takes puts for every stream and stores their records in the stream's
//! replicated JetStream stream before acknowledging them ([`ingest`]); the records are
//! split into partitions (one subject each), and each partition is delivered by one node at
//! a time, the holder of its lease in a JetStream key-value bucket ([`lease`], [`assign`]).
//! A partition's lease entry also holds its delivered point and the boundaries of the batch
//! being written, all changed by compare-and-swap on the entry's revision, so a node that
//! lost its lease can change neither; a node taking a partition over rebuilds that batch with
//! the same boundaries, and the destinations' create-only writes, ledger and document ids
//! absorb the repeat ([`partition`]).

pub mod assign;
mod check;
pub mod ingest;
pub mod lease;
pub mod members;
mod message;
pub mod partition;
mod server_version;

pub use assign::{PartitionLauncher, PartitionRun, StreamAssignment};
pub use check::check_cluster;
pub use ingest::{ClusterStatus, StreamLog};
pub use partition::PartitionLog;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::config::JetStreamConfig;

/// Key-value bucket holding every partition's lease and every node's heartbeat.
const LEASE_BUCKET: &str = "hydrant_leases";

/// How long setting up a stream is retried before the node gives up.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// How long a publish or key-value request may take before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The servers could not be reached (or refused the credentials).
    #[error("cannot connect to the JetStream cluster at {servers}: {reason}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// Why.
        reason: String,
    },
    /// A stream or bucket could not be created or read.
    #[error("JetStream {what}: {reason}")]
    Setup {
        /// Which stream or bucket.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Settings of the cluster, from `spool.jetstream`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Server addresses.
    pub servers: Vec<String>,
    /// Copies of every record and lease.
    pub replicas: usize,
    /// Partitions per delivery stream.
    pub partitions: u32,
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Credentials file, absolute.
    pub credentials: Option<std::path::PathBuf>,
    /// CA file, absolute.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key, absolute.
    pub client_certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Most bytes of undelivered records per stream (puts beyond are refused).
    pub max_bytes: u64,
}

impl ClusterSettings {
    /// The settings `config` describes; relative paths are taken from `base_dir`.
    pub fn new(config: &JetStreamConfig, max_bytes: u64, base_dir: &Path) -> Self {
        let path = |value: &String| base_dir.join(value);
        let tls = config.tls.as_ref();
        Self {
            servers: config.servers.value.clone(),
            replicas: config.replicas.value as usize,
            partitions: config.partitions.value,
            lease_ttl: Duration::from_secs(config.lease_ttl_seconds.value),
            credentials: config.credentials.as_ref().map(|c| path(&c.value)),
            ca_file: tls.and_then(|t| t.ca_file.as_ref()).map(|c| path(&c.value)),
            client_certificate: tls.and_then(|t| match (&t.cert_file, &t.key_file) {
                (Some(cert), Some(key)) => Some((path(&cert.value), path(&key.value))),
                _ => None,
            }),
            max_bytes,
        }
    }
}

/// This node's connection to the cluster: shared by every stream.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Settings.
    pub settings: ClusterSettings,
    /// JetStream API.
    pub jetstream: jetstream::Context,
    /// The lease bucket.
    pub leases: kv::Store,
    /// This node's name in leases: unique per process run.
    pub node: String,
    /// Largest message the servers take.
    pub max_payload: usize,
}

impl Cluster {
    /// Connects to the servers and makes sure the lease bucket exists.
    pub async fn connect(settings: ClusterSettings) -> Result<Self, ClusterError> {
        let node = format!(
            "{}-{:016x}",
            std::process::id(),
            fastrand::u64(..) ^ (std::process::id() as u64).rotate_left(40)
        );
        let client = connect_client(&settings, &node).await?;
        let info = client.server_info();
        if let Some(problem) = server_version::version_problem(&info.server_name, &info.version) {
            tracing::warn!(node, "{problem}");
        }
        let max_payload = info.max_payload;
        let jetstream = jetstream::new(client);
        let leases = patiently("the lease bucket", || {
            lease_bucket(&jetstream, settings.replicas)
        })
        .await?;
        tracing::info!(node, servers = %settings.servers.join(", "), "joined the JetStream cluster");
        Ok(Self {
            settings,
            jetstream,
            leases,
            node,
            max_payload,
        })
    }

    /// The JetStream stream of delivery stream `name`, created when missing; returns it with
    /// the seed its batch names derive from (the same on every node, new if the JetStream
    /// stream is ever created again, so old names are never reused for other records).
    /// Retried for up to [`SETUP_PATIENCE`] while the cluster does not answer (a server is
    /// restarting, a leader being elected).
    pub async fn stream(&self, name: &str) -> Result<(stream::Stream, u64), ClusterError> {
        patiently(name, || self.try_stream(name)).await
    }

    async fn try_stream(&self, name: &str) -> Result<(stream::Stream, u64), ClusterError> {
        let config = stream::Config {
            name: stream_name(name),
            subjects: vec![format!("hydrant.{name}.*")],
            num_replicas: self.settings.replicas,
            max_bytes: self.settings.max_bytes as i64,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let setup_error = |error: String| ClusterError::Setup {
            what: format!("stream {} (delivery stream `{name}`)", config.name),
            reason: error,
        };
        let mut stream = self
            .jetstream
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let created = info.created.unix_timestamp_nanos();
        let seed = seed_of(&format!("{name}/{created}"));
        Ok((stream, seed))
    }
}

/// Runs `setup` (of `what`) until it succeeds or [`SETUP_PATIENCE`] has passed, while the
/// cluster does not answer (a server restarting, a leader being elected).
async fn patiently<T, F, Fut>(what: &str, mut setup: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        match setup().await {
            Ok(done) => return Ok(done),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(what, "{error}; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// A client of the servers of `settings`, named after `node`.
pub async fn connect_client(
    settings: &ClusterSettings,
    node: &str,
) -> Result<async_nats::Client, ClusterError> {
    connect_client_with(settings, node, async_nats::ConnectOptions::new()).await
}

/// Like [`connect_client`], starting from `options` (an event callback, for one).
async fn connect_client_with(
    settings: &ClusterSettings,
    node: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ClusterError> {
    let connect_error = |reason: String| ClusterError::Connect {
        servers: settings.servers.join(", "),
        reason,
    };
    // The NATS client's TLS takes the process's default crypto provider: ring, as the
    // listener's (a no-op when one is already installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = options
        .name(format!("hydrant {node}"))
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    if let Some(credentials) = &settings.credentials {
        options = options
            .credentials_file(credentials)
            .await
            .map_err(|error| {
                connect_error(format!(
                    "cannot read the credentials file {}: {error}",
                    credentials.display()
                ))
            })?;
    }
    if let Some(ca) = &settings.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.client_certificate {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let addresses = settings
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| connect_error(error.to_string()))?;
    options
        .connect(addresses)
        .await
        .map_err(|error| connect_error(error.to_string()))
}

/// The JetStream stream name of delivery stream `name`.
pub fn stream_name(name: &str) -> String {
    format!("hydrant-{name}")
}

/// A stable 64-bit seed of `text`.
fn seed_of(text: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The lease bucket, created as a key-value bucket's stream when missing (created directly:
/// older servers' account replies are not understood by the client's bucket creation).
async fn lease_bucket(
    jetstream: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let setup_error = |reason: String| ClusterError::Setup {
        what: format!("key-value bucket {LEASE_BUCKET}"),
        reason,
    };
    let config = stream::Config {
        name: format!("KV_{LEASE_BUCKET}"),
        subjects: vec![format!("$KV.{LEASE_BUCKET}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| setup_error(e.to_string()))?;
    jetstream
        .get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| setup_error(e.to_string()))
}
