//! Prometheus metrics, served at `GET /metrics`: each stream's totals, published from its
//! counters when scraped.

use std::sync::atomic::Ordering;

use ::metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::deliver::DeliveryCounters;

/// Histogram of the spool's `fdatasync` calls (every stream's), in seconds.
pub const SPOOL_FSYNC_SECONDS: &str = "hydrant_spool_fsync_seconds";

/// Histogram of API calls by operation, from request to answer, in seconds.
pub const API_CALL_SECONDS: &str = "hydrant_api_call_seconds";

/// Histogram of each stream's transform chain per chunk, in seconds.
pub const TRANSFORM_SECONDS: &str = "hydrant_transform_seconds";

/// Bucket bounds of the latency histograms: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder; call once, before any stream is built.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(SPOOL_FSYNC_SECONDS.into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(API_CALL_SECONDS.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(TRANSFORM_SECONDS.into()), LATENCY_BUCKETS)
        })
        .map_err(|e| anyhow::anyhow!("cannot set the metrics' histogram buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(handle)
}

/// One stream's metrics: handles registered once, set from the stream's
/// [`DeliveryCounters`] when scraped, so the hot path counts in one place only.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    accepted: Counter,
    accepted_bytes: Counter,
    put_requests: Counter,
    refused: Counter,
    delivered_records: Counter,
    delivered_objects: Counter,
    delivered_bytes: Counter,
    attempts: Counter,
    failed_attempts: Counter,
    backup_objects: Counter,
    backup_bytes: Counter,
    backup_failed_attempts: Counter,
    error_output_records: Counter,
    partitioning_failures: Counter,
    active_partitions: Gauge,
    partition_buffered_bytes: Gauge,
    undelivered: Gauge,
    spool_bytes: Gauge,
    data_freshness: Gauge,
    labels: [(&'static str, String); 1],
}

impl StreamMetrics {
    /// Registers the metrics of `stream`, which delivers to `destination` (its kind:
    /// `s3`, `local`, `postgres`, `opensearch`, `http_endpoint`), named in the constant
    /// `hydrant_stream_info` gauge so queries can group by destination.
    pub fn new(stream: &str, destination: &str) -> Self {
        let labels = [("stream", stream.to_string())];
        gauge!(
            "hydrant_stream_info",
            &[
                ("stream", stream.to_string()),
                ("destination", destination.to_string())
            ]
        )
        .set(1.0);
        Self {
            accepted: counter!("hydrant_records_accepted_total", &labels),
            accepted_bytes: counter!("hydrant_incoming_bytes_total", &labels),
            put_requests: counter!("hydrant_incoming_put_requests_total", &labels),
            refused: counter!("hydrant_records_refused_total", &labels),
            delivered_records: counter!("hydrant_records_delivered_total", &labels),
            delivered_objects: counter!("hydrant_objects_delivered_total", &labels),
            delivered_bytes: counter!("hydrant_delivered_bytes_total", &labels),
            attempts: counter!("hydrant_delivery_attempts_total", &labels),
            failed_attempts: counter!("hydrant_delivery_failures_total", &labels),
            backup_objects: counter!("hydrant_backup_objects_total", &labels),
            backup_bytes: counter!("hydrant_backup_bytes_total", &labels),
            backup_failed_attempts: counter!("hydrant_backup_failures_total", &labels),
            error_output_records: counter!("hydrant_error_output_records_total", &labels),
            partitioning_failures: counter!("hydrant_partitioning_failures_total", &labels),
            active_partitions: gauge!("hydrant_active_partitions", &labels),
            partition_buffered_bytes: gauge!("hydrant_partition_buffered_bytes", &labels),
            undelivered: gauge!("hydrant_undelivered_records", &labels),
            spool_bytes: gauge!("hydrant_spool_bytes", &labels),
            data_freshness: gauge!("hydrant_data_freshness_seconds", &labels),
            labels,
        }
    }

    /// Sets the metrics only a stream on a cluster has: the partitions this node delivers.
    pub fn publish_cluster(&self, partitions_held: u64) {
        gauge!("hydrant_cluster_partitions_held", &self.labels).set(partitions_held as f64);
    }

    /// Sets every metric from the stream's current totals.
    pub fn publish(
        &self,
        counters: &DeliveryCounters,
        undelivered: u64,
        spool_bytes: u64,
        data_freshness_seconds: f64,
    ) {
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        self.accepted.absolute(read(&counters.accepted));
        self.accepted_bytes.absolute(read(&counters.accepted_bytes));
        self.put_requests.absolute(read(&counters.put_requests));
        self.refused.absolute(read(&counters.refused));
        self.delivered_records.absolute(read(&counters.records));
        self.delivered_objects.absolute(read(&counters.objects));
        self.delivered_bytes.absolute(read(&counters.bytes));
        self.attempts.absolute(read(&counters.attempts));
        self.failed_attempts
            .absolute(read(&counters.failed_attempts));
        self.backup_objects.absolute(read(&counters.backup_objects));
        self.backup_bytes.absolute(read(&counters.backup_bytes));
        self.backup_failed_attempts
            .absolute(read(&counters.backup_failed_attempts));
        self.error_output_records
            .absolute(read(&counters.error_output_records));
        self.partitioning_failures
            .absolute(read(&counters.partitioning_failures));
        self.active_partitions
            .set(read(&counters.active_partitions) as f64);
        self.partition_buffered_bytes
            .set(read(&counters.partition_buffered_bytes) as f64);
        self.undelivered.set(undelivered as f64);
        self.spool_bytes.set(spool_bytes as f64);
        self.data_freshness.set(data_freshness_seconds);
    }
}
