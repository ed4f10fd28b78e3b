//! Hydrant: a self-hosted, Firehose-compatible delivery pipeline.
//!
//! The modules follow a record's path: [`ingest`] (the API) → [`buffer`] (per-stream batches)
//! → [`transform`] (WebAssembly processors) → the stream's destination from the
//! `hydrant-sinks` crate, which encodes each chunk (objects: framing or Parquet, then
//! compression) → [`deliver`] (one retry driver, error output) into that destination. [`spool`] makes puts durable, [`metrics`]
//! counts what happens, [`console`] shows it, [`cpu_pool`] runs the CPU-heavy stages. [`config`] is the YAML file, [`pipeline`]
//! wires the streams together (and reloads them), [`server`] runs it all ([`tls`] on its listener), [`bench`] is the load generator.

#![warn(missing_docs)]

pub mod bench;
pub mod buffer;
pub mod cluster;
pub mod compress;
pub mod config;
pub mod console;
pub mod cpu_pool;
pub mod deliver;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod reload_command;
pub mod server;
pub mod source;
pub mod spool;
pub mod tls;
pub mod transform;
