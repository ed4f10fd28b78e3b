//! Delivery into a PostgreSQL table: the batch's rows (encoded while it filled; records
//! whose values did not fit went to the `postgres-failed` error output) are loaded in one
//! transaction with the batch's ledger entry, retried until the retry duration runs out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hydrant_sinks::postgres::{LoadOutcome, PostgresSink};
use hydrant_sinks::prelude::*;
use tokio::time::Instant;

use super::DeliveryLoop;
use crate::spool::SeqRange;

impl DeliveryLoop {
    /// Loads the binary COPY stream `copy` of batch `range` (`rows` rows); `true` when
    /// loaded (or loaded before), `false` when it went to the error output.
    pub(super) async fn load_into_table(
        &self,
        table: &Arc<PostgresSink>,
        copy: &[Bytes],
        rows: u64,
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) -> bool {
        if rows == 0 {
            return true;
        }
        let batch_id = match &self.spool {
            Some(spool) => format!(
                "{}/{:016x}/{}-{}",
                self.stream,
                spool.incarnation(),
                range.first,
                range.last
            ),
            None => format!("{}/{}", self.stream, uuid_like()),
        };
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let give_up_at = Instant::now() + self.retry_duration;
        loop {
            let error = match table.load(&batch_id, copy, rows).await {
                Ok(outcome) => {
                    if outcome == LoadOutcome::AlreadyLoaded {
                        tracing::info!(stream = %self.stream, batch_id, "batch already loaded before a restart; not loading it again");
                    }
                    self.counters.records.fetch_add(rows, Ordering::Relaxed);
                    self.counters.objects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        stream = %self.stream,
                        destination = table.describe(),
                        table = table.table(),
                        rows,
                        batch_id,
                        attempts = backoff.attempts() + 1,
                        "loaded batch"
                    );
                    return true;
                }
                Err(error) => error,
            };
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
            if let Some(spool) = &self.spool
                && Instant::now() >= give_up_at
            {
                let attempts = backoff.attempts() + 1;
                tracing::error!(stream = %self.stream, batch_id, code = error.code(), reason = %error.reason, attempts, "retry duration exhausted; sending the batch to the error output");
                self.write_error_output(spool, range, oldest, &error, attempts)
                    .await;
                return false;
            }
            let mut delay = backoff.next_delay();
            if self.spool.is_some() {
                let left = give_up_at.saturating_duration_since(Instant::now());
                delay = delay.min(left.max(std::time::Duration::from_millis(10)));
            }
            tracing::warn!(
                stream = %self.stream,
                destination = table.describe(),
                batch_id,
                code = error.code(),
                reason = %error.reason,
                attempt = backoff.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                rows,
                "loading the batch failed; will retry"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// A random id for batches that have no spool range to name them.
fn uuid_like() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
