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
use std::collections::{HashMap, HashSet};

use hydrant_sinks::object::{ConversionError, RecordFramer};
use hydrant_sinks::partition::{METADATA_EXTRACTION_FAILED, PartitionKeys, Partitioner};
use hydrant_sinks::prelude::{
    AnyDestination, AssembleError, AssembledBatch, BatchId, Chunk, ChunkRecord, Refusal,
};

/// A record the stream could not take; it goes to the error output of the stage that
/// refused it.
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
    /// Which stage refused it.
    pub stage: FailedStage,
}

/// The stage that refused a record, which names its error output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedStage {
    /// A transform failed it (`processing-failed`).
    Transform,
    /// Its partition keys could not be extracted, or its partition did not fit
    /// (`partitioning-failed`).
    Partitioning,
    /// The destination's format could not take it (`format-conversion-failed`).
    Encoding,
}

/// What one chunk of records became (the destination's pieces, one per partition), and
/// the chunk's records that could not be taken.
#[derive(Debug, Default)]
struct EncodedPiece {
    pieces: Vec<PartitionPiece>,
    failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    dropped: u64,
}

/// The destination's encoding of a chunk's records of one partition.
#[derive(Debug)]
pub struct PartitionPiece {
    /// The partition (`None` when the stream is not partitioned).
    pub keys: Option<Arc<PartitionKeys>>,
    /// What the destination made of the records.
    pub piece: Box<dyn Any + Send>,
    /// Sequence numbers of the records encoded (for a partitioned stream only).
    pub seqs: Vec<u64>,
    /// Bytes of the records encoded (for a partitioned stream only): what the partition's
    /// `buffer.size_mib` counts.
    pub raw_len: usize,
    /// Arrival (Unix ms) of the oldest record encoded (for a partitioned stream only).
    pub oldest_ms: i64,
    /// Memory the piece holds (for a partitioned stream only): what the partitions'
    /// `max_buffered_mib` counts.
    pub held: usize,
}

impl PartitionPiece {
    fn whole(piece: Box<dyn Any + Send>) -> Self {
        Self {
            keys: None,
            piece,
            seqs: Vec::new(),
            raw_len: 0,
            oldest_ms: 0,
            held: 0,
        }
    }
}

/// The batch currently taking records.
#[derive(Debug)]
pub(super) struct OpenBatch {
    chunk_size: usize,
    /// How records are framed into the chunk as they arrive; `None` when they are kept
    /// one by one (encoded per record, transformed or partitioned). Decided once per stream.
    framer: Option<RecordFramer>,
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
    pub(super) fn new(chunk_size: usize, framer: Option<RecordFramer>) -> Self {
        Self {
            chunk_size,
            framer,
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

    /// Bytes `record` adds to the batch's size (what `buffer.size_mib` counts).
    pub(super) fn buffered_len(&self, record: &[u8], settings: &BufferSettings) -> usize {
        match self.framer {
            Some(framer) => framer.framed_len(record),
            None => settings.destination.buffered_len_any(record),
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
        match self.framer {
            Some(framer) => {
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
                            stage: FailedStage::Encoding,
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
                self.raw_len += self.buffered_len(record, settings);
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
        let partitioner = settings.partitioner.clone();
        let job = cpu_pool::spawn_encoding(settings.faults.clone(), move || {
            let _compressing = compressing;
            if records.is_empty() {
                return EncodedPiece {
                    pieces: vec![PartitionPiece::whole(
                        destination.encode_framed_any(raw, framed),
                    )],
                    ..EncodedPiece::default()
                };
            }
            let encode = |data: &[u8], records: &[ChunkRecord], keys: &[Vec<(String, String)>]| {
                match &partitioner {
                    None => encode_records(destination.as_ref(), data, records),
                    Some(partitioner) => {
                        encode_partitioned(destination.as_ref(), partitioner, data, records, keys)
                    }
                }
            };
            match processors {
                None => encode(&raw, &records, &[]),
                Some(chain) => {
                    let processed = chain.process(&raw, &records);
                    let mut chunk = encode(
                        &processed.data,
                        &processed.records,
                        &processed.partition_keys,
                    );
                    chunk.dropped = processed.dropped;
                    chunk.failed.extend(processed.failed.into_iter().map(
                        |(index, code, message)| {
                            let error = ConversionError { code, message };
                            failed_record(&raw, &records, index, error, FailedStage::Transform)
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

/// The failure record of record `index` of a chunk, refused at `stage`.
fn failed_record(
    data: &[u8],
    records: &[ChunkRecord],
    index: usize,
    error: ConversionError,
    stage: FailedStage,
) -> FailedRecord {
    FailedRecord {
        seq: records[index].seq,
        arrival_ms: records[index].arrival_ms,
        data: ChunkRecord::bytes(data, records, index).to_vec(),
        error,
        stage,
    }
}

/// Encodes a chunk's records (kept one by one) with the destination, copying out the ones
/// it refuses.
fn encode_records(
    destination: &dyn AnyDestination,
    data: &[u8],
    records: &[ChunkRecord],
) -> EncodedPiece {
    let (piece, failed) = encode_chunk(destination, data, records, None);
    EncodedPiece {
        pieces: vec![PartitionPiece::whole(piece)],
        failed,
        ..EncodedPiece::default()
    }
}

/// The destination's encoding of a chunk (of one partition, when `partition` is given), and
/// the records it refused.
fn encode_chunk(
    destination: &dyn AnyDestination,
    data: &[u8],
    records: &[ChunkRecord],
    partition: Option<&PartitionKeys>,
) -> (Box<dyn Any + Send>, Vec<FailedRecord>) {
    let encoded = destination.encode_any(Chunk {
        data,
        records,
        partition,
    });
    let failed = refused_records(data, records, encoded.refusals, |index| index);
    (encoded.piece, failed)
}

/// The records the destination refused while encoding, copied out; `at` maps a refusal's
/// index to the record's index in the chunk.
fn refused_records(
    data: &[u8],
    records: &[ChunkRecord],
    refusals: Vec<Refusal>,
    at: impl Fn(usize) -> usize,
) -> Vec<FailedRecord> {
    refusals
        .into_iter()
        .map(|refusal| {
            let error = ConversionError {
                code: refusal.code,
                message: refusal.message,
            };
            failed_record(
                data,
                records,
                at(refusal.index),
                error,
                FailedStage::Encoding,
            )
        })
        .collect()
}

/// One partition's records of a chunk, copied out in order.
#[derive(Default)]
struct PartitionRecords {
    data: Vec<u8>,
    records: Vec<ChunkRecord>,
}

/// Splits a chunk's records by their partition keys (in order of first appearance) and
/// encodes each partition's records on their own; a record whose keys cannot be extracted
/// goes to the error output. `lambda_keys` are the keys the transforms returned, per record.
fn encode_partitioned(
    destination: &dyn AnyDestination,
    partitioner: &Partitioner,
    data: &[u8],
    records: &[ChunkRecord],
    lambda_keys: &[Vec<(String, String)>],
) -> EncodedPiece {
    let mut failed = Vec::new();
    let mut index: HashMap<PartitionKeys, usize> = HashMap::new();
    let mut keys_of: Vec<Arc<PartitionKeys>> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..records.len() {
        let bytes = ChunkRecord::bytes(data, records, i);
        let lambda = lambda_keys.get(i).map_or(&[][..], Vec::as_slice);
        let keys = match partitioner.keys(bytes, lambda) {
            Ok(keys) => keys,
            Err(message) => {
                let error = ConversionError {
                    code: METADATA_EXTRACTION_FAILED,
                    message,
                };
                failed.push(failed_record(
                    data,
                    records,
                    i,
                    error,
                    FailedStage::Partitioning,
                ));
                continue;
            }
        };
        let group = match index.get(&keys) {
            Some(&group) => group,
            None => {
                index.insert(keys.clone(), groups.len());
                keys_of.push(Arc::new(keys));
                groups.push(Vec::new());
                groups.len() - 1
            }
        };
        groups[group].push(i);
    }
    let chunk = Chunk {
        data,
        records,
        partition: None,
    };
    let encoded = match destination.encode_groups_any(chunk, &groups) {
        // The destination split the chunk itself (decoded once).
        Some(encoded) => encoded
            .into_iter()
            .zip(&groups)
            .map(|(encoded, group)| {
                let failed = refused_records(data, records, encoded.refusals, |i| group[i]);
                (encoded.piece, failed)
            })
            .collect(),
        None => groups
            .iter()
            .zip(&keys_of)
            .map(|(group, keys)| {
                let copied = copy_group(data, records, group);
                encode_chunk(
                    destination,
                    &copied.data,
                    &copied.records,
                    Some(keys.as_ref()),
                )
            })
            .collect::<Vec<_>>(),
    };
    let mut pieces = Vec::with_capacity(groups.len());
    for (((piece, refused), group), keys) in encoded.into_iter().zip(&groups).zip(keys_of) {
        let refused_seqs: HashSet<u64> = refused.iter().map(|f| f.seq).collect();
        failed.extend(refused);
        let mut seqs = Vec::with_capacity(group.len());
        let (mut raw_len, mut oldest_ms) = (0, i64::MAX);
        for &i in group {
            let record = &records[i];
            raw_len += ChunkRecord::bytes(data, records, i).len();
            oldest_ms = oldest_ms.min(record.arrival_ms);
            if !refused_seqs.contains(&record.seq) {
                seqs.push(record.seq);
            }
        }
        let held = destination
            .held_bytes_any(piece.as_ref())
            .unwrap_or(raw_len);
        pieces.push(PartitionPiece {
            keys: Some(keys),
            piece,
            seqs,
            held,
            raw_len,
            oldest_ms,
        });
    }
    EncodedPiece {
        pieces,
        failed,
        ..EncodedPiece::default()
    }
}

/// The records `group` (indexes into the chunk) copied out, in order.
fn copy_group(data: &[u8], records: &[ChunkRecord], group: &[usize]) -> PartitionRecords {
    let mut out = PartitionRecords::default();
    for &i in group {
        out.data
            .extend_from_slice(ChunkRecord::bytes(data, records, i));
        out.records.push(ChunkRecord {
            end: out.data.len(),
            ..records[i]
        });
    }
    out
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

/// What the chunks of a sealed window of a partitioned stream became: each partition's
/// pieces, to be gathered into that partition's batch.
#[derive(Debug)]
pub struct WindowPieces {
    /// Records that could not be taken; they go to the error output.
    pub failed: Vec<FailedRecord>,
    /// Records a transform dropped on purpose.
    pub dropped: u64,
    /// Each chunk's pieces, per partition, in order.
    pub pieces: Vec<PartitionPiece>,
}

/// A batch the destination has put together.
pub struct Assembled {
    /// The batch.
    pub batch: Box<dyn AssembledBatch>,
    /// For one partition of a partitioned batch: the sequence numbers of its records (what
    /// goes to the error output if the whole partition cannot be delivered).
    pub records: Option<Vec<u64>>,
}

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
        let range = self.range;
        let oldest_ms = self.oldest_arrival_ms;
        let destination = Arc::clone(&self.destination);
        let faults = self.faults.clone();
        let WindowPieces {
            failed,
            dropped,
            pieces,
        } = self.into_pieces().await?;
        let id = BatchId {
            run,
            first_seq: range.first,
            last_seq: range.last,
            oldest_ms,
            partition: None,
        };
        let pieces = pieces.into_iter().map(|p| p.piece).collect();
        let batch = assemble(destination, id, pieces, faults)
            .await
            .map_err(|error| error.for_records(records))?;
        Ok(BatchBody {
            failed,
            dropped,
            assembled: Assembled {
                batch,
                records: None,
            },
        })
    }

    /// Waits for every chunk: what each became, in order, with the records that could not
    /// be taken.
    pub async fn into_pieces(self) -> Result<WindowPieces, BatchFailure> {
        let records = self.records;
        let mut failed = self.failed;
        let mut dropped = 0;
        let mut pieces = Vec::new();
        for job in self.chunks {
            let chunk = job
                .result()
                .await
                .map_err(|failure| BatchFailure::Job { records, failure })?;
            dropped += chunk.dropped;
            failed.extend(chunk.failed);
            pieces.extend(chunk.pieces);
        }
        Ok(WindowPieces {
            failed,
            dropped,
            pieces,
        })
    }
}

/// Why pieces could not be assembled: before the record count is known.
#[derive(Debug)]
pub enum AssemblyFailure {
    /// The job on the CPU pool failed.
    Job(JobFailure),
    /// The destination could not put the batch together.
    Assemble(AssembleError),
}

impl AssemblyFailure {
    /// The failure of a batch of `records`.
    pub fn for_records(self, records: u64) -> BatchFailure {
        match self {
            Self::Job(failure) => BatchFailure::Job { records, failure },
            Self::Assemble(error) => BatchFailure::Assemble { records, error },
        }
    }
}

/// Has `destination` put `pieces` together as batch `id`, on the CPU pool (or the
/// finishing pool, when assembly is light).
pub async fn assemble(
    destination: Arc<dyn AnyDestination>,
    id: BatchId,
    pieces: Vec<Box<dyn Any + Send>>,
    faults: Option<Arc<EncodeFaults>>,
) -> Result<Box<dyn AssembledBatch>, AssemblyFailure> {
    let heavy = destination.assembly_is_heavy_any();
    let job = move || destination.assemble_any(id, pieces);
    let job = if heavy {
        cpu_pool::spawn_encoding(faults, job)
    } else {
        cpu_pool::spawn_finishing(faults, job)
    };
    job.result()
        .await
        .map_err(AssemblyFailure::Job)?
        .map_err(AssemblyFailure::Assemble)
}
