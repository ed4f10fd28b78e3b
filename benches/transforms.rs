//! The cost of calling a WebAssembly transform: a batch of one small record (the fixed
//! per-call cost: lowering, the call, lifting, the contract check) and a 1 MiB batch of
//! 1 KiB records, through the no-op test guest (`scripts/build-transforms` builds it;
//! `HYDRANT_BENCH_NOOP_MODULE` names it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hydrant::transform::{ProcessorSettings, WasmProcessor};
use hydrant_sinks::prelude::ChunkRecord;

fn chunk(records: usize, size: usize) -> (Vec<u8>, Vec<ChunkRecord>) {
    let mut data = Vec::with_capacity(records * size);
    let mut spans = Vec::with_capacity(records);
    for seq in 0..records {
        let mut record = format!("{{\"n\":{seq},\"pad\":\"").into_bytes();
        record.resize(size - 2, b'x');
        record.extend_from_slice(b"\"}");
        data.extend_from_slice(&record);
        spans.push(ChunkRecord {
            seq: seq as u64,
            arrival_ms: 0,
            end: data.len(),
        });
    }
    (data, spans)
}

/// Mean time of one `process` call over at least a second.
fn time_calls(processor: &WasmProcessor, data: &[u8], records: &[ChunkRecord]) -> Duration {
    processor.process(data, records);
    let started = Instant::now();
    let mut calls = 0u32;
    while calls < 10 || started.elapsed() < Duration::from_secs(1) {
        std::hint::black_box(processor.process(data, records));
        calls += 1;
    }
    started.elapsed() / calls
}

fn main() {
    let module = std::env::var_os("HYDRANT_BENCH_NOOP_MODULE")
        .map(PathBuf::from)
        .expect("set HYDRANT_BENCH_NOOP_MODULE (scripts/bench-transform does)");
    let processor = WasmProcessor::load(
        "bench",
        ProcessorSettings {
            module,
            config: r#"{"behave":"noop"}"#.into(),
            timeout: Duration::from_secs(10),
            max_memory_bytes: 256 << 20,
            retries: 0,
        },
    )
    .expect("load the no-op module");
    let (data, records) = chunk(1, 100);
    let fixed = time_calls(&processor, &data, &records);
    println!(
        "one 100-byte record per call: {:.1} µs per call (the fixed cost)",
        fixed.as_secs_f64() * 1e6
    );
    let (data, records) = chunk(1024, 1024);
    let batch = time_calls(&processor, &data, &records);
    println!(
        "1 MiB batch of 1 KiB records: {:.2} ms per call, {:.0} MiB/s, {:.0} records/s on one core",
        batch.as_secs_f64() * 1e3,
        1.0 / batch.as_secs_f64(),
        1024.0 / batch.as_secs_f64()
    );
}
