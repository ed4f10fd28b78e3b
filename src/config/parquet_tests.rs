//! A stream's `parquet:` section, as the files it makes show: the section is turned into the
//! encoder's options and records are converted and written as a real stream's would be.

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use hydrant_sinks::object::parquet::{ConvertedChunk, ParquetEncoder};
use hydrant_sinks::prelude::ChunkRecord;

use crate::config::parse_config;

fn encoder(parquet_yaml: &str) -> ParquetEncoder {
    let yaml = format!(
        "streams:\n  s:\n    format: parquet\n    parquet:\n{}\n    destination: {{ local: {{ path: out }} }}\n",
        parquet_yaml
            .lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let config = parse_config(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let (_, stream) = config.streams.iter().next().unwrap();
    ParquetEncoder::new(&stream.parquet.as_ref().unwrap().options()).unwrap()
}

fn chunk(records: &[&str]) -> (Vec<u8>, Vec<ChunkRecord>) {
    let mut data = Vec::new();
    let mut spans = Vec::new();
    for (i, record) in records.iter().enumerate() {
        data.extend_from_slice(record.as_bytes());
        spans.push(ChunkRecord {
            seq: i as u64,
            arrival_ms: 0,
            end: data.len(),
        });
    }
    (data, spans)
}

fn convert(encoder: &ParquetEncoder, records: &[&str]) -> ConvertedChunk {
    let (data, spans) = chunk(records);
    encoder.convert_chunk(&data, &spans)
}

/// Writes the batches as a file and reads it back with the parquet crate's reader.
fn round_trip(encoder: &ParquetEncoder, batches: Vec<RecordBatch>) -> RecordBatch {
    let file = encoder.write_file(batches).unwrap().concat();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

const SCHEMA: &str = "schema:
  - { name: id, type: int64, nullable: false }
  - { name: name, type: string }
  - { name: at, type: timestamptz(ms) }";

#[test]
fn good_records_become_rows_in_order() {
    let encoder = encoder(SCHEMA);
    let converted = convert(
        &encoder,
        &[
            r#"{"id": 1, "name": "a", "at": "2024-05-01T12:00:00Z"}"#,
            r#"{"id": 2, "name": null, "at": 1714564800}"#,
            "{\"id\": 3,\n \"at\": 1714564800123, \"extra\": [1, {\"x\": 2}]}\n",
        ],
    );
    assert!(converted.rejected.is_empty(), "{:?}", converted.rejected);
    let batch = round_trip(&encoder, converted.batches);
    assert_eq!(batch.num_rows(), 3);
    let ids: Vec<i64> = batch
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, [1, 2, 3]);
    let names = batch.column(1).as_string::<i32>();
    assert_eq!(names.value(0), "a");
    assert!(names.is_null(1) && names.is_null(2));
    let at = batch.column(2).as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        at.values().to_vec(),
        [1_714_564_800_000, 1_714_564_800_000, 1_714_564_800_123]
    );
    assert_eq!(
        batch.schema().field(2).data_type(),
        &DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into()))
    );
}

#[test]
fn each_bad_record_is_rejected_alone_with_its_reason() {
    let encoder = encoder(SCHEMA);
    let records = [
        r#"{"id": 1}"#,
        r#"not json"#,
        r#"{"id": 2}"#,
        r#"{"id": "three"}"#,
        r#"{"name": "no id"}"#,
        r#"{"id": 4} {"id": 5}"#,
        r#"{"id": 6"#,
        "",
        r#"[1, 2]"#,
        r#"{"id": 7, "at": "yesterday"}"#,
        r#"{"id": 8}"#,
    ];
    let converted = convert(&encoder, &records);
    let rejected: Vec<(usize, &str, &str)> = converted
        .rejected
        .iter()
        .map(|r| (r.index, r.error.code, r.error.message.as_str()))
        .collect();
    let indexes: Vec<usize> = rejected.iter().map(|r| r.0).collect();
    assert_eq!(indexes, [1, 3, 4, 5, 6, 7, 8, 9], "{rejected:#?}");
    let parse = "DataFormatConversion.ParseError";
    let malformed = "DataFormatConversion.MalformedData";
    assert_eq!(rejected[0].1, parse);
    assert!(
        rejected[0].2.contains("not valid JSON"),
        "{}",
        rejected[0].2
    );
    assert_eq!(rejected[1].1, malformed);
    assert!(
        rejected[1].2.starts_with("column 'id'"),
        "{}",
        rejected[1].2
    );
    assert_eq!(rejected[2].1, malformed);
    assert!(
        rejected[2].2.contains("column 'id' is not nullable"),
        "{}",
        rejected[2].2
    );
    for (two_values_or_cut_or_empty, words) in [
        (&rejected[3], "trailing characters"),
        (&rejected[4], "EOF while parsing an object"),
        (&rejected[5], "EOF while parsing a value"),
    ] {
        assert_eq!(two_values_or_cut_or_empty.1, parse);
        assert!(
            two_values_or_cut_or_empty.2.contains(words),
            "{}",
            two_values_or_cut_or_empty.2
        );
    }
    assert!(
        rejected[6].2.contains("not a JSON object"),
        "{}",
        rejected[6].2
    );
    assert!(
        rejected[7].2.starts_with("column 'at'"),
        "{}",
        rejected[7].2
    );
    assert!(rejected[7].2.contains("yesterday"), "{}", rejected[7].2);
    let batch = round_trip(&encoder, converted.batches);
    let ids: Vec<i64> = batch
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, [1, 2, 8]);
}

#[test]
fn keys_match_ignoring_case_through_mappings_and_with_dots_as_underscores() {
    let encoder = encoder(
        "schema:
  - { name: userId, type: int64 }
  - { name: ts, type: timestamp(us) }
  - { name: http_status, type: int32 }
  - { name: req, type: 'struct<Path:string>' }
  - { name: labels, type: 'map<string,string>' }
column_to_json_key_mappings: { ts: '@timestamp' }
convert_dots_in_json_keys_to_underscores: true
timestamp_numbers: milliseconds",
    );
    let converted = convert(
        &encoder,
        &[
            r#"{"USERID": 7, "@timestamp": 1000, "http.status": 200, "REQ": {"path": "/a"}, "labels": {"Env": "Prod"}}"#,
        ],
    );
    assert!(converted.rejected.is_empty(), "{:?}", converted.rejected);
    let batch = round_trip(&encoder, converted.batches);
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 7);
    assert_eq!(
        batch
            .column(1)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_000_000,
        "epoch milliseconds in a microsecond column"
    );
    assert_eq!(
        batch
            .column(2)
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(0),
        200
    );
    let req = batch.column(3).as_struct();
    assert_eq!(req.column(0).as_string::<i32>().value(0), "/a");
    let labels = batch.column(4).as_map();
    assert_eq!(
        labels.keys().as_string::<i32>().value(0),
        "Env",
        "map keys keep their case"
    );
    assert_eq!(labels.values().as_string::<i32>().value(0), "Prod");
}

#[test]
fn case_sensitive_keys_when_asked() {
    let encoder = encoder(
        "schema:
  - { name: id, type: int64 }
case_insensitive: false",
    );
    let batch = round_trip(
        &encoder,
        convert(&encoder, &[r#"{"ID": 1}"#, r#"{"id": 2}"#]).batches,
    );
    let ids = batch.column(0).as_primitive::<Int64Type>();
    assert!(ids.is_null(0));
    assert_eq!(ids.value(1), 2);
}

#[test]
fn infer_takes_the_schema_from_the_first_chunk() {
    let encoder = encoder("schema: infer");
    let converted = convert(
        &encoder,
        &[
            r#"{"a": 1, "b": "x", "c": null}"#,
            r#"{"a": 2, "d": [true]}"#,
        ],
    );
    assert!(converted.rejected.is_empty(), "{:?}", converted.rejected);
    let schema = encoder.schema().unwrap();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(
        schema.field(2).data_type(),
        &DataType::Utf8,
        "all-null becomes string"
    );
    let later = convert(&encoder, &[r#"{"a": 3, "new": 1}"#]);
    let batch = round_trip(&encoder, later.batches);
    assert_eq!(batch.num_columns(), 4, "later fields are not added");
}

#[test]
fn decimals_dates_lists_and_binary() {
    let encoder = encoder(
        "schema:
  - { name: price, type: 'decimal(10,2)' }
  - { name: day, type: date }
  - { name: tags, type: 'list<string>' }
  - { name: blob, type: binary }",
    );
    let converted = convert(
        &encoder,
        &[r#"{"price": "12.34", "day": "2024-02-29", "tags": ["a", "b"], "blob": "aGk="}"#],
    );
    assert!(converted.rejected.is_empty(), "{:?}", converted.rejected);
    let batch = round_trip(&encoder, converted.batches);
    let price = batch
        .column(0)
        .as_primitive::<arrow_array::types::Decimal128Type>();
    assert_eq!(price.value(0), 1234);
    let day = batch
        .column(1)
        .as_primitive::<arrow_array::types::Date32Type>();
    assert_eq!(day.value(0), 19_782);
    let tags = batch.column(2).as_list::<i32>();
    assert_eq!(tags.value(0).as_string::<i32>().value(1), "b");
    assert_eq!(batch.column(3).as_binary::<i32>().value(0), b"hi");
}

#[test]
fn timestamp_strings_with_offsets_and_primitives_in_string_columns() {
    let encoder = encoder(SCHEMA);
    let converted = convert(
        &encoder,
        &[
            r#"{"id": 1, "name": 42, "at": "2024-05-01T14:00:00+02:00"}"#,
            r#"{"id": 2, "name": true, "at": "2024-05-01 12:00:00"}"#,
            r#"{"id": 3, "at": "1714564800.5"}"#,
        ],
    );
    assert!(converted.rejected.is_empty(), "{:?}", converted.rejected);
    let batch = round_trip(&encoder, converted.batches);
    let names = batch.column(1).as_string::<i32>();
    assert_eq!((names.value(0), names.value(1)), ("42", "true"));
    let at = batch.column(2).as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        at.values().to_vec(),
        [1_714_564_800_000, 1_714_564_800_000, 1_714_564_800_500]
    );
}

#[test]
fn row_groups_close_at_the_configured_size() {
    let encoder = encoder(&format!("{SCHEMA}\nrow_group_mib: 1"));
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batches = Vec::new();
    for chunk in 0..6 {
        let records: Vec<String> = (0..500)
            .map(|n| {
                let name: String = (0..1000).map(|_| rng.alphanumeric()).collect();
                format!(r#"{{"id": {}, "name": "{name}"}}"#, chunk * 500 + n)
            })
            .collect();
        let refs: Vec<&str> = records.iter().map(String::as_str).collect();
        batches.extend(convert(&encoder, &refs).batches);
    }
    let file = encoder.write_file(batches).unwrap().concat();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file)).unwrap();
    let row_groups = reader.metadata().num_row_groups();
    assert!(
        (2..=4).contains(&row_groups),
        "3 MB of distinct strings in 1 MiB row groups: {row_groups}"
    );
    let ids: Vec<i64> = reader
        .build()
        .unwrap()
        .flat_map(|b| {
            b.unwrap()
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, (0..3000).collect::<Vec<i64>>());
}
