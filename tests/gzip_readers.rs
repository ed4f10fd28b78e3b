//! gzip objects as outside readers see them. By default an object is a sequence of gzip
//! members, one per compressed chunk (RFC 1952 §2.2): GNU gzip, Python's gzip, Java's
//! GZIPInputStream, Node's zlib, DuckDB's read_json and pyarrow must each read every record
//! of it. With `gzip_members: single` an object is one member.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// ~3 MiB of JSON lines (`n` counts up), more than one compressed chunk.
fn records() -> Vec<Vec<u8>> {
    (0..6000u64)
        .map(|n| {
            let pad = format!("{n:x}").repeat(200);
            serde_json::to_vec(&json!({ "n": n, "pad": pad })).unwrap()
        })
        .collect()
}

/// Runs a stream with `extra` stream settings over `records`, and returns its one object.
async fn one_object(extra: &str, records: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf) {
    let streams = format!(
        "events:\n  format: ndjson\n  compression: gzip\n{extra}  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  destination:\n    local: {{ path: out, prefix: data/ }}\n"
    );
    let mut hydrant = Hydrant::start(&streams);
    for batch in records.chunks(500) {
        hydrant.put_all("events", batch).await;
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let dir = hydrant.kill();
    let files = files_under(&dir.path().join("out/data"));
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    (dir, file)
}

/// How many gzip members `body` holds (each decoded to its end in turn).
fn members(body: &[u8]) -> usize {
    let mut rest = body;
    let mut count = 0;
    while !rest.is_empty() {
        // The buffered decoder stops exactly at the end of its member.
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        let left = decoder.into_inner();
        assert!(left.len() < rest.len(), "a member that reads nothing");
        rest = left;
        count += 1;
    }
    count
}

fn run(program: &str, args: &[&str], file: &Path) -> Vec<u8> {
    stdout_of(
        Command::new(program).args(args).arg(file),
        &format!("{program} reading the object"),
    )
}

#[tokio::test]
async fn every_common_reader_reads_every_member_of_a_gzip_object() {
    let records = records();
    let expected: Vec<u8> = records
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    let (_dir, file) = one_object("", &records).await;
    let body = std::fs::read(&file).unwrap();
    assert!(members(&body) >= 2, "the object has several members");
    assert_eq!(gunzip(&body), expected);

    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    assert!(run("gzip", &["-dc"], &file) == expected, "gzip -d");
    let java = format!("{clients}/GzipRead.java");
    assert!(
        run("java", &[&java], &file) == expected,
        "Java GZIPInputStream"
    );
    let node = "process.stdout.write(require('zlib').gunzipSync(require('fs').readFileSync(process.argv[1])))";
    assert!(run("node", &["-e", node], &file) == expected, "Node zlib");

    let script = format!("{clients}/read_gzip_python.py");
    let python = servers().python.to_str().unwrap().to_string();
    let seen: Value = serde_json::from_slice(&run(&python, &[&script], &file)).unwrap();
    let sum: u64 = (0..records.len() as u64).sum();
    assert_eq!(
        seen["python_sha256"],
        Sha256::digest(&expected)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "Python gzip"
    );
    assert_eq!(seen["duckdb_rows"], records.len(), "DuckDB read_json");
    assert_eq!(seen["duckdb_sum"], sum, "DuckDB read_json");
    assert_eq!(seen["pyarrow_rows"], records.len(), "pyarrow");
    assert_eq!(seen["pyarrow_sum"], sum, "pyarrow");
}

#[tokio::test]
async fn gzip_members_single_makes_one_member() {
    let records = records();
    let (_dir, file) = one_object("  gzip_members: single\n", &records).await;
    let body = std::fs::read(&file).unwrap();
    assert_eq!(members(&body), 1);
    let lines = gunzip_single_member(&body);
    assert_eq!(lines.iter().filter(|b| **b == b'\n').count(), records.len());
}

#[test]
fn gzip_members_needs_gzip() {
    let (ok, output) = validate_config(
        "streams:\n  s:\n    gzip_members: single\n    destination: { local: { path: out } }\n",
    );
    assert!(!ok);
    assert!(
        output.contains("`gzip_members` needs `compression: gzip`"),
        "{output}"
    );
}
