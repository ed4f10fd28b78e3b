//! `processors:` of a stream: WebAssembly transforms run over records before they are
//! encoded (Firehose's Lambda data transformation).

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ConfigProblem;
use super::validate::at;

/// One processor.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessorConfig {
    /// A WebAssembly component implementing `hydrant:transform/transformer`.
    Wasm(WasmProcessorConfig),
}

/// A `wasm` processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmProcessorConfig {
    /// The component (`.wasm`), relative to the configuration file.
    pub module: Spanned<String>,
    /// Handed to the component's `configure` as JSON. Default `{}`.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Longest one call may run, in milliseconds. 1–300000, default 3000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    /// Most memory one instance may use, in MiB. 1–4096, default 64.
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: Spanned<u32>,
    /// Records handed to the component per call, in MiB. 0.2–3, default 1.
    #[serde(default = "default_buffer_size_mib")]
    pub buffer_size_mib: Spanned<f64>,
    /// Accepted for Firehose compatibility (0–900, default 60): a call's batch is also cut
    /// when the stream's buffer flushes, so `buffer.interval_seconds` bounds the wait.
    #[serde(default = "default_buffer_interval_seconds")]
    pub buffer_interval_seconds: Spanned<u32>,
    /// Further calls of a batch that failed as a whole. 0–10, default 3.
    #[serde(default = "default_retries")]
    pub retries: Spanned<u32>,
}

/// Problems with a stream's processors.
pub(super) fn validate(
    name: &str,
    processors: &[ProcessorConfig],
    problems: &mut Vec<ConfigProblem>,
) {
    for ProcessorConfig::Wasm(wasm) in processors {
        if wasm.module.value.trim().is_empty() {
            problems.push(at(
                &wasm.module,
                format!("stream `{name}`: `module` is empty"),
            ));
        }
        if !(1..=300_000).contains(&wasm.timeout_ms.value) {
            problems.push(at(
                &wasm.timeout_ms,
                format!(
                    "stream `{name}`: `timeout_ms` must be between 1 and 300000, got {}",
                    wasm.timeout_ms.value
                ),
            ));
        }
        if !(1..=4096).contains(&wasm.max_memory_mib.value) {
            problems.push(at(
                &wasm.max_memory_mib,
                format!(
                    "stream `{name}`: `max_memory_mib` must be between 1 and 4096, got {}",
                    wasm.max_memory_mib.value
                ),
            ));
        }
        if !(0.2..=3.0).contains(&wasm.buffer_size_mib.value) {
            problems.push(at(
                &wasm.buffer_size_mib,
                format!(
                    "stream `{name}`: `buffer_size_mib` must be between 0.2 and 3, got {}",
                    wasm.buffer_size_mib.value
                ),
            ));
        }
        if wasm.buffer_interval_seconds.value > 900 {
            problems.push(at(
                &wasm.buffer_interval_seconds,
                format!(
                    "stream `{name}`: `buffer_interval_seconds` must be between 0 and 900, got {}",
                    wasm.buffer_interval_seconds.value
                ),
            ));
        }
        if wasm.retries.value > 10 {
            problems.push(at(
                &wasm.retries,
                format!(
                    "stream `{name}`: `retries` must be between 0 and 10, got {}",
                    wasm.retries.value
                ),
            ));
        }
    }
}

fn default_timeout_ms() -> Spanned<u64> {
    super::spanned(3000)
}

fn default_max_memory_mib() -> Spanned<u32> {
    super::spanned(64)
}

fn default_buffer_size_mib() -> Spanned<f64> {
    super::spanned(1.0)
}

fn default_buffer_interval_seconds() -> Spanned<u32> {
    super::spanned(60)
}

fn default_retries() -> Spanned<u32> {
    super::spanned(3)
}
