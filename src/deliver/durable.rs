//! Where a stream's accepted records are kept until delivered, as the delivery loop sees it:
//! the local spool, or a partition of a JetStream cluster. Both journal a batch's boundaries
//! before it is written, read its records back, and move the delivered point after the
//! destination confirms.

use std::sync::Arc;

use crate::cluster::PartitionLog;
use crate::cluster::lease::LeaseError;
use crate::spool::{PartEntry, RecordChunk, SeqRange, StreamSpool};

/// The durable log behind a delivery loop.
#[derive(Debug, Clone)]
pub enum DurableLog {
    /// This machine's spool.
    Spool(Arc<StreamSpool>),
    /// One partition of the stream on the cluster, held by this node.
    Partition(Arc<PartitionLog>),
}

/// Why a journal write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// It may succeed if tried again.
    #[error("{0}")]
    Retry(String),
    /// This node no longer delivers the partition: nothing more of the batch is written.
    #[error("another node delivers this partition now")]
    Fenced,
}

impl From<crate::spool::SpoolError> for JournalError {
    fn from(error: crate::spool::SpoolError) -> Self {
        Self::Retry(error.to_string())
    }
}

impl From<LeaseError> for JournalError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::Fenced => Self::Fenced,
            LeaseError::Unavailable(reason) => Self::Retry(reason),
        }
    }
}

impl DurableLog {
    /// Seeds the names of a batch's objects, ledger entries and documents, with its range:
    /// the same whenever the batch is written again.
    pub fn seed(&self) -> u64 {
        match self {
            Self::Spool(spool) => spool.incarnation(),
            Self::Partition(partition) => partition.seed,
        }
    }

    /// The first record not known delivered: where delivery resumes.
    pub async fn resume_seq(&self) -> u64 {
        match self {
            Self::Spool(spool) => spool.resume_seq(),
            Self::Partition(partition) => partition.lease.next().await,
        }
    }

    /// Journals batch `entry` of a dynamically partitioned stream as sealed (`delivered`
    /// false: before any of it is written) or delivered.
    pub async fn journal_part(
        &self,
        entry: &PartEntry,
        delivered: bool,
    ) -> Result<(), JournalError> {
        match (self, delivered) {
            (Self::Spool(spool), false) => Ok(spool.record_part_sealed(entry.clone()).await?),
            (Self::Spool(spool), true) => Ok(spool.record_part_delivered(entry.clone()).await?),
            (Self::Partition(partition), _) => Ok(partition.journal_part(entry, delivered).await?),
        }
    }

    /// Records that every record up to `through` is delivered (a dynamically partitioned
    /// stream's checkpoint), so they need not be kept.
    pub async fn record_checkpoint(&self, through: u64) -> Result<(), JournalError> {
        match self {
            Self::Spool(spool) => Ok(spool.record_checkpoint(through).await?),
            Self::Partition(partition) => Ok(partition.record_checkpoint(through).await?),
        }
    }

    /// Whether the log is more than half full: records it cannot drop (the oldest buffered)
    /// should be delivered early.
    pub fn is_filling(&self) -> bool {
        match self {
            Self::Spool(spool) => spool.disk_bytes().saturating_mul(2) > spool.max_bytes(),
            Self::Partition(partition) => partition.is_filling(),
        }
    }

    /// Durably records that batch `range` is one batch, before any of it is written.
    pub async fn record_sealed(&self, range: SeqRange) -> Result<(), JournalError> {
        match self {
            Self::Spool(spool) => Ok(spool.record_sealed(range).await?),
            Self::Partition(partition) => Ok(partition.record_sealed(range).await?),
        }
    }

    /// Records that batch `range` was delivered.
    pub async fn record_delivered(&self, range: SeqRange) -> Result<(), JournalError> {
        match self {
            Self::Spool(spool) => Ok(spool.record_delivered(range).await?),
            Self::Partition(partition) => Ok(partition.record_delivered(range).await?),
        }
    }

    /// Every record of batch `range`, read again.
    pub async fn read_range(&self, range: SeqRange) -> std::io::Result<RecordChunk> {
        match self {
            Self::Spool(spool) => spool.read_range(range).await,
            Self::Partition(partition) => partition.read_range(range).await,
        }
    }
}
