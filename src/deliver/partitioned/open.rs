//! The partitions of a stream that are buffering records: each gathers its pieces (what the
//! destination made of its records, chunk by chunk) until its size or age threshold says it
//! is a batch.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hydrant_sinks::partition::PartitionKeys;

use crate::buffer::PartitionPiece;
use crate::spool::SeqRange;

/// A partition's id in the journal: a stable digest of its keys, clear of the reserved
/// parts (window failures).
pub fn part_id(keys: &PartitionKeys) -> u64 {
    keys.seed().max(2)
}

/// One partition taking records.
#[derive(Debug)]
pub struct OpenPartition {
    /// Its keys.
    pub keys: Arc<PartitionKeys>,
    /// What the destination made of its records, chunk by chunk, in order.
    pub pieces: Vec<Box<dyn Any + Send>>,
    /// Its records.
    pub seqs: Vec<u64>,
    /// Bytes of its records.
    pub raw_len: usize,
    /// Memory its pieces hold.
    pub held: usize,
    /// Arrival (Unix ms) of its oldest record.
    pub oldest_ms: i64,
    /// Its first record: the checkpoint stays before it until the batch is delivered.
    pub first_seq: u64,
    /// Its last record.
    pub last_seq: u64,
    /// When it rebuilds a batch journaled before a restart: that batch's range, which it
    /// ends with exactly (no threshold applies).
    pub replaying: Option<SeqRange>,
}

impl OpenPartition {
    fn new(keys: Arc<PartitionKeys>, first_seq: u64, replaying: Option<SeqRange>) -> Self {
        Self {
            keys,
            pieces: Vec::new(),
            seqs: Vec::new(),
            raw_len: 0,
            held: 0,
            oldest_ms: i64::MAX,
            first_seq,
            last_seq: first_seq,
            replaying,
        }
    }

    /// The range its batch is named by.
    pub fn range(&self) -> SeqRange {
        self.replaying.unwrap_or(SeqRange {
            first: self.first_seq,
            last: self.last_seq,
        })
    }

    fn add(&mut self, piece: PartitionPiece) {
        self.raw_len += piece.raw_len;
        self.held += piece.held;
        self.oldest_ms = self.oldest_ms.min(piece.oldest_ms);
        if let Some(&last) = piece.seqs.last() {
            self.last_seq = last;
        }
        self.seqs.extend(piece.seqs);
        self.pieces.push(piece.piece);
    }
}

/// The open partitions of a stream, and how much memory they hold.
#[derive(Debug, Default)]
pub struct OpenPartitions {
    open: HashMap<u64, OpenPartition>,
    buffered: usize,
}

impl OpenPartitions {
    /// Open partitions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Memory their pieces hold.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether partition `part` is open (and whether it rebuilds a journaled batch).
    pub fn get(&self, part: u64) -> Option<&OpenPartition> {
        self.open.get(&part)
    }

    /// Adds `piece` to partition `part`, opening it if needed (`replaying` when it rebuilds
    /// a journaled batch); returns `true` when the partition was opened.
    pub fn add(&mut self, part: u64, piece: PartitionPiece, replaying: Option<SeqRange>) -> bool {
        self.buffered += piece.held;
        let mut opened = false;
        let partition = self.open.entry(part).or_insert_with(|| {
            opened = true;
            let keys = Arc::clone(piece.keys.as_ref().expect("a partitioned piece"));
            OpenPartition::new(keys, piece.seqs[0], replaying)
        });
        partition.add(piece);
        opened
    }

    /// Closes partition `part`, handing out what it holds.
    pub fn take(&mut self, part: u64) -> Option<OpenPartition> {
        let partition = self.open.remove(&part)?;
        self.buffered -= partition.held;
        Some(partition)
    }

    /// Partitions that rebuilt their journaled batch up to `through`.
    pub fn rebuilt(&self, through: u64) -> Vec<u64> {
        self.select(|p| p.replaying.is_some_and(|r| r.last <= through))
    }

    /// Partitions holding `size_limit` bytes or more.
    pub fn full(&self, size_limit: usize) -> Vec<u64> {
        self.select(|p| p.replaying.is_none() && p.raw_len >= size_limit)
    }

    /// Partitions whose oldest record is `interval` old at `now_ms`.
    pub fn due(&self, interval: Duration, now_ms: i64) -> Vec<u64> {
        let interval = interval.as_millis() as i64;
        self.select(|p| p.replaying.is_none() && p.oldest_ms + interval <= now_ms)
    }

    /// Every partition that may close now (all but those rebuilding a journaled batch).
    pub fn closable(&self) -> Vec<u64> {
        self.select(|p| p.replaying.is_none())
    }

    /// When the next partition becomes due (Unix ms).
    pub fn next_due_ms(&self, interval: Duration) -> Option<i64> {
        self.open
            .values()
            .filter(|p| p.replaying.is_none())
            .map(|p| p.oldest_ms + interval.as_millis() as i64)
            .min()
    }

    /// The partition holding the most memory, of those that may close early.
    pub fn largest(&self) -> Option<u64> {
        self.pick(|p| p.held)
    }

    /// The partition holding the oldest record (so the checkpoint), of those that may close
    /// early.
    pub fn oldest(&self) -> Option<u64> {
        self.pick(|p| std::cmp::Reverse(p.first_seq))
    }

    fn pick<K: Ord>(&self, score: impl Fn(&OpenPartition) -> K) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, p)| p.replaying.is_none())
            .max_by_key(|(_, p)| score(p))
            .map(|(part, _)| *part)
    }

    fn select(&self, wanted: impl Fn(&OpenPartition) -> bool) -> Vec<u64> {
        self.open
            .iter()
            .filter(|(_, p)| wanted(p))
            .map(|(part, _)| *part)
            .collect()
    }
}
