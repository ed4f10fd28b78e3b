//! Delivery into a search cluster: the batch's bulk lines (built while it filled) go out in
//! requests of at most `max_bulk_mib`, several at once; documents the cluster refuses for
//! now are sent again alone, with backoff, until the retry duration runs out; documents it
//! refuses for good, and the ones still refused then, go to the error output with their
//! reasons.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use hydrant_sinks::prelude::*;
use hydrant_sinks::search::{ItemOutcome, SearchSink};
use tokio::time::Instant;

use super::DeliveryLoop;
use super::error_output::{DocumentTarget, ErrorLine};
use crate::buffer::FailedRecord;
use crate::compress::Codec;
use crate::encode::documents::{BulkChunk, DocSpan, DocumentEncoder};
use crate::spool::SeqRange;

/// `!{firehose:error-output-type}` of documents a search cluster could not take.
pub const SEARCH_FAILED: &str = "AmazonOpenSearchService-failed";

/// The smallest request body retries shrink to after `413 Payload Too Large`.
const MIN_BULK_BYTES: usize = 64 * 1024;

/// Seed of the failed documents' object key, so it differs from the backup's.
const SEARCH_FAILED_SALT: u64 = 0x7365_6172_6368;

/// What delivering to a search cluster needs.
#[derive(Debug)]
pub struct SearchDelivery {
    /// The cluster.
    pub sink: Arc<SearchSink>,
    /// How documents were encoded (index names and ids of records that never became one).
    pub encoder: Arc<DocumentEncoder>,
    /// Largest request body before compression.
    pub max_bulk_bytes: usize,
    /// Requests of one batch in flight at once.
    pub concurrency: usize,
    /// Whether every record is also written to the backup destination.
    pub backup_all: bool,
}

/// A document of the batch: chunk number and place in that chunk's documents.
#[derive(Debug, Clone, Copy)]
struct DocRef {
    chunk: u32,
    doc: u32,
}

/// One bulk request on its way: its body and the documents in it, in order.
struct BulkRequest {
    body: Vec<Bytes>,
    docs: Vec<DocRef>,
}

/// A document (or record) that goes to the error output.
struct DocumentFailure {
    attempts: u32,
    arrival_ms: i64,
    code: String,
    message: String,
    document_id: String,
    index: String,
    raw: Bytes,
}

/// Why a document is sent again.
struct RetryReason {
    code: String,
    message: String,
}

/// The index and id an action line names.
#[derive(serde::Deserialize)]
struct ActionLine {
    index: ActionTarget,
}

#[derive(serde::Deserialize)]
struct ActionTarget {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id", default)]
    id: String,
}

impl DeliveryLoop {
    /// Indexes the batch `range`'s documents; `rejected` are its records that could not be
    /// documents. Always ends with every document indexed or in the error output.
    pub(super) async fn index_documents(
        &self,
        search: &SearchDelivery,
        chunks: Vec<BulkChunk>,
        rejected: Vec<FailedRecord>,
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) {
        if search.backup_all {
            self.back_up_documents(&chunks, range, oldest).await;
        }
        let mut failures: Vec<DocumentFailure> = rejected
            .into_iter()
            .map(|record| DocumentFailure {
                attempts: 0,
                arrival_ms: record.arrival_ms,
                code: record.error.code.to_string(),
                message: record.error.message,
                document_id: search
                    .encoder
                    .document_id(record.seq, &record.data)
                    .unwrap_or_default(),
                index: search.encoder.index_name(record.arrival_ms),
                raw: Bytes::from(record.data),
            })
            .collect();
        let total: usize = chunks.iter().map(|c| c.docs.len()).sum();
        let mut requests =
            whole_chunk_requests(&chunks, search.max_bulk_bytes, search.encoder.codec());
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let give_up_at = Instant::now() + self.retry_duration;
        let mut indexed = 0u64;
        let mut attempts = 1u32;
        let mut max_bulk_bytes = search.max_bulk_bytes;
        loop {
            let sends = requests.len();
            let results: Vec<_> = futures_util::stream::iter(requests)
                .map(|request| async move {
                    let count = request.docs.len();
                    (request.docs, search.sink.bulk(request.body, count).await)
                })
                .buffer_unordered(search.concurrency)
                .collect()
                .await;
            let mut retry: Vec<(DocRef, RetryReason)> = Vec::new();
            for (docs, result) in results {
                match result {
                    Ok(outcomes) => {
                        for (doc, outcome) in docs.into_iter().zip(outcomes) {
                            match outcome {
                                ItemOutcome::Indexed => indexed += 1,
                                ItemOutcome::Retry(error) => retry.push((
                                    doc,
                                    RetryReason {
                                        code: error.status.to_string(),
                                        message: error.message,
                                    },
                                )),
                                ItemOutcome::Failed(error) => failures.push(failure_of(
                                    &chunks,
                                    doc,
                                    attempts,
                                    error.status.to_string(),
                                    error.message,
                                )),
                            }
                        }
                    }
                    Err(error) => {
                        self.counters
                            .failed_attempts
                            .fetch_add(1, Ordering::Relaxed);
                        if error.status == Some(413) {
                            // The cluster takes smaller bodies than `max_bulk_mib`.
                            max_bulk_bytes = (max_bulk_bytes / 2).max(MIN_BULK_BYTES);
                        }
                        tracing::warn!(
                            stream = %self.stream,
                            destination = %error.destination,
                            code = error.code(),
                            reason = %error.reason,
                            documents = docs.len(),
                            attempt = attempts,
                            "bulk request failed; its documents will be sent again"
                        );
                        let message = error.to_string();
                        retry.extend(docs.into_iter().map(|doc| {
                            (
                                doc,
                                RetryReason {
                                    code: error.code().to_string(),
                                    message: message.clone(),
                                },
                            )
                        }));
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if Instant::now() >= give_up_at {
                tracing::error!(
                    stream = %self.stream,
                    documents = retry.len(),
                    attempts,
                    first_error = %retry[0].1.message,
                    "retry duration exhausted; sending the documents still refused to the error output"
                );
                failures.extend(retry.into_iter().map(|(doc, reason)| {
                    failure_of(&chunks, doc, attempts, reason.code, reason.message)
                }));
                break;
            }
            let left = give_up_at.saturating_duration_since(Instant::now());
            let delay = backoff
                .next_delay()
                .min(left.max(std::time::Duration::from_millis(10)));
            tracing::warn!(
                stream = %self.stream,
                documents = retry.len(),
                of = total,
                requests = sends,
                attempt = attempts,
                retry_in_ms = delay.as_millis() as u64,
                first_error = %retry[0].1.message,
                "the cluster refused documents for now; sending them again"
            );
            tokio::time::sleep(delay).await;
            let docs: Vec<DocRef> = retry.into_iter().map(|(doc, _)| doc).collect();
            requests = retry_requests(&chunks, &docs, search, max_bulk_bytes).await;
            attempts += 1;
        }
        if !failures.is_empty() {
            self.write_document_failures(&failures, range, oldest).await;
        }
        self.counters.records.fetch_add(indexed, Ordering::Relaxed);
        self.counters.objects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            stream = %self.stream,
            destination = search.sink.describe(),
            documents = indexed,
            failed = failures.len(),
            first_seq = range.first,
            last_seq = range.last,
            attempts,
            "indexed batch"
        );
    }

    /// Writes every document of the batch, one per line, to the backup destination before
    /// it is indexed (with a spool, a replay writes the same key and is not written twice).
    async fn back_up_documents(
        &self,
        chunks: &[BulkChunk],
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) {
        let parts: Vec<Bytes> = chunks
            .iter()
            .flat_map(|chunk| {
                chunk
                    .docs
                    .iter()
                    .map(|doc| chunk.body.slice(doc.doc_start as usize..doc.end as usize))
            })
            .collect();
        if parts.is_empty() {
            return;
        }
        let object = EncodedObject {
            key: self.keys.key(oldest, &mut self.batch_rng(0, range)),
            parts,
            content_type: "application/x-ndjson",
            content_encoding: None,
        };
        self.put_until_taken(&object, self.write_mode()).await;
        tracing::debug!(stream = %self.stream, key = %object.key, "backed up the batch's documents");
    }

    /// Writes the batch's failed documents to the error output in Firehose's
    /// `AmazonOpenSearchService-failed` format (replacing what an earlier run of the same
    /// batch wrote: this run's outcome is the one that counts).
    async fn write_document_failures(
        &self,
        failures: &[DocumentFailure],
        range: SeqRange,
        oldest: DateTime<Utc>,
    ) {
        let ended_ms = Utc::now().timestamp_millis();
        let mut body = Vec::new();
        for failure in failures {
            ErrorLine {
                attempts_made: failure.attempts,
                arrival_timestamp: failure.arrival_ms,
                error_code: &failure.code,
                error_message: &failure.message,
                attempt_ending_timestamp: ended_ms,
                document: Some(DocumentTarget {
                    id: &failure.document_id,
                    index: &failure.index,
                    type_name: "",
                }),
                raw_data: &failure.raw,
            }
            .push_to(&mut body);
        }
        let object = self.error_object(SEARCH_FAILED, SEARCH_FAILED_SALT, range, oldest, body);
        self.put_until_taken(&object, WriteMode::Overwrite).await;
        self.counters
            .error_output_records
            .fetch_add(failures.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            stream = %self.stream,
            key = %object.key,
            documents = failures.len(),
            first_error = %failures[0].message,
            "documents that could not be indexed were sent to the error output"
        );
    }
}

/// The error record of document `doc`, named by its action line.
fn failure_of(
    chunks: &[BulkChunk],
    doc: DocRef,
    attempts: u32,
    code: String,
    message: String,
) -> DocumentFailure {
    let chunk = &chunks[doc.chunk as usize];
    let span: DocSpan = chunk.docs[doc.doc as usize];
    let action = serde_json::from_slice::<ActionLine>(
        &chunk.body[span.start as usize..span.doc_start as usize],
    )
    .map(|line| line.index);
    let (index, document_id) = match action {
        Ok(target) => (target.index, target.id),
        Err(_) => (String::new(), String::new()),
    };
    DocumentFailure {
        attempts,
        arrival_ms: span.arrival_ms,
        code,
        message,
        document_id,
        index,
        // The document as sent, without its line break.
        raw: chunk
            .body
            .slice(span.doc_start as usize..span.end as usize - 1),
    }
}

/// First attempt: runs of whole chunks up to `max_bytes`, sent as they were encoded (and
/// compressed) while the batch filled.
fn whole_chunk_requests(chunks: &[BulkChunk], max_bytes: usize, codec: Codec) -> Vec<BulkRequest> {
    let mut requests = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut group_bytes = 0;
    let flush = |group: &mut Vec<usize>, requests: &mut Vec<BulkRequest>| {
        if group.is_empty() {
            return;
        }
        let docs = group
            .iter()
            .flat_map(|&c| {
                (0..chunks[c].docs.len()).map(move |d| DocRef {
                    chunk: c as u32,
                    doc: d as u32,
                })
            })
            .collect();
        let body = match codec {
            Codec::None => group.iter().map(|&c| chunks[c].body.clone()).collect(),
            codec => codec.assemble(
                group
                    .iter()
                    .filter_map(|&c| chunks[c].compressed.clone())
                    .collect(),
            ),
        };
        requests.push(BulkRequest { body, docs });
        group.clear();
    };
    for (c, chunk) in chunks.iter().enumerate() {
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

/// Later attempts: the documents `docs` alone, in requests up to `max_bulk_bytes`,
/// compressed on the CPU pool when requests are.
async fn retry_requests(
    chunks: &[BulkChunk],
    docs: &[DocRef],
    search: &SearchDelivery,
    max_bulk_bytes: usize,
) -> Vec<BulkRequest> {
    let mut requests = Vec::new();
    let mut current = BulkRequest {
        body: Vec::new(),
        docs: Vec::new(),
    };
    let mut bytes = 0;
    for &doc in docs {
        let chunk = &chunks[doc.chunk as usize];
        let span = chunk.docs[doc.doc as usize];
        let len = (span.end - span.start) as usize;
        if !current.docs.is_empty() && bytes + len > max_bulk_bytes {
            requests.push(std::mem::replace(
                &mut current,
                BulkRequest {
                    body: Vec::new(),
                    docs: Vec::new(),
                },
            ));
            bytes = 0;
        }
        current
            .body
            .push(chunk.body.slice(span.start as usize..span.end as usize));
        current.docs.push(doc);
        bytes += len;
    }
    if !current.docs.is_empty() {
        requests.push(current);
    }
    let codec = search.encoder.codec();
    if codec.is_identity() {
        return requests;
    }
    for request in &mut requests {
        let raw = request.body.concat();
        let encoder = Arc::clone(&search.encoder);
        if let Ok(compressed) = crate::cpu_pool::spawn(move || encoder.compress(&raw))
            .result()
            .await
        {
            request.body = codec.assemble(vec![compressed]);
        }
    }
    requests
}
