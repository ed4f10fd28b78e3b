//! Delivery to a destination behind the seam ([`hydrant_sinks::destination`]): the batch
//! (assembled on the CPU pool) goes through the shared retry driver; items the destination
//! did not take go to its error output type with their reasons, and with `backup.mode: all`
//! every record is first written to the backup destination. Nothing here knows which
//! destination it is.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;

use super::DeliveryLoop;
use super::error_output::{DocumentTarget as ErrorDocument, ErrorLine};
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
        Assembled(batch): Assembled,
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
        let report = batch
            .deliver(&policy, &self.stream, &self.counters.failed_attempts)
            .await;
        if !report.failed.is_empty() {
            self.write_failed_items(seam, &report.failed, range, oldest)
                .await;
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
        tracing::info!(
            stream = %self.stream,
            destination = seam.destination.describe(),
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
    /// Firehose's format (replacing what an earlier run of the same batch wrote: this run's
    /// outcome is the one that counts).
    async fn write_failed_items(
        &self,
        seam: &SeamDestination,
        failed: &[FailedItem],
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) {
        let ended_ms = Utc::now().timestamp_millis();
        let mut body = Vec::new();
        for item in failed {
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
                raw_data: &item.record.raw,
            }
            .push_to(&mut body);
        }
        let error_type = seam.destination.failed_output();
        let object = self.error_object(error_type, FAILED_ITEMS_SALT, range, oldest, body);
        self.put_until_taken(&object, WriteMode::Overwrite).await;
        self.counters
            .error_output_records
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
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
