//! A Hydrant cluster on NATS JetStream: three nodes share the streams' partitions, and every
//! acknowledged record is delivered exactly once through the loss of a node and of the
//! NATS server leading a stream. (Each stream here holds at most 64 MiB: JetStream reserves a
//! stream's whole `max_bytes` on every replica's disk, and the servers share one disk.)

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const RECORDS: usize = 200_000;
const PER_CALL: usize = 500;
const LEASE_TTL: Duration = Duration::from_secs(10);

/// The `spool:` section of a node of a cluster on `nats`.
fn cluster_spool(nats: &NatsCluster, partitions: u32) -> String {
    format!(
        "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 3\n    partitions: {partitions}\n    lease_ttl_seconds: {}\n",
        nats.servers_yaml(),
        LEASE_TTL.as_secs()
    )
}

/// Every id in the gzip objects under `prefix`, with how often it appears.
async fn ids_in_objects(bucket: &Bucket, prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for key in bucket.keys(prefix).await {
        let body = gunzip(&bucket.get(&key).await.0);
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: Value = serde_json::from_slice(line).expect("one record per line");
            *counts
                .entry(value["id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// The owners of the 8 partitions of `stream` as the lease bucket says (empty while the
/// bucket cannot be read).
async fn partition_owners(client: &async_nats::Client, stream: &str) -> Vec<String> {
    partition_owners_of(client, stream, 8).await
}

/// The owners of the `partitions` partitions of `stream` (empty while the bucket cannot be
/// read).
async fn partition_owners_of(
    client: &async_nats::Client,
    stream: &str,
    partitions: u32,
) -> Vec<String> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let Ok(leases) = jetstream.get_key_value("hydrant_leases").await else {
        return Vec::new();
    };
    let mut owners = Vec::new();
    for partition in 0..partitions {
        let Ok(Some(entry)) = leases.entry(format!("part.{stream}.{partition}")).await else {
            return Vec::new();
        };
        let state: Value = serde_json::from_slice(&entry.value).unwrap();
        owners.push(state["owner"].as_str().unwrap_or_default().to_string());
    }
    owners
}

/// Each partition of `stream` (of 8): its lease entry and how many messages JetStream holds
/// for it, for a failure message.
async fn partition_states(client: &async_nats::Client, stream: &str) -> Vec<String> {
    use futures_util::StreamExt as _;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut held = HashMap::new();
    if let Ok(found) = jetstream.get_stream(format!("hydrant-{stream}")).await
        && let Ok(mut subjects) = found
            .info_with_subjects(format!("hydrant.{stream}.>"))
            .await
    {
        while let Some(Ok((subject, count))) = subjects.next().await {
            held.insert(subject, count);
        }
    }
    let leases = jetstream.get_key_value("hydrant_leases").await.ok();
    let mut states = Vec::new();
    for partition in 0..8 {
        let entry = match &leases {
            Some(leases) => leases
                .entry(format!("part.{stream}.{partition}"))
                .await
                .ok()
                .flatten()
                .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
            None => None,
        };
        let messages = held.get(&format!("hydrant.{stream}.{partition}"));
        states.push(format!("{partition}: {entry:?}, {messages:?}"));
    }
    states
}

/// Which JetStream messages of `stream` still hold some of `ids` (a sample), as
/// `subject#sequence: n of them`, for a failure message: records still held were never
/// delivered; records missing from every message were taken as delivered.
async fn messages_holding(
    client: &async_nats::Client,
    stream: &str,
    ids: &[&String],
) -> Vec<String> {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt as _;
    let jetstream = async_nats::jetstream::new(client.clone());
    let Ok(found) = jetstream.get_stream(format!("hydrant-{stream}")).await else {
        return vec!["the stream cannot be read".to_string()];
    };
    let Ok(reader) = found
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
    else {
        return vec!["no consumer can be created".to_string()];
    };
    let Ok(mut messages) = reader.messages().await else {
        return vec!["the stream cannot be read".to_string()];
    };
    let needles: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| format!("\"id\":\"{id}\",").into_bytes())
        .collect();
    let mut holding = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let held = needles
            .iter()
            .filter(|needle| memchr::memmem::find(&message.payload, needle).is_some())
            .count();
        if held > 0 {
            let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            holding.push(format!("{}#{seq}: {held}", message.subject));
        }
    }
    holding
}

/// What `delivered` reads once every id of `acked` is in it, before `deadline`; otherwise
/// fails naming what is missing, who owns `stream`'s partitions, and what the nodes warned of.
async fn caught_up<F, Fut>(
    deadline: Instant,
    acked: &HashSet<String>,
    nodes: &[Hydrant],
    watcher: &async_nats::Client,
    stream: &str,
    mut delivered: F,
) -> HashMap<String, usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = HashMap<String, usize>>,
{
    loop {
        let found = delivered().await;
        let missing: Vec<&String> = acked.iter().filter(|id| !found.contains_key(*id)).collect();
        if missing.is_empty() {
            return found;
        }
        if Instant::now() > deadline {
            let warnings: Vec<String> = nodes
                .iter()
                .flat_map(|node| {
                    node.log()
                        .lines()
                        .filter(|l| {
                            l.contains(" WARN ")
                                || l.contains(" ERROR ")
                                || l.contains("panicked")
                                || l.contains("hydrant::cluster::assign")
                                || l.contains("already loaded")
                        })
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "{stream}: {} acknowledged records not delivered 60 s after the load, e.g. {:?}; messages still holding 50 of them: {:?}; partitions (lease entry, messages held) {:?}; node warnings and partition moves (last 60):\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                messages_holding(watcher, stream, &missing[..missing.len().min(50)]).await,
                partition_states(watcher, stream).await,
                warnings[warnings.len().saturating_sub(60)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Acknowledged ids per stream, and how many calls have been answered or failed.
#[derive(Default)]
struct Load {
    acked: Mutex<HashMap<&'static str, HashSet<String>>>,
    calls_done: AtomicUsize,
    failed_calls: AtomicUsize,
}

/// Puts batch `batch` (records `batch * PER_CALL ..`) into `stream` on the node at `url`;
/// no retries: a call that fails leaves its records unacknowledged.
async fn put_batch(
    client: &reqwest::Client,
    url: &str,
    stream: &'static str,
    batch: usize,
    load: &Load,
) {
    let ids: Vec<String> = (batch * PER_CALL..(batch + 1) * PER_CALL)
        .map(|n| format!("r{n}"))
        .collect();
    let records: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "Data": base64::engine::general_purpose::STANDARD.encode(record(id)) }))
        .collect();
    let answer = client
        .post(format!("{url}/"))
        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
        .header("content-type", "application/x-amz-json-1.1")
        .body(json!({ "DeliveryStreamName": stream, "Records": records }).to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let responses = match answer {
        Ok(answer) => answer.json::<Value>().await.ok(),
        Err(_) => None,
    };
    let Some(responses) = responses.and_then(|v| v["RequestResponses"].as_array().cloned()) else {
        load.failed_calls.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut acked = load.acked.lock().unwrap();
    let acked = acked.entry(stream).or_default();
    for (id, response) in ids.into_iter().zip(responses) {
        if response.get("RecordId").is_some() {
            acked.insert(id);
        }
    }
}

/// Waits until `done` calls of the load have finished.
async fn progress_reaches(load: &Load, done: usize) {
    eventually(Duration::from_secs(240), "the load to progress", || async {
        (load.calls_done.load(Ordering::Relaxed) >= done).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_record_arrives_once_through_node_and_nats_server_loss() {
    let mut nats = NatsCluster::start(3).await;
    let bucket = new_bucket("cluster");
    let table = new_id_doc_table("cluster").await;
    let streams = format!(
        "to-s3:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  compression: gzip\n  destination:\n{}\
         to-pg:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n{}",
        indent(&s3_destination_yaml(&bucket, "c/", None), 4),
        indent(
            &postgres_destination_yaml(&table, "- { name: id }\n- { name: doc, from: . }\n", None),
            4
        )
    );
    let top = cluster_spool(&nats, 8);
    let mut nodes: Vec<Hydrant> = (0..3)
        .map(|_| Hydrant::start_full(&top, &streams, &[]))
        .collect();
    let urls = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.base_url.clone()).collect::<Vec<_>>(),
    ));
    let watcher = nats.client().await;

    let batches = RECORDS / PER_CALL;
    let load = Arc::new(Load::default());
    let next_batch = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (load, next_batch, urls) = (load.clone(), next_batch.clone(), urls.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let batch = next_batch.fetch_add(1, Ordering::Relaxed);
                    if batch >= batches {
                        return;
                    }
                    let url = urls.lock().unwrap()[batch % 3].clone();
                    for stream in ["to-s3", "to-pg"] {
                        put_batch(&client, &url, stream, batch, &load).await;
                    }
                    load.calls_done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // At 30 %: SIGKILL a Hydrant node; its partitions must move within the lease time + 5 s.
    progress_reaches(&load, batches * 30 / 100).await;
    let killed_pid = nodes[1].process_id();
    let killed_dir = nodes.remove(1).kill();
    let killed_at = Instant::now();
    let killed_owner = format!("{killed_pid}-");
    for stream in ["to-s3", "to-pg"] {
        eventually(
            LEASE_TTL + Duration::from_secs(5),
            "the killed node's partitions to move",
            || {
                let (watcher, killed_owner) = (watcher.clone(), killed_owner.clone());
                async move {
                    let owners = partition_owners(&watcher, stream).await;
                    (owners.len() == 8
                        && owners
                            .iter()
                            .all(|o| !o.is_empty() && !o.starts_with(&killed_owner)))
                    .then_some(())
                }
            },
        )
        .await;
    }
    let moved_after = killed_at.elapsed();

    // At 50 %: SIGKILL the NATS server leading the S3 stream's JetStream stream.
    progress_reaches(&load, batches * 50 / 100).await;
    let leader = nats.stream_leader("hydrant-to-s3").await;
    let leader = nats.index_of(&leader);
    nats.kill_node(leader);

    // At 70 %: both come back.
    progress_reaches(&load, batches * 70 / 100).await;
    nats.start_node(leader);
    let restarted = Hydrant::start_in(killed_dir, &top, &streams, &[]);
    urls.lock().unwrap()[1] = restarted.base_url.clone();
    nodes.insert(1, restarted);

    for producer in producers {
        producer.await.unwrap();
    }
    let load_ended = Instant::now();
    let acked = std::mem::take(&mut *load.acked.lock().unwrap());
    let attempted: HashSet<String> = (0..RECORDS).map(|n| format!("r{n}")).collect();
    for stream in ["to-s3", "to-pg"] {
        let acked = &acked[stream];
        assert!(
            acked.len() > RECORDS / 2,
            "{stream}: only {} of {RECORDS} records acknowledged ({} calls failed)",
            acked.len(),
            load.failed_calls.load(Ordering::Relaxed)
        );
    }

    // Delivery catches up within 60 s of the end of the load.
    let objects = Bucket::new(&bucket);
    let pg = pg_client().await;
    let caught_up_by = load_ended + Duration::from_secs(60);
    let delivered_s3 = caught_up(
        caught_up_by,
        &acked["to-s3"],
        &nodes,
        &watcher,
        "to-s3",
        || ids_in_objects(&objects, "c/"),
    )
    .await;
    let delivered_pg = caught_up(
        caught_up_by,
        &acked["to-pg"],
        &nodes,
        &watcher,
        "to-pg",
        || ids_in_table(&pg, &table),
    )
    .await;
    let caught_up_after = load_ended.elapsed();
    assert!(caught_up_after < Duration::from_secs(60));
    check_exactly_once(&delivered_s3, &acked["to-s3"], &attempted);
    check_exactly_once(&delivered_pg, &acked["to-pg"], &attempted);
    eprintln!(
        "acknowledged {} / {} records, partitions moved {:?} after the kill, caught up {:?} after the load",
        acked["to-s3"].len(),
        acked["to-pg"].len(),
        moved_after,
        caught_up_after
    );

    // Every node stops cleanly, and nothing is left running.
    let mut pids: Vec<u32> = nodes.iter().map(Hydrant::process_id).collect();
    for node in &mut nodes {
        let status = node.terminate();
        assert!(status.success(), "{}", node.log());
    }
    pids.extend(nats.pids());
    drop(nats);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z ")),
            "process {pid} still runs"
        );
    }
}

/// How many of `owners` each node (by process id) holds.
fn held_by(owners: &[String], pid: u32) -> usize {
    let prefix = format!("{pid}-");
    owners.iter().filter(|o| o.starts_with(&prefix)).count()
}

/// Every `n` in the NDJSON files under `dir`, with how often it appears.
fn numbers_in_files(dir: &std::path::Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    if !dir.exists() {
        return counts;
    }
    for file in files_under(dir) {
        for line in std::fs::read(&file).unwrap().split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_slice(line).expect("one record per line");
            *counts.entry(value["n"].as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    counts
}

/// Puts records `range` through `node`'s NDJSON endpoint, 100 per call.
async fn put_numbers(node: &Hydrant, range: std::ops::Range<u64>) {
    let numbers: Vec<u64> = range.collect();
    for chunk in numbers.chunks(100) {
        let body: String = chunk.iter().map(|n| format!("{{\"n\":{n}}}\n")).collect();
        let (status, answer) = node.post_ndjson("shared", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_gets_its_share_and_a_stopping_node_hands_over_at_once() {
    join_and_stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dynamically_partitioned_stream_moves_between_nodes_without_loss_or_repeat() {
    join_and_stop(true).await;
}

/// A second node joins a one-node cluster and gets half the partitions (given back by the
/// first, stopping after the batch it writes), then stops with SIGTERM and hands them back at
/// once; 4,000 records are delivered once each. `partitioned`: split by `n % 4` into
/// `m=<key>/` directories, each record under its own key.
async fn join_and_stop(partitioned: bool) {
    let nats = NatsCluster::start(3).await;
    let watcher = nats.client().await;
    let out = tempfile::tempdir().unwrap();
    // A long lease: partitions that move within seconds were handed over, not expired.
    let top = format!(
        "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 3\n    partitions: 8\n    lease_ttl_seconds: 60\n",
        nats.servers_yaml()
    );
    // Partitioned, records wait a minute in their open partitions, so partitions move
    // with records buffered and not yet journaled.
    let (interval, partitioning, prefix) = if partitioned {
        (
            60,
            "  partitioning:\n    query: '{m: (.n % 4 | tostring)}'\n",
            ", prefix: 'm=!{partitionKeyFromQuery:m}/'",
        )
    } else {
        (1, "", "")
    };
    let streams = format!(
        "shared:\n  buffer: {{ size_mib: 1, interval_seconds: {interval} }}\n{partitioning}  destination:\n    local: {{ path: \"{}\"{prefix} }}\n",
        out.path().display()
    );
    let mut first = Hydrant::start_full(&top, &streams, &[]);
    let first_pid = first.process_id();
    put_numbers(&first, 0..1000).await;
    eventually(
        Duration::from_secs(60),
        "the first node to hold every partition",
        || async {
            (held_by(&partition_owners(&watcher, "shared").await, first_pid) == 8).then_some(())
        },
    )
    .await;

    let mut second = Hydrant::start_full(&top, &streams, &[]);
    let second_pid = second.process_id();
    eventually(
        Duration::from_secs(60),
        "the partitions to be shared 4 and 4",
        || async {
            let owners = partition_owners(&watcher, "shared").await;
            (held_by(&owners, first_pid) == 4 && held_by(&owners, second_pid) == 4).then_some(())
        },
    )
    .await;
    put_numbers(&first, 1000..2000).await;
    put_numbers(&second, 2000..3000).await;

    let stopped_at = Instant::now();
    assert!(second.terminate().success(), "{}", second.log());
    if partitioned {
        // It resumed partitions given back with records in their open partitions.
        let log = second.log();
        assert!(log.contains("taking over the partition"), "{log}");
    }
    eventually(
        Duration::from_secs(20),
        "the first node to hold every partition again",
        || async {
            (held_by(&partition_owners(&watcher, "shared").await, first_pid) == 8).then_some(())
        },
    )
    .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(30),
        "partitions moved only after {:?}, as if their leases had run out",
        stopped_at.elapsed()
    );
    put_numbers(&first, 3000..4000).await;

    let delivered = if partitioned {
        // Stopping delivers what the open partitions hold.
        assert!(first.terminate().success(), "{}", first.log());
        numbers_in_files(out.path())
    } else {
        eventually(
            Duration::from_secs(60),
            "every record delivered",
            || async {
                let delivered = numbers_in_files(out.path());
                (delivered.len() == 4000).then_some(delivered)
            },
        )
        .await
    };
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
    assert_eq!(delivered.len(), 4000);
    assert!(delivered.keys().all(|n| *n < 4000));
    if partitioned {
        for key in 0..4 {
            let under = numbers_in_files(&out.path().join(format!("m={key}")));
            assert_eq!(under.len(), 1000, "records under m={key}/");
            assert!(under.keys().all(|n| n % 4 == key), "m={key}/: {under:?}");
        }
    } else {
        assert!(first.terminate().success(), "{}", first.log());
    }
}

/// A stand-in NATS server that introduces itself as nats-server `version` without JetStream
/// and answers pings: enough for a client to connect and read its INFO. Returns its port.
fn old_nats_server(version: &str) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let info = format!(
        "INFO {}\r\n",
        json!({"server_id": "OLD", "server_name": "old-1", "version": version, "proto": 1,
               "max_payload": 1_048_576, "jetstream": false, "host": "127.0.0.1", "port": port})
    );
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                return;
            };
            let info = info.clone();
            std::thread::spawn(move || {
                let _ = connection.write_all(info.as_bytes());
                let reader = BufReader::new(connection.try_clone().unwrap());
                for line in reader.lines() {
                    let Ok(line) = line else { return };
                    if line.starts_with("PING") && connection.write_all(b"PONG\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn validate_reports_a_nats_server_release_that_can_lose_acknowledged_messages() {
    let config = |port: u16| {
        format!(
            "spool:\n  max_mib: 64\n  jetstream:\n    servers: [nats://127.0.0.1:{port}]\n    replicas: 1\nstreams:\n  checked:\n    destination:\n      local: {{ path: out }}\n"
        )
    };
    let (ok, output) = validate_config(&config(old_nats_server("2.9.10")));
    assert!(!ok, "{output}");
    assert!(
        output.contains("NATS server old-1 runs nats-server 2.9.10, older than 2.10.23")
            && output.contains("upgrade the NATS servers to 2.10.23 or later"),
        "{output}"
    );
    // The same stand-in on a trusted release: only its missing JetStream is reported.
    let (ok, output) = validate_config(&config(old_nats_server("2.10.23")));
    assert!(!ok, "{output}");
    assert!(output.contains("does not run JetStream"), "{output}");
    assert!(!output.contains("runs nats-server"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_nats_server_release_that_can_lose_acknowledged_messages_warns() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hydrant.yaml");
    std::fs::write(
        &config,
        format!(
            "spool:\n  jetstream:\n    servers: [nats://127.0.0.1:{}]\n    replicas: 1\nstreams:\n  warned:\n    destination:\n      local: {{ path: out }}\n",
            old_nats_server("2.9.10")
        ),
    )
    .unwrap();
    let log = dir.path().join("hydrant.log");
    // The stand-in has no JetStream: the node warns once connected, then waits for its
    // lease bucket, and is stopped here.
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let warned = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|line| line.contains("WARN") && line.contains("runs nats-server 2.9.10"))
            {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = node.kill();
    let _ = node.wait();
    let line = warned.unwrap_or_else(|_| {
        panic!(
            "no warning about nats-server 2.9.10 within 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        line.contains("upgrade the NATS servers to 2.10.23 or later"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_cluster_it_would_join() {
    let nats = NatsCluster::start(3).await;
    let config = |servers: &str, replicas: u32| {
        format!(
            "spool:\n  max_mib: 64\n  jetstream:\n    servers: {servers}\n    replicas: {replicas}\nstreams:\n  checked:\n    destination:\n      local: {{ path: out }}\n"
        )
    };
    let (ok, output) = validate_config(&config(&nats.servers_yaml(), 3));
    assert!(ok, "{output}");
    assert!(
        output.contains("JetStream stream hydrant-checked (delivery stream `checked`) will be created at the first start"),
        "{output}"
    );

    let (ok, output) = validate_config(&config(&nats.servers_yaml(), 5));
    assert!(!ok, "{output}");
    assert!(
        output.contains("`spool.jetstream.replicas` is 5 but the NATS cluster has 3 servers"),
        "{output}"
    );

    // A node created the streams with 3 replicas: a file asking for 1 is told so.
    let mut node = Hydrant::start_full(
        &format!(
            "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n",
            nats.servers_yaml()
        ),
        "checked:\n  destination:\n    local: { path: out }\n",
        &[],
    );
    assert!(node.terminate().success(), "{}", node.log());
    let (ok, output) = validate_config(&config(&nats.servers_yaml(), 1));
    assert!(!ok, "{output}");
    assert!(
        output.contains("JetStream stream hydrant-checked (delivery stream `checked`) has 3 replicas, the configuration asks for 1"),
        "{output}"
    );

    let closed = format!("[nats://127.0.0.1:{}]", free_port());
    let (ok, output) = validate_config(&config(&closed, 1));
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "cannot connect to the JetStream cluster at {}",
            &closed[1..closed.len() - 1]
        )),
        "{output}"
    );
}

/// Library settings of a cluster on `nats` with streams of one partition and `replicas`.
fn one_partition(nats: &NatsCluster, replicas: usize) -> hydrant::cluster::ClusterSettings {
    hydrant::cluster::ClusterSettings {
        servers: nats.urls(),
        replicas,
        partitions: 1,
        lease_ttl: LEASE_TTL,
        credentials: None,
        ca_file: None,
        client_certificate: None,
        max_bytes: 64 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_was_taken_over_can_change_nothing_of_the_partition() {
    use hydrant::cluster::Cluster;
    use hydrant::cluster::lease::{self, Lease, LeaseError, PartitionState};
    use hydrant::spool::SeqRange;

    let nats = NatsCluster::start(3).await;
    let settings = one_partition(&nats, 3);
    let first = Cluster::connect(settings.clone()).await.unwrap();
    let second = Cluster::connect(settings).await.unwrap();
    let key = lease::key("fenced", 0);
    let batch = SeqRange {
        first: 1 << 16,
        last: (5 << 16) + 3,
    };

    let stale = Lease::claim(&first.leases, key.clone(), &first.node, None)
        .await
        .unwrap();
    stale.seal(batch).await.unwrap();
    // The entry exists: it cannot be created again.
    assert!(matches!(
        Lease::claim(&second.leases, key.clone(), &second.node, None).await,
        Err(LeaseError::Fenced)
    ));
    // The second node takes the partition over from what it saw (as once the lease ran
    // out) and learns the batch it must write first.
    let seen = lease::observe(&second.leases, &key).await.unwrap();
    assert_eq!(
        seen.as_ref().unwrap().1.cut,
        Some([batch.first, batch.last])
    );
    let taken = Lease::claim(&second.leases, key.clone(), &second.node, seen.clone())
        .await
        .unwrap();
    assert_eq!(taken.state().await.cut, Some([batch.first, batch.last]));
    // A claim from the same, now old, sight fails.
    assert!(matches!(
        Lease::claim(&first.leases, key.clone(), &first.node, seen).await,
        Err(LeaseError::Fenced)
    ));

    // The first node, unaware, can neither record the batch delivered, nor cut another,
    // nor renew.
    assert!(matches!(
        stale.delivered(batch).await,
        Err(LeaseError::Fenced)
    ));
    assert!(matches!(
        stale
            .seal(SeqRange {
                first: batch.last + 1,
                last: batch.last + 9
            })
            .await,
        Err(LeaseError::Fenced)
    ));
    assert!(matches!(stale.renew().await, Err(LeaseError::Fenced)));
    // Nor, for a dynamically partitioned stream, journal a batch or move the checkpoint.
    let part = hydrant::spool::PartEntry {
        range: batch,
        part: 7,
        over_limit: Vec::new(),
    };
    assert!(matches!(
        stale.journal_part(&part, false).await,
        Err(LeaseError::Fenced)
    ));
    assert!(matches!(
        stale.checkpoint(batch.last).await,
        Err(LeaseError::Fenced)
    ));
    assert!(!stale.is_held(LEASE_TTL).await);

    taken.delivered(batch).await.unwrap();
    let (_, state) = lease::observe(&second.leases, &key).await.unwrap().unwrap();
    assert_eq!(
        state,
        PartitionState {
            owner: second.node.clone(),
            next: batch.last + 1,
            cut: None,
            parts: Vec::new(),
        }
    );
}

/// The only partition of stream `name` on a one-replica cluster on `nats`, its lease held
/// by a library node.
async fn held_partition(nats: &NatsCluster, name: &str) -> hydrant::cluster::PartitionLog {
    use hydrant::cluster::lease::{self, Lease};
    use hydrant::cluster::{Cluster, ClusterStatus, PartitionLog};

    let cluster = Cluster::connect(one_partition(nats, 1)).await.unwrap();
    let (stream, seed) = cluster.stream(name).await.unwrap();
    let lease = Lease::claim(&cluster.leases, lease::key(name, 0), &cluster.node, None)
        .await
        .unwrap();
    PartitionLog::new(
        name,
        0,
        seed,
        lease,
        stream,
        Arc::new(ClusterStatus::default()),
        64 << 20,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_a_batch_ending_inside_the_first_message_keeps_every_later_message() {
    use hydrant::spool::SeqRange;

    let nats = NatsCluster::start(1).await;
    let log = held_partition(&nats, "kept").await;
    let jetstream = async_nats::jetstream::new(nats.client().await);
    for _ in 0..3 {
        jetstream
            .publish("hydrant.kept.0", "records".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let messages = || async {
        let mut stream = jetstream.get_stream("hydrant-kept").await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    // Positions are (message << 16) | index.
    for (batch, left, why) in [
        (
            SeqRange {
                first: 1 << 16,
                last: (1 << 16) + 3,
            },
            3,
            "message 1 is partly delivered, 2 and 3 not at all",
        ),
        (
            SeqRange {
                first: (1 << 16) + 4,
                last: (2 << 16) + 5,
            },
            2,
            "message 1 is delivered, 2 partly, 3 not at all",
        ),
    ] {
        log.record_delivered(batch).await.unwrap();
        assert_eq!(messages().await, left, "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_journaling_many_batches_asks_for_the_oldest_partition_to_close() {
    use hydrant::spool::{PartEntry, SeqRange};

    let nats = NatsCluster::start(1).await;
    let log = held_partition(&nats, "journal").await;
    // A partition pins the checkpoint at 1 while others deliver batch after batch.
    let batch = |n: u64| PartEntry {
        range: SeqRange {
            first: 2 + n,
            last: 2 + n,
        },
        part: 10 + n,
        over_limit: Vec::new(),
    };
    for n in 0..1001 {
        log.journal_part(&batch(n), true).await.unwrap();
        assert_eq!(log.is_filling(), n >= 1000, "after {} batches", n + 1);
    }
    // Once the pinning partition is delivered, the checkpoint passes them all.
    log.record_checkpoint(2 + 1000).await.unwrap();
    assert_eq!(log.lease.journaled(), 0);
    assert!(!log.is_filling());
}

/// Posts 50 numbered records to `stream` of `node`, waits until each is in the local
/// directory `out` once, and stops the node (which must exit cleanly).
async fn delivers_fifty_records_and_stops(mut node: Hydrant, stream: &str, out: &std::path::Path) {
    let body: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let (status, answer) = node.post_ndjson(stream, &body).await;
    assert_eq!(status, 200, "{answer}");
    let delivered = eventually(Duration::from_secs(30), "the records delivered", || async {
        let delivered = numbers_in_files(out);
        (delivered.len() == 50).then_some(delivered)
    })
    .await;
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    assert!(node.terminate().success(), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_jetstream_over_tls_and_refuses_a_server_it_cannot_verify() {
    // The test PostgreSQL server's certificate (for 127.0.0.1) and its CA.
    let tls_dir = servers().pg_ca.parent().unwrap().to_path_buf();
    let nats = NatsCluster::start_tls(1, &tls_dir).await;
    let out = tempfile::tempdir().unwrap();
    let spool = |tls: &str| {
        format!(
            "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 1\n    partitions: 2\n{tls}",
            nats.servers_yaml()
        )
    };
    let verified = spool(&format!(
        "    tls: {{ ca_file: \"{}\" }}\n",
        servers().pg_ca.display()
    ));
    let streams = format!(
        "secure:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    local: {{ path: \"{}\" }}\n",
        out.path().display()
    );

    let (ok, output) = validate_config(&format!("{}streams:\n{}", spool(""), indent(&streams, 2)));
    assert!(!ok, "{output}");
    assert!(
        output.contains("cannot connect to the JetStream cluster"),
        "{output}"
    );

    let node = Hydrant::start_full(&verified, &streams, &[]);
    delivers_fifty_records_and_stops(node, "secure", out.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_signs_in_with_a_credentials_file_and_validate_names_what_a_user_may_not_write() {
    let operator = NatsOperator::new();
    let keys = tempfile::tempdir().unwrap();
    // What the README says a node needs, and no more.
    let full = operator.user_credentials(
        keys.path(),
        "node",
        &["hydrant.>", "$KV.hydrant_leases.>", "$JS.API.>", "$JS.FC.>"],
    );
    // May call the JetStream API, but neither append records nor write leases.
    let api_only = operator.user_credentials(keys.path(), "api-only", &["$JS.API.>"]);
    let nats = NatsCluster::start_operator(1, &operator, full.clone()).await;
    let out = tempfile::tempdir().unwrap();
    let spool = |credentials: &str| {
        format!(
            "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 1\n    partitions: 2\n{credentials}",
            nats.servers_yaml()
        )
    };
    let streams = format!(
        "signed:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    local: {{ path: \"{}\" }}\n",
        out.path().display()
    );
    let config = |credentials: &std::path::Path| {
        format!(
            "{}streams:\n{}",
            spool(&format!("    credentials: \"{}\"\n", credentials.display())),
            indent(&streams, 2)
        )
    };

    let (ok, output) = validate_config(&format!("{}streams:\n{}", spool(""), indent(&streams, 2)));
    assert!(!ok, "{output}");
    assert!(
        output.contains("cannot connect to the JetStream cluster"),
        "{output}"
    );

    // The credentials file comes from the environment, as users keep it out of the file.
    let node = Hydrant::start_full(
        &spool("    credentials: ${NATS_CREDS_FILE}\n"),
        &streams,
        &[("NATS_CREDS_FILE", full.to_str().unwrap())],
    );
    delivers_fifty_records_and_stops(node, "signed", out.path()).await;

    let (ok, output) = validate_config(&config(&full));
    assert!(ok, "{output}");
    let (ok, output) = validate_config(&config(&api_only));
    assert!(!ok, "{output}");
    for (stream, subjects) in [
        ("hydrant-signed", "hydrant.signed.>"),
        ("KV_hydrant_leases", "$KV.hydrant_leases.>"),
    ] {
        assert!(
            output.contains(&format!(
                "the credentials may not write JetStream stream {stream}"
            )) && output.contains(&format!("allow publishing to `{subjects}`")),
            "{stream}: {output}"
        );
    }
    // The probes wrote nothing: the 50 records are all the stream ever held.
    let jetstream = async_nats::jetstream::new(nats.client().await);
    let info = jetstream
        .get_stream("hydrant-signed")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.last_sequence, 1, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_restarts_a_cluster_stream_without_losing_or_repeating_records() {
    let nats = NatsCluster::start(3).await;
    let watcher = nats.client().await;
    let out = tempfile::tempdir().unwrap();
    let top = cluster_spool(&nats, 4);
    let streams = format!(
        "shared:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    local: {{ path: \"{}\" }}\n",
        out.path().display()
    );
    let node = Hydrant::start_full(&top, &streams, &[]);
    let pid = node.process_id();
    put_numbers(&node, 0..1000).await;
    eventually(
        Duration::from_secs(30),
        "the node to hold every partition",
        || async {
            (held_by(&partition_owners_of(&watcher, "shared", 4).await, pid) == 4).then_some(())
        },
    )
    .await;

    // A changed buffer restarts the stream: its partitions are handed back and taken again.
    let path = node.dir.path().join("hydrant.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("interval_seconds: 1", "interval_seconds: 2"),
    )
    .unwrap();
    node.signal_hangup();
    node.wait_for_log("reloaded", Duration::from_secs(30)).await;
    put_numbers(&node, 1000..2000).await;
    let log = node
        .wait_for_log("handed the partition back", Duration::from_secs(30))
        .await;
    assert!(log.contains(r#"changed=["shared"]"#), "{log}");
    eventually(
        Duration::from_secs(30),
        "the node to hold every partition again",
        || async {
            (held_by(&partition_owners_of(&watcher, "shared", 4).await, pid) == 4).then_some(())
        },
    )
    .await;

    let delivered = eventually(
        Duration::from_secs(60),
        "every record delivered",
        || async {
            let delivered = numbers_in_files(out.path());
            (delivered.len() == 2000).then_some(delivered)
        },
    )
    .await;
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taking_over_writes_the_recorded_batch_again_under_the_same_name() {
    takeover_rewrites_what_was_recorded(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taking_over_a_dynamically_partitioned_stream_rebuilds_its_journaled_batches() {
    // Ten dynamic partitions (the id's last digit), each with its own batches in flight.
    takeover_rewrites_what_was_recorded(Some(("'{digit: (.id | .[-1:])}'", "digit"))).await;
}

/// A node writes its batches to the store, whose answers never reach it, receives more
/// records and is SIGKILLed; the node taking over must write the same batches again under
/// the same names (create-only absorbs them), then the rest: every record once. With
/// `partitioning` (a query and the key it names), objects go under `t/<key>/` and each
/// record must be under its own key.
async fn takeover_rewrites_what_was_recorded(partitioning: Option<(&str, &str)>) {
    let nats = NatsCluster::start(3).await;
    let bucket = new_bucket("takeover");
    let port = free_port();
    let (_forwarder, answers) = forward_holding(port, &servers().s3_endpoint).await;
    let prefix = match partitioning {
        Some((_, key)) => format!("t/!{{partitionKeyFromQuery:{key}}}/"),
        None => "t/".to_string(),
    };
    let partitioning_yaml = partitioning.map_or_else(String::new, |(query, _)| {
        format!("  partitioning:\n    query: {query}\n")
    });
    let streams = format!(
        "held:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  compression: gzip\n{partitioning_yaml}  destination:\n{}",
        indent(
            &s3_destination_yaml(&bucket, &prefix, None)
                .replace(&servers().s3_endpoint, &format!("http://127.0.0.1:{port}")),
            4
        )
    );
    let top = format!(
        "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 3\n    partitions: 1\n    lease_ttl_seconds: 3\n",
        nats.servers_yaml()
    );
    // The node calls the store only to write batches: every answer from now on is held.
    answers.set(true);
    let first = Hydrant::start_full(&top, &streams, &[]);
    let ids: Vec<String> = (0..2000).map(|n| format!("t{n}")).collect();
    let records: Vec<Vec<u8>> = ids.iter().map(|id| record(id)).collect();
    for part in records[..1000].chunks(500) {
        first.put_all("held", part).await;
    }
    // The first batches are written to the store, but their answers never reach the node.
    let written = if partitioning.is_some() { 8 } else { 1 };
    eventually(
        Duration::from_secs(30),
        "the batches' writes to be answered",
        || async { (answers.held() >= written).then_some(()) },
    )
    .await;
    // Nothing the node wrote is confirmed: its oldest record ages.
    eventually(
        Duration::from_secs(30),
        "the node's data freshness to pass 2 s",
        || async {
            let freshness = metric(
                &first.metrics().await,
                "hydrant_data_freshness_seconds",
                "held",
            );
            (freshness >= 2.0).then_some(())
        },
    )
    .await;
    // Records after the batches: a node forming its first batches afresh would include
    // them, naming different objects.
    for part in records[1000..].chunks(500) {
        first.put_all("held", part).await;
    }
    let first_dir = first.kill();
    let first_log = std::fs::read_to_string(first_dir.path().join("hydrant.log")).unwrap();
    answers.set(false);

    let second = Hydrant::start_full(&top, &streams, &[]);
    let objects = Bucket::new(&bucket);
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered = ids_in_objects(&objects, "t/").await;
        if ids.iter().all(|id| delivered.contains_key(id)) {
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} of 2000 records in the store; the node taken over from logged:\n{first_log}\nthe node taking over:\n{}",
            delivered.len(),
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} records twice, e.g. {:?}",
        repeated.len(),
        repeated.first()
    );
    assert_eq!(delivered.len(), 2000);
    if partitioning.is_some() {
        for digit in 0..10 {
            let under = ids_in_objects(&objects, &format!("t/{digit}/")).await;
            assert_eq!(under.len(), 200, "records under t/{digit}/");
            assert!(
                under.keys().all(|id| id.ends_with(&digit.to_string())),
                "t/{digit}/ holds {:?}",
                under.keys().find(|id| !id.ends_with(&digit.to_string()))
            );
        }
    }
    let log = second.log();
    assert!(log.contains("taking over the partition"), "{log}");
    eventually(
        Duration::from_secs(10),
        "the data freshness back to 0 once everything is delivered",
        || async {
            let freshness = metric(
                &second.metrics().await,
                "hydrant_data_freshness_seconds",
                "held",
            );
            (freshness == 0.0).then_some(())
        },
    )
    .await;
}

/// Answers every JetStream publish to subject `hydrant.<stream>.>` on `nats` (a stream
/// JetStream does not hold) with the next of `answers` (the last one repeated), standing in
/// for a stream leader; returns the message ids it was asked to store.
async fn answer_publishes(
    nats: &NatsCluster,
    stream: &str,
    answers: Vec<Value>,
) -> Arc<Mutex<Vec<String>>> {
    use futures_util::StreamExt as _;
    let client = nats.client().await;
    let mut requests = client
        .subscribe(format!("hydrant.{stream}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ids);
    tokio::spawn(async move {
        let mut asked = 0;
        while let Some(request) = requests.next().await {
            let id = request
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push(id);
            let answer = &answers[asked.min(answers.len() - 1)];
            asked += 1;
            if let Some(reply) = request.reply {
                client
                    .publish(reply, answer.to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
    ids
}

/// `Some` once `node` holds 500 undelivered records of stream `shared`.
async fn buffers_500(node: &Hydrant) -> Option<()> {
    node.metrics()
        .await
        .lines()
        .any(|l| l == "hydrant_undelivered_records{stream=\"shared\"} 500")
        .then_some(())
}

/// A node stopped with SIGTERM while every NATS server is down cannot renew the lease of
/// the partition it drains, nor record the batch it would write: once the lease runs out it
/// gives the partition up and exits, and a node started once the servers are back delivers
/// the records, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_while_nats_is_down_exits_once_its_lease_runs_out_and_loses_nothing() {
    let mut nats = NatsCluster::start(3).await;
    let out = tempfile::tempdir().unwrap();
    let top = format!(
        "spool:\n  max_mib: 64\n  jetstream:\n    servers: {}\n    replicas: 3\n    partitions: 1\n    lease_ttl_seconds: 3\n",
        nats.servers_yaml()
    );
    // Records wait a minute in the buffer, so the stop finds them there, not yet a batch.
    let streams = format!(
        "shared:\n  buffer: {{ size_mib: 1, interval_seconds: 60 }}\n  destination:\n    local: {{ path: \"{}\" }}\n",
        out.path().display()
    );
    let mut first = Hydrant::start_full(&top, &streams, &[]);
    put_numbers(&first, 0..500).await;
    eventually(
        Duration::from_secs(30),
        "the first node to buffer the 500 records",
        || buffers_500(&first),
    )
    .await;
    for i in 0..3 {
        nats.kill_node(i);
    }
    first.signal_terminate();
    // The lease (3 s) runs out while the node tries to record the batch; it then stops.
    let status = first.wait(Duration::from_secs(30));
    let log = first.log();
    assert!(
        log.contains("lost the partition's lease before delivering what it buffered"),
        "{log}"
    );
    assert!(numbers_in_files(out.path()).is_empty(), "{log}");
    assert!(status.code().is_some(), "{status:?}");

    for i in 0..3 {
        nats.start_node(i);
    }
    let mut second = Hydrant::start_full(&top, &streams, &[]);
    eventually(
        Duration::from_secs(60),
        "the second node to buffer the 500 records",
        || buffers_500(&second),
    )
    .await;
    assert!(second.terminate().success(), "{}", second.log());
    let delivered = numbers_in_files(out.path());
    assert_eq!(delivered.len(), 500, "{}", second.log());
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_answered_as_a_duplicate_of_a_message_never_stored_is_not_acknowledged() {
    use hydrant::cluster::{Cluster, StreamLog};

    let nats = NatsCluster::start(1).await;
    let cluster = Cluster::connect(one_partition(&nats, 1)).await.unwrap();
    let records: Vec<&[u8]> = vec![b"{\"n\":1}", b"{\"n\":2}"];
    // What a stream leader answers to a message id it staged but never stored (the publish
    // was dropped in a leader election): a duplicate without a sequence, until its
    // de-duplication window passes.
    let never_stored = json!({ "stream": "hydrant-lost", "seq": 0, "duplicate": true });
    let asked = answer_publishes(&nats, "lost", vec![never_stored.clone()]).await;
    let log = StreamLog::new(&cluster, "lost", 7);
    let mut taken = 0;
    let refused = log
        .publish(
            &records,
            0,
            Instant::now() + Duration::from_millis(500),
            &mut taken,
        )
        .await;
    let error = refused.expect_err("a put whose message was never stored is refused");
    assert!(
        error
            .to_string()
            .contains("duplicates one it has not stored"),
        "{error}"
    );
    assert_eq!(taken, 0);
    let asked = asked.lock().unwrap().clone();
    assert!(asked.len() > 1, "the message is sent again: {asked:?}");
    assert!(asked.iter().all(|id| *id == asked[0]), "{asked:?}");

    // A duplicate whose first copy was still on its way: answered without a sequence at
    // first, then with the sequence it was stored at. The put is acknowledged.
    let stored_meanwhile = json!({ "stream": "hydrant-late", "seq": 7, "duplicate": true });
    answer_publishes(&nats, "late", vec![never_stored, stored_meanwhile]).await;
    let log = StreamLog::new(&cluster, "late", 7);
    let mut taken = 0;
    log.publish(
        &records,
        0,
        Instant::now() + Duration::from_secs(5),
        &mut taken,
    )
    .await
    .unwrap();
    assert_eq!(taken, records.len());
}
