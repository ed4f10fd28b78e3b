//! One running delivery stream as the API sees it: where puts go (spool or buffer), its
//! totals, health and settings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::DestinationSummary;
use crate::buffer::StreamBuffer;
use crate::deliver::{DeliveryCounters, DeliveryHealth};
use crate::metrics::StreamMetrics;
use crate::spool::{SpoolError, StreamSpool};

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
}

impl RecordIds {
    /// Ids whose first half is `run`: the spool's incarnation, or a random number per
    /// process run without a spool.
    pub(super) fn new(run: u64) -> Self {
        Self { run }
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

/// Records a put got into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Sequence number (and so record id) of the first accepted record.
    pub first_seq: u64,
    /// How many records, a prefix of those offered, were accepted.
    pub count: usize,
}

/// Records admitted into a stream, to be acknowledged once [`durable`](Self::durable).
#[derive(Debug)]
pub struct Admission {
    accepted: Accepted,
    pending: Vec<crate::spool::Enqueued>,
}

impl Admission {
    /// Waits until the admitted records are durable; returns them.
    pub async fn durable(self) -> Result<Accepted, SpoolError> {
        for enqueued in self.pending {
            enqueued.durable().await?;
        }
        Ok(self.accepted)
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
    /// How its deliveries are going.
    pub health: Arc<DeliveryHealth>,
    /// Configured settings, for the control plane.
    pub summary: StreamSummary,
    /// When this process created the stream.
    pub created: DateTime<Utc>,
    /// Record id source.
    pub record_ids: RecordIds,
    /// The stream's spool; `None` when records are held in memory only, or on a cluster.
    pub spool: Option<Arc<StreamSpool>>,
    /// Where puts go on a JetStream cluster (`spool.jetstream`).
    pub cluster_log: Option<Arc<crate::cluster::StreamLog>>,
    /// Prometheus metrics.
    pub metrics: StreamMetrics,
    /// Where records its sources refused go (the error output).
    pub refusals: Arc<crate::deliver::SourceRefusals>,
}

impl DeliveryStream {
    /// Takes `records` (all arriving at `arrival_ms`): into the spool, or straight into the
    /// buffer without a spool. Waits up to `wait` for space when full. Returns the accepted
    /// prefix as an [`Admission`], which the caller awaits (after dropping its copy of the
    /// records, so memory is not held while waiting for the disk) before acknowledging.
    ///
    /// Records are counted as accepted as soon as they are taken, even when the put is
    /// abandoned (its client went away) while it waits for space for the rest: those records
    /// are delivered like any other.
    pub async fn admit(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        wait: Duration,
    ) -> Result<Admission, SpoolError> {
        let mut count = AdmissionCount {
            stream: &self.name,
            counters: &self.counters,
            records,
            offered: records.len(),
            taken: 0,
            finished: false,
        };
        let admission = self
            .admit_inner(records, arrival_ms, wait, &mut count.taken)
            .await;
        count.finished = true;
        admission
    }

    async fn admit_inner(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        wait: Duration,
        taken: &mut usize,
    ) -> Result<Admission, SpoolError> {
        if let Some(log) = &self.cluster_log {
            let deadline = tokio::time::Instant::now() + wait;
            let first_seq = log.publish(records, arrival_ms, deadline, taken).await?;
            return Ok(Admission {
                accepted: Accepted {
                    first_seq,
                    count: *taken,
                },
                pending: Vec::new(),
            });
        }
        let admission = match &self.spool {
            None => {
                let first_seq = self
                    .buffer
                    .append_counted(records, arrival_ms, wait, taken)
                    .await;
                Admission {
                    accepted: Accepted {
                        first_seq,
                        count: *taken,
                    },
                    pending: Vec::new(),
                }
            }
            Some(spool) => {
                let deadline = tokio::time::Instant::now() + wait;
                let pending = spool
                    .enqueue_waiting(records, arrival_ms, deadline, taken, None)
                    .await?;
                Admission {
                    accepted: Accepted {
                        first_seq: pending.first().map_or(0, |e| e.appended.first_seq),
                        count: *taken,
                    },
                    pending,
                }
            }
        };
        Ok(admission)
    }

    /// Publishes this stream's totals to its Prometheus metrics.
    pub fn publish_metrics(&self) {
        let mut spool_bytes = self.spool.as_ref().map_or(0, |s| s.disk_bytes());
        if let Some(log) = &self.cluster_log {
            spool_bytes = log.status.stored_bytes.load(Ordering::Relaxed);
            self.metrics
                .publish_cluster(log.status.partitions_held.load(Ordering::Relaxed));
        }
        self.metrics.publish(
            &self.counters,
            self.undelivered(),
            spool_bytes,
            self.data_freshness_seconds(),
        );
    }

    /// Age in seconds of the oldest record accepted but not yet delivered (0 when none
    /// waits): Firehose's DataFreshness. Known for spooled streams and, on a cluster, for
    /// the partitions this node delivers; 0 without a spool.
    pub fn data_freshness_seconds(&self) -> f64 {
        let now_ms = Utc::now().timestamp_millis();
        if let Some(log) = &self.cluster_log {
            let oldest = log.status.oldest_arrival_ms.load(Ordering::Relaxed);
            if oldest == 0 {
                return 0.0;
            }
            return now_ms.saturating_sub(oldest).max(0) as f64 / 1000.0;
        }
        self.spool
            .as_ref()
            .map_or(0.0, |spool| spool.data_freshness_ms(now_ms) as f64 / 1000.0)
    }

    /// Records accepted but not yet delivered.
    pub fn undelivered(&self) -> u64 {
        if let Some(log) = &self.cluster_log {
            return log.status.buffered_records.load(Ordering::Relaxed)
                + self.counters.in_flight_records.load(Ordering::Relaxed);
        }
        match &self.spool {
            Some(spool) => spool.undelivered(),
            None => {
                self.buffer.buffered_records()
                    + self.counters.in_flight_records.load(Ordering::Relaxed)
            }
        }
    }
}

/// Counts a put's records into the stream's totals when the put ends, however it ends:
/// answered, failed, or dropped while waiting for space because its client went away.
struct AdmissionCount<'a> {
    stream: &'a str,
    counters: &'a DeliveryCounters,
    /// The records offered.
    records: &'a [&'a [u8]],
    offered: usize,
    /// Records taken into the spool (or buffer) so far.
    taken: usize,
    /// Whether the put got as far as an answer.
    finished: bool,
}

impl Drop for AdmissionCount<'_> {
    fn drop(&mut self) {
        self.counters
            .accepted
            .fetch_add(self.taken as u64, Ordering::Relaxed);
        let bytes: usize = self.records[..self.taken].iter().map(|r| r.len()).sum();
        self.counters
            .accepted_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if self.finished && self.taken > 0 {
            self.counters.put_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.counters
            .refused
            .fetch_add((self.offered - self.taken) as u64, Ordering::Relaxed);
        if !self.finished {
            tracing::debug!(
                stream = self.stream,
                accepted = self.taken,
                not_taken = self.offered - self.taken,
                "put abandoned while waiting for space (its client went away); the records \
                 already taken will be delivered"
            );
        }
    }
}

impl DeliveryStream {
    /// Stops taking records: the spool is closed (its feeder reads it to the end, then
    /// closes the buffer), or, without a spool, the buffer; the delivery loop then
    /// delivers what is left and ends.
    pub(super) async fn stop_taking(&self) {
        if let Some(log) = &self.cluster_log {
            log.close();
            return;
        }
        match &self.spool {
            Some(spool) => {
                let spool = Arc::clone(spool);
                let _ = tokio::task::spawn_blocking(move || spool.close()).await;
            }
            None => self.buffer.close(),
        }
    }
}
