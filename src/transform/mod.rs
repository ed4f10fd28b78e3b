//! WebAssembly record transforms (Firehose's Lambda step, run in process and sandboxed): a
//! stream's `processors` run over each chunk of records on the CPU pool before the chunk is
//! encoded. Each record comes out delivered (perhaps changed), dropped, or failed with a
//! reason for the `processing-failed` error output.

mod contract;
mod engine;
mod guest;
mod guest_log;
pub mod try_out;

pub use contract::{
    DUPLICATE_RECORD_ID, INVALID_OUTCOME, MISSING_RECORD_ID, PROCESSING_FAILED, UNKNOWN_RECORD_ID,
    Verdict,
};

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use guest::{GuestInstance, GuestTemplate, Record};
use guest_log::GuestLog;
use hydrant_sinks::prelude::ChunkRecord;

/// How one `wasm` processor is set up.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// The component file.
    pub module: PathBuf,
    /// Its configuration, as JSON.
    pub config: String,
    /// Longest a call may run.
    pub timeout: Duration,
    /// Most memory an instance may have.
    pub max_memory_bytes: usize,
    /// Further calls of a batch that failed as a whole.
    pub retries: u32,
}

/// A loaded transform: compiled, linked, configured, with a pool of instances.
pub struct WasmProcessor {
    stream: String,
    module: String,
    settings: ProcessorSettings,
    template: GuestTemplate,
    log: (GuestLog, GuestLog),
    pool: Mutex<Vec<GuestInstance>>,
}

impl std::fmt::Debug for WasmProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmProcessor")
            .field("stream", &self.stream)
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

/// A processor that cannot be used; the message names the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

impl WasmProcessor {
    /// Reads, compiles (or loads from the cache), links and configures the module of
    /// `settings` for `stream`.
    pub fn load(stream: &str, settings: ProcessorSettings) -> Result<Self, LoadError> {
        let path = &settings.module;
        let bytes = std::fs::read(path).map_err(|e| {
            LoadError(format!(
                "cannot read transform module {}: {e}",
                path.display()
            ))
        })?;
        let component = engine::compile(path, &bytes).map_err(LoadError)?;
        let template = GuestTemplate::link(&component).map_err(|reason| {
            LoadError(format!("transform module {}: {reason}", path.display()))
        })?;
        let module = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let log = GuestLog::pair(stream, &module);
        let first = template
            .instantiate(
                settings.max_memory_bytes,
                &log,
                &settings.config,
                settings.timeout,
            )
            .map_err(|failure| {
                LoadError(format!(
                    "transform module {}: {} ({})",
                    path.display(),
                    failure.message,
                    failure.code
                ))
            })?;
        Ok(Self {
            stream: stream.to_string(),
            module,
            settings,
            template,
            log,
            pool: Mutex::new(vec![first]),
        })
    }

    /// The verdict on each record of a batch (`records` of `data`), calling the transform
    /// again (up to `retries` times) when it traps, times out, runs out of memory or breaks
    /// the one-outcome-per-record contract. CPU-heavy: call it off the async reactor.
    pub fn process(&self, data: &[u8], records: &[ChunkRecord]) -> Vec<Verdict> {
        let batch: Vec<Record> = (0..records.len())
            .map(|i| Record {
                record_id: i.to_string(),
                approximate_arrival_timestamp: records[i].arrival_ms.max(0) as u64,
                data: ChunkRecord::bytes(data, records, i).to_vec(),
            })
            .collect();
        let mut failure = None;
        for attempt in 0..=self.settings.retries {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut instance = match pooled {
                Some(instance) => instance,
                None => match self.template.instantiate(
                    self.settings.max_memory_bytes,
                    &self.log,
                    &self.settings.config,
                    self.settings.timeout,
                ) {
                    Ok(instance) => instance,
                    Err(error) => {
                        self.warn(attempt, error.code, &error.message, records.len());
                        failure = Some(error);
                        continue;
                    }
                },
            };
            match instance.transform(&batch) {
                Ok(outcomes) => {
                    self.pool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(instance);
                    let (verdicts, broken) = contract::verdicts(records.len(), outcomes);
                    if broken && attempt < self.settings.retries {
                        self.warn(
                            attempt,
                            "Transform.ContractViolation",
                            "outcomes missing, duplicated or unknown",
                            records.len(),
                        );
                        continue;
                    }
                    return verdicts;
                }
                // The instance may be in any state after a trap: it is not reused.
                Err(error) => {
                    self.warn(attempt, error.code, &error.message, records.len());
                    failure = Some(error);
                }
            }
        }
        let failure = failure.expect("every failed attempt records why");
        tracing::error!(
            stream = %self.stream,
            module = %self.module,
            code = failure.code,
            records = records.len(),
            "transform failed on every attempt; its records go to the processing-failed error output"
        );
        (0..records.len())
            .map(|_| Verdict::Failed(failure.code, failure.message.clone()))
            .collect()
    }

    fn warn(&self, attempt: u32, code: &str, message: &str, records: usize) {
        tracing::warn!(
            stream = %self.stream,
            module = %self.module,
            code,
            attempt = attempt + 1,
            of = self.settings.retries + 1,
            records,
            "transform call failed: {message}"
        );
    }
}

/// A stream's processors, applied in order.
#[derive(Debug)]
pub struct ProcessorChain {
    processors: Vec<WasmProcessor>,
    metrics: ChainMetrics,
}

/// What a stream's transforms did, as Firehose's `ExecuteProcessing.Duration/Success` and
/// `SucceedProcessing.Records/Bytes`.
#[derive(Debug)]
struct ChainMetrics {
    /// Seconds the chain took per chunk (`hydrant_transform_seconds`).
    duration: ::metrics::Histogram,
    /// Records the chain delivered (`hydrant_transform_succeeded_records_total`).
    records: ::metrics::Counter,
    /// Their bytes (`hydrant_transform_succeeded_bytes_total`).
    bytes: ::metrics::Counter,
    /// Records the chain refused (`hydrant_transform_failed_records_total`).
    failed: ::metrics::Counter,
}

impl ChainMetrics {
    fn new(stream: &str) -> Self {
        let labels = [("stream", stream.to_string())];
        Self {
            duration: ::metrics::histogram!(crate::metrics::TRANSFORM_SECONDS, &labels),
            records: ::metrics::counter!("hydrant_transform_succeeded_records_total", &labels),
            bytes: ::metrics::counter!("hydrant_transform_succeeded_bytes_total", &labels),
            failed: ::metrics::counter!("hydrant_transform_failed_records_total", &labels),
        }
    }
}

/// A chunk after the processors: the records to encode and what became of the others.
#[derive(Debug, Default)]
pub struct Processed {
    /// Records to deliver, one after another.
    pub data: Vec<u8>,
    /// Their boundaries (sequence numbers and arrival times as they came in).
    pub records: Vec<ChunkRecord>,
    /// Records that failed: index in the input chunk, error code, message.
    pub failed: Vec<(usize, &'static str, String)>,
    /// Records dropped on purpose.
    pub dropped: u64,
    /// The partition keys the processors returned with each record to deliver, in order
    /// (a later processor's keys after an earlier one's, so the last named wins).
    pub partition_keys: Vec<Vec<(String, String)>>,
}

impl ProcessorChain {
    /// The chain of `processors` (at least one) of stream `stream`.
    pub fn new(stream: &str, processors: Vec<WasmProcessor>) -> Self {
        Self {
            processors,
            metrics: ChainMetrics::new(stream),
        }
    }

    /// Runs every processor over the chunk (`records` of `data`).
    pub fn process(&self, data: &[u8], records: &[ChunkRecord]) -> Processed {
        let started = std::time::Instant::now();
        let processed = self.run(data, records);
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        self.metrics
            .records
            .increment(processed.records.len() as u64);
        self.metrics.bytes.increment(processed.data.len() as u64);
        self.metrics.failed.increment(processed.failed.len() as u64);
        processed
    }

    /// [`process`](Self::process), uncounted.
    fn run(&self, data: &[u8], records: &[ChunkRecord]) -> Processed {
        // The first processor reads the chunk as it is; each later one what the one before
        // it delivered.
        let mut current: Option<Processed> = None;
        // Where each current record came from in the input chunk.
        let mut origin: Vec<usize> = (0..records.len()).collect();
        for processor in &self.processors {
            let mut previous = current.take();
            let (input, input_records, failed, dropped, mut keys) = match &mut previous {
                Some(p) => (
                    &p.data[..],
                    &p.records[..],
                    std::mem::take(&mut p.failed),
                    p.dropped,
                    std::mem::take(&mut p.partition_keys),
                ),
                None => (data, records, Vec::new(), 0, Vec::new()),
            };
            keys.resize_with(input_records.len(), Vec::new);
            if input_records.is_empty() {
                current = Some(Processed {
                    failed,
                    dropped,
                    ..Processed::default()
                });
                break;
            }
            let verdicts = processor.process(input, input_records);
            let mut next = Processed {
                data: Vec::with_capacity(input.len()),
                records: Vec::with_capacity(input_records.len()),
                failed,
                dropped,
                partition_keys: Vec::with_capacity(input_records.len()),
            };
            let mut next_origin = Vec::with_capacity(origin.len());
            for (((verdict, record), from), mut earlier_keys) in verdicts
                .into_iter()
                .zip(input_records)
                .zip(&origin)
                .zip(keys)
            {
                match verdict {
                    Verdict::Ok(bytes, returned_keys) => {
                        next.data.extend_from_slice(&bytes);
                        next.records.push(ChunkRecord {
                            end: next.data.len(),
                            ..*record
                        });
                        next_origin.push(*from);
                        earlier_keys.extend(returned_keys);
                        next.partition_keys.push(earlier_keys);
                    }
                    Verdict::Dropped => next.dropped += 1,
                    Verdict::Failed(code, message) => next.failed.push((*from, code, message)),
                }
            }
            current = Some(next);
            origin = next_origin;
        }
        current.unwrap_or_default()
    }
}

/// Loads every processor of a stream, in order.
pub fn load_chain(
    stream: &str,
    settings: Vec<ProcessorSettings>,
) -> Result<ProcessorChain, LoadError> {
    let processors = settings
        .into_iter()
        .map(|s| WasmProcessor::load(stream, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProcessorChain::new(stream, processors))
}
