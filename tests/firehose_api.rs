//! The Firehose API against the real binary: every malformed call gets the AWS error type
//! and a message naming the problem, the service keeps serving, and the control plane and
//! NDJSON endpoint answer in their documented shapes.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn local_streams(dir_name: &str) -> String {
    format!(
        "events:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n    local: {{ path: {dir_name} }}\n\
         audit.log_v2:\n  destination:\n    local: {{ path: {dir_name}-audit }}\n"
    )
}

fn assert_error(status: u16, answer: &Value, expected_status: u16, kind: &str, needles: &[&str]) {
    assert_eq!(status, expected_status, "{answer}");
    assert_eq!(answer["__type"], kind, "{answer}");
    let message = answer["message"].as_str().unwrap();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message:?}"
        );
    }
}

#[tokio::test]
async fn malformed_calls_get_aws_errors_naming_the_problem_and_the_service_keeps_serving() {
    let hydrant = Hydrant::start(&local_streams("out"));
    let batch = |records: Value| json!({ "DeliveryStreamName": "events", "Records": records });

    let (s, a) = hydrant.call("PutRecordBatch", &batch(json!([]))).await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["'records'", "greater than or equal to 1"],
    );

    let many: Vec<Value> = (0..501).map(|_| json!({ "Data": b64(b"x") })).collect();
    let (s, a) = hydrant.call("PutRecordBatch", &batch(json!(many))).await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["'records'", "less than or equal to 500"],
    );

    let big = vec![b'a'; 1_024_001];
    let (s, a) = hydrant
        .call(
            "PutRecordBatch",
            &batch(json!([{ "Data": b64(b"fine") }, { "Data": b64(&big) }])),
        )
        .await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["records.2.member.data", "1024000"],
    );

    let exactly_max = vec![b'a'; 1_024_000];
    let five: Vec<Value> = (0..5)
        .map(|_| json!({ "Data": b64(&exactly_max) }))
        .collect();
    let (s, a) = hydrant.call("PutRecordBatch", &batch(json!(five))).await;
    assert_error(
        s,
        &a,
        400,
        "InvalidArgumentException",
        &["5120000 bytes", "4 MiB"],
    );

    let (s, a) = hydrant
        .call("PutRecordBatch", &batch(json!([{ "Data": "not base64!" }])))
        .await;
    assert_error(
        s,
        &a,
        400,
        "SerializationException",
        &["records.1.member.data", "base64"],
    );

    let (s, a) = hydrant
        .call_raw(
            Some("Firehose_20150804.PutRecordBatch"),
            b"{\"DeliveryStreamName\": \"events\", ".to_vec(),
        )
        .await;
    assert_error(s, &a, 400, "SerializationException", &["not a valid JSON"]);

    let (s, a) = hydrant
        .call(
            "PutRecordBatch",
            &json!({ "DeliveryStreamName": "events", "Records": "nope" }),
        )
        .await;
    assert_error(s, &a, 400, "SerializationException", &["invalid type"]);

    let (s, a) = hydrant
        .call_raw(
            Some("Firehose_20150804.CreateDeliveryStream"),
            b"{}".to_vec(),
        )
        .await;
    assert_error(
        s,
        &a,
        400,
        "UnknownOperationException",
        &["CreateDeliveryStream"],
    );
    let (s, a) = hydrant
        .call_raw(Some("Kinesis_20131202.PutRecord"), b"{}".to_vec())
        .await;
    assert_error(
        s,
        &a,
        400,
        "UnknownOperationException",
        &["Kinesis_20131202.PutRecord"],
    );
    let (s, a) = hydrant.call_raw(None, b"{}".to_vec()).await;
    assert_error(s, &a, 400, "UnknownOperationException", &["X-Amz-Target"]);

    let (s, a) = hydrant
        .call(
            "PutRecord",
            &json!({ "DeliveryStreamName": "nosuch", "Record": { "Data": b64(b"x") } }),
        )
        .await;
    assert_error(
        s,
        &a,
        400,
        "ResourceNotFoundException",
        &["nosuch", "not found"],
    );

    let (s, a) = hydrant
        .call(
            "PutRecord",
            &json!({ "DeliveryStreamName": "bad name!", "Record": { "Data": b64(b"x") } }),
        )
        .await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["'deliveryStreamName'", "bad name!", "[a-zA-Z0-9_.-]+"],
    );
    let long = "a".repeat(65);
    let (s, a) = hydrant
        .call(
            "DescribeDeliveryStream",
            &json!({ "DeliveryStreamName": long }),
        )
        .await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["'deliveryStreamName'", "1 to 64"],
    );

    let (s, a) = hydrant
        .call("PutRecord", &json!({ "DeliveryStreamName": "events" }))
        .await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["'record'", "must not be null"],
    );

    // Still serving, and the refused calls left nothing behind.
    let (s, a) = hydrant
        .call(
            "PutRecord",
            &json!({ "DeliveryStreamName": "events", "Record": { "Data": b64(b"after") } }),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["Encrypted"], false);
    assert_eq!(a["RecordId"].as_str().unwrap().len(), 32);
    let answer = hydrant
        .put_batch("events", &[b"one".to_vec(), b"two".to_vec()])
        .await;
    assert_eq!(answer["FailedPutCount"], 0);
    let ids: Vec<&str> = answer["RequestResponses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RecordId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);

    let mut hydrant = hydrant;
    assert!(hydrant.terminate().success());
    let files = files_under(&hydrant.dir.path().join("out"));
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"after\none\ntwo\n");
}

#[tokio::test]
async fn control_plane_lists_and_describes_configured_streams() {
    let mut hydrant = Hydrant::start(&local_streams("cp"));
    let (s, a) = hydrant.call("ListDeliveryStreams", &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(
        a,
        json!({ "DeliveryStreamNames": ["audit.log_v2", "events"], "HasMoreDeliveryStreams": false })
    );
    let (_, a) = hydrant
        .call("ListDeliveryStreams", &json!({ "Limit": 1 }))
        .await;
    assert_eq!(
        a,
        json!({ "DeliveryStreamNames": ["audit.log_v2"], "HasMoreDeliveryStreams": true })
    );
    let (_, a) = hydrant
        .call(
            "ListDeliveryStreams",
            &json!({ "ExclusiveStartDeliveryStreamName": "audit.log_v2" }),
        )
        .await;
    assert_eq!(a["DeliveryStreamNames"], json!(["events"]));
    let (s, a) = hydrant
        .call("ListDeliveryStreams", &json!({ "Limit": 0 }))
        .await;
    assert_error(s, &a, 400, "ValidationException", &["'limit'"]);

    let (s, a) = hydrant
        .call(
            "DescribeDeliveryStream",
            &json!({ "DeliveryStreamName": "events" }),
        )
        .await;
    assert_eq!(s, 200);
    let d = &a["DeliveryStreamDescription"];
    assert_eq!(d["DeliveryStreamName"], "events");
    assert_eq!(d["DeliveryStreamStatus"], "ACTIVE");
    assert_eq!(d["DeliveryStreamType"], "DirectPut");
    assert!(
        d["DeliveryStreamARN"]
            .as_str()
            .unwrap()
            .ends_with(":deliverystream/events")
    );
    let s3 = &d["Destinations"][0]["ExtendedS3DestinationDescription"];
    assert_eq!(
        s3["BufferingHints"],
        json!({ "SizeInMBs": 1, "IntervalInSeconds": 900 })
    );
    assert_eq!(s3["CompressionFormat"], "UNCOMPRESSED");
    let (_, a) = hydrant
        .call(
            "DescribeDeliveryStream",
            &json!({ "DeliveryStreamName": "audit.log_v2" }),
        )
        .await;
    let hints = &a["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"]
        ["BufferingHints"];
    assert_eq!(
        *hints,
        json!({ "SizeInMBs": 5, "IntervalInSeconds": 60 }),
        "documented defaults"
    );
    assert!(hydrant.terminate().success());
}

#[tokio::test]
async fn ndjson_endpoint_takes_one_record_per_line() {
    let mut hydrant = Hydrant::start(&local_streams("nd"));
    let (s, a) = hydrant
        .post_ndjson("events", "{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}")
        .await;
    assert_eq!((s, a), (200, json!({ "accepted": 3 })));
    let (s, a) = hydrant.post_ndjson("missing", "{}\n").await;
    assert_error(s, &a, 400, "ResourceNotFoundException", &["missing"]);
    let too_many = "{}\n".repeat(50_001);
    let (s, a) = hydrant.post_ndjson("events", &too_many).await;
    assert_error(
        s,
        &a,
        400,
        "ValidationException",
        &["more than 50000 records"],
    );
    let huge = format!("{{}}\n{}\n", "x".repeat(1_024_001));
    let (s, a) = hydrant.post_ndjson("events", &huge).await;
    assert_error(s, &a, 400, "ValidationException", &["line 2", "1024000"]);
    let oversized = "{}\n".repeat(16 * 1024 * 1024 / 3 + 1);
    let (s, a) = hydrant.post_ndjson("events", &oversized).await;
    assert_error(
        s,
        &a,
        400,
        "InvalidArgumentException",
        &["request body", "at most 16777216 bytes"],
    );
    assert!(hydrant.terminate().success());
    let files = files_under(&hydrant.dir.path().join("nd"));
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap(),
        "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffers_answer_slow_down_per_record_and_recover() {
    // While the destination is down, one batch is in delivery and one sealed; with 1 MiB
    // buffers, little more than a third MiB (the open batch) can be taken.
    let bucket = new_bucket("slow");
    let port = free_port();
    let destination = s3_destination_yaml(&bucket, "", None)
        .replace(&servers().s3_endpoint, &format!("http://127.0.0.1:{port}"));
    let streams = format!(
        "slow:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n{}",
        indent(&destination, 4)
    );
    // Without a spool, memory bounds what is accepted.
    let mut hydrant = Hydrant::start_full("spool:\n  fsync: disabled\n", &streams, &[]);
    let record = |i: usize| {
        let mut r = format!("{i:08}").into_bytes();
        r.resize(100_000, b'r');
        r
    };
    let mut accepted = 0;
    let mut refused = None;
    for batch in 0..40 {
        let records: Vec<Vec<u8>> = (0..5).map(|i| record(batch * 5 + i)).collect();
        let answer = hydrant.put_batch("slow", &records).await;
        let failed = answer["FailedPutCount"].as_u64().unwrap() as usize;
        accepted += 5 - failed;
        if failed > 0 {
            refused = Some(answer);
            break;
        }
    }
    let answer = refused.expect("a full buffer must refuse records");
    let responses = answer["RequestResponses"].as_array().unwrap();
    let first_failed = responses
        .iter()
        .position(|r| r.get("ErrorCode").is_some())
        .unwrap();
    assert!(
        responses[..first_failed]
            .iter()
            .all(|r| r.get("RecordId").is_some())
    );
    for r in &responses[first_failed..] {
        assert_eq!(r["ErrorCode"], "ServiceUnavailableException");
        assert_eq!(r["ErrorMessage"], "Slow down.");
    }
    // 1 MiB in delivery, 1 MiB sealed, 1 MiB open: 10 records of 100 kB each.
    assert_eq!(accepted, 30);
    let (s, a) = hydrant
        .call(
            "PutRecord",
            &json!({ "DeliveryStreamName": "slow", "Record": { "Data": b64(&record(999)) } }),
        )
        .await;
    assert_error(s, &a, 503, "ServiceUnavailableException", &["Slow down."]);

    // The destination comes back: buffers drain and puts are taken again.
    let _forwarder = forward(port, &servers().s3_endpoint).await;
    let more: Vec<Vec<u8>> = (1000..1010).map(record).collect();
    hydrant.put_all("slow", &more).await;
    assert!(hydrant.terminate().success());
    let s3 = Bucket::new(&bucket);
    let mut delivered = 0;
    for key in s3.keys("").await {
        delivered += s3
            .get(&key)
            .await
            .0
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    assert_eq!(
        delivered,
        accepted + more.len(),
        "accepted records are all delivered, once"
    );
}

/// The value of the Prometheus sample `name{stream="<stream>"}` in `text`.
fn sample(text: &str, name: &str, stream: &str) -> Option<f64> {
    let prefix = format!("{name}{{stream=\"{stream}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn prometheus_metrics_count_what_happened_to_records() {
    let streams = "events:\n  buffer: { size_mib: 1, interval_seconds: 0 }\n  destination:\n    local: { path: out }\n";
    let mut hydrant = Hydrant::start(streams);
    hydrant
        .put_batch("events", &[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .await;
    common::eventually(std::time::Duration::from_secs(10), "delivery", || async {
        (hydrant.stats("events").await["delivered_records"] == 3).then_some(())
    })
    .await;
    let text = hydrant.metrics().await;
    assert_eq!(
        sample(&text, "hydrant_records_accepted_total", "events"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_incoming_bytes_total", "events"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_incoming_put_requests_total", "events"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_records_delivered_total", "events"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_objects_delivered_total", "events"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_delivered_bytes_total", "events"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "hydrant_undelivered_records", "events"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "hydrant_spool_bytes", "events").unwrap() > 0.0,
        "{text}"
    );
    hydrant
        .put_batch("events", &[b"four".to_vec(), b"five5".to_vec()])
        .await;
    let (status, _) = hydrant.post_ndjson("events", "six\n").await;
    assert_eq!(status, 200);
    let text = hydrant.metrics().await;
    // Every call is in its operation's latency histogram, and every spool fsync in its own.
    for (operation, calls) in [("PutRecordBatch", 2.0), ("PostRecords", 1.0)] {
        let count = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "hydrant_api_call_seconds_count{{operation=\"{operation}\"}} "
                ))
            })
            .map(|v| v.trim().parse::<f64>().unwrap());
        assert_eq!(count, Some(calls), "{operation}: {text}");
    }
    assert!(
        text.contains("hydrant_api_call_seconds_bucket{operation=\"PutRecordBatch\",le=\"0.5\"}"),
        "{text}"
    );
    let fsyncs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hydrant_spool_fsync_seconds_count "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no fsync histogram in\n{text}"));
    assert!(fsyncs >= 3.0, "one fsync per put at least: {fsyncs}");
    assert_eq!(
        sample(&text, "hydrant_incoming_bytes_total", "events"),
        Some(15.0),
        "three 1-byte records, then records of 4 and 5 bytes, then one of 3: {text}"
    );
    assert_eq!(
        sample(&text, "hydrant_incoming_put_requests_total", "events"),
        Some(3.0),
        "{text}"
    );
    assert!(hydrant.terminate().success());
}
