//! One object write as something the retry driver can send: the engine builds an object's
//! body (framed or Parquet, compressed on every core while the batch filled) and the shared
//! driver writes it, with the same backoff, deadline and logs as every other destination.

use std::sync::Arc;

use async_trait::async_trait;

use super::{EncodedObject, ObjectSink, WriteMode};
use crate::destination::{ItemRecord, Outcome, Request, Sending};
use crate::error::{Service, SinkErrorKind};

/// An object store taking one object per batch.
pub struct ObjectWrite {
    sink: Arc<dyn ObjectSink>,
}

impl ObjectWrite {
    /// Writes to `sink`.
    pub fn new(sink: Arc<dyn ObjectSink>) -> Self {
        Self { sink }
    }
}

/// An object, how it may be written, and the batch it holds.
#[derive(Debug)]
pub struct ObjectBatch {
    /// The object.
    pub object: EncodedObject,
    /// Whether it may replace one already there.
    pub mode: WriteMode,
    /// The sequence number of its first record and when the oldest arrived (for the record
    /// of a failed write, which the engine expands into the batch's records).
    pub first_seq: u64,
    /// When its oldest record arrived (Unix ms).
    pub oldest_ms: i64,
}

#[async_trait]
impl Sending for ObjectWrite {
    type Batch = ObjectBatch;
    type Body = ();

    fn describe(&self) -> &str {
        self.sink.describe()
    }

    fn service(&self) -> Service {
        Service::ObjectStore
    }

    fn requests(&self, _batch: &ObjectBatch) -> Vec<Request<()>> {
        vec![Request {
            body: (),
            items: vec![0],
        }]
    }

    fn regroup(&self, batch: &ObjectBatch, _items: &[u32], _shrink: u32) -> Vec<Request<()>> {
        self.requests(batch)
    }

    async fn send(&self, batch: &ObjectBatch, _request: &Request<()>) -> Outcome {
        match self.sink.put(&batch.object, batch.mode).await {
            Ok(()) => Outcome::Delivered,
            // A create-only write of a deterministic key found the object a run before a
            // crash wrote: it is delivered.
            Err(error) if error.kind == SinkErrorKind::AlreadyExists => {
                tracing::info!(
                    key = %batch.object.key,
                    "object already written before a restart; not writing it again"
                );
                Outcome::Delivered
            }
            // Every other failure may pass (an outage, expired credentials, a missing
            // bucket being created): retried until the retry duration runs out.
            Err(error) => Outcome::Retry(error),
        }
    }

    fn body_len(&self, _body: &()) -> usize {
        0
    }

    fn item_record(&self, batch: &ObjectBatch, _item: u32) -> ItemRecord {
        ItemRecord {
            seq: batch.first_seq,
            arrival_ms: batch.oldest_ms,
            raw: None,
            document: None,
        }
    }
}
