//! The running delivery streams: one buffer and one delivery loop per configured stream
//! ([`stream`], built by [`factory`]), changed while running by a reload ([`reload`]).

mod factory;
mod reload;
mod stream;

#[cfg(test)]
pub(crate) use factory::feed_from_spool;
pub use factory::processor_settings;
pub use reload::{Fingerprints, ReloadError, ReloadReport, load_with_fingerprints};
pub use stream::{Accepted, Admission, DeliveryStream, RecordIds, StreamSummary};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hydrant_sinks::prelude::*;
use tokio::task::JoinHandle;

use crate::buffer::IngestCapacity;
use crate::config::{Config, FsyncConfig};
use crate::spool::{FsyncPolicy, SpoolError};

use factory::{StreamFactory, load_processors};

const MIB: usize = 1024 * 1024;

/// Uncompressed bytes allowed to wait for the compression pool across all streams, on top of
/// one chunk per stream.
const COMPRESSION_BUDGET_BASE: usize = 8 * MIB;

pub use crate::config::DestinationSummary;

/// All streams of a running service, and the delivery tasks behind them. The set changes
/// only by [`Pipeline::reload`]; readers take a snapshot.
pub struct Pipeline {
    running: std::sync::RwLock<Arc<StreamSet>>,
    /// What building a stream needs and the running streams' tasks; held for the whole of a
    /// reload (or the drain), so those run one at a time.
    factory: tokio::sync::Mutex<StreamFactory>,
    /// How long a put waits for buffer space.
    pub backpressure_wait: Duration,
}

/// A stream that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Its destination.
    #[error("stream `{stream}`: cannot set up its destination: {error}")]
    Destination {
        /// The stream.
        stream: String,
        /// Why.
        error: SinkError,
    },
    /// Its spool.
    #[error("stream `{stream}`: cannot open its spool: {error}")]
    Spool {
        /// The stream.
        stream: String,
        /// Why.
        error: SpoolError,
    },
    /// Its Parquet settings.
    #[error("stream `{stream}`: invalid Parquet settings: {reason}")]
    Parquet {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Its dynamic partitioning.
    #[error("stream `{stream}`: invalid dynamic partitioning: {reason}")]
    Partitioning {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Its JetStream stream.
    #[error("stream `{stream}`: {error}")]
    Cluster {
        /// The stream.
        stream: String,
        /// Why.
        error: crate::cluster::ClusterError,
    },
    /// The JetStream cluster as a whole.
    #[error("{0}")]
    Join(crate::cluster::ClusterError),
    /// One of its processors.
    #[error("stream `{stream}`: {error}")]
    Transform {
        /// The stream.
        stream: String,
        /// Why (naming the module file).
        error: crate::transform::LoadError,
    },
}

/// The streams taking records now.
#[derive(Default)]
struct StreamSet {
    by_name: HashMap<String, Arc<DeliveryStream>>,
    sorted_names: Vec<String>,
}

impl StreamSet {
    fn new(by_name: HashMap<String, Arc<DeliveryStream>>) -> Self {
        let mut sorted_names: Vec<String> = by_name.keys().cloned().collect();
        sorted_names.sort();
        Self {
            by_name,
            sorted_names,
        }
    }
}

impl Pipeline {
    /// Builds every stream of `config` (whose file's parts are `fingerprints`, see
    /// [`reload::load_with_fingerprints`]) and starts its delivery loop. Relative local
    /// paths are taken relative to `base_dir` (the configuration file's directory).
    pub async fn start(
        config: &Config,
        fingerprints: Fingerprints,
        base_dir: &Path,
    ) -> Result<Self, PipelineError> {
        let stream_count = config.streams.0.len();
        let mut factory = StreamFactory {
            base_dir: base_dir.to_path_buf(),
            spool_root: base_dir.join(&config.spool.path.value),
            fsync: match config.spool.fsync {
                FsyncConfig::Always => Some(FsyncPolicy::Always),
                FsyncConfig::IntervalMs(ms) => {
                    Some(FsyncPolicy::Interval(Duration::from_millis(ms)))
                }
                FsyncConfig::Disabled => None,
            },
            spool_max_bytes: config.spool.max_mib.value * MIB as u64,
            spool_keys: config.spool.encryption.as_ref().and_then(|e| e.keys().ok()),
            capacity: Arc::new(IngestCapacity::new(
                COMPRESSION_BUDGET_BASE + stream_count * MIB,
            )),
            tasks: HashMap::new(),
            retired: Vec::new(),
            fingerprints,
            cluster: match &config.spool.jetstream {
                Some(jetstream) => {
                    let settings = crate::cluster::ClusterSettings::new(
                        jetstream,
                        config.spool.max_mib.value * MIB as u64,
                        base_dir,
                    );
                    let cluster = crate::cluster::Cluster::connect(settings)
                        .await
                        .map_err(PipelineError::Join)?;
                    let members = crate::cluster::members::Members::start(&cluster);
                    Some(factory::ClusterNode { cluster, members })
                }
                None => None,
            },
        };
        let mut streams = HashMap::new();
        for (name, stream_config) in config.streams.iter() {
            let name = name.value.clone();
            let prepared = factory.prepare(&name, stream_config, None).await?;
            let stream = factory.launch(&name, stream_config, prepared, None);
            streams.insert(name, stream);
        }
        if factory.fsync.is_some() && factory.cluster.is_none() {
            warn_about_orphaned_spools(&factory.spool_root, &streams);
        }
        Ok(Self {
            running: std::sync::RwLock::new(Arc::new(StreamSet::new(streams))),
            factory: tokio::sync::Mutex::new(factory),
            backpressure_wait: Duration::from_millis(config.server.backpressure_wait_ms),
        })
    }

    fn snapshot(&self) -> Arc<StreamSet> {
        Arc::clone(&self.running.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<Arc<DeliveryStream>> {
        self.snapshot().by_name.get(name).cloned()
    }

    /// Every stream, in no particular order.
    pub fn streams(&self) -> Vec<Arc<DeliveryStream>> {
        self.snapshot().by_name.values().cloned().collect()
    }

    /// Stream names in lexical order, as `ListDeliveryStreams` returns them.
    pub fn sorted_names(&self) -> Vec<String> {
        self.snapshot().sorted_names.clone()
    }

    /// Records accepted but not yet delivered, over all streams.
    pub fn undelivered_records(&self) -> u64 {
        self.streams().iter().map(|s| s.undelivered()).sum()
    }

    /// Whether accepted records are kept in a spool (and so survive an early exit).
    pub fn is_spooled(&self) -> bool {
        self.streams().iter().any(|s| s.spool.is_some())
    }

    /// Stops taking records and waits until everything accepted has been delivered.
    pub async fn drain(&self) {
        let mut factory = self.factory.lock().await;
        for tasks in factory.tasks.values_mut() {
            tasks.stop_sources().await;
        }
        for stream in self.streams() {
            stream.stop_taking().await;
        }
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut factory.retired)
            .into_iter()
            .map(|(_, task)| task)
            .collect();
        for (_, stream_tasks) in factory.tasks.drain() {
            tasks.extend(stream_tasks.into_handles());
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some(node) = &factory.cluster {
            node.members.leave(&node.cluster).await;
        }
    }
}

/// Spool directories of streams no longer configured may still hold accepted records: say
/// so at every start, so they are never dropped without a trace.
fn warn_about_orphaned_spools(root: &Path, streams: &HashMap<String, Arc<DeliveryStream>>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if streams.contains_key(&name) || !entry.path().is_dir() {
            continue;
        }
        let spooled: u64 = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|e| e == "seg"))
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        if spooled > 0 {
            tracing::warn!(
                stream = %name,
                spool = %entry.path().display(),
                spooled_bytes = spooled,
                "the spool holds records of a stream that is no longer configured; add the \
                 stream back to deliver them, or delete the directory to discard them"
            );
        }
    }
}

/// Reaches every destination behind the seam (connects to a table and checks its columns,
/// asks a search cluster who it is, finds an HTTP endpoint), and loads every transform
/// module; one line per problem (what `hydrant validate` reports). Paths are relative to `base_dir`, the configuration file's
/// directory.
pub async fn check_destinations(config: &Config, base_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, stream) in config.streams.iter() {
        let checked = match stream.destination.seam(base_dir, &name.value, 0).await {
            Some(Ok(seam)) => seam.destination.check_any().await.map(drop),
            Some(Err(error)) => Err(error),
            None => Ok(()),
        };
        if let Err(error) = checked {
            problems.push(format!("stream `{}`: {error}", name.value));
        }
        if let Err(error) = load_processors(&name.value, stream, base_dir) {
            problems.push(format!("stream `{}`: {error}", name.value));
        }
    }
    problems
}
