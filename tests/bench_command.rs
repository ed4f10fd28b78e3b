//! `hydrant bench` itself: both APIs, and a connection sweep that measures each count
//! against its own service and reports one line each.

mod common;

use std::process::Command;

use common::stdout_of;
use serde_json::Value;

/// Runs `hydrant bench` with `args` on a gzip stream into a local directory; one report per
/// line.
fn bench(args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        "server:\n  listen: 127.0.0.1:0\nstreams:\n  bench:\n    buffer: { size_mib: 1, interval_seconds: 1 }\n    compression: gzip\n    destination:\n      local: { path: out }\n",
    )
    .unwrap();
    let stdout = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_hydrant"))
            .args(["bench", "--config"])
            .arg(&config)
            .args([
                "--seconds",
                "2",
                "--records-per-call",
                "50",
                "--no-ceiling",
                "--json",
            ])
            .args(args),
        "hydrant bench",
    );
    String::from_utf8_lossy(&stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_connection_sweep_over_the_ndjson_endpoint_reports_each_count() {
    let reports = bench(&["--api", "ndjson", "--concurrency", "1,3"]);
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, connections) in reports.iter().zip([1, 3]) {
        assert_eq!(report["api"], "ndjson", "{report}");
        assert_eq!(report["concurrency"], connections, "{report}");
        assert!(report["accepted_records"].as_u64() > Some(0), "{report}");
        assert_eq!(report["refused_records"], 0, "{report}");
        assert!(report["p99_call_ms"].as_f64() > Some(0.0), "{report}");
        assert!(
            report["end_to_end_seconds"].as_f64() > Some(0.0),
            "{report}"
        );
    }
}

#[test]
fn the_firehose_api_is_the_default() {
    let reports = bench(&[]);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["api"], "firehose");
    assert_eq!(reports[0]["concurrency"], 16);
    assert!(reports[0]["accepted_records"].as_u64() > Some(0));
}
