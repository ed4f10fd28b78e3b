//! The error output of records a source refused before they could reach the spool (a log
//! line over `max_line_kib`): written straight to the stream's error output, under a key
//! derived from where the record was in its input, so a restart that refuses it again
//! writes the same object instead of a second one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use hydrant_sinks::object::{ObjectKeyBuilder, batch_seed};
use hydrant_sinks::prelude::*;

use super::DeliveryCounters;
use super::error_output::{ErrorLine, PROCESSING_FAILED, put_until_taken};

/// Seed of refusal object keys, so each differs from every batch's keys.
const SOURCE_REFUSED_SALT: u64 = 0x736f_7572_6365;

/// A record a source could not take.
#[derive(Debug)]
pub struct Refusal<'a> {
    /// Which input (a tailed file's identity).
    pub input: &'a [u8],
    /// Where in it the record began.
    pub offset: u64,
    /// Stable error code (`Source.LineTooLong`).
    pub code: &'a str,
    /// What happened, in words.
    pub message: String,
    /// The record's bytes (for a line too long, its first `max_line_kib`).
    pub data: &'a [u8],
}

/// Writes a stream's source refusals to its error output (`processing-failed`).
pub struct SourceRefusals {
    /// Stream name, for logs.
    pub stream: String,
    /// Where the error output goes.
    pub sink: Arc<dyn ObjectSink>,
    /// Key naming of error output objects.
    pub keys: ObjectKeyBuilder,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Totals, shared with the API.
    pub counters: Arc<DeliveryCounters>,
    /// The spool's incarnation, which seeds the keys.
    pub incarnation: u64,
}

impl std::fmt::Debug for SourceRefusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceRefusals")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl SourceRefusals {
    /// Writes `refusals` (of one input, in order) as one error object, retrying until the
    /// destination takes it.
    pub async fn write(&self, refusals: &[Refusal<'_>]) {
        let Some(first) = refusals.first() else {
            return;
        };
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut body = Vec::new();
        for refusal in refusals {
            ErrorLine {
                attempts_made: 0,
                arrival_timestamp: now_ms,
                error_code: refusal.code,
                error_message: &refusal.message,
                attempt_ending_timestamp: now_ms,
                document: None,
                raw_data: refusal.data,
            }
            .push_to(&mut body);
        }
        let input = u64::from(crc32c::crc32c(first.input)) << 32 | first.input.len() as u64;
        let seed = batch_seed(self.incarnation ^ SOURCE_REFUSED_SALT, input, first.offset);
        let mut rng = fastrand::Rng::with_seed(seed);
        let object = EncodedObject {
            key: self.keys.key_with_type(now, &mut rng, PROCESSING_FAILED),
            parts: vec![Bytes::from(body)],
            content_type: "application/x-ndjson",
            content_encoding: None,
        };
        put_until_taken(
            &self.stream,
            self.sink.as_ref(),
            &object,
            WriteMode::CreateOnly,
            &self.counters,
            Backoff::new(self.initial_backoff, self.max_backoff),
        )
        .await;
        let count = refusals.len() as u64;
        self.counters
            .processing_failures
            .fetch_add(count, Ordering::Relaxed);
        self.counters
            .error_output_records
            .fetch_add(count, Ordering::Relaxed);
        tracing::warn!(
            stream = %self.stream,
            key = %object.key,
            records = count,
            error_code = first.code,
            "records a source refused were sent to the error output"
        );
    }
}
