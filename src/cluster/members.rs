//! Which nodes are alive: each node rewrites its own heartbeat entry in the lease bucket
//! every third of the lease time; a node whose entry has not changed for a whole lease time
//! is counted out. Nodes share partitions evenly among those alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Cluster, REQUEST_TIMEOUT};

/// The nodes this node has heard from, kept current by background tasks.
#[derive(Debug)]
pub struct Members {
    own: String,
    ttl: Duration,
    /// When each node's heartbeat entry last changed, as seen here.
    seen: Mutex<HashMap<String, Instant>>,
    /// Writes this node's heartbeat.
    beating: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Members {
    /// Starts heartbeating for this node and watching the others'.
    pub fn start(cluster: &Cluster) -> Arc<Self> {
        let members = Arc::new(Self {
            own: key(&cluster.node),
            ttl: cluster.settings.lease_ttl,
            seen: Mutex::default(),
            beating: Mutex::default(),
        });
        let beating = tokio::spawn(heartbeat(cluster.clone(), Arc::clone(&members)));
        *members.beating.lock().unwrap_or_else(|p| p.into_inner()) = Some(beating);
        tokio::spawn(watch(cluster.clone(), Arc::clone(&members)));
        members
    }

    /// Leaves the cluster: stops the heartbeat and removes it, so the other nodes count
    /// this one out at once (called once its partitions are handed back).
    pub async fn leave(&self, cluster: &Cluster) {
        if let Some(beating) = self
            .beating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            beating.abort();
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, cluster.leases.purge(&self.own)).await {
            Ok(Ok(())) => tracing::info!(node = %cluster.node, "left the cluster"),
            _ => {
                tracing::warn!(node = %cluster.node, "cannot remove this node's heartbeat; the others count it out once it is a lease time old")
            }
        }
    }

    /// Nodes alive (heard from within the lease time), this one included.
    pub fn live(&self) -> usize {
        let seen = self.seen();
        seen.iter()
            .filter(|(name, since)| **name != self.own && since.elapsed() < self.ttl)
            .count()
            + 1
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Heartbeat key of node `node`.
fn key(node: &str) -> String {
    format!("node.{node}")
}

/// Rewrites this node's heartbeat every third of the lease time, and forgets (and removes)
/// the entries of nodes gone for ten lease times, so the bucket does not fill with old names.
async fn heartbeat(cluster: Cluster, members: Arc<Members>) {
    let ttl = members.ttl;
    let mut beat: u64 = 0;
    loop {
        beat += 1;
        let put = cluster.leases.put(&members.own, beat.to_string().into());
        match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(node = %cluster.node, "cannot write this node's heartbeat: {error}")
            }
            Err(_) => {
                tracing::warn!(node = %cluster.node, "writing this node's heartbeat timed out")
            }
        }
        let gone: Vec<String> = {
            let mut seen = members.seen();
            let gone = seen
                .iter()
                .filter(|(name, since)| **name != members.own && since.elapsed() > ttl * 10)
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>();
            for name in &gone {
                seen.remove(name);
            }
            gone
        };
        for name in gone {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, cluster.leases.purge(name)).await;
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

/// Notes when each node's heartbeat entry last changed, following the bucket's updates
/// (watched again whenever the watch ends). Every node, this one included, rewrites its
/// entry every third of the lease time, so a watch that hears nothing for a lease time was
/// left behind (by a NATS server that went away, say) and is started over too.
async fn watch(cluster: Cluster, members: Arc<Members>) {
    loop {
        match cluster.leases.watch_with_history("node.*").await {
            Ok(mut updates) => {
                while let Ok(Some(update)) = tokio::time::timeout(members.ttl, updates.next()).await
                {
                    let Ok(entry) = update else { break };
                    let mut seen = members.seen();
                    if entry.operation == async_nats::jetstream::kv::Operation::Put {
                        // The first entries are the last heartbeats written, perhaps long
                        // ago by nodes gone since: they count from when they were written.
                        let age_ms = chrono::Utc::now().timestamp_millis()
                            - (entry.created.unix_timestamp_nanos() / 1_000_000) as i64;
                        let age = Duration::from_millis(age_ms.max(0) as u64);
                        let now = Instant::now();
                        seen.insert(entry.key, now.checked_sub(age).unwrap_or(now));
                    } else {
                        seen.remove(&entry.key);
                    }
                }
            }
            Err(error) => {
                tracing::debug!(node = %cluster.node, "cannot follow the other nodes' heartbeats: {error}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many partitions of `partitions` one of `live` nodes should hold: rounded up, so
/// every partition has a place.
pub fn fair_share(partitions: u32, live: usize) -> usize {
    (partitions as usize).div_ceil(live.max(1))
}

/// How often a stream's assignment looks at its partitions.
pub fn tick(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition() {
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 0), 8);
        assert_eq!(fair_share(2, 3), 1);
    }
}
