//! The same malformed JSON records sent to an NDJSON stream, a Parquet stream, a PostgreSQL
//! table and a search index: every format gives the same verdict (the good records are
//! written, each bad one is refused alone with the same reason), and nothing panics.

mod common;

use std::collections::HashMap;

use arrow_array::Array as _;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

/// Each malformed record with the words its reason must contain.
fn malformed() -> Vec<(Vec<u8>, &'static str)> {
    let deep = format!(
        r#"{{"id": 19, "uid": "deep", "d": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    vec![
        (
            br#"{"id": 7, "uid": "trailing-comma", }"#.to_vec(),
            "trailing comma",
        ),
        (
            br#"{"id": 8 "uid": "missing-comma"}"#.to_vec(),
            "expected `,` or `}`",
        ),
        (
            br#"{"id": 9,, "uid": "double"}"#.to_vec(),
            "key must be a string",
        ),
        (
            br#"{"id": 10, "uid": "array", "tags": [1,2,]}"#.to_vec(),
            "trailing comma",
        ),
        (b", ,".to_vec(), "expected value"),
        (
            b"{\"id\": 11, \"uid\": \"bad \xff utf-8\"}".to_vec(),
            "invalid unicode code point",
        ),
        (
            br#"{"id": 12, "uid": "\ud800"}"#.to_vec(),
            "unexpected end of hex escape",
        ),
        (
            br#"{"id": 13, "uid": "\udc00 alone"}"#.to_vec(),
            "lone leading surrogate",
        ),
        (
            br#"{"id": 14, "uid": "nan", "x": NaN}"#.to_vec(),
            "expected value",
        ),
        (
            br#"{"id": 15, "uid": "dup", "uid": "again"}"#.to_vec(),
            "appears twice",
        ),
        (
            br#"{"id": 16, "uid": "two"} {"id": 17}"#.to_vec(),
            "trailing characters",
        ),
        (br#"{"id": 18, "uid": "cut""#.to_vec(), "EOF while parsing"),
        (deep.into_bytes(), "recursion limit exceeded"),
    ]
}

fn good(id: i64) -> Vec<u8> {
    format!(r#"{{"id": {id}, "uid": "good-{id}"}}"#).into_bytes()
}

/// The error records (any error type) under `dir`, by their raw record.
fn errors_by_record(dir: &std::path::Path) -> HashMap<Vec<u8>, Value> {
    let mut found = HashMap::new();
    if !dir.exists() {
        return found;
    }
    for file in files_under(dir) {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let error: Value = serde_json::from_str(line).unwrap();
            let previous = found.insert(raw_data(&error), error);
            assert!(
                previous.is_none(),
                "a record reported twice in {}",
                file.display()
            );
        }
    }
    found
}

fn ndjson_ids(dir: &std::path::Path) -> Vec<i64> {
    files_under(dir)
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["id"]
                        .as_i64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn parquet_ids(dir: &std::path::Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for file in files_under(dir) {
        let bytes = bytes::Bytes::from(std::fs::read(file).unwrap());
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let column = batch
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap()
                .clone();
            ids.extend(column.iter().map(Option::unwrap));
        }
    }
    ids
}

#[tokio::test]
async fn every_format_refuses_the_same_malformed_records_for_the_same_reason() {
    let client = pg_client().await;
    let table = format!(
        "malformed_{:x}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int8, uid text)"))
        .await
        .unwrap();
    let index = unique_name("malformed");
    let streams = format!(
        "nd:\n  format: ndjson\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n    local: {{ path: nd, prefix: data/ }}\n\
         pq:\n  format: parquet\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  parquet:\n    schema:\n      - {{ name: id, type: int64 }}\n      - {{ name: uid, type: string }}\n  destination:\n    local: {{ path: pq, prefix: data/ }}\n\
         pg:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n{}\
         se:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n    opensearch:\n      endpoint: {}\n      index: {index}\n      backup:\n        destination:\n          local: {{ path: se }}\n",
        indent(
            &postgres_destination_yaml(&table, "- { name: id }\n- { name: uid }\n", None),
            4
        ),
        servers().search_endpoint,
    );
    let mut hydrant = Hydrant::start(&streams);
    let bad = malformed();
    let mut records: Vec<Vec<u8>> = (0..5).map(good).collect();
    for (i, (record, _)) in bad.iter().enumerate() {
        records.insert(1 + i % 4, record.clone());
    }
    for stream in ["nd", "pq", "pg", "se"] {
        hydrant.put_all(stream, &records).await;
    }
    // Shutting down delivers every open batch.
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let log = hydrant.log();
    assert!(!log.contains("panicked"), "{log}");

    let dir = hydrant.dir.path();
    let mut delivered = HashMap::new();
    delivered.insert("nd", ndjson_ids(&dir.join("nd/data")));
    delivered.insert("pq", parquet_ids(&dir.join("pq/data")));
    delivered.insert(
        "pg",
        client
            .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, i64>(0))
            .collect(),
    );
    let count = reqwest::get(format!("{}/{index}*/_count", servers().search_endpoint))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let mut search_ids = Vec::new();
    if count["count"].as_i64() > Some(0) {
        let hits = reqwest::Client::new()
            .post(format!("{}/{index}*/_search", servers().search_endpoint))
            .header("content-type", "application/json")
            .body(r#"{"size": 100}"#)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        for hit in hits["hits"]["hits"].as_array().unwrap() {
            search_ids.push(hit["_source"]["id"].as_i64().unwrap());
        }
    }
    delivered.insert("se", search_ids);

    let errors = [
        (
            "nd",
            errors_by_record(&dir.join("nd/format-conversion-failed")),
        ),
        (
            "pq",
            errors_by_record(&dir.join("pq/format-conversion-failed")),
        ),
        (
            "pg",
            errors_by_record(&dir.join("errors/format-conversion-failed")),
        ),
        ("se", errors_by_record(&dir.join("se"))),
    ];
    for (stream, errors) in &errors {
        let mut ids = delivered[stream].clone();
        ids.sort();
        assert_eq!(
            ids,
            [0, 1, 2, 3, 4],
            "stream {stream}: only the good records"
        );
        assert_eq!(errors.len(), bad.len(), "stream {stream}: {errors:#?}");
        for (record, words) in &bad {
            let error = errors.get(record).unwrap_or_else(|| {
                panic!(
                    "stream {stream}: {:?} is not in the error output",
                    String::from_utf8_lossy(&record[..record.len().min(60)])
                )
            });
            let message = error["errorMessage"].as_str().unwrap();
            assert!(
                message.starts_with("the record is not valid JSON: ") && message.contains(words),
                "stream {stream}: {message} should name {words}"
            );
            let code = error["errorCode"].as_str().unwrap();
            let expected = if *stream == "se" {
                "OpenSearch.NotJsonObject"
            } else {
                "DataFormatConversion.ParseError"
            };
            assert_eq!(code, expected, "stream {stream}");
        }
    }
}
