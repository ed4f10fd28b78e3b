//! The delivery loop against a real spool and a local directory, with encoding faults
//! injected: a batch whose body cannot be built is built again, and when it never can be,
//! its records go to the error output; no acknowledged record is lost or written twice.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use hydrant_sinks::prelude::*;

use super::*;
use crate::buffer::{BufferSettings, IngestCapacity};
use crate::config::{Compression, SeamDestination};
use crate::cpu_pool::EncodeFaults;
use crate::spool::StreamSpool;
use crate::spool::{FsyncPolicy, SpoolSettings};
use hydrant_sinks::object::{KeyTemplate, ObjectDestination, ObjectFormat, RecordFramer};

pub(super) fn open_spool(dir: &Path) -> Arc<StreamSpool> {
    StreamSpool::open(SpoolSettings {
        dir: dir.join("spool"),
        fsync: FsyncPolicy::Always,
        max_bytes: 64 << 20,
        keys: None,
    })
    .unwrap()
}

/// A stream writing gzip NDJSON objects into `dir/out`, with `faults` in its encoders.
fn delivery_loop(dir: &Path, spool: &Arc<StreamSpool>, faults: Arc<EncodeFaults>) -> DeliveryLoop {
    let codec = crate::compress::codec_of(Compression::Gzip, None, Default::default());
    let sink: Arc<dyn ObjectSink> = Arc::new(ObjectStoreSink::local(&dir.join("out")).unwrap());
    let destination: Arc<dyn AnyDestination> = Arc::new(ObjectDestination::new(
        Arc::clone(&sink),
        ObjectFormat::Framed(RecordFramer::ndjson()),
        codec,
        ObjectKeyBuilder::new("faulty", KeyTemplate::parse("data/").unwrap(), ".gz"),
        true,
    ));
    let buffer = Arc::new(StreamBuffer::new(
        BufferSettings {
            size_limit: 1 << 20,
            interval: Duration::ZERO,
            destination: Arc::clone(&destination),
            processors: None,
            partitioner: None,
            chunk_limit: None,
            faults: Some(faults),
        },
        Arc::new(IngestCapacity::new(16 << 20)),
    ));
    buffer.resume(spool.start_seq(), spool.pending_sealed());
    DeliveryLoop {
        stream: "faulty".into(),
        buffer,
        sink,
        keys: ObjectKeyBuilder::new("faulty", KeyTemplate::parse("backup/").unwrap(), ""),
        error_keys: ObjectKeyBuilder::new(
            "faulty",
            KeyTemplate::parse_error_prefix("errors/!{firehose:error-output-type}/").unwrap(),
            "",
        ),
        retry_duration: Duration::from_secs(60),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        counters: Arc::new(DeliveryCounters::default()),
        health: Default::default(),
        spool: Some(DurableLog::Spool(Arc::clone(spool))),
        seam: SeamDestination {
            destination,
            concurrency: 1,
            backup_all: false,
            attempt_timeout: Duration::from_secs(60),
        },
        run: spool.incarnation(),
        partitions: None,
        stop: Default::default(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// How often each `id` appears in the delivered objects under `dir`.
fn delivered_ids(dir: &Path) -> HashMap<u64, usize> {
    let mut ids = HashMap::new();
    for file in files_under(dir) {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(file).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            *ids.entry(record["id"].as_u64().unwrap()).or_default() += 1;
        }
    }
    ids
}

/// The error records under `dir`: each record's `id` with its error code.
fn error_ids(dir: &Path) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for file in files_under(dir) {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let (id, code, message, _) = error_fields(line);
            out.push((id, code, message));
        }
    }
    out
}

/// An error record line's record `id`, code, message and attempts made.
pub(super) fn error_fields(line: &str) -> (u64, String, String, u64) {
    let error: serde_json::Value = serde_json::from_str(line).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(error["rawData"].as_str().unwrap())
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    (
        record["id"].as_u64().unwrap(),
        error["errorCode"].as_str().unwrap().to_string(),
        error["errorMessage"].as_str().unwrap().to_string(),
        error["attemptsMade"].as_u64().unwrap(),
    )
}

pub(super) async fn append(spool: &Arc<StreamSpool>, ids: std::ops::Range<u64>) {
    let records: Vec<Vec<u8>> = ids
        .map(|id| format!(r#"{{"id":{id},"pad":"{}"}}"#, "p".repeat(200)).into_bytes())
        .collect();
    let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let appended = spool.append(&slices, 1_700_000_000_000).await.unwrap();
    assert_eq!(appended.accepted, slices.len());
}

pub(super) async fn until(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_encoded_is_built_again_then_reported_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let faults = Arc::new(EncodeFaults::default());
    let delivery = delivery_loop(dir.path(), &spool, Arc::clone(&faults));
    let counters = Arc::clone(&delivery.counters);
    let feeder = tokio::spawn(crate::pipeline::feed_from_spool(
        "faulty".into(),
        Arc::clone(&spool),
        Arc::clone(&delivery.buffer),
    ));
    let delivering = tokio::spawn(delivery.run());

    // A transient failure: the first two builds panic, the third goes through.
    faults.fail_next(2);
    append(&spool, 0..100).await;
    until("the first records delivered", || {
        counters.records.load(Ordering::SeqCst) == 100
    })
    .await;
    assert_eq!(counters.error_output_records.load(Ordering::SeqCst), 0);

    // A lasting failure: every build panics, so the batch goes to the error output.
    faults.fail_next(u32::MAX);
    append(&spool, 100..200).await;
    until("the failed batch in the error output", || {
        counters.error_output_records.load(Ordering::SeqCst) == 100
    })
    .await;

    // Later batches are delivered as before.
    faults.fail_next(0);
    append(&spool, 200..300).await;
    until("the last records delivered", || {
        counters.records.load(Ordering::SeqCst) == 200
    })
    .await;
    let closing = Arc::clone(&spool);
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    feeder.await.unwrap();
    delivering.await.unwrap();

    let delivered = delivered_ids(&dir.path().join("out/data"));
    let errors = error_ids(&dir.path().join("out/errors/format-conversion-failed"));
    assert_eq!(errors.len(), 100);
    for (id, code, message) in &errors {
        assert!((100..200).contains(id), "record {id} in the error output");
        assert_eq!(code, ENCODE_FAILED);
        assert!(message.contains("injected encoding fault"), "{message}");
    }
    for id in 0..300u64 {
        let times = delivered.get(&id).copied().unwrap_or(0)
            + errors.iter().filter(|(e, _, _)| *e == id).count();
        assert_eq!(times, 1, "record {id}: delivered + reported");
    }
    assert_eq!(delivered.len() + errors.len(), 300);
    // The checkpoint passed every record: a restart has nothing left to deliver.
    drop(spool);
    let reopened = open_spool(dir.path());
    assert_eq!(reopened.start_seq(), 300);
    assert!(reopened.pending_sealed().is_empty());
    reopened.close();
}
