//! The console's last hour: every stream sampled at a fixed resolution (rates in and out,
//! backlog, data freshness), kept in memory in a ring per stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::pipeline::Pipeline;

/// How far back the plots reach.
const KEPT: Duration = Duration::from_secs(3600);

/// One stream at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// Records accepted per second since the sample before.
    pub rate_in: f64,
    /// Records delivered per second since the sample before.
    pub rate_out: f64,
    /// Records accepted and not yet delivered.
    pub backlog: u64,
    /// Age of the oldest undelivered record, in seconds.
    pub freshness: f64,
}

#[derive(Debug, Default)]
struct StreamSeries {
    samples: VecDeque<Sample>,
    /// Totals at the sample before: accepted, delivered, when.
    last: Option<(u64, u64, Instant)>,
}

/// Every stream's samples.
#[derive(Debug)]
pub struct History {
    resolution: Duration,
    capacity: usize,
    streams: Mutex<HashMap<String, StreamSeries>>,
}

impl History {
    /// An empty history sampled every `resolution`.
    pub fn new(resolution: Duration) -> Self {
        let capacity = (KEPT.as_secs() / resolution.as_secs().max(1)).max(1) as usize;
        Self {
            resolution,
            capacity,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Time between samples.
    pub fn resolution(&self) -> Duration {
        self.resolution
    }

    /// Takes one sample of every stream of `pipeline`.
    pub fn sample(&self, pipeline: &Pipeline) {
        let now = Instant::now();
        let at_ms = Utc::now().timestamp_millis();
        let mut streams = self.lock();
        for stream in pipeline.streams() {
            let accepted = stream.counters.accepted.load(Ordering::Relaxed);
            let delivered = stream.counters.records.load(Ordering::Relaxed);
            let series = streams.entry(stream.name.clone()).or_default();
            let (rate_in, rate_out) = match series.last {
                Some((was_accepted, was_delivered, then)) => {
                    let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
                    (
                        accepted.saturating_sub(was_accepted) as f64 / seconds,
                        delivered.saturating_sub(was_delivered) as f64 / seconds,
                    )
                }
                None => (0.0, 0.0),
            };
            series.last = Some((accepted, delivered, now));
            if series.samples.len() == self.capacity {
                series.samples.pop_front();
            }
            series.samples.push_back(Sample {
                at_ms,
                rate_in,
                rate_out,
                backlog: stream.undelivered(),
                freshness: stream.data_freshness_seconds(),
            });
        }
    }

    /// The samples of `stream`, oldest first.
    pub fn series(&self, stream: &str) -> Vec<Sample> {
        self.lock()
            .get(stream)
            .map(|series| series.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamSeries>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Samples `pipeline` into `history` at its resolution, for as long as the service runs.
pub async fn run_sampler(history: Arc<History>, pipeline: Arc<Pipeline>) {
    let mut ticks = tokio::time::interval(history.resolution());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        history.sample(&pipeline);
    }
}
