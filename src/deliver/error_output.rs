//! The error output: when a batch cannot be written within its retry duration, each of its
//! records goes, with the reason, to an error object under the error output prefix, in
//! Firehose's format, and the checkpoint moves on.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;

use super::DeliveryLoop;
use super::DurableLog;
use crate::buffer::{FailedRecord, FailedStage};
use crate::spool::{RecordChunk, SeqRange};

/// `!{firehose:error-output-type}` of records the stream's format could not take.
pub const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";

/// `!{firehose:error-output-type}` of records a transform failed.
pub const PROCESSING_FAILED: &str = "processing-failed";

/// `!{firehose:error-output-type}` of records that could not be filed under a partition.
pub const PARTITIONING_FAILED: &str = "partitioning-failed";

/// Seeds of error object keys, one per error type, so each differs from the data key.
const S3_FAILED_SALT: u64 = 0x6572_726f_7273;
const CONVERSION_FAILED_SALT: u64 = 0x666f_726d_6174;
const PROCESSING_FAILED_SALT: u64 = 0x7472_616e_7366;
const PARTITIONING_FAILED_SALT: u64 = 0x7061_7274_6974;
const OVER_LIMIT_SALT: u64 = 0x6c69_6d69_7473;

/// The error output type of records refused at `stage`, and the seed of its objects' keys.
fn output_of(stage: FailedStage) -> (&'static str, u64) {
    match stage {
        FailedStage::Transform => (PROCESSING_FAILED, PROCESSING_FAILED_SALT),
        FailedStage::Partitioning => (PARTITIONING_FAILED, PARTITIONING_FAILED_SALT),
        FailedStage::Encoding => (FORMAT_CONVERSION_FAILED, CONVERSION_FAILED_SALT),
    }
}

/// One error record in Firehose's format.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ErrorLine<'a> {
    /// Delivery attempts made.
    pub attempts_made: u32,
    /// When the record arrived (Unix ms).
    pub arrival_timestamp: i64,
    /// Why it failed, as a stable code.
    pub error_code: &'a str,
    /// Why it failed, in words.
    pub error_message: &'a str,
    /// When the last attempt ended (Unix ms).
    pub attempt_ending_timestamp: i64,
    /// Where a search document was going (search destinations only).
    #[serde(flatten)]
    pub document: Option<DocumentTarget<'a>>,
    /// The record.
    #[serde(serialize_with = "as_base64")]
    pub raw_data: &'a [u8],
}

/// The index and id of a document that could not be indexed.
#[derive(serde::Serialize)]
pub(super) struct DocumentTarget<'a> {
    #[serde(rename = "esDocumentId")]
    pub id: &'a str,
    #[serde(rename = "esIndexName")]
    pub index: &'a str,
    /// Always empty: mapping types are gone from current clusters.
    #[serde(rename = "esTypeName")]
    pub type_name: &'a str,
}

fn as_base64<S: serde::Serializer>(raw: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(raw))
}

impl ErrorLine<'_> {
    /// Appends the record to `out` as a JSON line.
    pub(super) fn push_to(&self, out: &mut Vec<u8>) {
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
}

/// Why a whole batch went to the error output.
#[derive(Debug, Clone)]
pub struct BatchErrorReason {
    /// `!{firehose:error-output-type}`.
    pub error_type: &'static str,
    /// Firehose-style error code.
    pub code: String,
    /// What happened, in words.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
}

/// One error record per input record, as JSON lines.
pub fn error_lines(
    records: &crate::spool::RecordChunk,
    reason: &BatchErrorReason,
    ended_ms: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.data.len() * 4 / 3 + records.len() * 256);
    for (_, arrival_ms, span) in &records.records {
        ErrorLine {
            attempts_made: reason.attempts,
            arrival_timestamp: *arrival_ms,
            error_code: &reason.code,
            error_message: &reason.message,
            attempt_ending_timestamp: ended_ms,
            document: None,
            raw_data: &records.data[span.clone()],
        }
        .push_to(&mut out);
    }
    out
}

/// One error record per record that carries its own reason, as JSON lines.
pub fn conversion_failure_lines(failed: &[FailedRecord], ended_ms: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for record in failed {
        ErrorLine {
            attempts_made: 1,
            arrival_timestamp: record.arrival_ms,
            error_code: record.error.code,
            error_message: &record.error.message,
            attempt_ending_timestamp: ended_ms,
            document: None,
            raw_data: &record.data,
        }
        .push_to(&mut out);
    }
    out
}

impl DeliveryLoop {
    /// Writes the records of batch `range` that could not be taken, each group to the error
    /// output of the stage that refused it (transforms, partitioning, the destination's
    /// format), retrying until the destination takes them.
    pub(super) async fn write_failures(
        &self,
        mut failed: Vec<FailedRecord>,
        range: SeqRange,
        oldest: DateTime<Utc>,
        mode: WriteMode,
    ) {
        for stage in [
            FailedStage::Transform,
            FailedStage::Partitioning,
            FailedStage::Encoding,
        ] {
            let group: Vec<FailedRecord> = failed.extract_if(.., |f| f.stage == stage).collect();
            if !group.is_empty() {
                let salt = output_of(stage).1;
                self.write_failed_records(stage, salt, &group, range, oldest, mode)
                    .await;
            }
        }
    }

    /// Writes the records `seqs` of batch `range`, whose partitions (`partitions` of them)
    /// did not fit in the batch, to the `partitioning-failed` error output: read back from
    /// the spool, so the batch never held them twice in memory.
    pub(super) async fn write_over_limit(
        &self,
        seqs: &[u64],
        partitions: usize,
        range: SeqRange,
        oldest: DateTime<Utc>,
        mode: WriteMode,
    ) {
        let Some(spool) = &self.spool else {
            tracing::error!(
                stream = %self.stream,
                records = seqs.len(),
                "records beyond the partition limit cannot be read back without a spool; they are lost"
            );
            return;
        };
        let chunk = self.read_back_only(spool, range, seqs).await;
        let message = format!(
            "the batch already holds partitioning.max_active_partitions partitions; {partitions} more \
             had to be left out"
        );
        let failed: Vec<FailedRecord> = chunk
            .records
            .iter()
            .map(|(seq, arrival_ms, span)| FailedRecord {
                seq: *seq,
                arrival_ms: *arrival_ms,
                data: chunk.data[span.clone()].to_vec(),
                error: hydrant_sinks::object::ConversionError {
                    code: hydrant_sinks::partition::ACTIVE_PARTITIONS_LIMIT_EXCEEDED,
                    message: message.clone(),
                },
                stage: FailedStage::Partitioning,
            })
            .collect();
        self.write_failed_records(
            FailedStage::Partitioning,
            OVER_LIMIT_SALT,
            &failed,
            range,
            oldest,
            mode,
        )
        .await;
    }

    /// Counts and writes records refused at `stage`, with their own reasons, as one object
    /// of the stage's error output type; `salt` tells apart two such objects of one batch.
    async fn write_failed_records(
        &self,
        stage: FailedStage,
        salt: u64,
        failed: &[FailedRecord],
        range: SeqRange,
        oldest: DateTime<Utc>,
        mode: WriteMode,
    ) {
        let (error_type, _) = output_of(stage);
        let counter = match stage {
            FailedStage::Transform => &self.counters.processing_failures,
            FailedStage::Partitioning => &self.counters.partitioning_failures,
            FailedStage::Encoding => &self.counters.conversion_failures,
        };
        let count = failed.len() as u64;
        counter.fetch_add(count, Ordering::Relaxed);
        let body = conversion_failure_lines(failed, Utc::now().timestamp_millis());
        let object = self.error_object(error_type, salt, range, oldest, body);
        self.put_until_taken(&object, mode).await;
        self.counters
            .error_output_records
            .fetch_add(count, Ordering::Relaxed);
        tracing::warn!(
            stream = %self.stream,
            key = %object.key,
            records = failed.len(),
            error_type,
            first_error = %failed[0].error.message,
            "records that could not be written were sent to the error output"
        );
    }

    /// The error object of type `error_type` for batch `range`: with a spool its key is
    /// seeded from the range (and `salt`), so a replay writes the same key.
    pub(super) fn error_object(
        &self,
        error_type: &str,
        salt: u64,
        range: SeqRange,
        oldest: DateTime<Utc>,
        body: Vec<u8>,
    ) -> EncodedObject {
        let mut rng = self.batch_rng(salt, range);
        EncodedObject {
            key: self.error_keys.key_with_type(oldest, &mut rng, error_type),
            parts: vec![Bytes::from(body)],
            content_type: "application/x-ndjson",
            content_encoding: None,
        }
    }

    /// Writes an error output (or backup) object, retrying until the destination takes it.
    pub(super) async fn put_until_taken(&self, object: &EncodedObject, mode: WriteMode) {
        let backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        put_until_taken(
            &self.stream,
            self.sink.as_ref(),
            object,
            mode,
            &self.counters,
            backoff,
        )
        .await;
    }

    /// Writes every record of batch `range` (or, for one partition of it, the records
    /// `only`) to the error output with one reason, retrying until the destination takes it
    /// (the caller then advances the checkpoint).
    pub(super) async fn write_error_output(
        &self,
        spool: &DurableLog,
        range: SeqRange,
        oldest: DateTime<Utc>,
        reason: &BatchErrorReason,
        only: Option<&[u64]>,
    ) {
        // One partition of the batch: its records, under its own key.
        let (records, salt) = match only {
            Some(seqs) => (
                self.read_back_only(spool, range, seqs).await,
                S3_FAILED_SALT ^ seqs.first().copied().unwrap_or_default().rotate_left(17),
            ),
            None => (self.read_back(spool, range).await, S3_FAILED_SALT),
        };
        let body = error_lines(&records, reason, Utc::now().timestamp_millis());
        let object = self.error_object(reason.error_type, salt, range, oldest, body);
        self.put_until_taken(&object, WriteMode::CreateOnly).await;
        self.counters
            .error_output_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            stream = %self.stream,
            key = %object.key,
            records = records.len(),
            first_seq = range.first,
            last_seq = range.last,
            error_code = reason.code,
            "batch written to the error output"
        );
    }

    /// The records `seqs` of batch `range`, read back from the spool.
    async fn read_back_only(
        &self,
        spool: &DurableLog,
        range: SeqRange,
        seqs: &[u64],
    ) -> RecordChunk {
        let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let mut chunk = self.read_back(spool, range).await;
        chunk.records.retain(|(seq, _, _)| wanted.contains(seq));
        chunk
    }

    /// Every record of batch `range`, read back from the spool (retried until it can be).
    pub(super) async fn read_back(&self, spool: &DurableLog, range: SeqRange) -> RecordChunk {
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        loop {
            match spool.read_range(range).await {
                Ok(records) => return records,
                Err(read_error) => {
                    tracing::error!(stream = %self.stream, first_seq = range.first, last_seq = range.last, "cannot read the batch back from the spool; will retry: {read_error}");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// Writes an error output (or backup) object of `stream` to `sink`, retrying with `backoff`
/// until the destination takes it (or already holds it).
pub(super) async fn put_until_taken(
    stream: &str,
    sink: &dyn ObjectSink,
    object: &EncodedObject,
    mode: WriteMode,
    counters: &super::DeliveryCounters,
    mut backoff: Backoff,
) {
    loop {
        match sink.put(object, mode).await {
            Ok(()) => {
                let bytes = object.parts.iter().map(|part| part.len() as u64).sum();
                counters.backup_objects.fetch_add(1, Ordering::Relaxed);
                counters.backup_bytes.fetch_add(bytes, Ordering::Relaxed);
                return;
            }
            Err(e) if e.kind == SinkErrorKind::AlreadyExists => return,
            Err(e) => {
                counters
                    .backup_failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(
                    stream,
                    key = %e.target,
                    code = e.code(),
                    reason = %e.reason,
                    attempt = backoff.attempts(),
                    "error output write failed; will retry"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
