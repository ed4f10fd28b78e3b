//! `format: parquet` against the real binary and the S3 server: the files are read back
//! with the parquet crate and with DuckDB (an outside reader), and must hold every good
//! record once with the values and declared types sent; bad records of the same batch go
//! alone to the `format-conversion-failed` error output.

mod common;

use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMicrosecondType, TimestampMillisecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use base64::Engine as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

const SCHEMA: &str = "
schema:
  - { name: id, type: int64, nullable: false }
  - { name: name, type: string }
  - { name: active, type: bool }
  - { name: small, type: int32 }
  - { name: ratio, type: float }
  - { name: score, type: double }
  - { name: at, type: timestamptz(ms) }
  - { name: local, type: timestamp(us) }
  - { name: day, type: date }
  - { name: price, type: 'decimal(10,2)' }
  - { name: blob, type: binary }
  - { name: tags, type: 'list<string>' }
  - { name: user, type: 'struct<name:string, level:int32>' }
  - { name: counts, type: 'map<string,int64>' }
compression: zstd
";

const RECORDS: i64 = 400;

fn base_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Record `n`: every type, with timestamps sent in all three accepted forms and keys in
/// other cases than the columns'.
fn record(n: i64) -> Value {
    let at = base_time() + Duration::seconds(n);
    let at_value = match n % 3 {
        0 => json!(at.to_rfc3339()),
        1 => json!(at.timestamp()),
        _ => json!(at.timestamp_millis()),
    };
    json!({
        "ID": n,
        "name": if n % 7 == 0 { Value::Null } else { json!(format!("user-{n}")) },
        "active": n % 2 == 0,
        "small": -n,
        "ratio": n as f64 / 4.0,
        "score": n as f64 * 1.5,
        "at": at_value,
        "local": format!("2024-01-01T00:00:00.{:06}", n),
        "day": (NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + Duration::days(n)).to_string(),
        "price": format!("{n}.25"),
        "blob": base64::engine::general_purpose::STANDARD.encode([n as u8, 0xff]),
        "tags": [format!("t{n}"), "all"],
        "User": { "Name": format!("u{n}"), "level": n % 5 },
        "counts": { "Clicks": n, "views": 2 * n },
        "ignored": { "deep": [1, 2, 3] }
    })
}

/// Records that cannot be rows, each with the error code it must get and a word its
/// message must contain.
fn bad_records() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    vec![
        (
            b"this is not json".to_vec(),
            "DataFormatConversion.ParseError",
            "not valid JSON",
        ),
        (
            br#"{"id": "seven"}"#.to_vec(),
            "DataFormatConversion.MalformedData",
            "column 'id'",
        ),
        (
            br#"{"name": "no id at all"}"#.to_vec(),
            "DataFormatConversion.MalformedData",
            "column 'id' is not nullable",
        ),
        (
            br#"{"id": 1, "at": "next tuesday"}"#.to_vec(),
            "DataFormatConversion.MalformedData",
            "column 'at'",
        ),
    ]
}

#[tokio::test]
async fn json_becomes_parquet_that_the_parquet_crate_and_duckdb_read_back() {
    let bucket = new_bucket("parquet");
    let streams = format!(
        "rows:\n  format: parquet\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  parquet:\n{}  destination:\n{}",
        indent(SCHEMA.trim_start(), 4),
        indent(&s3_destination_yaml(&bucket, "tables/rows/", None), 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let mut sent: Vec<Vec<u8>> = (0..RECORDS)
        .map(|n| serde_json::to_vec(&record(n)).unwrap())
        .collect();
    let bad = bad_records();
    for (i, (data, _, _)) in bad.iter().enumerate() {
        sent.insert(50 + i * 90, data.clone());
    }
    hydrant.put_all("rows", &sent).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let store = Bucket::new(&bucket);
    let keys = store.keys("tables/rows/").await;
    assert_eq!(keys.len(), 1, "one batch, one file: {keys:?}");
    assert!(keys[0].ends_with(".parquet"), "{}", keys[0]);
    assert_eq!(
        store.content_type(&keys[0]).await.as_deref(),
        Some("application/vnd.apache.parquet")
    );
    let (file, encoding) = store.get(&keys[0]).await;
    assert_eq!(encoding, None, "Parquet compresses inside the file");

    let batch = read_with_parquet_crate(&file);
    check_rows(&batch);
    check_with_duckdb(&file);

    let errors = store.keys("format-conversion-failed/").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (text, _) = store.get(&errors[0]).await;
    let failures: Vec<Value> = String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(failures.len(), bad.len());
    for (failure, (data, code, words)) in failures.iter().zip(&bad) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(failure["rawData"].as_str().unwrap())
            .unwrap();
        assert_eq!(&raw, data);
        assert_eq!(failure["errorCode"], *code, "{failure}");
        let message = failure["errorMessage"].as_str().unwrap();
        assert!(message.contains(words), "{message} should mention {words}");
    }
}

fn read_with_parquet_crate(file: &[u8]) -> RecordBatch {
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(file)).unwrap();
    let meta = reader.metadata().clone();
    let compression = meta.row_group(0).column(0).compression();
    assert!(
        matches!(compression, parquet::basic::Compression::ZSTD(_)),
        "{compression:?}"
    );
    let batches: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Every good record once, in order, with the values sent.
fn check_rows(batch: &RecordBatch) {
    assert_eq!(batch.num_rows() as i64, RECORDS);
    let schema = batch.schema();
    assert!(
        !schema.field(0).is_nullable(),
        "id is declared not nullable"
    );
    assert_eq!(
        schema.field_with_name("at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert_eq!(
        schema.field_with_name("local").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    let column = |name: &str| batch.column(schema.index_of(name).unwrap());
    let id = column("id").as_primitive::<Int64Type>();
    let name = column("name").as_string::<i32>();
    let active = column("active").as_boolean();
    let small = column("small").as_primitive::<Int32Type>();
    let ratio = column("ratio").as_primitive::<Float32Type>();
    let score = column("score").as_primitive::<Float64Type>();
    let at = column("at").as_primitive::<TimestampMillisecondType>();
    let local = column("local").as_primitive::<TimestampMicrosecondType>();
    let day = column("day").as_primitive::<Date32Type>();
    let price = column("price").as_primitive::<Decimal128Type>();
    let blob = column("blob").as_binary::<i32>();
    let tags = column("tags").as_list::<i32>();
    let user = column("user").as_struct();
    let counts = column("counts").as_map();
    let epoch_day = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let local_base = NaiveDate::from_ymd_opt(2024, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    for row in 0..batch.num_rows() {
        let n = row as i64;
        assert_eq!(id.value(row), n);
        if n % 7 == 0 {
            assert!(name.is_null(row));
        } else {
            assert_eq!(name.value(row), format!("user-{n}"));
        }
        assert_eq!(active.value(row), n % 2 == 0);
        assert_eq!(small.value(row), -n as i32);
        assert_eq!(ratio.value(row), n as f32 / 4.0);
        assert_eq!(score.value(row), n as f64 * 1.5);
        assert_eq!(
            at.value(row),
            (base_time() + Duration::seconds(n)).timestamp_millis(),
            "row {n}"
        );
        assert_eq!(local.value(row), local_base + n);
        let expected_day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + Duration::days(n);
        assert_eq!(day.value(row) as i64, (expected_day - epoch_day).num_days());
        assert_eq!(price.value(row), n as i128 * 100 + 25);
        assert_eq!(blob.value(row), [n as u8, 0xff]);
        let row_tags = tags.value(row);
        let row_tags = row_tags.as_string::<i32>();
        assert_eq!(row_tags.value(0), format!("t{n}"));
        assert_eq!(row_tags.value(1), "all");
        assert_eq!(
            user.column(0).as_string::<i32>().value(row),
            format!("u{n}"),
            "struct fields match ignoring case"
        );
        assert_eq!(
            user.column(1).as_primitive::<Int32Type>().value(row),
            (n % 5) as i32
        );
        let entries = counts.value(row);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries.column(1).as_primitive::<Int64Type>();
        assert_eq!(keys.value(0), "Clicks", "map keys keep their case");
        assert_eq!((values.value(0), values.value(1)), (n, 2 * n));
    }
}

/// DuckDB sees the declared types and the values sent.
fn check_with_duckdb(file: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    std::fs::write(&path, file).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/read_parquet_duckdb.py"
    );
    let stdout = stdout_of(
        Command::new(&servers().python).arg(script).arg(&path),
        "DuckDB reading the file",
    );
    let read: Value = serde_json::from_slice(&stdout).unwrap();
    let types = &read["types"];
    for (column, expected) in [
        ("id", "BIGINT"),
        ("name", "VARCHAR"),
        ("active", "BOOLEAN"),
        ("small", "INTEGER"),
        ("ratio", "FLOAT"),
        ("score", "DOUBLE"),
        ("at", "TIMESTAMP WITH TIME ZONE"),
        ("local", "TIMESTAMP"),
        ("day", "DATE"),
        ("price", "DECIMAL(10,2)"),
        ("blob", "BLOB"),
        ("tags", "VARCHAR[]"),
        ("user", "STRUCT(\"name\" VARCHAR, \"level\" INTEGER)"),
        ("counts", "MAP(VARCHAR, BIGINT)"),
    ] {
        assert_eq!(types[column], expected, "DuckDB type of {column}: {types}");
    }
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len() as i64, RECORDS);
    for (n, row) in rows.iter().enumerate() {
        let n = n as i64;
        let sent = record(n);
        assert_eq!(row["id"], n);
        assert_eq!(row["name"], sent["name"]);
        assert_eq!(row["active"], sent["active"]);
        assert_eq!(row["small"], sent["small"]);
        assert_eq!(row["score"], sent["score"]);
        let at = (base_time() + Duration::seconds(n))
            .naive_utc()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string();
        assert_eq!(row["at"], at, "row {n}");
        assert_eq!(row["local"], sent["local"]);
        assert_eq!(row["day"], sent["day"]);
        assert_eq!(row["price"], sent["price"]);
        assert_eq!(row["blob"], sent["blob"]);
        assert_eq!(row["tags"], sent["tags"]);
        assert_eq!(
            row["user"],
            json!({"name": sent["User"]["Name"], "level": sent["User"]["level"]})
        );
        assert_eq!(row["counts"], sent["counts"]);
    }
}

#[tokio::test]
async fn inferred_schema_files_land_locally_with_the_parquet_extension() {
    let streams = "inferred:\n  format: parquet\n  parquet: { schema: infer, compression: snappy }\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  destination:\n    local: { path: out, prefix: data/ }\n";
    let mut hydrant = Hydrant::start(streams);
    let records: Vec<Vec<u8>> = (0..50)
        .map(|n| {
            serde_json::to_vec(
                &json!({"n": n, "label": format!("l{n}"), "nested": {"ok": n % 2 == 0}}),
            )
            .unwrap()
        })
        .collect();
    hydrant.put_all("inferred", &records).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let files = files_under(&hydrant.dir.path().join("out"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "parquet");
    let batch = read_any(&std::fs::read(&files[0]).unwrap());
    assert_eq!(batch.num_rows(), 50);
    let schema = batch.schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["label", "n", "nested"],
        "inferred columns are in name order"
    );
    let n = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(n.values().to_vec(), (0..50).collect::<Vec<i64>>());
}

fn read_any(file: &[u8]) -> RecordBatch {
    let batches: Vec<_> =
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(file))
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[tokio::test]
async fn a_large_parquet_file_goes_up_as_a_multipart_upload() {
    let bucket = new_bucket("parquet-large");
    let destination = format!(
        "{}  multipart_threshold_mib: 5\n  multipart_part_mib: 5\n",
        s3_destination_yaml(&bucket, "big/", None)
    );
    let streams = format!(
        "big:\n  format: parquet\n  buffer: {{ size_mib: 32, interval_seconds: 900 }}\n  parquet:\n    compression: none\n    dictionary: false\n    schema:\n      - {{ name: n, type: int64, nullable: false }}\n      - {{ name: text, type: string }}\n  destination:\n{}",
        indent(&destination, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let mut rng = fastrand::Rng::with_seed(11);
    let records: Vec<Vec<u8>> = (0..7000)
        .map(|n| {
            let text: String = (0..1000).map(|_| rng.alphanumeric()).collect();
            serde_json::to_vec(&json!({"n": n, "text": text})).unwrap()
        })
        .collect();
    for calls in records.chunks(500) {
        hydrant.put_all("big", calls).await;
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let store = Bucket::new(&bucket);
    let keys = store.keys("big/").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let etag = store.etag(&keys[0]).await;
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "7 MB in 5 MiB parts is a two-part upload: {etag}"
    );
    let (file, _) = store.get(&keys[0]).await;
    assert!(file.len() > 7_000_000, "{}", file.len());
    let batch = read_any(&file);
    let n = batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(n.values().to_vec(), (0..7000).collect::<Vec<i64>>());
    let text = batch.column(1).as_string::<i32>();
    let sent: Value = serde_json::from_slice(&records[6999]).unwrap();
    assert_eq!(text.value(6999), sent["text"]);
}
