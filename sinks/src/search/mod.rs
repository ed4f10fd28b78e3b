//! An OpenSearch or Elasticsearch cluster, written to with the `_bulk` API.
//!
//! Records become action and document lines on the CPU pool while the batch fills
//! ([`documents`]); a sealed batch goes out as requests of whole chunks ([`request`]); the
//! cluster's answer is read item by item ([`response`]): items refused for now are sent
//! again alone, items refused for good are reported, and a `413` sends the items again in
//! smaller requests.

mod documents;
mod request;
mod response;
mod service;

pub use documents::{
    BulkChunk, DocSpan, DocumentEncoder, DocumentIds, EncodedDocuments, INVALID_DOCUMENT_ID,
    IndexRotation, NOT_A_JSON_OBJECT, Rejection, rotated_index,
};
pub use request::{RefusedRecord, SearchBatch, SearchPiece};
pub use response::{
    ItemError as BulkItemError, ItemOutcome as BulkItemOutcome, parse_bulk_response,
};
pub use service::{SearchAuth, SearchSettings, SearchSink};

use async_trait::async_trait;
use bytes::Bytes;

use crate::destination::{
    AssembleError, BatchId, Chunk, Destination, DocumentTarget, EncodedChunk, FailedItem,
    ItemError, ItemOutcome, ItemRecord, Outcome, Request, Sending,
};
use crate::error::{Service, SinkError};

/// `!{firehose:error-output-type}` of documents a search cluster could not take.
pub const SEARCH_FAILED: &str = "AmazonOpenSearchService-failed";

/// The smallest request body retries shrink to after `413 Payload Too Large`.
const MIN_BULK_BYTES: usize = 64 * 1024;

/// A search cluster and how documents are made for it.
#[derive(Debug)]
pub struct SearchCluster {
    service: SearchSink,
    encoder: DocumentEncoder,
    max_bulk_bytes: usize,
}

impl SearchCluster {
    /// The cluster `service` reaches, documents made by `encoder`, requests of at most
    /// `max_bulk_bytes` before compression.
    pub fn new(service: SearchSink, encoder: DocumentEncoder, max_bulk_bytes: usize) -> Self {
        Self {
            service,
            encoder,
            max_bulk_bytes,
        }
    }
}

#[async_trait]
impl Sending for SearchCluster {
    type Batch = SearchBatch;
    type Body = Vec<Bytes>;

    fn describe(&self) -> &str {
        self.service.describe()
    }

    fn service(&self) -> Service {
        Service::Search
    }

    fn requests(&self, batch: &SearchBatch) -> Vec<Request<Vec<Bytes>>> {
        batch.whole_chunk_requests(self.max_bulk_bytes, self.encoder.codec())
    }

    fn regroup(&self, batch: &SearchBatch, items: &[u32], shrink: u32) -> Vec<Request<Vec<Bytes>>> {
        let max_bytes = (self.max_bulk_bytes >> shrink.min(16)).max(MIN_BULK_BYTES);
        batch.item_requests(items, max_bytes, self.encoder.codec())
    }

    async fn send(&self, _batch: &SearchBatch, request: &Request<Vec<Bytes>>) -> Outcome {
        match self
            .service
            .bulk(request.body.clone(), request.items.len())
            .await
        {
            Ok(outcomes) => Outcome::Items(
                outcomes
                    .into_iter()
                    .map(|outcome| match outcome {
                        BulkItemOutcome::Indexed => ItemOutcome::Delivered,
                        BulkItemOutcome::Retry(error) => ItemOutcome::Retry(item_error(error)),
                        BulkItemOutcome::Failed(error) => ItemOutcome::Refused(item_error(error)),
                    })
                    .collect(),
            ),
            // The cluster takes smaller bodies than `max_bulk_mib`.
            Err(error) if error.status == Some(413) => Outcome::TooLarge(error),
            // Every other whole-request failure (unreachable, 503, refused credentials) may
            // pass: its documents are sent again until the retry duration runs out.
            Err(error) => Outcome::Retry(error),
        }
    }

    fn body_len(&self, body: &Vec<Bytes>) -> usize {
        body.iter().map(Bytes::len).sum()
    }

    fn item_record(&self, batch: &SearchBatch, item: u32) -> ItemRecord {
        batch.record(item)
    }

    fn encoding_failures(&self, batch: &SearchBatch) -> Vec<FailedItem> {
        batch
            .refused
            .iter()
            .map(|refused| FailedItem {
                record: ItemRecord {
                    seq: refused.seq,
                    arrival_ms: refused.arrival_ms,
                    raw: Some(refused.raw.clone()),
                    document: Some(refused.target.clone()),
                    whole_batch: false,
                },
                code: refused.code.to_string(),
                message: refused.message.clone(),
                attempts: 0,
            })
            .collect()
    }
}

#[async_trait]
impl Destination for SearchCluster {
    type Piece = SearchPiece;

    fn failed_output(&self) -> &'static str {
        SEARCH_FAILED
    }

    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<SearchPiece> {
        let records = &chunk.refs()[..];
        let encoded = self.encoder.encode_chunk(records, chunk.partition);
        let refused = encoded
            .rejected
            .into_iter()
            .map(|(index, rejection)| {
                let record = &records[index];
                RefusedRecord {
                    seq: record.seq,
                    arrival_ms: record.arrival_ms,
                    raw: Bytes::copy_from_slice(record.data),
                    code: rejection.code,
                    message: rejection.message,
                    target: DocumentTarget {
                        index: self.encoder.index_name(record.arrival_ms, chunk.partition),
                        id: self
                            .encoder
                            .document_id(record.seq, record.data)
                            .unwrap_or_default(),
                    },
                }
            })
            .collect();
        let codec = self.encoder.codec();
        let compressed = (!codec.is_identity()).then(|| self.encoder.compress(&encoded.body));
        EncodedChunk {
            piece: SearchPiece {
                chunk: BulkChunk {
                    body: Bytes::from(encoded.body),
                    compressed,
                    docs: encoded.docs,
                },
                refused,
            },
            refusals: Vec::new(),
        }
    }

    fn assemble(
        &self,
        _id: BatchId,
        pieces: Vec<SearchPiece>,
    ) -> Result<SearchBatch, AssembleError> {
        Ok(SearchBatch::assemble(pieces))
    }

    fn backup_parts(&self, batch: &SearchBatch) -> Vec<Bytes> {
        batch.documents()
    }

    async fn check(&self) -> Result<String, SinkError> {
        self.service.check().await
    }
}

/// An item's refusal as its error record names it: the item's status, the cluster's error.
fn item_error(error: BulkItemError) -> ItemError {
    ItemError {
        code: error.status.to_string(),
        message: error.message,
    }
}
