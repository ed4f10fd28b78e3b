//! Building a sealed batch's body, and what happens when it cannot be built: a CPU-pool job
//! panicked, or the Parquet writer failed. The failure may be transient, so the batch is
//! built again from its records in the spool; when that keeps failing, every record of the
//! batch goes to the error output with the cause, and only then does the checkpoint pass it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::Backoff;

use super::DeliveryLoop;
use super::DurableLog;
use super::error_output::{BatchErrorReason, FORMAT_CONVERSION_FAILED};
use crate::buffer::{BatchBody, BatchFailure, SealedBatch};
use crate::spool::SeqRange;

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
        let run = self.run;
        let failure = match self
            .build_with_retries(batch, |batch| batch.into_body(run))
            .await
        {
            Ok(body) => return Some(body),
            Err(failure) => failure,
        };
        let spool = self.spool.as_ref()?;
        // Journaled first, so a restart forms the same batch and names the same error object.
        if !self.journal(range).await {
            return None;
        }
        self.write_unbuildable(spool, range, oldest, &failure.to_string(), None)
            .await;
        self.checkpoint(range).await;
        None
    }

    /// What `build` makes of `batch`, made again from the batch's records in the spool
    /// when it fails (up to [`BUILD_ATTEMPTS`] in all); the last failure when it never
    /// succeeds (logged, and without a spool reported as a loss).
    pub(super) async fn build_with_retries<T, F, Fut>(
        &self,
        batch: SealedBatch,
        build: F,
    ) -> Result<T, BatchFailure>
    where
        F: Fn(SealedBatch) -> Fut,
        Fut: std::future::Future<Output = Result<T, BatchFailure>>,
    {
        let range = batch.range();
        let records = batch.records();
        let mut failure = match build(batch).await {
            Ok(built) => return Ok(built),
            Err(failure) => failure,
        };
        let Some(spool) = &self.spool else {
            tracing::error!(
                stream = %self.stream,
                records,
                "{failure}; without a spool the records cannot be read again, so they are lost"
            );
            return Err(failure);
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
            match build(self.buffer.rebuild(&spooled)).await {
                Ok(built) => return Ok(built),
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
        Err(failure)
    }

    /// Sends every record of batch `range` (or of one partition of it, `only`), which could
    /// not be built (`why`), to the error output.
    pub(super) async fn write_unbuildable(
        &self,
        spool: &DurableLog,
        range: SeqRange,
        oldest: DateTime<Utc>,
        why: &str,
        only: Option<&[u64]>,
    ) {
        let reason = BatchErrorReason {
            error_type: FORMAT_CONVERSION_FAILED,
            code: ENCODE_FAILED.to_string(),
            message: why.to_string(),
            attempts: BUILD_ATTEMPTS,
        };
        self.write_error_output(spool, range, oldest, &reason, only)
            .await;
    }
}
