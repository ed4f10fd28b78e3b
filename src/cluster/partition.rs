//! One partition this node delivers: its records read from JetStream into the partition's
//! buffer, and its batch boundaries and delivered point written to its lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::ClusterStatus;
use super::lease::{Lease, LeaseError};
use super::message;
use crate::buffer::StreamBuffer;
use crate::spool::arrivals::Arrivals;
use crate::spool::{PartEntry, RecordChunk, SeqRange};

/// How a reading pass ended.
enum Pass {
    /// Reading is over: the buffer closed (the partition is no longer delivered here), or
    /// a drain has read every message there is.
    Done,
    /// Nothing arrived for a while.
    Quiet,
}

/// Batches a lease entry journals before the partition holding the checkpoint closes early:
/// the entry is rewritten whole on every change and must stay well under NATS's message
/// size (about 60 bytes a batch).
const JOURNAL_SOFT_LIMIT: usize = 1000;

/// How long a reading pass waits for a message before it starts over with a new consumer.
const QUIET_READ: Duration = Duration::from_secs(5);

/// While a partition drains: how long without a message means everything has been read.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// The JetStream side of one partition held by this node.
#[derive(Debug)]
pub struct PartitionLog {
    /// Delivery stream name, for logs.
    pub stream_name: String,
    /// Partition number.
    pub partition: u32,
    /// Seed of batch names: the same on every node.
    pub seed: u64,
    /// The lease this node holds on it.
    pub lease: Lease,
    stream: jetstream::stream::Stream,
    subject: String,
    /// Reports the bytes the stream's JetStream stream holds.
    status: Arc<ClusterStatus>,
    /// The most bytes that stream may hold.
    max_bytes: u64,
    /// When the records fed to the buffer arrived, for data freshness.
    arrivals: std::sync::Mutex<Arrivals>,
}

impl PartitionLog {
    /// Partition `partition` of delivery stream `stream_name`, held with `lease`.
    /// `status` reports the bytes the JetStream stream `stream` holds, at most `max_bytes`.
    pub fn new(
        stream_name: &str,
        partition: u32,
        seed: u64,
        lease: Lease,
        stream: jetstream::stream::Stream,
        status: Arc<ClusterStatus>,
        max_bytes: u64,
    ) -> Self {
        Self {
            stream_name: stream_name.to_string(),
            partition,
            seed,
            lease,
            stream,
            subject: format!("hydrant.{stream_name}.{partition}"),
            status,
            max_bytes,
            arrivals: std::sync::Mutex::default(),
        }
    }

    /// Arrival (Unix ms) of the oldest record read from JetStream and not yet delivered;
    /// `None` when every record read is delivered.
    pub async fn oldest_undelivered_ms(&self) -> Option<i64> {
        let next = self.lease.next().await;
        self.arrivals().oldest_after(next.checked_sub(1))
    }

    fn arrivals(&self) -> std::sync::MutexGuard<'_, Arrivals> {
        // Marks are pushed or popped whole: a panic elsewhere cannot leave them torn.
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that batch `range` is about to be written.
    pub async fn record_sealed(&self, range: SeqRange) -> Result<(), LeaseError> {
        self.lease.seal(range).await
    }

    /// Records that batch `range` was delivered, then lets JetStream drop the messages
    /// wholly delivered.
    pub async fn record_delivered(&self, range: SeqRange) -> Result<(), LeaseError> {
        self.lease.delivered(range).await?;
        self.drop_delivered(range.last + 1).await;
        Ok(())
    }

    /// Journals batch `entry` of a dynamically partitioned stream as sealed or delivered.
    pub async fn journal_part(&self, entry: &PartEntry, delivered: bool) -> Result<(), LeaseError> {
        self.lease.journal_part(entry, delivered).await
    }

    /// Records that every record up to position `through` is delivered, then lets
    /// JetStream drop the messages wholly delivered.
    pub async fn record_checkpoint(&self, through: u64) -> Result<(), LeaseError> {
        self.lease.checkpoint(through).await?;
        self.drop_delivered(through + 1).await;
        Ok(())
    }

    /// Whether the stream's JetStream stream is more than half full, or the lease entry
    /// journals many batches, so a partition holding back the oldest record (and so the
    /// checkpoint that lets both shrink) should become a batch early.
    pub fn is_filling(&self) -> bool {
        let stored = self.status.stored_bytes.load(Ordering::Relaxed);
        stored.saturating_mul(2) > self.max_bytes || self.lease.journaled() > JOURNAL_SOFT_LIMIT
    }

    /// Purges the partition's messages before the one holding position `next`.
    async fn drop_delivered(&self, next: u64) {
        let keep_from = message::message_seq(next);
        // JetStream reads a purge up to sequence 0 or 1 as one without a sequence, which
        // drops every message of the subject: nothing comes before the first anyway.
        if keep_from <= 1 {
            return;
        }
        let purge = self
            .stream
            .purge()
            .filter(self.subject.clone())
            .sequence(keep_from);
        if let Err(error) = purge.await {
            tracing::debug!(stream = %self.stream_name, partition = self.partition, "cannot drop delivered messages yet: {error}");
        }
    }

    /// Every record of batch `range`, read again from JetStream.
    pub async fn read_range(&self, range: SeqRange) -> std::io::Result<RecordChunk> {
        let last_message = message::message_seq(range.last);
        let mut messages = self
            .messages_from(message::message_seq(range.first))
            .await?;
        let mut gathered = message::Gathered::default();
        loop {
            // A consumer left behind by a server that went away: the caller reads again.
            let next = tokio::time::timeout(QUIET_READ, messages.next())
                .await
                .map_err(|_| {
                    std::io::Error::other(format!(
                        "nothing read for {} s; reading again",
                        QUIET_READ.as_secs()
                    ))
                })?;
            let Some(next) = next else { break };
            let (seq, payload, _) = next?;
            if seq > last_message {
                break;
            }
            let chunk = message::decode(seq, &payload, range.first, range.last)
                .map_err(std::io::Error::other)?;
            gathered.append(&chunk);
            if seq == last_message {
                break;
            }
        }
        Ok(gathered.into_chunk())
    }

    /// The partition's messages from stream sequence `seq` on, in order, as
    /// `(sequence, payload, messages pending after it)`.
    async fn messages_from(
        &self,
        seq: u64,
    ) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<(u64, bytes::Bytes, u64)>>>
    {
        let deliver_policy = match seq {
            0 | 1 => consumer::DeliverPolicy::All,
            start_sequence => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        };
        let config = consumer::pull::OrderedConfig {
            filter_subject: self.subject.clone(),
            deliver_policy,
            ..Default::default()
        };
        // Bounded as a whole: while a server is lost, subscribing can wait on a connection
        // that is being replaced, and a reader left waiting would stall the partition.
        let messages = tokio::time::timeout(QUIET_READ, async {
            let consumer = self
                .stream
                .create_consumer(config)
                .await
                .map_err(std::io::Error::other)?;
            consumer.messages().await.map_err(std::io::Error::other)
        })
        .await
        .map_err(|_| {
            std::io::Error::other(format!(
                "no consumer opened within {} s",
                QUIET_READ.as_secs()
            ))
        })??;
        Ok(messages.map(|next| {
            let message = next.map_err(std::io::Error::other)?;
            let info = message
                .info()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            Ok((seq, message.payload.clone(), pending))
        }))
    }

    /// Moves the partition's records from position `from` on into `buffer`, in order, until
    /// `stop` is raised, the buffer closes, or (once `draining` is raised) every message
    /// there is has been read; reading failures are retried.
    pub async fn feed(
        self: Arc<Self>,
        buffer: Arc<StreamBuffer>,
        from: u64,
        mut stop: watch::Receiver<bool>,
        mut draining: watch::Receiver<bool>,
    ) {
        let mut next = from;
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                fed = self.feed_from(&buffer, &mut next, &mut draining) => {
                    match fed {
                        Ok(Pass::Done) => return,
                        Ok(Pass::Quiet) => {
                            delay = Duration::from_millis(100);
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(stream = %self.stream_name, partition = self.partition, "reading the partition from JetStream failed; reading again: {error}");
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One reading pass from position `next` (moved past every record fed), until the
    /// buffer no longer takes records, nothing arrives for [`QUIET_READ`] (so a consumer
    /// left behind by a server that went away is replaced), or, once `draining` is raised,
    /// the last message there is has been read (or none comes for [`DRAIN_QUIET`]).
    async fn feed_from(
        &self,
        buffer: &StreamBuffer,
        next: &mut u64,
        draining: &mut watch::Receiver<bool>,
    ) -> std::io::Result<Pass> {
        let mut messages = self.messages_from(message::message_seq(*next)).await?;
        let mut caught_up = false;
        loop {
            let drain = *draining.borrow();
            if drain && caught_up {
                return Ok(Pass::Done);
            }
            let quiet = if drain { DRAIN_QUIET } else { QUIET_READ };
            let message = tokio::select! {
                message = tokio::time::timeout(quiet, messages.next()) => message,
                // Look again with the shorter wait once the drain begins.
                _ = draining.wait_for(|draining| *draining), if !drain => continue,
            };
            let Ok(message) = message else {
                return Ok(if drain { Pass::Done } else { Pass::Quiet });
            };
            let Some(message) = message else { break };
            let (seq, payload, pending) = message?;
            caught_up = pending == 0;
            let chunk = match message::decode(seq, &payload, *next, u64::MAX) {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::error!(stream = %self.stream_name, partition = self.partition, "skipping a message that is not Hydrant's: {error}");
                    *next = message::position(seq + 1, 0);
                    continue;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            let (last, arrival_ms, _) = &chunk.records[chunk.len() - 1];
            let last = *last;
            self.arrivals().record(last, *arrival_ms);
            if buffer.append_spooled(&chunk).await < chunk.len() {
                return Ok(Pass::Done);
            }
            *next = last + 1;
        }
        Err(std::io::Error::other("the message stream ended"))
    }
}
