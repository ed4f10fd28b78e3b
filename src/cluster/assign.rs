//! Which partitions of one delivery stream this node delivers: it takes free and expired
//! partitions up to its fair share, renews the leases it holds, gives back partitions
//! beyond its share (so a joining node gets some), and stops delivering a partition the
//! moment its lease is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lease::{self, Lease, LeaseError, PartitionState};
use super::members::{self, Members};
use super::{Cluster, PartitionLog};
use crate::buffer::StreamBuffer;

/// Starts the delivery of a partition this node has just taken.
pub trait PartitionLauncher: Send + Sync {
    /// Builds the partition's buffer and delivery loop around `log`, resuming from `state`,
    /// and starts them.
    fn launch(&self, log: Arc<PartitionLog>, state: PartitionState) -> PartitionRun;
}

/// The running delivery of one partition.
pub struct PartitionRun {
    /// Asks the delivery loop to stop after what it is writing.
    pub stop: watch::Sender<bool>,
    /// The partition's buffer; closing it makes the loop deliver what it holds and stop.
    pub buffer: Arc<StreamBuffer>,
    /// Reads the partition from JetStream into the buffer.
    pub feeder: JoinHandle<()>,
    /// Asks the feeder to stop once it has read every message there is.
    pub draining: watch::Sender<bool>,
    /// The delivery loop.
    pub delivery: JoinHandle<()>,
}

impl PartitionRun {
    /// Stops the delivery after the batch it is writing. A loop still writing after `grace`
    /// (its destination is failing) is cut off, as a crash would leave it: the batch recorded
    /// in the lease is written again, under the same names, by the partition's next holder.
    pub async fn stop(self, grace: Duration) {
        self.feeder.abort();
        self.stop.send_replace(true);
        let mut delivery = self.delivery;
        if tokio::time::timeout(grace, &mut delivery).await.is_err() {
            delivery.abort();
            let _ = delivery.await;
        }
    }

    /// Reads what the partition holds in JetStream (for at most `limit`), delivers it,
    /// then stops (the service is stopping); `false` when `lease_lost` resolved first and
    /// the delivery was cut off, as [`stop`](Self::stop) cuts off a failing one.
    pub async fn drain(self, limit: Duration, lease_lost: impl Future<Output = ()>) -> bool {
        let Self {
            stop: _stop,
            buffer,
            mut feeder,
            draining,
            mut delivery,
        } = self;
        draining.send_replace(true);
        let emptied = async {
            if tokio::time::timeout(limit, &mut feeder).await.is_err() {
                feeder.abort();
            }
            buffer.close();
            let _ = (&mut delivery).await;
        };
        let lost = tokio::select! {
            () = emptied => false,
            () = lease_lost => true,
        };
        if lost {
            feeder.abort();
            delivery.abort();
            let _ = delivery.await;
        }
        !lost
    }
}

/// Stops partition `partition`'s delivery (draining it while its lease can be renewed, or
/// within half the lease time) and gives its lease back.
async fn hand_back(stream_name: &str, partition: u32, held: Held, drain: bool, ttl: Duration) {
    let Held { log, run, .. } = held;
    if drain {
        // The lease is kept while what was buffered is delivered, however long that takes,
        // unless renewing it fails for the lease time (the cluster is out of reach) or
        // another node took it: then the next holder delivers the rest.
        let lease_lost = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(error) = log.lease.renew().await {
                    tracing::warn!(
                        stream = stream_name,
                        partition,
                        "cannot renew the partition's lease while delivering what it buffered: {error}"
                    );
                }
                if !log.lease.is_held(ttl).await {
                    return;
                }
            }
        };
        if !run.drain(ttl, lease_lost).await {
            log.lease.give_up();
            tracing::warn!(
                stream = stream_name,
                partition,
                "lost the partition's lease before delivering what it buffered; those records stay in JetStream for the partition's next holder"
            );
            return;
        }
    } else {
        run.stop(ttl / 2).await;
    }
    match log.lease.release().await {
        Ok(()) => tracing::info!(stream = stream_name, partition, "handed the partition back"),
        Err(error) => tracing::warn!(
            stream = stream_name,
            partition,
            "cannot hand the partition back; another node takes it once its lease runs out: {error}"
        ),
    }
}

/// What this node knows of one partition it does not hold.
struct Seen {
    revision: Option<u64>,
    state: PartitionState,
    /// When the entry last changed, as seen here.
    since: Instant,
}

/// The partitions of one delivery stream on this node.
pub struct StreamAssignment {
    /// Delivery stream name.
    pub stream_name: String,
    /// The node's cluster connection.
    pub cluster: Cluster,
    /// Live node count.
    pub members: Arc<Members>,
    /// The stream's JetStream stream.
    pub stream: jetstream::stream::Stream,
    /// Seed of its batch names.
    pub seed: u64,
    /// Starts a partition's delivery.
    pub launcher: Arc<dyn PartitionLauncher>,
    /// Where the assignment reports how the stream is doing on this node.
    pub status: Arc<super::ClusterStatus>,
}

struct Held {
    log: Arc<PartitionLog>,
    run: PartitionRun,
}

impl StreamAssignment {
    /// Runs until `closed` is raised (the service stops: what the held partitions have
    /// buffered is delivered first) or `restart` is (a reload replaces the stream: their
    /// loops stop after the batch they are writing); then gives the partitions back.
    pub async fn run(self, mut closed: watch::Receiver<bool>, mut restart: watch::Receiver<bool>) {
        let ttl = self.cluster.settings.lease_ttl;
        let partitions = self.cluster.settings.partitions;
        let mut held: HashMap<u32, Held> = HashMap::new();
        let mut seen: HashMap<u32, Seen> = HashMap::new();
        // A few looks at the cluster before taking anything, so nodes starting together
        // learn of each other before they share out the partitions.
        let first_look = Instant::now() + members::tick(ttl) * 3;
        let drain = loop {
            // Stopping the service also drops the restart signal's sender: only a raised
            // one is a reload, and a stop seen with it still drains.
            tokio::select! {
                biased;
                _ = closed.wait_for(|closed| *closed) => break true,
                Ok(_) = restart.wait_for(|restart| *restart) => break false,
                () = tokio::time::sleep(members::tick(ttl)) => {}
            }
            self.drop_lost(&mut held, ttl).await;
            self.hand_back_stopped(&mut held);
            self.renew(&mut held, ttl).await;
            self.observe(&held, &mut seen).await;
            self.report(&held).await;
            if Instant::now() < first_look {
                continue;
            }
            let share = members::fair_share(partitions, self.members.live());
            if held.len() > share {
                self.give_back_one(&mut held);
            } else if held.len() < share {
                self.take_free(&mut held, &mut seen, share, ttl).await;
            }
        };
        self.status.partitions_held.store(0, Ordering::Relaxed);
        self.status.buffered_records.store(0, Ordering::Relaxed);
        self.status.oldest_arrival_ms.store(0, Ordering::Relaxed);
        let name = &self.stream_name;
        futures_util::future::join_all(
            held.into_iter()
                .map(|(partition, held)| hand_back(name, partition, held, drain, ttl)),
        )
        .await;
    }

    /// Publishes the partitions held, their buffered records, the arrival of their oldest
    /// undelivered record and the stream's stored bytes.
    async fn report(&self, held: &HashMap<u32, Held>) {
        let status = &self.status;
        status
            .partitions_held
            .store(held.len() as u64, Ordering::Relaxed);
        let buffered = held.values().map(|h| h.run.buffer.buffered_records()).sum();
        status.buffered_records.store(buffered, Ordering::Relaxed);
        let oldest =
            futures_util::future::join_all(held.values().map(|h| h.log.oldest_undelivered_ms()))
                .await
                .into_iter()
                .flatten()
                .min();
        status
            .oldest_arrival_ms
            .store(oldest.unwrap_or(0), Ordering::Relaxed);
        let mut stream = self.stream.clone();
        if let Ok(Ok(info)) = tokio::time::timeout(super::REQUEST_TIMEOUT, stream.info()).await {
            status
                .stored_bytes
                .store(info.state.bytes, Ordering::Relaxed);
        }
    }

    /// Stops delivering partitions whose lease was lost or ran out.
    async fn drop_lost(&self, held: &mut HashMap<u32, Held>, ttl: Duration) {
        let mut lost = Vec::new();
        for (partition, entry) in held.iter() {
            if !entry.log.lease.is_held(ttl).await {
                lost.push(*partition);
            }
        }
        for partition in lost {
            let Some(entry) = held.remove(&partition) else {
                continue;
            };
            tracing::warn!(stream = %self.stream_name, partition, "lost the partition's lease; another node delivers it now");
            entry.log.lease.give_up();
            entry.run.stop.send_replace(true);
            entry.run.feeder.abort();
        }
    }

    /// Hands back partitions whose reading or delivery task ended without being asked to
    /// (a panic, say): held but no longer delivered, they would wait forever. Released, they
    /// are taken again (here or elsewhere) from their delivered point.
    fn hand_back_stopped(&self, held: &mut HashMap<u32, Held>) {
        let stopped: Vec<u32> = held
            .iter()
            .filter(|(_, h)| h.run.feeder.is_finished() || h.run.delivery.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in stopped {
            let Some(entry) = held.remove(&partition) else {
                continue;
            };
            tracing::error!(stream = %self.stream_name, partition, "the partition's reading or delivery stopped on its own; handing it back to resume from its delivered point");
            self.hand_back_in_background(partition, entry);
        }
    }

    /// Stops partition `partition`'s delivery and gives its lease back, in the background
    /// so the other leases are renewed meanwhile.
    fn hand_back_in_background(&self, partition: u32, entry: Held) {
        let name = self.stream_name.clone();
        let ttl = self.cluster.settings.lease_ttl;
        tokio::spawn(async move { hand_back(&name, partition, entry, false, ttl).await });
    }

    /// Renews every lease due (a third of the lease time since the last renewal).
    /// All at once, so a slow answer does not hold up the other leases.
    async fn renew(&self, held: &mut HashMap<u32, Held>, ttl: Duration) {
        let renewals = held.iter_mut().map(|(partition, entry)| async move {
            // Every write of the lease renews it, the delivery loop's too.
            if entry.log.lease.since_renewed().await < ttl / 3 {
                return;
            }
            if let Err(error) = entry.log.lease.renew().await {
                tracing::warn!(stream = %self.stream_name, partition, "cannot renew the partition's lease: {error}");
            }
        });
        futures_util::future::join_all(renewals).await;
    }

    /// Reads the entries of the partitions not held here (all at once).
    async fn observe(&self, held: &HashMap<u32, Held>, seen: &mut HashMap<u32, Seen>) {
        let now = Instant::now();
        seen.retain(|partition, _| !held.contains_key(partition));
        let reads = (0..self.cluster.settings.partitions)
            .filter(|partition| !held.contains_key(partition))
            .map(|partition| async move {
                let key = lease::key(&self.stream_name, partition);
                (partition, lease::observe(&self.cluster.leases, &key).await)
            });
        for (partition, observed) in futures_util::future::join_all(reads).await {
            let (revision, state) = match observed {
                Ok(Some((revision, state))) => (Some(revision), state),
                Ok(None) => (None, PartitionState::default()),
                Err(error) => {
                    tracing::debug!(stream = %self.stream_name, partition, "cannot read the partition's lease: {error}");
                    continue;
                }
            };
            match seen.get_mut(&partition) {
                Some(entry) if entry.revision == revision => {}
                Some(entry) => {
                    entry.revision = revision;
                    entry.state = state;
                    entry.since = now;
                }
                None => {
                    seen.insert(
                        partition,
                        Seen {
                            revision,
                            state,
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// Takes free partitions (no owner, or an owner that stopped renewing) until this node
    /// holds `share`.
    async fn take_free(
        &self,
        held: &mut HashMap<u32, Held>,
        seen: &mut HashMap<u32, Seen>,
        share: usize,
        ttl: Duration,
    ) {
        // Nodes start looking at different places, so they rarely race for one partition.
        let partitions = self.cluster.settings.partitions;
        let start = (super::seed_of(&self.cluster.node) % u64::from(partitions)) as u32;
        for offset in 0..partitions {
            if held.len() >= share {
                return;
            }
            let partition = (start + offset) % partitions;
            let Some(entry) = seen.get(&partition) else {
                continue;
            };
            let free = entry.revision.is_none()
                || entry.state.owner.is_empty()
                || entry.since.elapsed() >= ttl;
            if !free {
                continue;
            }
            let key = lease::key(&self.stream_name, partition);
            let observed = entry.revision.map(|r| (r, entry.state.clone()));
            let lease = match Lease::claim(&self.cluster.leases, key, &self.cluster.node, observed)
                .await
            {
                Ok(lease) => lease,
                Err(LeaseError::Fenced) => {
                    seen.remove(&partition);
                    continue;
                }
                Err(error) => {
                    tracing::debug!(stream = %self.stream_name, partition, "cannot take the partition: {error}");
                    continue;
                }
            };
            seen.remove(&partition);
            let state = lease.state().await;
            if !entry_owner_was_free(&state) {
                tracing::info!(stream = %self.stream_name, partition, next = state.next, "taking over the partition");
            }
            let log = Arc::new(PartitionLog::new(
                &self.stream_name,
                partition,
                self.seed,
                lease,
                self.stream.clone(),
                Arc::clone(&self.status),
                self.cluster.settings.max_bytes,
            ));
            let run = self.launcher.launch(Arc::clone(&log), state);
            held.insert(partition, Held { log, run });
        }
    }

    /// Gives back the highest-numbered partition held.
    fn give_back_one(&self, held: &mut HashMap<u32, Held>) {
        let Some(partition) = held.keys().max().copied() else {
            return;
        };
        let Some(entry) = held.remove(&partition) else {
            return;
        };
        tracing::info!(stream = %self.stream_name, partition, "giving the partition back to share the work");
        self.hand_back_in_background(partition, entry);
    }
}

/// Whether a partition's state shows it was never delivered before (nothing to take over).
fn entry_owner_was_free(state: &PartitionState) -> bool {
    state.next == 0 && state.cut.is_none() && state.parts.is_empty()
}
