//! Realistic JSON records (web and application events) and ready-made request bodies, built
//! before the clock starts so the generator spends its CPU on sending, not encoding.

use std::io::Write as _;
use std::time::Instant;

use base64::Engine as _;

/// Distinct request bodies cycled through during a run; enough that compressors see no
/// repetition within their window.
const DISTINCT_BODIES: usize = 48;

const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/users/{id}/profile",
    "/checkout",
    "/search",
    "/static/app.js",
    "/api/v2/cart/items",
    "/login",
    "/api/v1/inventory/{id}",
    "/healthz",
    "/api/v1/payments/{id}/capture",
    "/products/{id}",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
];
const SERVICES: &[&str] = &[
    "checkout", "catalog", "identity", "payments", "search", "gateway",
];
const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "ap-southeast-2", "eu-central-1"];
const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"];
const WORDS: &[&str] = &[
    "cache", "miss", "retry", "upstream", "timeout", "order", "accepted", "declined", "user",
    "session", "renewed", "token", "expired", "queue", "depth", "latency", "budget", "exceeded",
];

/// The records and request bodies of one run.
pub struct Corpus {
    /// Ready `PutRecordBatch` bodies.
    pub bodies: Vec<Body>,
}

/// One request body and what it carries.
pub struct Body {
    /// The JSON request.
    pub json: bytes::Bytes,
    /// The same records as an NDJSON body (`POST /streams/{stream}/records`).
    pub ndjson: bytes::Bytes,
    /// Each record's size before base64, in order.
    pub record_sizes: Vec<usize>,
    /// The records themselves (for the ceiling measurement).
    pub records: Vec<Vec<u8>>,
}

impl Corpus {
    /// Builds the bodies for `stream`, each of `per_call` records of about `record_bytes`.
    pub fn generate(stream: &str, per_call: usize, record_bytes: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(0x0068_7964_7261_6e74);
        let bodies = (0..DISTINCT_BODIES)
            .map(|b| {
                let records: Vec<Vec<u8>> = (0..per_call)
                    .map(|i| event(&mut rng, (b * per_call + i) as u64, record_bytes))
                    .collect();
                let mut json = Vec::with_capacity(per_call * record_bytes * 4 / 3 + 1024);
                let _ = write!(json, r#"{{"DeliveryStreamName":"{stream}","Records":["#);
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        json.push(b',');
                    }
                    json.extend_from_slice(br#"{"Data":""#);
                    let mut encoded = String::new();
                    base64::engine::general_purpose::STANDARD.encode_string(record, &mut encoded);
                    json.extend_from_slice(encoded.as_bytes());
                    json.extend_from_slice(br#""}"#);
                }
                json.extend_from_slice(b"]}");
                let mut ndjson = Vec::with_capacity(per_call * (record_bytes + 1));
                for record in &records {
                    ndjson.extend_from_slice(record);
                    ndjson.push(b'\n');
                }
                Body {
                    json: json.into(),
                    ndjson: ndjson.into(),
                    record_sizes: records.iter().map(Vec::len).collect(),
                    records,
                }
            })
            .collect();
        Self { bodies }
    }

    /// Mean record size in bytes.
    pub fn mean_record_bytes(&self) -> usize {
        let (total, count) = self.bodies.iter().fold((0, 0), |(t, c), b| {
            (
                t + b.record_sizes.iter().sum::<usize>(),
                c + b.record_sizes.len(),
            )
        });
        total / count.max(1)
    }

    /// Every record, newline-delimited, as the service frames them.
    pub fn framed_records(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for body in &self.bodies {
            for record in &body.records {
                out.extend_from_slice(record);
                out.push(b'\n');
            }
        }
        out
    }
}

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// One application event of about `target` bytes.
fn event(rng: &mut fastrand::Rng, n: u64, target: usize) -> Vec<u8> {
    let ts = 1_764_000_000_000u64 + n * 7 + rng.u64(0..5);
    let path = pick(rng, PATHS).replace("{id}", &rng.u32(1..2_000_000).to_string());
    let mut record = format!(
        r#"{{"ts":{ts},"level":"{}","service":"{}","region":"{}","host":"ip-10-{}-{}-{}","request_id":"{:016x}{:016x}","method":"{}","path":"{path}","status":{},"latency_ms":{:.3},"bytes":{},"user_id":{},"session":"{:08x}","user_agent":"{}","message":""#,
        pick(rng, LEVELS),
        pick(rng, SERVICES),
        pick(rng, REGIONS),
        rng.u8(0..=255),
        rng.u8(0..=255),
        rng.u8(1..=254),
        rng.u64(..),
        rng.u64(..),
        if rng.u8(0..4) == 0 { "POST" } else { "GET" },
        [200, 200, 200, 201, 204, 301, 400, 404, 500, 503][rng.usize(0..10)],
        rng.f64() * 250.0,
        rng.u32(100..90_000),
        rng.u32(1..5_000_000),
        rng.u32(..),
        pick(rng, AGENTS),
    );
    let fixed = record.len();
    while record.len() + 3 < target {
        record.push_str(pick(rng, WORDS));
        record.push(' ');
        if rng.u8(0..6) == 0 {
            record.push_str(&rng.u32(..100_000).to_string());
            record.push(' ');
        }
    }
    record.truncate(target.saturating_sub(2).max(fixed));
    record.push_str("\"}");
    record.into_bytes()
}

/// MiB/s at which `round` gets through `bytes` of input, timed over at least two rounds and
/// two seconds; the first error ends the measurement.
fn try_rate_mib_s<E>(bytes: usize, mut round: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 2 || started.elapsed().as_secs_f64() < 2.0 {
        round()?;
        rounds += 1;
    }
    Ok((bytes * rounds) as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

/// [`try_rate_mib_s`] for a round that cannot fail.
fn rate_mib_s(bytes: usize, mut round: impl FnMut()) -> f64 {
    try_rate_mib_s(bytes, || {
        round();
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {})
}

/// MiB/s of `data` that flate2's gzip at `level` compresses on one core.
pub fn gzip_ceiling_mib_s(data: &[u8], level: u32) -> f64 {
    rate_mib_s(data.len(), || {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(data.len() / 4),
            flate2::Compression::new(level),
        );
        encoder.write_all(data).expect("in-memory write");
        std::hint::black_box(encoder.finish().expect("in-memory write"));
    })
}

/// MiB/s at which zstd at `level` compresses `data` on one core, in 4 MiB chunks (one frame
/// each, as the service compresses a stream's chunks).
pub fn zstd_ceiling_mib_s(data: &[u8], level: i32) -> f64 {
    rate_mib_s(data.len(), || {
        for chunk in data.chunks(4 << 20) {
            std::hint::black_box(
                zstd::bulk::compress(chunk, level).expect("in-memory compression"),
            );
        }
    })
}

/// MiB/s of newline-delimited JSON `data` that arrow-json decodes and ArrowWriter writes
/// as Parquet on one core, with `encoder`'s schema and writer settings.
pub fn parquet_ceiling_mib_s(
    data: &[u8],
    encoder: &hydrant_sinks::object::parquet::ParquetEncoder,
) -> anyhow::Result<f64> {
    let schema = encoder
        .schema()
        .ok_or_else(|| anyhow::anyhow!("the Parquet ceiling needs a declared schema"))?;
    try_rate_mib_s(data.len(), || -> anyhow::Result<()> {
        let reader = arrow_json::ReaderBuilder::new(std::sync::Arc::clone(&schema))
            .with_batch_size(8192)
            .build(data)?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            Vec::with_capacity(data.len() / 4),
            std::sync::Arc::clone(&schema),
            Some(encoder.writer_properties().clone()),
        )?;
        for batch in reader {
            writer.write(&batch?)?;
        }
        std::hint::black_box(writer.into_inner()?);
        Ok(())
    })
}

/// MiB/s of records (`data`, newline-delimited) that a destination behind the seam encodes
/// and assembles into its requests (compressing them when it does) on one core, in chunks
/// the size a stream's buffer hands to its CPU pool.
pub fn seam_ceiling_mib_s(
    data: &[u8],
    destination: &std::sync::Arc<dyn hydrant_sinks::prelude::AnyDestination>,
) -> f64 {
    use hydrant_sinks::prelude::ChunkRecord;
    const CHUNK: usize = 1024 * 1024;
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut chunks: Vec<(Vec<u8>, Vec<ChunkRecord>)> = vec![Default::default()];
    for (seq, line) in lines.iter().enumerate() {
        let (bytes, records) = chunks.last_mut().expect("one chunk at least");
        bytes.extend_from_slice(line);
        records.push(ChunkRecord {
            seq: seq as u64,
            arrival_ms: 1_764_000_000_000,
            end: bytes.len(),
        });
        if bytes.len() >= CHUNK {
            chunks.push(Default::default());
        }
    }
    // Destinations build requests in parallel on the CPU pool: the ceiling is one core.
    let one_core = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    one_core.install(|| seam_rounds(&chunks, lines.len(), data.len(), destination))
}

fn seam_rounds(
    chunks: &[(Vec<u8>, Vec<hydrant_sinks::prelude::ChunkRecord>)],
    records: usize,
    bytes: usize,
    destination: &std::sync::Arc<dyn hydrant_sinks::prelude::AnyDestination>,
) -> f64 {
    use hydrant_sinks::prelude::{BatchId, Chunk};
    rate_mib_s(bytes, || {
        let pieces = chunks
            .iter()
            .filter(|(_, records)| !records.is_empty())
            .map(|(data, records)| {
                destination
                    .encode_any(Chunk {
                        data,
                        records,
                        partition: None,
                    })
                    .piece
            })
            .collect();
        let id = BatchId {
            run: 1,
            first_seq: 0,
            last_seq: records as u64,
            oldest_ms: 1_764_000_000_000,
            partition: None,
        };
        let assembled = std::sync::Arc::clone(destination).assemble_any(id, pieces);
        std::hint::black_box(assembled.is_ok());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_of_about_the_asked_size() {
        let corpus = Corpus::generate("s", 20, 1024);
        for body in &corpus.bodies {
            let request: serde_json::Value = serde_json::from_slice(&body.json).unwrap();
            assert_eq!(request["Records"].as_array().unwrap().len(), 20);
            for record in &body.records {
                let event: serde_json::Value = serde_json::from_slice(record).unwrap();
                assert!(event["message"].is_string());
                assert!((1000..=1024).contains(&record.len()), "{}", record.len());
            }
        }
        let distinct: std::collections::HashSet<_> = corpus
            .bodies
            .iter()
            .flat_map(|b| b.records.iter())
            .collect();
        assert_eq!(distinct.len(), 20 * DISTINCT_BODIES);
    }
}
