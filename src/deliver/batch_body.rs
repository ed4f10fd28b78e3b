//! Building a sealed batch's body, and what happens when it cannot be built: a CPU-pool job
//! panicked, or the Parquet writer failed. The failure may be transient, so the batch is
//! built again from its records in the spool; when that keeps failing, every record of the
//! batch goes to the error output with the cause, and only then does the checkpoint pass it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::Backoff;

use super::DeliveryLoop;
use super::error_output::{BatchErrorReason, FORMAT_CONVERSION_FAILED};
use crate::buffer::{BatchBody, SealedBatch};

/// Error code of records whose batch could not be encoded.
pub const ENCODE_FAILED: &str = "Hydrant.EncodeFailed";

/// How often a batch is built before its records go to the error output.
const BUILD_ATTEMPTS: u32 = 3;

/// First pause before building a batch again.
const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(100);

impl DeliveryLoop {
    /// The body of `batch` (whose oldest record arrived at `oldest`), built again from the
    /// spool when building it fails; `None` when it could not be built at all, after its
    /// records went to the error output (or, without a spool, were reported lost).
    pub(super) async fn build_body(
        &self,
        batch: SealedBatch,
        oldest: DateTime<Utc>,
    ) -> Option<BatchBody> {
        let range = batch.range();
        let records = batch.records();
        let mut failure = match batch.into_body(self.run).await {
            Ok(body) => return Some(body),
            Err(failure) => failure,
        };
        let Some(spool) = &self.spool else {
            tracing::error!(
                stream = %self.stream,
                records,
                "{failure}; without a spool the records cannot be read again, so they are lost"
            );
            return None;
        };
        let mut backoff = Backoff::new(FIRST_REBUILD_DELAY, self.max_backoff);
        for attempt in 2..=BUILD_ATTEMPTS {
            let delay = backoff.next_delay();
            tracing::warn!(
                stream = %self.stream,
                first_seq = range.first,
                last_seq = range.last,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                "{failure}; building the batch again from the spool"
            );
            tokio::time::sleep(delay).await;
            let spooled = self.read_back(spool, range).await;
            match self.buffer.rebuild(&spooled).into_body(self.run).await {
                Ok(body) => return Some(body),
                Err(again) => failure = again,
            }
        }
        tracing::error!(
            stream = %self.stream,
            first_seq = range.first,
            last_seq = range.last,
            attempts = BUILD_ATTEMPTS,
            "{failure}; sending the batch's records to the error output"
        );
        // Journaled first, so a restart forms the same batch and names the same error object.
        self.journal(range).await;
        let reason = BatchErrorReason {
            error_type: FORMAT_CONVERSION_FAILED,
            code: ENCODE_FAILED.to_string(),
            message: failure.to_string(),
            attempts: BUILD_ATTEMPTS,
        };
        self.write_error_output(spool, range, oldest, &reason, None)
            .await;
        self.checkpoint(range).await;
        None
    }
}
