//! Record formats against the real binary: `ndjson` writes each JSON record on one line and
//! sends records that are not one JSON value to the `format-conversion-failed` error output,
//! while the rest of the batch is written.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn ndjson_writes_one_line_per_record_and_sends_the_rest_to_the_error_output() {
    let streams = "events:\n  format: ndjson\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  destination:\n    local: { path: out, prefix: data/ }\n";
    let mut hydrant = Hydrant::start(streams);
    let records: Vec<Vec<u8>> = vec![
        b"{\"n\":1}".to_vec(),
        b"not json at all".to_vec(),
        b"{\n  \"n\": 2,\n  \"tags\": [\"a\",\r\n \"b\"]\n}\n".to_vec(),
        b"{\"n\":3} {\"n\":4}".to_vec(),
        b"{\"n\":5,\"text\":\"line\\nbreak\"}".to_vec(),
        Vec::new(),
    ];
    let answer = hydrant.put_batch("events", &records).await;
    assert_eq!(
        answer["FailedPutCount"], 0,
        "conversion happens after the put is accepted"
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let out = hydrant.dir.path().join("out");
    let files = files_under(&out);
    let data: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with(out.join("data")))
        .collect();
    let errors: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with(out.join("format-conversion-failed")))
        .collect();
    assert_eq!((data.len(), errors.len()), (1, 1), "{files:?}");

    let written = std::fs::read_to_string(data[0]).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 3, "{written}");
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values[0]["n"], 1);
    assert_eq!(values[1]["n"], 2);
    assert_eq!(values[1]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(values[2]["text"], "line\nbreak");

    let error_text = std::fs::read_to_string(errors[0]).unwrap();
    let failures: Vec<Value> = error_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(failures.len(), 3);
    let raw: Vec<Vec<u8>> = failures
        .iter()
        .map(|f| {
            base64::engine::general_purpose::STANDARD
                .decode(f["rawData"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(
        raw,
        [records[1].clone(), records[3].clone(), records[5].clone()]
    );
    for failure in &failures {
        assert_eq!(failure["errorCode"], "DataFormatConversion.ParseError");
        assert!(
            failure["errorMessage"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
        assert!(failure["arrivalTimestamp"].as_i64().unwrap() > 0);
        assert_eq!(failure["attemptsMade"], 1);
    }
}
