//! A batch while it fills (records framed into chunks, full chunks compressing on the CPU
//! pool) and once sealed (waiting for its last chunks, then assembled into an object body).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::IngestCapacity;
use crate::compress::{Codec, CompressedChunk};
use crate::encode::{ConversionError, RecordFramer};
use crate::spool::SeqRange;

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

#[derive(Debug)]
enum ChunkSlot {
    Ready(CompressedChunk),
    Compressing(oneshot::Receiver<CompressedChunk>),
}

/// The batch currently taking records.
#[derive(Debug)]
pub(super) struct OpenBatch {
    chunk_size: usize,
    pending: Vec<u8>,
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        &mut self,
        seq: u64,
        record: &[u8],
        arrival_ms: i64,
        arrived: Instant,
        framer: &RecordFramer,
        codec: Codec,
        capacity: &Arc<IngestCapacity>,
    ) {
        if self.oldest.is_none() {
            self.oldest = Some((arrival_ms, arrived));
            self.first_seq = seq;
            self.pending.reserve(self.chunk_size + self.chunk_size / 8);
        }
        self.last_seq = seq;
        let before = self.pending.len();
        match framer.frame(record, &mut self.pending) {
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
        }
        self.records += 1;
        if self.pending.len() >= self.chunk_size {
            self.dispatch_pending(codec, capacity);
        }
    }

    /// Hands the pending bytes to the compression pool (or, uncompressed, keeps them as is).
    fn dispatch_pending(&mut self, codec: Codec, capacity: &Arc<IngestCapacity>) {
        if self.pending.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut self.pending);
        if codec.is_identity() {
            self.chunks
                .push(ChunkSlot::Ready(codec.compress_chunk(raw)));
            return;
        }
        let len = raw.len();
        capacity.start_compressing(len);
        let (sender, receiver) = oneshot::channel();
        let capacity = Arc::clone(capacity);
        rayon::spawn(move || {
            let chunk = codec.compress_chunk(raw);
            capacity.finish_compressing(len);
            let _ = sender.send(chunk);
        });
        self.chunks.push(ChunkSlot::Compressing(receiver));
    }

    /// Closes the batch to new records and starts compressing its tail.
    pub(super) fn seal(
        mut self,
        codec: Codec,
        capacity: &Arc<IngestCapacity>,
        replayed: bool,
    ) -> SealedBatch {
        self.dispatch_pending(codec, capacity);
        SealedBatch {
            codec,
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
        }
    }
}

/// A batch that takes no more records, on its way to the destination.
#[derive(Debug)]
pub struct SealedBatch {
    codec: Codec,
    chunks: Vec<ChunkSlot>,
    raw_len: usize,
    records: u64,
    oldest_arrival_ms: i64,
    range: SeqRange,
    replayed: bool,
    failed: Vec<FailedRecord>,
}

/// A batch whose body could not be produced.
#[derive(Debug, thiserror::Error)]
#[error(
    "a compression job ended without a result; the batch's {records} records cannot be written"
)]
pub struct BatchFailure {
    /// Records in the batch.
    pub records: u64,
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

    /// Takes out the records the format could not take (they are not in the body).
    pub fn take_failed(&mut self) -> Vec<FailedRecord> {
        std::mem::take(&mut self.failed)
    }

    /// Whether this batch rebuilds one journaled before a restart.
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// Arrival time (Unix ms) of the oldest record: the object key's timestamp.
    pub fn oldest_arrival_ms(&self) -> i64 {
        self.oldest_arrival_ms
    }

    /// Waits for every chunk and returns the object body, in order.
    pub async fn into_body(self) -> Result<Vec<Bytes>, BatchFailure> {
        let mut ready = Vec::with_capacity(self.chunks.len());
        for slot in self.chunks {
            match slot {
                ChunkSlot::Ready(chunk) => ready.push(chunk),
                ChunkSlot::Compressing(receiver) => match receiver.await {
                    Ok(chunk) => ready.push(chunk),
                    Err(_) => {
                        return Err(BatchFailure {
                            records: self.records,
                        });
                    }
                },
            }
        }
        Ok(self.codec.assemble(ready))
    }
}
