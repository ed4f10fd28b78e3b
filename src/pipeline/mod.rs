//! The running delivery streams: one buffer and one delivery loop per configured stream,
//! changed while running by a reload ([`reload`]).

mod reload;

pub use reload::{Fingerprints, ReloadError, ReloadReport, load_with_fingerprints};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;
use tokio::task::JoinHandle;

use crate::buffer::{BufferSettings, IngestCapacity, StreamBuffer};
use crate::config::ProcessorConfig;
use crate::config::{Config, FsyncConfig, OnLimitConfig, SeamDestination, StreamConfig};
use crate::deliver::{
    DeliveryCounters, DeliveryHealth, DeliveryLoop, OnLimit, PartitionSettings, ReplayPlan,
    StopSignal, WINDOW_INTERVAL, WINDOW_SIZE,
};
use crate::metrics::StreamMetrics;
use crate::spool::{FsyncPolicy, SpoolError, SpoolSettings, StreamSpool};
use crate::transform::{LoadError, ProcessorChain, ProcessorSettings};
use hydrant_sinks::object::{KeyTemplate, ObjectKeyBuilder};
use hydrant_sinks::partition::Partitioner;

const MIB: usize = 1024 * 1024;

/// Uncompressed bytes allowed to wait for the compression pool across all streams, on top of
/// one chunk per stream.
const COMPRESSION_BUDGET_BASE: usize = 8 * MIB;

/// Chunk size of a partitioned stream without transforms.
const PARTITIONED_CHUNK: usize = 4 * MIB;

pub use crate::config::DestinationSummary;

/// A configured stream's settings as the control-plane API reports them.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    /// Destination.
    pub destination: DestinationSummary,
    /// Key prefix template.
    pub prefix: String,
    /// Size threshold in MiB.
    pub size_mib: u32,
    /// Age threshold in seconds.
    pub interval_seconds: u32,
    /// `GZIP` or `UNCOMPRESSED`, Firehose's names.
    pub compression_format: &'static str,
}

/// Hands out Firehose-style record ids: unique per process run and stream, increasing.
#[derive(Debug)]
pub struct RecordIds {
    run: u64,
}

impl RecordIds {
    /// Ids whose first half is `run`: the spool's incarnation, or a random number per
    /// process run without a spool.
    fn new(run: u64) -> Self {
        Self { run }
    }

    /// Writes the id of sequence number `seq` (32 hex digits) into `out`.
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for value in [self.run, seq] {
            for shift in (0..16).rev() {
                out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
            }
        }
    }
}

/// Records a put got into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Sequence number (and so record id) of the first accepted record.
    pub first_seq: u64,
    /// How many records, a prefix of those offered, were accepted.
    pub count: usize,
}

/// Records admitted into a stream, to be acknowledged once [`durable`](Self::durable).
#[derive(Debug)]
pub struct Admission {
    accepted: Accepted,
    pending: Vec<crate::spool::Enqueued>,
}

impl Admission {
    /// Waits until the admitted records are durable; returns them.
    pub async fn durable(self) -> Result<Accepted, SpoolError> {
        for enqueued in self.pending {
            enqueued.durable().await?;
        }
        Ok(self.accepted)
    }
}

/// One running delivery stream.
#[derive(Debug)]
pub struct DeliveryStream {
    /// Name producers use.
    pub name: String,
    /// Records waiting for delivery.
    pub buffer: Arc<StreamBuffer>,
    /// Delivery totals.
    pub counters: Arc<DeliveryCounters>,
    /// How its deliveries are going.
    pub health: Arc<DeliveryHealth>,
    /// Configured settings, for the control plane.
    pub summary: StreamSummary,
    /// When this process created the stream.
    pub created: DateTime<Utc>,
    /// Record id source.
    pub record_ids: RecordIds,
    /// The stream's spool; `None` when records are held in memory only.
    pub spool: Option<Arc<StreamSpool>>,
    /// Prometheus metrics.
    pub metrics: StreamMetrics,
}

impl DeliveryStream {
    /// Takes `records` (all arriving at `arrival_ms`): into the spool, or straight into the
    /// buffer without a spool. Waits up to `wait` for space when full. Returns the accepted
    /// prefix as an [`Admission`], which the caller awaits (after dropping its copy of the
    /// records, so memory is not held while waiting for the disk) before acknowledging.
    ///
    /// Records are counted as accepted as soon as they are taken, even when the put is
    /// abandoned (its client went away) while it waits for space for the rest: those records
    /// are delivered like any other.
    pub async fn admit(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        wait: Duration,
    ) -> Result<Admission, SpoolError> {
        let mut count = AdmissionCount {
            stream: &self.name,
            counters: &self.counters,
            records,
            offered: records.len(),
            taken: 0,
            finished: false,
        };
        let admission = self
            .admit_inner(records, arrival_ms, wait, &mut count.taken)
            .await;
        count.finished = true;
        admission
    }

    async fn admit_inner(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        wait: Duration,
        taken: &mut usize,
    ) -> Result<Admission, SpoolError> {
        let admission = match &self.spool {
            None => {
                let first_seq = self
                    .buffer
                    .append_counted(records, arrival_ms, wait, taken)
                    .await;
                Admission {
                    accepted: Accepted {
                        first_seq,
                        count: *taken,
                    },
                    pending: Vec::new(),
                }
            }
            Some(spool) => {
                let deadline = tokio::time::Instant::now() + wait;
                let mut first_seq = None;
                let mut pending = Vec::new();
                loop {
                    let freed = spool.space_freed();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    let enqueued = spool.enqueue(&records[*taken..], arrival_ms)?;
                    first_seq.get_or_insert(enqueued.appended.first_seq);
                    *taken += enqueued.appended.accepted;
                    pending.push(enqueued);
                    if *taken == records.len()
                        || tokio::time::timeout_at(deadline, freed).await.is_err()
                    {
                        break;
                    }
                }
                Admission {
                    accepted: Accepted {
                        first_seq: first_seq.unwrap_or(0),
                        count: *taken,
                    },
                    pending,
                }
            }
        };
        Ok(admission)
    }

    /// Publishes this stream's totals to its Prometheus metrics.
    pub fn publish_metrics(&self) {
        let spool_bytes = self.spool.as_ref().map_or(0, |s| s.disk_bytes());
        self.metrics.publish(
            &self.counters,
            self.undelivered(),
            spool_bytes,
            self.data_freshness_seconds(),
        );
    }

    /// Age in seconds of the oldest record accepted but not yet delivered (0 when none
    /// waits): Firehose's DataFreshness. Known for spooled streams; 0 without a spool.
    pub fn data_freshness_seconds(&self) -> f64 {
        self.spool.as_ref().map_or(0.0, |spool| {
            spool.data_freshness_ms(Utc::now().timestamp_millis()) as f64 / 1000.0
        })
    }

    /// Records accepted but not yet delivered.
    pub fn undelivered(&self) -> u64 {
        match &self.spool {
            Some(spool) => spool.undelivered(),
            None => {
                self.buffer.buffered_records()
                    + self.counters.in_flight_records.load(Ordering::Relaxed)
            }
        }
    }
}

/// Counts a put's records into the stream's totals when the put ends, however it ends:
/// answered, failed, or dropped while waiting for space because its client went away.
struct AdmissionCount<'a> {
    stream: &'a str,
    counters: &'a DeliveryCounters,
    /// The records offered.
    records: &'a [&'a [u8]],
    offered: usize,
    /// Records taken into the spool (or buffer) so far.
    taken: usize,
    /// Whether the put got as far as an answer.
    finished: bool,
}

impl Drop for AdmissionCount<'_> {
    fn drop(&mut self) {
        self.counters
            .accepted
            .fetch_add(self.taken as u64, Ordering::Relaxed);
        let bytes: usize = self.records[..self.taken].iter().map(|r| r.len()).sum();
        self.counters
            .accepted_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if self.finished && self.taken > 0 {
            self.counters.put_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.counters
            .refused
            .fetch_add((self.offered - self.taken) as u64, Ordering::Relaxed);
        if !self.finished {
            tracing::debug!(
                stream = self.stream,
                accepted = self.taken,
                not_taken = self.offered - self.taken,
                "put abandoned while waiting for space (its client went away); the records \
                 already taken will be delivered"
            );
        }
    }
}

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

/// The tasks of one running stream.
#[derive(Default)]
struct StreamTasks {
    /// Moves spooled records into the buffer (spooled streams only).
    feeder: Option<JoinHandle<()>>,
    /// The delivery loop.
    delivery: Option<JoinHandle<()>>,
    /// Asks the delivery loop to stop after what it is writing.
    stop: Option<tokio::sync::watch::Sender<bool>>,
    /// Checks the destination once at start (logs only).
    announce: Option<JoinHandle<()>>,
}

/// Builds streams: the settings every stream shares, and the tasks of those running.
struct StreamFactory {
    base_dir: std::path::PathBuf,
    spool_root: std::path::PathBuf,
    fsync: Option<FsyncPolicy>,
    spool_max_bytes: u64,
    spool_keys: Option<crate::spool::SpoolKeys>,
    capacity: Arc<IngestCapacity>,
    tasks: HashMap<String, StreamTasks>,
    /// Tasks of removed streams and of stopped loops without a spool, which drain on
    /// their own, by stream name.
    retired: Vec<(String, JoinHandle<()>)>,
    /// Each running stream's settings as the file gave them, to tell which changed.
    fingerprints: Fingerprints,
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
        };
        let mut streams = HashMap::new();
        for (name, stream_config) in config.streams.iter() {
            let name = name.value.clone();
            let prepared = factory.prepare(&name, stream_config, None).await?;
            let stream = factory.launch(&name, stream_config, prepared, None);
            streams.insert(name, stream);
        }
        if factory.fsync.is_some() {
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
    }
}

impl DeliveryStream {
    /// Stops taking records: the spool is closed (its feeder reads it to the end, then
    /// closes the buffer), or, without a spool, the buffer; the delivery loop then
    /// delivers what is left and ends.
    async fn stop_taking(&self) {
        match &self.spool {
            Some(spool) => {
                let spool = Arc::clone(spool);
                let _ = tokio::task::spawn_blocking(move || spool.close()).await;
            }
            None => self.buffer.close(),
        }
    }
}

impl StreamTasks {
    fn into_handles(self) -> impl Iterator<Item = JoinHandle<()>> {
        [self.feeder, self.delivery, self.announce]
            .into_iter()
            .flatten()
    }
}

impl StreamFactory {
    /// Everything stream `name` needs that can fail — its spool (`spool`, when it is already
    /// open), destination, transforms and partitioning query — so a stream that cannot be
    /// built stops start-up, or refuses a reload, before anything running changes.
    async fn prepare(
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
        let spool = match (spool, self.fsync) {
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
        // The first half of record ids (and so of deterministic document ids).
        let run = spool
            .as_ref()
            .map_or_else(|| fastrand::u64(..), |s| s.incarnation());
        let seam = match stream_config.destination.seam(base_dir, name, run).await {
            Some(seam) => seam.map_err(|error| PipelineError::Destination {
                stream: name.to_string(),
                error,
            })?,
            None => stream_config
                .object_seam(name, Arc::clone(&sink), spool.is_some())
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
    fn launch(
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
        let (stream, delivery) = build_stream(
            name,
            stream_config,
            prepared,
            Arc::clone(&self.capacity),
            earlier,
            stop,
        );
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
struct Prepared {
    sink: Arc<dyn ObjectSink>,
    spool: Option<Arc<StreamSpool>>,
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
fn load_processors(
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
) -> (DeliveryStream, DeliveryLoop) {
    let Prepared {
        sink,
        spool,
        delivered,
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
    let partitions = match (&spool, &config.partitioning) {
        (Some(spool), Some(partitioning)) if partitioned => {
            let (sealed, delivered) = spool.parts();
            let replay = ReplayPlan::new(sealed, delivered);
            let resume = spool.resume_seq();
            buffer.resume(resume, replay.windows(resume));
            Some(PartitionSettings {
                size_limit,
                interval,
                max_active: partitioning.max_active_partitions.value as usize,
                on_limit: match partitioning.on_limit.value {
                    OnLimitConfig::ErrorOutput => OnLimit::ErrorOutput,
                    OnLimitConfig::Backpressure => OnLimit::Backpressure,
                },
                max_buffered: partitioning.max_buffered_mib.value as usize * MIB,
                replay,
            })
        }
        (Some(spool), _) => {
            buffer.resume(spool.resume_seq(), spool.pending_sealed());
            None
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
    let delivery = DeliveryLoop {
        stream: name.to_string(),
        buffer: Arc::clone(&buffer),
        sink,
        keys: ObjectKeyBuilder::new(name, template, codec.extension()),
        error_keys: ObjectKeyBuilder::new(name, error_template, ""),
        retry_duration: Duration::from_secs(layout.retry_duration.value),
        initial_backoff: layout.initial_backoff,
        max_backoff: layout.max_backoff,
        counters: Arc::clone(&counters),
        health: Arc::clone(&health),
        spool: spool.clone(),
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
        record_ids: RecordIds::new(delivered.run),
        spool,
        metrics,
    };
    (stream, delivery)
}
