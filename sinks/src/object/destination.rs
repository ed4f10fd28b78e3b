//! An object store as a destination behind the seam: each chunk of a batch is framed and
//! compressed (or, for Parquet, decoded into rows) on the CPU pool while the batch fills; a
//! sealed batch becomes one object under a key derived from its records, written once.

use std::sync::Arc;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::framing::{ConversionError, RecordFramer};
use super::key::{ObjectKeyBuilder, batch_seed};
use super::parquet::{ConvertedChunk, ParquetEncoder};
use super::{EncodedObject, ObjectSink, WriteMode};
use crate::compress::{Codec, CompressedChunk};
use crate::destination::{
    AssembleError, BatchId, Chunk, Destination, EncodedChunk, ItemRecord, Outcome, Refusal,
    Request, Sending,
};
use crate::error::{Service, SinkError, SinkErrorKind};

/// `!{firehose:error-output-type}` of records an object store did not take.
pub const OBJECT_STORE_FAILED: &str = "s3-failed";

/// How records are laid out in an object.
#[derive(Debug, Clone)]
pub enum ObjectFormat {
    /// Records one after another (`raw`, `ndjson`), compressed with the stream's codec.
    Framed(RecordFramer),
    /// Records decoded into rows of one Parquet file (compressed inside the file).
    Parquet(Arc<ParquetEncoder>),
}

impl ObjectFormat {
    /// `Content-Type` of objects.
    pub fn content_type(&self) -> &'static str {
        match self {
            ObjectFormat::Framed(framer) => framer.content_type(),
            ObjectFormat::Parquet(_) => "application/vnd.apache.parquet",
        }
    }
}

/// An object store taking one object per batch.
pub struct ObjectDestination {
    sink: Arc<dyn ObjectSink>,
    format: ObjectFormat,
    /// The codec of framed objects (identity for Parquet, which compresses inside the file).
    codec: Codec,
    keys: ObjectKeyBuilder,
    /// Whether batches are rebuilt identically after a restart (the stream has a spool):
    /// keys then derive from the batch's records and are written only once.
    replayable: bool,
}

impl std::fmt::Debug for ObjectDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectDestination")
            .field("destination", &self.sink.describe())
            .field("format", &self.format)
            .finish()
    }
}

impl ObjectDestination {
    /// Objects of `format` (framed ones compressed with `codec`) named by `keys` in `sink`;
    /// `replayable` when batches are rebuilt identically after a restart.
    pub fn new(
        sink: Arc<dyn ObjectSink>,
        format: ObjectFormat,
        codec: Codec,
        keys: ObjectKeyBuilder,
        replayable: bool,
    ) -> Self {
        let codec = match format {
            ObjectFormat::Framed(_) => codec,
            ObjectFormat::Parquet(_) => Codec::None,
        };
        Self {
            sink,
            format,
            codec,
            keys,
            replayable,
        }
    }

    /// The extension object keys end with (`.gz`, `.parquet`), for a stream's key builder.
    pub fn extension(format: &ObjectFormat, codec: Codec) -> &'static str {
        match format {
            ObjectFormat::Framed(_) => codec.extension(),
            ObjectFormat::Parquet(_) => ".parquet",
        }
    }

    /// The key of batch `id` (under its partition's keys, when it has them): with a spool,
    /// seeded from its records and partition, so a replay names the same key.
    fn key(&self, id: &BatchId) -> String {
        let partition_seed = id.partition.as_ref().map_or(0, |keys| keys.seed());
        let mut rng = if self.replayable {
            fastrand::Rng::with_seed(batch_seed(
                id.run ^ partition_seed,
                id.first_seq,
                id.last_seq,
            ))
        } else {
            fastrand::Rng::new()
        };
        let oldest = DateTime::<Utc>::from_timestamp_millis(id.oldest_ms).unwrap_or_else(Utc::now);
        match &id.partition {
            Some(keys) => self.keys.partition_key(oldest, &mut rng, keys),
            None => self.keys.key(oldest, &mut rng),
        }
    }
}

/// What one chunk of records became.
#[derive(Debug)]
pub enum ObjectPiece {
    /// Framed and compressed records.
    Framed {
        /// The compressed bytes.
        chunk: CompressedChunk,
        /// Records in it.
        records: u64,
    },
    /// Rows of a Parquet file.
    Rows(Vec<RecordBatch>),
}

/// A sealed batch's object (`None` when none of its records could be written).
#[derive(Debug)]
pub struct ObjectBatch {
    /// The object.
    pub object: Option<EncodedObject>,
    /// Records in it.
    pub records: u64,
    /// Its batch.
    pub id: BatchId,
}

#[async_trait]
impl Sending for ObjectDestination {
    type Batch = ObjectBatch;
    type Body = usize;

    fn describe(&self) -> &str {
        self.sink.describe()
    }

    fn service(&self) -> Service {
        Service::ObjectStore
    }

    fn requests(&self, batch: &ObjectBatch) -> Vec<Request<usize>> {
        batch
            .object
            .iter()
            .map(|object| Request {
                body: object.len(),
                items: vec![0],
            })
            .collect()
    }

    fn regroup(&self, batch: &ObjectBatch, _items: &[u32], _shrink: u32) -> Vec<Request<usize>> {
        self.requests(batch)
    }

    async fn send(&self, batch: &ObjectBatch, _request: &Request<usize>) -> Outcome {
        let Some(object) = &batch.object else {
            return Outcome::Delivered;
        };
        let mode = if self.replayable {
            WriteMode::CreateOnly
        } else {
            WriteMode::Overwrite
        };
        match self.sink.put(object, mode).await {
            Ok(()) => Outcome::Delivered,
            // A create-only write of a deterministic key found the object a run before a
            // crash wrote: it is delivered.
            Err(error) if error.kind == SinkErrorKind::AlreadyExists => {
                tracing::info!(
                    key = %object.key,
                    "object already written before a restart; not writing it again"
                );
                Outcome::Delivered
            }
            // Every other failure may pass (an outage, expired credentials, a missing
            // bucket being created): retried until the retry duration runs out.
            Err(error) => Outcome::Retry(error),
        }
    }

    fn body_len(&self, body: &usize) -> usize {
        *body
    }

    fn item_record(&self, batch: &ObjectBatch, _item: u32) -> ItemRecord {
        ItemRecord {
            whole_batch: true,
            ..ItemRecord::record(batch.id.first_seq, batch.id.oldest_ms, None)
        }
    }

    fn item_records(&self, batch: &ObjectBatch, _item: u32) -> u64 {
        batch.records
    }
}

#[async_trait]
impl Destination for ObjectDestination {
    type Piece = ObjectPiece;

    fn failed_output(&self) -> &'static str {
        OBJECT_STORE_FAILED
    }

    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<ObjectPiece> {
        match &self.format {
            ObjectFormat::Framed(framer) => {
                let mut out = Vec::with_capacity(chunk.data.len() + chunk.len());
                let mut refusals = Vec::new();
                for index in 0..chunk.len() {
                    if let Err(error) = framer.frame(chunk.record(index).data, &mut out) {
                        refusals.push(refusal(index, error));
                    }
                }
                let records = (chunk.len() - refusals.len()) as u64;
                EncodedChunk {
                    piece: ObjectPiece::Framed {
                        chunk: self.codec.compress_chunk(out),
                        records,
                    },
                    refusals,
                }
            }
            ObjectFormat::Parquet(encoder) => {
                let converted = encoder.convert_chunk(chunk.data, chunk.records);
                EncodedChunk {
                    piece: ObjectPiece::Rows(converted.batches),
                    refusals: converted
                        .rejected
                        .into_iter()
                        .map(|rejected| refusal(rejected.index, rejected.error))
                        .collect(),
                }
            }
        }
    }

    fn framer(&self) -> Option<&RecordFramer> {
        match &self.format {
            ObjectFormat::Framed(framer) => Some(framer),
            ObjectFormat::Parquet(_) => None,
        }
    }

    fn encode_groups(
        &self,
        chunk: Chunk<'_>,
        groups: &[Vec<usize>],
    ) -> Option<Vec<EncodedChunk<ObjectPiece>>> {
        let ObjectFormat::Parquet(encoder) = &self.format else {
            return None;
        };
        let converted = encoder.convert_chunk(chunk.data, chunk.records);
        Some(split_rows(converted, chunk.len(), groups))
    }

    fn held_bytes(&self, piece: &ObjectPiece) -> Option<usize> {
        Some(match piece {
            ObjectPiece::Framed { chunk, .. } => chunk.data.len(),
            ObjectPiece::Rows(rows) => rows.iter().map(RecordBatch::get_array_memory_size).sum(),
        })
    }

    fn assembly_is_heavy(&self) -> bool {
        matches!(self.format, ObjectFormat::Parquet(_))
    }

    fn encode_framed(&self, framed: Vec<u8>, records: u64) -> ObjectPiece {
        ObjectPiece::Framed {
            chunk: self.codec.compress_chunk(framed),
            records,
        }
    }

    fn assemble(
        &self,
        id: BatchId,
        pieces: Vec<ObjectPiece>,
    ) -> Result<ObjectBatch, AssembleError> {
        let mut records = 0;
        let parts = match &self.format {
            ObjectFormat::Framed(_) => {
                let chunks = pieces
                    .into_iter()
                    .filter_map(|piece| match piece {
                        ObjectPiece::Framed { chunk, records: n } => {
                            records += n;
                            Some(chunk)
                        }
                        ObjectPiece::Rows(_) => None,
                    })
                    .collect();
                self.codec.assemble(chunks)
            }
            ObjectFormat::Parquet(encoder) => {
                let rows: Vec<RecordBatch> = pieces
                    .into_iter()
                    .flat_map(|piece| match piece {
                        ObjectPiece::Rows(rows) => rows,
                        ObjectPiece::Framed { .. } => Vec::new(),
                    })
                    .collect();
                records = rows.iter().map(|rows| rows.num_rows() as u64).sum();
                if records == 0 {
                    Vec::new()
                } else {
                    encoder
                        .write_file(rows)
                        .map_err(|error| AssembleError(Box::new(error)))?
                }
            }
        };
        let object = (records > 0).then(|| EncodedObject {
            key: self.key(&id),
            parts,
            content_type: self.format.content_type(),
            content_encoding: self.codec.content_encoding(),
        });
        Ok(ObjectBatch {
            object,
            records,
            id,
        })
    }

    fn backup_parts(&self, _batch: &ObjectBatch) -> Vec<Bytes> {
        Vec::new()
    }

    fn target(&self, batch: &ObjectBatch) -> Option<String> {
        batch.object.as_ref().map(|object| object.key.clone())
    }

    fn checks_before_use(&self) -> bool {
        false
    }

    async fn check(&self) -> Result<String, SinkError> {
        Ok(self.sink.describe().to_string())
    }
}

/// A record the format could not take.
fn refusal(index: usize, error: ConversionError) -> Refusal {
    Refusal {
        index,
        code: error.code,
        message: error.message,
    }
}

/// The rows of a converted chunk of `records` records, taken per group (indexes into the
/// chunk), with each group's rejected records as refusals at their position in the group.
fn split_rows(
    converted: ConvertedChunk,
    records: usize,
    groups: &[Vec<usize>],
) -> Vec<EncodedChunk<ObjectPiece>> {
    // Rows are the records not rejected, in order.
    let mut row_of: Vec<Option<u32>> = vec![None; records];
    let mut rejected = converted.rejected.into_iter().peekable();
    let mut errors: Vec<Option<ConversionError>> = vec![None; records];
    let mut row = 0u32;
    for (index, slot) in row_of.iter_mut().enumerate() {
        if rejected.peek().is_some_and(|r| r.index == index) {
            errors[index] = rejected.next().map(|r| r.error);
        } else {
            *slot = Some(row);
            row += 1;
        }
    }
    let rows = match converted.batches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => arrow_select::concat::concat_batches(&many[0].schema(), many)
            .map(Some)
            .map_err(|error| error.to_string()),
    };
    groups
        .iter()
        .map(|group| {
            let mut take = Vec::with_capacity(group.len());
            let mut positions = Vec::with_capacity(group.len());
            let mut refusals = Vec::new();
            for (position, &index) in group.iter().enumerate() {
                match (row_of[index], errors[index].take()) {
                    (Some(row), _) => {
                        take.push(row);
                        positions.push(position);
                    }
                    (None, Some(error)) => refusals.push(refusal(position, error)),
                    (None, None) => {}
                }
            }
            let taken = match &rows {
                _ if take.is_empty() => Ok(Vec::new()),
                Ok(Some(rows)) => arrow_select::take::take_record_batch(
                    rows,
                    &arrow_array::UInt32Array::from(take),
                )
                .map(|rows| vec![rows])
                .map_err(|error| error.to_string()),
                Ok(None) => Ok(Vec::new()),
                Err(error) => Err(error.clone()),
            };
            let rows = taken.unwrap_or_else(|error| {
                // The rows could not be split out: each of them goes to the error output.
                let message = format!("its row could not be split out of the chunk: {error}");
                refusals.extend(
                    positions
                        .iter()
                        .map(|&position| refusal(position, ConversionError::parse(&message))),
                );
                refusals.sort_by_key(|r| r.index);
                Vec::new()
            });
            EncodedChunk {
                piece: ObjectPiece::Rows(rows),
                refusals,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::parquet::RejectedRecord;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{ArrayRef, Int64Array};

    fn rows(values: &[i64]) -> RecordBatch {
        let column: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        RecordBatch::try_from_iter([("n", column)]).unwrap()
    }

    fn values(piece: &ObjectPiece) -> Vec<i64> {
        let ObjectPiece::Rows(batches) = piece else {
            panic!("a Parquet piece holds rows");
        };
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[test]
    fn each_group_gets_its_own_rows_and_its_rejected_records_as_refusals() {
        // Records 0..5, record 2 rejected, rows in two batches (as after a rebuilt segment).
        let converted = ConvertedChunk {
            batches: vec![rows(&[0, 1]), rows(&[3, 4])],
            rejected: vec![RejectedRecord {
                index: 2,
                error: ConversionError::parse("not JSON"),
            }],
        };
        let split = split_rows(converted, 5, &[vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(values(&split[0].piece), [0, 4]);
        assert_eq!(
            split[0]
                .refusals
                .iter()
                .map(|r| (r.index, r.message.as_str()))
                .collect::<Vec<_>>(),
            [(1, "not JSON")],
            "the refusal is at the record's place in its group"
        );
        assert_eq!(values(&split[1].piece), [1, 3]);
        assert!(split[1].refusals.is_empty());
    }
}
