//! Room for new records: what the spool holds that is not yet delivered ("live" bytes).
//!
//! The disk bound alone (segment files on disk ≤ `max_bytes`) frees room only when a whole
//! segment is deleted: under a sustained overload, puts would wait for tens of megabytes at
//! a time and be let in in bursts. Live bytes fall as soon as the checkpoint passes the end
//! of a written group, so room comes back batch by batch. Admission keeps live bytes under
//! `max_bytes` minus one segment — the most a checkpoint moving in order leaves on disk
//! already delivered (the head of the oldest segment) — so the disk bound stays the
//! backstop and, for a stream delivered in order, is not the one that binds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::lock;

/// Group ends kept at most; closer ends are merged (room then comes back a little later).
const MAX_ENDS: u64 = 1024;

/// Bytes written but not known delivered, and where each written group ended.
#[derive(Debug)]
pub struct LiveBytes {
    live: AtomicU64,
    positions: Mutex<Positions>,
    /// Ends closer than this (in bytes written) are merged into one.
    min_spacing: u64,
}

#[derive(Debug)]
struct Positions {
    /// Bytes written since the spool was opened, counting what recovery found.
    written: u64,
    /// Of those, bytes already taken off `live`.
    released: u64,
    /// `(end_seq, written)` after each remembered group, oldest first: once every record
    /// below `end_seq` is delivered, the first `written` bytes are.
    ends: VecDeque<(u64, u64)>,
}

impl LiveBytes {
    /// A spool opened with `recovered` bytes of segments holding the records below
    /// `next_seq`: they all count as live until the checkpoint passes `next_seq - 1`.
    pub fn new(next_seq: u64, recovered: u64, max_bytes: u64) -> Self {
        let mut ends = VecDeque::new();
        if recovered > 0 {
            ends.push_back((next_seq, recovered));
        }
        Self {
            live: AtomicU64::new(recovered),
            positions: Mutex::new(Positions {
                written: recovered,
                released: 0,
                ends,
            }),
            min_spacing: (max_bytes / MAX_ENDS).max(1),
        }
    }

    /// Bytes written and not yet known delivered.
    pub fn bytes(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// A group of `bytes` ending before `end_seq` was written.
    pub fn written(&self, end_seq: u64, bytes: u64) {
        let mut positions = lock(&self.positions);
        positions.written += bytes;
        let written = positions.written;
        let since_previous = match positions.ends.len() {
            0 | 1 => u64::MAX,
            n => written - positions.ends[n - 2].1,
        };
        match positions.ends.back_mut() {
            Some(last) if since_previous < self.min_spacing => *last = (end_seq, written),
            _ => positions.ends.push_back((end_seq, written)),
        }
        self.live.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Every record up to `through` is delivered: releases the bytes of the groups that
    /// ended at or before it. Returns how many bytes were released.
    pub fn delivered_through(&self, through: u64) -> u64 {
        let mut positions = lock(&self.positions);
        let mut reached = positions.released;
        while let Some(&(end_seq, written)) = positions.ends.front() {
            if end_seq > through.saturating_add(1) {
                break;
            }
            reached = written;
            positions.ends.pop_front();
        }
        let released = reached - positions.released;
        positions.released = reached;
        self.live.fetch_sub(released, Ordering::AcqRel);
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_released_once_its_last_record_is_delivered() {
        let live = LiveBytes::new(0, 0, 1 << 30);
        live.written(10, 1000);
        live.written(25, 3000);
        assert_eq!(live.bytes(), 4000);
        assert_eq!(
            live.delivered_through(8),
            0,
            "group 0..10 is not fully delivered"
        );
        assert_eq!(live.delivered_through(9), 1000);
        assert_eq!(live.delivered_through(20), 0);
        assert_eq!(live.bytes(), 3000);
        assert_eq!(live.delivered_through(30), 3000);
        assert_eq!(live.bytes(), 0);
        assert_eq!(live.delivered_through(30), 0, "nothing is released twice");
    }

    #[test]
    fn recovered_bytes_are_live_until_the_records_before_the_restart_are_delivered() {
        let live = LiveBytes::new(100, 5000, 1 << 30);
        live.written(110, 500);
        assert_eq!(live.bytes(), 5500);
        assert_eq!(live.delivered_through(50), 0);
        assert_eq!(live.delivered_through(99), 5000);
        assert_eq!(live.delivered_through(109), 500);
        assert_eq!(live.bytes(), 0);
    }

    #[test]
    fn close_ends_merge_and_are_released_at_the_later_end() {
        // 1 KiB spacing: groups of 100 bytes merge into the last remembered end.
        let live = LiveBytes::new(0, 0, 1024 * MAX_ENDS);
        for group in 1..=30u64 {
            live.written(group * 10, 100);
        }
        let remembered = lock(&live.positions).ends.len();
        assert!(remembered <= 5, "{remembered} ends kept for 3000 bytes");
        let mut released = 0;
        for through in (9..300).step_by(10) {
            released += live.delivered_through(through);
            assert!(
                released <= (through + 1) * 10,
                "released {released} bytes with records through {through} delivered"
            );
        }
        assert_eq!(released, 3000, "everything is released in the end");
        assert_eq!(live.bytes(), 0);
    }

    #[test]
    fn a_full_spool_of_small_groups_keeps_a_bounded_list_of_ends() {
        let live = LiveBytes::new(0, 0, 1 << 20);
        for group in 1..=10_000u64 {
            live.written(group, 100);
        }
        let remembered = lock(&live.positions).ends.len() as u64;
        assert!(remembered <= MAX_ENDS + 1, "{remembered} ends kept");
        assert_eq!(live.delivered_through(10_000), 1_000_000);
    }
}
