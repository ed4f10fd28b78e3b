//! End to end into a real S3 server: concurrent producers, both flush triggers, Firehose key
//! layout, gzip, exactly-once and in-order delivery, and destinations that refuse writes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use common::*;
use serde_json::Value;

const PRODUCERS: usize = 4;
const BATCHES_PER_PRODUCER: usize = 10;
const RECORDS_PER_BATCH: usize = 100;
const RECORD_BYTES: usize = 1000;
const MIB: usize = 1024 * 1024;

fn record(producer: usize, seq: usize) -> Vec<u8> {
    let head = format!(r#"{{"producer":{producer},"seq":{seq},"pad":""#);
    let mut record = head.into_bytes();
    record.resize(RECORD_BYTES - 2, b'x');
    record.extend_from_slice(b"\"}");
    record
}

/// Checks a Firehose key `<prefix>[YYYY/MM/dd/HH/]<stream>-1-YYYY-MM-dd-HH-mm-ss-<uuid>.gz`
/// and returns the timestamp in its name.
fn check_key(key: &str, prefix: &str, hour_folders: bool, stream: &str) -> DateTime<Utc> {
    let rest = key
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{key} lacks {prefix}"));
    let rest = rest
        .strip_suffix(".gz")
        .unwrap_or_else(|| panic!("{key} lacks .gz"));
    let (folders, name) = match rest.rsplit_once('/') {
        Some((folders, name)) => (folders, name),
        None => ("", rest),
    };
    let name = name
        .strip_prefix(&format!("{stream}-1-"))
        .unwrap_or_else(|| panic!("{key}: name does not start with {stream}-1-"));
    let (stamp, uuid) = name.split_at(19);
    let uuid = uuid.strip_prefix('-').unwrap();
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{key}: uuid part");
    assert!(
        uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "{key}"
    );
    let time = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d-%H-%M-%S")
        .unwrap_or_else(|e| panic!("{key}: timestamp {stamp}: {e}"))
        .and_utc();
    if hour_folders {
        assert_eq!(
            folders,
            format!(
                "{:04}/{:02}/{:02}/{:02}",
                time.year(),
                time.month(),
                time.day(),
                time.hour()
            ),
            "{key}: hour folders must match the name's timestamp"
        );
    } else {
        assert!(folders.is_empty() || !folders.contains(&format!("/{:02}/", time.hour())));
    }
    time
}

fn parse_lines(body: &[u8]) -> Vec<Value> {
    assert_eq!(body.last(), Some(&b'\n'), "objects end with a newline");
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is one record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_land_exactly_once_in_order_with_both_flush_triggers() {
    let bucket = new_bucket("e2e");
    let streams = format!(
        "sized:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  compression: gzip\n  destination:\n{}\
         timed:\n  buffer: {{ size_mib: 128, interval_seconds: 1 }}\n  compression: gzip\n  destination:\n{}",
        indent(&s3_destination_yaml(&bucket, "sized/", None), 4),
        indent(
            &s3_destination_yaml(&bucket, "timed/dt=!{timestamp:yyyy-MM-dd}/", None),
            4
        ),
    );
    let started = Utc::now();
    let mut hydrant = Hydrant::start(&streams);
    let hydrant_ref = &hydrant;
    let s3 = Bucket::new(&bucket);

    // Interval trigger: a few records, far below the size threshold, appear after ~1 s.
    let put_at = Instant::now();
    hydrant
        .put_all("timed", &(0..5).map(|i| record(99, i)).collect::<Vec<_>>())
        .await;
    let timed_keys = eventually(Duration::from_secs(20), "the interval flush", || async {
        let keys = s3.keys("timed/").await;
        (!keys.is_empty()).then_some(keys)
    })
    .await;
    assert!(
        put_at.elapsed() >= Duration::from_millis(900),
        "object appeared after {:?}, before the 1 s interval",
        put_at.elapsed()
    );
    assert_eq!(timed_keys.len(), 1);
    let today = format!("timed/dt={}/", started.format("%Y-%m-%d"));
    check_key(&timed_keys[0], &today, false, "timed");

    // Size trigger: four producers send ~3.8 MiB into 1 MiB buffers with a 900 s interval.
    let producers = (0..PRODUCERS).map(|producer| async move {
        for batch in 0..BATCHES_PER_PRODUCER {
            let records: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
                .map(|i| record(producer, batch * RECORDS_PER_BATCH + i))
                .collect();
            hydrant_ref.put_all("sized", &records).await;
        }
    });
    futures_util::future::join_all(producers).await;
    let total_records = PRODUCERS * BATCHES_PER_PRODUCER * RECORDS_PER_BATCH;
    let total_bytes = total_records * (RECORD_BYTES + 1);
    let full_objects = total_bytes / MIB;
    let before_shutdown = eventually(
        Duration::from_secs(30),
        "size-triggered objects",
        || async {
            let keys = s3.keys("sized/").await;
            (keys.len() >= full_objects).then_some(keys)
        },
    )
    .await;
    assert_eq!(
        before_shutdown.len(),
        full_objects,
        "only full buffers flush before shutdown"
    );

    // Shutdown flushes the rest.
    let status = hydrant.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        hydrant.log()
    );

    let keys = s3.keys("sized/").await;
    assert_eq!(
        keys.len(),
        full_objects + 1,
        "the remainder is flushed at shutdown"
    );
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut full = 0;
    for key in &keys {
        let time = check_key(key, "sized/", true, "sized");
        assert!(time >= started - chrono::Duration::seconds(1) && time <= Utc::now());
        let (bytes, encoding) = s3.get(key).await;
        assert_eq!(encoding.as_deref(), Some("gzip"), "{key}: Content-Encoding");
        let body = gunzip(&bytes);
        assert!(
            body.len() <= MIB,
            "{key}: {} bytes exceed the 1 MiB buffer",
            body.len()
        );
        if body.len() > MIB - (RECORD_BYTES + 1) {
            full += 1;
        }
        let mut last_in_object: HashMap<u64, u64> = HashMap::new();
        for line in parse_lines(&body) {
            let producer = line["producer"].as_u64().unwrap();
            let seq = line["seq"].as_u64().unwrap();
            if let Some(previous) = last_in_object.insert(producer, seq) {
                assert!(seq > previous, "{key}: producer {producer} out of order");
            }
            seen.entry(producer).or_default().push(seq);
        }
    }
    assert_eq!(full, full_objects, "size-triggered objects are full");
    assert_eq!(seen.len(), PRODUCERS);
    for (producer, mut seqs) in seen {
        let count = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), count, "producer {producer}: duplicates");
        let expected: Vec<u64> = (0..(BATCHES_PER_PRODUCER * RECORDS_PER_BATCH) as u64).collect();
        assert_eq!(seqs, expected, "producer {producer}: missing records");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_is_retried_until_it_comes_back_and_nothing_is_lost() {
    let bucket = new_bucket("outage");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let destination =
        s3_destination_yaml(&bucket, "", None).replace(&servers().s3_endpoint, &endpoint);
    let streams = format!(
        "late:\n  buffer: {{ size_mib: 1, interval_seconds: 0 }}\n  compression: gzip\n  destination:\n{}",
        indent(&destination, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let records: Vec<Vec<u8>> = (0..50).map(|i| record(1, i)).collect();
    hydrant.put_all("late", &records[..25]).await;
    let log = hydrant
        .wait_for_log(
            "delivery attempt failed; will retry",
            Duration::from_secs(20),
        )
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("delivery attempt failed"))
        .unwrap();
    for needle in [
        "stream=late",
        &format!("destination=s3://{bucket}"),
        "target=",
        "S3.ServiceUnavailable",
        "Connection refused",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    // More records arrive while the destination is down; nothing is dropped.
    hydrant.put_all("late", &records[25..]).await;
    hydrant
        .wait_for_log("attempt=3", Duration::from_secs(20))
        .await;

    // The destination comes back (a forwarder to the real server starts on that port).
    let _forwarder = forward(port, &servers().s3_endpoint).await;
    let s3 = Bucket::new(&bucket);
    let objects = eventually(
        Duration::from_secs(30),
        "delivery after recovery",
        || async {
            let mut objects = Vec::new();
            for key in s3.keys("").await {
                let seqs: Vec<u64> = parse_lines(&gunzip(&s3.get(&key).await.0))
                    .iter()
                    .map(|l| l["seq"].as_u64().unwrap())
                    .collect();
                objects.push(seqs);
            }
            (objects.iter().map(Vec::len).sum::<usize>() >= records.len()).then_some(objects)
        },
    )
    .await;
    // Keys written in the same second carry no order, so check order within each object.
    for seqs in &objects {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
    }
    let mut all: Vec<u64> = objects.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..50).collect::<Vec<u64>>(),
        "every record exactly once"
    );
    assert!(hydrant.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_logged_with_their_reason_and_never_dropped() {
    let bucket = new_bucket("refused");
    let streams = format!(
        "badsecret:\n  buffer: {{ size_mib: 1, interval_seconds: 0 }}\n  destination:\n{}",
        indent(&s3_destination_yaml(&bucket, "", Some("not-the-secret")), 4),
    );
    let mut hydrant = Hydrant::start(&streams);
    hydrant
        .put_all("badsecret", &[record(1, 1), record(1, 2)])
        .await;
    let log = hydrant
        .wait_for_log("attempt=2", Duration::from_secs(30))
        .await;
    let secret_line = log
        .lines()
        .find(|l| l.contains("stream=badsecret") && l.contains("delivery attempt failed"))
        .unwrap();
    assert!(secret_line.contains("S3.AccessDenied"), "{secret_line}");
    assert!(
        secret_line.contains("SignatureDoesNotMatch"),
        "{secret_line}"
    );
    assert!(
        !secret_line.contains("not-the-secret"),
        "the secret must not be logged"
    );
    assert!(Bucket::new(&bucket).keys("").await.is_empty());

    // Shutdown keeps retrying (records are never dropped); a second signal exits and says
    // how many accepted records wait in the spool for the next start.
    hydrant.signal_terminate();
    hydrant
        .wait_for_log("delivering what is buffered", Duration::from_secs(10))
        .await;
    let status = hydrant.terminate();
    assert!(status.success());
    let log = hydrant.log();
    assert!(
        log.contains("exiting with 2 accepted records not yet delivered; they stay in the spool"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_up_as_multipart_uploads() {
    let bucket = new_bucket("multipart");
    let destination = s3_destination_yaml(&bucket, "big/", None)
        + "  multipart_threshold_mib: 5\n  multipart_part_mib: 5\n";
    let streams = format!(
        "big:\n  buffer: {{ size_mib: 16, interval_seconds: 900 }}\n  destination:\n{}",
        indent(&destination, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    // 12 MiB of records that do not repeat, in 3 MiB calls.
    let mut rng = fastrand::Rng::with_seed(7);
    let records: Vec<Vec<u8>> = (0..12 * 64)
        .map(|i| {
            let mut r = format!("{i:06} ").into_bytes();
            r.extend((0..16 * 1024 - 8).map(|_| rng.alphanumeric() as u8));
            r
        })
        .collect();
    for chunk in records.chunks(192) {
        hydrant.put_all("big", chunk).await;
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let s3 = Bucket::new(&bucket);
    let keys = s3.keys("big/").await;
    assert_eq!(keys.len(), 1, "one 12 MiB object");
    let etag = s3.etag(&keys[0]).await;
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "ETag {etag} is not a 3-part upload"
    );
    let (body, _) = s3.get(&keys[0]).await;
    let expected: Vec<u8> = records
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    assert_eq!(body.len(), expected.len());
    assert!(
        body == expected,
        "multipart object differs from what was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_endpoint_come_from_the_standard_aws_environment() {
    let bucket = new_bucket("envcreds");
    let s = servers();
    let streams = format!(
        "env:\n  destination:\n    s3:\n      bucket: {bucket}\n      force_path_style: true\n"
    );
    let mut hydrant = Hydrant::start_with_env(
        &streams,
        &[
            ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
            ("AWS_ENDPOINT_URL", s.s3_endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    hydrant.put_all("env", &[b"from-env".to_vec()]).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let s3 = Bucket::new(&bucket);
    let keys = s3.keys("").await;
    assert_eq!(keys.len(), 1);
    assert_eq!(s3.get(&keys[0]).await.0, b"from-env\n");
}

/// Decompresses `body` with the standard tool for `extension`, outside this process.
fn decode_with_standard_tool(extension: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut command = match extension {
        ".gz" => {
            let mut c = std::process::Command::new("gzip");
            c.arg("-dc");
            c
        }
        ".zst" => {
            let mut c = std::process::Command::new("zstd");
            c.args(["-dc", "-q"]);
            c
        }
        ".snappy" => {
            let mut c = std::process::Command::new(&servers().python);
            c.args([
                "-c",
                "import snappy, sys; snappy.stream_decompress(sys.stdin.buffer, sys.stdout.buffer)",
            ]);
            c
        }
        "" => return body.to_vec(),
        other => panic!("no tool for {other}"),
    };
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run the {extension} decoder: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "the {extension} decoder failed");
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_through_its_standard_tool() {
    let bucket = new_bucket("codecs");
    let codecs = [
        ("none", ""),
        ("gzip", ".gz"),
        ("zstd", ".zst"),
        ("snappy", ".snappy"),
    ];
    let streams: String = codecs
        .iter()
        .map(|(codec, _)| {
            format!(
                "{codec}:\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  compression: {codec}\n  destination:\n{}",
                indent(&s3_destination_yaml(&bucket, &format!("{codec}/"), None), 4)
            )
        })
        .collect();
    let mut hydrant = Hydrant::start(&streams);
    // ~3 MiB per stream: several compression chunks per object.
    let records: Vec<Vec<u8>> = (0..3000).map(|i| record(i % 4, i)).collect();
    for (codec, _) in &codecs {
        for chunk in records.chunks(500) {
            hydrant.put_all(codec, chunk).await;
        }
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let expected: Vec<u8> = records
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    let s3 = Bucket::new(&bucket);
    for (codec, extension) in codecs {
        let keys = s3.keys(&format!("{codec}/")).await;
        assert_eq!(keys.len(), 1, "{codec}: {keys:?}");
        let key = &keys[0];
        assert!(key.contains(&format!("/{codec}-1-")), "{key}");
        let uuid_end = key.len() - extension.len();
        assert_eq!(&key[uuid_end..], extension, "{key}");
        assert_eq!(
            key[uuid_end - 36..uuid_end].matches('-').count(),
            4,
            "{key}"
        );
        let (body, encoding) = s3.get(&keys[0]).await;
        let wanted_encoding = match codec {
            "gzip" => Some("gzip"),
            "zstd" => Some("zstd"),
            "snappy" => Some("x-snappy-framed"),
            _ => None,
        };
        assert_eq!(encoding.as_deref(), wanted_encoding, "{codec}");
        if !extension.is_empty() {
            assert!(
                body.len() < expected.len() / 2,
                "{codec} did not compress: {} bytes",
                body.len()
            );
        }
        let decoded = decode_with_standard_tool(extension, &body);
        assert_eq!(decoded.len(), expected.len(), "{codec}");
        assert!(decoded == expected, "{codec}: decoded bytes differ");
    }
}

/// What `tests/clients/sse_read_boto3.py` saw of each object under `prefix`.
fn sse_objects(bucket: &str, prefix: &str, customer_key: Option<&str>) -> Vec<serde_json::Value> {
    let s = servers();
    let mut command = std::process::Command::new(&s.python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/sse_read_boto3.py"
        ))
        .args([&s.s3_endpoint, &s.access_key, &s.secret_key, bucket, prefix]);
    if let Some(key) = customer_key {
        command.arg(key);
    }
    String::from_utf8(stdout_of(&mut command, "sse_read_boto3.py"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn objects_are_encrypted_by_the_store_with_sse_s3_and_sse_c() {
    let bucket = new_bucket("sse");
    // A fixed test key: 32 bytes in base64.
    let customer_key = "c3NlLWMtdGVzdC1rZXktb2YtMzItYnl0ZXMhISEhISE=";
    let destination = |prefix: &str, sse: &str| {
        indent(
            &format!(
                "{}  multipart_threshold_mib: 5\n  multipart_part_mib: 5\n{sse}",
                s3_destination_yaml(&bucket, prefix, None)
            ),
            4,
        )
    };
    let streams = format!(
        "managed:\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  compression: gzip\n  destination:\n{}\
         customer:\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  compression: gzip\n  destination:\n{}",
        destination("managed/", "  server_side_encryption: AES256\n"),
        destination(
            "customer/",
            "  server_side_encryption: SSE-C\n  sse_customer_key: ${SSE_C_KEY}\n"
        ),
    );
    let mut hydrant = Hydrant::start_with_env(&streams, &[("SSE_C_KEY", customer_key)]);
    let small: Vec<Vec<u8>> = (0..100)
        .map(|n| format!(r#"{{"n":{n}}}"#).into_bytes())
        .collect();
    hydrant.put_all("managed", &small).await;
    // Large, random (incompressible) records: the object goes up as a multipart upload.
    let large: Vec<Vec<u8>> = (0..9)
        .map(|n| {
            let mut rng = fastrand::Rng::with_seed(n);
            let text: String = (0..1_000_000).map(|_| rng.alphanumeric()).collect();
            format!(r#"{{"n":{n},"pad":"{text}"}}"#).into_bytes()
        })
        .collect();
    for chunk in large.chunks(3) {
        hydrant.put_all("customer", chunk).await;
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let managed = sse_objects(&bucket, "managed/", None);
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(managed[0]["sse"], "AES256", "{managed:?}");
    assert_eq!(managed[0]["lines"], 100);
    let customer = sse_objects(&bucket, "customer/", Some(customer_key));
    for object in &customer {
        assert_eq!(object["sse_customer"], "AES256", "{customer:?}");
        assert_ne!(
            object["read_without_key"], "ok",
            "an SSE-C object cannot be read without the key: {customer:?}"
        );
    }
    let lines: u64 = customer.iter().map(|o| o["lines"].as_u64().unwrap()).sum();
    assert_eq!(lines, 9, "{customer:?}");
    assert!(
        customer
            .iter()
            .any(|o| o["etag"].as_str().unwrap().contains('-')),
        "one went up as a multipart upload: {customer:?}"
    );
    assert!(
        !hydrant.log().contains(customer_key),
        "the customer key is never logged"
    );
}
