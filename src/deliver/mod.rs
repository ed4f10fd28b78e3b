//! The delivery loop of one stream: take the next batch, have its destination put it
//! together, deliver it through the seam with retries until the destination confirms, and
//! send what could not be delivered to the error output.

mod batch_body;
mod durable;
mod error_output;
mod health;
mod partitioned;
mod refusals;
mod seam;

pub use batch_body::ENCODE_FAILED;
pub use durable::{DurableLog, JournalError};
pub use health::{DeliveryHealth, HealthSnapshot};
pub use partitioned::{OnLimit, PartitionSettings, ReplayPlan, WINDOW_INTERVAL, WINDOW_SIZE};
pub use refusals::{Refusal, SourceRefusals};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::object::{ObjectKeyBuilder, batch_seed};
use hydrant_sinks::prelude::*;

use crate::buffer::{BatchBody, SealedBatch, StreamBuffer};
use crate::spool::{PartEntry, SeqRange};

/// Running totals of one stream: the one place they are counted, read by the stats
/// endpoint and published as Prometheus metrics when scraped.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Records acknowledged to producers.
    pub accepted: AtomicU64,
    /// Bytes of those records, as sent.
    pub accepted_bytes: AtomicU64,
    /// Puts that got an answer and had at least one record taken.
    pub put_requests: AtomicU64,
    /// Records refused ("Slow down." or a spool write failure).
    pub refused: AtomicU64,
    /// Records written to the destination.
    pub records: AtomicU64,
    /// Objects written.
    pub objects: AtomicU64,
    /// Bytes of objects written (after compression).
    pub bytes: AtomicU64,
    /// Records sent to an error output (any type).
    pub error_output_records: AtomicU64,
    /// Objects written to the backup destination (error output and `backup.mode: all`).
    pub backup_objects: AtomicU64,
    /// Their bytes.
    pub backup_bytes: AtomicU64,
    /// Failed writes to the backup destination (each retried until it is taken).
    pub backup_failed_attempts: AtomicU64,
    /// Requests sent to the destination and answered (or timed out).
    pub attempts: AtomicU64,
    /// Failed write attempts.
    pub failed_attempts: AtomicU64,
    /// Records sent to the `format-conversion-failed` error output.
    pub conversion_failures: AtomicU64,
    /// Records of the batch being written right now.
    pub in_flight_records: AtomicU64,
    /// Records a transform dropped on purpose.
    pub dropped_records: AtomicU64,
    /// Records sent to the `processing-failed` error output.
    pub processing_failures: AtomicU64,
    /// Records sent to the `partitioning-failed` error output (keys that could not be
    /// extracted, partitions beyond the limit).
    pub partitioning_failures: AtomicU64,
    /// Partitions buffering records now (dynamic partitioning only).
    pub active_partitions: AtomicU64,
    /// Bytes of records buffered in those partitions.
    pub partition_buffered_bytes: AtomicU64,
}

/// Everything the delivery loop of one stream needs.
pub struct DeliveryLoop {
    /// Stream name, for logs.
    pub stream: String,
    /// Where batches come from.
    pub buffer: Arc<StreamBuffer>,
    /// Where the error output and backups go.
    pub sink: Arc<dyn ObjectSink>,
    /// Key naming of backup objects.
    pub keys: ObjectKeyBuilder,
    /// Key naming of error output objects.
    pub error_keys: ObjectKeyBuilder,
    /// How long a failing batch is retried before it goes to the error output.
    pub retry_duration: Duration,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Totals, shared with the API.
    pub counters: Arc<DeliveryCounters>,
    /// How deliveries are going, shared with the API.
    pub health: Arc<DeliveryHealth>,
    /// Where the stream's records are kept (the local spool, or a partition on the
    /// cluster): batches are journaled before they are written, keys derive from their
    /// record range, writes never replace, and the checkpoint advances on success. `None`
    /// when the spool is disabled.
    pub spool: Option<DurableLog>,
    /// The destination, behind the seam.
    pub seam: crate::config::SeamDestination,
    /// The stream's log incarnation (the first half of its record ids): names batches.
    pub run: u64,
    /// How partitions buffer, for a stream with dynamic partitioning.
    pub partitions: Option<PartitionSettings>,
    /// Asks the loop to stop after what it is writing (a reload restarting the stream).
    pub stop: StopSignal,
}

/// Asks a delivery loop to stop once the batches it is writing are written, leaving the
/// rest in the spool: a reload restarts the stream with its new settings from there.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Option<tokio::sync::watch::Receiver<bool>>);

impl StopSignal {
    /// A signal and the sender that raises it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (raise, signal) = tokio::sync::watch::channel(false);
        (raise, Self(Some(signal)))
    }

    /// Resolves once a stop is asked for; never when it cannot be.
    pub async fn requested(&mut self) {
        if let Some(signal) = &mut self.0
            && signal.wait_for(|stop| *stop).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

impl DeliveryLoop {
    /// A loop like this one delivering one partition of a cluster stream: batches come
    /// from `buffer`, are journaled in `partition`'s lease, and stop on `stop`; with
    /// dynamic partitioning, `partitions` buffers the stream's own partitions.
    pub fn for_partition(
        &self,
        buffer: Arc<StreamBuffer>,
        partition: Arc<crate::cluster::PartitionLog>,
        stop: StopSignal,
        partitions: Option<PartitionSettings>,
    ) -> Self {
        Self {
            stream: self.stream.clone(),
            buffer,
            sink: Arc::clone(&self.sink),
            keys: self.keys.clone(),
            error_keys: self.error_keys.clone(),
            retry_duration: self.retry_duration,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            counters: Arc::clone(&self.counters),
            health: Arc::clone(&self.health),
            spool: Some(DurableLog::Partition(partition)),
            seam: self.seam.clone(),
            run: self.run,
            partitions,
            stop,
        }
    }

    /// Delivers batches until the buffer is closed and drained.
    pub async fn run(mut self) {
        let mut stop = std::mem::take(&mut self.stop);
        if let Some(settings) = self.partitions.take() {
            return partitioned::run(Arc::new(self), settings, stop).await;
        }
        loop {
            let next = tokio::select! {
                biased;
                () = stop.requested() => {
                    tracing::debug!(stream = %self.stream, "delivery loop stopped for a restart");
                    return;
                }
                next = self.buffer.next_batch() => next,
            };
            let Ok(batch) = next else { break };
            self.deliver(batch).await;
            self.counters.in_flight_records.store(0, Ordering::Relaxed);
        }
        tracing::debug!(stream = %self.stream, "delivery loop drained and stopped");
    }

    async fn deliver(&self, batch: SealedBatch) {
        let records = batch.records();
        self.counters
            .in_flight_records
            .store(records, Ordering::Relaxed);
        let oldest = DateTime::<Utc>::from_timestamp_millis(batch.oldest_arrival_ms())
            .unwrap_or_else(Utc::now);
        let range = batch.range();
        let Some(BatchBody {
            failed,
            dropped,
            assembled,
        }) = self.build_body(batch, oldest).await
        else {
            return;
        };
        let mode = self.write_mode();
        if !self.journal(range).await {
            return;
        }
        self.count_dropped(dropped);
        // Records refused by a transform or by the destination's format go to their
        // stage's error output.
        self.write_failures(failed, range, oldest, mode).await;
        self.deliver_through_seam(&self.seam, assembled, range, oldest)
            .await;
        self.checkpoint(range).await;
    }

    /// Counts records a transform dropped on purpose.
    fn count_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.counters
                .dropped_records
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// The randomness of batch `range`'s object keys: with a spool, seeded from the range
    /// (and `salt`, one per kind of object), so a replay names the same key.
    fn batch_rng(&self, salt: u64, range: SeqRange) -> fastrand::Rng {
        match &self.spool {
            Some(spool) => {
                fastrand::Rng::with_seed(batch_seed(spool.seed() ^ salt, range.first, range.last))
            }
            None => fastrand::Rng::new(),
        }
    }

    /// How a batch's objects are written: with a spool, never over an object a run before
    /// a crash wrote (its key is the same); without one, keys are random anyway.
    fn write_mode(&self) -> WriteMode {
        match &self.spool {
            Some(_) => WriteMode::CreateOnly,
            None => WriteMode::Overwrite,
        }
    }

    /// Durably records, before anything of batch `range` is written, that it is one batch,
    /// so a restart rebuilds it with the same boundaries (and object keys). `false` when
    /// this node no longer delivers the batch's partition: nothing of it may be written.
    async fn journal(&self, range: SeqRange) -> bool {
        let Some(spool) = &self.spool else {
            return true;
        };
        self.until_journaled(range, || spool.record_sealed(range))
            .await
    }

    /// Durably records, before anything of a partition's batch (or a window's error output)
    /// is written, that it is one batch, or (`delivered`) that it was written; `false` when
    /// this node no longer delivers the stream's partition.
    async fn journal_part(&self, log: &DurableLog, entry: &PartEntry, delivered: bool) -> bool {
        self.until_journaled(entry.range, || log.journal_part(entry, delivered))
            .await
    }

    /// Runs journal write `write` (about batch `range`) until it succeeds, backing off;
    /// `false` when it never can, because this node no longer delivers the batch's partition.
    async fn until_journaled<F, Fut>(&self, range: SeqRange, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), JournalError>>,
    {
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        loop {
            match write().await {
                Ok(()) => return true,
                Err(JournalError::Fenced) => {
                    tracing::info!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "the partition is delivered by another node now; leaving the batch to it");
                    return false;
                }
                Err(JournalError::Retry(error)) => {
                    let delay = backoff.next_delay();
                    tracing::error!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "cannot journal the batch; will retry: {error}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Moves the spool's checkpoint past the delivered batch `range`.
    pub(super) async fn checkpoint(&self, range: SeqRange) {
        if let Some(spool) = &self.spool
            && let Err(error) = spool.record_delivered(range).await
        {
            if matches!(error, JournalError::Fenced) {
                tracing::info!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "delivered a batch of a partition another node holds now; it writes the batch again under the same names");
                return;
            }
            tracing::error!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "cannot advance the checkpoint (the batch will be checked again after a restart): {error}");
        }
    }
}

#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;
