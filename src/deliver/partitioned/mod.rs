//! Delivery of a stream with dynamic partitioning. The stream's buffer forms short windows
//! of records whose chunks are transformed, split by partition and encoded on the CPU pool;
//! the router here hands each partition's pieces to that partition's own buffer, which
//! becomes a batch when it reaches `buffer.size_mib` or its oldest record is
//! `buffer.interval_seconds` old, as Firehose buffers each partition.
//!
//! Exactly once: a partition's batch is journaled (partition, first record, last record)
//! before it is written and named from that, its records are that partition's records in
//! the range, and the spool's checkpoint never passes the oldest record still buffered or
//! being written in any partition. After a restart the records past the checkpoint are
//! routed again with the journal's help (see [`replay`]), so each batch is rebuilt under
//! the same name and a delivered one is not written twice.

mod open;
mod replay;

pub use replay::ReplayPlan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;
use tokio::sync::{Semaphore, mpsc};

use super::DeliveryLoop;
use super::{DurableLog, JournalError};
use crate::buffer::{Assembled, NoBatch, PartitionPiece, SealedBatch, WindowPieces, assemble};
use crate::spool::{PartEntry, SeqRange, WINDOW_FAILED, WINDOW_FAILURES};
use open::{OpenPartition, OpenPartitions, part_id};
use replay::PartRole;

/// Partition batches written at once.
const BATCHES_IN_FLIGHT: usize = 8;

/// Sealed partition batches (written or waiting to be) past which no new window is taken,
/// so a slow destination slows producers instead of filling memory.
const BATCHES_QUEUED: usize = 2 * BATCHES_IN_FLIGHT;

/// The longest a window of records waits before it is split into partitions: how late,
/// at most, a record reaches its partition's buffer.
pub const WINDOW_INTERVAL: Duration = Duration::from_secs(1);

/// The most bytes of records a window holds (less when `buffer.size_mib` is smaller).
pub const WINDOW_SIZE: usize = 8 << 20;

/// What happens to a record of a new partition when the stream already buffers
/// `max_active_partitions` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// It goes to the error output as `DynamicPartitioning.ActivePartitionsLimitExceeded`
    /// (Firehose's behaviour).
    ErrorOutput,
    /// The stream waits for a partition to close by its own size or age; meanwhile its
    /// buffer fills and producers are told "Slow down.".
    Backpressure,
}

/// How a partitioned stream buffers its partitions.
#[derive(Debug)]
pub struct PartitionSettings {
    /// A partition becomes a batch at this many bytes of records.
    pub size_limit: usize,
    /// ... or when its oldest record is this old.
    pub interval: Duration,
    /// Partitions buffering at once.
    pub max_active: usize,
    /// What a record of one more partition meets.
    pub on_limit: OnLimit,
    /// Memory all partitions' pieces may hold together (compressed bytes, Arrow columns);
    /// past it the largest becomes a batch early.
    pub max_buffered: usize,
    /// The batches journaled before a restart.
    pub replay: ReplayPlan,
}

impl PartitionSettings {
    /// The same settings, rebuilding the batches `replay` names (a cluster partition's run).
    pub fn with_replay(&self, replay: ReplayPlan) -> Self {
        Self {
            size_limit: self.size_limit,
            interval: self.interval,
            max_active: self.max_active,
            on_limit: self.on_limit,
            max_buffered: self.max_buffered,
            replay,
        }
    }
}

/// Delivers a partitioned stream's records until its buffer is closed and drained.
pub(super) async fn run(
    delivery: Arc<DeliveryLoop>,
    settings: PartitionSettings,
    stop: super::StopSignal,
) {
    let Some(log) = delivery.spool.clone() else {
        tracing::error!(stream = %delivery.stream, "dynamic partitioning needs a durable log; the stream delivers nothing");
        return;
    };
    let (done, finished) = mpsc::unbounded_channel();
    let start = log.resume_seq().await;
    Router {
        delivery,
        log,
        settings,
        open: OpenPartitions::default(),
        outstanding: BTreeSet::new(),
        next_unrouted: start,
        checkpointed: start,
        sealed: 0,
        done,
        finished,
        writers: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT)),
    }
    .run(stop)
    .await;
}

/// Routes windows into partitions, seals partitions into batches, and moves the checkpoint.
struct Router {
    delivery: Arc<DeliveryLoop>,
    /// The stream's spool, or its cluster partition: the journal and checkpoint.
    log: DurableLog,
    settings: PartitionSettings,
    open: OpenPartitions,
    /// First records of the partitions buffering or being written (a record belongs to one
    /// partition, so no two share one): the checkpoint stays before the smallest.
    outstanding: BTreeSet<u64>,
    /// The first record not yet routed.
    next_unrouted: u64,
    /// The first record not known delivered, as the journal says.
    checkpointed: u64,
    /// Batches sealed and not yet delivered.
    sealed: usize,
    /// Where a written batch reports its first record.
    done: mpsc::UnboundedSender<u64>,
    finished: mpsc::UnboundedReceiver<u64>,
    writers: Arc<Semaphore>,
}

impl Router {
    async fn run(mut self, mut stop: super::StopSignal) {
        let mut windows_done = false;
        // Once stopped for a restart: no more windows or sealing; the batches being written
        // finish, and the open partitions are left to the spool.
        let mut stopping = false;
        while !(windows_done && self.sealed == 0) {
            let due = self
                .open
                .next_due_ms(self.settings.interval)
                .map(instant_of_ms)
                .filter(|_| !stopping);
            let take_window = !windows_done && self.sealed < BATCHES_QUEUED;
            tokio::select! {
                () = stop.requested(), if !stopping => {
                    stopping = true;
                    windows_done = true;
                }
                Some(first) = self.finished.recv() => self.finished(first),
                window = self.delivery.buffer.next_batch(), if take_window => match window {
                    Ok(window) => self.route(window).await,
                    Err(NoBatch::Closed) => {
                        windows_done = true;
                        for part in self.open.closable() {
                            self.seal(part);
                        }
                    }
                },
                () = sleep_until_opt(due), if due.is_some() => self.seal_due(),
            }
            self.checkpoint().await;
            self.publish();
        }
        if stopping {
            tracing::debug!(stream = %self.delivery.stream, "partitioned delivery stopped for a restart");
        } else {
            tracing::debug!(stream = %self.delivery.stream, "partitioned delivery drained and stopped");
        }
    }

    /// Hands the partitions of `window` their pieces; writes its refused records to the
    /// error output; seals the partitions that became batches.
    async fn route(&mut self, window: SealedBatch) {
        let range = window.range();
        let oldest = time_of_ms(window.oldest_arrival_ms());
        // The checkpoint moves only after this returns, once the window is wholly routed.
        self.next_unrouted = range.last + 1;
        if let Some(record) = self.settings.replay.failed(range) {
            // It could not be encoded before the restart, and its records went to the
            // error output: the same again.
            let delivered = record.delivered;
            drop(window);
            if !delivered {
                self.write_window_failed(
                    range,
                    oldest,
                    "the window could not be encoded before the restart",
                )
                .await;
            }
            return;
        }
        let built = self
            .delivery
            .build_with_retries(window, SealedBatch::into_pieces)
            .await;
        let WindowPieces {
            failed,
            dropped,
            pieces,
        } = match built {
            Ok(pieces) => pieces,
            Err(failure) => {
                self.write_window_failed(range, oldest, &failure.to_string())
                    .await;
                return;
            }
        };
        self.delivery.count_dropped(dropped);
        let journaled = self.settings.replay.failures(range).cloned();
        let mut over_limit: Vec<(u64, Vec<u64>)> = Vec::new();
        for piece in pieces {
            let Some(keys) = &piece.keys else { continue };
            if piece.seqs.is_empty() {
                continue;
            }
            let part = part_id(keys);
            match self.settings.replay.role(part, range) {
                PartRole::Delivered => {}
                PartRole::Rebuild(batch) => {
                    if self
                        .open
                        .get(part)
                        .is_some_and(|p| p.replaying != Some(batch))
                    {
                        self.seal(part);
                    }
                    self.add(part, piece, Some(batch));
                }
                PartRole::New => {
                    if self.open.get(part).is_some_and(|p| p.replaying.is_some()) {
                        self.seal(part);
                    }
                    let is_open = self.open.get(part).is_some();
                    let admitted = match &journaled {
                        // As decided before the restart.
                        Some(record) => !record.entry.over_limit.contains(&part),
                        None => is_open || self.admit().await,
                    };
                    if admitted {
                        self.add(part, piece, None);
                    } else {
                        match over_limit.iter_mut().find(|(p, _)| *p == part) {
                            Some((_, seqs)) => seqs.extend(piece.seqs),
                            None => over_limit.push((part, piece.seqs)),
                        }
                    }
                }
            }
        }
        let written_before = journaled.as_ref().is_some_and(|r| r.delivered);
        if (!failed.is_empty() || !over_limit.is_empty()) && !written_before {
            self.write_window_failures(range, oldest, failed, over_limit)
                .await;
        }
        for part in self.open.rebuilt(range.last) {
            self.seal(part);
        }
        for part in self.open.full(self.settings.size_limit) {
            self.seal(part);
        }
        while self.open.buffered() > self.settings.max_buffered {
            let Some(part) = self.open.largest() else {
                break;
            };
            self.seal(part);
        }
        // The log cannot drop records older than the oldest one buffered: when it fills,
        // the partition holding the checkpoint closes early.
        if self.log.is_filling()
            && let Some(part) = self.open.oldest()
        {
            self.seal(part);
        }
    }

    /// Adds `piece` to partition `part`.
    fn add(&mut self, part: u64, piece: PartitionPiece, replaying: Option<SeqRange>) {
        let first = piece.seqs[0];
        if self.open.add(part, piece, replaying) {
            self.outstanding.insert(first);
        }
    }

    /// Whether a new partition may open; with `on_limit: backpressure`, waits until one
    /// closes by its own size or age.
    async fn admit(&mut self) -> bool {
        if self.open.len() < self.settings.max_active {
            return true;
        }
        if self.settings.on_limit == OnLimit::ErrorOutput {
            return false;
        }
        while self.open.len() >= self.settings.max_active {
            if self.delivery.buffer.is_closed() {
                if let Some(part) = self.open.oldest() {
                    self.seal(part);
                    continue;
                }
                break;
            }
            let Some(due) = self.open.next_due_ms(self.settings.interval) else {
                break;
            };
            // Look again at least every second, in case the stream is stopping.
            let wake = instant_of_ms(due).min(tokio::time::Instant::now() + WINDOW_INTERVAL);
            tokio::time::sleep_until(wake).await;
            self.seal_due();
        }
        true
    }

    /// Seals the partitions whose oldest record is `interval` old.
    fn seal_due(&mut self) {
        let now_ms = Utc::now().timestamp_millis();
        for part in self.open.due(self.settings.interval, now_ms) {
            self.seal(part);
        }
    }

    /// Closes partition `part` and writes its batch.
    fn seal(&mut self, part: u64) {
        let Some(partition) = self.open.take(part) else {
            return;
        };
        self.sealed += 1;
        let delivery = Arc::clone(&self.delivery);
        let log = self.log.clone();
        let writers = Arc::clone(&self.writers);
        let done = self.done.clone();
        tokio::spawn(async move {
            let _writing = writers.acquire_owned().await;
            let first = partition.first_seq;
            deliver_partition(&delivery, &log, part, partition).await;
            let _ = done.send(first);
        });
    }

    /// A partition's batch starting at `first` is delivered.
    fn finished(&mut self, first: u64) {
        self.sealed -= 1;
        self.outstanding.remove(&first);
    }

    /// Moves the checkpoint up to the oldest record still buffered or being written.
    async fn checkpoint(&mut self) {
        let first_undelivered = self
            .outstanding
            .first()
            .map_or(self.next_unrouted, |&first| first.min(self.next_unrouted));
        if first_undelivered <= self.checkpointed {
            return;
        }
        match self.log.record_checkpoint(first_undelivered - 1).await {
            Ok(()) => self.checkpointed = first_undelivered,
            Err(JournalError::Fenced) => {
                tracing::info!(stream = %self.delivery.stream, "the partition is delivered by another node now; its checkpoint stays");
                self.checkpointed = u64::MAX;
            }
            Err(error) => {
                tracing::error!(stream = %self.delivery.stream, through = first_undelivered - 1, "cannot advance the checkpoint (the records will be checked again after a restart): {error}")
            }
        }
    }

    fn publish(&self) {
        let counters = &self.delivery.counters;
        counters
            .active_partitions
            .store(self.open.len() as u64, Ordering::Relaxed);
        counters
            .partition_buffered_bytes
            .store(self.open.buffered() as u64, Ordering::Relaxed);
    }

    /// Writes the records of `window` that were refused, and those of partitions over the
    /// limit, to the error output; journaled around it, so a restart forms the same window,
    /// decides the same and overwrites the same objects.
    async fn write_window_failures(
        &mut self,
        window: SeqRange,
        oldest: DateTime<Utc>,
        failed: Vec<crate::buffer::FailedRecord>,
        over_limit: Vec<(u64, Vec<u64>)>,
    ) {
        let entry = PartEntry {
            range: window,
            part: WINDOW_FAILURES,
            over_limit: over_limit.iter().map(|(part, _)| *part).collect(),
        };
        if !self.delivery.journal_part(&self.log, &entry, false).await {
            return;
        }
        self.delivery
            .write_failures(failed, window, oldest, WriteMode::Overwrite)
            .await;
        if !over_limit.is_empty() {
            let partitions = over_limit.len();
            let mut seqs: Vec<u64> = over_limit.into_iter().flat_map(|(_, s)| s).collect();
            seqs.sort_unstable();
            self.delivery
                .write_over_limit(&seqs, partitions, window, oldest, WriteMode::Overwrite)
                .await;
        }
        self.delivery.journal_part(&self.log, &entry, true).await;
    }

    /// Sends every record of `window`, which could not be encoded, to the error output.
    async fn write_window_failed(&mut self, window: SeqRange, oldest: DateTime<Utc>, why: &str) {
        let entry = PartEntry {
            range: window,
            part: WINDOW_FAILED,
            over_limit: Vec::new(),
        };
        if !self.delivery.journal_part(&self.log, &entry, false).await {
            return;
        }
        self.delivery
            .write_unbuildable(&self.log, window, oldest, why, None)
            .await;
        self.delivery.journal_part(&self.log, &entry, true).await;
    }
}

/// Journals, puts together and writes one partition's batch; when it cannot be put
/// together, its records go to the error output.
async fn deliver_partition(
    delivery: &DeliveryLoop,
    log: &DurableLog,
    part: u64,
    partition: OpenPartition,
) {
    let range = partition.range();
    let entry = PartEntry {
        range,
        part,
        over_limit: Vec::new(),
    };
    if !delivery.journal_part(log, &entry, false).await {
        // Another node delivers the stream's partition now, this batch included.
        return;
    }
    let OpenPartition {
        keys,
        pieces,
        seqs,
        oldest_ms,
        ..
    } = partition;
    let oldest = time_of_ms(oldest_ms);
    let id = BatchId {
        run: delivery.run,
        first_seq: range.first,
        last_seq: range.last,
        oldest_ms,
        partition: Some(keys),
    };
    let destination = Arc::clone(&delivery.seam.destination);
    match assemble(destination, id, pieces, delivery.buffer.faults()).await {
        Ok(batch) => {
            let assembled = Assembled {
                batch,
                records: Some(seqs),
            };
            delivery
                .deliver_through_seam(&delivery.seam, assembled, range, oldest)
                .await;
        }
        Err(failure) => {
            let failure = failure.for_records(seqs.len() as u64);
            tracing::error!(stream = %delivery.stream, first_seq = range.first, last_seq = range.last, "{failure}; sending the partition's records to the error output");
            delivery
                .write_unbuildable(log, range, oldest, &failure.to_string(), Some(&seqs))
                .await;
        }
    }
    delivery.journal_part(log, &entry, true).await;
}

/// The instant Unix time `ms` is (now, when it has passed).
fn instant_of_ms(ms: i64) -> tokio::time::Instant {
    let wait = ms.saturating_sub(Utc::now().timestamp_millis()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// Unix time `ms` (now, when out of range).
fn time_of_ms(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

/// Sleeps until `deadline` (forever without one).
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
