//! How a stream's deliveries are going, for the console and `hydrant status`: whether the
//! destination takes requests now, the last thing it took, and the last few errors with
//! their reasons. The delivery loop writes it as requests are answered; readers take a
//! snapshot.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use chrono::Utc;
use hydrant_sinks::prelude::{AttemptLog, SinkError};
use serde::Serialize;

use super::DeliveryCounters;

/// Delivery errors kept per stream.
const RECENT_ERRORS: usize = 20;

/// One delivery error, as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorNote {
    /// When it happened (Unix milliseconds).
    pub at_ms: i64,
    /// The destination's error, with what failed and why.
    pub message: String,
}

/// The last batch a stream delivered.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveredNote {
    /// When it was confirmed (Unix milliseconds).
    pub at_ms: i64,
    /// Where it went: the object key, table or index.
    pub target: String,
    /// Its records.
    pub records: u64,
}

/// A stream's delivery health at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    /// `ok` (the last request was taken), `failing` (the last request failed) or `idle`
    /// (nothing sent yet).
    pub state: &'static str,
    /// The last batch delivered.
    pub last_delivered: Option<DeliveredNote>,
    /// The most recent errors, newest first.
    pub recent_errors: Vec<ErrorNote>,
}

#[derive(Debug, Default)]
struct HealthState {
    last_answer_failed: Option<bool>,
    last_delivered: Option<DeliveredNote>,
    recent_errors: VecDeque<ErrorNote>,
}

/// A stream's delivery health, shared between its delivery loop and the API.
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    state: Mutex<HealthState>,
}

impl DeliveryHealth {
    /// Notes that a batch of `records` went to `target`.
    pub fn delivered(&self, target: String, records: u64) {
        let mut state = self.lock();
        state.last_delivered = Some(DeliveredNote {
            at_ms: Utc::now().timestamp_millis(),
            target,
            records,
        });
    }

    /// Notes a request's answer: taken, or failed with `error`.
    fn answered(&self, error: Option<&SinkError>) {
        let mut state = self.lock();
        state.last_answer_failed = Some(error.is_some());
        if let Some(error) = error {
            if state.recent_errors.len() == RECENT_ERRORS {
                state.recent_errors.pop_back();
            }
            state.recent_errors.push_front(ErrorNote {
                at_ms: Utc::now().timestamp_millis(),
                message: error.to_string(),
            });
        }
    }

    /// The health now.
    pub fn snapshot(&self) -> HealthSnapshot {
        let state = self.lock();
        HealthSnapshot {
            state: match state.last_answer_failed {
                None => "idle",
                Some(false) => "ok",
                Some(true) => "failing",
            },
            last_delivered: state.last_delivered.clone(),
            recent_errors: state.recent_errors.iter().cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the retry driver tells about one stream's requests: counted, and noted in its health.
pub struct StreamAttempts<'a> {
    /// The stream's totals.
    pub counters: &'a DeliveryCounters,
    /// The stream's health.
    pub health: &'a DeliveryHealth,
}

impl AttemptLog for StreamAttempts<'_> {
    fn attempt(&self, failed: Option<&SinkError>) {
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        if failed.is_some() {
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
        }
        self.health.answered(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydrant_sinks::prelude::{Service, SinkErrorKind};

    fn refused(n: usize) -> SinkError {
        SinkError::new(
            SinkErrorKind::Unavailable,
            Service::ObjectStore,
            "s3://lake",
            format!("key-{n}"),
            "connection refused",
        )
    }

    #[test]
    fn health_follows_the_last_answer_and_keeps_the_newest_errors() {
        let counters = DeliveryCounters::default();
        let health = DeliveryHealth::default();
        assert_eq!(health.snapshot().state, "idle");
        let attempts = StreamAttempts {
            counters: &counters,
            health: &health,
        };
        for n in 0..RECENT_ERRORS + 5 {
            attempts.attempt(Some(&refused(n)));
        }
        let failing = health.snapshot();
        assert_eq!(failing.state, "failing");
        assert_eq!(failing.recent_errors.len(), RECENT_ERRORS);
        assert!(
            failing.recent_errors[0]
                .message
                .contains(&format!("key-{}", RECENT_ERRORS + 4)),
            "{:?}",
            failing.recent_errors[0]
        );
        attempts.attempt(None);
        health.delivered("out/key.gz".into(), 7);
        let ok = health.snapshot();
        assert_eq!(ok.state, "ok");
        assert_eq!(ok.last_delivered.unwrap().target, "out/key.gz");
        assert_eq!(
            counters.attempts.load(Ordering::Relaxed),
            RECENT_ERRORS as u64 + 6
        );
        assert_eq!(
            counters.failed_attempts.load(Ordering::Relaxed),
            RECENT_ERRORS as u64 + 5
        );
    }
}
