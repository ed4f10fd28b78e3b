//! The HTTP endpoint destination, against a receiver written in the test from Firehose's
//! request/response specification: every header and the body shape are checked, every
//! failure the specification names is retried with the same request id and records, kill -9
//! under load repeats only request ids (never a record under a new id), and an outage longer
//! than the retry duration leaves every record in `http-endpoint-failed`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ACCESS_KEY: &str = "receiver-access-key-0123";

fn endpoint_stream(name: &str, url: &str, extra: &str) -> String {
    format!(
        "{name}:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    http_endpoint:\n      \
         url: {url}\n      access_key: ${{ENDPOINT_ACCESS_KEY}}\n      common_attributes: {{ team: data, env: test }}\n      \
         initial_backoff_ms: 50\n      max_backoff_seconds: 1\n{}",
        indent(extra, 6)
    )
}

fn attributes() -> Value {
    json!({ "team": "data", "env": "test" })
}

/// `count` JSON records of about 700 bytes, numbered from `from`.
fn records(from: usize, count: usize) -> Vec<Vec<u8>> {
    (from..from + count)
        .map(|n| serde_json::to_vec(&json!({ "n": n, "pad": "x".repeat(680) })).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_specification_and_every_failure_is_retried_as_the_same_request() {
    let script = vec![
        Answer::Status(500),
        Answer::Status(413),
        Answer::WrongId,
        Answer::MissingId,
        Answer::Slow(Duration::from_secs(3)),
        Answer::Reset,
    ];
    let receiver = EndpointReceiver::start(script, Some(ACCESS_KEY), Some(attributes())).await;
    let streams = endpoint_stream(
        "events",
        &receiver.url,
        "content_encoding: gzip\nmax_request_mib: 1\nrequest_timeout_seconds: 1\n",
    );
    let hydrant = Hydrant::start_with_env(&streams, &[("ENDPOINT_ACCESS_KEY", ACCESS_KEY)]);
    let sent = records(0, 3000);
    // The first 100 records make one batch of one request, which meets the whole script.
    hydrant.put_all("events", &sent[..100]).await;
    eventually(
        Duration::from_secs(60),
        "the first request taken",
        || async { (receiver.deduplicated().len() >= 100).then_some(()) },
    )
    .await;
    for batch in sent[100..].chunks(500) {
        hydrant.put_all("events", batch).await;
    }
    eventually(Duration::from_secs(60), "3000 records taken", || async {
        (receiver.deduplicated().len() >= 3000).then_some(())
    })
    .await;

    assert_eq!(receiver.violations(), Vec::<String>::new());
    let mut taken = receiver.deduplicated();
    taken.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(taken, expected, "each record once per request id");

    let received = receiver.received();
    // The first request met every scripted failure, then was taken: always the same id,
    // always the same records.
    let first = &received[0];
    assert_eq!(first.records, sent[..100]);
    let answers: Vec<Answer> = received
        .iter()
        .filter(|r| r.request_id == first.request_id)
        .map(|r| r.answer)
        .collect();
    assert_eq!(
        answers,
        [
            Answer::Status(500),
            Answer::Status(413),
            Answer::WrongId,
            Answer::MissingId,
            Answer::Slow(Duration::from_secs(3)),
            Answer::Reset,
            Answer::Ok,
        ]
    );
    let mut by_id: HashMap<&str, &Vec<Vec<u8>>> = HashMap::new();
    for request in &received {
        assert!(request.gzip, "content_encoding: gzip");
        assert!(
            request.json_len <= 1024 * 1024 + 2048,
            "a request of {} bytes is over max_request_mib",
            request.json_len
        );
        let previous = by_id.entry(&request.request_id).or_insert(&request.records);
        assert_eq!(
            *previous, &request.records,
            "request {} was sent again with other records",
            request.request_id
        );
    }
    assert!(
        by_id.len() >= 3,
        "3000 records of 700 bytes take several requests"
    );
    let log = hydrant.log();
    for code in [
        "HttpEndpoint.DestinationException",
        "HttpEndpoint.InvalidResponseFromDestination",
        "HttpEndpoint.RequestTimeout",
    ] {
        assert!(log.contains(code), "{code} is logged");
    }
    assert!(
        error_records(
            &hydrant.dir.path().join("hydrant-errors"),
            "http-endpoint-failed"
        )
        .is_empty(),
        "nothing outlasted the retry duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_repeats_request_ids_never_records_under_new_ones() {
    let receiver = EndpointReceiver::start(Vec::new(), Some(ACCESS_KEY), Some(attributes())).await;
    let streams = endpoint_stream("durable", &receiver.url, "concurrency: 2\n");
    // Every run of the service reads the key from its configuration's environment.
    let streams = streams.replace("${ENDPOINT_ACCESS_KEY}", ACCESS_KEY);
    let KilledRun {
        mut hydrant,
        acked,
        attempted,
        kills,
    } = produce_through_kills(&streams, "durable", 4, 0x4e7d9).await;
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    assert_eq!(kills, 4);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let id_of = |data: &[u8]| -> String {
        serde_json::from_slice::<Value>(data).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for data in receiver.deduplicated() {
        *delivered.entry(id_of(&data)).or_insert(0) += 1;
    }
    check_exactly_once(&delivered, &acked, &attempted);
    let mut request_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for (request_id, data) in receiver.taken() {
        request_ids
            .entry(id_of(&data))
            .or_default()
            .insert(request_id);
    }
    let under_two_ids: Vec<_> = request_ids
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(
        under_two_ids.is_empty(),
        "records sent under more than one request id: {:?}",
        under_two_ids.first()
    );
    assert_eq!(receiver.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_duration_leaves_every_record_in_http_endpoint_failed() {
    let receiver = EndpointReceiver::start(Vec::new(), Some(ACCESS_KEY), Some(attributes())).await;
    receiver.set_down(true);
    let streams = endpoint_stream(
        "outage",
        &receiver.url,
        "retry_duration_seconds: 2\nbackup:\n  mode: all\n  destination:\n    local: { path: backup }\n",
    );
    let hydrant = Hydrant::start_with_env(&streams, &[("ENDPOINT_ACCESS_KEY", ACCESS_KEY)]);
    let lost = records(0, 300);
    hydrant.put_all("outage", &lost).await;
    let backup = hydrant.dir.path().join("backup");
    let failed = eventually(Duration::from_secs(60), "300 error records", || async {
        let failed = error_records(&backup, "http-endpoint-failed");
        (failed.len() >= 300).then_some(failed)
    })
    .await;
    assert_eq!(failed.len(), 300);
    let mut raw: Vec<Vec<u8>> = failed.iter().map(raw_data).collect();
    raw.sort();
    let mut expected = lost.clone();
    expected.sort();
    assert_eq!(raw, expected, "each record once, as it was put");
    for error in &failed {
        assert_eq!(
            error["errorCode"], "HttpEndpoint.DestinationException",
            "{error}"
        );
        assert!(
            error["errorMessage"].as_str().unwrap().contains("503"),
            "{error}"
        );
        assert!(error["attemptsMade"].as_u64().unwrap() >= 2, "{error}");
    }

    // `backup.mode: all`: every record was also kept before it was sent.
    let backed_up: usize = files_under(&backup)
        .iter()
        .filter(|path| !path.starts_with(backup.join("http-endpoint-failed")))
        .map(|path| std::fs::read_to_string(path).unwrap().lines().count())
        .sum();
    assert_eq!(backed_up, 300);

    // Once the endpoint is back, new records are delivered; the failed ones stay failed.
    receiver.set_down(false);
    let later = records(300, 10);
    hydrant.put_all("outage", &later).await;
    eventually(Duration::from_secs(30), "10 later records", || async {
        (receiver.deduplicated().len() >= 10).then_some(())
    })
    .await;
    let mut taken = receiver.deduplicated();
    taken.sort();
    assert_eq!(taken, later);
}

#[test]
fn endpoint_settings_are_checked_where_written() {
    let config = "streams:\n  s:\n    buffer: { size_mib: 100 }\n    compression: gzip\n    destination:\n      http_endpoint:\n        url: ftp://receiver\n        max_request_mib: 65\n        concurrency: 0\n        request_timeout_seconds: 181\n        retry_duration_seconds: 7201\n        content_encoding: brotli\n";
    let (ok, output) = validate_config(config);
    assert!(!ok);
    assert!(
        output.contains(":12:27: unknown variant `brotli`, expected one of none, gzip"),
        "{output}"
    );
    let config = config.replace("        content_encoding: brotli\n", "");
    let (ok, output) = validate_config(&config);
    assert!(!ok);
    for expected in [
        ":7:14: stream `s`: `url` must be an http:// or https:// URL, got `ftp://receiver`",
        ":8:26: stream `s`: `max_request_mib` must be between 1 and 64, got 65",
        ":9:22: stream `s`: `concurrency` must be between 1 and 32, got 0",
        ":10:34: stream `s`: `request_timeout_seconds` must be between 1 and 180, got 181",
        ":11:33: stream `s`: `retry_duration_seconds` must be between 0 and 7200, got 7201",
        ":3:25: stream `s`: an HTTP endpoint takes `buffer.size_mib` between 1 and 64, got 100",
        ":4:18: stream `s`: an HTTP endpoint takes records as they are; remove the stream's `compression`",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
}
