//! Object-store destinations: S3-compatible stores (AWS S3, MinIO, SeaweedFS, Garage) and a
//! local directory, all behind one small trait; how records are laid out in an object
//! (framed or Parquet) and how objects are named.

mod config;
mod destination;
pub mod framing;
pub mod key;
pub mod parquet;
mod store;

pub use config::{S3Options, ServerSideEncryption};
pub use destination::{
    OBJECT_STORE_FAILED, ObjectBatch, ObjectDestination, ObjectFormat, ObjectPiece,
};
pub use framing::{ConversionError, RecordFramer};
pub use key::{KeyTemplate, KeyTemplateError, ObjectKeyBuilder, batch_seed};
pub use store::ObjectStoreSink;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::SinkError;

/// One finished object: its key, its body as a list of byte chunks (so a body assembled from
/// separately compressed pieces is never copied into one buffer), and its HTTP metadata.
#[derive(Debug, Clone)]
pub struct EncodedObject {
    /// Full key inside the bucket or directory, e.g. `2026/11/25/20/events-1-...gz`.
    pub key: String,
    /// The body, in order.
    pub parts: Vec<Bytes>,
    /// `Content-Type` to record with the object where the store supports metadata.
    pub content_type: &'static str,
    /// `Content-Encoding` to record with the object (`gzip`, ...), if any.
    pub content_encoding: Option<&'static str>,
}

impl EncodedObject {
    /// Total body size in bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }
}

/// Whether a write may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace whatever is there.
    Overwrite,
    /// Write only if no object has the key (`If-None-Match: *`); otherwise fail with
    /// [`SinkErrorKind::AlreadyExists`](crate::error::SinkErrorKind::AlreadyExists). Makes a
    /// replayed write of a deterministic key a no-op.
    CreateOnly,
}

/// A destination that stores whole objects under keys.
#[async_trait]
pub trait ObjectSink: Send + Sync {
    /// Writes `object` under `mode`. One attempt: the caller owns retries, so it can log each
    /// one and keep its own deadline.
    async fn put(&self, object: &EncodedObject, mode: WriteMode) -> Result<(), SinkError>;

    /// A human-readable name for logs: `s3://bucket` or `file:///path`.
    fn describe(&self) -> &str;
}
