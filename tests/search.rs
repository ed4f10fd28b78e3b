//! The opensearch destination: documents land in a real OpenSearch-compatible server
//! (osmem-server, started by the test script) and are found with `_count` and `_search`;
//! against a fault-injecting bulk server, only the items refused for now are sent again,
//! items refused for good go to the error output, and nothing is indexed twice — not even
//! across kill -9.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn search_get(path: &str) -> Value {
    let url = format!("{}/{path}", servers().search_endpoint);
    let response = reqwest::get(&url).await.unwrap();
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn documents_are_found_in_the_search_server_and_refused_ones_are_kept_with_their_reasons() {
    let index = unique_name("logs");
    let bucket = new_bucket("search-backup");
    let streams = format!(
        "logs:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    opensearch:\n      \
         endpoint: {}\n      index: {index}\n      index_rotation: day\n      compression: gzip\n      \
         initial_backoff_ms: 50\n      backup:\n        mode: all\n        destination:\n{}",
        servers().search_endpoint,
        indent(&s3_destination_yaml(&bucket, "backup/", None), 10)
    );
    let hydrant = Hydrant::start(&streams);
    // The first document maps `status` as a number, so a later text value is refused for
    // good by the server itself.
    let first = json!({ "n": 0, "status": 200, "message": "first" });
    hydrant
        .put_all("logs", &[serde_json::to_vec(&first).unwrap()])
        .await;
    eventually(Duration::from_secs(30), "the first document", || async {
        let count = search_get(&format!("{index}-*/_count")).await;
        (count["count"] == 1).then_some(())
    })
    .await;

    let mut records: Vec<Vec<u8>> = (1..200)
        .map(|n| {
            serde_json::to_vec(&json!({
                "n": n,
                "status": 200 + n % 5,
                "message": format!("request {n} served"),
                "user": { "name": format!("user-{n}") },
            }))
            .unwrap()
        })
        .collect();
    let not_objects: Vec<Vec<u8>> = vec![b"[1,2,3]".to_vec(), b"plain text line".to_vec()];
    let refused = br#"{"n": 500, "status": "not a number"}"#.to_vec();
    records.extend(not_objects.iter().cloned());
    records.push(refused.clone());
    let answer = hydrant.put_batch("logs", &records).await;
    assert_eq!(answer["FailedPutCount"], 0, "{answer}");
    let record_ids: Vec<String> = answer["RequestResponses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RecordId"].as_str().unwrap().to_string())
        .collect();

    eventually(Duration::from_secs(30), "200 documents", || async {
        let count = search_get(&format!("{index}-*/_count")).await;
        (count["count"] == 200).then_some(())
    })
    .await;
    let errors = eventually(
        Duration::from_secs(30),
        "three failed documents",
        || async {
            let found = failed_documents(&bucket).await;
            (found.len() == 3).then_some(found)
        },
    )
    .await;

    // A document is found by its content, under the id PutRecordBatch returned for it.
    let hits = search_post(
        &format!("{index}-*/_search"),
        json!({ "query": { "match": { "message": "request 42 served" } }, "size": 1 }),
    )
    .await;
    let hit = &hits["hits"]["hits"][0];
    assert_eq!(hit["_source"]["n"], 42, "{hits}");
    assert_eq!(hit["_source"]["user"]["name"], "user-42");
    assert_eq!(hit["_id"].as_str().unwrap(), record_ids[41]);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let index_name = hit["_index"].as_str().unwrap();
    assert!(
        index_name == format!("{index}-{today}") || index_name == format!("{index}-{yesterday}"),
        "daily index, got {index_name}"
    );

    for bad in &not_objects {
        let error = errors
            .iter()
            .find(|e| raw_data(e) == *bad)
            .unwrap_or_else(|| {
                panic!(
                    "{:?} not in the error output: {errors:?}",
                    String::from_utf8_lossy(bad)
                )
            });
        assert_eq!(error["errorCode"], "OpenSearch.NotJsonObject");
        assert_eq!(error["attemptsMade"], 0);
        assert!(error["esIndexName"].as_str().unwrap().starts_with(&index));
    }
    let error = errors
        .iter()
        .find(|e| raw_data(e) == refused)
        .expect("the refused document is in the error output");
    assert_eq!(error["errorCode"], "400");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .contains("mapper_parsing_exception"),
        "{error}"
    );
    assert_eq!(error["esDocumentId"].as_str().unwrap(), record_ids[201]);
    assert_eq!(error["esIndexName"].as_str().unwrap(), index_name);
    for field in ["arrivalTimestamp", "attemptEndingTimestamp", "esTypeName"] {
        assert!(error.get(field).is_some(), "{field} missing from {error}");
    }

    // `backup.mode: all` keeps every document in the backup bucket too.
    let backup = Bucket::new(&bucket);
    let mut backed_up = HashSet::new();
    for key in backup.keys("backup/").await {
        let (body, _) = backup.get(&key).await;
        for line in String::from_utf8(body).unwrap().lines() {
            let doc: Value = serde_json::from_str(line).unwrap();
            backed_up.insert(doc["n"].as_i64().unwrap());
        }
    }
    assert_eq!(backed_up.len(), 201, "199 + the first + the refused one");
}

/// The `AmazonOpenSearchService-failed` records in the backup bucket.
#[tokio::test]
async fn a_partitioned_stream_indexes_each_document_into_the_index_of_its_keys() {
    let base = unique_name("part");
    let streams = format!(
        "logs:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  partitioning:\n    query: '{{service: .service}}'\n  destination:\n    opensearch:\n      \
         endpoint: {}\n      index: {base}-!{{partitionKeyFromQuery:service}}\n      index_rotation: day\n      \
         backup:\n        destination:\n          local: {{ path: errors }}\n",
        servers().search_endpoint,
    );
    let mut hydrant = Hydrant::start(&streams);
    let records: Vec<Vec<u8>> = (0..30)
        .map(|n| {
            let service = ["API", "Web/Front", "db"][n % 3];
            serde_json::to_vec(&json!({ "n": n, "service": service })).unwrap()
        })
        .chain([br#"{"n": 99}"#.to_vec()])
        .collect();
    hydrant.put_all("logs", &records).await;
    for (index, expected) in [("api", 10), ("web_front", 10), ("db", 10)] {
        eventually(
            Duration::from_secs(30),
            "the partition's documents",
            || async {
                let count = search_get(&format!("{base}-{index}-*/_count")).await;
                (count["count"] == expected).then_some(())
            },
        )
        .await;
    }
    // The record without keys was reported before the batch's documents were sent.
    let stats = hydrant.stats("logs").await;
    assert_eq!(stats["partitioning_failures"], 1, "{stats}");
    assert_eq!(
        stats["active_partitions"], 0,
        "every partition was delivered: {stats}"
    );
    let metrics = hydrant.metrics().await;
    assert!(
        metrics.contains("hydrant_partitioning_failures_total{stream=\"logs\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hydrant_active_partitions{stream=\"logs\"} 0"),
        "{metrics}"
    );
    let hits = search_post(
        &format!("{base}-web_front-*/_search"),
        json!({ "query": { "match_all": {} }, "size": 100 }),
    )
    .await;
    for hit in hits["hits"]["hits"].as_array().unwrap() {
        assert_eq!(hit["_source"]["service"], "Web/Front", "{hit}");
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string();
        let index = hit["_index"].as_str().unwrap();
        assert!(
            index == format!("{base}-web_front-{today}")
                || index == format!("{base}-web_front-{yesterday}"),
            "{index}"
        );
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let failed = error_records(&hydrant.dir.path().join("errors"), "partitioning-failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        failed[0]["errorCode"],
        "DynamicPartitioning.MetadataExtractionFailed"
    );
    assert_eq!(raw_data(&failed[0]), br#"{"n": 99}"#);
}

async fn failed_documents(bucket: &str) -> Vec<Value> {
    let backup = Bucket::new(bucket);
    let mut found = Vec::new();
    for key in backup.keys("AmazonOpenSearchService-failed/").await {
        let (body, _) = backup.get(&key).await;
        for line in String::from_utf8(body).unwrap().lines() {
            found.push(serde_json::from_str(line).unwrap());
        }
    }
    found
}

fn fault_stream(name: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "{name}:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    opensearch:\n      \
         endpoint: {endpoint}\n      index: events\n      initial_backoff_ms: 20\n      max_backoff_seconds: 1\n      \
         max_bulk_mib: 1\n      concurrency: 3\n{}      backup:\n        destination:\n          local: {{ path: errors }}\n",
        indent(extra, 6)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_items_refused_for_now_are_sent_again_and_nothing_is_indexed_twice() {
    // The first two requests are refused whole; then each document's fate decides.
    let server = BulkServer::start(2, Some("Basic ZWxhc3RpYzpzM2NyZXQ=")).await;
    let streams = fault_stream(
        "faults",
        &server.url,
        "compression: gzip\nretry_duration_seconds: 3\nauth:\n  basic:\n    username: elastic\n    password: ${SEARCH_PASSWORD}\n",
    );
    let hydrant = Hydrant::start_with_env(&streams, &[("SEARCH_PASSWORD", "s3cret")]);
    let fates = [
        Fate::Ok,
        Fate::RetryOnce,
        Fate::Ok,
        Fate::RejectedTwice,
        Fate::UnavailableOnce,
        Fate::Ok,
        Fate::Bad,
        Fate::Busy,
    ];
    // ~3 MiB: several bulk requests of at most 1 MiB, sent three at a time.
    let records: Vec<Vec<u8>> = (0..8000)
        .map(|n| {
            let fate = fates[n % fates.len()];
            let mut doc = json!({ "n": n, "pad": "x".repeat(300) });
            if fate != Fate::Ok {
                doc["fate"] = json!(fate.name());
            }
            serde_json::to_vec(&doc).unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for batch in records.chunks(500) {
        let answer = hydrant.put_batch("faults", batch).await;
        assert_eq!(answer["FailedPutCount"], 0, "{answer}");
        ids.extend(
            answer["RequestResponses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["RecordId"].as_str().unwrap().to_string()),
        );
    }
    let expected_failures = records.len() / fates.len() * 2;
    let errors = eventually(Duration::from_secs(60), "every failed document", || async {
        let errors = error_records(
            &hydrant.dir.path().join("errors"),
            "AmazonOpenSearchService-failed",
        );
        (errors.len() >= expected_failures).then_some(errors)
    })
    .await;
    let summary: HashMap<String, usize> = errors.iter().fold(HashMap::new(), |mut m, e| {
        *m.entry(format!("{} {}", e["errorCode"], e["attemptsMade"]))
            .or_default() += 1;
        m
    });
    assert_eq!(errors.len(), expected_failures, "{summary:?}");

    let documents = server.documents();
    let attempts = server.attempts();
    for (n, id) in ids.iter().enumerate() {
        let fate = fates[n % fates.len()];
        let sent = attempts.get(id).copied().unwrap_or(0);
        let expected = match fate {
            Fate::Ok | Fate::Bad => 1..=1,
            Fate::RetryOnce | Fate::UnavailableOnce => 2..=2,
            Fate::RejectedTwice => 3..=3,
            // Refused until the 3 s retry duration ran out.
            Fate::Busy => 2..=u32::MAX,
        };
        assert!(
            expected.contains(&sent),
            "document {n} ({fate:?}) was sent {sent} times, expected {expected:?}"
        );
        let indexed = documents.get(id);
        match fate {
            Fate::Bad | Fate::Busy => assert!(indexed.is_none(), "document {n} ({fate:?}) indexed"),
            _ => {
                let (index, doc) =
                    indexed.unwrap_or_else(|| panic!("document {n} ({fate:?}) not indexed"));
                assert_eq!(index, "events");
                assert_eq!(doc["n"], n);
            }
        }
    }
    assert_eq!(
        documents.len(),
        records.len() - expected_failures,
        "every other document indexed once, under its own id"
    );

    for error in &errors {
        let doc: Value = serde_json::from_slice(&raw_data(error)).unwrap();
        let n = doc["n"].as_u64().unwrap() as usize;
        assert_eq!(error["esDocumentId"].as_str().unwrap(), ids[n]);
        assert_eq!(error["esIndexName"], "events");
        match fates[n % fates.len()] {
            Fate::Bad => {
                assert_eq!(error["errorCode"], "400");
                // 2 when its first request was one of those refused whole.
                let made = error["attemptsMade"].as_u64().unwrap();
                assert!((1..=2).contains(&made), "{error}");
                assert!(
                    error["errorMessage"]
                        .as_str()
                        .unwrap()
                        .contains("mapper_parsing_exception")
                );
            }
            Fate::Busy => {
                assert_eq!(error["errorCode"], "429");
                assert!(error["attemptsMade"].as_u64().unwrap() >= 2, "{error}");
            }
            other => panic!("document {n} ({other:?}) should not have failed: {error}"),
        }
    }

    let (requests, refused, gzip) = server.request_counts();
    assert_eq!(refused, 2);
    assert_eq!(gzip, requests, "every request body is gzip");
    assert!(
        server
            .authorizations()
            .iter()
            .all(|a| a == "Basic ZWxhc3RpYzpzM2NyZXQ="),
        "credentials from ${{SEARCH_PASSWORD}} on every request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_indexing_neither_loses_nor_duplicates_a_document() {
    let server = BulkServer::start(0, None).await;
    let streams = fault_stream("durable", &server.url, "");
    let KilledRun {
        mut hydrant,
        acked,
        attempted,
        ..
    } = produce_through_kills(&streams, "durable", 4, 0x5ea2c4).await;
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    // Each record's `id` field, counted over the documents in the index.
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for (_, (_, doc)) in server.documents() {
        *delivered
            .entry(doc["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    check_exactly_once(&delivered, &acked, &attempted);

    // Killed once more after the cluster indexed a batch but before it answered: the
    // restart sends those documents again under the same ids, which overwrite themselves.
    server.hold_answers(true);
    let before = server.documents().len();
    let hydrant = Hydrant::start_in(hydrant.kill(), "", &streams, &[]);
    let records: Vec<Vec<u8>> = (0..50)
        .map(|n| serde_json::to_vec(&json!({ "id": format!("held-{n}") })).unwrap())
        .collect();
    hydrant.put_all("durable", &records).await;
    eventually(
        Duration::from_secs(30),
        "the held batch indexed",
        || async { (server.documents().len() == before + 50).then_some(()) },
    )
    .await;
    let dir = hydrant.kill();
    server.hold_answers(false);
    let mut hydrant = Hydrant::start_in(dir, "", &streams, &[]);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let attempts = server.attempts();
    let held: Vec<u32> = server
        .documents()
        .iter()
        .filter(|(_, (_, doc))| doc["id"].as_str().unwrap().starts_with("held-"))
        .map(|(id, _)| attempts[id])
        .collect();
    assert_eq!(held.len(), 50, "each held record is one document");
    assert!(
        held.iter().all(|&n| n == 2),
        "each held document was sent again after the restart: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_shrink_when_the_cluster_says_they_are_too_large() {
    let server = BulkServer::start(0, None).await;
    let streams =
        fault_stream("large", &server.url, "").replace("max_bulk_mib: 1", "max_bulk_mib: 4");
    let streams = streams.replace("size_mib: 1,", "size_mib: 8,");
    let hydrant = Hydrant::start(&streams);
    // ~3 MiB in one batch: first requests of up to 4 MiB, over the server's limit.
    let records: Vec<Vec<u8>> = (0..3000)
        .map(|n| serde_json::to_vec(&json!({ "n": n, "pad": "y".repeat(1000) })).unwrap())
        .collect();
    for batch in records.chunks(500) {
        hydrant.put_all("large", batch).await;
    }
    eventually(Duration::from_secs(60), "3000 documents", || async {
        (server.documents().len() == 3000).then_some(())
    })
    .await;
    assert!(
        hydrant.log().contains("413 Payload Too Large"),
        "the first requests were too large"
    );
    assert!(
        error_records(
            &hydrant.dir.path().join("errors"),
            "AmazonOpenSearchService-failed"
        )
        .is_empty(),
        "nothing failed for good"
    );
    assert!(
        server.attempts().values().all(|n| *n == 1),
        "each document indexed by one item"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reaches_the_cluster_and_reports_what_stops_it() {
    let config = |endpoint: &str, auth: &str| {
        format!(
            "streams:\n  s:\n    destination:\n      elasticsearch:\n        endpoint: {endpoint}\n        index: app\n{}",
            indent(auth, 8)
        )
    };
    let (ok, output) = validate_config(&config(&servers().search_endpoint, ""));
    assert!(ok, "{output}");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, output) = validate_config(&config(&closed, ""));
    assert!(!ok);
    assert!(output.contains("stream `s`"), "{output}");
    assert!(output.contains("OpenSearch.Unavailable"), "{output}");
    assert!(output.contains(&closed), "{output}");

    let server = BulkServer::start(0, Some("ApiKey right-key")).await;
    let (ok, output) = validate_config(&config(&server.url, "auth: { api_key: wrong-key }"));
    assert!(!ok);
    assert!(output.contains("OpenSearch.AccessDenied"), "{output}");
    let (ok, output) = validate_config(&config(&server.url, "auth: { api_key: right-key }"));
    assert!(ok, "{output}");

    let (ok, output) = validate_config(
        "streams:\n  s:\n    format: ndjson\n    destination:\n      opensearch:\n        endpoint: ftp://x\n        index: App\n        retry_duration_seconds: 9000\n        concurrency: 0\n",
    );
    assert!(!ok);
    for expected in [
        "hydrant.yaml:3:13: stream `s`: a search destination takes JSON records as they are",
        "hydrant.yaml:6:19: stream `s`: endpoint must be an http:// or https:// URL",
        "hydrant.yaml:7:16: stream `s`: index `App` must be lowercase",
        "hydrant.yaml:8:33: stream `s`: `retry_duration_seconds` must be between 0 and 7200",
        "hydrant.yaml:9:22: stream `s`: `concurrency` must be between 1 and 32",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
}

#[tokio::test]
async fn the_log_shipping_example_indexes_ndjson_logs_into_a_daily_index() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/logs-to-search.yaml"),
    )
    .unwrap();
    let index = unique_name("app-logs");
    let config = example
        .replace("listen: 127.0.0.1:4573", "listen: 127.0.0.1:0")
        .replace("index: app-logs", &format!("index: {index}"))
        .replace(
            "${SEARCH_ENDPOINT:-http://127.0.0.1:9200}",
            &servers().search_endpoint,
        );
    assert!(config.contains(&index) && config.contains(&servers().search_endpoint));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs-to-search.yaml");
    std::fs::write(&path, config).unwrap();
    let mut hydrant = Hydrant::start_with_file(&path, dir);
    let lines: String = (0..50)
        .map(|n| format!("{{\"level\":\"info\",\"msg\":\"user {n} logged in\",\"n\":{n}}}\n"))
        .collect();
    let (status, answer) = hydrant.post_ndjson("app-logs", &lines).await;
    assert_eq!(status, 200, "{answer}");
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let count = search_get(&format!("{index}-*/_count")).await;
    assert_eq!(count["count"], 50, "{count}");
    let hits = search_post(
        &format!("{index}-*/_search"),
        json!({ "query": { "match": { "msg": "user 7 logged in" } }, "size": 1 }),
    )
    .await;
    assert_eq!(hits["hits"]["hits"][0]["_source"]["n"], 7, "{hits}");
    let daily = format!("{index}-{}", chrono::Utc::now().format("%Y-%m-%d"));
    let yesterday = format!(
        "{index}-{}",
        (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d")
    );
    let found = hits["hits"]["hits"][0]["_index"].as_str().unwrap();
    assert!(found == daily || found == yesterday, "{found}");
}
