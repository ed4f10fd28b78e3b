//! A batch while it fills (records framed into chunks, full chunks compressing — or, for
//! Parquet, decoding into rows — on the CPU pool) and once sealed (waiting for its last
//! chunks, then assembled into an object body).

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{BufferSettings, IngestCapacity};
use crate::compress::{Codec, CompressedChunk};
use crate::cpu_pool::{self, CpuJob, EncodeFaults, JobFailure};
use crate::encode::parquet::{ParquetEncoder, WriteError};
use crate::encode::{ChunkRecord, chunk_records};
use crate::encode::{ConversionError, Encoding};
use crate::spool::SeqRange;
use hydrant_sinks::prelude::{AnyDestination, AssembledBatch, BatchId, RecordRef};
use std::any::Any;

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

/// What one chunk of kept records became (Arrow batches for Parquet, framed records, or a
/// destination's piece), and the chunk's records that could not be taken.
#[derive(Debug, Default)]
struct RowChunk {
    batches: Vec<arrow_array::RecordBatch>,
    /// Framed (and compressed) records, for an object of transformed records.
    framed: Option<CompressedChunk>,
    /// A destination's encoding of the chunk, for a destination behind the seam.
    piece: Option<Box<dyn Any + Send>>,
    failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    dropped: u64,
}

#[derive(Debug)]
enum ChunkSlot {
    Ready(CompressedChunk),
    Compressing(CpuJob<CompressedChunk>),
    Converting(CpuJob<RowChunk>),
}

/// The batch currently taking records.
#[derive(Debug)]
pub(super) struct OpenBatch {
    chunk_size: usize,
    pending: Vec<u8>,
    /// Where each pending record ends (when records are decoded or transformed one by one).
    pending_records: Vec<ChunkRecord>,
    chunks: Vec<ChunkSlot>,
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
        let encoding = &settings.encoding;
        if self.oldest.is_none() {
            self.oldest = Some((arrival_ms, arrived));
            self.first_seq = seq;
            self.pending.reserve(self.chunk_size + self.chunk_size / 8);
        }
        self.last_seq = seq;
        let before = self.pending.len();
        match encoding {
            _ if settings.keeps_records() => {
                self.pending.extend_from_slice(record);
                self.pending_records.push(ChunkRecord {
                    seq,
                    arrival_ms,
                    end: self.pending.len(),
                });
                self.raw_len += encoding.buffered_len(record);
            }
            Encoding::Framed(framer) => match framer.frame(record, &mut self.pending) {
                Ok(()) => self.raw_len += self.pending.len() - before,
                Err(error) => {
                    self.raw_len += record.len();
                    self.failed.push(FailedRecord {
                        seq,
                        arrival_ms,
                        data: record.to_vec(),
                        error,
                    });
                }
            },
            Encoding::Parquet(_) | Encoding::Destination(_) => {
                unreachable!("these encodings keep records")
            }
        }
        self.records += 1;
        if self.pending.len() >= self.chunk_size {
            self.dispatch_pending(settings, capacity);
        }
    }

    /// Hands the pending bytes to the CPU pool: to be transformed, then decoded into rows
    /// or compressed (uncompressed and untransformed, they are kept as they are).
    fn dispatch_pending(&mut self, settings: &BufferSettings, capacity: &Arc<IngestCapacity>) {
        if self.pending.is_empty() {
            return;
        }
        let codec = settings.codec;
        let raw = std::mem::take(&mut self.pending);
        let faults = settings.faults.clone();
        if settings.keeps_records() {
            let records = std::mem::take(&mut self.pending_records);
            let compressing = capacity.start_compressing(raw.len());
            let encoding = settings.encoding.clone();
            let processors = settings.processors.clone();
            let job = cpu_pool::spawn_encoding(faults, move || {
                let _compressing = compressing;
                match processors {
                    None => encode_records(&encoding, codec, &raw, &records),
                    Some(chain) => {
                        let processed = chain.process(&raw, &records);
                        let mut chunk =
                            encode_records(&encoding, codec, &processed.data, &processed.records);
                        chunk.dropped = processed.dropped;
                        chunk.failed.extend(processed.failed.into_iter().map(
                            |(index, code, message)| {
                                failed_record(
                                    &raw,
                                    &records,
                                    index,
                                    ConversionError { code, message },
                                )
                            },
                        ));
                        chunk
                    }
                }
            });
            self.chunks.push(ChunkSlot::Converting(job));
            return;
        }
        if codec.is_identity() {
            self.chunks
                .push(ChunkSlot::Ready(codec.compress_chunk(raw)));
            return;
        }
        let compressing = capacity.start_compressing(raw.len());
        let job = cpu_pool::spawn_encoding(faults, move || {
            let _compressing = compressing;
            codec.compress_chunk(raw)
        });
        self.chunks.push(ChunkSlot::Compressing(job));
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
            encoding: settings.encoding.clone(),
            codec: settings.codec,
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

/// A chunk's records (kept one by one) in the stream's encoding: rows, documents, or framed
/// and compressed.
fn encode_records(
    encoding: &Encoding,
    codec: Codec,
    data: &[u8],
    records: &[ChunkRecord],
) -> RowChunk {
    match encoding {
        Encoding::Parquet(encoder) => convert_chunk(encoder, data, records),
        Encoding::Destination(destination) => encode_for(destination.as_ref(), data, records),
        Encoding::Framed(framer) => {
            let mut out = Vec::with_capacity(data.len() + records.len());
            let mut failed = Vec::new();
            for (index, record) in chunk_records(data, records).enumerate() {
                if let Err(error) = framer.frame(record, &mut out) {
                    failed.push(failed_record(data, records, index, error));
                }
            }
            RowChunk {
                framed: Some(codec.compress_chunk(out)),
                failed,
                ..RowChunk::default()
            }
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

/// Decodes a chunk's records into rows, copying out the ones that cannot be rows.
fn convert_chunk(encoder: &ParquetEncoder, data: &[u8], records: &[ChunkRecord]) -> RowChunk {
    let converted = encoder.convert_chunk(data, records);
    RowChunk {
        batches: converted.batches,
        failed: converted
            .rejected
            .into_iter()
            .map(|rejected| failed_record(data, records, rejected.index, rejected.error))
            .collect(),
        ..RowChunk::default()
    }
}

/// Encodes a chunk's records into a destination's request pieces, copying out the ones it
/// refuses.
fn encode_for(destination: &dyn AnyDestination, data: &[u8], records: &[ChunkRecord]) -> RowChunk {
    let refs: Vec<RecordRef<'_>> = records
        .iter()
        .enumerate()
        .map(|(index, record)| RecordRef {
            seq: record.seq,
            arrival_ms: record.arrival_ms,
            data: ChunkRecord::bytes(data, records, index),
        })
        .collect();
    let encoded = destination.encode_any(&refs);
    RowChunk {
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
        ..RowChunk::default()
    }
}

/// A batch that takes no more records, on its way to the destination.
#[derive(Debug)]
pub struct SealedBatch {
    /// How the body is made (framed and compressed chunks, a Parquet file, a destination's
    /// requests).
    encoding: Encoding,
    codec: Codec,
    chunks: Vec<ChunkSlot>,
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
    /// The Parquet writer failed.
    #[error("{error}; the batch's {records} records could not be encoded")]
    Parquet {
        /// Records in the batch.
        records: u64,
        /// What the writer said.
        error: WriteError,
    },
}

/// What a sealed batch became.
#[derive(Debug)]
pub struct BatchBody {
    /// The object body, in order (empty when no record could be written, or for a table).
    pub parts: Vec<Bytes>,
    /// Records the format could not take; they go to the error output.
    pub failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    pub dropped: u64,
    /// For a destination behind the seam: the batch, ready to deliver.
    pub assembled: Option<Assembled>,
}

/// A batch a destination behind the seam has put together.
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

    /// Waits for every chunk and returns the object body, in order, with the records the
    /// format could not take.
    /// `run` is the stream's log incarnation, which names a seam destination's batch.
    pub async fn into_body(self, run: u64) -> Result<BatchBody, BatchFailure> {
        let records = self.records;
        let lost = |failure| BatchFailure::Job { records, failure };
        let mut failed = self.failed;
        let mut compressed = Vec::with_capacity(self.chunks.len());
        let mut rows = Vec::new();
        let mut pieces = Vec::new();
        let mut dropped = 0;
        for slot in self.chunks {
            match slot {
                ChunkSlot::Ready(chunk) => compressed.push(chunk),
                ChunkSlot::Compressing(job) => compressed.push(job.result().await.map_err(lost)?),
                ChunkSlot::Converting(job) => {
                    let chunk = job.result().await.map_err(lost)?;
                    rows.extend(chunk.batches);
                    compressed.extend(chunk.framed);
                    pieces.extend(chunk.piece);
                    dropped += chunk.dropped;
                    failed.extend(chunk.failed);
                }
            }
        }
        let parts = match self.encoding {
            Encoding::Destination(destination) => {
                let id = BatchId {
                    run,
                    first_seq: self.range.first,
                    last_seq: self.range.last,
                };
                let assembled = cpu_pool::spawn_finishing(self.faults, move || {
                    Assembled(destination.assemble_any(id, pieces))
                })
                .result()
                .await
                .map_err(lost)?;
                return Ok(BatchBody {
                    parts: Vec::new(),
                    failed,
                    dropped,
                    assembled: Some(assembled),
                });
            }
            Encoding::Framed(_) => self.codec.assemble(compressed),
            Encoding::Parquet(_) if rows.is_empty() => Vec::new(),
            Encoding::Parquet(encoder) => {
                cpu_pool::spawn_encoding(self.faults, move || encoder.write_file(rows))
                    .result()
                    .await
                    .map_err(lost)?
                    .map_err(|error| BatchFailure::Parquet { records, error })?
            }
        };
        Ok(BatchBody {
            parts,
            failed,
            dropped,
            assembled: None,
        })
    }
}
