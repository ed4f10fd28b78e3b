//! One partition this node delivers: its records read from JetStream into the partition's
//! buffer, and its batch boundaries and delivered point written to its lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use tokio::sync::watch;

use super::ClusterStatus;
use super::lease::{Lease, LeaseError};
use super::message;
use crate::buffer::StreamBuffer;
use crate::spool::arrivals::Arrivals;
use crate::spool::{PartEntry, RecordChunk, SeqRange};

/// Batches a lease entry journals before the partition holding the checkpoint closes early:
/// the entry is rewritten whole on every change and must stay well under NATS's message
/// size (about 60 bytes a batch).
const JOURNAL_SOFT_LIMIT: usize = 1000;

/// How long the feeder first waits before asking again for a message that is not there yet
/// (doubled while nothing comes).
const POLL_SHORTEST: Duration = Duration::from_millis(25);

/// The longest the feeder waits between two asks: how late, at most, it sees a new message.
const POLL_LONGEST: Duration = Duration::from_millis(250);

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
    /// How full the stream's JetStream stream is (bytes held, and the most it may hold).
    fill: (Arc<ClusterStatus>, u64),
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
            fill: (status, max_bytes),
            arrivals: std::sync::Mutex::default(),
        }
    }

    /// Arrival (Unix ms) of the oldest record read from JetStream and not yet delivered;
    /// `None` when every record read is delivered.
    pub async fn oldest_undelivered_ms(&self) -> Option<i64> {
        let next = self.lease.state().await.next;
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
        let (status, max_bytes) = &self.fill;
        status
            .stored_bytes
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            > *max_bytes
            || self.lease.journaled() > JOURNAL_SOFT_LIMIT
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
        let mut seq = message::message_seq(range.first).max(1);
        let mut gathered = message::Gathered::default();
        while seq <= last_message {
            let Some((found, payload)) = self.message_from(seq).await? else {
                break;
            };
            if found > last_message {
                break;
            }
            let chunk = message::decode(found, &payload, range.first, range.last)
                .map_err(std::io::Error::other)?;
            gathered.append(&chunk);
            seq = found + 1;
        }
        Ok(gathered.into_chunk())
    }

    /// The partition's first message at or after stream sequence `seq`, as `(sequence,
    /// payload)`, read from the stream's leader; `None` when there is none yet. Reading one
    /// message at a time by sequence cannot skip one, whatever happens to the servers
    /// between two reads.
    async fn message_from(&self, seq: u64) -> std::io::Result<Option<(u64, bytes::Bytes)>> {
        let read = self
            .stream
            .get_first_raw_message_by_subject(&self.subject, seq.max(1));
        match tokio::time::timeout(super::REQUEST_TIMEOUT, read).await {
            Ok(Ok(message)) => Ok(Some((message.sequence, message.payload))),
            Ok(Err(error)) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(error)) => Err(std::io::Error::other(error)),
            Err(_) => Err(std::io::Error::other(format!(
                "reading {} from sequence {seq} timed out",
                self.subject
            ))),
        }
    }

    /// Moves the partition's records from position `from` on into `buffer`, in order, until
    /// `stop` is raised, the buffer closes, or (once `draining` is raised) every message
    /// there is has been read; reading failures are retried.
    pub async fn feed(
        self: Arc<Self>,
        buffer: Arc<StreamBuffer>,
        from: u64,
        mut stop: watch::Receiver<bool>,
        draining: watch::Receiver<bool>,
    ) {
        let mut next = from;
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                fed = self.feed_from(&buffer, &mut next, &draining) => {
                    match fed {
                        Ok(()) => return,
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

    /// Reads the partition's messages from position `next` on (moved past every record
    /// fed), one after the other, waiting for new ones when it has read them all (unless
    /// `draining`), until the buffer no longer takes records.
    async fn feed_from(
        &self,
        buffer: &StreamBuffer,
        next: &mut u64,
        draining: &watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut seq = message::message_seq(*next);
        let mut wait = POLL_SHORTEST;
        loop {
            let Some((found, payload)) = self.message_from(seq).await? else {
                if *draining.borrow() {
                    return Ok(());
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(POLL_LONGEST);
                continue;
            };
            wait = POLL_SHORTEST;
            seq = found + 1;
            let chunk = match message::decode(found, &payload, *next, u64::MAX) {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::error!(stream = %self.stream_name, partition = self.partition, "skipping a message that is not Hydrant's: {error}");
                    *next = message::position(found + 1, 0);
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
                return Ok(());
            }
            *next = last + 1;
        }
    }
}
