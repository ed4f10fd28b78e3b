//! Building a stream: preparing what can fail (spool, destination, transforms, partitioning
//! query), then putting the buffer and delivery loop together and starting their tasks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hydrant_sinks::prelude::*;
use tokio::task::JoinHandle;

use crate::buffer::{BufferSettings, IngestCapacity, StreamBuffer};
use crate::cluster::lease::PartitionState;
use crate::cluster::members::Members;
use crate::cluster::{
    Cluster, PartitionLauncher, PartitionLog, PartitionRun, StreamAssignment, StreamLog,
};
use crate::config::{
    OnLimitConfig, PartitioningConfig, ProcessorConfig, SeamDestination, StreamConfig,
};
use crate::deliver::{
    DeliveryLoop, OnLimit, PartitionSettings, ReplayPlan, StopSignal, WINDOW_INTERVAL, WINDOW_SIZE,
};
use crate::metrics::StreamMetrics;
use crate::spool::{FsyncPolicy, SpoolSettings, StreamSpool};
use crate::transform::{LoadError, ProcessorChain, ProcessorSettings};
use hydrant_sinks::object::{KeyTemplate, ObjectKeyBuilder};
use hydrant_sinks::partition::Partitioner;

use super::stream::RecordIds;
use super::{DeliveryStream, Fingerprints, StreamSummary};
use super::{MIB, PipelineError};

/// Chunk size of a partitioned stream without transforms.
const PARTITIONED_CHUNK: usize = 4 * MIB;

/// The tasks of one running stream.
#[derive(Default)]
pub(super) struct StreamTasks {
    /// Moves spooled records into the buffer (spooled streams only).
    pub(super) feeder: Option<JoinHandle<()>>,
    /// The delivery loop.
    pub(super) delivery: Option<JoinHandle<()>>,
    /// Asks the delivery loop to stop after what it is writing.
    pub(super) stop: Option<tokio::sync::watch::Sender<bool>>,
    /// Checks the destination once at start (logs only).
    pub(super) announce: Option<JoinHandle<()>>,
    /// Reads the stream's file sources.
    pub(super) sources: Option<crate::source::SourceTasks>,
}

/// Builds streams: the settings every stream shares, and the tasks of those running.
pub(super) struct StreamFactory {
    pub(super) base_dir: std::path::PathBuf,
    pub(super) spool_root: std::path::PathBuf,
    pub(super) fsync: Option<FsyncPolicy>,
    pub(super) spool_max_bytes: u64,
    pub(super) spool_keys: Option<crate::spool::SpoolKeys>,
    pub(super) capacity: Arc<IngestCapacity>,
    pub(super) tasks: HashMap<String, StreamTasks>,
    /// Tasks of removed streams and of stopped loops without a spool, which drain on
    /// their own, by stream name.
    pub(super) retired: Vec<(String, JoinHandle<()>)>,
    /// Each running stream's settings as the file gave them, to tell which changed.
    pub(super) fingerprints: Fingerprints,
    /// This node's place in a JetStream cluster (`spool.jetstream`), which then keeps every
    /// stream's records instead of the local spool.
    pub(super) cluster: Option<ClusterNode>,
}

/// A node's connection to its cluster and its view of the other nodes.
pub(super) struct ClusterNode {
    pub(super) cluster: Cluster,
    pub(super) members: Arc<Members>,
}

impl StreamTasks {
    /// Stops the stream's sources and waits until what they read is queued: done before
    /// the spool closes or is handed to a new stream, so no two readers share a file.
    pub(super) async fn stop_sources(&mut self) {
        if let Some(sources) = self.sources.take() {
            sources.stop().await;
        }
    }

    pub(super) fn into_handles(self) -> impl Iterator<Item = JoinHandle<()>> {
        [self.feeder, self.delivery, self.announce]
            .into_iter()
            .flatten()
    }
}

impl StreamFactory {
    /// Everything stream `name` needs that can fail — its spool (`spool`, when it is already
    /// open), destination, transforms and partitioning query — so a stream that cannot be
    /// built stops start-up, or refuses a reload, before anything running changes.
    pub(super) async fn prepare(
        &self,
        name: &str,
        stream_config: &StreamConfig,
        spool: Option<Arc<StreamSpool>>,
    ) -> Result<Prepared, PipelineError> {
        let base_dir = self.base_dir.as_path();
        let sink = stream_config
            .destination
            .object_sink(base_dir)
            .map_err(|error| PipelineError::Destination {
                stream: name.to_string(),
                error,
            })?;
        let cluster_stream =
            match &self.cluster {
                Some(node) => Some(node.cluster.stream(name).await.map_err(|error| {
                    PipelineError::Cluster {
                        stream: name.to_string(),
                        error,
                    }
                })?),
                None => None,
            };
        let spool = match (spool, self.fsync) {
            _ if cluster_stream.is_some() => None,
            (Some(spool), _) => Some(spool),
            (None, None) => None,
            (None, Some(fsync)) => Some(
                StreamSpool::open(SpoolSettings {
                    dir: self.spool_root.join(name),
                    fsync,
                    max_bytes: self.spool_max_bytes,
                    keys: self.spool_keys.clone(),
                })
                .map_err(|error| PipelineError::Spool {
                    stream: name.to_string(),
                    error,
                })?,
            ),
        };
        // The first half of record ids (and so of deterministic document ids); on a cluster
        // the stream's seed, the same on every node.
        let run = match (&cluster_stream, &spool) {
            (Some((_, seed)), _) => *seed,
            (None, Some(spool)) => spool.incarnation(),
            (None, None) => fastrand::u64(..),
        };
        let seam = match stream_config.destination.seam(base_dir, name, run).await {
            Some(seam) => seam.map_err(|error| PipelineError::Destination {
                stream: name.to_string(),
                error,
            })?,
            None => stream_config
                .object_seam(
                    name,
                    Arc::clone(&sink),
                    spool.is_some() || cluster_stream.is_some(),
                )
                .map_err(|reason| PipelineError::Parquet {
                    stream: name.to_string(),
                    reason,
                })?,
        };
        let processors = load_processors(name, stream_config, base_dir).map_err(|error| {
            PipelineError::Transform {
                stream: name.to_string(),
                error,
            }
        })?;
        let partitioning = stream_config
            .partitioner()
            .map_err(|reason| PipelineError::Partitioning {
                stream: name.to_string(),
                reason,
            })?
            .map(Arc::new);
        Ok(Prepared {
            sink,
            spool,
            cluster_stream,
            delivered: Delivered {
                seam,
                run,
                processors,
                partitioning,
            },
        })
    }

    /// Builds stream `name` from `prepared` and starts its tasks; `earlier` is the stream
    /// it replaces, whose tasks have stopped.
    pub(super) fn launch(
        &mut self,
        name: &str,
        stream_config: &StreamConfig,
        prepared: Prepared,
        earlier: Option<&DeliveryStream>,
    ) -> Arc<DeliveryStream> {
        let mut tasks = StreamTasks::default();
        let destination = &prepared.delivered.seam.destination;
        if destination.checks_before_use() {
            tasks.announce = Some(tokio::spawn(announce_destination(
                name.to_string(),
                Arc::clone(destination),
            )));
        }
        let (raise, stop) = StopSignal::new();
        let cluster_stream = prepared.cluster_stream.clone();
        let cluster_log = self
            .cluster
            .as_ref()
            .map(|node| Arc::new(StreamLog::new(&node.cluster, name, fastrand::u64(..))));
        let (stream, delivery) = build_stream(
            name,
            stream_config,
            prepared,
            Arc::clone(&self.capacity),
            earlier,
            stop,
            cluster_log,
        );
        if let (Some(node), Some((js_stream, seed)), Some(log)) =
            (&self.cluster, cluster_stream, &stream.cluster_log)
        {
            let assignment = StreamAssignment {
                stream_name: name.to_string(),
                cluster: node.cluster.clone(),
                members: Arc::clone(&node.members),
                stream: js_stream,
                seed,
                launcher: Arc::new(ClusterLauncher { template: delivery }),
                status: Arc::clone(&log.status),
            };
            let restart = raise.subscribe();
            tasks.delivery = Some(tokio::spawn(assignment.run(log.closed(), restart)));
            tasks.stop = Some(raise);
            self.tasks.insert(name.to_string(), tasks);
            return Arc::new(stream);
        }
        if let Some(spool) = &stream.spool
            && !stream_config.sources.is_empty()
        {
            let sources = stream_config
                .sources
                .iter()
                .map(|crate::config::SourceConfig::File(file)| {
                    crate::source::FileSourceSettings::new(file, &self.base_dir)
                })
                .collect();
            tasks.sources = Some(crate::source::SourceTasks::start(
                name,
                sources,
                spool,
                &stream.counters,
                &stream.refusals,
            ));
        }
        if let Some(spool) = &stream.spool {
            tasks.feeder = Some(tokio::spawn(feed_from_spool(
                name.to_string(),
                Arc::clone(spool),
                Arc::clone(&stream.buffer),
            )));
        }
        tasks.delivery = Some(tokio::spawn(delivery.run()));
        tasks.stop = Some(raise);
        self.tasks.insert(name.to_string(), tasks);
        Arc::new(stream)
    }
}

/// Starts the delivery of a cluster stream's partition: a buffer and delivery loop like the
/// stream's own, journaling in the partition's lease.
struct ClusterLauncher {
    template: DeliveryLoop,
}

impl PartitionLauncher for ClusterLauncher {
    fn launch(&self, log: Arc<PartitionLog>, state: PartitionState) -> PartitionRun {
        let buffer = Arc::new(self.template.buffer.sibling());
        // With dynamic partitioning, the batches the lease journaled are rebuilt or
        // skipped; otherwise the one batch it recorded is written again.
        let partitioned = self.template.partitions.as_ref().map(|settings| {
            let (sealed, delivered) = state.journaled_parts();
            settings.with_replay(ReplayPlan::new(sealed, delivered))
        });
        let windows = match &partitioned {
            Some(settings) => settings.replay.windows(state.next),
            None => state
                .cut
                .map(|[first, last]| crate::spool::SeqRange { first, last })
                .into_iter()
                .collect(),
        };
        buffer.resume(state.next, windows);
        let (stop, signal) = StopSignal::new();
        let delivery =
            self.template
                .for_partition(Arc::clone(&buffer), Arc::clone(&log), signal, partitioned);
        let (draining, draining_seen) = tokio::sync::watch::channel(false);
        let feeder = tokio::spawn(log.feed(
            Arc::clone(&buffer),
            state.next,
            stop.subscribe(),
            draining_seen,
        ));
        PartitionRun {
            stop,
            buffer,
            feeder,
            draining,
            delivery: tokio::spawn(delivery.run()),
        }
    }
}

/// Moves records from a stream's spool into its buffer, in order, as they become durable;
/// closes the buffer once the spool is closed and read to its end.
pub(crate) async fn feed_from_spool(
    stream: String,
    spool: Arc<StreamSpool>,
    buffer: Arc<StreamBuffer>,
) {
    let mut reader = spool.delivery_reader();
    loop {
        match reader.read(1 << 20).await {
            Ok(Some(chunk)) => {
                if buffer.append_spooled(&chunk).await < chunk.len() {
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => {
                tracing::error!(
                    stream = %stream,
                    next_seq = reader.next_seq(),
                    "cannot read the spool; delivery of this stream stops here: {error}"
                );
                break;
            }
        }
    }
    buffer.close();
}

/// Says at start-up whether a stream's destination answers (it is not required to: records
/// are retried until it does).
async fn announce_destination(stream: String, destination: Arc<dyn AnyDestination>) {
    match destination.check_any().await {
        Ok(answer) => tracing::info!(
            stream,
            destination = destination.describe(),
            answer,
            "destination answers"
        ),
        Err(error) => tracing::warn!(
            stream,
            "{error}; records will be sent once it answers (retried for retry_duration_seconds)"
        ),
    }
}

/// Where a stream's batches go, and its record id prefix.
/// What a stream is built from, prepared (and checked) before anything running changes.
pub(super) struct Prepared {
    sink: Arc<dyn ObjectSink>,
    pub(super) spool: Option<Arc<StreamSpool>>,
    /// On a cluster: the stream's JetStream stream and its seed.
    cluster_stream: Option<(async_nats::jetstream::stream::Stream, u64)>,
    delivered: Delivered,
}

struct Delivered {
    seam: SeamDestination,
    run: u64,
    processors: Option<Arc<ProcessorChain>>,
    partitioning: Option<Arc<Partitioner>>,
}

/// The processor settings of a stream (module paths relative to `base_dir`), in order.
pub fn processor_settings(config: &StreamConfig, base_dir: &Path) -> Vec<ProcessorSettings> {
    config
        .processors
        .iter()
        .map(|ProcessorConfig::Wasm(wasm)| ProcessorSettings {
            module: base_dir.join(&wasm.module.value),
            config: wasm
                .config
                .as_ref()
                .map_or_else(|| "{}".to_string(), |c| c.to_string()),
            timeout: Duration::from_millis(wasm.timeout_ms.value),
            max_memory_bytes: wasm.max_memory_mib.value as usize * MIB,
            retries: wasm.retries.value,
        })
        .collect()
}

/// Loads a stream's processors (`None` when it has none).
pub(super) fn load_processors(
    name: &str,
    config: &StreamConfig,
    base_dir: &Path,
) -> Result<Option<Arc<ProcessorChain>>, LoadError> {
    if config.processors.is_empty() {
        return Ok(None);
    }
    let chain = crate::transform::load_chain(name, processor_settings(config, base_dir))?;
    Ok(Some(Arc::new(chain)))
}

/// Puts a stream together from its prepared parts: a new stream, or (`earlier`) the same
/// stream restarted with new settings, keeping its totals, health and spool.
fn build_stream(
    name: &str,
    config: &StreamConfig,
    prepared: Prepared,
    capacity: Arc<IngestCapacity>,
    earlier: Option<&DeliveryStream>,
    stop: StopSignal,
    cluster_log: Option<Arc<StreamLog>>,
) -> (DeliveryStream, DeliveryLoop) {
    let Prepared {
        sink,
        spool,
        delivered,
        ..
    } = prepared;
    let codec = config.codec();
    // A transform's batch is a chunk: as large as the smallest processor buffer.
    let chunk_limit = config
        .processors
        .iter()
        .map(|ProcessorConfig::Wasm(wasm)| (wasm.buffer_size_mib.value * MIB as f64) as usize)
        .min();
    let size_limit = config.buffer.size_mib.value as usize * MIB;
    let interval = Duration::from_secs(config.buffer.interval_seconds.value.into());
    let partitioned = delivered.partitioning.is_some();
    // A partitioned stream's buffer only forms windows to split; each partition buffers on
    // its own.
    let (window_size, window_interval) = if partitioned {
        (size_limit.min(WINDOW_SIZE), interval.min(WINDOW_INTERVAL))
    } else {
        (size_limit, interval)
    };
    let settings = BufferSettings {
        size_limit: window_size,
        interval: window_interval,
        destination: Arc::clone(&delivered.seam.destination),
        processors: delivered.processors.clone(),
        partitioner: delivered.partitioning,
        // A partitioned chunk is split into one piece per partition: larger chunks make
        // fewer, larger pieces.
        chunk_limit: chunk_limit.or(partitioned.then_some(PARTITIONED_CHUNK)),
        faults: None,
    };
    let buffer = Arc::new(StreamBuffer::new(settings, capacity));
    let partition_settings = |partitioning: &PartitioningConfig, replay| PartitionSettings {
        size_limit,
        interval,
        max_active: partitioning.max_active_partitions.value as usize,
        on_limit: match partitioning.on_limit.value {
            OnLimitConfig::ErrorOutput => OnLimit::ErrorOutput,
            OnLimitConfig::Backpressure => OnLimit::Backpressure,
        },
        max_buffered: partitioning.max_buffered_mib.value as usize * MIB,
        replay,
    };
    let partitions = match (&spool, &config.partitioning) {
        (Some(spool), Some(partitioning)) if partitioned => {
            let (sealed, delivered) = spool.parts();
            let replay = ReplayPlan::new(sealed, delivered);
            let resume = spool.resume_seq();
            buffer.resume(resume, replay.windows(resume));
            Some(partition_settings(partitioning, replay))
        }
        (Some(spool), _) => {
            buffer.resume(spool.resume_seq(), spool.pending_sealed());
            None
        }
        // On a cluster, each partition's run replays what its lease journaled.
        (None, Some(partitioning)) if partitioned => {
            Some(partition_settings(partitioning, ReplayPlan::default()))
        }
        (None, _) => None,
    };
    let (counters, health) = match earlier {
        Some(earlier) => (Arc::clone(&earlier.counters), Arc::clone(&earlier.health)),
        None => Default::default(),
    };
    let metrics = StreamMetrics::new(name, config.destination.kind());
    let layout = config.destination.layout();
    let template = config
        .key_template()
        .expect("prefixes are validated when the configuration is loaded");
    let error_template = KeyTemplate::parse_error_prefix(&layout.error_output_prefix.value)
        .expect("error output prefixes are validated when the configuration is loaded");
    let error_keys = ObjectKeyBuilder::new(name, error_template, "");
    let refusals = Arc::new(crate::deliver::SourceRefusals {
        stream: name.to_string(),
        sink: Arc::clone(&sink),
        keys: error_keys.clone(),
        initial_backoff: layout.initial_backoff,
        max_backoff: layout.max_backoff,
        counters: Arc::clone(&counters),
        incarnation: delivered.run,
    });
    let delivery = DeliveryLoop {
        stream: name.to_string(),
        buffer: Arc::clone(&buffer),
        sink,
        keys: ObjectKeyBuilder::new(name, template, codec.extension()),
        error_keys,
        retry_duration: Duration::from_secs(layout.retry_duration.value),
        initial_backoff: layout.initial_backoff,
        max_backoff: layout.max_backoff,
        counters: Arc::clone(&counters),
        health: Arc::clone(&health),
        spool: spool.clone().map(crate::deliver::DurableLog::Spool),
        seam: delivered.seam,
        run: delivered.run,
        partitions,
        stop,
    };
    let summary = StreamSummary {
        destination: config.destination.summary(),
        prefix: layout.prefix.value.clone(),
        size_mib: config.buffer.size_mib.value,
        interval_seconds: config.buffer.interval_seconds.value,
        compression_format: codec.format_name(),
    };
    let stream = DeliveryStream {
        name: name.to_string(),
        buffer,
        counters,
        health,
        summary,
        created: earlier.map_or_else(Utc::now, |earlier| earlier.created),
        record_ids: RecordIds::new(cluster_log.as_ref().map_or(delivered.run, |log| log.run())),
        spool,
        cluster_log,
        metrics,
        refusals,
    };
    (stream, delivery)
}
