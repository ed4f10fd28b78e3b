//! Concurrent connections sending the corpus's bodies for a fixed time.

use std::time::{Duration, Instant};

use super::corpus::Corpus;

/// What the connections sent and how long each call took.
#[derive(Debug, Default)]
pub struct Sent {
    /// Calls made.
    pub calls: u64,
    /// Records the service acknowledged.
    pub accepted_records: u64,
    /// Bytes (before base64) of acknowledged records.
    pub accepted_bytes: u64,
    /// Records answered with an error (throttled).
    pub refused_records: u64,
    latencies: Vec<Duration>,
}

impl Sent {
    /// The `p`th percentile of call latency.
    pub fn latency_percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index.min(sorted.len() - 1)]
    }

    fn merge(&mut self, other: Sent) {
        self.calls += other.calls;
        self.accepted_records += other.accepted_records;
        self.accepted_bytes += other.accepted_bytes;
        self.refused_records += other.refused_records;
        self.latencies.extend(other.latencies);
    }
}

/// Which of the service's APIs the load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Firehose's `PutRecordBatch` (base64 records in AWS JSON).
    Firehose,
    /// `POST /streams/{stream}/records` with NDJSON bodies.
    Ndjson,
}

/// Sends bodies to `stream` through `api` from `concurrency` connections until `duration`
/// has passed.
pub async fn drive(
    client: &reqwest::Client,
    base_url: &str,
    (api, stream): (Api, &str),
    corpus: &Corpus,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Sent> {
    let deadline = Instant::now() + duration;
    let url = match api {
        Api::Firehose => format!("{base_url}/"),
        Api::Ndjson => format!("{base_url}/streams/{stream}/records"),
    };
    let connections = (0..concurrency).map(|connection| {
        let url = url.clone();
        async move {
            let mut sent = Sent::default();
            let mut next = connection * 7;
            while Instant::now() < deadline {
                let body = &corpus.bodies[next % corpus.bodies.len()];
                next += 1;
                let started = Instant::now();
                let request = match api {
                    Api::Firehose => client
                        .post(&url)
                        .header("content-type", "application/x-amz-json-1.1")
                        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                        .body(body.json.clone()),
                    Api::Ndjson => client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.ndjson.clone()),
                };
                let response = request.send().await?;
                let status = response.status();
                let answer = response.bytes().await?;
                sent.latencies.push(started.elapsed());
                sent.calls += 1;
                match api {
                    Api::Firehose => {
                        anyhow::ensure!(
                            status.is_success(),
                            "PutRecordBatch answered {status}: {}",
                            String::from_utf8_lossy(&answer)
                        );
                        count_accepted(&answer, body, &mut sent)?;
                    }
                    // 503 takes the first `accepted` lines: the rest were throttled.
                    Api::Ndjson => {
                        anyhow::ensure!(
                            status.is_success() || status.as_u16() == 503,
                            "the NDJSON endpoint answered {status}: {}",
                            String::from_utf8_lossy(&answer)
                        );
                        count_accepted_lines(&answer, body, &mut sent)?;
                    }
                }
            }
            anyhow::Ok(sent)
        }
    });
    let mut total = Sent::default();
    for result in futures_util::future::join_all(connections).await {
        total.merge(result?);
    }
    Ok(total)
}

/// Counts an NDJSON answer, `{"accepted": N}`: the first N records were taken.
fn count_accepted_lines(
    answer: &[u8],
    body: &super::corpus::Body,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    let parsed: serde_json::Value = serde_json::from_slice(answer)?;
    let accepted = parsed["accepted"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("answer without accepted: {parsed}"))?
        as usize;
    let sizes = &body.record_sizes;
    let accepted = accepted.min(sizes.len());
    sent.accepted_records += accepted as u64;
    sent.accepted_bytes += sizes[..accepted].iter().sum::<usize>() as u64;
    sent.refused_records += (sizes.len() - accepted) as u64;
    Ok(())
}

fn count_accepted(
    answer: &[u8],
    body: &super::corpus::Body,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    if answer.starts_with(br#"{"FailedPutCount":0,"#) {
        sent.accepted_records += body.record_sizes.len() as u64;
        sent.accepted_bytes += body.record_sizes.iter().sum::<usize>() as u64;
        return Ok(());
    }
    let parsed: serde_json::Value = serde_json::from_slice(answer)?;
    let responses = parsed["RequestResponses"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("answer without RequestResponses"))?;
    for (response, size) in responses.iter().zip(&body.record_sizes) {
        if response.get("RecordId").is_some() {
            sent.accepted_records += 1;
            sent.accepted_bytes += *size as u64;
        } else {
            sent.refused_records += 1;
        }
    }
    Ok(())
}
