//! The table as a destination behind the seam: records become binary COPY rows on the CPU
//! pool while the batch fills; a batch is one load, committed in one transaction with its
//! ledger entry (so a replay is `AlreadyLoaded`). A row the server refuses breaks the whole
//! load: the batch is then rehearsed without it (loaded and rolled back) until the server
//! takes every other row, and the refused rows are reported together with the others as
//! not sent — so the driver writes them to the error output once, before the load without
//! them commits.

use async_trait::async_trait;
use bytes::Bytes;

use super::{LoadCommit, LoadError, LoadOutcome, PostgresSink, RowError, RowSpan, copy_stream_of};
use crate::destination::{
    AssembleError, BatchId, Chunk, Destination, EncodedChunk, FailedItem, ItemError, ItemOutcome,
    ItemRecord, Outcome, Refusal, Request, Sending,
};
use crate::error::{Service, SinkError, SinkErrorKind};

/// `!{firehose:error-output-type}` of records a PostgreSQL table could not take.
pub const POSTGRES_FAILED: &str = "postgres-failed";

/// Code of records whose value does not fit a table column.
pub const POSTGRES_INVALID_VALUE: &str = "Postgres.InvalidValue";

/// Code of rows the server refused (a value out of range, a violated constraint).
pub const POSTGRES_REFUSED: &str = "Postgres.Refused";

/// Code of records that are not a JSON object.
const PARSE_ERROR: &str = "DataFormatConversion.ParseError";

/// A stream's table.
#[derive(Debug)]
pub struct PostgresTable {
    sink: PostgresSink,
    stream: String,
}

impl PostgresTable {
    /// The table `sink` loads into, for stream `stream` (which names its batches in the
    /// ledger).
    pub fn new(sink: PostgresSink, stream: impl Into<String>) -> Self {
        Self {
            sink,
            stream: stream.into(),
        }
    }
}

/// One chunk's rows.
#[derive(Debug, Default)]
pub struct TablePiece {
    parts: Vec<Bytes>,
    /// Each row, `record` being its sequence number.
    rows: Vec<RowSpan>,
    arrivals: Vec<i64>,
    invalid: Vec<FailedItem>,
}

/// A batch's rows and its ledger id.
#[derive(Debug)]
pub struct TableBatch {
    batch_id: String,
    parts: Vec<Bytes>,
    rows: Vec<RowSpan>,
    arrivals: Vec<i64>,
    invalid: Vec<FailedItem>,
}

#[async_trait]
impl Sending for PostgresTable {
    type Batch = TableBatch;
    type Body = ();

    fn describe(&self) -> &str {
        self.sink.describe()
    }

    fn service(&self) -> Service {
        Service::Postgres
    }

    fn requests(&self, batch: &TableBatch) -> Vec<Request<()>> {
        let items: Vec<u32> = (0..batch.rows.len() as u32).collect();
        self.regroup(batch, &items, 0)
    }

    fn regroup(&self, _batch: &TableBatch, items: &[u32], _shrink: u32) -> Vec<Request<()>> {
        match items.is_empty() {
            true => Vec::new(),
            false => vec![Request {
                body: (),
                items: items.to_vec(),
            }],
        }
    }

    async fn send(&self, batch: &TableBatch, request: &Request<()>) -> Outcome {
        // Positions (in the request) of rows the server refused, and why.
        let mut refused: Vec<(usize, String)> = Vec::new();
        loop {
            let positions: Vec<usize> = (0..request.items.len())
                .filter(|n| !refused.iter().any(|(r, _)| r == n))
                .collect();
            let rows: Vec<RowSpan> = positions
                .iter()
                .map(|&n| batch.rows[request.items[n] as usize])
                .collect();
            // Once a row was refused, loads only rehearse: the batch must not commit before
            // the refused rows are in the error output.
            let commit = match refused.is_empty() {
                true => LoadCommit::Commit,
                false => LoadCommit::Rehearse,
            };
            let stream = copy_stream_of(&batch.parts, &rows);
            let outcome = self
                .sink
                .load(&batch.batch_id, &stream, rows.len() as u64, commit)
                .await;
            match outcome {
                Ok(LoadOutcome::Loaded) => return Outcome::Delivered,
                Ok(LoadOutcome::AlreadyLoaded) => {
                    tracing::info!(
                        stream = %self.stream,
                        batch_id = %batch.batch_id,
                        "batch already loaded before a restart; not loading it again"
                    );
                    return Outcome::Delivered;
                }
                Ok(LoadOutcome::Rehearsed) => return refusals(request.items.len(), refused),
                Err(LoadError::Row { row, reason }) if row < rows.len() => {
                    tracing::debug!(
                        stream = %self.stream,
                        batch_id = %batch.batch_id,
                        seq = rows[row].record,
                        reason,
                        "the table refused a row; trying the batch without it"
                    );
                    refused.push((positions[row], reason));
                    if refused.len() == request.items.len() {
                        return refusals(request.items.len(), refused);
                    }
                }
                Err(LoadError::Row { reason, .. }) => {
                    return Outcome::Retry(
                        SinkError::new(
                            SinkErrorKind::Rejected,
                            Service::Postgres,
                            self.sink.describe(),
                            batch.batch_id.clone(),
                            reason,
                        )
                        .retriable(true),
                    );
                }
                // Every other failure (unreachable, a missing table) may pass: the batch is
                // loaded again until the retry duration runs out.
                Err(LoadError::Batch(error)) => return Outcome::Retry(error),
            }
        }
    }

    fn body_len(&self, _body: &()) -> usize {
        0
    }

    fn item_record(&self, batch: &TableBatch, item: u32) -> ItemRecord {
        ItemRecord {
            seq: batch.rows[item as usize].record,
            arrival_ms: batch.arrivals[item as usize],
            // Rows hold encoded values, not the record: the engine reads it back.
            raw: None,
            document: None,
            whole_batch: false,
        }
    }

    fn encoding_failures(&self, batch: &TableBatch) -> Vec<FailedItem> {
        batch.invalid.clone()
    }
}

#[async_trait]
impl Destination for PostgresTable {
    type Piece = TablePiece;

    fn failed_output(&self) -> &'static str {
        POSTGRES_FAILED
    }

    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<TablePiece> {
        let records = &chunk.refs()[..];
        let encoded = self.sink.encode_rows(records.iter().map(|r| r.data));
        let mut piece = TablePiece {
            parts: encoded.parts,
            rows: Vec::with_capacity(encoded.rows.len()),
            arrivals: Vec::with_capacity(encoded.rows.len()),
            invalid: Vec::new(),
        };
        for row in encoded.rows {
            let record = &records[row.record as usize];
            piece.arrivals.push(record.arrival_ms);
            piece.rows.push(RowSpan {
                record: record.seq,
                ..row
            });
        }
        let mut refusals = Vec::new();
        for (index, error) in encoded.rejected {
            match error {
                RowError::NotJson(message) => refusals.push(Refusal {
                    index,
                    code: PARSE_ERROR,
                    message,
                }),
                // Values a column cannot take have the table's own error output type.
                RowError::InvalidValue(message) => piece.invalid.push(FailedItem {
                    record: ItemRecord {
                        seq: records[index].seq,
                        arrival_ms: records[index].arrival_ms,
                        raw: Some(Bytes::copy_from_slice(records[index].data)),
                        document: None,
                        whole_batch: false,
                    },
                    code: POSTGRES_INVALID_VALUE.into(),
                    message,
                    attempts: 1,
                }),
            }
        }
        EncodedChunk { piece, refusals }
    }

    fn assemble(&self, id: BatchId, pieces: Vec<TablePiece>) -> Result<TableBatch, AssembleError> {
        let mut batch = TableBatch {
            batch_id: format!(
                "{}/{:016x}/{}-{}",
                self.stream, id.run, id.first_seq, id.last_seq
            ),
            parts: Vec::new(),
            rows: Vec::new(),
            arrivals: Vec::new(),
            invalid: Vec::new(),
        };
        for piece in pieces {
            let offset = batch.parts.len();
            batch.rows.extend(piece.rows.into_iter().map(|row| RowSpan {
                part: row.part + offset,
                ..row
            }));
            batch.parts.extend(piece.parts);
            batch.arrivals.extend(piece.arrivals);
            batch.invalid.extend(piece.invalid);
        }
        Ok(batch)
    }

    fn backup_parts(&self, _batch: &TableBatch) -> Vec<Bytes> {
        Vec::new()
    }

    async fn check(&self) -> Result<String, SinkError> {
        Ok(format!(
            "{} table {}",
            self.sink.describe(),
            self.sink.table()
        ))
    }
}

/// The outcome of a load that found `refused` rows among `count`: those refused, the rest
/// not sent (to be loaded, without them, once their refusals are kept).
fn refusals(count: usize, refused: Vec<(usize, String)>) -> Outcome {
    let mut outcomes = vec![ItemOutcome::NotSent; count];
    for (position, reason) in refused {
        outcomes[position] = ItemOutcome::Refused(ItemError {
            code: POSTGRES_REFUSED.into(),
            message: reason,
        });
    }
    Outcome::Items(outcomes)
}
