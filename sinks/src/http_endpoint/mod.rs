//! Firehose's HTTP endpoint destination: records `POST`ed as JSON
//! (`{"requestId","timestamp","records":[{"data":<base64>}]}`) with the protocol's
//! `X-Amz-Firehose-*` headers; only `200` echoing the `requestId` counts as delivered.
//!
//! A request's id derives from the records it carries, so it is the same on every retry
//! and after a crash replay: a receiver that remembers the ids it has taken never takes a
//! record twice.

mod request;
mod retry;
mod service;

pub use request::{EndpointBatch, EndpointBody, EntriesPiece, RequestShape, request_id};
pub use service::EndpointSettings;

use async_trait::async_trait;
use bytes::Bytes;

use crate::destination::{
    AssembleError, BatchId, Chunk, Destination, EncodedChunk, ItemRecord, Outcome, Request, Sending,
};
use crate::error::{Service, SinkError};
use service::EndpointService;

/// `!{firehose:error-output-type}` of records an HTTP endpoint did not take.
pub const HTTP_ENDPOINT_FAILED: &str = "http-endpoint-failed";

/// An HTTP endpoint and how requests to it are cut.
#[derive(Debug)]
pub struct HttpEndpoint {
    service: EndpointService,
    shape: RequestShape,
    url: String,
}

impl HttpEndpoint {
    /// The endpoint `settings` names, with requests of at most `max_request_bytes`
    /// (before compression).
    pub fn new(settings: &EndpointSettings, max_request_bytes: usize) -> Result<Self, SinkError> {
        Ok(Self {
            service: EndpointService::new(settings)?,
            shape: RequestShape {
                max_request_bytes,
                gzip: settings.gzip,
            },
            url: settings.url.clone(),
        })
    }
}

#[async_trait]
impl Sending for HttpEndpoint {
    type Batch = EndpointBatch;
    type Body = EndpointBody;

    fn describe(&self) -> &str {
        &self.url
    }

    fn service(&self) -> Service {
        Service::HttpEndpoint
    }

    fn requests(&self, batch: &EndpointBatch) -> Vec<Request<EndpointBody>> {
        batch.first_requests()
    }

    fn regroup(
        &self,
        batch: &EndpointBatch,
        items: &[u32],
        shrink: u32,
    ) -> Vec<Request<EndpointBody>> {
        let shape = RequestShape {
            max_request_bytes: (self.shape.max_request_bytes >> shrink.min(16)).max(1),
            ..self.shape
        };
        batch.build(items, shape)
    }

    async fn send(&self, _batch: &EndpointBatch, request: &Request<EndpointBody>) -> Outcome {
        let result = match self.service.post(&request.body).await {
            Ok((status, answer)) => {
                retry::classify(&self.url, &request.body.request_id, status, &answer)
            }
            Err(error) => Err(error),
        };
        retry::outcome(result)
    }

    fn body_len(&self, body: &EndpointBody) -> usize {
        body.bytes.len()
    }

    fn item_record(&self, batch: &EndpointBatch, item: u32) -> ItemRecord {
        let (seq, arrival_ms, data) = batch.record(item);
        ItemRecord {
            seq,
            arrival_ms,
            raw: Some(Bytes::from(data)),
            document: None,
            whole_batch: false,
        }
    }
}

#[async_trait]
impl Destination for HttpEndpoint {
    type Piece = EntriesPiece;

    fn failed_output(&self) -> &'static str {
        HTTP_ENDPOINT_FAILED
    }

    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<EntriesPiece> {
        let records = &chunk.refs()[..];
        EncodedChunk {
            piece: request::encode(records),
            refusals: Vec::new(),
        }
    }

    fn assemble(
        &self,
        id: BatchId,
        pieces: Vec<EntriesPiece>,
    ) -> Result<EndpointBatch, AssembleError> {
        Ok(EndpointBatch::assemble(id, pieces, self.shape))
    }

    fn backup_parts(&self, batch: &EndpointBatch) -> Vec<Bytes> {
        (0..batch.len() as u32)
            .map(|item| {
                let mut data = batch.record(item).2;
                if data.last() != Some(&b'\n') {
                    data.push(b'\n');
                }
                Bytes::from(data)
            })
            .collect()
    }

    async fn check(&self) -> Result<String, SinkError> {
        self.service.reachable().await
    }
}
