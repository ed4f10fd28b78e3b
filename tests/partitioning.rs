//! Dynamic partitioning against the real binary: records are filed under object keys made
//! from their own fields (or from keys a transform returns), hostile values never leave the
//! prefix, records whose keys cannot be extracted or whose partition does not fit go to the
//! `partitioning-failed` error output (or hold the stream back), each partition buffers on
//! its own within a memory bound, and a batch replayed after a crash writes no partition
//! twice.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Percent-decodes one key segment (written here from RFC 3986, not from the service).
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The records of every data object under `root`, by the directory (relative to `root`)
/// holding the object, and how many objects each directory holds.
fn objects_by_dir(root: &Path) -> (BTreeMap<PathBuf, Vec<Value>>, HashMap<PathBuf, usize>) {
    let mut records: BTreeMap<PathBuf, Vec<Value>> = BTreeMap::new();
    let mut objects: HashMap<PathBuf, usize> = HashMap::new();
    for file in files_under(root) {
        let dir = file
            .parent()
            .unwrap()
            .strip_prefix(root)
            .unwrap()
            .to_path_buf();
        *objects.entry(dir.clone()).or_default() += 1;
        let bytes = std::fs::read(&file).unwrap();
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            gunzip(&bytes)
        } else {
            bytes
        };
        records.entry(dir).or_default().extend(
            String::from_utf8(text)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap()),
        );
    }
    (records, objects)
}

fn event(service: &str, ts: &str, n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({ "service": service, "ts": ts, "n": n })).unwrap()
}

#[tokio::test]
async fn records_land_under_their_own_keys_and_hostile_values_stay_inside_the_prefix() {
    let streams = "events:\n  format: ndjson\n  compression: gzip\n  buffer: { size_mib: 8, interval_seconds: 900 }\n  partitioning:\n    query: '{service: .service, day: (.ts | .[0:10])}'\n    max_active_partitions: 6\n  destination:\n    local:\n      path: out\n      prefix: 'lake/service=!{partitionKeyFromQuery:service}/dt=!{partitionKeyFromQuery:day}/'\n";
    let mut hydrant = Hydrant::start(streams);
    let day = "2026-11-29T10:00:00Z";
    let long = "s".repeat(1_000_000);
    let mut records = vec![
        event("api", day, 0),
        event("web", day, 1),
        event("api", day, 2),
        event("../../escape", day, 3),
        event("%2e%2e", day, 4),
        event("..", day, 5),
        event("a\u{0}b\nc/d", day, 6),
        // Keys that cannot be extracted.
        br#"{"ts":"2026-11-29T10:00:00Z","n":7}"#.to_vec(),
        event(&long, day, 8),
        br#"{"service":["a"],"ts":"2026-11-29","n":9}"#.to_vec(),
        // Two partitions beyond the limit of six.
        event("late", day, 10),
        event("later", day, 11),
    ];
    // An open partition still takes records after the limit is reached.
    records.push(event("web", day, 12));
    hydrant.put_all("events", &records).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let out = hydrant.dir.path().join("out");
    for file in files_under(&out) {
        let real = file.canonicalize().unwrap();
        assert!(
            real.starts_with(out.join("lake").canonicalize().unwrap())
                || real.starts_with(out.join("partitioning-failed").canonicalize().unwrap()),
            "{file:?} is outside the prefix"
        );
    }
    let (by_dir, objects) = objects_by_dir(&out.join("lake"));
    assert_eq!(by_dir.len(), 6, "{:?}", by_dir.keys());
    let mut seen = Vec::new();
    for (dir, lines) in &by_dir {
        assert_eq!(
            objects[dir], 1,
            "one object per partition of the batch: {dir:?}"
        );
        let segments: Vec<String> = dir
            .iter()
            .map(|s| s.to_str().unwrap().to_string())
            .collect();
        assert_eq!(segments.len(), 2, "{dir:?}");
        let service = percent_decode(segments[0].strip_prefix("service=").unwrap());
        assert_eq!(segments[1], "dt=2026-11-29");
        for line in lines {
            assert_eq!(
                line["service"].as_str().unwrap().as_bytes(),
                service,
                "{dir:?} holds only its own records"
            );
            seen.push(line["n"].as_u64().unwrap());
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6, 12]);
    let dirs: Vec<String> = by_dir
        .keys()
        .map(|d| d.iter().next().unwrap().to_str().unwrap().to_string())
        .collect();
    assert!(
        dirs.contains(&"service=..%2F..%2Fescape".to_string()),
        "{dirs:?}"
    );
    assert!(dirs.contains(&"service=%252e%252e".to_string()), "{dirs:?}");
    assert!(dirs.contains(&"service=%2E%2E".to_string()), "{dirs:?}");

    let failures = error_records(&out, "partitioning-failed");
    let mut by_code: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for failure in &failures {
        let record: Value = serde_json::from_slice(&raw_data(failure)).unwrap();
        by_code
            .entry(failure["errorCode"].as_str().unwrap().to_string())
            .or_default()
            .push(record["n"].as_u64().unwrap());
    }
    assert_eq!(
        by_code["DynamicPartitioning.MetadataExtractionFailed"],
        [7, 8, 9]
    );
    assert_eq!(
        by_code["DynamicPartitioning.ActivePartitionsLimitExceeded"],
        [10, 11]
    );
    let messages: Vec<&str> = failures
        .iter()
        .map(|f| f["errorMessage"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("no value for `service`")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("at most 512")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("an array")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn a_replayed_batch_writes_only_the_partitions_that_were_not_written() {
    let streams = "events:\n  format: ndjson\n  compression: gzip\n  buffer: { size_mib: 8, interval_seconds: 1 }\n  partitioning:\n    query: '{service: .service}'\n  destination:\n    local:\n      path: out\n      prefix: 'lake/!{partitionKeyFromQuery:service}/'\n      retry_duration_seconds: 3600\n";
    let hydrant = Hydrant::start(streams);
    // A file where the `blocked` partition's directory would go: its object cannot be
    // written until the file is removed.
    let lake = hydrant.dir.path().join("out/lake");
    std::fs::create_dir_all(&lake).unwrap();
    std::fs::write(lake.join("blocked"), b"in the way").unwrap();
    let day = "2026-11-29";
    let records: Vec<Vec<u8>> = (0..30)
        .map(|n| event(["api", "web", "blocked"][n as usize % 3], day, n))
        .collect();
    hydrant.put_all("events", &records).await;
    hydrant
        .wait_for_log(
            "delivery attempt failed; will retry",
            Duration::from_secs(30),
        )
        .await;
    hydrant
        .wait_for_log_count("delivered batch", 2, Duration::from_secs(30))
        .await;
    let dir = hydrant.kill();
    std::fs::remove_file(dir.path().join("out/lake/blocked")).unwrap();

    let mut hydrant = Hydrant::start_in(dir, "", streams, &[]);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let (by_dir, objects) = objects_by_dir(&hydrant.dir.path().join("out/lake"));
    assert_eq!(
        objects,
        HashMap::from([
            (PathBuf::from("api"), 1),
            (PathBuf::from("web"), 1),
            (PathBuf::from("blocked"), 1)
        ]),
        "the replay wrote the same keys, and only the missing one landed"
    );
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for line in by_dir.values().flatten() {
        *counts.entry(line["n"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 30);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
}

#[tokio::test]
async fn keys_returned_by_a_transform_name_the_partition() {
    let module = transform_module("hydrant_example_route");
    let streams = format!(
        "events:\n  format: ndjson\n  compression: gzip\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  processors:\n    - wasm:\n        module: {}\n        config: {{ partition_keys: {{ region: region }} }}\n  partitioning:\n    query: '{{service: .service}}'\n  destination:\n    local:\n      path: out\n      prefix: 'lake/region=!{{partitionKeyFromLambda:region}}/service=!{{partitionKeyFromQuery:service}}/'\n",
        module.display()
    );
    let mut hydrant = Hydrant::start(&streams);
    let records: Vec<Vec<u8>> = [("eu", "api"), ("us", "api"), ("eu", "web"), ("eu", "api")]
        .iter()
        .enumerate()
        .map(|(n, (region, service))| {
            serde_json::to_vec(&json!({ "region": region, "service": service, "n": n })).unwrap()
        })
        .collect();
    hydrant.put_all("events", &records).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let (by_dir, _) = objects_by_dir(&hydrant.dir.path().join("out/lake"));
    let layout: BTreeMap<String, Vec<u64>> = by_dir
        .iter()
        .map(|(dir, lines)| {
            (
                dir.to_str().unwrap().to_string(),
                lines.iter().map(|l| l["n"].as_u64().unwrap()).collect(),
            )
        })
        .collect();
    assert_eq!(
        layout,
        BTreeMap::from([
            ("region=eu/service=api".to_string(), vec![0, 3]),
            ("region=eu/service=web".to_string(), vec![2]),
            ("region=us/service=api".to_string(), vec![1]),
        ])
    );
}

#[tokio::test]
async fn duckdb_reads_a_partitioned_parquet_lake_back_with_each_row_under_its_own_keys() {
    let bucket = new_bucket("lake");
    let destination = s3_destination_yaml(
        &bucket,
        "events/service=!{partitionKeyFromQuery:service}/dt=!{partitionKeyFromQuery:day}/",
        None,
    );
    let streams = format!(
        "events:\n  format: parquet\n  buffer: {{ size_mib: 8, interval_seconds: 900 }}\n  parquet:\n    compression: zstd\n    schema:\n      - {{ name: n, type: int64, nullable: false }}\n      - {{ name: service, type: string }}\n      - {{ name: ts, type: string }}\n  partitioning:\n    query: '{{service: .service, day: (.ts | .[0:10])}}'\n  destination:\n{}",
        indent(&destination, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let days = ["2026-11-28T23:59:59Z", "2026-11-29T00:00:00Z"];
    let services = ["api", "web", "db"];
    let mut records: Vec<Vec<u8>> = (0..60u32)
        .map(|n| event(services[n as usize % 3], days[n as usize % 2], n))
        .collect();
    // A record of a partition that does not fit the schema (`n` is not a number).
    let misfit = br#"{"service":"api","ts":"2026-11-29T00:00:00Z","n":"sixty"}"#.to_vec();
    records.insert(30, misfit.clone());
    hydrant.put_all("events", &records).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let s3 = Bucket::new(&bucket);
    let error_keys: Vec<String> = s3
        .keys("")
        .await
        .into_iter()
        .filter(|key| key.contains("format-conversion-failed"))
        .collect();
    assert_eq!(error_keys.len(), 1, "{error_keys:?}");
    let body = s3.get(&error_keys[0]).await.0;
    let errors: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(raw_data(&errors[0]), misfit);

    // The bucket mirrored into a directory, keys as paths: DuckDB reads it as it would read
    // the bucket itself.
    let keys = s3.keys("events/").await;
    assert_eq!(keys.len(), 6, "one object per (service, day): {keys:?}");
    let mirror = tempfile::tempdir().unwrap();
    for key in &keys {
        assert!(key.ends_with(".parquet"), "{key}");
        let path = mirror.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, s3.get(key).await.0).unwrap();
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/read_lake_duckdb.py"
    );
    let stdout = stdout_of(
        std::process::Command::new(&servers().python)
            .arg(script)
            .arg(mirror.path().join("events")),
        "DuckDB reading the lake",
    );
    let rows: Vec<Value> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 60);
    let mut seen: Vec<u64> = Vec::new();
    for row in &rows {
        let n = row["n"].as_u64().unwrap();
        assert_eq!(row["service"], services[n as usize % 3], "{row}");
        assert_eq!(row["dt"], &days[n as usize % 2][..10], "{row}");
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..60).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_in_fifty_partitions_exactly_once() {
    let bucket = new_bucket("partkill");
    let destination = s3_destination_yaml(&bucket, "d/p=!{partitionKeyFromQuery:p}/", None);
    // Producers number their records `p<producer>-<n>`: fifty partitions by `n`.
    let streams = format!(
        "durable:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  compression: gzip\n  partitioning:\n    query: '{{p: (.id | split(\"-\") | .[1] | tonumber % 50)}}'\n  destination:\n{}",
        indent(&destination, 4)
    );
    let KilledRun {
        mut hydrant,
        acked,
        attempted,
        kills,
    } = produce_through_kills(&streams, "durable", 5, 0x9a47).await;
    assert!(kills >= 5);
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let s3 = Bucket::new(&bucket);
    let mut delivered: HashMap<String, usize> = HashMap::new();
    let mut partitions = std::collections::HashSet::new();
    for key in s3.keys("d/").await {
        let partition: u64 = key
            .strip_prefix("d/p=")
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{key} is not under d/p=<n>/"));
        partitions.insert(partition);
        let body = gunzip(&s3.get(&key).await.0);
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let record: Value = serde_json::from_slice(line).unwrap();
            let id = record["id"].as_str().unwrap().to_string();
            let n: u64 = id.split('-').nth(1).unwrap().parse().unwrap();
            assert_eq!(n % 50, partition, "{id} in {key}");
            *delivered.entry(id).or_default() += 1;
        }
    }
    assert_eq!(partitions.len(), 50);
    check_exactly_once(&delivered, &acked, &attempted);
}

#[test]
fn validate_explains_what_a_partitioned_stream_needs() {
    let stream = |partitioning: &str, destination: &str| {
        format!(
            "streams:\n  events:\n    partitioning:\n{partitioning}\n    destination:\n{destination}\n"
        )
    };
    let local = |prefix: &str| format!("      local: {{ path: out, prefix: '{prefix}' }}");
    let cases = [
        (
            stream("      query: '{a: .a}'", &local("x/!{partitionKeyFromQuery:b}/")),
            "does not produce `b`, which the prefix names (it produces: a)",
        ),
        (
            stream("      query: '{a: .a'", &local("!{partitionKeyFromQuery:a}/")),
            "`partitioning.query`: jq expression",
        ),
        (
            stream("      max_active_partitions: 500", &local("!{partitionKeyFromQuery:a}/")),
            "needs a `partitioning.query` that produces it",
        ),
        (
            stream("      query: '{a: .a}'", &local("!{partitionKeyFromLambda:a}/")),
            "needs a transform in `processors:`",
        ),
        (
            stream("      query: '{a: .a}'", &local("static/")),
            "must name at least one key",
        ),
        (
            stream(
                "      query: '{a: .a}'\n      max_active_partitions: 10001",
                &local("!{partitionKeyFromQuery:a}/"),
            ),
            "between 1 and 10000, got 10001",
        ),
        (
            stream(
                "      query: '{a: .a}'",
                "      http_endpoint: { url: 'http://127.0.0.1:9/' }",
            ),
            "needs an object destination (`local` or `s3`) or a search destination",
        ),
        (
            stream(
                "      query: '{a: .a}'",
                "      opensearch: { endpoint: 'http://127.0.0.1:9/', index: logs }",
            ),
            "a partitioned stream's `index` must name at least one key",
        ),
        (
            "streams:\n  events:\n    destination:\n      opensearch: { endpoint: 'http://127.0.0.1:9/', index: 'logs-!{partitionKeyFromQuery:a}' }\n".to_string(),
            "which needs a `partitioning:` section",
        ),
        (
            stream(
                "      query: '{a: .a}'",
                "      opensearch: { endpoint: 'http://127.0.0.1:9/', index: 'Logs-!{partitionKeyFromQuery:a}' }",
            ),
            "must be lowercase",
        ),
        (
            format!(
                "spool: {{ fsync: disabled }}\n{}",
                stream("      query: '{a: .a}'", &local("!{partitionKeyFromQuery:a}/"))
            ),
            "needs the spool",
        ),
        (
            "streams:\n  events:\n    destination:\n      local: { path: out, prefix: '!{partitionKeyFromQuery:a}/' }\n".to_string(),
            "needs dynamic partitioning, which this stream does not configure",
        ),
        (
            stream(
                "      query: '{a: .a}'",
                "      local: { path: out, prefix: '!{partitionKeyFromQuery:a}/', error_output_prefix: 'e/!{partitionKeyFromQuery:a}/' }",
            ),
            "cannot be used in an error output prefix",
        ),
    ];
    for (config, expected) in cases {
        let (ok, output) = validate_config(&config);
        assert!(!ok, "{config}");
        assert!(output.contains(expected), "{config}\n{output}");
    }
    let (ok, output) = validate_config(&stream(
        "      query: '{a: .a, b: .b}'",
        &local("!{partitionKeyFromQuery:a}/!{partitionKeyFromQuery:b}/"),
    ));
    assert!(ok, "{output}");
}

#[tokio::test]
async fn each_partition_buffers_on_its_own_and_a_restart_neither_loses_nor_repeats_it() {
    let streams = "events:\n  format: ndjson\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  partitioning:\n    query: '{service: .service}'\n  destination:\n    local:\n      path: out\n      prefix: 'lake/!{partitionKeyFromQuery:service}/'\n";
    let hydrant = Hydrant::start(streams);
    let day = "2026-11-29";
    let pad = "b".repeat(1000);
    let busy = |from: u32| -> Vec<Vec<u8>> {
        (from..from + 1200)
            .map(|n| serde_json::to_vec(&json!({"service": "busy", "n": n, "pad": pad})).unwrap())
            .collect()
    };
    // A slow partition gets one record per round while a busy one fills its 1 MiB more
    // than once; each round is a window of its own (the busy partition's object of that
    // round is delivered before the next begins).
    for round in 0..3u32 {
        hydrant
            .put_all("events", &[event("slow", day, round)])
            .await;
        for part in busy(100 + round * 1200).chunks(400) {
            hydrant.put_all("events", part).await;
        }
        hydrant
            .wait_for_log_count(
                "delivered batch",
                round as usize + 1,
                Duration::from_secs(30),
            )
            .await;
    }
    let lake = hydrant.dir.path().join("out/lake");
    let stats = hydrant.stats("events").await;
    assert!(
        stats["active_partitions"].as_u64().unwrap() >= 1,
        "the slow partition is still buffering: {stats}"
    );
    assert!(
        stats["partition_buffered_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    // The same gauges at /metrics (Firehose's PartitionCount).
    let metrics = hydrant.metrics().await;
    let gauge = |name: &str| metric(&metrics, name, "events");
    assert!(gauge("hydrant_active_partitions") >= 1.0);
    assert!(gauge("hydrant_partition_buffered_bytes") > 0.0);
    assert!(
        !lake.join("slow").exists(),
        "the slow partition waits for its own interval or size"
    );
    let (_, busy_objects) = objects_by_dir(&lake);
    assert!(busy_objects[Path::new("busy")] >= 3, "{busy_objects:?}");

    // Killed now, the spool still holds the slow partition's records (the checkpoint never
    // passed them) and knows which of the busy partition's objects were written.
    let dir = hydrant.kill();
    let mut hydrant = Hydrant::start_in(dir, "", streams, &[]);
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let (by_dir, objects) = objects_by_dir(&lake);
    assert_eq!(
        objects[Path::new("slow")],
        1,
        "the slow partition's records of three windows are one object"
    );
    let slow: Vec<u64> = by_dir[Path::new("slow")]
        .iter()
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    assert_eq!(slow, [0, 1, 2]);
    let mut busy_seen: Vec<u64> = by_dir[Path::new("busy")]
        .iter()
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    busy_seen.sort_unstable();
    assert_eq!(busy_seen, (100..100 + 3 * 1200).collect::<Vec<u64>>());
    for file in files_under(&lake.join("busy")) {
        let len = std::fs::metadata(&file).unwrap().len();
        assert!(
            len <= 2 << 20,
            "{file:?} is {len} bytes: a partition closes once it holds its 1 MiB"
        );
    }
}

#[tokio::test]
async fn with_backpressure_records_beyond_the_partition_limit_wait_instead_of_failing() {
    let streams = "events:\n  format: ndjson\n  compression: gzip\n  buffer: { size_mib: 1, interval_seconds: 1 }\n  partitioning:\n    query: '{service: .service}'\n    max_active_partitions: 2\n    on_limit: backpressure\n  destination:\n    local:\n      path: out\n      prefix: 'lake/!{partitionKeyFromQuery:service}/'\n";
    let mut hydrant = Hydrant::start(streams);
    let services = ["a", "b", "c", "d", "e"];
    let records: Vec<Vec<u8>> = (0..100)
        .map(|n| event(services[n as usize % 5], "2026-11-29", n))
        .collect();
    hydrant.put_all("events", &records).await;
    let most_active = std::cell::Cell::new(0);
    let (hydrant_ref, most) = (&hydrant, &most_active);
    eventually(
        Duration::from_secs(60),
        "every record delivered",
        || async move {
            let stats = hydrant_ref.stats("events").await;
            most.set(most.get().max(stats["active_partitions"].as_u64().unwrap()));
            (stats["delivered_records"] == 100).then_some(())
        },
    )
    .await;
    let most_active = most_active.get();
    assert!(
        most_active <= 2,
        "{most_active} partitions were buffering at once"
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let out = hydrant.dir.path().join("out");
    assert!(
        !out.join("partitioning-failed").exists(),
        "nothing went to the error output"
    );
    let (by_dir, _) = objects_by_dir(&out.join("lake"));
    assert_eq!(by_dir.len(), 5);
    for (dir, lines) in &by_dir {
        let mut ns: Vec<u64> = lines.iter().map(|r| r["n"].as_u64().unwrap()).collect();
        ns.sort_unstable();
        let service = dir.to_str().unwrap();
        let at = services.iter().position(|s| *s == service).unwrap() as u64;
        assert_eq!(
            ns,
            (0..20).map(|i| i * 5 + at).collect::<Vec<u64>>(),
            "{service}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_partitions_stay_within_the_memory_bound_and_close_by_their_interval() {
    let streams = "wide:\n  format: ndjson\n  buffer: { size_mib: 64, interval_seconds: 10 }\n  partitioning:\n    query: '{p: .p}'\n    max_buffered_mib: 16\n  destination:\n    local:\n      path: out\n      prefix: 'lake/p=!{partitionKeyFromQuery:p}/'\n";
    let mut hydrant = Hydrant::start(streams);
    let pid = hydrant.process_id();
    let before = rss_bytes(pid);
    // 384 MiB of records that do not compress to nothing, over 500 partitions.
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let mut pad = String::with_capacity(900);
    let mut sent = 0u64;
    let mut most_active = 0;
    for _ in 0..24 {
        let mut body = String::with_capacity(17 << 20);
        for _ in 0..16_000 {
            pad.clear();
            for _ in 0..56 {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                pad.push_str(&format!("{:016x}", noise));
            }
            body.push_str(&format!(
                "{{\"p\":\"k{}\",\"n\":{sent},\"pad\":\"{pad}\"}}\n",
                sent % 500
            ));
            sent += 1;
        }
        let (status, answer) = hydrant.post_ndjson("wide", &body).await;
        assert_eq!(status, 200, "{answer}");
        let stats = hydrant.stats("wide").await;
        most_active = most_active.max(stats["active_partitions"].as_u64().unwrap());
        assert!(
            stats["partition_buffered_bytes"].as_u64().unwrap() <= 16 << 20,
            "{stats}"
        );
    }
    // Idle partitions close by their interval: nothing stays buffered.
    eventually(Duration::from_secs(60), "every partition closed", || {
        let hydrant = &hydrant;
        async move {
            let stats = hydrant.stats("wide").await;
            (stats["delivered_records"] == sent && stats["active_partitions"] == 0).then_some(())
        }
    })
    .await;
    let grew = peak_rss_bytes(pid).saturating_sub(before) >> 20;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    eprintln!(
        "500 partitions: {most_active} buffering at once at most, peak RSS grew by {grew} MiB over {} MiB",
        before >> 20
    );
    assert!(
        most_active >= 450,
        "{most_active} partitions were buffering at once"
    );
    assert!(
        grew < 250,
        "384 MiB went through partitions bounded to 16 MiB, yet RSS grew by {grew} MiB"
    );
    let (by_dir, objects) = objects_by_dir(&hydrant.dir.path().join("out/lake"));
    assert_eq!(by_dir.len(), 500);
    assert!(
        objects.values().sum::<usize>() > 500,
        "the memory bound closed partitions early: {} objects",
        objects.values().sum::<usize>()
    );
    let mut seen = vec![0u8; sent as usize];
    for (dir, lines) in &by_dir {
        for line in lines {
            let n = line["n"].as_u64().unwrap();
            assert_eq!(format!("p=k{}", n % 500), dir.to_str().unwrap());
            seen[n as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&c| c == 1), "every record exactly once");
}
