//! Rebuilding a partitioned stream's batches after a restart. The journal says, past the
//! checkpoint, which partition batches were sealed (and maybe written) and which were
//! delivered, and which windows sent records to the error output. The stream's records are
//! read again from the checkpoint in windows cut at every journaled boundary, so no window
//! straddles one: each partition's pieces of a window then either belong to a delivered
//! batch (skipped), to a sealed one (rebuilt with exactly its range, so it gets the same
//! key), or come after every journaled batch of the partition (buffered as usual).

use std::collections::{HashMap, VecDeque};

use crate::spool::{PartEntry, SeqRange, WINDOW_FAILED, WINDOW_FAILURES};

/// What the journal says about a partition's records in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartRole {
    /// Nothing: buffer them as usual.
    New,
    /// They belong to a delivered batch: skip them.
    Delivered,
    /// They belong to the sealed batch `range`: rebuild it.
    Rebuild(SeqRange),
}

/// What the journal says about a window's error output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRecord {
    /// The journaled entry (which partitions were over the limit).
    pub entry: PartEntry,
    /// Whether its error output was written completely.
    pub delivered: bool,
}

/// The journaled batches of a partitioned stream past its checkpoint.
#[derive(Debug, Default)]
pub struct ReplayPlan {
    /// Each partition's batches, in order, and whether each was delivered.
    parts: HashMap<u64, VecDeque<(SeqRange, bool)>>,
    /// Windows whose refused records went to the error output.
    failures: HashMap<SeqRange, WindowRecord>,
    /// Windows that could not be encoded at all.
    failed: HashMap<SeqRange, WindowRecord>,
    /// Every journaled boundary: a window ends at each.
    cuts: Vec<u64>,
}

impl ReplayPlan {
    /// The plan from the journal's `sealed` and `delivered` partition entries.
    pub fn new(sealed: Vec<PartEntry>, delivered: Vec<PartEntry>) -> Self {
        let mut plan = Self::default();
        let entries = sealed
            .into_iter()
            .map(|e| (e, false))
            .chain(delivered.into_iter().map(|e| (e, true)));
        for (entry, delivered) in entries {
            let range = entry.range;
            plan.cuts.push(range.last);
            if let Some(before) = range.first.checked_sub(1) {
                plan.cuts.push(before);
            }
            let record = |entry| WindowRecord { entry, delivered };
            match entry.part {
                WINDOW_FAILURES => {
                    plan.failures.insert(range, record(entry));
                }
                WINDOW_FAILED => {
                    plan.failed.insert(range, record(entry));
                }
                part => plan
                    .parts
                    .entry(part)
                    .or_default()
                    .push_back((range, delivered)),
            }
        }
        for batches in plan.parts.values_mut() {
            batches
                .make_contiguous()
                .sort_by_key(|(range, _)| range.first);
        }
        plan.cuts.sort_unstable();
        plan.cuts.dedup();
        plan
    }

    /// The windows records from `start` on must form before new ones: contiguous, each
    /// ending at a journaled boundary.
    pub fn windows(&self, start: u64) -> Vec<SeqRange> {
        let mut first = start;
        let mut windows = Vec::new();
        for &cut in self.cuts.iter().filter(|&&cut| cut >= start) {
            windows.push(SeqRange { first, last: cut });
            first = cut + 1;
        }
        windows
    }

    /// Whether there is nothing to rebuild.
    pub fn is_empty(&self) -> bool {
        self.cuts.is_empty()
    }

    /// What partition `part`'s records of `window` are.
    pub fn role(&mut self, part: u64, window: SeqRange) -> PartRole {
        let Some(batches) = self.parts.get_mut(&part) else {
            return PartRole::New;
        };
        while batches
            .front()
            .is_some_and(|(range, _)| range.last < window.first)
        {
            batches.pop_front();
        }
        match batches.front() {
            Some(&(range, delivered))
                if range.first <= window.first && window.last <= range.last =>
            {
                if delivered {
                    PartRole::Delivered
                } else {
                    PartRole::Rebuild(range)
                }
            }
            _ => PartRole::New,
        }
    }

    /// What the journal says about `window`'s refused records.
    pub fn failures(&self, window: SeqRange) -> Option<&WindowRecord> {
        self.failures.get(&window)
    }

    /// What the journal says about `window` if it could not be encoded before.
    pub fn failed(&self, window: SeqRange) -> Option<&WindowRecord> {
        self.failed.get(&window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, last: u64, part: u64) -> PartEntry {
        PartEntry {
            range: SeqRange { first, last },
            part,
            over_limit: Vec::new(),
        }
    }

    #[test]
    fn windows_end_at_every_journaled_boundary_past_the_start() {
        let plan = ReplayPlan::new(
            vec![entry(3, 9, 7)],
            vec![entry(0, 4, 8), entry(10, 12, WINDOW_FAILURES)],
        );
        let windows: Vec<(u64, u64)> = plan
            .windows(2)
            .into_iter()
            .map(|w| (w.first, w.last))
            .collect();
        assert_eq!(windows, [(2, 2), (3, 4), (5, 9), (10, 12)]);
    }

    #[test]
    fn a_partition_skips_delivered_batches_and_rebuilds_sealed_ones() {
        let mut plan = ReplayPlan::new(vec![entry(10, 19, 7)], vec![entry(0, 9, 7)]);
        let w = |first, last| SeqRange { first, last };
        assert_eq!(plan.role(7, w(0, 4)), PartRole::Delivered);
        assert_eq!(plan.role(7, w(5, 9)), PartRole::Delivered);
        assert_eq!(plan.role(7, w(10, 15)), PartRole::Rebuild(w(10, 19)));
        assert_eq!(plan.role(8, w(10, 15)), PartRole::New);
        assert_eq!(plan.role(7, w(20, 25)), PartRole::New);
    }
}
