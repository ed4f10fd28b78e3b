//! Delivery into a PostgreSQL table: the batch's rows (encoded while it filled; records
//! whose values did not fit went to the `postgres-failed` error output) are loaded in one
//! transaction with the batch's ledger entry, retried until the retry duration runs out.
//! Rows the server refuses are found by rehearsed loads and written to the error output
//! once, before the load without them commits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use hydrant_sinks::postgres::{LoadCommit, LoadError, LoadOutcome, PostgresSink};
use hydrant_sinks::prelude::*;
use tokio::time::Instant;

use super::DeliveryLoop;
use crate::buffer::{FailedRecord, TableRows};
use crate::encode::ConversionError;
use crate::spool::SeqRange;

impl DeliveryLoop {
    /// Loads the batch `range`'s `rows`; `true` when loaded (or loaded before), `false`
    /// when it went to the error output. A row the server refuses (a value out of a
    /// column's range, a violated constraint) is taken out; the rest is rehearsed until the
    /// server takes all of it, then the refused rows go to the `postgres-failed` error
    /// output in one object and the rest is loaded.
    pub(super) async fn load_into_table(
        &self,
        table: &Arc<PostgresSink>,
        mut rows: TableRows,
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) -> bool {
        if rows.rows.is_empty() {
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
        let mut refused: Vec<FailedRecord> = Vec::new();
        // Refused rows not yet in the error output. While there are any, loads only
        // rehearse: the batch never commits without its refused rows' trace, and they are
        // written once, when the server takes every other row.
        let mut unwritten = 0;
        let mut stream = rows.stream();
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let give_up_at = Instant::now() + self.retry_duration;
        loop {
            let count = rows.rows.len() as u64;
            let commit = match unwritten {
                0 => LoadCommit::Commit,
                _ => LoadCommit::Rehearse,
            };
            let error = match table.load(&batch_id, &stream, count, commit).await {
                Ok(LoadOutcome::Rehearsed) => {
                    self.write_refused_records(&refused, unwritten, range, oldest)
                        .await;
                    unwritten = 0;
                    continue;
                }
                Ok(outcome) => {
                    if outcome == LoadOutcome::AlreadyLoaded {
                        tracing::info!(stream = %self.stream, batch_id, "batch already loaded before a restart; not loading it again");
                    }
                    if unwritten > 0 {
                        self.write_refused_records(&refused, unwritten, range, oldest)
                            .await;
                    }
                    self.counters.records.fetch_add(count, Ordering::Relaxed);
                    self.counters.objects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        stream = %self.stream,
                        destination = table.describe(),
                        table = table.table(),
                        rows = count,
                        refused = refused.len(),
                        batch_id,
                        attempts = backoff.attempts() + 1,
                        "loaded batch"
                    );
                    return true;
                }
                Err(LoadError::Row { row, reason }) if row < rows.rows.len() => {
                    let removed = rows.rows.remove(row);
                    tracing::debug!(stream = %self.stream, batch_id, seq = removed.record, reason, "the table refused a row; loading the batch without it");
                    refused.push(self.refused_record(removed.record, reason, oldest).await);
                    unwritten += 1;
                    if rows.rows.is_empty() {
                        self.write_refused_records(&refused, unwritten, range, oldest)
                            .await;
                        return true;
                    }
                    stream = rows.stream();
                    continue;
                }
                Err(LoadError::Row { reason, .. }) => SinkError::new(
                    SinkErrorKind::Rejected,
                    Service::Postgres,
                    table.describe().to_string(),
                    batch_id.clone(),
                    reason,
                ),
                Err(LoadError::Batch(error)) => error,
            };
            let Some(delay) = self
                .after_failure(&error, &mut backoff, give_up_at, range, oldest, &batch_id)
                .await
            else {
                return false;
            };
            tracing::warn!(
                stream = %self.stream,
                destination = table.describe(),
                batch_id,
                code = error.code(),
                reason = %error.reason,
                attempt = backoff.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                rows = count,
                "loading the batch failed; will retry"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The error record of a row the server refused, its record read back from the spool
    /// (without a spool, its data is unknown and left empty).
    async fn refused_record(
        &self,
        seq: u64,
        reason: String,
        oldest: DateTime<Utc>,
    ) -> FailedRecord {
        let data = match &self.spool {
            Some(spool) => spool
                .read_range(SeqRange {
                    first: seq,
                    last: seq,
                })
                .await
                .ok()
                .and_then(|chunk| {
                    let (_, _, span) = chunk.records.first()?.clone();
                    Some(chunk.data[span].to_vec())
                }),
            None => None,
        };
        FailedRecord {
            seq,
            arrival_ms: oldest.timestamp_millis(),
            data: data.unwrap_or_default(),
            error: ConversionError {
                code: "Postgres.Refused",
                message: reason,
            },
        }
    }
}

/// A random id for batches that have no spool range to name them.
fn uuid_like() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
