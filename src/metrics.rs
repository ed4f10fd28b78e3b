//! Prometheus metrics: per-stream counters kept as pre-registered handles (no allocation on
//! the hot path), gauges refreshed when scraped, served at `GET /metrics`.

use ::metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide recorder; call once, before any stream is built.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(handle)
}

/// One stream's metrics.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    /// Records acknowledged to producers.
    pub accepted: Counter,
    /// Records refused ("Slow down." or a spool write failure).
    pub refused: Counter,
    /// Records written to the destination.
    pub delivered_records: Counter,
    /// Objects written to the destination.
    pub delivered_objects: Counter,
    /// Bytes of objects written (after compression).
    pub delivered_bytes: Counter,
    /// Failed write attempts.
    pub failed_attempts: Counter,
    /// Records sent to an error output.
    pub error_output_records: Counter,
    /// Records accepted and not yet delivered (refreshed when scraped).
    pub undelivered: Gauge,
    /// Bytes of spool segments on disk (refreshed when scraped).
    pub spool_bytes: Gauge,
}

impl StreamMetrics {
    /// Registers the metrics of `stream`.
    pub fn new(stream: &str) -> Self {
        let labels = [("stream", stream.to_string())];
        Self {
            accepted: counter!("hydrant_records_accepted_total", &labels),
            refused: counter!("hydrant_records_refused_total", &labels),
            delivered_records: counter!("hydrant_records_delivered_total", &labels),
            delivered_objects: counter!("hydrant_objects_delivered_total", &labels),
            delivered_bytes: counter!("hydrant_delivered_bytes_total", &labels),
            failed_attempts: counter!("hydrant_delivery_failures_total", &labels),
            error_output_records: counter!("hydrant_error_output_records_total", &labels),
            undelivered: gauge!("hydrant_undelivered_records", &labels),
            spool_bytes: gauge!("hydrant_spool_bytes", &labels),
        }
    }
}
