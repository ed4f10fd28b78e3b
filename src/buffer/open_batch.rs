//! A batch while it fills (records kept in chunks; each full chunk encoded by the stream's
//! destination on the CPU pool: framed and compressed, decoded into rows, or built into
//! requests) and once sealed (waiting for its last chunks, then assembled by the
//! destination).

use std::any::Any;
use std::sync::Arc;

use tokio::time::Instant;

use super::{BufferSettings, IngestCapacity};
use crate::cpu_pool::{self, CpuJob, EncodeFaults, JobFailure};
use crate::spool::SeqRange;
use hydrant_sinks::object::ConversionError;
use hydrant_sinks::prelude::{
    AnyDestination, AssembleError, AssembledBatch, BatchId, Chunk, ChunkRecord,
};

/// A record the stream's format could not take; it goes to the error output.
#[derive(Debug, Clone)]
pub struct FailedRecord {
    /// Its sequence number.
    pub seq: u64,
    /// When it arrived (Unix ms).
    pub arrival_ms: i64,
    /// The record as sent.
    pub data: Vec<u8>,
    /// Why it could not be written.
    pub error: ConversionError,
}

/// What one chunk of records became (the destination's piece), and the chunk's records
/// that could not be taken.
#[derive(Debug, Default)]
struct EncodedPiece {
    piece: Option<Box<dyn Any + Send>>,
    failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    dropped: u64,
}

/// The batch currently taking records.
#[derive(Debug)]
pub(super) struct OpenBatch {
    chunk_size: usize,
    pending: Vec<u8>,
    /// Where each pending record ends (when records are decoded or transformed one by one).
    pending_records: Vec<ChunkRecord>,
    /// Records framed into `pending` (when the destination frames records as they come).
    pending_framed: u64,
    chunks: Vec<CpuJob<EncodedPiece>>,
    raw_len: usize,
    records: u64,
    oldest: Option<(i64, Instant)>,
    first_seq: u64,
    last_seq: u64,
    failed: Vec<FailedRecord>,
}

impl OpenBatch {
    pub(super) fn new(chunk_size: usize) -> Self {
        Self {
            chunk_size,
            pending: Vec::new(),
            pending_records: Vec::new(),
            pending_framed: 0,
            chunks: Vec::new(),
            raw_len: 0,
            records: 0,
            oldest: None,
            first_seq: 0,
            last_seq: 0,
            failed: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub(super) fn raw_len(&self) -> usize {
        self.raw_len
    }

    pub(super) fn records(&self) -> u64 {
        self.records
    }

    pub(super) fn oldest_instant(&self) -> Option<Instant> {
        self.oldest.map(|(_, instant)| instant)
    }

    /// Appends record `seq`; `arrived` is when its age (for the interval threshold) began.
    pub(super) fn append(
        &mut self,
        seq: u64,
        record: &[u8],
        arrival_ms: i64,
        arrived: Instant,
        settings: &BufferSettings,
        capacity: &Arc<IngestCapacity>,
    ) {
        if self.oldest.is_none() {
            self.oldest = Some((arrival_ms, arrived));
            self.first_seq = seq;
            self.pending.reserve(self.chunk_size + self.chunk_size / 8);
        }
        self.last_seq = seq;
        let destination = &settings.destination;
        match destination.framer_any() {
            Some(framer) if !settings.keeps_records() => {
                let before = self.pending.len();
                match framer.frame(record, &mut self.pending) {
                    Ok(()) => {
                        self.raw_len += self.pending.len() - before;
                        self.pending_framed += 1;
                    }
                    Err(error) => {
                        self.raw_len += record.len();
                        self.failed.push(FailedRecord {
                            seq,
                            arrival_ms,
                            data: record.to_vec(),
                            error,
                        });
                    }
                }
            }
            _ => {
                self.pending.extend_from_slice(record);
                self.pending_records.push(ChunkRecord {
                    seq,
                    arrival_ms,
                    end: self.pending.len(),
                });
                self.raw_len += destination.buffered_len_any(record);
            }
        }
        self.records += 1;
        if self.pending.len() >= self.chunk_size {
            self.dispatch_pending(settings, capacity);
        }
    }

    /// Hands the pending records to the CPU pool: to be transformed, then encoded by the
    /// destination.
    fn dispatch_pending(&mut self, settings: &BufferSettings, capacity: &Arc<IngestCapacity>) {
        if self.pending.is_empty() && self.pending_records.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut self.pending);
        let records = std::mem::take(&mut self.pending_records);
        let framed = std::mem::take(&mut self.pending_framed);
        let compressing = capacity.start_compressing(raw.len());
        let destination = Arc::clone(&settings.destination);
        let processors = settings.processors.clone();
        let job = cpu_pool::spawn_encoding(settings.faults.clone(), move || {
            let _compressing = compressing;
            if records.is_empty() {
                return EncodedPiece {
                    piece: Some(destination.encode_framed_any(raw, framed)),
                    ..EncodedPiece::default()
                };
            }
            match processors {
                None => encode_records(destination.as_ref(), &raw, &records),
                Some(chain) => {
                    let processed = chain.process(&raw, &records);
                    let mut chunk =
                        encode_records(destination.as_ref(), &processed.data, &processed.records);
                    chunk.dropped = processed.dropped;
                    chunk.failed.extend(processed.failed.into_iter().map(
                        |(index, code, message)| {
                            failed_record(&raw, &records, index, ConversionError { code, message })
                        },
                    ));
                    chunk
                }
            }
        });
        self.chunks.push(job);
    }

    /// Closes the batch to new records and starts compressing its tail.
    pub(super) fn seal(
        mut self,
        settings: &BufferSettings,
        capacity: &Arc<IngestCapacity>,
        replayed: bool,
    ) -> SealedBatch {
        self.dispatch_pending(settings, capacity);
        SealedBatch {
            destination: Arc::clone(&settings.destination),
            chunks: self.chunks,
            raw_len: self.raw_len,
            records: self.records,
            oldest_arrival_ms: self.oldest.map_or(0, |(ms, _)| ms),
            range: SeqRange {
                first: self.first_seq,
                last: self.last_seq,
            },
            replayed,
            failed: self.failed,
            faults: settings.faults.clone(),
        }
    }
}

/// The failure record of record `index` of a chunk.
fn failed_record(
    data: &[u8],
    records: &[ChunkRecord],
    index: usize,
    error: ConversionError,
) -> FailedRecord {
    FailedRecord {
        seq: records[index].seq,
        arrival_ms: records[index].arrival_ms,
        data: ChunkRecord::bytes(data, records, index).to_vec(),
        error,
    }
}

/// Encodes a chunk's records (kept one by one) with the destination, copying out the ones
/// it refuses.
fn encode_records(
    destination: &dyn AnyDestination,
    data: &[u8],
    records: &[ChunkRecord],
) -> EncodedPiece {
    let encoded = destination.encode_any(Chunk { data, records });
    EncodedPiece {
        piece: Some(encoded.piece),
        failed: encoded
            .refusals
            .into_iter()
            .map(|refusal| {
                let error = ConversionError {
                    code: refusal.code,
                    message: refusal.message,
                };
                failed_record(data, records, refusal.index, error)
            })
            .collect(),
        ..EncodedPiece::default()
    }
}

/// A batch that takes no more records, on its way to the destination.
#[derive(Debug)]
pub struct SealedBatch {
    /// What the records become, and where they go.
    destination: Arc<dyn AnyDestination>,
    chunks: Vec<CpuJob<EncodedPiece>>,
    raw_len: usize,
    records: u64,
    oldest_arrival_ms: i64,
    range: SeqRange,
    replayed: bool,
    failed: Vec<FailedRecord>,
    faults: Option<Arc<EncodeFaults>>,
}

/// A batch whose body could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum BatchFailure {
    /// A job on the CPU pool panicked or ended without a result.
    #[error("{failure}; the batch's {records} records could not be encoded")]
    Job {
        /// Records in the batch.
        records: u64,
        /// What happened to the job.
        failure: JobFailure,
    },
    /// The destination could not put the batch together (a file writer failed).
    #[error("{error}; the batch's {records} records could not be encoded")]
    Assemble {
        /// Records in the batch.
        records: u64,
        /// What the destination said.
        error: AssembleError,
    },
}

/// What a sealed batch became.
#[derive(Debug)]
pub struct BatchBody {
    /// Records the destination could not take; they go to the error output.
    pub failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    pub dropped: u64,
    /// The batch, ready to deliver.
    pub assembled: Assembled,
}

/// A batch the destination has put together.
pub struct Assembled(pub Box<dyn AssembledBatch>);

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Assembled")
    }
}

impl SealedBatch {
    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Uncompressed size of the framed records.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// Sequence numbers of its first and last records.
    pub fn range(&self) -> SeqRange {
        self.range
    }

    /// Whether this batch rebuilds one journaled before a restart.
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// Arrival time (Unix ms) of the oldest record: the object key's timestamp.
    pub fn oldest_arrival_ms(&self) -> i64 {
        self.oldest_arrival_ms
    }

    /// Waits for every chunk and has the destination put the batch together, with the
    /// records it could not take. `run` is the stream's log incarnation, which names the
    /// batch.
    pub async fn into_body(self, run: u64) -> Result<BatchBody, BatchFailure> {
        let records = self.records;
        let lost = |failure| BatchFailure::Job { records, failure };
        let mut failed = self.failed;
        let mut pieces = Vec::with_capacity(self.chunks.len());
        let mut dropped = 0;
        for job in self.chunks {
            let chunk = job.result().await.map_err(lost)?;
            pieces.extend(chunk.piece);
            dropped += chunk.dropped;
            failed.extend(chunk.failed);
        }
        let id = BatchId {
            run,
            first_seq: self.range.first,
            last_seq: self.range.last,
            oldest_ms: self.oldest_arrival_ms,
        };
        let destination = self.destination;
        let assembled =
            cpu_pool::spawn_finishing(self.faults, move || destination.assemble_any(id, pieces))
                .result()
                .await
                .map_err(lost)?
                .map_err(|error| BatchFailure::Assemble { records, error })?;
        Ok(BatchBody {
            failed,
            dropped,
            assembled: Assembled(assembled),
        })
    }
}
