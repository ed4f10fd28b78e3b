//! Nothing acknowledged is lost: kill -9 at random moments, destination outages under load,
//! a full spool, and a full disk.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// Every id in the delivered objects under `prefix`, with how often it appears.
async fn delivered_ids(bucket: &Bucket, prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for key in bucket.keys(prefix).await {
        let body = gunzip(&bucket.get(&key).await.0);
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: Value =
                serde_json::from_slice(line).expect("a delivered line is one record");
            *counts
                .entry(value["id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

fn streams(bucket: &str, destination: &str) -> String {
    format!(
        "durable:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  compression: gzip\n  destination:\n{}",
        indent(
            &s3_destination_yaml(bucket, "d/", None).replace(&servers().s3_endpoint, destination),
            4
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_at_random_moments_exactly_once() {
    let bucket = new_bucket("kill");
    let streams = streams(&bucket, &servers().s3_endpoint);
    let KilledRun {
        mut hydrant,
        acked,
        attempted,
        kills,
    } = produce_through_kills(&streams, "durable", 6, 0x6b11).await;
    assert!(kills >= 5);
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    let status = hydrant.terminate();
    assert!(status.success(), "{}", hydrant.log());

    let delivered = delivered_ids(&Bucket::new(&bucket), "d/").await;
    check_exactly_once(&delivered, &acked, &attempted);
    let log = hydrant.log();
    assert!(log.contains("hydrant listening"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_spool_survives_kill_9_exactly_once_and_holds_no_record_text() {
    let bucket = new_bucket("sealed");
    let streams = streams(&bucket, &servers().s3_endpoint);
    // A fixed test key: 32 bytes in base64.
    let top = "spool:\n  encryption:\n    key: c3Bvb2wtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=\n";
    let KilledRun {
        hydrant,
        acked,
        attempted,
        kills,
    } = produce_through_kills_with(top, &streams, "durable", 4, 0x5ea1).await;
    assert!(kills >= 3);
    assert!(
        acked.len() > 500,
        "only {} records acknowledged",
        acked.len()
    );
    // Killed once more with records still spooled: nothing in the spool reads as a record.
    let dir = hydrant.kill();
    let spool = dir.path().join("hydrant-spool/durable");
    let mut segments = 0;
    for file in files_under(&spool) {
        let bytes = std::fs::read(&file).unwrap();
        segments += usize::from(file.extension().is_some_and(|e| e == "seg"));
        assert!(
            !bytes.windows(6).any(|w| w == b"\"id\":\"")
                && !bytes.windows(16).any(|w| w == b"pppppppppppppppp"),
            "record text in {}",
            file.display()
        );
    }
    assert!(segments > 0);
    let mut hydrant = Hydrant::start_in(dir, top, &streams, &[]);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let delivered = delivered_ids(&Bucket::new(&bucket), "d/").await;
    check_exactly_once(&delivered, &acked, &attempted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_flush_interval_loses_and_duplicates_nothing() {
    let bucket = new_bucket("outage-load");
    let port = free_port();
    let mut forwarder = forward(port, &servers().s3_endpoint).await;
    let streams = streams(&bucket, &format!("http://127.0.0.1:{port}"));
    let mut hydrant = Hydrant::start_full("", &streams, &[]);
    let producers = Producers::start(4, "durable", Arc::new(Mutex::new(hydrant.base_url.clone())));
    let s3 = Bucket::new(&bucket);
    eventually(
        Duration::from_secs(20),
        "deliveries before the outage",
        || async { (!s3.keys("d/").await.is_empty()).then_some(()) },
    )
    .await;

    forwarder.stop();
    hydrant
        .wait_for_log("delivery attempt failed", Duration::from_secs(20))
        .await;
    let before = s3.keys("d/").await.len();
    // Three flush intervals of outage under load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s3.keys("d/").await.len(),
        before,
        "nothing can be written during the outage"
    );

    forwarder = forward(port, &servers().s3_endpoint).await;
    let (acked, attempted) = producers.stop().await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    drop(forwarder);
    let delivered = delivered_ids(&s3, "d/").await;
    check_exactly_once(&delivered, &acked, &attempted);
    assert_eq!(
        delivered.len(),
        acked.len(),
        "every acknowledged record, and only those"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_slow_down_keeps_memory_bounded_and_resumes_after_draining() {
    let bucket = new_bucket("fullspool");
    let port = free_port();
    let streams = streams(&bucket, &format!("http://127.0.0.1:{port}"));
    let mut hydrant = Hydrant::start_full("spool:\n  max_mib: 8\n", &streams, &[]);
    let big = |i: usize| {
        let mut r = format!(r#"{{"id":"big-{i}","pad":""#).into_bytes();
        r.resize(1_000_000, b'x');
        r.extend_from_slice(b"\"}");
        r
    };
    // Offer over ten times the spool's size while the destination is down.
    let mut acked = HashSet::new();
    let mut refused = 0;
    for call in 0..25 {
        let records: Vec<Vec<u8>> = (0..4).map(|i| big(call * 4 + i)).collect();
        let answer = hydrant.put_batch("durable", &records).await;
        for (i, response) in answer["RequestResponses"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            match response.get("RecordId") {
                Some(_) => {
                    acked.insert(format!("big-{}", call * 4 + i));
                }
                None => {
                    assert_eq!(response["ErrorCode"], "ServiceUnavailableException");
                    assert_eq!(response["ErrorMessage"], "Slow down.");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 85, "only {refused} records refused");
    // Firehose's ThrottledRecords, and the failed attempts against the stopped destination.
    let metrics = hydrant.metrics().await;
    let sample = |name: &str| metric(&metrics, name, "durable");
    assert_eq!(sample("hydrant_records_refused_total"), refused as f64);
    assert!(sample("hydrant_spool_bytes") > 0.0);
    assert!(
        (6..=9).contains(&acked.len()),
        "{} records of 1 MB fit in an 8 MiB spool",
        acked.len()
    );
    let rss = rss_bytes(hydrant.process_id());
    assert!(
        rss < 150 << 20,
        "RSS {} MiB after offering 100 MB",
        rss >> 20
    );

    let _forwarder = forward(port, &servers().s3_endpoint).await;
    let more: Vec<Vec<u8>> = (10_000..10_010).map(big).collect();
    for chunk in more.chunks(3) {
        hydrant.put_all("durable", chunk).await;
    }
    acked.extend((10_000..10_010).map(|i| format!("big-{i}")));
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let delivered = delivered_ids(&Bucket::new(&bucket), "d/").await;
    let attempted: HashSet<String> = (0..100)
        .chain(10_000..10_010)
        .map(|i| format!("big-{i}"))
        .collect();
    check_exactly_once(&delivered, &acked, &attempted);
    assert_eq!(delivered.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_abandoned_while_waiting_for_spool_space_counts_what_it_spooled() {
    use tokio::io::AsyncWriteExt as _;

    let bucket = new_bucket("abandon");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hydrant.yaml");
    // Puts wait up to a minute for spool space, so the client leaves first.
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:0\n  backpressure_wait_ms: 60000\n\
             spool:\n  max_mib: 8\nstreams:\n{}",
            indent(&streams(&bucket, &format!("http://127.0.0.1:{port}")), 2)
        ),
    )
    .unwrap();
    let mut hydrant = Hydrant::start_with_file(&config, dir);
    // Twelve 1 MB lines while the destination is down: 6 to 9 fit in the 8 MiB spool and
    // the put waits for space for the rest.
    let mut body = Vec::new();
    for i in 0..12 {
        let mut line = format!(r#"{{"id":"abandoned-{i}","pad":""#).into_bytes();
        line.resize(1_000_000, b'x');
        line.extend_from_slice(b"\"}\n");
        body.extend_from_slice(&line);
    }
    let address = hydrant.base_url.trim_start_matches("http://").to_string();
    let mut client = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /streams/durable/records HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    let spooled = eventually(Duration::from_secs(30), "records in the spool", || async {
        let undelivered = hydrant.stats("durable").await["undelivered_records"]
            .as_u64()
            .unwrap();
        (undelivered > 0).then_some(undelivered)
    })
    .await;
    assert!((6..=9).contains(&spooled), "{spooled} records spooled");
    // The client gives up while its put waits for space.
    drop(client);
    hydrant
        .wait_for_log(
            "put abandoned while waiting for space",
            Duration::from_secs(30),
        )
        .await;
    let _forwarder = forward(port, &servers().s3_endpoint).await;
    let stats = eventually(Duration::from_secs(60), "the spool drained", || async {
        let stats = hydrant.stats("durable").await;
        (stats["undelivered_records"] == 0 && stats["delivered_records"].as_u64() > Some(0))
            .then_some(stats)
    })
    .await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let delivered = delivered_ids(&Bucket::new(&bucket), "d/").await;
    assert_eq!(
        delivered.len() as u64,
        spooled,
        "every spooled record, once"
    );
    assert!(delivered.values().all(|&n| n == 1));
    assert_eq!(stats["delivered_records"], spooled);
    assert_eq!(
        stats["accepted_records"], spooled,
        "records of an abandoned put are counted as accepted: {stats}"
    );
}

#[tokio::test]
async fn a_full_disk_answers_503_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("hydrant-spool/events");
    std::fs::create_dir_all(&spool).unwrap();
    // Writes to /dev/full fail with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", spool.join(format!("{:020}.seg", 0))).unwrap();
    let streams = "events:\n  destination:\n    local: { path: out }\n";
    let hydrant = Hydrant::start_in(dir, "", streams, &[]);
    let (status, answer) = hydrant
        .call(
            "PutRecord",
            &json!({ "DeliveryStreamName": "events", "Record": { "Data": base64::engine::general_purpose::STANDARD.encode(b"x") } }),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["__type"], "ServiceUnavailableException");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{answer}"
    );
    let (status, _) = hydrant.post_ndjson("events", "{}\n").await;
    assert_eq!(status, 503, "still refusing, still serving");
    let log = hydrant
        .wait_for_log("spool write failed", Duration::from_secs(5))
        .await;
    assert!(log.contains("No space left on device"), "{log}");
}

#[test]
fn an_unwritable_spool_directory_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), b"a file, not a directory").unwrap();
    let config = dir.path().join("hydrant.yaml");
    std::fs::write(
        &config,
        "spool:\n  path: blocker/spool\nstreams:\n  s:\n    destination:\n      local: { path: out }\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stream `s`: cannot open its spool"),
        "{stderr}"
    );
    assert!(stderr.contains("blocker/spool/s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_to_the_error_output_after_the_retry_duration_and_the_checkpoint_moves_on() {
    let bucket = new_bucket("errout");
    let started = chrono::Utc::now();
    let port = free_port();
    let destination = s3_destination_yaml(&bucket, "d/", None)
        .replace(&servers().s3_endpoint, &format!("http://127.0.0.1:{port}"))
        + "  retry_duration_seconds: 1\n";
    let streams = format!(
        "durable:\n  buffer: {{ size_mib: 1, interval_seconds: 0 }}\n  compression: gzip\n  destination:\n{}",
        indent(&destination, 4)
    );
    let started_ms = chrono::Utc::now().timestamp_millis();
    let mut hydrant = Hydrant::start_full("", &streams, &[]);
    let records: Vec<Vec<u8>> = (0..5).map(|i| record(&format!("e{i}"))).collect();
    hydrant.put_all("durable", &records).await;
    hydrant
        .wait_for_log("retry duration exhausted", Duration::from_secs(20))
        .await;
    let forwarder = forward(port, &servers().s3_endpoint).await;
    let s3 = Bucket::new(&bucket);
    let keys = eventually(
        Duration::from_secs(20),
        "the error output object",
        || async {
            let keys = s3.keys("s3-failed/").await;
            (!keys.is_empty()).then_some(keys)
        },
    )
    .await;
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    // The key is dated by the records' arrival: between the start and now (a run may
    // cross midnight).
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("s3-failed/%Y/%m/%d/").to_string();
    assert!(
        key.starts_with(&day(started)) || key.starts_with(&day(chrono::Utc::now())),
        "{key}"
    );
    assert!(key.contains("/durable-1-"), "{key}");
    let (body, _) = s3.get(key).await;
    let lines: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let ended = chrono::Utc::now().timestamp_millis();
    for (line, record) in lines.iter().zip(&records) {
        assert!(line["attemptsMade"].as_u64().unwrap() >= 2, "{line}");
        assert_eq!(line["errorCode"], "S3.ServiceUnavailable");
        assert!(
            line["errorMessage"]
                .as_str()
                .unwrap()
                .contains("Connection refused"),
            "{line}"
        );
        let arrival = line["arrivalTimestamp"].as_i64().unwrap();
        let ending = line["attemptEndingTimestamp"].as_i64().unwrap();
        assert!(
            started_ms <= arrival && arrival + 1000 <= ending && ending <= ended,
            "{line}"
        );
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line["rawData"].as_str().unwrap())
            .unwrap();
        assert_eq!(&raw, record);
    }
    assert!(
        s3.keys("d/").await.is_empty(),
        "the batch went to the error output instead"
    );

    // The checkpoint moved on: a restart delivers nothing again.
    assert!(hydrant.terminate().success());
    let dir = hydrant.kill();
    let mut hydrant = Hydrant::start_in(dir, "", &streams, &[]);
    assert!(hydrant.terminate().success());
    assert!(s3.keys("d/").await.is_empty());
    assert_eq!(s3.keys("s3-failed/").await.len(), 1);
    drop(forwarder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_stream_removed_from_the_configuration_are_reported_at_start() {
    let down = format!("http://127.0.0.1:{}", free_port());
    let streams = format!(
        "kept:\n  destination:\n    local: {{ path: out }}\n{}",
        streams("gone-bucket", &down).replace("durable:", "gone:")
    );
    let hydrant = Hydrant::start_full("", &streams, &[]);
    hydrant.put_all("gone", &[record("orphan")]).await;
    let dir = hydrant.kill();
    let hydrant = Hydrant::start_in(
        dir,
        "",
        "kept:\n  destination:\n    local: { path: out }\n",
        &[],
    );
    let log = hydrant
        .wait_for_log("no longer configured", Duration::from_secs(10))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("no longer configured"))
        .unwrap();
    assert!(line.contains("stream=gone"), "{line}");
    assert!(line.contains("hydrant-spool/gone"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_streamed_from_the_spool_not_loaded_into_memory() {
    let bucket = new_bucket("backlog");
    let port = free_port();
    let destination = s3_destination_yaml(&bucket, "b/", None)
        .replace(&servers().s3_endpoint, &format!("http://127.0.0.1:{port}"));
    let streams = format!(
        "backlog:\n  buffer: {{ size_mib: 4, interval_seconds: 1 }}\n  destination:\n{}",
        indent(&destination, 4)
    );
    // 160 MB of records pile up while the destination is down.
    let hydrant = Hydrant::start_full("", &streams, &[]);
    let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(990));
    let body = line.repeat(16_000);
    for _ in 0..10 {
        let (status, answer) = hydrant.post_ndjson("backlog", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let dir = hydrant.kill();

    // Restarted with the destination back, it drains the backlog in buffer-sized batches.
    let _forwarder = forward(port, &servers().s3_endpoint).await;
    let mut hydrant = Hydrant::start_in(dir, "", &streams, &[]);
    let pid = hydrant.process_id();
    let s3 = Bucket::new(&bucket);
    let mut peak = 0;
    eventually(Duration::from_secs(120), "the backlog delivered", || {
        peak = peak.max(peak_rss_bytes(pid));
        let hydrant = &hydrant;
        async move {
            let stats = hydrant.stats("backlog").await;
            (stats["delivered_records"] == 160_000).then_some(())
        }
    })
    .await;
    peak = peak.max(peak_rss_bytes(pid));
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    eprintln!(
        "peak RSS while draining a 160 MB backlog: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 100 << 20,
        "peak RSS {} MiB while draining a 160 MB backlog",
        peak >> 20
    );
    let mut lines = 0;
    for key in s3.keys("b/").await {
        let (object, _) = s3.get(&key).await;
        assert!(object.len() <= 4 << 20, "{key}: {} bytes", object.len());
        lines += object
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    assert_eq!(lines, 160_000, "every spooled record, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_freshness_grows_while_the_destination_is_down_and_returns_to_zero() {
    let bucket = new_bucket("freshness");
    let port = free_port();
    let mut forwarder = forward(port, &servers().s3_endpoint).await;
    let streams = streams(&bucket, &format!("http://127.0.0.1:{port}"));
    let mut hydrant = Hydrant::start_full("", &streams, &[]);
    let records = |from: u32| -> Vec<Vec<u8>> {
        (from..from + 10)
            .map(|n| serde_json::to_vec(&json!({ "id": format!("f-{n}") })).unwrap())
            .collect()
    };
    let freshness = |stats: &Value| stats["data_freshness_seconds"].as_f64().unwrap();
    hydrant.put_all("durable", &records(0)).await;
    eventually(
        Duration::from_secs(20),
        "the first records delivered",
        || async {
            let stats = hydrant.stats("durable").await;
            (stats["delivered_records"] == 10 && freshness(&stats) == 0.0).then_some(())
        },
    )
    .await;

    forwarder.stop();
    hydrant.put_all("durable", &records(10)).await;
    let during = eventually(Duration::from_secs(20), "freshness past 2 s", || async {
        let seconds = freshness(&hydrant.stats("durable").await);
        (seconds >= 2.0).then_some(seconds)
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "freshness still growing",
        || async {
            let seconds = freshness(&hydrant.stats("durable").await);
            (seconds >= during + 1.0).then_some(())
        },
    )
    .await;
    let metrics = hydrant.metrics().await;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("hydrant_data_freshness_seconds{stream=\"durable\"}"))
        .unwrap_or_else(|| panic!("no freshness gauge in\n{metrics}"));
    let value: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 2.0, "{gauge}");

    forwarder = forward(port, &servers().s3_endpoint).await;
    eventually(
        Duration::from_secs(30),
        "freshness back to zero",
        || async {
            let stats = hydrant.stats("durable").await;
            (stats["delivered_records"] == 20 && freshness(&stats) == 0.0).then_some(())
        },
    )
    .await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    drop(forwarder);
}
