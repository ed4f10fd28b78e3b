//! Destinations Hydrant delivers batches to.
//!
//! This crate knows nothing about the engine: a sink is handed a finished batch (for object
//! stores, an encoded and compressed object with its key; for PostgreSQL, typed rows with the
//! batch's id; for a search cluster, `_bulk` request bodies) and reports whether it landed.
//! Retry policy that every sink shares lives in [`retry`].

#![warn(missing_docs)]

pub mod compress;
pub mod destination;
pub mod driver;
pub mod error;
pub mod field_query;
mod http;
pub mod http_endpoint;
pub mod jq;
pub mod json;
pub mod object;
pub mod partition;
pub mod postgres;
pub mod retry;
mod roots;
pub mod search;

/// Everything a sink author or the engine needs in one import.
pub mod prelude {
    pub use crate::destination::{
        AnyDestination, AssembleError, AssembledBatch, BatchId, Chunk, ChunkRecord, DeliveryReport,
        Destination, DocumentTarget, EncodedChunk, FailedItem, FailureKeeper, ItemError,
        ItemOutcome, ItemRecord, Outcome, RecordRef, Refusal, Request, Sending,
    };
    pub use crate::driver::{AttemptLog, RetryPolicy};
    pub use crate::error::{Service, SinkError, SinkErrorKind};
    pub use crate::object::{
        EncodedObject, ObjectSink, ObjectStoreSink, S3Options, ServerSideEncryption, WriteMode,
    };
    pub use crate::retry::Backoff;
}
