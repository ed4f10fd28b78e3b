//! Process-wide accounting of bytes waiting for compression, and the signal that space freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Shared by every stream: how many uncompressed bytes are queued for or inside the
/// compression pool, and a notification for puts waiting on buffer space.
#[derive(Debug)]
pub struct IngestCapacity {
    compression_budget: usize,
    compressing: AtomicUsize,
    freed: Notify,
}

impl IngestCapacity {
    /// At most `compression_budget` uncompressed bytes may wait for the compression pool.
    pub fn new(compression_budget: usize) -> Self {
        Self {
            compression_budget,
            compressing: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Whether another chunk may be queued for compression.
    pub fn has_room_for_compression(&self) -> bool {
        self.compressing.load(Ordering::Acquire) < self.compression_budget
    }

    /// Records `bytes` handed to the compression pool until the returned guard is dropped
    /// (when the job ends, however it ends), which wakes waiting puts.
    pub fn start_compressing(self: &Arc<Self>, bytes: usize) -> Compressing {
        self.compressing.fetch_add(bytes, Ordering::AcqRel);
        Compressing {
            capacity: Arc::clone(self),
            bytes,
        }
    }

    /// Wakes every put waiting for space.
    pub fn notify_freed(&self) {
        self.freed.notify_waiters();
    }

    /// Resolves at the next [`notify_freed`](Self::notify_freed).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

/// Bytes of one job counted against the compression budget while the job runs.
#[derive(Debug)]
pub struct Compressing {
    capacity: Arc<IngestCapacity>,
    bytes: usize,
}

impl Drop for Compressing {
    fn drop(&mut self) {
        self.capacity
            .compressing
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.capacity.notify_freed();
    }
}
