//! The measured service: a child `hydrant run` (so its memory is its own) or a running one.

use std::io::{BufRead as _, BufReader, IsTerminal as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The service under load.
pub struct Service {
    base_url: String,
    child: Option<Child>,
    pid: Option<u32>,
}

/// A stream's totals as `GET /streams/{stream}/stats` reports them.
#[derive(Debug, Clone, Copy)]
pub struct StreamStats {
    /// Records accepted so far.
    pub accepted: u64,
    /// Records delivered so far.
    pub delivered: u64,
    /// Records accepted and not yet delivered.
    pub undelivered: u64,
    /// Age of the oldest undelivered record, in seconds.
    pub freshness_seconds: f64,
}

impl StreamStats {
    /// The totals in a stats body. A service from before `undelivered_records` and
    /// `data_freshness_seconds` existed (a baseline of `scripts/bench-against`) still reports
    /// the two counters the load generator needs; the rest is derived or zero.
    fn from_json(stats: &serde_json::Value) -> anyhow::Result<Self> {
        let field = |name: &str| {
            stats[name]
                .as_u64()
                .with_context(|| format!("the stats lack {name}: {stats}"))
        };
        let accepted = field("accepted_records")?;
        let delivered = field("delivered_records")?;
        Ok(Self {
            accepted,
            delivered,
            undelivered: stats["undelivered_records"]
                .as_u64()
                .unwrap_or(accepted.saturating_sub(delivered)),
            freshness_seconds: stats["data_freshness_seconds"].as_f64().unwrap_or(0.0),
        })
    }
}

impl Service {
    /// Starts `hydrant run --config <config>` and waits for its address.
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the hydrant executable")?;
        let mut child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "HYDRANT_LOG",
                std::env::var("HYDRANT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .context("starting the service")?;
        let stdout = child.stdout.take().context("service stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let base_url = line
            .trim()
            .strip_prefix("hydrant listening on ")
            .with_context(|| format!("the service did not start (it printed {line:?})"))?
            .to_string();
        let pid = Some(child.id());
        Ok(Self {
            base_url,
            child: Some(child),
            pid,
        })
    }

    /// A service someone else started.
    pub fn external(base_url: &str, pid: Option<u32>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            child: None,
            pid,
        }
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The stream's totals now.
    pub async fn stats(
        &self,
        client: &reqwest::Client,
        stream: &str,
    ) -> anyhow::Result<StreamStats> {
        let url = format!("{}/streams/{stream}/stats", self.base_url);
        let stats: serde_json::Value = client.get(&url).send().await?.json().await?;
        StreamStats::from_json(&stats).with_context(|| format!("reading {url}"))
    }

    /// Waits until `target` records of `stream` are delivered; returns when that was seen.
    pub async fn wait_delivered(
        &self,
        client: &reqwest::Client,
        stream: &str,
        target: u64,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats(client, stream).await?;
            if stats.delivered >= target {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {target} records delivered after {timeout:?}",
                stats.delivered
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Samples the stream's delivered-records counter every 250 ms for `duration`.
    pub async fn sample_delivered(
        &self,
        client: &reqwest::Client,
        stream: &str,
        duration: Duration,
    ) -> anyhow::Result<Vec<(Duration, u64)>> {
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut progress = std::io::stderr()
            .is_terminal()
            .then(|| ProgressLine::new(duration));
        while started.elapsed() < duration {
            let stats = self.stats(client, stream).await?;
            samples.push((started.elapsed(), stats.delivered));
            if let Some(progress) = &mut progress {
                progress.show(started.elapsed(), &stats);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if progress.is_some() {
            eprintln!();
        }
        Ok(samples)
    }

    /// The service's peak resident memory (`VmHWM`), on Linux.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Stops a service this run started (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Records per second delivered between the first sample after a quarter of `duration` and
/// the last sample.
pub fn steady_rate(samples: &[(Duration, u64)], duration: Duration) -> Option<f64> {
    let first = samples.iter().find(|(at, _)| *at >= duration / 4)?;
    let last = samples.last()?;
    let seconds = (last.0 - first.0).as_secs_f64();
    (seconds > 0.0).then(|| (last.1 - first.1) as f64 / seconds)
}

/// The live line `hydrant bench` keeps rewriting on a terminal: rates over the last second,
/// backlog and freshness.
struct ProgressLine {
    duration: Duration,
    /// Elapsed time and totals at the last line shown.
    last: Option<(Duration, u64, u64)>,
}

impl ProgressLine {
    fn new(duration: Duration) -> Self {
        Self {
            duration,
            last: None,
        }
    }

    /// Rewrites the line, at most once a second.
    fn show(&mut self, elapsed: Duration, stats: &StreamStats) {
        if let Some(line) = self.next_line(elapsed, stats) {
            eprint!("\r\x1b[2K{line}");
        }
    }

    /// The line for `stats` at `elapsed`, unless one was shown less than a second ago.
    fn next_line(&mut self, elapsed: Duration, stats: &StreamStats) -> Option<String> {
        let (rate_in, rate_out) = match self.last {
            Some((then, ..)) if elapsed.saturating_sub(then) < Duration::from_secs(1) => {
                return None;
            }
            Some((then, accepted, delivered)) => {
                let seconds = (elapsed - then).as_secs_f64();
                (
                    stats.accepted.saturating_sub(accepted) as f64 / seconds,
                    stats.delivered.saturating_sub(delivered) as f64 / seconds,
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((elapsed, stats.accepted, stats.delivered));
        Some(format!(
            "{:>3}/{} s  in {:>9.0} rec/s  out {:>9.0} rec/s  backlog {:>9}  freshness {:>5.1} s",
            elapsed.as_secs(),
            self.duration.as_secs(),
            rate_in,
            rate_out,
            stats.undelivered,
            stats.freshness_seconds
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(accepted: u64, delivered: u64) -> StreamStats {
        StreamStats {
            accepted,
            delivered,
            undelivered: accepted - delivered,
            freshness_seconds: 1.25,
        }
    }

    #[test]
    fn the_progress_line_shows_rates_over_the_last_second_at_most_once_a_second() {
        let mut progress = ProgressLine::new(Duration::from_secs(30));
        let first = progress
            .next_line(Duration::from_millis(250), &stats(1_000, 0))
            .unwrap();
        assert!(first.starts_with("  0/30 s  in         0 rec/s"), "{first}");
        assert_eq!(
            progress.next_line(Duration::from_millis(750), &stats(1_500, 100)),
            None
        );
        let second = progress
            .next_line(Duration::from_millis(2250), &stats(5_000, 2_000))
            .unwrap();
        assert_eq!(
            second,
            "  2/30 s  in      2000 rec/s  out      1000 rec/s  backlog      3000  freshness   1.2 s"
        );
    }

    #[test]
    fn stats_are_read_from_current_and_older_services() {
        let current = serde_json::json!({
            "accepted_records": 900, "delivered_records": 400,
            "undelivered_records": 450, "data_freshness_seconds": 2.5
        });
        let read = StreamStats::from_json(&current).unwrap();
        assert_eq!(
            (read.accepted, read.delivered, read.undelivered),
            (900, 400, 450)
        );
        assert_eq!(read.freshness_seconds, 2.5);

        let older = serde_json::json!({"accepted_records": 900, "delivered_records": 400});
        let read = StreamStats::from_json(&older).unwrap();
        assert_eq!(read.undelivered, 500);
        assert_eq!(read.freshness_seconds, 0.0);

        let broken = serde_json::json!({"accepted_records": 900});
        let error = StreamStats::from_json(&broken).unwrap_err().to_string();
        assert!(error.contains("lack delivered_records"), "{error}");
    }
}
