//! WebAssembly transforms: every example transform through the running service into the S3
//! server; misbehaving guests (endless loop, memory bomb, trap, wrong, missing and duplicated
//! ids) contained and reported while other streams keep flowing; modules that cannot be
//! loaded stop start-up with the file and the reason; `hydrant transform test`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A stream delivering into `destination` through one wasm processor.
fn stream(name: &str, module: &Path, config: Value, extra: &str, destination: &str) -> String {
    format!(
        "{name}:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  processors:\n    - wasm:\n        module: {}\n        config: {config}\n{}  destination:\n{}",
        module.display(),
        indent(extra, 8),
        indent(destination, 4)
    )
}

/// Lines of every object under `prefix` in the bucket.
async fn lines_under(bucket: &Bucket, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for key in bucket.keys(prefix).await {
        let (body, _) = bucket.get(&key).await;
        lines.extend(String::from_utf8(body).unwrap().lines().map(str::to_string));
    }
    lines
}

fn raw_text(error: &Value) -> String {
    String::from_utf8(raw_data(error)).unwrap()
}

const ACCESS_LINES: [&str; 3] = [
    r#"192.0.2.10 - alice [10/Oct/2024:13:55:36 -0700] "GET /index.html HTTP/1.1" 200 2326 "https://example.com/start" "Mozilla/5.0 (X11)""#,
    r#"198.51.100.7 - - [10/Oct/2024:13:55:37 +0000] "POST /api/orders HTTP/2.0" 201 -"#,
    "this is not an access log line",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_example_transforms_records_end_to_end_into_s3() {
    let bucket_name = new_bucket("transforms");
    let bucket = Bucket::new(&bucket_name);
    let s3 = |prefix: &str| s3_destination_yaml(&bucket_name, prefix, None);
    let streams = [
        stream(
            "access",
            &transform_module("hydrant_example_access_log"),
            json!({}),
            "",
            &s3("access/"),
        ),
        stream(
            "redact",
            &transform_module("hydrant_example_redact"),
            json!({ "fields": ["message", "user.email"] }),
            "",
            &s3("redact/"),
        ),
        stream(
            "filter",
            &transform_module("hydrant_example_filter"),
            json!({ "field": "level", "in": ["DEBUG", "TRACE"] }),
            "",
            &s3("filter/"),
        ),
        stream(
            "route",
            &transform_module("hydrant_example_route"),
            json!({ "partition_keys": { "service": "service", "region": "cloud.region" } }),
            "",
            &s3("route/"),
        ),
    ]
    .concat();
    let mut hydrant = Hydrant::start(&streams);

    let access: Vec<Vec<u8>> = ACCESS_LINES.iter().map(|l| l.as_bytes().to_vec()).collect();
    hydrant.put_all("access", &access).await;
    let secrets = [
        json!({ "message": "mail bob@example.com from 10.1.2.3 card 4111 1111 1111 1111", "user": { "email": "eve@example.org" }, "keep": "a@b.co" }),
        json!({ "message": "order 1234567890123 shipped", "user": { "email": null } }),
    ];
    let redact: Vec<Vec<u8>> = secrets
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    hydrant.put_all("redact", &redact).await;
    let levels = ["INFO", "DEBUG", "ERROR", "TRACE", "WARN"];
    let filter: Vec<Vec<u8>> = levels
        .iter()
        .enumerate()
        .map(|(n, level)| serde_json::to_vec(&json!({ "n": n, "level": level })).unwrap())
        .collect();
    hydrant.put_all("filter", &filter).await;
    // The transforms' metrics: three of the five records came out, each chunk timed.
    eventually(
        Duration::from_secs(30),
        "the filtered records delivered",
        || async { (hydrant.stats("filter").await["delivered_records"] == 3).then_some(()) },
    )
    .await;
    let metrics = hydrant.metrics().await;
    let filter = |name: &str| metric(&metrics, name, "filter");
    assert_eq!(filter("hydrant_transform_succeeded_records_total"), 3.0);
    assert!(filter("hydrant_transform_succeeded_bytes_total") > 0.0);
    assert!(filter("hydrant_transform_seconds_count") >= 1.0);
    let timed_chunks = metrics
        .lines()
        .filter(|line| {
            line.starts_with("hydrant_transform_seconds_bucket{")
                && line.contains(r#"stream="filter""#)
                && line.contains(r#"le="+Inf""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .next();
    assert_eq!(
        timed_chunks,
        Some(filter("hydrant_transform_seconds_count")),
        "the chain's duration is a histogram with buckets"
    );
    assert_eq!(filter("hydrant_transform_failed_records_total"), 0.0);
    let route: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&json!({ "service": "checkout", "cloud": { "region": "eu-west-1" } }))
            .unwrap(),
        serde_json::to_vec(&json!({ "service": "search" })).unwrap(),
    ];
    hydrant.put_all("route", &route).await;
    // The record without a region failed the transform and went to the error output, an
    // object written to the stream's object store (Firehose's BackupToS3).
    eventually(
        Duration::from_secs(30),
        "the route stream's failure in the error output",
        || async {
            let metrics = hydrant.metrics().await;
            (metric(&metrics, "hydrant_error_output_records_total", "route") == 1.0
                && metric(&metrics, "hydrant_backup_objects_total", "route") >= 1.0)
                .then_some(())
        },
    )
    .await;
    let metrics = hydrant.metrics().await;
    let route_metric = |name: &str| metric(&metrics, name, "route");
    assert_eq!(route_metric("hydrant_transform_failed_records_total"), 1.0);
    assert_eq!(
        route_metric("hydrant_transform_succeeded_records_total"),
        1.0
    );
    assert!(route_metric("hydrant_backup_objects_total") >= 1.0);
    assert!(route_metric("hydrant_backup_bytes_total") > 0.0);
    assert_eq!(route_metric("hydrant_backup_failures_total"), 0.0);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    // Access-log lines become JSON objects; the line that is not one is processing-failed.
    let parsed: Vec<Value> = lines_under(&bucket, "access/")
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2, "{parsed:?}");
    let first = parsed
        .iter()
        .find(|p| p["remote_addr"] == "192.0.2.10")
        .unwrap();
    assert_eq!(first["remote_user"], "alice");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/index.html");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 2326);
    assert_eq!(first["referer"], "https://example.com/start");
    assert_eq!(first["user_agent"], "Mozilla/5.0 (X11)");
    assert_eq!(first["time"], "2024-10-10T13:55:36-07:00");
    let second = parsed
        .iter()
        .find(|p| p["remote_addr"] == "198.51.100.7")
        .unwrap();
    assert_eq!(second["remote_user"], Value::Null);
    assert_eq!(second["status"], 201);
    assert_eq!(second["bytes"], 0);
    // Every stream's processing failures share the error output prefix here.
    let failed: Vec<Value> = lines_under(&bucket, "processing-failed/")
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "one access-log line and one route record: {failed:?}"
    );
    let failure = failed
        .iter()
        .find(|f| f["errorMessage"].as_str().unwrap().contains("access-log"))
        .unwrap();
    assert_eq!(failure["errorCode"], "Transform.ProcessingFailed");
    assert!(
        failure["errorMessage"]
            .as_str()
            .unwrap()
            .contains("not an access-log line")
    );
    assert_eq!(
        raw_text(failure),
        ACCESS_LINES[2],
        "the record as it was sent"
    );

    // E-mail, IPv4 and card numbers are masked in the chosen fields only; digits that fail
    // the Luhn check are not card numbers.
    let redacted: Vec<Value> = lines_under(&bucket, "redact/")
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let masked = redacted.iter().find(|r| r["keep"] == "a@b.co").unwrap();
    assert_eq!(
        masked["message"],
        "mail [REDACTED] from [REDACTED] card [REDACTED]"
    );
    assert_eq!(masked["user"]["email"], "[REDACTED]");
    let untouched = redacted.iter().find(|r| r["keep"].is_null()).unwrap();
    assert_eq!(untouched["message"], "order 1234567890123 shipped");

    // DEBUG and TRACE records are dropped, the rest delivered as they were.
    let mut kept: Vec<i64> = lines_under(&bucket, "filter/")
        .await
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    kept.sort();
    assert_eq!(kept, [0, 2, 4]);

    // Records with every partition key field are delivered unchanged; one without fails.
    let routed = lines_under(&bucket, "route/").await;
    assert_eq!(routed, [String::from_utf8(route[0].clone()).unwrap()]);
    let route_failures: Vec<&Value> = failed
        .iter()
        .filter(|f| {
            f["errorMessage"]
                .as_str()
                .unwrap()
                .contains("partition key")
        })
        .collect();
    assert_eq!(route_failures.len(), 1);
    assert!(
        route_failures[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("cloud.region")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_guests_are_contained_and_reported_while_other_streams_flow() {
    let adversary = transform_module("hydrant_test_adversary");
    let local = |dir: &str| {
        format!(
            "local: {{ path: {dir}, error_output_prefix: \"!{{firehose:error-output-type}}/\" }}\n"
        )
    };
    let cases = [
        ("spin", "timeout_ms: 200\nretries: 1\n", "Transform.Timeout"),
        (
            "allocate",
            "max_memory_mib: 16\nretries: 0\n",
            "Transform.OutOfMemory",
        ),
        ("trap", "retries: 2\n", "Transform.Trap"),
        ("missing-id", "retries: 1\n", "Transform.MissingRecordId"),
        (
            "duplicate-id",
            "retries: 0\n",
            "Transform.DuplicateRecordId",
        ),
        ("unknown-id", "retries: 0\n", "Transform.UnknownRecordId"),
    ];
    let mut streams: String = cases
        .iter()
        .map(|(behave, extra, _)| {
            stream(
                behave,
                &adversary,
                json!({ "behave": behave }),
                extra,
                &local(behave),
            )
        })
        .collect();
    streams.push_str(&stream(
        "healthy",
        &adversary,
        json!({ "behave": "print" }),
        "",
        &local("healthy"),
    ));
    let mut hydrant = Hydrant::start(&streams);

    let records: Vec<Vec<u8>> = (0..20)
        .map(|n| {
            let tag = if n == 7 { "victim" } else { "bystander" };
            serde_json::to_vec(&json!({ "n": n, "tag": tag })).unwrap()
        })
        .collect();
    for (behave, _, _) in &cases {
        hydrant.put_all(behave, &records).await;
    }
    hydrant.put_all("healthy", &records).await;
    // The healthy stream keeps delivering while the others misbehave.
    eventually(
        Duration::from_secs(30),
        "the healthy stream's records",
        || async {
            let stats = hydrant.stats("healthy").await;
            (stats["delivered_records"] == 20).then_some(())
        },
    )
    .await;
    assert!(
        hydrant.terminate().success(),
        "the service survived: {}",
        hydrant.log()
    );

    let dir = hydrant.dir.path();
    for (behave, _, code) in &cases {
        let failures = error_records(&dir.join(behave), "processing-failed");
        let whole_batch = matches!(*behave, "spin" | "allocate" | "trap");
        let expected = if whole_batch { 20 } else { 1 };
        let with_code: Vec<&Value> = failures
            .iter()
            .filter(|f| f["errorCode"] == *code)
            .collect();
        assert_eq!(with_code.len(), expected, "{behave}: {failures:?}");
        if !whole_batch {
            assert!(
                raw_text(with_code[0]).contains("victim"),
                "{behave}: the victim record failed"
            );
            let delivered: usize = files_under(&dir.join(behave))
                .iter()
                .filter(|f| !f.to_string_lossy().contains("processing-failed"))
                .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
                .sum();
            assert_eq!(delivered, 19, "{behave}: the other records go on");
        }
        for failure in &with_code {
            assert!(!failure["errorMessage"].as_str().unwrap().is_empty());
        }
    }
    let log = hydrant.log();
    assert!(
        log.contains("guest: stdout: saw"),
        "guest stdout reaches the log"
    );
    assert!(
        log.contains("guest: stderr: saw"),
        "guest stderr reaches the log"
    );
    assert!(
        log.contains("module=hydrant_test_adversary.wasm"),
        "tagged with the module"
    );
    assert!(
        log.contains("suppressed"),
        "40 lines in one batch are rate-limited"
    );
}

#[test]
fn modules_that_cannot_be_loaded_are_reported_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really").unwrap();
    let core = dir.path().join("core-module.wat");
    std::fs::write(&core, "(module)").unwrap();
    let unlinkable = dir.path().join("unlinkable.wat");
    std::fs::write(
        &unlinkable,
        r#"(component (import "acme:nothing/here" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    let missing = dir.path().join("missing.wasm");
    let local = "local: { path: out }";
    for (module, config, words) in [
        (
            &garbage,
            json!({}),
            "garbage.wasm is not a WebAssembly component",
        ),
        (&core, json!({}), "core-module.wat"),
        (&unlinkable, json!({}), "acme:nothing/here"),
        (&missing, json!({}), "cannot read transform module"),
        (
            &transform_module("hydrant_test_adversary"),
            json!({ "behave": "refuse" }),
            "configure refused the configuration: this guest refuses every configuration",
        ),
        (
            &transform_module("hydrant_example_filter"),
            json!({ "field": "level" }),
            "give exactly one of `equals`, `in`, `matches` or `exists`",
        ),
    ] {
        let (ok, stderr) = validate_config(&format!(
            "streams:\n{}",
            indent(&stream("s", module, config, "", local), 2)
        ));
        assert!(!ok, "{} should not load", module.display());
        assert!(stderr.contains("stream `s`"), "{stderr}");
        assert!(stderr.contains(words), "missing {words:?} in {stderr}");
        if module != &missing {
            assert!(
                stderr.contains(&module.file_name().unwrap().to_string_lossy().to_string()),
                "{stderr}"
            );
        }
    }
}

#[test]
fn transform_test_prints_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sample.log");
    std::fs::write(&input, ACCESS_LINES.join("\n") + "\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["transform", "test", "--module"])
        .arg(transform_module("hydrant_example_access_log"))
        .arg("--input")
        .arg(&input)
        .args(["--config", r#"{"keep_raw": true}"#])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcomes: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0]["result"], "Ok");
    let parsed: Value = serde_json::from_str(outcomes[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["raw"], ACCESS_LINES[0], "config reached the module");
    assert_eq!(outcomes[2]["result"], "ProcessingFailed");
    assert_eq!(outcomes[2]["errorCode"], "Transform.ProcessingFailed");
    let summary = String::from_utf8(output.stderr).unwrap();
    assert!(
        summary.contains("3 records: 2 ok, 0 dropped, 1 processing-failed"),
        "{summary}"
    );

    let routes = dir.path().join("routes.ndjson");
    std::fs::write(&routes, "{\"service\":\"a\",\"n\":1}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["transform", "test", "--module"])
        .arg(transform_module("hydrant_example_route"))
        .arg("--input")
        .arg(&routes)
        .args([
            "--config",
            r#"{"partition_keys":{"svc":"service","n":"n"}}"#,
        ])
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["partitionKeys"], json!({ "svc": "a", "n": "1" }));
}
