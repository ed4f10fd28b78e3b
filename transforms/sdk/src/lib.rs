//! Write a Hydrant transform as a plain Rust function per record (or per batch).
//!
//! ```ignore
//! use hydrant_transform::{Outcome, Record, Transform};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn configure(_config: &str) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn transform(&self, record: &Record) -> Outcome {
//!         Outcome::ok(record.data.to_ascii_uppercase())
//!     }
//! }
//!
//! hydrant_transform::export!(Upper);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file is the
//! component a stream's `processors: [{ wasm: { module: ... } }]` names. The host calls
//! [`Transform::configure`] once with the processor's `config:` as JSON, then
//! [`Transform::transform_batch`] (by default [`Transform::transform`] for each record) with
//! every batch. Every record must get exactly one outcome, carrying its id.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "transformer",
        pub_export_macro: true,
        export_macro_name: "export_transformer",
        default_bindings_module: "hydrant_transform::bindings",
    });
}

use bindings::hydrant::transform::types as wit;

/// One record of a batch.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id within the batch (outcomes carry it back; the per-record API does it for you).
    pub id: String,
    /// When Hydrant accepted it, in milliseconds since the Unix epoch.
    pub arrival_ms: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered as `data`.
    Ok,
    /// Left out on purpose.
    Dropped,
    /// Sent to the error output with the message.
    ProcessingFailed,
}

/// The answer for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Firehose's `result`.
    pub result: Disposition,
    /// The record to deliver (for `Ok`).
    pub data: Vec<u8>,
    /// Dynamic partitioning keys.
    pub partition_keys: Vec<(String, String)>,
    /// Why it failed (for `ProcessingFailed`).
    pub error_message: Option<String>,
}

impl Outcome {
    /// Deliver `data` in place of the record.
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Self {
            result: Disposition::Ok,
            data: data.into(),
            partition_keys: Vec::new(),
            error_message: None,
        }
    }

    /// Leave the record out (counted, not delivered).
    pub fn dropped() -> Self {
        Self {
            result: Disposition::Dropped,
            data: Vec::new(),
            partition_keys: Vec::new(),
            error_message: None,
        }
    }

    /// Send the record to the error output with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            result: Disposition::ProcessingFailed,
            data: Vec::new(),
            partition_keys: Vec::new(),
            error_message: Some(message.into()),
        }
    }

    /// Adds a dynamic partitioning key.
    pub fn with_partition_key(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.partition_keys.push((key.into(), value.into()));
        self
    }
}

/// A record transform.
pub trait Transform: Sized + 'static {
    /// Builds the transform from the processor's `config:` (JSON; `{}` when there is none).
    /// An error stops Hydrant from starting, with the message.
    fn configure(config: &str) -> Result<Self, String>;

    /// The outcome of one record.
    fn transform(&self, record: &Record) -> Outcome;

    /// The outcome of each record of a batch, with its record id; by default
    /// [`transform`](Self::transform) record by record. Override it to see the whole batch.
    fn transform_batch(&self, records: Vec<Record>) -> Vec<(String, Outcome)> {
        records
            .into_iter()
            .map(|record| {
                let outcome = self.transform(&record);
                (record.id, outcome)
            })
            .collect()
    }
}

#[doc(hidden)]
pub fn run_batch<T: Transform>(transform: &T, records: Vec<wit::Record>) -> Vec<wit::Outcome> {
    let records = records
        .into_iter()
        .map(|r| Record {
            id: r.record_id,
            arrival_ms: r.approximate_arrival_timestamp,
            data: r.data,
        })
        .collect();
    transform
        .transform_batch(records)
        .into_iter()
        .map(|(record_id, outcome)| wit::Outcome {
            record_id,
            result: match outcome.result {
                Disposition::Ok => wit::OutcomeResult::Ok,
                Disposition::Dropped => wit::OutcomeResult::Dropped,
                Disposition::ProcessingFailed => wit::OutcomeResult::ProcessingFailed,
            },
            data: outcome.data,
            partition_keys: outcome.partition_keys,
            error_message: outcome.error_message,
        })
        .collect()
}

/// Exports `$t` (a [`Transform`]) as the component's `configure` and `transform`.
#[macro_export]
macro_rules! export {
    ($t:ty) => {
        struct __HydrantTransform;

        ::std::thread_local! {
            static __HYDRANT_STATE: ::std::cell::RefCell<::std::option::Option<$t>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::Guest for __HydrantTransform {
            fn configure(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                let built = <$t as $crate::Transform>::configure(&config)?;
                __HYDRANT_STATE.with(|state| *state.borrow_mut() = ::std::option::Option::Some(built));
                ::std::result::Result::Ok(())
            }

            fn transform(
                records: ::std::vec::Vec<$crate::bindings::hydrant::transform::types::Record>,
            ) -> ::std::vec::Vec<$crate::bindings::hydrant::transform::types::Outcome> {
                __HYDRANT_STATE.with(|state| {
                    let state = state.borrow();
                    let transform = state
                        .as_ref()
                        .expect("the host calls configure before transform");
                    $crate::run_batch(transform, records)
                })
            }
        }

        $crate::bindings::export_transformer!(__HydrantTransform with_types_in $crate::bindings);
    };
}
