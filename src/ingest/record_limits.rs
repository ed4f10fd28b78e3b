//! Firehose's size limits on records and calls.

/// Largest record `Data`, before base64: 1,000 KiB (also the largest spool frame).
pub const MAX_RECORD_BYTES: usize = crate::spool::MAX_RECORD_BYTES;

/// Most records in one `PutRecordBatch`.
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most record data in one `PutRecordBatch`, before base64: 4 MiB.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Largest HTTP body read for a Firehose call: comfortably above 4 MiB of data in base64 plus
/// JSON framing, so oversized batches get the precise 4 MiB message.
pub const MAX_FIREHOSE_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Largest body of the NDJSON endpoint.
pub const MAX_NDJSON_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Most records (lines) in one NDJSON request.
pub const MAX_NDJSON_RECORDS: usize = 50_000;
