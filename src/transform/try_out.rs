//! `hydrant transform test`: runs a transform module over a sample file, one record per line,
//! exactly as a stream would, and prints each outcome — the inner loop of writing one.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{ProcessorSettings, Verdict, WasmProcessor};
use hydrant_sinks::prelude::ChunkRecord;

/// Options of `hydrant transform test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The component (`.wasm`).
    #[arg(long)]
    pub module: PathBuf,
    /// Sample records, one per line.
    #[arg(long)]
    pub input: PathBuf,
    /// The processor's `config`, as JSON.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Longest one call may run.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Most memory the instance may use.
    #[arg(long, default_value_t = 64)]
    pub max_memory_mib: usize,
}

/// Runs the module over the input and prints one JSON line per record.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(&args.config).context("--config is not JSON")?;
    let processor = WasmProcessor::load(
        "transform-test",
        ProcessorSettings {
            module: args.module.clone(),
            config: args.config.clone(),
            timeout: Duration::from_millis(args.timeout_ms.max(1)),
            max_memory_bytes: args.max_memory_mib.max(1) * 1024 * 1024,
            retries: 0,
        },
    )?;
    let text = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let mut data = Vec::new();
    let mut records = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        data.extend_from_slice(line);
        records.push(ChunkRecord {
            seq: records.len() as u64,
            arrival_ms: chrono::Utc::now().timestamp_millis(),
            end: data.len(),
        });
    }
    let verdicts = processor.process(&data, &records);
    let mut counts = [0usize; 3];
    let mut out = std::io::stdout().lock();
    for (id, verdict) in verdicts.into_iter().enumerate() {
        let line = match verdict {
            Verdict::Ok(bytes, keys) => {
                counts[0] += 1;
                let mut line = json!({ "recordId": id.to_string(), "result": "Ok" });
                match String::from_utf8(bytes) {
                    Ok(text) => line["data"] = json!(text),
                    Err(bytes) => {
                        line["dataBase64"] = json!(
                            base64::engine::general_purpose::STANDARD.encode(bytes.as_bytes())
                        )
                    }
                }
                if !keys.is_empty() {
                    let keys: Map<String, Value> =
                        keys.into_iter().map(|(k, v)| (k, json!(v))).collect();
                    line["partitionKeys"] = Value::Object(keys);
                }
                line
            }
            Verdict::Dropped => {
                counts[1] += 1;
                json!({ "recordId": id.to_string(), "result": "Dropped" })
            }
            Verdict::Failed(code, message) => {
                counts[2] += 1;
                json!({
                    "recordId": id.to_string(),
                    "result": "ProcessingFailed",
                    "errorCode": code,
                    "errorMessage": message,
                })
            }
        };
        writeln!(out, "{line}")?;
    }
    eprintln!(
        "{} records: {} ok, {} dropped, {} processing-failed",
        records.len(),
        counts[0],
        counts[1],
        counts[2]
    );
    Ok(())
}
