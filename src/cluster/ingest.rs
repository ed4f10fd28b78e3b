//! The producer side of a delivery stream on the cluster: a put's records are stored in the
//! stream's JetStream stream, and acknowledged once JetStream has them on its replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::message;
use super::{Cluster, REQUEST_TIMEOUT};
use crate::spool::SpoolError;

/// Where the puts of one delivery stream go on the cluster.
#[derive(Debug)]
pub struct StreamLog {
    name: String,
    stream: String,
    jetstream: jetstream::Context,
    partitions: u32,
    max_message: usize,
    run: u64,
    next_seq: AtomicU64,
    closed: watch::Sender<bool>,
    /// How the stream's partitions on this node are doing, for metrics and stats.
    pub status: Arc<ClusterStatus>,
}

/// How a cluster stream is doing on this node, kept by its assignment.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// Partitions this node delivers now.
    pub partitions_held: AtomicU64,
    /// Records buffered in those partitions.
    pub buffered_records: AtomicU64,
    /// Bytes the stream's JetStream stream holds (undelivered records, cluster-wide).
    pub stored_bytes: AtomicU64,
    /// Arrival (Unix ms) of the oldest record not yet delivered in those partitions; 0
    /// when none waits.
    pub oldest_arrival_ms: AtomicI64,
}

/// Bytes of a message kept free for its headers.
const HEADER_ROOM: usize = 256;

impl StreamLog {
    /// The log of delivery stream `name`; record ids begin with `run`.
    pub fn new(cluster: &Cluster, name: &str, run: u64) -> Self {
        Self {
            name: name.to_string(),
            stream: super::stream_name(name),
            jetstream: cluster.jetstream.clone(),
            partitions: cluster.settings.partitions,
            max_message: cluster.max_payload.saturating_sub(HEADER_ROOM),
            run,
            next_seq: AtomicU64::new(0),
            closed: watch::channel(false).0,
            status: Arc::default(),
        }
    }

    /// Stores `records` (arriving at `arrival_ms`) in JetStream, retrying until `deadline`
    /// while the cluster does not answer or is full; counts the stored records (a prefix) in
    /// `taken` and returns the first one's sequence number (of its record id).
    pub async fn publish(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        deadline: Instant,
        taken: &mut usize,
    ) -> Result<u64, SpoolError> {
        let first_seq = self
            .next_seq
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if *self.closed.borrow() {
            return Ok(first_seq);
        }
        let messages = message::encode(records, arrival_ms, self.max_message).map_err(|index| {
            SpoolError::Replicated {
                stream: self.stream.clone(),
                reason: format!(
                    "record {index} ({} bytes) is larger than the NATS servers' max_payload allows",
                    records[index].len()
                ),
            }
        })?;
        let mut seq = first_seq;
        for (body, count) in messages {
            let stored = self.store(Bytes::from(body), seq, deadline).await;
            match stored {
                Ok(()) => *taken += count,
                Err(Refused::Full) => return Ok(first_seq),
                Err(Refused::Failed(reason)) if *taken == 0 => {
                    return Err(SpoolError::Replicated {
                        stream: self.stream.clone(),
                        reason,
                    });
                }
                Err(Refused::Failed(reason)) => {
                    tracing::warn!(stream = %self.name, "part of a put was not stored: {reason}");
                    return Ok(first_seq);
                }
            }
            seq += count as u64;
        }
        Ok(first_seq)
    }

    /// Publishes one message whose first record has sequence number `seq`, until JetStream
    /// acknowledges it or `deadline` passes. Every attempt carries the same message id, so a
    /// retry of a message that was stored after all is dropped by JetStream as a duplicate;
    /// a duplicate answer counts only once it names where the first copy is stored.
    async fn store(&self, body: Bytes, seq: u64, deadline: Instant) -> Result<(), Refused> {
        let id = format!("{:016x}{:016x}", self.run, seq);
        let subject = format!("hydrant.{}.{}", self.name, self.partition_of(seq));
        let mut delay = Duration::from_millis(20);
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let attempt = async {
                self.jetstream
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(ack)) if is_stored(&ack) => return Ok(()),
                Ok(Ok(_)) => {
                    tracing::warn!(stream = %self.name, message_id = %id, "JetStream answered that the message duplicates one it has not stored; it does not count as stored");
                    Refused::Failed(NOT_STORED_DUPLICATE.to_string())
                }
                Ok(Err(reason)) if reason.contains("maximum bytes") => Refused::Full,
                Ok(Err(reason)) => Refused::Failed(reason),
                Err(_) => Refused::Failed("no acknowledgement in time".to_string()),
            };
            if Instant::now() + delay >= deadline || *self.closed.borrow() {
                return Err(outcome);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// The partition of the message whose first record has sequence number `seq`: spread
    /// evenly, the same for every attempt.
    fn partition_of(&self, seq: u64) -> u32 {
        let mixed = (self.run ^ seq).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 32) % u64::from(self.partitions)) as u32
    }

    /// The first half of this node's record ids for the stream.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Stops taking puts (the service is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the log was closed.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

/// Why a put is refused when every attempt was answered as a duplicate of a message
/// JetStream has not stored.
const NOT_STORED_DUPLICATE: &str = "JetStream answered that the message duplicates one it has not stored (a \
     publish lost in a leader election); the put can be sent again";

/// Whether JetStream's answer `ack` says the message is stored. A duplicate is stored only
/// when the answer names its sequence: a server stages a message id with sequence 0 before
/// the message is replicated, and answers a duplicate of it with sequence 0 whether the
/// first copy is still on its way or was dropped in a leader election (then never stored).
fn is_stored(ack: &jetstream::publish::PublishAck) -> bool {
    !ack.duplicate || ack.sequence > 0
}

/// Why a message was not stored.
enum Refused {
    /// The stream holds `spool.max_mib` of undelivered records.
    Full,
    /// The cluster did not answer or refused for another reason.
    Failed(String),
}
