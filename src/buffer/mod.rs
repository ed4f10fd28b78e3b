//! Per-stream buffering: records accumulate in an open batch that is sealed when its size or
//! age threshold is reached, then handed to the stream's delivery task.
//!
//! While a batch fills, its full chunks are already being compressed on the CPU pool, so
//! compression runs on every core and a sealed batch is ready moments after sealing. Memory
//! is bounded: one open batch, one sealed batch waiting, the one being delivered, and a
//! process-wide budget of bytes awaiting compression. When those are full, puts wait for
//! space (see [`IngestCapacity`]) and are refused once the wait runs out.

mod capacity;
mod open_batch;

pub use capacity::IngestCapacity;
pub use open_batch::{
    Assembled, AssemblyFailure, BatchBody, BatchFailure, FailedRecord, FailedStage, PartitionPiece,
    SealedBatch, WindowPieces, assemble,
};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cpu_pool::EncodeFaults;
use crate::spool::{RecordChunk, SeqRange};
use crate::transform::ProcessorChain;
use hydrant_sinks::object::RecordFramer;
use hydrant_sinks::partition::Partitioner;
use hydrant_sinks::prelude::AnyDestination;
use open_batch::OpenBatch;

/// Thresholds and codecs of one stream's buffer.
#[derive(Debug, Clone)]
pub struct BufferSettings {
    /// Flush when this many framed, uncompressed bytes are buffered.
    pub size_limit: usize,
    /// Flush when the oldest buffered record is this old.
    pub interval: Duration,
    /// What records become (objects, rows, requests), and where they go.
    pub destination: Arc<dyn AnyDestination>,
    /// Transforms run over each chunk before it is encoded.
    pub processors: Option<Arc<ProcessorChain>>,
    /// Dynamic partitioning: what extracts each record's keys (after the transforms).
    pub partitioner: Option<Arc<Partitioner>>,
    /// Largest chunk handed to the CPU pool (with processors: their batch size).
    pub chunk_limit: Option<usize>,
    /// Encoding faults to inject (tests only; `None` in a running service).
    pub faults: Option<Arc<EncodeFaults>>,
}

impl BufferSettings {
    /// How records are framed into a chunk as they arrive; `None` when they are kept with
    /// their boundaries until their chunk is dispatched (the destination encodes them one by
    /// one, or they are transformed or partitioned first).
    fn framer(&self) -> Option<RecordFramer> {
        if self.processors.is_some() || self.partitioner.is_some() {
            None
        } else {
            self.destination.framer_any().copied()
        }
    }
}

/// Why the delivery task was handed no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBatch {
    /// The buffer was closed and everything in it has been handed out.
    Closed,
}

/// One stream's buffer, shared by the ingest handlers (writers) and the delivery task.
#[derive(Debug)]
pub struct StreamBuffer {
    settings: BufferSettings,
    chunk_size: usize,
    /// How records are framed as they arrive, decided once (see `BufferSettings::framer`).
    framer: Option<RecordFramer>,
    capacity: Arc<IngestCapacity>,
    state: Mutex<BufferState>,
    /// Wakes the delivery task: a batch was sealed, a batch got its first record (so its
    /// age deadline starts), or the buffer was closed.
    batch_ready: Notify,
}

#[derive(Debug)]
struct BufferState {
    open: OpenBatch,
    sealed: Option<SealedBatch>,
    closed: bool,
    /// Sequence number the next record gets (memory mode) or must have (spool mode).
    next_seq: u64,
    /// Batches journaled before a restart, to be rebuilt with exactly these boundaries.
    replay: VecDeque<SeqRange>,
}

/// Whether a record could be taken.
enum Pushed {
    /// Taken; `true` when the delivery task should look again.
    Taken(bool),
    /// The buffer is full.
    Full,
}

impl StreamBuffer {
    /// An empty buffer drawing on the process-wide `capacity`.
    pub fn new(settings: BufferSettings, capacity: Arc<IngestCapacity>) -> Self {
        // Chunks small enough that a batch spreads over every core, large enough that
        // per-chunk overhead (a sync flush, a pool hand-off) is negligible.
        let chunk_size = (settings.size_limit / 8).clamp(64 * 1024, 1024 * 1024);
        let chunk_size = settings.chunk_limit.unwrap_or(chunk_size);
        let framer = settings.framer();
        Self {
            settings,
            chunk_size,
            framer,
            capacity,
            state: Mutex::new(BufferState {
                open: OpenBatch::new(chunk_size, framer),
                sealed: None,
                closed: false,
                next_seq: 0,
                replay: VecDeque::new(),
            }),
            batch_ready: Notify::new(),
        }
    }

    /// An empty buffer with this one's settings, drawing on the same capacity: one per
    /// partition of a cluster stream held by this node.
    pub fn sibling(&self) -> Self {
        Self::new(self.settings.clone(), Arc::clone(&self.capacity))
    }

    /// Starts numbering at `next_seq` and rebuilds the journaled batches `replay` (in order,
    /// contiguous from `next_seq`) before forming new ones. Call before the first record.
    pub fn resume(&self, next_seq: u64, replay: Vec<SeqRange>) {
        let mut state = self.lock();
        state.next_seq = next_seq;
        state.replay = replay.into();
    }

    fn lock(&self) -> MutexGuard<'_, BufferState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // loses records (every update is a push or a swap), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds one record to the open batch, sealing it first when the record does not fit, or
    /// after it when it ends a journaled batch.
    fn push(
        &self,
        state: &mut BufferState,
        data: &[u8],
        arrival_ms: i64,
        arrived: Instant,
    ) -> Pushed {
        if !self.capacity.has_room_for_compression() {
            return Pushed::Full;
        }
        let seq = state.next_seq;
        let mut wake = state.open.is_empty();
        let replay_end = state.replay.front().map(|r| r.last);
        match replay_end {
            Some(last) if seq == last && state.sealed.is_some() => return Pushed::Full,
            Some(_) => {}
            None => {
                let framed = state.open.buffered_len(data, &self.settings);
                if !state.open.is_empty()
                    && state.open.raw_len() + framed > self.settings.size_limit
                {
                    if state.sealed.is_some() {
                        return Pushed::Full;
                    }
                    let full = std::mem::replace(&mut state.open, self.new_batch());
                    state.sealed = Some(full.seal(&self.settings, &self.capacity, false));
                    wake = true;
                }
            }
        }
        let settings = &self.settings;
        state
            .open
            .append(seq, data, arrival_ms, arrived, settings, &self.capacity);
        state.next_seq += 1;
        if replay_end == Some(seq) {
            state.replay.pop_front();
            let full = std::mem::replace(&mut state.open, self.new_batch());
            state.sealed = Some(full.seal(settings, &self.capacity, true));
            wake = true;
        }
        Pushed::Taken(wake)
    }

    /// Appends as many of `records` (in order) as fit now, numbering them and stamping them
    /// with `arrival_ms`; returns how many were taken. Never waits.
    pub fn try_append(&self, records: &[&[u8]], arrival_ms: i64) -> usize {
        self.try_append_numbered(records, arrival_ms).1
    }

    /// [`try_append`](Self::try_append), also returning the first record's number.
    fn try_append_numbered(&self, records: &[&[u8]], arrival_ms: i64) -> (u64, usize) {
        let state = self.lock();
        let first_seq = state.next_seq;
        let now = Instant::now();
        let taken = self.push_all(
            state,
            records
                .iter()
                .map(|record| (None, *record, arrival_ms, now)),
        );
        (first_seq, taken)
    }

    /// Ends the journaled batches that end before record `seq`: with gaps in the numbering,
    /// a batch may end on a number no record has, so the first record past it closes it
    /// (or drops it from the plan, when none of its records came). `Some(wake)` once none
    /// is left before `seq`; `None` when a sealed batch must be taken first.
    fn end_replay_before(&self, state: &mut BufferState, seq: u64) -> Option<bool> {
        let mut wake = false;
        while let Some(window) = state.replay.front().copied()
            && window.last < seq
        {
            if state.open.is_empty() {
                state.replay.pop_front();
                continue;
            }
            if state.sealed.is_some() {
                return None;
            }
            state.replay.pop_front();
            let full = std::mem::replace(&mut state.open, self.new_batch());
            state.sealed = Some(full.seal(&self.settings, &self.capacity, true));
            wake = true;
        }
        Some(wake)
    }

    /// Appends records read from the spool, from `chunk.records[from..]`, as many as fit now;
    /// returns how many were taken. Their age counts from their recorded arrival.
    pub fn try_append_spooled(&self, chunk: &RecordChunk, from: usize) -> usize {
        let now = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let records = chunk.records[from..]
            .iter()
            .map(|(seq, arrival_ms, range)| {
                let age = Duration::from_millis(now_ms.saturating_sub(*arrival_ms).max(0) as u64);
                let arrived = now.checked_sub(age).unwrap_or(now);
                (Some(*seq), &chunk.data[range.clone()], *arrival_ms, arrived)
            });
        self.push_all(self.lock(), records)
    }

    /// Pushes `(seq, data, arrival_ms, arrived)` records while they fit (spooled records
    /// bring their number; new ones are numbered here), then wakes the delivery task if a
    /// batch was sealed or started; returns how many were taken.
    fn push_all<'d>(
        &self,
        mut state: MutexGuard<'_, BufferState>,
        records: impl Iterator<Item = (Option<u64>, &'d [u8], i64, Instant)>,
    ) -> usize {
        if state.closed {
            return 0;
        }
        let mut taken = 0;
        let mut wake_delivery = false;
        for (seq, data, arrival_ms, arrived) in records {
            if let Some(seq) = seq {
                // In order; a partition of a cluster stream numbers its records with gaps.
                debug_assert!(seq >= state.next_seq, "spooled records arrive in order");
                state.next_seq = seq;
                match self.end_replay_before(&mut state, seq) {
                    Some(wake) => wake_delivery |= wake,
                    None => break,
                }
            }
            match self.push(&mut state, data, arrival_ms, arrived) {
                Pushed::Taken(wake) => wake_delivery |= wake,
                Pushed::Full => break,
            }
            taken += 1;
        }
        drop(state);
        if wake_delivery {
            self.batch_ready.notify_one();
        }
        taken
    }

    /// Appends `records`, waiting up to `wait` for space when the buffer is full; returns
    /// the first record's number and how many (a prefix) were taken.
    pub async fn append(&self, records: &[&[u8]], arrival_ms: i64, wait: Duration) -> (u64, usize) {
        let mut taken = 0;
        let first_seq = self
            .append_counted(records, arrival_ms, wait, &mut taken)
            .await;
        (first_seq, taken)
    }

    /// [`append`](Self::append), counting the records in `taken` as they are taken, so a
    /// caller whose wait is cancelled still knows how many went in; returns the first
    /// record's number.
    pub async fn append_counted(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        wait: Duration,
        taken: &mut usize,
    ) -> u64 {
        let deadline = Instant::now() + wait;
        let (first_seq, first) = self.try_append_numbered(records, arrival_ms);
        *taken = first;
        loop {
            if *taken == records.len() || self.is_closed() {
                return first_seq;
            }
            let freed = self.capacity.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            *taken += self.try_append(&records[*taken..], arrival_ms);
            if *taken == records.len() {
                return first_seq;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last try: space may have been freed just as the wait ran out.
                *taken += self.try_append(&records[*taken..], arrival_ms);
                return first_seq;
            }
        }
    }

    /// Appends every record of `chunk`, waiting for space as long as it takes; returns how
    /// many were taken (fewer only if the buffer was closed).
    pub async fn append_spooled(&self, chunk: &RecordChunk) -> usize {
        let mut taken = 0;
        loop {
            let freed = self.capacity.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            taken += self.try_append_spooled(chunk, taken);
            if taken == chunk.len() || self.is_closed() {
                return taken;
            }
            freed.await;
        }
    }

    /// A sealed batch of `records` (a batch read back from the spool), encoded again from
    /// the start: for a batch whose body could not be built the first time.
    pub fn rebuild(&self, records: &RecordChunk) -> SealedBatch {
        let mut open = self.new_batch();
        let now = Instant::now();
        for (seq, arrival_ms, span) in &records.records {
            let data = &records.data[span.clone()];
            open.append(*seq, data, *arrival_ms, now, &self.settings, &self.capacity);
        }
        open.seal(&self.settings, &self.capacity, true)
    }

    /// An empty open batch.
    fn new_batch(&self) -> OpenBatch {
        OpenBatch::new(self.chunk_size, self.framer)
    }

    /// Encoding faults to inject (tests only).
    pub fn faults(&self) -> Option<Arc<EncodeFaults>> {
        self.settings.faults.clone()
    }

    /// Whether the buffer was closed (the stream is stopping).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops taking records; the delivery task then drains what is buffered and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.batch_ready.notify_one();
        self.capacity.notify_freed();
    }

    /// Number of records buffered (open and sealed-but-not-taken).
    pub fn buffered_records(&self) -> u64 {
        let state = self.lock();
        state.open.records() + state.sealed.as_ref().map_or(0, SealedBatch::records)
    }

    /// Waits for the next batch to deliver: a sealed one, or the open one once its oldest
    /// record is `interval` old (at once when closed). While journaled batches are being
    /// rebuilt, only their exact boundaries seal; a partly rebuilt one is left to the spool
    /// at shutdown.
    pub async fn next_batch(&self) -> Result<SealedBatch, NoBatch> {
        loop {
            let notified = self.batch_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                if let Some(sealed) = state.sealed.take() {
                    drop(state);
                    self.capacity.notify_freed();
                    return Ok(sealed);
                }
                let replaying = !state.replay.is_empty();
                match state.open.oldest_instant() {
                    _ if replaying && state.closed => return Err(NoBatch::Closed),
                    Some(_) if replaying => None,
                    Some(oldest)
                        if state.closed || oldest + self.settings.interval <= Instant::now() =>
                    {
                        let open = std::mem::replace(&mut state.open, self.new_batch());
                        drop(state);
                        self.capacity.notify_freed();
                        return Ok(open.seal(&self.settings, &self.capacity, false));
                    }
                    Some(oldest) => Some(oldest + self.settings.interval),
                    None if state.closed => return Err(NoBatch::Closed),
                    None => None,
                }
            };
            match deadline {
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests;
