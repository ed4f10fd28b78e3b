//! Request building: a batch's documents (action and document lines, built — and
//! compressed — chunk by chunk while the batch filled) are sent first as runs of whole
//! chunks up to `max_bulk_bytes`; documents sent again go alone, in requests cut (and
//! compressed) afresh.

use bytes::Bytes;
use serde::Deserialize;

use super::documents::{BulkChunk, DocSpan};
use crate::compress::Codec;
use crate::destination::{DocumentTarget, ItemRecord, Request};

/// A record that never became a document, with where it was going.
#[derive(Debug, Clone)]
pub struct RefusedRecord {
    /// Its sequence number.
    pub seq: u64,
    /// When it arrived (Unix ms).
    pub arrival_ms: i64,
    /// The record as put.
    pub raw: Bytes,
    /// Stable code.
    pub code: &'static str,
    /// Why.
    pub message: String,
    /// Its index and `_id` (empty when unknown).
    pub target: DocumentTarget,
}

/// One chunk's documents and the records of the chunk that could not be documents.
#[derive(Debug)]
pub struct SearchPiece {
    /// The documents.
    pub chunk: BulkChunk,
    /// The records refused.
    pub refused: Vec<RefusedRecord>,
}

/// A batch's documents: chunks in order, each item a (chunk, document) pair.
#[derive(Debug)]
pub struct SearchBatch {
    pub(super) chunks: Vec<BulkChunk>,
    pub(super) refused: Vec<RefusedRecord>,
    items: Vec<(u32, u32)>,
    /// The first item of each chunk.
    first_item: Vec<u32>,
}

/// The index and id an action line names.
#[derive(Deserialize)]
struct ActionLine {
    index: ActionTarget,
}

#[derive(Deserialize)]
struct ActionTarget {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id", default)]
    id: String,
}

impl SearchBatch {
    /// Puts a batch's pieces together.
    pub fn assemble(pieces: Vec<SearchPiece>) -> Self {
        let mut batch = Self {
            chunks: Vec::with_capacity(pieces.len()),
            refused: Vec::new(),
            items: Vec::new(),
            first_item: Vec::with_capacity(pieces.len()),
        };
        for (c, piece) in pieces.into_iter().enumerate() {
            batch.first_item.push(batch.items.len() as u32);
            batch
                .items
                .extend((0..piece.chunk.docs.len() as u32).map(|d| (c as u32, d)));
            batch.chunks.push(piece.chunk);
            batch.refused.extend(piece.refused);
        }
        batch
    }

    fn span(&self, item: u32) -> (&BulkChunk, DocSpan) {
        let (c, d) = self.items[item as usize];
        let chunk = &self.chunks[c as usize];
        (chunk, chunk.docs[d as usize])
    }

    /// First attempt: runs of whole chunks up to `max_bytes`, sent as they were encoded
    /// (and compressed) while the batch filled.
    pub fn whole_chunk_requests(&self, max_bytes: usize, codec: Codec) -> Vec<Request<Vec<Bytes>>> {
        let mut requests = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        let mut group_bytes = 0;
        let flush = |group: &mut Vec<usize>, requests: &mut Vec<Request<Vec<Bytes>>>| {
            if group.is_empty() {
                return;
            }
            let items = group
                .iter()
                .flat_map(|&c| {
                    let first = self.first_item[c];
                    first..first + self.chunks[c].docs.len() as u32
                })
                .collect();
            let body = match codec {
                Codec::None => group.iter().map(|&c| self.chunks[c].body.clone()).collect(),
                codec => codec.assemble(
                    group
                        .iter()
                        .filter_map(|&c| self.chunks[c].compressed.clone())
                        .collect(),
                ),
            };
            requests.push(Request { body, items });
            group.clear();
        };
        for (c, chunk) in self.chunks.iter().enumerate() {
            if chunk.docs.is_empty() {
                continue;
            }
            if !group.is_empty() && group_bytes + chunk.body.len() > max_bytes {
                flush(&mut group, &mut requests);
                group_bytes = 0;
            }
            group.push(c);
            group_bytes += chunk.body.len();
        }
        flush(&mut group, &mut requests);
        requests
    }

    /// Later attempts: `items` alone, in requests up to `max_bytes`, compressed when
    /// requests are.
    pub fn item_requests(
        &self,
        items: &[u32],
        max_bytes: usize,
        codec: Codec,
    ) -> Vec<Request<Vec<Bytes>>> {
        let mut requests = Vec::new();
        let mut current = Request {
            body: Vec::new(),
            items: Vec::new(),
        };
        let mut bytes = 0;
        for &item in items {
            let (chunk, span) = self.span(item);
            let len = (span.end - span.start) as usize;
            if !current.items.is_empty() && bytes + len > max_bytes {
                requests.push(std::mem::replace(
                    &mut current,
                    Request {
                        body: Vec::new(),
                        items: Vec::new(),
                    },
                ));
                bytes = 0;
            }
            current
                .body
                .push(chunk.body.slice(span.start as usize..span.end as usize));
            current.items.push(item);
            bytes += len;
        }
        if !current.items.is_empty() {
            requests.push(current);
        }
        if !codec.is_identity() {
            for request in &mut requests {
                let raw = request.body.concat();
                request.body = codec.assemble(vec![codec.compress_slice(&raw)]);
            }
        }
        requests
    }

    /// Item `item` as its error record shows it: the document as sent (without its line
    /// break), named by its action line.
    pub fn record(&self, item: u32) -> ItemRecord {
        let (chunk, span) = self.span(item);
        let action = serde_json::from_slice::<ActionLine>(
            &chunk.body[span.start as usize..span.doc_start as usize],
        )
        .map(|line| line.index);
        let target = match action {
            Ok(target) => DocumentTarget {
                index: target.index,
                id: target.id,
            },
            Err(_) => DocumentTarget {
                index: String::new(),
                id: String::new(),
            },
        };
        ItemRecord {
            seq: span.seq,
            arrival_ms: span.arrival_ms,
            raw: Some(
                chunk
                    .body
                    .slice(span.doc_start as usize..span.end as usize - 1),
            ),
            document: Some(target),
            whole_batch: false,
        }
    }

    /// Every document, one per line.
    pub fn documents(&self) -> Vec<Bytes> {
        self.chunks
            .iter()
            .flat_map(|chunk| {
                chunk
                    .docs
                    .iter()
                    .map(|doc| chunk.body.slice(doc.doc_start as usize..doc.end as usize))
            })
            .collect()
    }
}
