//! The seam every destination implements: encode a chunk of records into request pieces
//! (synchronous, on the engine's CPU pool while the batch fills), assemble a batch's pieces
//! into requests, send one request (one attempt), and say what happened as a type. One
//! retry driver ([`crate::driver`]) then serves every destination.
//!
//! The engine holds destinations as [`AnyDestination`] and assembled batches as
//! [`AssembledBatch`], so it needs no arm per destination; a destination author implements
//! [`Destination`] only.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::driver::{AttemptLog, RetryPolicy, drive};
use crate::error::{Service, SinkError};
use crate::object::RecordFramer;
use crate::partition::PartitionKeys;

/// One record of a chunk: the chunk's bytes hold its records one after another.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRecord {
    /// Its sequence number.
    pub seq: u64,
    /// When it arrived (Unix ms).
    pub arrival_ms: i64,
    /// Where it ends in the chunk's bytes (it starts where the previous one ends).
    pub end: usize,
}

impl ChunkRecord {
    /// The bytes of record `index` of a chunk: `data` split at each record's end.
    pub fn bytes<'a>(data: &'a [u8], records: &[ChunkRecord], index: usize) -> &'a [u8] {
        let start = index
            .checked_sub(1)
            .map_or(0, |previous| records[previous].end);
        &data[start..records[index].end]
    }
}

/// The bytes of each record of a chunk, in order.
pub fn chunk_records<'a>(
    data: &'a [u8],
    records: &'a [ChunkRecord],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    (0..records.len()).map(move |index| ChunkRecord::bytes(data, records, index))
}

/// A chunk of records as the engine holds it while a batch fills: their bytes one after
/// another, and where each ends.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// The records' bytes.
    pub data: &'a [u8],
    /// Where each record ends, in order.
    pub records: &'a [ChunkRecord],
    /// With dynamic partitioning: the keys every record of the chunk shares.
    pub partition: Option<&'a PartitionKeys>,
}

impl<'a> Chunk<'a> {
    /// Records in the chunk.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record `index`.
    pub fn record(&self, index: usize) -> RecordRef<'a> {
        let record = self.records[index];
        RecordRef {
            seq: record.seq,
            arrival_ms: record.arrival_ms,
            data: ChunkRecord::bytes(self.data, self.records, index),
        }
    }

    /// Every record, in order, one by one.
    pub fn refs(&self) -> Vec<RecordRef<'a>> {
        (0..self.len()).map(|index| self.record(index)).collect()
    }
}

/// One record handed to a destination's encoder.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Its sequence number in the stream.
    pub seq: u64,
    /// When it arrived (Unix ms).
    pub arrival_ms: i64,
    /// The record (after transforms).
    pub data: &'a [u8],
}

/// A record the destination cannot take, found while encoding; it goes to the error output.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Its place in the chunk handed to [`Destination::encode`].
    pub index: usize,
    /// Firehose-style error code.
    pub code: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// What a chunk of records became.
#[derive(Debug)]
pub struct EncodedChunk<P> {
    /// The destination's encoding of the records it took.
    pub piece: P,
    /// The records it could not take.
    pub refusals: Vec<Refusal>,
}

/// Which records a batch holds: the same on every attempt and after a crash replay, so
/// request ids, object keys and document ids derived from it are too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    /// The stream's log incarnation (the first half of its record ids).
    pub run: u64,
    /// When its oldest record arrived (Unix ms): what names objects by time.
    pub oldest_ms: i64,
    /// With dynamic partitioning: the keys every record of the batch shares (its records
    /// are those of `first_seq..=last_seq` with these keys).
    pub partition: Option<Arc<PartitionKeys>>,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Sequence number of its last record.
    pub last_seq: u64,
}

/// One request of a batch: what is sent, and which items of the batch it carries.
#[derive(Debug)]
pub struct Request<B> {
    /// The request body, as the destination built it.
    pub body: B,
    /// The batch items it carries, in order (indexes the destination hands out).
    pub items: Vec<u32>,
}

/// What the destination did with one request.
#[derive(Debug)]
pub enum Outcome {
    /// Every item landed.
    Delivered,
    /// Nothing landed, and the same request may succeed later: send it again after a pause.
    Retry(SinkError),
    /// Nothing landed because the request is too large for the destination: send its items
    /// again in smaller requests.
    TooLarge(SinkError),
    /// Nothing landed, and sending it again would not help: its items go to the error output.
    Refused(SinkError),
    /// The destination answered per item, in the order of [`Request::items`].
    Items(Vec<ItemOutcome>),
}

/// What the destination did with one item of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// It landed.
    Delivered,
    /// Refused for now: send it again.
    Retry(ItemError),
    /// Refused for good: it goes to the error output.
    Refused(ItemError),
    /// Not taken only because another item of the same request was refused (a table loads
    /// all rows or none): send it again at once, without it.
    NotSent,
}

/// Why an item was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Stable code (`errorCode` of the error record).
    pub code: String,
    /// What the destination said.
    pub message: String,
}

/// Where a search document was going, for its error record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentTarget {
    /// The index.
    pub index: String,
    /// The document id.
    pub id: String,
}

/// An item of a batch as its error record shows it.
#[derive(Debug, Clone)]
pub struct ItemRecord {
    /// Its record's sequence number.
    pub seq: u64,
    /// When its record arrived (Unix ms).
    pub arrival_ms: i64,
    /// The record as it was to be delivered; `None` when the destination no longer holds
    /// it (rows encoded for a table): the engine reads it back from the stream's log.
    pub raw: Option<Bytes>,
    /// For search documents: where it was going.
    pub document: Option<DocumentTarget>,
    /// Whether the item is the whole batch (one object): its error records are then every
    /// record of the batch, read back from the stream's log.
    pub whole_batch: bool,
}

impl ItemRecord {
    /// An item that is one record, as delivered.
    pub fn record(seq: u64, arrival_ms: i64, raw: Option<Bytes>) -> Self {
        Self {
            seq,
            arrival_ms,
            raw,
            document: None,
            whole_batch: false,
        }
    }
}

/// An item that did not land: its record and why.
#[derive(Debug, Clone)]
pub struct FailedItem {
    /// The record.
    pub record: ItemRecord,
    /// Stable code.
    pub code: String,
    /// Why, in words.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
}

/// What delivering one batch came to.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Records that landed.
    pub delivered: u64,
    /// Body bytes of the requests that landed.
    pub bytes: u64,
    /// Requests that landed.
    pub requests: u64,
    /// Rounds of sending (1 when everything landed at once).
    pub attempts: u32,
    /// Items refused for good, or still refused when the retry duration ran out.
    pub failed: Vec<FailedItem>,
}

/// The sending half of a destination: a batch's requests, one attempt at one of them, and
/// what a failed item looks like. This is all the retry driver needs.
#[async_trait]
pub trait Sending: Send + Sync + 'static {
    /// What requests are cut from.
    type Batch: Send + Sync + 'static;
    /// One request body.
    type Body: Send + Sync + 'static;

    /// A human-readable name for logs: `https://host/path`, `s3://bucket`.
    fn describe(&self) -> &str;

    /// The kind of destination, which names its error codes.
    fn service(&self) -> Service;

    /// The first attempt's requests.
    fn requests(&self, batch: &Self::Batch) -> Vec<Request<Self::Body>>;

    /// Requests carrying only `items`, for items sent again after a per-item refusal or
    /// a [`Outcome::TooLarge`]; `shrink` counts the `TooLarge` answers so far (each halves
    /// the request size). Runs off the async reactor.
    fn regroup(&self, batch: &Self::Batch, items: &[u32], shrink: u32) -> Vec<Request<Self::Body>>;

    /// Sends one request; one attempt.
    async fn send(&self, batch: &Self::Batch, request: &Request<Self::Body>) -> Outcome;

    /// Body bytes of a request (counted once it lands).
    fn body_len(&self, body: &Self::Body) -> usize;

    /// Item `item` as its error record shows it.
    fn item_record(&self, batch: &Self::Batch, item: u32) -> ItemRecord;

    /// Records item `item` carries (counted once it lands): one, except where one item is
    /// a whole batch.
    fn item_records(&self, _batch: &Self::Batch, _item: u32) -> u64 {
        1
    }

    /// Records of the batch that never became items (refused while encoding, with a
    /// destination-specific record); they go to the error output with the batch's failures.
    fn encoding_failures(&self, _batch: &Self::Batch) -> Vec<FailedItem> {
        Vec::new()
    }
}

/// A destination: how records become requests (and, through [`Sending`], how one request
/// is sent).
#[async_trait]
pub trait Destination: Sending {
    /// What one chunk of records becomes (built on the CPU pool while the batch fills).
    type Piece: Send + 'static;

    /// `!{firehose:error-output-type}` of items that did not land (`http-endpoint-failed`).
    fn failed_output(&self) -> &'static str;

    /// Encodes a chunk of records. Runs on the CPU pool.
    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<Self::Piece>;

    /// How records are appended to a chunk as they arrive, for a destination that takes
    /// them as one byte stream (records framed into an object): the engine then keeps no
    /// record boundaries and hands each full chunk to
    /// [`encode_framed`](Destination::encode_framed). `None` (the default): chunks go to
    /// [`encode`](Destination::encode).
    fn framer(&self) -> Option<&RecordFramer> {
        None
    }

    /// Encodes a chunk of `records` records framed by [`framer`](Destination::framer).
    /// Runs on the CPU pool. Only called when `framer` is `Some`.
    fn encode_framed(&self, framed: Vec<u8>, records: u64) -> Self::Piece {
        let _ = (framed, records);
        unreachable!("only a destination with a framer is handed framed chunks")
    }

    /// Bytes `record` adds to a batch's size (what `buffer.size_mib` counts).
    fn buffered_len(&self, record: &[u8]) -> usize {
        match self.framer() {
            Some(framer) => framer.framed_len(record),
            None => record.len() + 1,
        }
    }

    /// Encodes the records of `chunk` split into `groups` (indexes into the chunk, one list
    /// per partition), one piece per group, when the destination does that faster than
    /// encoding each group's records on their own (a Parquet chunk is decoded once and its
    /// rows taken per group); refusal indexes are positions in their group. `None` means
    /// the engine encodes each group with [`encode`](Destination::encode).
    fn encode_groups(
        &self,
        _chunk: Chunk<'_>,
        _groups: &[Vec<usize>],
    ) -> Option<Vec<EncodedChunk<Self::Piece>>> {
        None
    }

    /// Memory `piece` holds while it waits in a partition's buffer, when that differs from
    /// its records' size (compressed bytes, Arrow columns); `None` when it is about that size.
    fn held_bytes(&self, _piece: &Self::Piece) -> Option<usize> {
        None
    }

    /// Whether [`assemble`](Destination::assemble) is heavy CPU work (writing a Parquet
    /// file) that takes its turn on the CPU pool behind the chunks being encoded, rather
    /// than cheap work (joining pieces) run at once on a blocking thread.
    fn assembly_is_heavy(&self) -> bool {
        false
    }

    /// Puts a batch's pieces together, or says why it cannot (the engine then builds the
    /// batch again from its records). Runs off the async reactor.
    fn assemble(&self, id: BatchId, pieces: Vec<Self::Piece>)
    -> Result<Self::Batch, AssembleError>;

    /// Every record of the batch, as delivered, one per line: the body of a backup object
    /// (`backup.mode: all`).
    fn backup_parts(&self, batch: &Self::Batch) -> Vec<Bytes>;

    /// What a delivered batch's log line names besides the destination (an object's key).
    fn target(&self, _batch: &Self::Batch) -> Option<String> {
        None
    }

    /// Whether [`check`](Destination::check) asks the destination anything (and so is
    /// worth running at start-up and in `hydrant validate`).
    fn checks_before_use(&self) -> bool {
        true
    }

    /// Asks the destination whether it answers; `Ok` names what answered.
    async fn check(&self) -> Result<String, SinkError>;
}

/// Why a batch's pieces could not be put together (a file writer failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AssembleError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A destination as the engine holds it: pieces are type-erased, batches come back as
/// [`AssembledBatch`].
pub trait AnyDestination: Send + Sync + std::fmt::Debug {
    /// See [`Destination::describe`].
    fn describe(&self) -> &str;
    /// See [`Destination::failed_output`].
    fn failed_output(&self) -> &'static str;
    /// See [`Destination::encode`].
    fn encode_any(&self, chunk: Chunk<'_>) -> EncodedChunk<Box<dyn Any + Send>>;
    /// See [`Destination::framer`].
    fn framer_any(&self) -> Option<&RecordFramer>;
    /// See [`Destination::encode_framed`].
    fn encode_framed_any(&self, framed: Vec<u8>, records: u64) -> Box<dyn Any + Send>;
    /// See [`Destination::buffered_len`].
    fn buffered_len_any(&self, record: &[u8]) -> usize;
    /// See [`Destination::encode_groups`].
    fn encode_groups_any(
        &self,
        chunk: Chunk<'_>,
        groups: &[Vec<usize>],
    ) -> Option<Vec<EncodedChunk<Box<dyn Any + Send>>>>;
    /// See [`Destination::held_bytes`]; `None` for a piece not made by this destination.
    fn held_bytes_any(&self, piece: &(dyn Any + Send)) -> Option<usize>;
    /// See [`Destination::assembly_is_heavy`].
    fn assembly_is_heavy_any(&self) -> bool;
    /// See [`Destination::assemble`]; pieces not made by this destination are skipped.
    fn assemble_any(
        self: Arc<Self>,
        id: BatchId,
        pieces: Vec<Box<dyn Any + Send>>,
    ) -> Result<Box<dyn AssembledBatch>, AssembleError>;
    /// See [`Destination::checks_before_use`].
    fn checks_before_use(&self) -> bool;
    /// See [`Destination::check`].
    fn check_any(&self) -> BoxFuture<'_, Result<String, SinkError>>;
}

/// Where items that did not land are kept while a batch is still being delivered: the
/// driver hands it every failure so far before it sends anything of the batch again, so a
/// destination that commits the rest (a table) never does so before the refused items'
/// trace is durable.
#[async_trait]
pub trait FailureKeeper: Send + Sync {
    /// Makes `failed` (every failure of the batch so far) durable.
    async fn keep(&self, failed: &[FailedItem]);
}

/// A batch ready to deliver.
pub trait AssembledBatch: Send + Sync {
    /// See [`Destination::backup_parts`].
    fn backup_parts(&self) -> Vec<Bytes>;
    /// See [`Destination::target`].
    fn target(&self) -> Option<String>;
    /// Delivers the batch under `policy` with the shared retry driver; `attempts` hears of
    /// every request as it is answered.
    fn deliver<'a>(
        &'a self,
        policy: &'a RetryPolicy,
        stream: &'a str,
        attempts: &'a dyn AttemptLog,
        keeper: &'a dyn FailureKeeper,
    ) -> BoxFuture<'a, DeliveryReport>;
}

impl<D: Destination + std::fmt::Debug> AnyDestination for D {
    fn describe(&self) -> &str {
        Sending::describe(self)
    }

    fn failed_output(&self) -> &'static str {
        Destination::failed_output(self)
    }

    fn encode_any(&self, chunk: Chunk<'_>) -> EncodedChunk<Box<dyn Any + Send>> {
        let encoded = self.encode(chunk);
        EncodedChunk {
            piece: Box::new(encoded.piece),
            refusals: encoded.refusals,
        }
    }

    fn framer_any(&self) -> Option<&RecordFramer> {
        self.framer()
    }

    fn encode_framed_any(&self, framed: Vec<u8>, records: u64) -> Box<dyn Any + Send> {
        Box::new(self.encode_framed(framed, records))
    }

    fn buffered_len_any(&self, record: &[u8]) -> usize {
        self.buffered_len(record)
    }

    fn encode_groups_any(
        &self,
        chunk: Chunk<'_>,
        groups: &[Vec<usize>],
    ) -> Option<Vec<EncodedChunk<Box<dyn Any + Send>>>> {
        let encoded = self.encode_groups(chunk, groups)?;
        Some(
            encoded
                .into_iter()
                .map(|encoded| EncodedChunk {
                    piece: Box::new(encoded.piece) as Box<dyn Any + Send>,
                    refusals: encoded.refusals,
                })
                .collect(),
        )
    }

    fn held_bytes_any(&self, piece: &(dyn Any + Send)) -> Option<usize> {
        piece
            .downcast_ref::<D::Piece>()
            .and_then(|piece| self.held_bytes(piece))
    }

    fn assembly_is_heavy_any(&self) -> bool {
        self.assembly_is_heavy()
    }

    fn assemble_any(
        self: Arc<Self>,
        id: BatchId,
        pieces: Vec<Box<dyn Any + Send>>,
    ) -> Result<Box<dyn AssembledBatch>, AssembleError> {
        let pieces = pieces
            .into_iter()
            .filter_map(|piece| piece.downcast::<D::Piece>().ok().map(|piece| *piece))
            .collect();
        let batch = Arc::new(self.assemble(id, pieces)?);
        Ok(Box::new(Assembled {
            destination: self,
            batch,
        }))
    }

    fn checks_before_use(&self) -> bool {
        Destination::checks_before_use(self)
    }

    fn check_any(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        self.check()
    }
}

/// A destination's batch with the destination that sends it.
struct Assembled<D: Destination> {
    destination: Arc<D>,
    batch: Arc<D::Batch>,
}

impl<D: Destination> AssembledBatch for Assembled<D> {
    fn backup_parts(&self) -> Vec<Bytes> {
        self.destination.backup_parts(&self.batch)
    }

    fn target(&self) -> Option<String> {
        self.destination.target(&self.batch)
    }

    fn deliver<'a>(
        &'a self,
        policy: &'a RetryPolicy,
        stream: &'a str,
        attempts: &'a dyn AttemptLog,
        keeper: &'a dyn FailureKeeper,
    ) -> BoxFuture<'a, DeliveryReport> {
        Box::pin(drive(
            &self.destination,
            &self.batch,
            policy,
            stream,
            attempts,
            keeper,
        ))
    }
}
