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
pub use open_batch::{BatchFailure, SealedBatch};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::compress::Codec;
use crate::encode::RecordFramer;
use open_batch::OpenBatch;

/// Thresholds and codecs of one stream's buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufferSettings {
    /// Flush when this many framed, uncompressed bytes are buffered.
    pub size_limit: usize,
    /// Flush when the oldest buffered record is this old.
    pub interval: Duration,
    /// Record layout.
    pub framer: RecordFramer,
    /// Whole-object compression.
    pub codec: Codec,
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
}

impl StreamBuffer {
    /// An empty buffer drawing on the process-wide `capacity`.
    pub fn new(settings: BufferSettings, capacity: Arc<IngestCapacity>) -> Self {
        // Chunks small enough that a batch spreads over every core, large enough that
        // per-chunk overhead (a sync flush, a pool hand-off) is negligible.
        let chunk_size = (settings.size_limit / 8).clamp(64 * 1024, 1024 * 1024);
        Self {
            settings,
            chunk_size,
            capacity,
            state: Mutex::new(BufferState {
                open: OpenBatch::new(chunk_size),
                sealed: None,
                closed: false,
            }),
            batch_ready: Notify::new(),
        }
    }

    /// The settings this buffer was created with.
    pub fn settings(&self) -> &BufferSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, BufferState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // loses records (every update is a push or a swap), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends as many of `records` (in order) as fit now, stamped with `arrival_ms`;
    /// returns how many were taken. Never waits.
    pub fn try_append(&self, records: &[&[u8]], arrival_ms: i64) -> usize {
        let mut state = self.lock();
        if state.closed {
            return 0;
        }
        let mut taken = 0;
        let mut wake_delivery = false;
        for record in records {
            if !self.capacity.has_room_for_compression() && !self.settings.codec.is_identity() {
                break;
            }
            let framed = self.settings.framer.framed_len(record);
            if !state.open.is_empty() && state.open.raw_len() + framed > self.settings.size_limit {
                if state.sealed.is_some() {
                    break;
                }
                let full = std::mem::replace(&mut state.open, OpenBatch::new(self.chunk_size));
                state.sealed = Some(full.seal(self.settings.codec, &self.capacity));
                wake_delivery = true;
            }
            if state.open.is_empty() {
                wake_delivery = true;
            }
            state.open.append(
                record,
                arrival_ms,
                &self.settings.framer,
                self.settings.codec,
                &self.capacity,
            );
            taken += 1;
        }
        drop(state);
        if wake_delivery {
            self.batch_ready.notify_one();
        }
        taken
    }

    /// Appends `records`, waiting up to `wait` for space when the buffer is full; returns
    /// how many (a prefix) were taken.
    pub async fn append(&self, records: &[&[u8]], arrival_ms: i64, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut taken = 0;
        loop {
            let freed = self.capacity.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            taken += self.try_append(&records[taken..], arrival_ms);
            if taken == records.len() || self.is_closed() {
                return taken;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last try: space may have been freed just as the wait ran out.
                return taken + self.try_append(&records[taken..], arrival_ms);
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops taking records; the delivery task then drains what is buffered and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.batch_ready.notify_one();
    }

    /// Number of records buffered (open and sealed-but-not-taken).
    pub fn buffered_records(&self) -> u64 {
        let state = self.lock();
        state.open.records() + state.sealed.as_ref().map_or(0, SealedBatch::records)
    }

    /// Waits for the next batch to deliver: a sealed one, or the open one once its oldest
    /// record is `interval` old (at once when closed).
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
                match state.open.oldest_instant() {
                    Some(oldest)
                        if state.closed || oldest + self.settings.interval <= Instant::now() =>
                    {
                        let open =
                            std::mem::replace(&mut state.open, OpenBatch::new(self.chunk_size));
                        drop(state);
                        self.capacity.notify_freed();
                        return Ok(open.seal(self.settings.codec, &self.capacity));
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
