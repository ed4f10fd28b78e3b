//! Delivery to a destination behind the seam ([`hydrant_sinks::destination`]): the batch
//! (assembled on the CPU pool) goes through the shared retry driver; items the destination
//! did not take go to its error output type with their reasons, and with `backup.mode: all`
//! every record is first written to the backup destination. Nothing here knows which
//! destination it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;

use super::DeliveryLoop;
use super::error_output::{BatchErrorReason, DocumentTarget as ErrorDocument, ErrorLine};
use super::health::StreamAttempts;
use crate::buffer::Assembled;
use crate::config::SeamDestination;
use crate::spool::SeqRange;

/// Seed of the failed items' object key, so it differs from the backup's.
const FAILED_ITEMS_SALT: u64 = 0x7365_616d_6661;

impl DeliveryLoop {
    /// Delivers the batch `range` through the seam. Always ends with every item delivered
    /// or in the error output.
    pub(super) async fn deliver_through_seam(
        &self,
        seam: &SeamDestination,
        Assembled { batch, records }: Assembled,
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) {
        if seam.backup_all {
            let parts = batch.backup_parts();
            if !parts.is_empty() {
                let object = EncodedObject {
                    key: self.keys.key(oldest, &mut self.batch_rng(0, range)),
                    parts,
                    content_type: "application/x-ndjson",
                    content_encoding: None,
                };
                self.put_until_taken(&object, self.write_mode()).await;
            }
        }
        let policy = RetryPolicy {
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            give_up_after: self.spool.as_ref().map(|_| self.retry_duration),
            concurrency: seam.concurrency,
            attempt_timeout: seam.attempt_timeout,
        };
        let keeper = Keeper {
            delivery: self,
            seam,
            range,
            oldest,
            partition_records: records.as_deref(),
            written: AtomicUsize::new(0),
        };
        let attempts = StreamAttempts {
            counters: &self.counters,
            health: &self.health,
        };
        let report = batch
            .deliver(&policy, &self.stream, &attempts, &keeper)
            .await;
        if report.failed.len() > keeper.written.load(Ordering::Relaxed) {
            keeper.keep(&report.failed).await;
        }
        self.counters
            .records
            .fetch_add(report.delivered, Ordering::Relaxed);
        self.counters
            .objects
            .fetch_add(report.requests, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(report.bytes, Ordering::Relaxed);
        let target = batch.target().unwrap_or_default();
        if report.delivered > 0 {
            self.health.delivered(target.clone(), report.delivered);
        }
        tracing::info!(
            stream = %self.stream,
            destination = seam.destination.describe(),
            target,
            records = report.delivered,
            requests = report.requests,
            bytes = report.bytes,
            failed = report.failed.len(),
            first_seq = range.first,
            last_seq = range.last,
            attempts = report.attempts,
            "delivered batch"
        );
    }

    /// Writes the items the destination did not take to its error output type, in
    /// Firehose's format (replacing what an earlier write for the same batch held: this
    /// run's outcome is the one that counts); `new` of them were not written before.
    async fn write_failed_items(
        &self,
        seam: &SeamDestination,
        failed: &[FailedItem],
        new: usize,
        range: SeqRange,
        oldest: DateTime<Utc>,
        partition_records: Option<&[u64]>,
    ) {
        let error_type = seam.destination.failed_output();
        if let (Some(spool), Some(item)) = (
            &self.spool,
            failed.iter().find(|item| item.record.whole_batch),
        ) {
            // The item is the whole batch (one object): every record of it (of its
            // partition, for a partitioned batch), one reason.
            let reason = BatchErrorReason {
                error_type,
                code: item.code.clone(),
                message: item.message.clone(),
                attempts: item.attempts,
            };
            self.write_error_output(spool, range, oldest, &reason, partition_records)
                .await;
            return;
        }
        let ended_ms = Utc::now().timestamp_millis();
        // Records the destination no longer holds are read back from the spool.
        let read_back = match &self.spool {
            Some(spool) if failed.iter().any(|item| item.record.raw.is_none()) => {
                Some(self.read_back(spool, range).await)
            }
            _ => None,
        };
        let by_seq: HashMap<u64, &[u8]> = read_back
            .as_ref()
            .map(|chunk| {
                chunk
                    .records
                    .iter()
                    .map(|(seq, _, span)| (*seq, &chunk.data[span.clone()]))
                    .collect()
            })
            .unwrap_or_default();
        let mut body = Vec::new();
        for item in failed {
            let raw: &[u8] = match &item.record.raw {
                Some(raw) => raw,
                None => by_seq.get(&item.record.seq).copied().unwrap_or_default(),
            };
            ErrorLine {
                attempts_made: item.attempts,
                arrival_timestamp: item.record.arrival_ms,
                error_code: &item.code,
                error_message: &item.message,
                attempt_ending_timestamp: ended_ms,
                document: item.record.document.as_ref().map(|target| ErrorDocument {
                    id: &target.id,
                    index: &target.index,
                    type_name: "",
                }),
                raw_data: raw,
            }
            .push_to(&mut body);
        }
        let object = self.error_object(error_type, FAILED_ITEMS_SALT, range, oldest, body);
        self.put_until_taken(&object, WriteMode::Overwrite).await;
        self.counters
            .error_output_records
            .fetch_add(new as u64, Ordering::Relaxed);
        tracing::warn!(
            stream = %self.stream,
            key = %object.key,
            records = failed.len(),
            error_type,
            first_error = %failed[0].message,
            "records the destination did not take were sent to the error output"
        );
    }
}

/// Writes a batch's failures to the error output as the driver hands them over, so they
/// are durable before anything else of the batch is sent.
struct Keeper<'a> {
    delivery: &'a DeliveryLoop,
    seam: &'a SeamDestination,
    range: SeqRange,
    oldest: DateTime<Utc>,
    /// For one partition of a batch: its records.
    partition_records: Option<&'a [u64]>,
    /// Failures written so far.
    written: AtomicUsize,
}

#[async_trait]
impl FailureKeeper for Keeper<'_> {
    async fn keep(&self, failed: &[FailedItem]) {
        let new = failed.len() - self.written.load(Ordering::Relaxed);
        self.delivery
            .write_failed_items(
                self.seam,
                failed,
                new,
                self.range,
                self.oldest,
                self.partition_records,
            )
            .await;
        self.written.store(failed.len(), Ordering::Relaxed);
    }
}
