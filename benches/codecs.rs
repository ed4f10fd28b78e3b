//! Outer codec throughput: Hydrant's chunked codecs on the load generator's JSON records, on
//! one core and on every core, next to the command-line tools (`gzip -6`, `zstd -3`) on the
//! same bytes, in one run. `cargo bench --bench codecs`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hydrant::bench::corpus::Corpus;
use hydrant::compress::{Codec, GzipMembers};
use rayon::prelude::*;

const CHUNK: usize = 1 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// Runs `work` until at least two seconds have passed; returns MiB/s of `bytes` per run.
fn rate(bytes: usize, mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut runs = 0;
    while runs < 2 || started.elapsed() < Duration::from_secs(2) {
        work();
        runs += 1;
    }
    (bytes * runs) as f64 / MIB / started.elapsed().as_secs_f64()
}

fn compressed_size(codec: Codec, data: &[u8]) -> usize {
    let chunks = data
        .chunks(CHUNK)
        .map(|c| codec.compress_chunk(c.to_vec()))
        .collect();
    codec.assemble(chunks).iter().map(|b| b.len()).sum()
}

/// MiB/s of the command-line tool compressing `file` to /dev/null.
fn tool_rate(program: &str, args: &[&str], file: &std::path::Path, bytes: usize) -> Option<f64> {
    Command::new(program).arg("--version").output().ok()?;
    Some(rate(bytes, || {
        let status = Command::new(program)
            .args(args)
            .arg(file)
            .stdout(Stdio::null())
            .status()
            .expect("run the tool");
        assert!(status.success());
    }))
}

fn main() {
    let corpus = Corpus::generate("bench", 500, 1024);
    let data = corpus.framed_records();
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("records.ndjson");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(&data))
        .expect("write the corpus");
    println!(
        "{} MiB of ~1 KiB JSON records; {} cores",
        data.len() / (1 << 20),
        rayon::current_num_threads()
    );
    println!(
        "{:>8} {:>14} {:>16} {:>12} {:>12} {:>8}",
        "codec", "1 core MiB/s", "all cores MiB/s", "tool MiB/s", "1 core/tool", "ratio"
    );
    let cases = [
        (
            Codec::Gzip {
                level: 6,
                members: GzipMembers::PerChunk,
            },
            Some(("gzip", vec!["-6", "-c"])),
        ),
        (
            Codec::Gzip {
                level: 6,
                members: GzipMembers::One,
            },
            Some(("gzip", vec!["-6", "-c"])),
        ),
        (
            Codec::Zstd { level: 3 },
            Some(("zstd", vec!["-3", "-c", "-q"])),
        ),
        (Codec::Snappy, None),
    ];
    for (codec, tool) in cases {
        let one_core = rate(data.len(), || {
            for chunk in data.chunks(CHUNK) {
                std::hint::black_box(codec.compress_chunk(chunk.to_vec()));
            }
        });
        let all_cores = rate(data.len(), || {
            let chunks: Vec<_> = data
                .par_chunks(CHUNK)
                .map(|c| codec.compress_chunk(c.to_vec()))
                .collect();
            std::hint::black_box(codec.assemble(chunks));
        });
        let tool_mib_s =
            tool.and_then(|(program, args)| tool_rate(program, &args, &file, data.len()));
        let ratio = data.len() as f64 / compressed_size(codec, &data) as f64;
        let name = match codec {
            Codec::Gzip {
                members: GzipMembers::One,
                ..
            } => "GZIP-1",
            codec => codec.format_name(),
        };
        println!(
            "{:>8} {:>14.1} {:>16.1} {:>12} {:>12} {:>7.2}x",
            name,
            one_core,
            all_cores,
            tool_mib_s.map_or("-".into(), |r| format!("{r:.1}")),
            tool_mib_s.map_or("-".into(), |r| format!("{:.2}", one_core / r)),
            ratio
        );
    }
}
