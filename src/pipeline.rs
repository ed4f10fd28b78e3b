//! The running delivery streams: one buffer and one delivery loop per configured stream.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hydrant_sinks::prelude::*;
use tokio::task::JoinHandle;

use crate::buffer::{BufferSettings, IngestCapacity, StreamBuffer};
use crate::compress::Codec;
use crate::config::{Config, Destination, StreamConfig};
use crate::deliver::object_key::{KeyTemplate, ObjectKeyBuilder};
use crate::deliver::{DeliveryCounters, DeliveryLoop};
use crate::encode::RecordFramer;

const MIB: usize = 1024 * 1024;

/// Uncompressed bytes allowed to wait for the compression pool across all streams, on top of
/// one chunk per stream.
const COMPRESSION_BUDGET_BASE: usize = 8 * MIB;

/// Where a stream delivers, as `DescribeDeliveryStream` reports it.
#[derive(Debug, Clone)]
pub enum DestinationSummary {
    /// A local directory.
    Local {
        /// The directory.
        path: String,
    },
    /// An S3-compatible bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The endpoint, if not AWS.
        endpoint: Option<String>,
    },
}

/// A configured stream's settings as the control-plane API reports them.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    /// Destination.
    pub destination: DestinationSummary,
    /// Key prefix template.
    pub prefix: String,
    /// Size threshold in MiB.
    pub size_mib: u32,
    /// Age threshold in seconds.
    pub interval_seconds: u32,
    /// `GZIP` or `UNCOMPRESSED`, Firehose's names.
    pub compression_format: &'static str,
}

/// Hands out Firehose-style record ids: unique per process run and stream, increasing.
#[derive(Debug)]
pub struct RecordIds {
    run: u64,
    next: AtomicU64,
}

impl RecordIds {
    fn new() -> Self {
        Self {
            run: fastrand::u64(..),
            next: AtomicU64::new(0),
        }
    }

    /// Reserves `count` consecutive ids; returns the first sequence number.
    pub fn reserve(&self, count: u64) -> u64 {
        self.next.fetch_add(count, Ordering::Relaxed)
    }

    /// Ids handed out so far: the number of records accepted.
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Writes the id of sequence number `seq` (32 hex digits) into `out`.
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for value in [self.run, seq] {
            for shift in (0..16).rev() {
                out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
            }
        }
    }
}

/// One running delivery stream.
#[derive(Debug)]
pub struct DeliveryStream {
    /// Name producers use.
    pub name: String,
    /// Records waiting for delivery.
    pub buffer: Arc<StreamBuffer>,
    /// Delivery totals.
    pub counters: Arc<DeliveryCounters>,
    /// Configured settings, for the control plane.
    pub summary: StreamSummary,
    /// When this process created the stream.
    pub created: DateTime<Utc>,
    /// Record id source.
    pub record_ids: RecordIds,
}

/// All streams of a running service, and the delivery tasks behind them.
pub struct Pipeline {
    streams: HashMap<String, Arc<DeliveryStream>>,
    sorted_names: Vec<String>,
    /// How long a put waits for buffer space.
    pub backpressure_wait: Duration,
    capacity: Arc<IngestCapacity>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// A stream whose destination could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("stream `{stream}`: cannot set up its destination: {source}")]
pub struct PipelineError {
    /// The stream.
    pub stream: String,
    /// Why.
    pub source: SinkError,
}

impl Pipeline {
    /// Builds every stream of `config` and starts its delivery loop. Relative local paths
    /// are taken relative to `base_dir` (the configuration file's directory).
    pub fn start(config: &Config, base_dir: &Path) -> Result<Self, PipelineError> {
        let stream_count = config.streams.0.len();
        let capacity = Arc::new(IngestCapacity::new(
            COMPRESSION_BUDGET_BASE + stream_count * MIB,
        ));
        let mut streams = HashMap::new();
        let mut tasks = Vec::new();
        for (name, stream_config) in config.streams.iter() {
            let name = name.value.clone();
            let sink = build_sink(&stream_config.destination, base_dir).map_err(|source| {
                PipelineError {
                    stream: name.clone(),
                    source,
                }
            })?;
            let (stream, delivery) =
                build_stream(&name, stream_config, sink, Arc::clone(&capacity));
            tasks.push(tokio::spawn(delivery.run()));
            streams.insert(name, Arc::new(stream));
        }
        let mut sorted_names: Vec<String> = streams.keys().cloned().collect();
        sorted_names.sort();
        Ok(Self {
            streams,
            sorted_names,
            backpressure_wait: Duration::from_millis(config.server.backpressure_wait_ms),
            capacity,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&Arc<DeliveryStream>> {
        self.streams.get(name)
    }

    /// Stream names in lexical order, as `ListDeliveryStreams` returns them.
    pub fn sorted_names(&self) -> &[String] {
        &self.sorted_names
    }

    /// Uncompressed bytes waiting for the compression pool.
    pub fn compressing_bytes(&self) -> usize {
        self.capacity.compressing()
    }

    /// Records accepted but not yet delivered, over all streams.
    pub fn undelivered_records(&self) -> u64 {
        self.streams
            .values()
            .map(|s| {
                s.buffer.buffered_records()
                    + s.counters
                        .in_flight_records
                        .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// Closes every buffer and waits until everything buffered has been delivered.
    pub async fn drain(&self) {
        for stream in self.streams.values() {
            stream.buffer.close();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn build_sink(
    destination: &Destination,
    base_dir: &Path,
) -> Result<Arc<dyn ObjectSink>, SinkError> {
    Ok(match destination {
        Destination::Local(local) => {
            let path = base_dir.join(&local.path.value);
            Arc::new(ObjectStoreSink::local(&path)?)
        }
        Destination::S3(s3) => Arc::new(ObjectStoreSink::s3(&S3Options {
            bucket: s3.bucket.value.clone(),
            endpoint: s3.endpoint.as_ref().map(|e| e.value.clone()),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            session_token: s3.session_token.clone(),
            multipart_threshold_bytes: s3.multipart_threshold_mib.value as usize * MIB,
            multipart_part_bytes: s3.multipart_part_mib.value as usize * MIB,
            request_timeout: Duration::from_secs(s3.request_timeout_seconds.max(1)),
        })?),
    })
}

fn build_stream(
    name: &str,
    config: &StreamConfig,
    sink: Arc<dyn ObjectSink>,
    capacity: Arc<IngestCapacity>,
) -> (DeliveryStream, DeliveryLoop) {
    let framer = RecordFramer::new(config.format, config.record_delimiter);
    let codec = Codec::from_config(
        config.compression,
        config.compression_level.as_ref().map(|l| l.value),
    );
    let settings = BufferSettings {
        size_limit: config.buffer.size_mib.value as usize * MIB,
        interval: Duration::from_secs(config.buffer.interval_seconds.value.into()),
        framer,
        codec,
    };
    let buffer = Arc::new(StreamBuffer::new(settings, capacity));
    let counters = Arc::new(DeliveryCounters::default());
    let layout = config.destination.layout();
    let template = KeyTemplate::parse(&layout.prefix.value)
        .expect("prefixes are validated when the configuration is loaded");
    let delivery = DeliveryLoop {
        stream: name.to_string(),
        buffer: Arc::clone(&buffer),
        sink,
        keys: ObjectKeyBuilder::new(name, template, codec.extension()),
        content_type: framer.content_type(),
        content_encoding: codec.content_encoding(),
        initial_backoff: layout.initial_backoff,
        max_backoff: layout.max_backoff,
        counters: Arc::clone(&counters),
    };
    let summary = StreamSummary {
        destination: match &config.destination {
            Destination::Local(local) => DestinationSummary::Local {
                path: local.path.value.clone(),
            },
            Destination::S3(s3) => DestinationSummary::S3 {
                bucket: s3.bucket.value.clone(),
                endpoint: s3.endpoint.as_ref().map(|e| e.value.clone()),
            },
        },
        prefix: layout.prefix.value.clone(),
        size_mib: config.buffer.size_mib.value,
        interval_seconds: config.buffer.interval_seconds.value,
        compression_format: if codec.is_identity() {
            "UNCOMPRESSED"
        } else {
            "GZIP"
        },
    };
    let stream = DeliveryStream {
        name: name.to_string(),
        buffer,
        counters,
        summary,
        created: Utc::now(),
        record_ids: RecordIds::new(),
    };
    (stream, delivery)
}
