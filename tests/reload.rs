//! Changing the configuration of a running service (SIGHUP and `hydrant reload`): producers
//! put into three streams (one split into partitions) while the file is changed ten times —
//! prefixes, buffering, compression, a stream added and removed, one file with an error —
//! and every stream delivers each acknowledged record exactly once.

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Hydrant, eventually};
use common::{Producers, check_exactly_once, record};

/// The file of reload `round`: each stream changes something every round; `d` exists
/// from round 3 to round 6.
fn config(round: usize) -> String {
    let compression = if round.is_multiple_of(2) {
        "gzip"
    } else {
        "none"
    };
    let step = 1 + round % 3;
    let mut streams = format!(
        "streams:\n  \
         a:\n    buffer: {{ size_mib: 1, interval_seconds: 1 }}\n    destination:\n      local: {{ path: out-a, prefix: round-{round}/ }}\n  \
         b:\n    buffer: {{ size_mib: {step}, interval_seconds: {step} }}\n    partitioning: {{ query: '{{p: (.id | .[0:2])}}' }}\n    destination:\n      local: {{ path: out-b, prefix: 'p=!{{partitionKeyFromQuery:p}}/' }}\n  \
         c:\n    buffer: {{ size_mib: {step}, interval_seconds: 1 }}\n    compression: {compression}\n    destination:\n      local: {{ path: out-c }}\n"
    );
    if (3..7).contains(&round) {
        streams.push_str(
            "  d:\n    buffer: { size_mib: 1, interval_seconds: 1 }\n    destination:\n      local: { path: out-d }\n",
        );
    }
    format!("server:\n  listen: 127.0.0.1:0\n  backpressure_wait_ms: 200\n{streams}")
}

/// Every record id in the objects under `dir` (gzip or not), with how often it appears.
fn delivered_ids(dir: &Path) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let text = if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut text = String::new();
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_string(&mut text)
                    .unwrap();
                text
            } else {
                String::from_utf8(bytes).unwrap()
            };
            for line in text.lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                *ids.entry(record["id"].as_str().unwrap().to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    ids
}

/// `hydrant reload --config <path>` against `hydrant`.
fn reload(hydrant: &Hydrant, path: &Path) -> std::process::Output {
    hydrant
        .command("reload")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

fn delivered(stats: &serde_json::Value) -> u64 {
    stats["delivered_records"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_load_keep_every_stream_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hydrant.yaml");
    std::fs::write(&path, config(0)).unwrap();
    let mut hydrant = Hydrant::start_with_file(&path, dir);
    let base = Arc::new(Mutex::new(hydrant.base_url.clone()));
    let producers: Vec<(&str, Producers)> = ["a", "b", "c"]
        .into_iter()
        .map(|stream| (stream, Producers::start(2, stream, base.clone())))
        .collect();
    let d_producer_ids: Vec<Vec<u8>> = (0..300).map(|n| record(&format!("d-{n}"))).collect();

    let mut reloads = 0;
    for round in 1..=10 {
        // Each round starts once every stream delivered more since the last one.
        let before: Vec<u64> = {
            let mut counts = Vec::new();
            for stream in ["a", "b", "c"] {
                counts.push(delivered(&hydrant.stats(stream).await));
            }
            counts
        };
        eventually(
            Duration::from_secs(30),
            "every stream delivering",
            || async {
                for (stream, was) in ["a", "b", "c"].iter().zip(&before) {
                    if delivered(&hydrant.stats(stream).await) <= *was {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        if round == 5 {
            // A file with a mistake is refused as a whole, with where the mistake is: by
            // `hydrant reload` before it calls the service, and by the service at SIGHUP.
            let broken = config(round).replace(
                "c:\n    buffer: { size_mib: 3",
                "c:\n    buffer: { size_mib: lots",
            );
            assert_ne!(broken, config(round));
            std::fs::write(&path, broken).unwrap();
            let output = reload(&hydrant, &path);
            let said = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{said}");
            assert!(said.contains("hydrant.yaml:15:"), "names the line: {said}");
            hydrant.signal_hangup();
            hydrant
                .wait_for_log(
                    "reload refused, the running configuration stays",
                    Duration::from_secs(30),
                )
                .await;
            assert!(
                hydrant.log().contains("hydrant.yaml:15:"),
                "{}",
                hydrant.log()
            );
            // The running configuration stays: `d` still takes records.
            hydrant.put_all("d", &d_producer_ids[100..200]).await;
            continue;
        }
        std::fs::write(&path, config(round)).unwrap();
        if round.is_multiple_of(2) {
            let output = reload(&hydrant, &path);
            let said = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{said}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                said.contains("changed (restarted from the spool): a, b, c"),
                "{said}"
            );
            reloads += 1;
        } else {
            hydrant.signal_hangup();
            reloads += 1;
            let expected = reloads;
            eventually(Duration::from_secs(60), "the SIGHUP reload", || async {
                (hydrant.log().matches("reloaded ").count() >= expected).then_some(())
            })
            .await;
        }
        match round {
            3 => hydrant.put_all("d", &d_producer_ids[..100]).await,
            7 => {
                // Removed: it takes no more records, and what it took is delivered.
                let (status, _) = hydrant.post_ndjson("d", "{\"id\":\"late\"}\n").await;
                assert_eq!(status, 400);
            }
            _ => {}
        }
    }
    let mut acked_by_stream = Vec::new();
    for (stream, producers) in producers {
        acked_by_stream.push((stream, producers.stop().await));
    }
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let log = hydrant.log();
    assert!(!log.contains("panicked"), "{log}");
    // Nine reloads applied, each restarting a, b and c after the batches they were writing.
    let restarts = log.matches("delivery loop stopped for a restart").count();
    let partitioned = log
        .matches("partitioned delivery stopped for a restart")
        .count();
    assert!(
        restarts >= 18 && partitioned >= 9,
        "{restarts} + {partitioned} restarts:\n{log}"
    );
    for (stream, (acked, attempted)) in acked_by_stream {
        let ids = delivered_ids(&hydrant.dir.path().join(format!("out-{stream}")));
        assert!(
            acked.len() > 1000,
            "{stream}: only {} acknowledged",
            acked.len()
        );
        check_exactly_once(&ids, &acked, &attempted);
    }
    // Stream a's prefix followed the file: its objects sit under several rounds' prefixes.
    let prefixes = std::fs::read_dir(hydrant.dir.path().join("out-a"))
        .unwrap()
        .count();
    assert!(prefixes >= 5, "{prefixes} prefixes");
    // Stream d, added then removed, delivered what it took, once.
    let d = delivered_ids(&hydrant.dir.path().join("out-d"));
    assert_eq!(d.len(), 200, "{d:?}");
    assert!(d.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_built_refuses_the_whole_reload() {
    let streams = |extra: &str, a_processors: &str| {
        format!(
            "server:\n  listen: 127.0.0.1:0\nstreams:\n{extra}  \
             a:\n    buffer: {{ size_mib: 1, interval_seconds: 1 }}\n{a_processors}    destination:\n      local: {{ path: out-a }}\n"
        )
    };
    let e = "  e:\n    buffer: { size_mib: 1, interval_seconds: 1 }\n    destination:\n      local: { path: out-e }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hydrant.yaml");
    std::fs::write(&path, streams("", "")).unwrap();
    let hydrant = Hydrant::start_with_file(&path, dir);
    // Adding `e` while `a` names a module that is not there: the file is valid, but `a`
    // cannot be built, so `e` is not added either.
    std::fs::write(
        &path,
        streams(
            e,
            "    processors: [ { wasm: { module: missing.wasm } } ]\n",
        ),
    )
    .unwrap();
    let output = reload(&hydrant, &path);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("missing.wasm"), "{said}");
    let (status, _) = hydrant.post_ndjson("e", "{\"id\":\"early\"}\n").await;
    assert_eq!(status, 400, "e was not added");
    // Without the broken module, `e` is added (its spool opened again) and delivers.
    std::fs::write(&path, streams(e, "")).unwrap();
    let output = reload(&hydrant, &path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    hydrant.put_all("e", &[record("e-1"), record("e-2")]).await;
    eventually(Duration::from_secs(30), "e delivered", || async {
        let ids = delivered_ids(&hydrant.dir.path().join("out-e"));
        (ids.len() == 2 && ids.values().all(|n| *n == 1)).then_some(())
    })
    .await;
}
