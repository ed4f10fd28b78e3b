//! When the spool's undelivered records arrived, to a tenth of a second: the age of the
//! oldest one is the stream's data freshness (Firehose's `DeliveryToS3.DataFreshness`).
//! Marks are kept per 100 ms of arrivals, so a long backlog costs a few bytes per second
//! of outage, not per record.

use std::collections::VecDeque;

/// Arrivals within this many milliseconds share one mark (the first one's time).
const MARK_MS: i64 = 100;

/// Arrival marks of the records not yet delivered, oldest first.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// `(last record, arrival)`: records up to `last` (after the previous mark's) arrived
    /// at `arrival` (Unix ms) or later.
    marks: VecDeque<(u64, i64)>,
}

impl Arrivals {
    /// Records up to `last_seq` arrived at `arrival_ms`.
    pub fn record(&mut self, last_seq: u64, arrival_ms: i64) {
        match self.marks.back_mut() {
            Some((last, at)) if at.div_euclid(MARK_MS) == arrival_ms.div_euclid(MARK_MS) => {
                *last = (*last).max(last_seq);
            }
            _ => self.marks.push_back((last_seq, arrival_ms)),
        }
    }

    /// Arrival (Unix ms) of the oldest record after `delivered_through`, forgetting the
    /// marks of delivered records; `None` when no mark is left.
    pub fn oldest_after(&mut self, delivered_through: Option<u64>) -> Option<i64> {
        if let Some(done) = delivered_through {
            while self.marks.front().is_some_and(|(last, _)| *last <= done) {
                self.marks.pop_front();
            }
        }
        self.marks.front().map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_undelivered_arrival_moves_with_the_checkpoint() {
        let mut arrivals = Arrivals::default();
        arrivals.record(9, 1_000);
        arrivals.record(19, 1_050);
        arrivals.record(29, 2_000);
        assert_eq!(arrivals.oldest_after(None), Some(1_000));
        assert_eq!(arrivals.oldest_after(Some(15)), Some(1_000));
        assert_eq!(arrivals.oldest_after(Some(19)), Some(2_000));
        assert_eq!(arrivals.oldest_after(Some(29)), None);
    }
}
