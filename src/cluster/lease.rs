//! A partition's entry in the lease bucket: who delivers it, how far it is delivered, and
//! the batch being written. Every change is a compare-and-swap on the entry's revision, so
//! once another node has taken the partition, this node can change nothing of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::REQUEST_TIMEOUT;
use crate::spool::{PartEntry, SeqRange};

/// What the lease bucket holds about one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The node delivering it; empty when none does.
    #[serde(default)]
    pub owner: String,
    /// Position of the first record not yet delivered.
    #[serde(default)]
    pub next: u64,
    /// First and last position of the batch being written, when one is: a node taking the
    /// partition over writes exactly this batch first.
    #[serde(default)]
    pub cut: Option<[u64; 2]>,
    /// With dynamic partitioning: the batches journaled past `next` (sealed, maybe
    /// delivered), which a node taking the partition over rebuilds or skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<JournaledPart>,
}

/// One journaled batch of a dynamically partitioned stream, as a lease entry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournaledPart {
    /// First and last position of its records.
    pub range: [u64; 2],
    /// Its dynamic partition (a digest of the keys), or a reserved part.
    pub part: u64,
    /// For a window's error output: the partitions that were over the limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub over_limit: Vec<u64>,
    /// Whether it was delivered.
    #[serde(default)]
    pub delivered: bool,
}

impl JournaledPart {
    /// The journal entry it is.
    pub fn entry(&self) -> PartEntry {
        PartEntry {
            range: SeqRange {
                first: self.range[0],
                last: self.range[1],
            },
            part: self.part,
            over_limit: self.over_limit.clone(),
        }
    }

    fn is(&self, entry: &PartEntry) -> bool {
        self.part == entry.part && self.range == [entry.range.first, entry.range.last]
    }
}

impl PartitionState {
    /// The journaled batches, as (sealed and not delivered, delivered).
    pub fn journaled_parts(&self) -> (Vec<PartEntry>, Vec<PartEntry>) {
        let (delivered, sealed): (Vec<_>, Vec<_>) =
            self.parts.iter().partition(|part| part.delivered);
        (
            sealed.into_iter().map(JournaledPart::entry).collect(),
            delivered.into_iter().map(JournaledPart::entry).collect(),
        )
    }
}

/// Key of partition `partition` of delivery stream `stream`.
pub fn key(stream: &str, partition: u32) -> String {
    format!("part.{stream}.{partition}")
}

/// Why a lease operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds the partition now: stop delivering it.
    #[error("the partition is held by another node now")]
    Fenced,
    /// The bucket could not be reached or read; the operation may be tried again.
    #[error("the lease bucket did not answer: {0}")]
    Unavailable(String),
}

/// The current entry of `key`: its revision and state, `None` when there is none.
pub async fn observe(
    leases: &kv::Store,
    key: &str,
) -> Result<Option<(u64, PartitionState)>, LeaseError> {
    let entry = tokio::time::timeout(REQUEST_TIMEOUT, leases.entry(key))
        .await
        .map_err(|_| LeaseError::Unavailable(format!("reading {key} timed out")))?
        .map_err(|error| LeaseError::Unavailable(format!("reading {key}: {error}")))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let state = serde_json::from_slice(&entry.value).map_err(|error| {
                LeaseError::Unavailable(format!("{key} holds no partition state: {error}"))
            })?;
            Ok(Some((entry.revision, state)))
        }
        _ => Ok(None),
    }
}

/// A partition this node holds.
#[derive(Debug)]
pub struct Lease {
    leases: kv::Store,
    key: String,
    node: String,
    held: Mutex<Held>,
    lost: watch::Sender<bool>,
    /// How many batches the entry journals (dynamic partitioning), as last written.
    journaled: AtomicUsize,
}

#[derive(Debug)]
struct Held {
    revision: u64,
    state: PartitionState,
    /// When the last successful write was sent: the lease is good until `ttl` after it.
    renewed: Instant,
}

impl Lease {
    /// Takes partition `key` for `node`: `observed` is the entry seen (revision and state),
    /// `None` when there was none. Fails with [`LeaseError::Fenced`] when another node changed
    /// the entry since.
    pub async fn claim(
        leases: &kv::Store,
        key: String,
        node: &str,
        observed: Option<(u64, PartitionState)>,
    ) -> Result<Self, LeaseError> {
        let (revision, mut state) = match observed {
            Some((revision, state)) => (Some(revision), state),
            None => (None, PartitionState::default()),
        };
        state.owner = node.to_string();
        let body = bytes::Bytes::from(serde_json::to_vec(&state).expect("serializable"));
        let started = Instant::now();
        let written = match revision {
            Some(revision) => {
                tokio::time::timeout(REQUEST_TIMEOUT, leases.update(&key, body, revision))
                    .await
                    .map(|r| {
                        r.map_err(|e| {
                            (
                                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                                e.to_string(),
                            )
                        })
                    })
            }
            None => tokio::time::timeout(REQUEST_TIMEOUT, leases.create(&key, body))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    })
                }),
        };
        let revision = match written {
            Ok(Ok(revision)) => revision,
            Ok(Err((true, _))) => return Err(LeaseError::Fenced),
            Ok(Err((false, reason))) => return Err(LeaseError::Unavailable(reason)),
            Err(_) => return Err(LeaseError::Unavailable(format!("claiming {key} timed out"))),
        };
        let (lost, _) = watch::channel(false);
        let journaled = AtomicUsize::new(state.parts.len());
        Ok(Self {
            leases: leases.clone(),
            key,
            node: node.to_string(),
            held: Mutex::new(Held {
                revision,
                state,
                renewed: started,
            }),
            lost,
            journaled,
        })
    }

    /// The partition's state as this node last wrote it.
    pub async fn state(&self) -> PartitionState {
        self.held.lock().await.state.clone()
    }

    /// Position of the first record not yet delivered, as this node last wrote it.
    pub async fn next(&self) -> u64 {
        self.held.lock().await.state.next
    }

    /// Whether the lease is still this node's: not lost, and renewed within `ttl`.
    pub async fn is_held(&self, ttl: Duration) -> bool {
        !*self.lost.borrow() && self.held.lock().await.renewed.elapsed() < ttl
    }

    /// How long since the lease was last renewed.
    pub async fn since_renewed(&self) -> Duration {
        self.held.lock().await.renewed.elapsed()
    }

    /// How many batches of a dynamically partitioned stream the entry journals.
    pub fn journaled(&self) -> usize {
        self.journaled.load(Ordering::Relaxed)
    }

    /// Resolves once the lease is lost (another node took it, or it was given up).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    /// Marks the lease lost: nothing more is written with it.
    pub fn give_up(&self) {
        self.lost.send_replace(true);
    }

    /// Extends the lease.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.change(|_| {}).await
    }

    /// Records that batch `range` is being written.
    pub async fn seal(&self, range: SeqRange) -> Result<(), LeaseError> {
        self.change(|state| state.cut = Some([range.first, range.last]))
            .await
    }

    /// Records that batch `range` was delivered.
    pub async fn delivered(&self, range: SeqRange) -> Result<(), LeaseError> {
        self.change(|state| {
            state.next = state.next.max(range.last + 1);
            state.cut = None;
        })
        .await
    }

    /// Journals batch `entry` of a dynamically partitioned stream as sealed (`delivered`
    /// false) or delivered.
    pub async fn journal_part(&self, entry: &PartEntry, delivered: bool) -> Result<(), LeaseError> {
        self.change(
            |state| match state.parts.iter_mut().find(|part| part.is(entry)) {
                Some(part) => part.delivered |= delivered,
                None => state.parts.push(JournaledPart {
                    range: [entry.range.first, entry.range.last],
                    part: entry.part,
                    over_limit: entry.over_limit.clone(),
                    delivered,
                }),
            },
        )
        .await
    }

    /// Records that every record up to position `through` is delivered (a dynamically
    /// partitioned stream's checkpoint): the journal keeps only the batches past it.
    pub async fn checkpoint(&self, through: u64) -> Result<(), LeaseError> {
        self.change(|state| {
            state.next = state.next.max(through + 1);
            let next = state.next;
            state.parts.retain(|part| part.range[1] >= next);
        })
        .await
    }

    /// Hands the partition back: another node may take it at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let released = self.change(|state| state.owner.clear()).await;
        self.give_up();
        released
    }

    /// Takes `state`, written at `revision` by a write sent at `sent`, as the entry's.
    fn settle(&self, held: &mut Held, revision: u64, state: PartitionState, sent: Instant) {
        self.journaled.store(state.parts.len(), Ordering::Relaxed);
        held.revision = revision;
        held.state = state;
        held.renewed = sent;
    }

    /// Writes the state `change` makes of the current one, if the entry is still this
    /// node's. An answer lost in transit is resolved by reading the entry back.
    async fn change(&self, change: impl Fn(&mut PartitionState)) -> Result<(), LeaseError> {
        let mut held = self.held.lock().await;
        if *self.lost.borrow() {
            return Err(LeaseError::Fenced);
        }
        let started = Instant::now();
        for _ in 0..3 {
            let mut wanted = held.state.clone();
            change(&mut wanted);
            let body = bytes::Bytes::from(serde_json::to_vec(&wanted).expect("serializable"));
            let update = self.leases.update(&self.key, body, held.revision);
            match tokio::time::timeout(REQUEST_TIMEOUT, update).await {
                Ok(Ok(revision)) => {
                    self.settle(&mut held, revision, wanted, started);
                    return Ok(());
                }
                Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    match observe(&self.leases, &self.key).await? {
                        Some((revision, state)) if state.owner == self.node => {
                            if state == wanted {
                                self.settle(&mut held, revision, wanted, started);
                                return Ok(());
                            }
                            held.revision = revision;
                            held.state = state;
                        }
                        _ => {
                            self.give_up();
                            return Err(LeaseError::Fenced);
                        }
                    }
                }
                Ok(Err(error)) => {
                    return Err(LeaseError::Unavailable(format!(
                        "updating {}: {error}",
                        self.key
                    )));
                }
                Err(_) => {
                    return Err(LeaseError::Unavailable(format!(
                        "updating {} timed out",
                        self.key
                    )));
                }
            }
        }
        Err(LeaseError::Unavailable(format!(
            "{} kept changing under this node",
            self.key
        )))
    }
}
