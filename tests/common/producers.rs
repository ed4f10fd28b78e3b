//! Producers that put uniquely numbered records until stopped, and the exactly-once check
//! of what they got delivered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// A ~300-byte JSON record with `id`.
pub fn record(id: &str) -> Vec<u8> {
    let mut record = format!(r#"{{"id":"{id}","pad":""#).into_bytes();
    record.resize(300, b'p');
    record.extend_from_slice(b"\"}");
    record
}

/// Producers that put uniquely numbered records until stopped, remembering which ids were
/// acknowledged and which were attempted.
pub struct Producers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    attempted: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Producers {
    pub fn start(count: usize, stream: &str, base_url: Arc<Mutex<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let attempted = Arc::new(Mutex::new(HashSet::new()));
        let client = reqwest::Client::new();
        let tasks = (0..count)
            .map(|producer| {
                let (stop, acked, attempted) = (stop.clone(), acked.clone(), attempted.clone());
                let (client, base_url, stream) = (client.clone(), base_url.clone(), stream.to_string());
                tokio::spawn(async move {
                    let mut next = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let ids: Vec<String> = (next..next + 50).map(|n| format!("p{producer}-{n}")).collect();
                        next += 50;
                        attempted.lock().unwrap().extend(ids.iter().cloned());
                        let records: Vec<Value> = ids
                            .iter()
                            .map(|id| json!({ "Data": base64::engine::general_purpose::STANDARD.encode(record(id)) }))
                            .collect();
                        let url = format!("{}/", base_url.lock().unwrap());
                        let answer = client
                            .post(url)
                            .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                            .header("content-type", "application/x-amz-json-1.1")
                            .body(json!({ "DeliveryStreamName": stream, "Records": records }).to_string())
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        let Ok(answer) = answer else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let Ok(text) = answer.text().await else { continue };
                        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                        let Some(responses) = value["RequestResponses"].as_array() else {
                            continue;
                        };
                        let mut acked = acked.lock().unwrap();
                        for (id, response) in ids.iter().zip(responses) {
                            if response.get("RecordId").is_some() {
                                acked.insert(id.clone());
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            attempted,
            tasks,
        }
    }

    pub async fn stop(self) -> (HashSet<String>, HashSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let attempted = self.attempted.lock().unwrap().clone();
        (acked, attempted)
    }
}

/// What producers putting through repeated kill -9 of the service left behind.
pub struct KilledRun {
    /// The service as last restarted, still running.
    pub hydrant: super::Hydrant,
    /// Ids acknowledged to the producers.
    pub acked: HashSet<String>,
    /// Ids the producers tried to put.
    pub attempted: HashSet<String>,
    /// How many times the service was killed.
    pub kills: usize,
}

/// Starts the service with `streams`, has four producers put into `stream`, kills the
/// service with SIGKILL `kills` times at random moments (drawn from `seed`), restarting it
/// in the same directory each time, then stops the producers.
pub async fn produce_through_kills(
    streams: &str,
    stream: &str,
    kills: usize,
    seed: u64,
) -> KilledRun {
    produce_through_kills_with("", streams, stream, kills, seed).await
}

/// [`produce_through_kills`] with extra top-level sections (`spool:` ...) in every run's
/// configuration.
pub async fn produce_through_kills_with(
    top_yaml: &str,
    streams: &str,
    stream: &str,
    kills: usize,
    seed: u64,
) -> KilledRun {
    let mut hydrant = super::Hydrant::start_full(top_yaml, streams, &[]);
    let base_url = Arc::new(Mutex::new(hydrant.base_url.clone()));
    let producers = Producers::start(4, stream, base_url.clone());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut done = 0;
    for _ in 0..kills {
        // A random moment: the chaos is the point here, nothing is being waited for.
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1200))).await;
        let dir = hydrant.kill();
        done += 1;
        hydrant = super::Hydrant::start_in(dir, top_yaml, streams, &[]);
        *base_url.lock().unwrap() = hydrant.base_url.clone();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, attempted) = producers.stop().await;
    KilledRun {
        hydrant,
        acked,
        attempted,
        kills: done,
    }
}

/// Fails unless every acknowledged id was delivered exactly once and nothing else was.
pub fn check_exactly_once(
    delivered: &HashMap<String, usize>,
    acked: &HashSet<String>,
    attempted: &HashSet<String>,
) {
    let duplicated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} ids delivered more than once, e.g. {:?}",
        duplicated.len(),
        duplicated.first()
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids never delivered, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let unknown: Vec<_> = delivered
        .keys()
        .filter(|id| !attempted.contains(*id))
        .collect();
    assert!(
        unknown.is_empty(),
        "delivered ids no producer sent: {unknown:?}"
    );
}
