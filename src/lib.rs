//! Hydrant: a self-hosted, Firehose-compatible delivery pipeline.
//!
//! The modules follow a record's path: [`ingest`] (the API) → [`buffer`] (per-stream batches)
//! → [`transform`] (WebAssembly processors) → [`encode`] (record layout) → [`compress`] → [`deliver`] (object keys, retries) into a
//! destination from the `hydrant-sinks` crate. [`spool`] makes puts durable, [`metrics`]
//! counts what happens, [`cpu_pool`] runs the CPU-heavy stages. [`config`] is the YAML file, [`pipeline`]
//! wires one stream together, [`server`] runs it all ([`tls`] on its listener), [`bench`] is the load generator.

#![warn(missing_docs)]

pub mod bench;
pub mod buffer;
pub mod compress;
pub mod config;
pub mod cpu_pool;
pub mod deliver;
pub mod encode;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod spool;
pub mod tls;
pub mod transform;
