//! The `file` source against the real binary: lines of tailed files are delivered exactly
//! once, in order per file, across rotation by rename and by copytruncate and kill -9; a
//! file deleted while read is finished; over-long lines are refused; binary files pass
//! through byte for byte; `validate` reports patterns matching nothing and unreadable files.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A stream reading `logs/<pattern>` into `out/`, uncompressed, one line per record.
fn streams(include: &str, extra: &str) -> String {
    format!(
        "files:\n  buffer:\n    size_mib: 1\n    interval_seconds: 1\n  sources:\n    - file:\n        include: [\"logs/{include}\"]\n        exclude: [\"*.copy\"]\n        start_at: beginning\n        scan_interval_ms: 50\n{extra}  destination:\n    local:\n      path: out\n"
    )
}

/// Objects delivered to `dir/out` so far: not the error output, not those still being staged
/// (`name#n`, renamed into place once whole), nor one renamed away between listing and reading.
fn delivered_files(dir: &Path) -> Vec<Vec<u8>> {
    let out = dir.join("out");
    if !out.exists() {
        return Vec::new();
    }
    files_under(&out)
        .iter()
        .filter(|file| !file.starts_with(out.join("processing-failed")))
        .filter(|file| !file.to_string_lossy().contains('#'))
        .filter_map(|file| std::fs::read(file).ok())
        .collect()
}

/// Every delivered object's lines (objects in no particular order).
fn delivered_objects(dir: &Path) -> Vec<Vec<String>> {
    delivered_files(dir)
        .into_iter()
        .map(|bytes| {
            let text = String::from_utf8(bytes).unwrap();
            text.lines().map(str::to_string).collect()
        })
        .collect()
}

fn delivered_count(dir: &Path) -> usize {
    delivered_objects(dir).iter().map(Vec::len).sum()
}

async fn wait_for_lines(dir: &Path, at_least: usize, timeout: Duration) {
    eventually(timeout, &format!("{at_least} lines delivered"), || async {
        (delivered_count(dir) >= at_least).then_some(())
    })
    .await;
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Writes 200,000 lines (`line(generation, n)`) into `logs/app.log` under `dir`, in eight
/// generations: rotated by rename after even ones and by copytruncate after odd ones, with
/// the service killed (-9) and restarted in the middle of five of them. `delivered(dir)`
/// says how many lines have landed. Returns the running service and the lines written.
async fn write_through_rotation_and_kills<F, Fut>(
    dir: tempfile::TempDir,
    streams: &str,
    line: fn(usize, usize) -> String,
    delivered: F,
) -> (Hydrant, usize)
where
    F: Fn(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    const GENERATIONS: usize = 8;
    const LINES_PER_GENERATION: usize = 25_000;
    const BURST: usize = 500;
    const KILLED_IN: [usize; 5] = [0, 2, 3, 5, 6];
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let live = logs.join("app.log");
    let mut hydrant = Hydrant::start_in(dir, "", streams, &[]);
    let mut written = 0usize;
    let wait_for = |hydrant: &Hydrant, at_least: usize| {
        let base = hydrant.dir.path().to_path_buf();
        let delivered = &delivered;
        async move {
            eventually(
                Duration::from_secs(60),
                &format!("{at_least} lines delivered"),
                || {
                    let landed = delivered(base.clone());
                    async move { (landed.await >= at_least).then_some(()) }
                },
            )
            .await;
        }
    };
    for generation in 0..GENERATIONS {
        for burst in 0..LINES_PER_GENERATION / BURST {
            let text: String = (written..written + BURST)
                .map(|n| line(generation, n))
                .collect();
            append(&live, &text);
            written += BURST;
            if burst == 25 && KILLED_IN.contains(&generation) {
                // Killed once it has made some progress since it started.
                let before = delivered(hydrant.dir.path().to_path_buf()).await;
                wait_for(&hydrant, before + 1).await;
                let dir = hydrant.kill();
                hydrant = Hydrant::start_in(dir, "", streams, &[]);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if generation % 2 == 0 {
            std::fs::rename(&live, logs.join(format!("app.log.{generation}"))).unwrap();
        } else {
            // copytruncate: whatever is written between the copy and the truncation is lost
            // to any tailer, so the writer pauses until all it wrote was read.
            wait_for(&hydrant, written).await;
            std::fs::copy(&live, logs.join(format!("app.log.{generation}.copy"))).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&live)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    wait_for(&hydrant, written).await;
    // The last generation ended truncated: the running service notices it at its next look.
    hydrant
        .wait_for_log("copytruncate", Duration::from_secs(30))
        .await;
    (hydrant, written)
}

/// Fails unless every number below `written` was seen exactly once.
fn check_each_once(seen: &HashMap<usize, usize>, written: usize) {
    let mut twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    twice.sort();
    assert!(
        twice.is_empty(),
        "{} lines delivered more than once, the first (line, times): {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    let missing = (0..written).filter(|n| !seen.contains_key(n)).count();
    assert_eq!(missing, 0, "lines never delivered");
    assert_eq!(seen.len(), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_arrive_exactly_once_in_order_through_rotation_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let line = |generation, n| format!("g{generation} n{n:07}\n");
    let (hydrant, written) =
        write_through_rotation_and_kills(dir, &streams("app.log*", ""), line, |base| async move {
            delivered_count(&base)
        })
        .await;
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for object in delivered_objects(hydrant.dir.path()) {
        // In order per file: within an object, each generation's numbers only grow.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for line in &object {
            let (generation, number) = line.split_once(" n").expect("a written line");
            let number: usize = number.parse().unwrap();
            *seen.entry(number).or_default() += 1;
            if let Some(previous) = last.insert(generation, number) {
                assert!(previous < number, "{line} after n{previous:07}");
            }
        }
    }
    check_each_once(&seen, written);
    let metrics = hydrant.metrics().await;
    assert!(metrics.contains("hydrant_source_files_watched{stream=\"files\",source=\"file-0\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_deleted_while_read_is_finished_and_long_lines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // Read in many rounds: 400,000 lines of ~100 bytes.
    let filler = "x".repeat(80);
    let doomed: String = (0..400_000).map(|n| format!("{n:08} {filler}\n")).collect();
    std::fs::write(logs.join("doomed.log"), &doomed).unwrap();
    let long = format!("before\n{}\nafter\n", "L".repeat(10 << 20));
    std::fs::write(logs.join("long.log"), &long).unwrap();
    // A link to nothing matches the pattern but cannot be read; the others still are.
    std::os::unix::fs::symlink(logs.join("missing"), logs.join("dangling.log")).unwrap();
    let hydrant = Hydrant::start_in(dir, "", &streams("*.log", ""), &[]);
    hydrant
        .wait_for_log("doomed.log", Duration::from_secs(30))
        .await;
    std::fs::remove_file(hydrant.dir.path().join("logs/doomed.log")).unwrap();
    // The API takes records into the same stream beside the source.
    hydrant.put_all("files", &[b"from the api".to_vec()]).await;
    let base = hydrant.dir.path().to_path_buf();
    wait_for_lines(&base, 400_003, Duration::from_secs(120)).await;
    let mut lines: Vec<String> = delivered_objects(&base).into_iter().flatten().collect();
    assert_eq!(lines.len(), 400_003, "each line once");
    lines.sort();
    let mut expected: Vec<String> = doomed.lines().map(str::to_string).collect();
    expected.extend(["before", "after", "from the api"].map(str::to_string));
    expected.sort();
    assert!(
        lines == expected,
        "delivered lines differ from those written"
    );
    hydrant
        .wait_for_log("letting it go", Duration::from_secs(30))
        .await;
    let log = hydrant.log();
    assert!(log.contains("Source.LineTooLong"), "{log}");
    let refused = error_records(&base.join("out"), "processing-failed");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["errorCode"], "Source.LineTooLong");
    assert!(
        raw_data(&refused[0]) == "L".repeat(1000 * 1024).into_bytes(),
        "the error output keeps the line's first max_line_kib"
    );
    let message = refused[0]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains(&format!("line of {} bytes at offset 7", (10 << 20) + 1)),
        "{message}"
    );
    let refused = "hydrant_source_lines_refused_total{stream=\"files\",source=\"file-0\",reason=\"Source.LineTooLong\"} 1";
    let metrics = hydrant.metrics().await;
    assert!(metrics.contains(refused), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binary_file_passes_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let mut bytes: Vec<u8> = (0..2_000_000).map(|_| fastrand_byte()).collect();
    bytes.push(b'\n');
    std::fs::write(logs.join("blob.bin"), &bytes).unwrap();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let one_batch = streams("*.bin", "").replace("size_mib: 1", "size_mib: 5");
    let hydrant = Hydrant::start_in(dir, "", &one_batch, &[]);
    let base = hydrant.dir.path().to_path_buf();
    eventually(Duration::from_secs(60), "every line delivered", || async {
        let delivered: usize = delivered_files(&base)
            .iter()
            .map(|f| f.iter().filter(|&&b| b == b'\n').count())
            .sum();
        (delivered >= lines).then_some(())
    })
    .await;
    let objects = delivered_files(&base);
    // Read in one go and flushed by age: one batch.
    assert_eq!(objects.len(), 1);
    assert!(objects[0] == bytes);
}

/// A byte from a fixed-seed generator (xorshift), so the file is the same on every run.
fn fastrand_byte() -> u8 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 24) as u8
    })
}

#[test]
fn validate_warns_of_a_pattern_matching_nothing_and_fails_on_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::symlink(logs.join("missing"), logs.join("dangling.log")).unwrap();
    let config = format!(
        "streams:\n{}",
        indent(
            &streams("*.log", "")
                .replace("[\"logs/*.log\"]", "[\"logs/*.log\", \"nothing/*.log\"]"),
            2
        )
    );
    let path = dir.path().join("hydrant.yaml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: stream `files`: include pattern `nothing/*.log` matches no file yet"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("stream `files`: cannot read `") && stderr.contains("dangling.log"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multiline_events_are_joined_whole_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let app = logs.join("app.log");
    let multiline = "        multiline:\n          start_pattern: '^\\d{4}-\\d{2}-\\d{2} '\n          timeout_ms: 2000\n";
    let streams = streams("app.log", multiline);
    append(
        &app,
        "2026-11-30 first\n  at one()\n  at two()\n2026-11-30 second\n  at three()\n",
    );
    let hydrant = Hydrant::start_in(dir, "", &streams, &[]);
    let base = hydrant.dir.path().to_path_buf();
    // The first event ends at the second's start line; the second completes by timeout.
    wait_for_lines(&base, 5, Duration::from_secs(30)).await;
    let dir = hydrant.kill();
    // A third event starts while the service is down; its continuation comes after the
    // restart, well within the timeout.
    append(&app, "2026-11-30 third\n");
    let hydrant = Hydrant::start_in(dir, "", &streams, &[]);
    append(&hydrant.dir.path().join("logs/app.log"), "  at four()\n");
    let base = hydrant.dir.path().to_path_buf();
    wait_for_lines(&base, 7, Duration::from_secs(30)).await;
    let mut events: Vec<String> = delivered_files(&base)
        .into_iter()
        .map(|bytes| String::from_utf8(bytes).unwrap())
        .collect();
    events.sort();
    let delivered = events.concat();
    let expected = [
        "2026-11-30 first\n  at one()\n  at two()\n",
        "2026-11-30 second\n  at three()\n",
        "2026-11-30 third\n  at four()\n",
    ];
    for event in expected {
        assert_eq!(
            delivered.matches(event).count(),
            1,
            "{event:?} in {delivered:?}"
        );
    }
    assert_eq!(delivered.len(), expected.concat().len(), "{delivered:?}");
}

/// The service's `hydrant_source_bytes_behind` for the test stream's first source.
async fn bytes_behind(hydrant: &Hydrant) -> Option<f64> {
    let metrics = hydrant.metrics().await;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("hydrant_source_bytes_behind{stream=\"files\",source=\"file-0\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Documents in `index` (a name or pattern); none before the first batch creates it.
async fn document_count(index: &str) -> usize {
    let url = format!("{}/{index}/_count", servers().search_endpoint);
    let response = reqwest::get(&url).await.unwrap();
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return 0;
    }
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let answer: serde_json::Value = response.json().await.unwrap();
    answer["count"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_land_in_the_search_server_exactly_once_through_rotation_and_kill_9() {
    let index = unique_name("tailed");
    let streams = format!(
        "files:\n  buffer:\n    size_mib: 1\n    interval_seconds: 1\n  sources:\n    - file:\n        include: [\"logs/app.log*\"]\n        exclude: [\"*.copy\"]\n        start_at: beginning\n        scan_interval_ms: 50\n  destination:\n    opensearch:\n      endpoint: {}\n      index: {index}\n",
        servers().search_endpoint
    );
    let line = |generation, n| format!("{{\"g\":{generation},\"n\":{n},\"msg\":\"k{n}\"}}\n");
    let (hydrant, written) =
        write_through_rotation_and_kills(tempfile::tempdir().unwrap(), &streams, line, |_| {
            document_count(&index)
        })
        .await;
    // Every line read and spooled, and every spooled record delivered: nothing is left to
    // arrive, so the count is final.
    eventually(
        Duration::from_secs(60),
        "everything read and delivered",
        || async {
            let behind = bytes_behind(&hydrant).await;
            let undelivered = hydrant.stats("files").await["undelivered_records"].as_u64();
            (behind == Some(0.0) && undelivered == Some(0)).then_some(())
        },
    )
    .await;
    // As many documents as lines, as many distinct numbers, all of them below `written`:
    // each line exactly once.
    assert_eq!(
        document_count(&index).await,
        written,
        "one document per line"
    );
    let distinct = search_post(
        &format!("{index}/_search"),
        serde_json::json!({ "size": 0, "aggs": { "n": { "cardinality": { "field": "n" } } } }),
    )
    .await;
    assert_eq!(
        distinct["aggregations"]["n"]["value"], written,
        "{distinct}"
    );
    let in_range = search_post(
        &format!("{index}/_count"),
        serde_json::json!({ "query": { "range": { "n": { "gte": 0, "lt": written } } } }),
    )
    .await;
    assert_eq!(in_range["count"], written, "{in_range}");
    let hits = search_post(
        &format!("{index}/_search"),
        serde_json::json!({ "query": { "match": { "msg": "k117321" } }, "size": 10 }),
    )
    .await;
    let found = hits["hits"]["hits"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{hits}");
    assert_eq!(found[0]["_source"]["n"], 117_321);
    assert_eq!(found[0]["_source"]["g"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nginx_example_indexes_new_access_log_lines_as_json() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx-to-search.yaml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("nginx");
    std::fs::create_dir(&logs).unwrap();
    let index = unique_name("nginx");
    let config = example
        .replace("listen: 127.0.0.1:4573", "listen: 127.0.0.1:0")
        .replace("index: nginx", &format!("index: {index}"))
        .replace("${NGINX_LOGS:-/var/log/nginx}", &logs.display().to_string())
        .replace("${TRANSFORMS}", &transforms_dir().display().to_string())
        .replace(
            "${SEARCH_ENDPOINT:-http://127.0.0.1:9200}",
            &servers().search_endpoint,
        );
    assert!(!config.contains("${"), "{config}");
    let line = |n: usize| {
        format!(
            "10.0.0.{} - - [30/Nov/2026:10:00:{:02} +0000] \"GET /page/{n} HTTP/1.1\" 200 {} \"-\" \"curl/8.11\"\n",
            n % 250,
            n % 60,
            100 + n
        )
    };
    // Already there the first time: not shipped (`start_at: end`).
    append(&logs.join("access.log"), &line(1000));
    // A rotated file that never gets another line: not shipped either, even after a restart.
    append(&logs.join("access.log.1"), &line(2000));
    let path = dir.path().join("nginx-to-search.yaml");
    std::fs::write(&path, config).unwrap();
    let mut hydrant = Hydrant::start_with_file(&path, dir);
    hydrant
        .wait_for_log("reading file", Duration::from_secs(30))
        .await;
    let live = hydrant.dir.path().join("nginx/access.log");
    let new_lines: String = (0..20).map(line).collect();
    append(
        &live,
        &format!("{new_lines}this is not an access-log line\n"),
    );
    let indices = format!("{index}-*");
    eventually(Duration::from_secs(60), "20 documents", || async {
        (document_count(&indices).await >= 20).then_some(())
    })
    .await;
    let errors_dir = hydrant.dir.path().join("hydrant-search-errors");
    let failed = eventually(
        Duration::from_secs(30),
        "the bad line in the error output",
        || async {
            let found = error_records(&errors_dir, "processing-failed");
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    assert_eq!(
        document_count(&indices).await,
        20,
        "only the lines written after the start"
    );
    assert_eq!(failed.len(), 1);
    assert_eq!(raw_data(&failed[0]), b"this is not an access-log line");
    let hits = search_post(
        &format!("{index}-*/_search"),
        serde_json::json!({ "query": { "match": { "path": "/page/7" } }, "size": 1 }),
    )
    .await;
    let document = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(document["status"], 200, "{hits}");
    assert_eq!(document["bytes"], 107, "{hits}");
    assert_eq!(document["remote_addr"], "10.0.0.7", "{hits}");

    // Restarted: the new lines are shipped, the old ones still are not.
    let dir = hydrant.kill();
    let mut hydrant = Hydrant::start_with_file(&path, dir);
    let more: String = (20..25).map(line).collect();
    append(&hydrant.dir.path().join("nginx/access.log"), &more);
    eventually(Duration::from_secs(60), "25 documents", || async {
        (document_count(&indices).await >= 25).then_some(())
    })
    .await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    assert_eq!(document_count(&indices).await, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_stops_the_reading_and_nothing_is_lost() {
    let receiver = EndpointReceiver::start(Vec::new(), None, None).await;
    receiver.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // 30 MB of lines against an 8 MiB spool whose destination is down.
    let filler = "y".repeat(90);
    let lines: Vec<String> = (0..300_000).map(|n| format!("{n:08} {filler}")).collect();
    std::fs::write(logs.join("big.log"), lines.join("\n") + "\n").unwrap();
    let streams = format!(
        "files:\n  buffer:\n    size_mib: 1\n    interval_seconds: 1\n  sources:\n    - file:\n        include: [\"logs/*.log\"]\n        start_at: beginning\n  destination:\n    http_endpoint:\n      url: {}\n      initial_backoff_ms: 50\n      max_backoff_seconds: 1\n",
        receiver.url
    );
    let hydrant = Hydrant::start_in(dir, "spool:\n  max_mib: 8\n", &streams, &[]);
    // Reading stops with most of the file still unread, and the spool within its limit.
    eventually(Duration::from_secs(30), "the spool full", || async {
        let spooled = hydrant.stats("files").await["undelivered_records"].as_u64()?;
        (spooled > 0 && bytes_behind(&hydrant).await? > 20e6).then_some(spooled)
    })
    .await;
    let metrics = hydrant.metrics().await;
    assert!(metric(&metrics, "hydrant_spool_bytes", "files") <= (8 << 20) as f64);
    receiver.set_down(false);
    eventually(Duration::from_secs(120), "every line delivered", || async {
        (receiver.deduplicated().len() >= lines.len()).then_some(())
    })
    .await;
    let delivered: Vec<Vec<u8>> = receiver.deduplicated();
    assert_eq!(delivered.len(), lines.len(), "each line once");
    assert!(
        delivered
            .iter()
            .zip(&lines)
            .all(|(got, sent)| got == sent.as_bytes()),
        "in order, as written"
    );
}
