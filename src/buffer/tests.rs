use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use hydrant_sinks::object::{
    KeyTemplate, ObjectDestination, ObjectFormat, ObjectKeyBuilder, RecordFramer,
};
use hydrant_sinks::prelude::*;

use super::*;
use crate::compress::{Codec, GzipMembers};

/// A stream's object destination writing objects of `format` into memory, and the store
/// they can be read back from.
fn in_memory_objects(
    format: ObjectFormat,
    codec: Codec,
) -> (Arc<dyn AnyDestination>, ObjectStoreSink) {
    let sink = ObjectStoreSink::in_memory();
    let keys = ObjectKeyBuilder::new(
        "s",
        KeyTemplate::parse("").unwrap(),
        ObjectDestination::extension(&format, codec),
    );
    let destination = ObjectDestination::new(Arc::new(sink.clone()), format, codec, keys, false);
    (Arc::new(destination), sink)
}

fn buffer(size_limit: usize, interval: Duration, codec: Codec) -> (StreamBuffer, ObjectStoreSink) {
    let (destination, sink) =
        in_memory_objects(ObjectFormat::Framed(RecordFramer::raw(true)), codec);
    let buffer = StreamBuffer::new(
        BufferSettings {
            processors: None,
            partitioner: None,
            chunk_limit: None,
            faults: None,
            size_limit,
            interval,
            destination,
        },
        Arc::new(IngestCapacity::new(64 * 1024 * 1024)),
    );
    (buffer, sink)
}

/// Keeps nothing: these tests deliver to memory, which takes everything.
struct NoKeeper;

#[async_trait::async_trait]
impl FailureKeeper for NoKeeper {
    async fn keep(&self, _failed: &[FailedItem]) {}
}

/// The object an assembled batch becomes: delivered to the in-memory store, read back whole.
async fn delivered_object(Assembled { batch, .. }: Assembled, sink: &ObjectStoreSink) -> Bytes {
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        give_up_after: None,
        concurrency: 1,
        attempt_timeout: Duration::from_secs(60),
    };
    let report = batch
        .deliver(&policy, "s", &AtomicU64::new(0), &NoKeeper)
        .await;
    assert!(report.failed.is_empty());
    let key = batch.target().expect("the batch is an object");
    let path = object_store::path::Path::from(key.as_str());
    let store = sink.store();
    object_store::ObjectStoreExt::get(store.as_ref(), &path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// What a batch's object holds, decompressed.
async fn body_bytes(batch: SealedBatch, sink: &ObjectStoreSink, codec: Codec) -> Vec<u8> {
    let assembled = batch.into_body(0).await.unwrap().assembled;
    let body = delivered_object(assembled, sink).await.to_vec();
    match codec {
        Codec::None => body,
        Codec::Gzip {
            members: GzipMembers::PerChunk,
            ..
        } => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Codec::Gzip {
            members: GzipMembers::One,
            ..
        } => {
            // One member holds everything: nothing may follow it.
            let mut decoder = flate2::read::GzDecoder::new(&body[..]);
            let mut out = Vec::new();
            decoder.read_to_end(&mut out).unwrap();
            let mut rest = Vec::new();
            decoder.into_inner().read_to_end(&mut rest).unwrap();
            assert!(
                rest.is_empty(),
                "{} bytes after the gzip member",
                rest.len()
            );
            out
        }
        Codec::Zstd { .. } => zstd::stream::decode_all(&body[..]).unwrap(),
        Codec::Snappy => {
            let mut out = Vec::new();
            snap::read::FrameDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
    }
}

fn records(prefix: &str, count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut record = format!("{prefix}-{i:06}-").into_bytes();
            record.resize(len, b'x');
            record
        })
        .collect()
}

fn as_slices(records: &[Vec<u8>]) -> Vec<&[u8]> {
    records.iter().map(Vec::as_slice).collect()
}

#[tokio::test(start_paused = true)]
async fn size_threshold_seals_a_batch_holding_exactly_what_fits() {
    // 100 records of 99 bytes + newline = 10,000 bytes: ten fit in a 1,000-byte batch.
    let (buffer, sink) = buffer(
        1_000,
        Duration::from_secs(900),
        Codec::Gzip {
            level: 6,
            members: GzipMembers::PerChunk,
        },
    );
    let input = records("a", 15, 99);
    assert_eq!(buffer.try_append(&as_slices(&input), 1_000), 15);
    let batch = buffer.next_batch().await.unwrap();
    assert_eq!(batch.records(), 10);
    assert_eq!(batch.raw_len(), 1_000);
    assert_eq!(batch.oldest_arrival_ms(), 1_000);
    let codec = Codec::Gzip {
        level: 6,
        members: GzipMembers::PerChunk,
    };
    let expected: Vec<u8> = input[..10]
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    assert_eq!(body_bytes(batch, &sink, codec).await, expected);
    assert_eq!(buffer.buffered_records(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_takes_only_what_fits_until_the_delivery_task_takes_a_batch() {
    let (buffer, _) = buffer(1_000, Duration::from_secs(900), Codec::None);
    let input = records("b", 40, 99);
    // One open batch plus one sealed batch waiting: 20 records.
    assert_eq!(buffer.try_append(&as_slices(&input), 0), 20);
    assert_eq!(buffer.try_append(&as_slices(&input[20..]), 0), 0);
    let first = buffer.next_batch().await.unwrap();
    assert_eq!(first.records(), 10);
    assert_eq!(buffer.try_append(&as_slices(&input[20..]), 0), 10);
}

#[tokio::test(start_paused = true)]
async fn waiting_append_resumes_when_space_frees_and_gives_up_after_the_wait() {
    let buffer = Arc::new(buffer(1_000, Duration::from_secs(900), Codec::None).0);
    let input = records("c", 30, 99);
    let (first_seq, taken) = buffer
        .append(&as_slices(&input), 0, Duration::from_millis(500))
        .await;
    assert_eq!(first_seq, 0);
    assert_eq!(taken, 20, "no one takes batches, so the wait runs out");

    let waiter = {
        let buffer = Arc::clone(&buffer);
        let rest = input[20..].to_vec();
        tokio::spawn(async move {
            buffer
                .append(&as_slices(&rest), 0, Duration::from_secs(60))
                .await
                .1
        })
    };
    tokio::task::yield_now().await;
    let first = buffer.next_batch().await.unwrap();
    assert_eq!(first.records(), 10);
    assert_eq!(waiter.await.unwrap(), 10);
}

#[tokio::test(start_paused = true)]
async fn interval_threshold_flushes_the_open_batch_once_its_oldest_record_is_old_enough() {
    let (buffer, sink) = buffer(1 << 20, Duration::from_secs(60), Codec::None);
    let buffer = Arc::new(buffer);
    let started = tokio::time::Instant::now();
    assert_eq!(buffer.try_append(&[b"one"], 5), 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(buffer.try_append(&[b"two"], 6), 1);
    let batch = buffer.next_batch().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "flushed after {waited:?}"
    );
    assert_eq!(batch.records(), 2);
    assert_eq!(batch.oldest_arrival_ms(), 5);
    assert_eq!(body_bytes(batch, &sink, Codec::None).await, b"one\ntwo\n");
}

#[tokio::test(start_paused = true)]
async fn zero_interval_delivers_at_once() {
    let (buffer, _) = buffer(1 << 20, Duration::ZERO, Codec::None);
    buffer.try_append(&[b"now"], 0);
    let batch = tokio::time::timeout(Duration::from_millis(1), buffer.next_batch())
        .await
        .expect("a zero interval must not wait")
        .unwrap();
    assert_eq!(batch.records(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_hands_out_everything_then_reports_closed() {
    let (buffer, _) = buffer(
        1_000,
        Duration::from_secs(900),
        Codec::Gzip {
            level: 1,
            members: GzipMembers::PerChunk,
        },
    );
    let input = records("d", 15, 99);
    buffer.try_append(&as_slices(&input), 0);
    buffer.close();
    assert_eq!(
        buffer.try_append(&as_slices(&input), 0),
        0,
        "closed buffers take nothing"
    );
    assert_eq!(buffer.next_batch().await.unwrap().records(), 10);
    assert_eq!(buffer.next_batch().await.unwrap().records(), 5);
    assert_eq!(buffer.next_batch().await.unwrap_err(), NoBatch::Closed);
}

#[tokio::test]
async fn large_batches_span_many_chunks_and_decode_in_order_with_every_codec() {
    for codec in [
        Codec::Gzip {
            level: 6,
            members: GzipMembers::PerChunk,
        },
        Codec::Zstd { level: 3 },
        Codec::Snappy,
        Codec::None,
    ] {
        large_batches_decode_in_order(codec).await;
    }
}

async fn large_batches_decode_in_order(codec: Codec) {
    let size_limit = 4 * 1024 * 1024;
    let (buffer, sink) = buffer(size_limit, Duration::from_secs(900), codec);
    let input = records("e", 30_000, 120);
    let taken = buffer.try_append(&as_slices(&input), 0);
    assert_eq!(taken, 30_000);
    buffer.close();
    let mut decoded = Vec::new();
    while let Ok(batch) = buffer.next_batch().await {
        assert!(batch.raw_len() <= size_limit);
        decoded.extend(body_bytes(batch, &sink, codec).await);
    }
    let expected: Vec<u8> = input
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    assert_eq!(decoded.len(), expected.len());
    assert!(
        decoded == expected,
        "{codec:?}: records out of order or corrupted"
    );
}

fn spooled_chunk(first_seq: u64, count: usize, len: usize) -> crate::spool::RecordChunk {
    let mut data = Vec::new();
    let mut records = Vec::new();
    for i in 0..count {
        let start = data.len();
        data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
        records.push((first_seq + i as u64, 1_000 + i as i64, start..data.len()));
    }
    crate::spool::RecordChunk {
        data: data.into(),
        records,
    }
}

#[tokio::test(start_paused = true)]
async fn journaled_batches_are_rebuilt_with_their_exact_boundaries() {
    use crate::spool::SeqRange;
    // A 1,000-byte limit would cut after 10 records of 99 bytes; the journal says otherwise.
    let (buffer, _) = buffer(1_000, Duration::from_secs(900), Codec::None);
    buffer.resume(
        100,
        vec![
            SeqRange {
                first: 100,
                last: 114,
            },
            SeqRange {
                first: 115,
                last: 116,
            },
        ],
    );
    let chunk = spooled_chunk(100, 30, 99);
    // 100..=114 seal as one batch; 115 joins the next; 116 would seal it but the sealed
    // slot is taken.
    assert_eq!(buffer.try_append_spooled(&chunk, 0), 16);
    let first = buffer.next_batch().await.unwrap();
    assert_eq!(
        first.range(),
        SeqRange {
            first: 100,
            last: 114
        }
    );
    assert!(first.replayed());
    // 116 seals the second replayed batch; 117..=126 fill 1,000 bytes; 127 would not fit.
    assert_eq!(buffer.try_append_spooled(&chunk, 16), 11);
    let second = buffer.next_batch().await.unwrap();
    assert_eq!(
        second.range(),
        SeqRange {
            first: 115,
            last: 116
        }
    );
    assert_eq!(buffer.try_append_spooled(&chunk, 27), 3);
    let third = buffer.next_batch().await.unwrap();
    assert_eq!(
        third.range(),
        SeqRange {
            first: 117,
            last: 126
        },
        "then the size limit applies again"
    );
    assert!(!third.replayed());
    assert_eq!(third.oldest_arrival_ms(), 1_017);
}

#[tokio::test(start_paused = true)]
async fn journaled_batches_ending_in_a_gap_of_the_numbering_close_at_the_next_record() {
    use crate::spool::SeqRange;
    let range = |first, last| SeqRange { first, last };
    // A cluster partition numbers records (message << 16) | index: 0..=4 then 65536..=65540.
    let mut chunk = spooled_chunk(0, 10, 10);
    for (i, record) in chunk.records.iter_mut().enumerate().skip(5) {
        record.0 = 65_536 + (i as u64 - 5);
    }

    let (gapped, _) = buffer(1 << 20, Duration::from_secs(900), Codec::None);
    // The second batch ends on a number no record has.
    gapped.resume(0, vec![range(0, 2), range(3, 65_535)]);
    // 0..=2 seal the first; 3 and 4 join the second; 65,536 would close it, but the sealed
    // slot is taken.
    assert_eq!(gapped.try_append_spooled(&chunk, 0), 5);
    assert_eq!(gapped.next_batch().await.unwrap().range(), range(0, 2));
    assert_eq!(gapped.try_append_spooled(&chunk, 5), 5);
    let second = gapped.next_batch().await.unwrap();
    assert_eq!(second.range(), range(3, 4));
    assert!(second.replayed());
    gapped.close();
    let rest = gapped.next_batch().await.unwrap();
    assert_eq!(rest.range(), range(65_536, 65_540));
    assert!(!rest.replayed());

    let (skipping, _) = buffer(1 << 20, Duration::from_secs(900), Codec::None);
    // The second batch lies wholly in the gap: none of its records comes.
    skipping.resume(
        0,
        vec![range(0, 4), range(5, 65_535), range(65_536, 65_537)],
    );
    // 0..=4 seal the first; the second is dropped; 65,537 would seal the third, but the
    // sealed slot is taken.
    assert_eq!(skipping.try_append_spooled(&chunk, 0), 6);
    assert_eq!(skipping.next_batch().await.unwrap().range(), range(0, 4));
    assert_eq!(skipping.try_append_spooled(&chunk, 6), 4);
    let rebuilt = skipping.next_batch().await.unwrap();
    assert_eq!(rebuilt.range(), range(65_536, 65_537));
    assert!(rebuilt.replayed());
}

#[tokio::test(start_paused = true)]
async fn a_partly_rebuilt_batch_is_left_to_the_spool_at_shutdown() {
    use crate::spool::SeqRange;
    let (buffer, _) = buffer(1 << 20, Duration::ZERO, Codec::None);
    buffer.resume(0, vec![SeqRange { first: 0, last: 9 }]);
    assert_eq!(buffer.try_append_spooled(&spooled_chunk(0, 5, 10), 0), 5);
    buffer.close();
    assert_eq!(buffer.next_batch().await.unwrap_err(), NoBatch::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_batches_decode_chunks_in_parallel_and_keep_record_order() {
    let yaml = "streams:\n  s:\n    format: parquet\n    parquet:\n      schema:\n        - { name: n, type: int64, nullable: false }\n        - { name: pad, type: string }\n    destination: { local: { path: out } }\n";
    let config = crate::config::parse_config(yaml, "test.yaml").unwrap();
    let (_, stream) = config.streams.iter().next().unwrap();
    let (destination, sink) = in_memory_objects(stream.object_format().unwrap(), Codec::None);
    let size_limit = 1024 * 1024;
    let buffer = Arc::new(StreamBuffer::new(
        BufferSettings {
            processors: None,
            partitioner: None,
            chunk_limit: None,
            faults: None,
            size_limit,
            interval: Duration::from_secs(900),
            destination,
        },
        Arc::new(IngestCapacity::new(64 * 1024 * 1024)),
    ));
    let pad = "x".repeat(200);
    let records: Vec<String> = (0..12_000)
        .map(|n| {
            if n % 1000 == 999 {
                format!("{{\"n\": \"not a number {n}\"}}")
            } else {
                format!("{{\"n\": {n}, \"pad\": \"{pad}\"}}")
            }
        })
        .collect();
    let producer = {
        let buffer = Arc::clone(&buffer);
        tokio::spawn(async move {
            let refs: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
            let mut taken = 0;
            while taken < refs.len() {
                taken += buffer
                    .append(&refs[taken..], 0, Duration::from_secs(60))
                    .await
                    .1;
            }
            buffer.close();
        })
    };
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut objects = 0;
    while let Ok(batch) = buffer.next_batch().await {
        let body = batch.into_body(0).await.unwrap();
        failed.extend(body.failed.into_iter().map(|f| (f.seq, f.error.code)));
        let file = delivered_object(body.assembled, &sink).await;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(
                batch.column(0),
            );
            rows.extend(column.values().iter().copied());
        }
        objects += 1;
    }
    producer.await.unwrap();
    assert!(
        objects >= 2,
        "the size limit splits the records into several files"
    );
    let expected: Vec<i64> = (0..12_000).filter(|n| n % 1000 != 999).collect();
    assert_eq!(rows, expected, "every good record once, in order");
    let expected_failed: Vec<(u64, &str)> = (0..12_000u64)
        .filter(|n| n % 1000 == 999)
        .map(|n| (n, "DataFormatConversion.MalformedData"))
        .collect();
    assert_eq!(failed, expected_failed);
}
