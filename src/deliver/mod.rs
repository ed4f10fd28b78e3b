//! The delivery loop of one stream: take the next batch, build its object, write it with
//! retries until the destination confirms.

pub mod object_key;

mod batch_body;
mod error_output;
mod seam;

pub use batch_body::ENCODE_FAILED;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use error_output::{BatchErrorReason, OBJECT_STORE_FAILED};
use hydrant_sinks::driver::drive;
use hydrant_sinks::object::{ObjectBatch, ObjectWrite};
use hydrant_sinks::prelude::*;

use crate::buffer::{BatchBody, FailedRecord, SealedBatch, StreamBuffer};
use crate::spool::{SeqRange, StreamSpool};
use crate::transform::TRANSFORM_CODE_PREFIX;
use object_key::{ObjectKeyBuilder, batch_seed};

/// Running totals of one stream: the one place they are counted, read by the stats
/// endpoint and published as Prometheus metrics when scraped.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Records acknowledged to producers.
    pub accepted: AtomicU64,
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
}

/// Everything the delivery loop of one stream needs.
pub struct DeliveryLoop {
    /// Stream name, for logs.
    pub stream: String,
    /// Where batches come from.
    pub buffer: Arc<StreamBuffer>,
    /// Where objects go.
    pub sink: Arc<dyn ObjectSink>,
    /// Key naming.
    pub keys: ObjectKeyBuilder,
    /// Key naming of error output objects.
    pub error_keys: ObjectKeyBuilder,
    /// How long a failing batch is retried before it goes to the error output.
    pub retry_duration: Duration,
    /// `Content-Type` of objects.
    pub content_type: &'static str,
    /// `Content-Encoding` of objects.
    pub content_encoding: Option<&'static str>,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Totals, shared with the API.
    pub counters: Arc<DeliveryCounters>,
    /// The stream's spool: batches are journaled before they are written, keys derive from
    /// their record range, writes never replace, and the checkpoint advances on success.
    /// `None` when the spool is disabled.
    pub spool: Option<Arc<StreamSpool>>,
    /// A destination behind the seam; `sink` then only takes backups and the error output.
    pub seam: Option<crate::config::SeamDestination>,
    /// The stream's log incarnation (the first half of its record ids): names batches.
    pub run: u64,
}

impl DeliveryLoop {
    /// Delivers batches until the buffer is closed and drained.
    pub async fn run(self) {
        while let Ok(batch) = self.buffer.next_batch().await {
            self.deliver(batch).await;
            self.counters.in_flight_records.store(0, Ordering::Relaxed);
        }
        tracing::debug!(stream = %self.stream, "delivery loop drained and stopped");
    }

    async fn deliver(&self, batch: SealedBatch) {
        let records = batch.records();
        let raw_len = batch.raw_len();
        self.counters
            .in_flight_records
            .store(records, Ordering::Relaxed);
        let oldest = DateTime::<Utc>::from_timestamp_millis(batch.oldest_arrival_ms())
            .unwrap_or_else(Utc::now);
        let range = batch.range();
        let Some(BatchBody {
            parts,
            mut failed,
            dropped,
            assembled,
        }) = self.build_body(batch, oldest).await
        else {
            return;
        };
        let mode = self.write_mode();
        self.journal(range).await;
        if dropped > 0 {
            self.counters
                .dropped_records
                .fetch_add(dropped, Ordering::Relaxed);
        }
        // Records a transform failed have their own error output type.
        let processing_failed: Vec<FailedRecord> = failed
            .extract_if(.., |f| f.error.code.starts_with(TRANSFORM_CODE_PREFIX))
            .collect();
        if !processing_failed.is_empty() {
            self.write_processing_failures(&processing_failed, range, oldest, mode)
                .await;
        }
        let records = records - dropped - processing_failed.len() as u64;
        if let (Some(seam), Some(assembled)) = (&self.seam, assembled) {
            // Records the destination refused while encoding go to the conversion output.
            if !failed.is_empty() {
                self.write_conversion_failures(&failed, range, oldest, mode)
                    .await;
            }
            self.deliver_through_seam(seam, assembled, range, oldest)
                .await;
            self.checkpoint(range).await;
            return;
        }
        if !failed.is_empty() {
            self.write_conversion_failures(&failed, range, oldest, mode)
                .await;
        }
        let object = EncodedObject {
            key: self.keys.key(oldest, &mut self.batch_rng(0, range)),
            parts,
            content_type: self.content_type,
            content_encoding: self.content_encoding,
        };
        let good = records - failed.len() as u64;
        let written = good == 0
            || self
                .write_object(object, mode, range, oldest, good, raw_len)
                .await;
        if !written {
            // Sent to the error output, which moved the checkpoint on.
            return;
        }
        self.checkpoint(range).await;
    }

    /// The randomness of batch `range`'s object keys: with a spool, seeded from the range
    /// (and `salt`, one per kind of object), so a replay names the same key.
    fn batch_rng(&self, salt: u64, range: SeqRange) -> fastrand::Rng {
        match &self.spool {
            Some(spool) => fastrand::Rng::with_seed(batch_seed(
                spool.incarnation() ^ salt,
                range.first,
                range.last,
            )),
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
    /// so a restart rebuilds it with the same boundaries (and object keys).
    async fn journal(&self, range: SeqRange) {
        if let Some(spool) = &self.spool {
            let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
            while let Err(error) = spool.record_sealed(range).await {
                let delay = backoff.next_delay();
                tracing::error!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "cannot journal the batch before writing it; will retry: {error}");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Moves the spool's checkpoint past the delivered batch `range`.
    pub(super) async fn checkpoint(&self, range: SeqRange) {
        if let Some(spool) = &self.spool
            && let Err(error) = spool.record_delivered(range).await
        {
            tracing::error!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "cannot advance the checkpoint (the batch will be checked again after a restart): {error}");
        }
    }

    /// Writes `object` with the shared retry driver until the destination confirms
    /// (`true`), or, with a spool, until the retry duration runs out and the batch went to
    /// the error output (`false`).
    async fn write_object(
        &self,
        object: EncodedObject,
        mode: WriteMode,
        range: SeqRange,
        oldest: DateTime<Utc>,
        records: u64,
        raw_len: usize,
    ) -> bool {
        let writer = Arc::new(ObjectWrite::new(Arc::clone(&self.sink)));
        let batch = Arc::new(ObjectBatch {
            object,
            mode,
            first_seq: range.first,
            oldest_ms: oldest.timestamp_millis(),
        });
        let policy = RetryPolicy {
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            give_up_after: self.spool.as_ref().map(|_| self.retry_duration),
            concurrency: 1,
            // The store's own request timeouts end a hung request; a multipart upload of a
            // large object may take long.
            attempt_timeout: OBJECT_ATTEMPT_TIMEOUT,
        };
        let report = drive(
            &writer,
            &batch,
            &policy,
            &self.stream,
            &self.counters.failed_attempts,
            &KeepNothing,
        )
        .await;
        let object = &batch.object;
        if let Some(failure) = report.failed.first() {
            let Some(spool) = &self.spool else {
                unreachable!("without a spool, object writes never give up");
            };
            let reason = BatchErrorReason {
                error_type: OBJECT_STORE_FAILED,
                code: failure.code.clone(),
                message: failure.message.clone(),
                attempts: failure.attempts,
            };
            self.write_error_output(spool, range, oldest, &reason).await;
            return false;
        }
        self.counters.records.fetch_add(records, Ordering::Relaxed);
        self.counters.objects.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(object.len() as u64, Ordering::Relaxed);
        tracing::info!(
            stream = %self.stream,
            destination = self.sink.describe(),
            key = %object.key,
            records,
            bytes = object.len(),
            uncompressed_bytes = raw_len,
            first_seq = range.first,
            last_seq = range.last,
            attempts = report.attempts,
            "delivered object"
        );
        true
    }
}

/// Longest one object write may take before it counts as failed and is sent again.
const OBJECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3600);

/// An object write has no per-item refusals to keep.
struct KeepNothing;

#[async_trait::async_trait]
impl FailureKeeper for KeepNothing {
    async fn keep(&self, _failed: &[FailedItem]) {}
}

#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;
