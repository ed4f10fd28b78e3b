//! The delivery loop driving a destination behind the seam, against a scripted fake
//! destination (it fails, refuses whole requests or single items, or hangs) with a real
//! spool and an in-memory error output: what is retried, what reaches the error output with
//! which reason, and that the checkpoint passes a batch only once every record of it is
//! delivered or reported.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use hydrant_sinks::prelude::*;
use object_store::ObjectStoreExt as _;

use super::tests::{append, error_fields, open_spool, until};
use super::*;
use crate::buffer::{BufferSettings, IngestCapacity};
use crate::config::SeamDestination;
use crate::spool::StreamSpool;
use hydrant_sinks::object::KeyTemplate;

/// What the fake does with the next request it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Takes every item.
    Deliver,
    /// Fails as a whole, for now.
    Fail,
    /// Refuses as a whole, for good.
    Refuse,
    /// Never answers.
    Hang,
    /// Takes the even-numbered records, refuses the odd ones for now.
    RetryOdd,
    /// Takes the even-numbered records, refuses the odd ones for good.
    RefuseOdd,
    /// Refuses the first item for good and takes nothing else (as a table whose load one
    /// row breaks).
    RefuseFirstHoldRest,
}

type Record = (u64, i64, Vec<u8>);

/// A destination that answers per its script (then takes everything), remembering what it
/// took.
#[derive(Debug)]
struct Scripted {
    script: Mutex<VecDeque<Step>>,
    taken: Mutex<Vec<u64>>,
    sends: AtomicU64,
    per_request: usize,
    /// The error output, to look at what was made durable before each send.
    errors: std::sync::OnceLock<ObjectStoreSink>,
    /// Error records already written when each request was sent.
    errors_at_send: Mutex<Vec<usize>>,
}

impl Scripted {
    fn new(script: Vec<Step>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            taken: Mutex::new(Vec::new()),
            sends: AtomicU64::new(0),
            per_request: 20,
            errors: std::sync::OnceLock::new(),
            errors_at_send: Mutex::new(Vec::new()),
        })
    }

    fn requests(&self, items: &[u32]) -> Vec<Request<()>> {
        items
            .chunks(self.per_request)
            .map(|chunk| Request {
                body: (),
                items: chunk.to_vec(),
            })
            .collect()
    }

    fn error(&self, kind: SinkErrorKind, reason: &str) -> SinkError {
        SinkError::new(kind, Service::HttpEndpoint, "fake://", "request", reason)
    }
}

#[async_trait]
impl Sending for Scripted {
    type Batch = Vec<Record>;
    type Body = ();

    fn describe(&self) -> &str {
        "fake://"
    }

    fn service(&self) -> Service {
        Service::HttpEndpoint
    }

    fn requests(&self, batch: &Vec<Record>) -> Vec<Request<()>> {
        self.requests(&(0..batch.len() as u32).collect::<Vec<_>>())
    }

    fn regroup(&self, _batch: &Vec<Record>, items: &[u32], _shrink: u32) -> Vec<Request<()>> {
        self.requests(items)
    }

    async fn send(&self, batch: &Vec<Record>, request: &Request<()>) -> Outcome {
        self.sends.fetch_add(1, Ordering::SeqCst);
        if let Some(errors) = self.errors.get() {
            let written = error_records(errors).await.len();
            self.errors_at_send.lock().unwrap().push(written);
        }
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Deliver);
        let seq = |item: &u32| batch[*item as usize].0;
        match step {
            Step::Deliver => {
                self.taken
                    .lock()
                    .unwrap()
                    .extend(request.items.iter().map(seq));
                Outcome::Delivered
            }
            Step::Fail => Outcome::Retry(self.error(SinkErrorKind::Unavailable, "down for now")),
            Step::Refuse => Outcome::Refused(self.error(SinkErrorKind::Rejected, "never")),
            Step::Hang => std::future::pending().await,
            Step::RefuseFirstHoldRest => Outcome::Items(
                (0..request.items.len())
                    .map(|n| match n {
                        0 => ItemOutcome::Refused(ItemError {
                            code: "Fake.Refused".into(),
                            message: "the first row breaks the load".into(),
                        }),
                        _ => ItemOutcome::NotSent,
                    })
                    .collect(),
            ),
            Step::RetryOdd | Step::RefuseOdd => Outcome::Items(
                request
                    .items
                    .iter()
                    .map(|item| {
                        if seq(item) % 2 == 0 {
                            self.taken.lock().unwrap().push(seq(item));
                            return ItemOutcome::Delivered;
                        }
                        let error = ItemError {
                            code: "Fake.Odd".into(),
                            message: format!("record {} is odd", seq(item)),
                        };
                        match step {
                            Step::RetryOdd => ItemOutcome::Retry(error),
                            _ => ItemOutcome::Refused(error),
                        }
                    })
                    .collect(),
            ),
        }
    }

    fn body_len(&self, _body: &()) -> usize {
        0
    }

    fn item_record(&self, batch: &Vec<Record>, item: u32) -> ItemRecord {
        let (seq, arrival_ms, data) = &batch[item as usize];
        ItemRecord {
            seq: *seq,
            arrival_ms: *arrival_ms,
            // Even records are read back from the spool, as a table's rows are.
            raw: (seq % 2 == 1).then(|| Bytes::from(data.clone())),
            document: None,
            whole_batch: false,
        }
    }
}

#[async_trait]
impl Destination for Scripted {
    type Piece = Vec<Record>;

    fn failed_output(&self) -> &'static str {
        "fake-failed"
    }

    fn encode(&self, chunk: Chunk<'_>) -> EncodedChunk<Vec<Record>> {
        let records = &chunk.refs()[..];
        EncodedChunk {
            piece: records
                .iter()
                .map(|r| (r.seq, r.arrival_ms, r.data.to_vec()))
                .collect(),
            refusals: Vec::new(),
        }
    }

    fn assemble(
        &self,
        _id: BatchId,
        pieces: Vec<Vec<Record>>,
    ) -> Result<Vec<Record>, AssembleError> {
        Ok(pieces.concat())
    }

    fn backup_parts(&self, batch: &Vec<Record>) -> Vec<Bytes> {
        batch
            .iter()
            .map(|(_, _, data)| Bytes::from(data.clone()))
            .collect()
    }

    async fn check(&self) -> Result<String, SinkError> {
        Ok("fake".into())
    }
}

/// A running delivery loop over `fake`, with its spool in `dir` and its error output in
/// memory.
struct Running {
    spool: Arc<StreamSpool>,
    errors: ObjectStoreSink,
    counters: Arc<DeliveryCounters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(dir: &std::path::Path, fake: &Arc<Scripted>, retry_duration: Duration) -> Running {
    let spool = open_spool(dir);
    let destination: Arc<dyn AnyDestination> = Arc::clone(fake) as Arc<dyn AnyDestination>;
    let buffer = Arc::new(StreamBuffer::new(
        BufferSettings {
            size_limit: 1 << 20,
            interval: Duration::ZERO,
            destination: Arc::clone(&destination),
            processors: None,
            partitioner: None,
            chunk_limit: None,
            faults: None,
        },
        Arc::new(IngestCapacity::new(16 << 20)),
    ));
    buffer.resume(spool.start_seq(), spool.pending_sealed());
    let errors = ObjectStoreSink::in_memory();
    let _ = fake.errors.set(errors.clone());
    let counters = Arc::new(DeliveryCounters::default());
    let delivery = DeliveryLoop {
        stream: "scripted".into(),
        buffer: Arc::clone(&buffer),
        sink: Arc::new(errors.clone()),
        keys: ObjectKeyBuilder::new("scripted", KeyTemplate::parse("backup/").unwrap(), ""),
        error_keys: ObjectKeyBuilder::new(
            "scripted",
            KeyTemplate::parse_error_prefix("errors/!{firehose:error-output-type}/").unwrap(),
            "",
        ),
        retry_duration,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        counters: Arc::clone(&counters),
        health: Default::default(),
        spool: Some(DurableLog::Spool(Arc::clone(&spool))),
        seam: SeamDestination {
            destination,
            concurrency: 2,
            backup_all: false,
            attempt_timeout: Duration::from_millis(300),
        },
        run: spool.incarnation(),
        partitions: None,
        stop: Default::default(),
    };
    let feeder = tokio::spawn(crate::pipeline::feed_from_spool(
        "scripted".into(),
        Arc::clone(&spool),
        buffer,
    ));
    Running {
        spool,
        errors,
        counters,
        tasks: vec![feeder, tokio::spawn(delivery.run())],
    }
}

impl Running {
    /// Closes the spool, waits for the loop to drain, and returns what a restart would
    /// start from.
    async fn stop(self, dir: &std::path::Path) -> (u64, Vec<(u64, String, String, u64)>) {
        let closing = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || closing.close())
            .await
            .unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
        let errors = error_records(&self.errors).await;
        drop(self.spool);
        let reopened = open_spool(dir);
        assert!(reopened.pending_sealed().is_empty());
        (reopened.start_seq(), errors)
    }
}

/// Every error record in memory: the record's `id`, its code and message, attempts made.
async fn error_records(sink: &ObjectStoreSink) -> Vec<(u64, String, String, u64)> {
    let store = sink.store();
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for meta in metas {
        assert!(
            meta.location.as_ref().starts_with("errors/fake-failed/"),
            "{}",
            meta.location
        );
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.extend(
            std::str::from_utf8(&bytes)
                .unwrap()
                .lines()
                .map(error_fields),
        );
    }
    out
}

fn counted(ids: impl IntoIterator<Item = u64>) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_hangs_are_retried_until_every_record_is_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Scripted::new(vec![Step::Fail, Step::Hang, Step::Fail]);
    let running = start(dir.path(), &fake, Duration::from_secs(60));
    let counters = Arc::clone(&running.counters);
    append(&running.spool, 0..100).await;
    until("100 records delivered", || {
        counters.records.load(Ordering::SeqCst) == 100
    })
    .await;
    assert_eq!(counters.failed_attempts.load(Ordering::SeqCst), 3);
    let (start_seq, errors) = running.stop(dir.path()).await;
    assert!(errors.is_empty(), "{errors:?}");
    let taken = counted(fake.taken.lock().unwrap().iter().copied());
    assert_eq!(taken.len(), 100);
    assert!(taken.values().all(|n| *n == 1), "each record taken once");
    assert_eq!(start_seq, 100, "the checkpoint passed every record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_refused_for_now_are_sent_again_alone_and_items_refused_for_good_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    // 60 records in 3 requests: odd records refused for now in each, then, sent again
    // alone, refused for good (the first retry) or taken (the others).
    let fake = Scripted::new(vec![
        Step::RetryOdd,
        Step::RetryOdd,
        Step::RetryOdd,
        Step::RefuseOdd,
    ]);
    let running = start(dir.path(), &fake, Duration::from_secs(60));
    let counters = Arc::clone(&running.counters);
    append(&running.spool, 0..60).await;
    until("every record delivered or reported", || {
        counters.records.load(Ordering::SeqCst)
            + counters.error_output_records.load(Ordering::SeqCst)
            == 60
    })
    .await;
    let (start_seq, errors) = running.stop(dir.path()).await;
    let taken = fake.taken.lock().unwrap().clone();
    // The refused-for-good request carried 20 of the 30 odd records sent again.
    assert_eq!(errors.len(), 20, "{errors:?}");
    for (id, code, message, attempts) in &errors {
        assert_eq!(id % 2, 1);
        assert_eq!(code, "Fake.Odd");
        assert_eq!(message, &format!("record {id} is odd"));
        assert_eq!(*attempts, 2, "refused on the second round");
    }
    let all = counted(taken.iter().copied().chain(errors.iter().map(|e| e.0)));
    assert_eq!(all.len(), 60);
    assert!(
        all.values().all(|n| *n == 1),
        "each record taken or reported once"
    );
    assert_eq!(
        fake.sends.load(Ordering::SeqCst),
        3 + 2,
        "only odd records sent again"
    );
    assert_eq!(start_seq, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_retry_duration_does_not_get_delivered_is_reported_with_the_last_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Scripted::new(vec![Step::Fail; 10_000]);
    let running = start(dir.path(), &fake, Duration::from_millis(300));
    let counters = Arc::clone(&running.counters);
    append(&running.spool, 0..50).await;
    until("50 records reported", || {
        counters.error_output_records.load(Ordering::SeqCst) == 50
    })
    .await;
    assert_eq!(counters.records.load(Ordering::SeqCst), 0);
    let (start_seq, errors) = running.stop(dir.path()).await;
    assert_eq!(errors.len(), 50);
    for (_, code, message, attempts) in &errors {
        assert_eq!(code, "HttpEndpoint.ConnectionFailed");
        assert!(message.contains("down for now"), "{message}");
        assert!(*attempts >= 2, "{attempts}");
    }
    assert_eq!(counted(errors.iter().map(|e| e.0)).len(), 50);
    assert!(fake.taken.lock().unwrap().is_empty());
    assert_eq!(
        start_seq, 50,
        "reported records are passed by the checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_good_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Scripted::new(vec![Step::Refuse]);
    let running = start(dir.path(), &fake, Duration::from_secs(60));
    let counters = Arc::clone(&running.counters);
    append(&running.spool, 0..40).await;
    until("every record delivered or reported", || {
        counters.records.load(Ordering::SeqCst)
            + counters.error_output_records.load(Ordering::SeqCst)
            == 40
    })
    .await;
    let (start_seq, errors) = running.stop(dir.path()).await;
    assert_eq!(errors.len(), 20, "one request of 20 refused");
    assert!(
        errors
            .iter()
            .all(|e| e.1 == "HttpEndpoint.DestinationException" && e.3 == 1)
    );
    assert_eq!(fake.taken.lock().unwrap().len(), 20);
    assert_eq!(fake.sends.load(Ordering::SeqCst), 2, "not sent again");
    assert_eq!(start_seq, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_in_the_error_output_before_the_rest_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    // One request of 20: its first two loads each break on their first row.
    let fake = Scripted::new(vec![Step::RefuseFirstHoldRest, Step::RefuseFirstHoldRest]);
    let running = start(dir.path(), &fake, Duration::from_secs(60));
    let counters = Arc::clone(&running.counters);
    append(&running.spool, 0..20).await;
    until("every record delivered or reported", || {
        counters.records.load(Ordering::SeqCst)
            + counters.error_output_records.load(Ordering::SeqCst)
            == 20
    })
    .await;
    assert_eq!(
        counters.failed_attempts.load(Ordering::SeqCst),
        0,
        "no pause, no failure"
    );
    let (start_seq, errors) = running.stop(dir.path()).await;
    assert_eq!(
        *fake.errors_at_send.lock().unwrap(),
        [0, 1, 2],
        "each refusal was durable before the rest went again"
    );
    let mut refused: Vec<u64> = errors.iter().map(|e| e.0).collect();
    refused.sort();
    assert_eq!(
        refused,
        [0, 1],
        "records 0 (read back from the spool) and 1"
    );
    assert!(errors.iter().all(|e| e.1 == "Fake.Refused"));
    assert_eq!(fake.taken.lock().unwrap().len(), 18);
    assert_eq!(start_seq, 20);
}
