use std::time::Duration;

use super::*;

fn settings(dir: &Path, fsync: FsyncPolicy, max_bytes: u64) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_path_buf(),
        fsync,
        max_bytes,
        keys: None,
    }
}

async fn read_all(spool: &Arc<StreamSpool>, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = spool.reader(from);
    let end = *spool.written.borrow();
    let mut out = Vec::new();
    while reader.next_seq() < end {
        let chunk = reader.read(1 << 20).await.unwrap().unwrap();
        for (seq, _, range) in &chunk.records {
            out.push((*seq, chunk.data[range.clone()].to_vec()));
        }
    }
    out
}

#[tokio::test]
async fn appended_records_are_read_back_in_order_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..3000)
        .map(|i| format!("record-{i}").repeat(50).into_bytes())
        .collect();
    {
        // 8 MiB spool: 1 MiB segments, so ~1.1 MB of records spans two segments.
        let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
        for chunk in records.chunks(100) {
            let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let appended = spool.append(&slices, 1).await.unwrap();
            assert_eq!(appended.accepted, slices.len());
        }
        assert!(lock(&spool.segments).len() >= 2, "expected a segment roll");
        let read = read_all(&spool, 0).await;
        assert_eq!(read.len(), records.len());
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, (seq, data))| *seq == i as u64 && *data == records[i])
        );
        spool.close();
    }
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
    assert_eq!(spool.start_seq(), 0);
    assert_eq!(*spool.written.borrow(), 3000);
    let appended = spool.append(&[b"after restart"], 2).await.unwrap();
    assert_eq!(appended.first_seq, 3000);
    spool.close();
}

#[tokio::test]
async fn puts_queued_together_are_read_back_whole_from_the_cache_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    // Large puts get parts of their own, small ones share: one group holds several parts.
    let puts: Vec<Vec<Vec<u8>>> = (0..60)
        .map(|p| {
            let (count, len) = if p % 3 == 0 { (2, 90_000) } else { (5, 40) };
            (0..count)
                .map(|r| vec![(p * 7 + r) as u8; len + r])
                .collect()
        })
        .collect();
    let expected: Vec<Vec<u8>> = puts.iter().flatten().cloned().collect();
    {
        let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 64 << 20)).unwrap();
        for put in &puts {
            let slices: Vec<&[u8]> = put.iter().map(Vec::as_slice).collect();
            let enqueued = spool.enqueue(&slices, 1).unwrap();
            assert_eq!(enqueued.appended.accepted, put.len());
        }
        spool.sync_through(expected.len() as u64 - 1).await.unwrap();
        let mut reader = spool.delivery_reader();
        let mut cached = Vec::new();
        while reader.next_seq() < expected.len() as u64 {
            let chunk = reader.read(1 << 20).await.unwrap().unwrap();
            for (seq, _, range) in &chunk.records {
                assert_eq!(*seq, cached.len() as u64);
                cached.push(chunk.data[range.clone()].to_vec());
            }
        }
        assert!(cached == expected, "records read from the cache differ");
        spool.close();
    }
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 64 << 20)).unwrap();
    let on_disk: Vec<Vec<u8>> = read_all(&spool, 0)
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(on_disk == expected, "records read from disk differ");
    spool.close();
}

#[tokio::test]
async fn a_full_spool_takes_a_prefix_and_frees_space_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 4 << 20)).unwrap();
    let record = vec![7u8; 100_000];
    let mut accepted = 0;
    loop {
        let appended = spool.append(&[&record, &record], 0).await.unwrap();
        accepted += appended.accepted;
        if appended.accepted < 2 {
            break;
        }
    }
    assert!(spool.disk_bytes() <= 4 << 20);
    // Live bytes stop one segment (1 MiB here) short of the limit.
    let room = 3 << 20;
    assert!(
        (room / 100_100 - 2..=room / 100_000).contains(&accepted),
        "accepted {accepted}"
    );
    assert_eq!(spool.append(&[&record], 0).await.unwrap().accepted, 0);
    spool
        .record_delivered_now(SeqRange {
            first: 0,
            last: accepted as u64 - 1,
        })
        .unwrap();
    assert!(spool.disk_bytes() < 2 << 20, "{}", spool.disk_bytes());
    assert_eq!(spool.append(&[&record], 0).await.unwrap().accepted, 1);
    spool.close();
}

/// Fills a 4 MiB spool with 100 kB records, two per put; returns how many it took.
async fn fill(spool: &StreamSpool, record: &[u8]) -> u64 {
    let mut accepted = 0;
    loop {
        let appended = spool.append(&[record, record], 0).await.unwrap();
        accepted += appended.accepted as u64;
        if appended.accepted < 2 {
            return accepted;
        }
    }
}

#[tokio::test]
async fn room_comes_back_as_batches_are_delivered_before_a_segment_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 4 << 20)).unwrap();
    let record = vec![7u8; 100_000];
    fill(&spool, &record).await;
    let on_disk = spool.disk_bytes();
    // Six records (three puts' groups) delivered: well inside the first 1 MiB segment.
    spool
        .record_delivered_now(SeqRange { first: 0, last: 5 })
        .unwrap();
    assert_eq!(spool.disk_bytes(), on_disk, "no segment was deleted");
    let records: Vec<&[u8]> = vec![&record; 10];
    let appended = spool.append(&records, 0).await.unwrap();
    assert!(
        (5..=6).contains(&appended.accepted),
        "the delivered records' room is taken again: {appended:?}"
    );
    spool.close();
}

/// Starts a put of `records` that waits up to a minute for room; it answers the sequence
/// numbers its records were given.
fn waiting_put(
    spool: &Arc<StreamSpool>,
    records: Vec<Vec<u8>>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let spool = Arc::clone(spool);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    tokio::spawn(async move {
        let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let mut taken = 0;
        let queued = spool
            .enqueue_waiting(&records, 0, deadline, &mut taken, None)
            .await
            .unwrap();
        queued
            .iter()
            .flat_map(|e| e.appended.first_seq..e.appended.first_seq + e.appended.accepted as u64)
            .collect()
    })
}

#[tokio::test]
async fn a_put_waiting_for_room_is_not_overtaken_by_a_smaller_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 4 << 20)).unwrap();
    let filled = fill(&spool, &[7u8; 100_000]).await;
    let large = waiting_put(&spool, vec![vec![1u8; 300_000]]);
    // On this single-threaded runtime a spawned put runs until it waits.
    tokio::task::yield_now().await;
    // Room for 200 kB: not enough for the waiting 300 kB record, enough for a later 100 kB
    // one, which must still wait its turn.
    spool
        .record_delivered_now(SeqRange { first: 0, last: 1 })
        .unwrap();
    let small = waiting_put(&spool, vec![vec![2u8; 100_000]]);
    tokio::task::yield_now().await;
    assert_eq!(
        lock(&spool.writer).next_seq,
        filled,
        "the later, smaller put took the room freed for the waiting one"
    );
    spool
        .record_delivered_now(SeqRange { first: 2, last: 5 })
        .unwrap();
    assert_eq!(large.await.unwrap(), vec![filled]);
    assert_eq!(small.await.unwrap(), vec![filled + 1]);
    spool.close();
}

#[tokio::test]
async fn interval_policy_acks_after_write_and_syncs_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let spool = StreamSpool::open(settings(
        dir.path(),
        FsyncPolicy::Interval(Duration::from_secs(3600)),
        8 << 20,
    ))
    .unwrap();
    spool.append(&[b"a", b"b"], 0).await.unwrap();
    assert_eq!(*spool.written.borrow(), 2);
    assert_eq!(
        *spool.synced.borrow(),
        0,
        "an hour-long interval has not elapsed"
    );
    tokio::time::timeout(Duration::from_secs(10), spool.sync_through(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*spool.synced.borrow(), 2);
    spool.close();
}

/// Sets the length field of the frame of record `seq` in the segment file at `path`.
fn corrupt_length(path: &Path, seq: u64, len: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut offset = 0;
    loop {
        let header: &[u8; frame::HEADER_LEN] = bytes[offset..offset + frame::HEADER_LEN]
            .try_into()
            .unwrap();
        let parsed = frame::decode_header(header);
        if parsed.seq == seq {
            bytes[offset..offset + 4].copy_from_slice(&len.to_le_bytes());
            std::fs::write(path, bytes).unwrap();
            return;
        }
        offset += frame::frame_len(parsed.payload_len().unwrap());
    }
}

#[tokio::test]
async fn a_corrupt_frame_length_is_refused_before_it_sizes_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let record = vec![b'r'; 50_000];
    let segments = {
        // 8 MiB spool: 1 MiB segments, so 60 records of 50 kB span three segments.
        let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
        for _ in 0..60 {
            spool.append(&[&record], 0).await.unwrap();
        }
        spool.close();
        let segments = lock(&spool.segments).clone();
        assert!(segments.len() >= 3, "expected segment rolls");
        segments
    };
    // A record in the middle of the first segment, which recovery does not scan: reading
    // it back must fail as corrupt without trusting the 4 GiB length.
    corrupt_length(&segments[0].path, 3, u32::MAX);
    // A record in the last segment: recovery cuts the spool there.
    let last = segments.last().unwrap();
    let cut_at = last.first_seq + 2;
    corrupt_length(&last.path, cut_at, 0x8000_0000);
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
    assert_eq!(
        *spool.written.borrow(),
        cut_at,
        "recovery cut at the bad frame"
    );
    let mut reader = spool.reader(0);
    let first = reader.read(150_000).await.unwrap().unwrap();
    assert_eq!(first.len(), 3, "the records before the bad frame are read");
    let error = reader.read(1 << 20).await.unwrap_err().to_string();
    assert!(
        error.contains("is corrupt at record 3")
            && error.contains("declares 4294967295 payload bytes"),
        "{error}"
    );
    spool.close();
}

fn keys(current: u8, previous: &[u8]) -> Option<SpoolKeys> {
    Some(SpoolKeys {
        current: [current; 32],
        previous: previous.iter().map(|&b| [b; 32]).collect(),
    })
}

fn open_keyed(dir: &Path, keys: Option<SpoolKeys>) -> Result<Arc<StreamSpool>, SpoolError> {
    StreamSpool::open(SpoolSettings {
        keys,
        ..settings(dir, FsyncPolicy::Always, 8 << 20)
    })
}

/// Every file of the spool directory with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

fn secret_records(from: usize, to: usize) -> Vec<Vec<u8>> {
    (from..to)
        .map(|i| format!("SECRET-RECORD-{i:05}-").repeat(40).into_bytes())
        .collect()
}

async fn append_all(spool: &Arc<StreamSpool>, records: &[Vec<u8>]) {
    for chunk in records.chunks(50) {
        let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(
            spool.append(&slices, 42).await.unwrap().accepted,
            slices.len()
        );
    }
}

#[tokio::test]
async fn an_encrypted_spool_holds_no_record_text_and_reads_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let records = secret_records(0, 1500);
    {
        let spool = open_keyed(dir.path(), keys(1, &[])).unwrap();
        append_all(&spool, &records).await;
        // Fresh groups are read from memory, decrypted.
        let read = read_all(&spool, 0).await;
        assert_eq!(read.len(), records.len());
        assert!(
            read.iter()
                .all(|(seq, data)| *data == records[*seq as usize])
        );
        spool.close();
    }
    for (path, bytes) in snapshot(dir.path()) {
        assert!(
            !bytes.windows(13).any(|w| w == b"SECRET-RECORD"),
            "record text in {}",
            path.display()
        );
    }
    let spool = open_keyed(dir.path(), keys(1, &[])).unwrap();
    let read = read_all(&spool, 0).await;
    assert_eq!(read.len(), records.len(), "read back from the disk");
    assert!(
        read.iter()
            .all(|(seq, data)| *data == records[*seq as usize])
    );
    spool.close();
}

#[tokio::test]
async fn a_wrong_or_missing_key_stops_opening_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open_keyed(dir.path(), keys(1, &[])).unwrap();
        append_all(&spool, &secret_records(0, 100)).await;
        spool.close();
    }
    let before = snapshot(dir.path());
    let error = open_keyed(dir.path(), keys(2, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot be read: it was encrypted with key")
            && error.contains("nothing was changed"),
        "{error}"
    );
    let error = open_keyed(dir.path(), None).unwrap_err().to_string();
    assert!(
        error.contains("it is encrypted, and `spool.encryption` is not configured"),
        "{error}"
    );
    assert_eq!(snapshot(dir.path()), before, "the spool was not touched");
}

#[tokio::test]
async fn after_a_key_change_the_backlog_is_read_with_the_previous_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = secret_records(0, 400);
    let new = secret_records(400, 800);
    {
        let spool = open_keyed(dir.path(), keys(1, &[])).unwrap();
        append_all(&spool, &old).await;
        spool.close();
    }
    {
        let spool = open_keyed(dir.path(), keys(2, &[1])).unwrap();
        append_all(&spool, &new).await;
        spool.close();
    }
    let spool = open_keyed(dir.path(), keys(2, &[1])).unwrap();
    let read = read_all(&spool, 0).await;
    let all: Vec<Vec<u8>> = old.iter().chain(&new).cloned().collect();
    assert_eq!(read.len(), all.len());
    assert!(read.iter().all(|(seq, data)| *data == all[*seq as usize]));
    spool.close();
    let error = open_keyed(dir.path(), keys(2, &[]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("neither spool.encryption.key nor one of its previous_keys"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plain_spool_stays_readable_when_encryption_is_turned_on() {
    let dir = tempfile::tempdir().unwrap();
    let plain = secret_records(0, 100);
    {
        let spool = open_keyed(dir.path(), None).unwrap();
        append_all(&spool, &plain).await;
        spool.close();
    }
    let spool = open_keyed(dir.path(), keys(3, &[])).unwrap();
    let sealed = secret_records(100, 200);
    append_all(&spool, &sealed).await;
    spool.close();
    let spool = open_keyed(dir.path(), keys(3, &[])).unwrap();
    let read = read_all(&spool, 0).await;
    let all: Vec<Vec<u8>> = plain.iter().chain(&sealed).cloned().collect();
    assert_eq!(read.len(), 200);
    assert!(read.iter().all(|(seq, data)| *data == all[*seq as usize]));
    spool.close();
}

#[test]
fn an_unwritable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let error = StreamSpool::open(settings(
        &blocker.join("spool"),
        FsyncPolicy::Always,
        1 << 20,
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("spool directory"), "{error}");
    assert!(error.contains("cannot create it"), "{error}");
}

mod model {
    use std::io::Write as _;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Append records of these sizes.
        Append(Vec<usize>),
        /// Mark the next `n` undelivered records delivered.
        Deliver(usize),
        /// Stop the process (everything acknowledged is written) and start again.
        Restart,
        /// Stop, leave a torn frame (these many garbage bytes) at the end, start again.
        TornRestart(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(prop_oneof![0usize..64, 1000usize..40_000], 1..20).prop_map(Op::Append),
            2 => (0usize..40).prop_map(Op::Deliver),
            1 => Just(Op::Restart),
            1 => (1usize..60).prop_map(Op::TornRestart),
        ]
    }

    fn record(seq: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq * 31 + i) as u8).collect()
    }

    /// The model's spool, its frames encrypted when `keyed`.
    fn open(dir: &Path, keyed: bool) -> Arc<StreamSpool> {
        StreamSpool::open(SpoolSettings {
            dir: dir.to_path_buf(),
            fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
            // Small, so segments (1 MiB) roll and are deleted, and the spool sometimes fills.
            max_bytes: 4 << 20,
            keys: if keyed { keys(9, &[]) } else { None },
        })
        .unwrap()
    }

    fn last_segment(dir: &Path) -> std::path::PathBuf {
        let mut segments: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        segments.pop().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn recovery_yields_exactly_the_undelivered_records_in_order(ops in prop::collection::vec(op(), 1..30), keyed in any::<bool>()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut spool = open(dir.path(), keyed);
                let mut appended: Vec<Vec<u8>> = Vec::new();
                let mut delivered = 0usize;
                for op in ops {
                    match op {
                        Op::Append(sizes) => {
                            let records: Vec<Vec<u8>> = sizes
                                .iter()
                                .enumerate()
                                .map(|(i, len)| record(appended.len() + i, *len))
                                .collect();
                            let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                            let result = spool.append(&slices, 5).await.unwrap();
                            prop_assert_eq!(result.first_seq, appended.len() as u64);
                            prop_assert!(spool.disk_bytes() <= 4 << 20);
                            appended.extend(records.into_iter().take(result.accepted));
                        }
                        Op::Deliver(n) => {
                            let n = n.min(appended.len() - delivered);
                            if n > 0 {
                                spool.record_delivered_now(SeqRange {
                                    first: delivered as u64,
                                    last: (delivered + n - 1) as u64,
                                }).unwrap();
                                delivered += n;
                            }
                        }
                        Op::Restart | Op::TornRestart(_) => {
                            spool.close();
                            drop(spool);
                            if let Op::TornRestart(garbage) = op {
                                let mut file = std::fs::OpenOptions::new()
                                    .append(true)
                                    .open(last_segment(dir.path()))
                                    .unwrap();
                                file.write_all(&vec![0xA5; garbage]).unwrap();
                            }
                            spool = open(dir.path(), keyed);
                            prop_assert_eq!(spool.start_seq(), delivered as u64);
                            let read = read_all(&spool, spool.start_seq()).await;
                            prop_assert_eq!(read.len(), appended.len() - delivered);
                            for (seq, data) in read {
                                prop_assert_eq!(&data, &appended[seq as usize]);
                            }
                        }
                    }
                }
                spool.close();
                Ok(())
            })?;
        }
    }
}

mod hostile {
    use proptest::prelude::*;

    use super::*;

    /// Two segments: valid frames with bytes replaced or cut, or arbitrary bytes.
    fn segment_bytes(first_seq: u64) -> impl Strategy<Value = Vec<u8>> {
        let valid = move |n: usize| {
            let mut out = Vec::new();
            for i in 0..n {
                frame::encode(
                    first_seq + i as u64,
                    7,
                    format!("record {i}").as_bytes(),
                    &mut out,
                );
            }
            out
        };
        let marked = move |n: usize, marks: Vec<bool>, padding: usize| {
            // Frames whose checksums hold but that claim to be encrypted: the checksum does
            // not cover the length field, so one flipped bit makes such a frame.
            let mut out = Vec::new();
            for i in 0..n {
                let start = out.len();
                let record = format!("{i}{}", "x".repeat(padding));
                frame::encode(first_seq + i as u64, 7, record.as_bytes(), &mut out);
                if marks.get(i).copied().unwrap_or(false) {
                    out[start + 3] |= 0x80;
                }
            }
            out
        };
        prop_oneof![
            (
                1usize..10,
                prop::collection::vec(any::<bool>(), 10),
                0usize..40
            )
                .prop_map(move |(n, marks, padding)| marked(n, marks, padding)),
            prop::collection::vec(any::<u8>(), 0..400),
            (
                1usize..20,
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                any::<prop::sample::Index>()
            )
                .prop_map(move |(n, flips, cut)| {
                    let mut bytes = valid(n);
                    for (at, byte) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                    let keep = cut.index(bytes.len() + 1);
                    bytes.truncate(keep.max(bytes.len() / 2));
                    bytes
                }),
        ]
    }

    /// A segment that ends before holding the record its name says it starts with (here an
    /// empty first segment) is corruption, not a reason to open it again and again.
    #[test]
    fn a_segment_ending_before_its_first_record_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segments::segment_path(dir.path(), 0), b"").unwrap();
        let mut second = Vec::new();
        for seq in 20..25 {
            frame::encode(seq, 7, b"record", &mut second);
        }
        std::fs::write(segments::segment_path(dir.path(), 20), &second).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let read = runtime.block_on(async {
            let spool = open_keyed(dir.path(), None).unwrap();
            assert!(*spool.written.borrow() > 0, "records 0..20 are expected");
            let mut reader = spool.reader(0);
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read(1 << 20)).await;
            spool.close();
            read
        });
        // A reader stuck on a blocking thread must not hold the suite up either.
        runtime.shutdown_timeout(Duration::from_secs(1));
        let error = read
            .expect("the read ends")
            .expect_err("an empty first segment is corrupt");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
        assert!(
            error.to_string().contains("ends before holding it"),
            "{error}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn damaged_segments_open_and_read_or_fail_as_corrupt(
            first in segment_bytes(0),
            second in segment_bytes(20),
            keyed in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let checked = runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                std::fs::write(segments::segment_path(dir.path(), 0), &first).unwrap();
                std::fs::write(segments::segment_path(dir.path(), 20), &second).unwrap();
                let Ok(spool) = open_keyed(dir.path(), if keyed { keys(4, &[]) } else { None }) else {
                    return Ok(());
                };
                let mut reader = spool.reader(0);
                let end = *spool.written.borrow();
                // A damaged spool must never keep a reader busy: bounded, a hang fails (and
                // proptest keeps the input) instead of stalling the suite.
                let started = std::time::Instant::now();
                while reader.next_seq() < end {
                    prop_assert!(
                        started.elapsed() < std::time::Duration::from_secs(10),
                        "the reader made no progress past seq {} of {}", reader.next_seq(), end
                    );
                    let before = reader.next_seq();
                    let read = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(1 << 20)).await;
                    prop_assert!(read.is_ok(), "a read of the damaged spool did not end within 10 s");
                    match read.expect("checked above") {
                        Ok(Some(chunk)) => {
                            prop_assert!(!chunk.is_empty());
                            prop_assert!(reader.next_seq() > before, "a chunk that does not advance the reader");
                        }
                        Ok(None) => break,
                        Err(error) => {
                            prop_assert!(
                                matches!(error.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::NotFound),
                                "{:?}", error
                            );
                            break;
                        }
                    }
                }
                spool.close();
                Ok(())
            });
            // A read stuck on a blocking thread fails the case above; it must not also keep
            // the runtime (and the suite) from finishing.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            checked?;
        }
    }
}

#[tokio::test]
async fn an_input_cursor_resumes_after_the_last_record_that_survived_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("line {i:03}").into_bytes())
        .collect();
    // Each record took its line and a newline of the input.
    let lengths: Vec<u64> = lines.iter().map(|l| l.len() as u64 + 1).collect();
    {
        let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
        for (chunk, chunk_lengths) in lines.chunks(10).zip(lengths.chunks(10)) {
            let start = spool.cursor(b"input").unwrap_or(0);
            let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let mark = CursorMark {
                key: b"input",
                start,
                lengths: chunk_lengths,
            };
            // An API put between them takes sequence numbers of its own.
            spool.append(&[b"from the api"], 1).await.unwrap();
            let enqueued = spool.enqueue_marked(&slices, 1, Some(mark)).unwrap();
            assert_eq!(enqueued.appended.accepted, 10);
            enqueued.durable().await.unwrap();
            let expected: u64 = lengths[..start_index(&lengths, start) + 10].iter().sum();
            assert_eq!(spool.cursor(b"input"), Some(expected));
        }
        spool.close();
    }
    let whole: u64 = lengths.iter().sum();
    // Cut the last three records off the segment, as a write torn by a crash would.
    let segment = segments::list(dir.path()).unwrap().pop().unwrap();
    let frame = frame::record_frame_len(lines[39].len(), false) as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 2 * frame - frame / 2).unwrap();
    drop(file);
    let spool = StreamSpool::open(settings(dir.path(), FsyncPolicy::Always, 8 << 20)).unwrap();
    assert_eq!(
        spool.cursor(b"input"),
        Some(whole - lengths[37..].iter().sum::<u64>())
    );
    spool.close();
}

/// How many records of `lengths` lie before byte `offset`.
fn start_index(lengths: &[u64], offset: u64) -> usize {
    let mut at = 0;
    lengths
        .iter()
        .take_while(|&&l| {
            let inside = at < offset;
            at += l;
            inside
        })
        .count()
}
