//! The spool: each stream's write-ahead log on disk.
//!
//! Ingest appends each accepted record as a checksummed frame to the stream's current segment
//! file and acknowledges the put only once the frame is durable. One flusher thread per
//! stream writes whatever the waiting puts have queued with a single `write` and a single
//! `fdatasync` (group commit), so one disk flush covers every put waiting on it. The delivery
//! path reads records back from the spool; a batch's record range is journaled before it is
//! written to the destination, and the checkpoint advances only after the destination
//! confirms, when fully delivered segments are deleted.

pub(crate) mod arrivals;
pub mod cipher;
mod cursors;
mod frame;
pub mod journal;
mod reader;
mod segments;
mod space;
mod writer;

pub use cipher::SpoolKeys;
pub use cursors::CursorMark;
pub use journal::{PartEntry, SeqRange, WINDOW_FAILED, WINDOW_FAILURES};
pub use reader::{RecordChunk, SpoolReader};

/// Largest record the spool takes: Firehose's 1,000 KiB, checked at ingest.
pub const MAX_RECORD_BYTES: usize = frame::MAX_PAYLOAD_LEN;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use journal::Journal;
use segments::Segment;
use writer::{GroupPart, WriterState};

/// When appended records are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A put is acknowledged after `fdatasync` of the group holding it: nothing acknowledged
    /// is lost even if the machine loses power.
    Always,
    /// A put is acknowledged once written to the OS; the file is synced at this interval.
    /// A process crash loses nothing; a machine crash can lose the last interval.
    Interval(Duration),
}

/// Settings of one stream's spool.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// The stream's spool directory.
    pub dir: PathBuf,
    /// Flush policy.
    pub fsync: FsyncPolicy,
    /// Most bytes of segments on disk; beyond that, puts are refused ("Slow down.").
    pub max_bytes: u64,
    /// Keys frames are encrypted with; `None` writes them in clear.
    pub keys: Option<SpoolKeys>,
}

/// Why the spool could not take or keep records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory cannot be used.
    #[error("spool directory {}: {reason}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Writing or syncing a segment failed (disk full, I/O error).
    #[error("writing the spool in {}: {reason}", dir.display())]
    Write {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The spool is shutting down.
    #[error("the spool is closed")]
    Closed,
    /// The JetStream cluster did not store the records (`spool.jetstream`).
    #[error("storing the records in JetStream stream {stream}: {reason}")]
    Replicated {
        /// The JetStream stream.
        stream: String,
        /// What failed.
        reason: String,
    },
}

/// What an append achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the first accepted record.
    pub first_seq: u64,
    /// Records accepted (a prefix of those offered); the rest did not fit in the spool.
    pub accepted: usize,
}

/// Records queued for a group write, not yet known to be durable.
#[derive(Debug)]
pub struct Enqueued {
    /// What was queued.
    pub appended: Appended,
    done: Option<watch::Receiver<writer::GroupResult>>,
}

impl Enqueued {
    /// Waits until the queued records are durable (or their write failed).
    pub async fn durable(self) -> Result<(), SpoolError> {
        let Some(mut done) = self.done else {
            return Ok(());
        };
        done.wait_for(Option::is_some)
            .await
            .map_err(|_| SpoolError::Closed)?
            .clone()
            .unwrap_or(Err(SpoolError::Closed))
    }
}

/// One stream's spool.
#[derive(Debug)]
pub struct StreamSpool {
    settings: SpoolSettings,
    incarnation: u64,
    segment_bytes: u64,
    writer: Mutex<WriterState>,
    wake_flusher: Condvar,
    /// Every record below this sequence number is written (readable).
    written: watch::Sender<u64>,
    /// Every record below this sequence number is on stable storage.
    synced: watch::Sender<u64>,
    disk_bytes: AtomicU64,
    segments: Mutex<Vec<Segment>>,
    journal: Mutex<Journal>,
    closed: AtomicBool,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    start_seq: u64,
    /// Bytes written and not yet delivered: what admission keeps under the limit.
    live: space::LiveBytes,
    /// Most live bytes: `max_bytes` less one segment (see [`space`]).
    live_limit: u64,
    /// Signalled when delivery releases room.
    space_freed: tokio::sync::Notify,
    /// Puts waiting for room queue here, so they are let in in the order they came.
    admission: tokio::sync::Mutex<()>,
    /// Journal and checkpoint writes started on the blocking pool and not yet finished.
    disk_jobs: watch::Sender<usize>,
    /// Groups recently written, so the reader takes fresh records from memory instead of
    /// reading them back from the file.
    tail: Mutex<std::collections::VecDeque<CachedGroup>>,
    tail_bytes: AtomicUsize,
    /// Encrypts new frames and decrypts encrypted ones; `None` without keys.
    cipher: Option<cipher::SpoolCipher>,
    /// When the undelivered records arrived (for data freshness).
    arrivals: Mutex<arrivals::Arrivals>,
    /// Where outside inputs feeding this spool resume (see [`cursors`]).
    cursors: Mutex<cursors::CursorLog>,
}

/// A written group kept in memory for the reader.
#[derive(Debug)]
struct CachedGroup {
    first_seq: u64,
    records: u64,
    data: bytes::Bytes,
    /// Bytes of memory it holds (its buffer's capacity).
    held: usize,
}

/// Most bytes of written groups kept in memory for the reader.
const TAIL_CACHE_BYTES: usize = 4 << 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamSpool {
    /// Opens the spool in `settings.dir` (creating it), recovers it (cuts torn frames off the
    /// last segment, drops segments already delivered) and starts its flusher thread.
    pub fn open(settings: SpoolSettings) -> Result<Arc<Self>, SpoolError> {
        let dir = settings.dir.clone();
        let directory_error = |reason: String| SpoolError::Directory {
            dir: dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| directory_error(format!("cannot create it: {e}")))?;
        let incarnation = segments::incarnation(&dir).map_err(|e| {
            directory_error(format!(
                "cannot read or write its spool.id (is it writable?): {e}"
            ))
        })?;
        // Nothing is written before the spool is known to be readable with these keys.
        let checking = settings
            .keys
            .as_ref()
            .map(|keys| cipher::SpoolCipher::new(keys, incarnation, 0));
        segments::check_readable(&dir, checking.as_ref()).map_err(|reason| {
            directory_error(format!(
                "{reason}; nothing was changed. Configure the key the spool was written with \
                 (as spool.encryption.key, or among its previous_keys)"
            ))
        })?;
        let cipher = match &settings.keys {
            None => None,
            Some(keys) => {
                let run = cipher::next_run(&dir)
                    .map_err(|e| directory_error(format!("cannot advance spool.run: {e}")))?;
                Some(cipher::SpoolCipher::new(keys, incarnation, run))
            }
        };
        let journal = Journal::open(&dir)
            .map_err(|e| directory_error(format!("cannot open the batch journal: {e}")))?;
        let checkpoint = journal.delivered_through();
        let recovered = segments::recover(&dir, checkpoint)
            .map_err(|e| directory_error(format!("cannot recover segments: {e}")))?;
        let segment_bytes = (settings.max_bytes / 8).clamp(1 << 20, 64 << 20);
        let next_seq = recovered.next_seq;
        let cursors = cursors::CursorLog::open(&dir, next_seq)
            .map_err(|e| directory_error(format!("cannot recover the cursor log: {e}")))?;
        let disk_bytes = recovered.segments.iter().map(|s| s.bytes).sum();
        let start_seq = checkpoint.map_or(
            recovered.segments.first().map_or(next_seq, |s| s.first_seq),
            |c| c + 1,
        );
        let spool = Arc::new(Self {
            incarnation,
            segment_bytes,
            writer: Mutex::new(WriterState::new(next_seq)),
            wake_flusher: Condvar::new(),
            written: watch::Sender::new(next_seq),
            synced: watch::Sender::new(next_seq),
            disk_bytes: AtomicU64::new(disk_bytes),
            segments: Mutex::new(recovered.segments),
            journal: Mutex::new(journal),
            closed: AtomicBool::new(false),
            flusher: Mutex::new(None),
            start_seq,
            live: space::LiveBytes::new(next_seq, disk_bytes, settings.max_bytes),
            live_limit: settings.max_bytes - segment_bytes.min(settings.max_bytes / 2),
            space_freed: tokio::sync::Notify::new(),
            admission: tokio::sync::Mutex::new(()),
            disk_jobs: watch::Sender::new(0),
            tail: Mutex::new(std::collections::VecDeque::new()),
            tail_bytes: AtomicUsize::new(0),
            cipher,
            arrivals: Mutex::new(arrivals::Arrivals::default()),
            cursors: Mutex::new(cursors),
            settings,
        });
        if next_seq > start_seq {
            // Records left from before the restart: at least as old as the restart.
            lock(&spool.arrivals).record(next_seq - 1, chrono::Utc::now().timestamp_millis());
        }
        let active = recovered.active;
        let flusher = {
            let spool = Arc::clone(&spool);
            std::thread::Builder::new()
                .name("hydrant-spool".into())
                .spawn(move || writer::run_flusher(&spool, active))
                .map_err(|e| directory_error(format!("cannot start the flusher thread: {e}")))?
        };
        *lock(&spool.flusher) = Some(flusher);
        Ok(spool)
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// A random id fixed when the spool directory was created: keeps object keys derived
    /// from sequence numbers unique even if the spool is wiped and numbering restarts.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sequence number of the first record not yet delivered when the spool was opened.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// Sequence number of the first record not known delivered now: where a delivery
    /// restarted while the spool stays open (a reload) begins.
    pub fn resume_seq(&self) -> u64 {
        lock(&self.journal)
            .delivered_through()
            .map_or(self.start_seq, |through| through + 1)
    }

    /// Waits until the journal and checkpoint writes already started have finished, so
    /// what the journal says next is final for a delivery that was stopped.
    pub async fn quiesce(&self) {
        let mut jobs = self.disk_jobs.subscribe();
        let _ = jobs.wait_for(|running| *running == 0).await;
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Acquire)
    }

    /// Appends `records` (in order, all with `arrival_ms`) and waits until they are durable
    /// under the fsync policy. Records that would take the spool past its size limit are not
    /// taken: `accepted` says how many were.
    pub async fn append(&self, records: &[&[u8]], arrival_ms: i64) -> Result<Appended, SpoolError> {
        let enqueued = self.enqueue(records, arrival_ms)?;
        let appended = enqueued.appended;
        enqueued.durable().await?;
        Ok(appended)
    }

    /// Queues `records` for the next group write without waiting: the caller may drop its
    /// copy of the records, then wait for [`Enqueued::durable`] before acknowledging them.
    pub fn enqueue(&self, records: &[&[u8]], arrival_ms: i64) -> Result<Enqueued, SpoolError> {
        self.enqueue_marked(records, arrival_ms, None)
    }

    /// [`enqueue`](Self::enqueue), recording with the accepted records where in an outside
    /// input they came from (`mark`, one length per record), so the input resumes after them.
    pub fn enqueue_marked(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        mark: Option<CursorMark<'_>>,
    ) -> Result<Enqueued, SpoolError> {
        let mut state = lock(&self.writer);
        if state.shutdown {
            return Err(SpoolError::Closed);
        }
        let on_disk = self.disk_bytes() + state.pending_bytes;
        let live = self.live.bytes() + state.pending_bytes;
        let budget = (self.settings.max_bytes.saturating_sub(on_disk))
            .min(self.live_limit.saturating_sub(live));
        let first_seq = state.next_seq;
        let mut used = 0u64;
        let mut accepted = 0;
        for record in records {
            let len = frame::record_frame_len(record.len(), self.cipher.is_some()) as u64;
            if used + len > budget {
                break;
            }
            used += len;
            accepted += 1;
        }
        if accepted > 0 {
            let part = state.group.room_for(first_seq, used as usize);
            for (seq, record) in (first_seq..).zip(&records[..accepted]) {
                frame::encode_record(
                    seq,
                    arrival_ms,
                    record,
                    self.cipher.as_ref(),
                    &mut part.data,
                );
            }
            part.records += accepted as u64;
            if let Some(mark) = mark {
                mark.encode(first_seq, accepted, &mut state.group.marks);
            }
            state.next_seq += accepted as u64;
            state.group.records += accepted as u64;
        }
        let appended = Appended {
            first_seq,
            accepted,
        };
        if accepted == 0 {
            return Ok(Enqueued {
                appended,
                done: None,
            });
        }
        state.pending_bytes += used;
        lock(&self.arrivals).record(state.next_seq - 1, arrival_ms);
        let done = state.group.done.subscribe();
        drop(state);
        self.wake_flusher.notify_one();
        Ok(Enqueued {
            appended,
            done: Some(done),
        })
    }

    /// Waits until every record up to `seq` is on stable storage (at once under `Always`).
    pub async fn sync_through(&self, seq: u64) -> Result<(), SpoolError> {
        if *self.synced.borrow() > seq {
            return Ok(());
        }
        {
            let mut state = lock(&self.writer);
            state.sync_wanted = state.sync_wanted.max(seq + 1);
        }
        self.wake_flusher.notify_one();
        let mut synced = self.synced.subscribe();
        synced
            .wait_for(|s| *s > seq)
            .await
            .map(|_| ())
            .map_err(|_| SpoolError::Closed)
    }

    /// A reader of records from `start_seq` on.
    pub fn reader(self: &Arc<Self>, start_seq: u64) -> SpoolReader {
        SpoolReader::new(Arc::clone(self), start_seq, false)
    }

    /// The stream's main reader, from where delivery stopped: it also drops cached groups it
    /// has read.
    pub fn delivery_reader(self: &Arc<Self>) -> SpoolReader {
        SpoolReader::new(Arc::clone(self), self.resume_seq(), true)
    }

    /// Keeps a just-written part of a group in memory for the reader, within the cache's budget.
    fn cache_group(&self, part: GroupPart) {
        let held = part.data.capacity();
        let mut tail = lock(&self.tail);
        tail.push_back(CachedGroup {
            first_seq: part.first_seq,
            records: part.records,
            data: part.data.into(),
            held,
        });
        let mut total = self.tail_bytes.fetch_add(held, Ordering::AcqRel) + held;
        while total > TAIL_CACHE_BYTES {
            let Some(dropped) = tail.pop_front() else {
                break;
            };
            total = self.tail_bytes.fetch_sub(dropped.held, Ordering::AcqRel) - dropped.held;
        }
    }

    /// Every record of `range`, read back (for the error output).
    pub async fn read_range(self: &Arc<Self>, range: SeqRange) -> std::io::Result<RecordChunk> {
        let mut reader = self.reader(range.first);
        let mut data = Vec::new();
        let mut records = Vec::new();
        while reader.next_seq() <= range.last {
            let Some(chunk) = reader.read(8 << 20).await? else {
                break;
            };
            for (seq, arrival, span) in chunk.records {
                if seq > range.last {
                    break;
                }
                let start = data.len();
                data.extend_from_slice(&chunk.data[span]);
                records.push((seq, arrival, start..data.len()));
            }
        }
        Ok(RecordChunk {
            data: data.into(),
            records,
        })
    }

    /// Batches journaled as sealed but not confirmed delivered, to be rebuilt exactly.
    pub fn pending_sealed(&self) -> Vec<SeqRange> {
        lock(&self.journal).pending_sealed()
    }

    /// Durably records that `range` is about to be written to the destination as one batch.
    /// The journal's sync runs on a blocking thread, never on the async reactor.
    pub async fn record_sealed(self: &Arc<Self>, range: SeqRange) -> Result<(), SpoolError> {
        self.sync_through(range.last).await?;
        self.with_journal(move |journal| journal.record_sealed(range))
            .await
    }

    /// Moves the checkpoint past `range` and deletes segments no longer needed, on a
    /// blocking thread (the journal write, its compaction and the deletions touch the disk).
    pub async fn record_delivered(self: &Arc<Self>, range: SeqRange) -> Result<(), SpoolError> {
        let spool = Arc::clone(self);
        self.blocking(move || spool.record_delivered_now(range))
            .await
    }

    /// Partition batches past the checkpoint: sealed but not confirmed delivered, and
    /// delivered (see [`journal`]).
    pub fn parts(&self) -> (Vec<PartEntry>, Vec<PartEntry>) {
        lock(&self.journal).parts()
    }

    /// Durably records that a partition's batch (or a window's error output) is about to be
    /// written; its records are synced first.
    pub async fn record_part_sealed(self: &Arc<Self>, entry: PartEntry) -> Result<(), SpoolError> {
        self.sync_through(entry.range.last).await?;
        self.with_journal(move |journal| journal.record_part_sealed(entry))
            .await
    }

    /// Records that a partition's batch is delivered (the checkpoint moves separately).
    pub async fn record_part_delivered(
        self: &Arc<Self>,
        entry: PartEntry,
    ) -> Result<(), SpoolError> {
        self.with_journal(move |journal| journal.record_part_delivered(entry))
            .await
    }

    /// Runs `write` on the journal on a blocking thread (it touches the disk).
    async fn with_journal(
        self: &Arc<Self>,
        write: impl FnOnce(&mut Journal) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), SpoolError> {
        let spool = Arc::clone(self);
        self.blocking(move || {
            write(&mut lock(&spool.journal)).map_err(|e| spool.write_error(format!("journal: {e}")))
        })
        .await
    }

    /// Moves the checkpoint to `through` and deletes the segments no longer needed.
    pub async fn record_checkpoint(self: &Arc<Self>, through: u64) -> Result<(), SpoolError> {
        let spool = Arc::clone(self);
        self.blocking(move || {
            lock(&spool.journal)
                .record_checkpoint(through)
                .map_err(|e| spool.write_error(format!("journal: {e}")))?;
            spool.delete_delivered(through);
            Ok(())
        })
        .await
    }

    /// Most bytes of segments the spool keeps on disk.
    pub fn max_bytes(&self) -> u64 {
        self.settings.max_bytes
    }

    /// Runs disk work `job` on tokio's blocking pool.
    async fn blocking(
        &self,
        job: impl FnOnce() -> Result<(), SpoolError> + Send + 'static,
    ) -> Result<(), SpoolError> {
        self.disk_jobs.send_modify(|running| *running += 1);
        let started = DiskJob(self.disk_jobs.clone());
        tokio::task::spawn_blocking(move || {
            let _running = started;
            job()
        })
        .await
        .unwrap_or_else(|e| Err(self.write_error(format!("the disk task failed: {e}"))))
    }

    /// [`record_delivered`](Self::record_delivered), on the calling thread.
    fn record_delivered_now(&self, range: SeqRange) -> Result<(), SpoolError> {
        lock(&self.journal)
            .record_delivered(range)
            .map_err(|e| self.write_error(format!("journal: {e}")))?;
        self.delete_delivered(range.last);
        Ok(())
    }

    /// Releases the room of the records up to `through` and deletes the segments holding
    /// only such records, waking a put waiting for room.
    fn delete_delivered(&self, through: u64) {
        let released = self.live.delivered_through(through);
        let freed = segments::delete_delivered(&mut lock(&self.segments), through);
        if freed > 0 {
            self.disk_bytes.fetch_sub(freed, Ordering::AcqRel);
        }
        if freed > 0 || released > 0 {
            self.space_freed.notify_waiters();
        }
    }

    /// Queues `records` like [`enqueue`](Self::enqueue), waiting until `deadline` for room
    /// when the spool is full; `taken` counts the records queued so far (a prefix), also
    /// when the caller gives up waiting. Puts that wait are let in first come, first served:
    /// a put arriving later neither overtakes them nor takes the room freed for them.
    pub async fn enqueue_waiting(
        &self,
        records: &[&[u8]],
        arrival_ms: i64,
        deadline: tokio::time::Instant,
        taken: &mut usize,
        mark: Option<CursorMark<'_>>,
    ) -> Result<Vec<Enqueued>, SpoolError> {
        let mut queued = Vec::new();
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.admission.lock()).await else {
            return Ok(queued);
        };
        loop {
            let freed = self.space_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let rest = mark.map(|m| m.after(*taken));
            let enqueued = self.enqueue_marked(&records[*taken..], arrival_ms, rest)?;
            *taken += enqueued.appended.accepted;
            queued.push(enqueued);
            if *taken == records.len() || tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Ok(queued);
            }
        }
    }

    /// Where the outside input `key` resumes: just past its last record in the spool.
    pub fn cursor(&self, key: &[u8]) -> Option<u64> {
        lock(&self.cursors).position(key)
    }

    /// Records (synced) where the outside input `key` starts, before any of its records is
    /// queued, so a restart starts there too.
    pub fn set_cursor(&self, key: &[u8], position: u64) -> std::io::Result<()> {
        lock(&self.cursors).set(key, position)
    }

    /// Forgets the cursor of an outside input that is finished and gone.
    pub fn retire_cursor(&self, key: &[u8]) {
        lock(&self.cursors).retire(key);
    }

    /// Records written but not yet delivered.
    pub fn undelivered(&self) -> u64 {
        let next = lock(&self.journal)
            .delivered_through()
            .map_or(self.start_seq, |d| d + 1);
        self.written.borrow().saturating_sub(next)
    }

    /// Age (ms at `now_ms`) of the oldest record written but not yet delivered; 0 when
    /// every record is delivered.
    pub fn data_freshness_ms(&self, now_ms: i64) -> u64 {
        if self.undelivered() == 0 {
            return 0;
        }
        let delivered_through = lock(&self.journal).delivered_through();
        lock(&self.arrivals)
            .oldest_after(delivered_through)
            .map_or(0, |arrived| now_ms.saturating_sub(arrived).max(0) as u64)
    }

    /// Stops taking records, writes what is queued, syncs, and stops the flusher.
    pub fn close(&self) {
        lock(&self.writer).shutdown = true;
        self.wake_flusher.notify_all();
        if let Some(flusher) = lock(&self.flusher).take() {
            let _ = flusher.join();
        }
        self.closed.store(true, Ordering::Release);
        // Wake readers waiting for data so they see the spool is closed.
        self.written.send_modify(|_| {});
    }

    fn write_error(&self, reason: String) -> SpoolError {
        SpoolError::Write {
            dir: self.settings.dir.clone(),
            reason,
        }
    }
}

impl Drop for StreamSpool {
    fn drop(&mut self) {
        lock(&self.writer).shutdown = true;
        self.wake_flusher.notify_all();
    }
}

/// A journal or checkpoint write on the blocking pool, counted until it ends (however).
struct DiskJob(watch::Sender<usize>);

impl Drop for DiskJob {
    fn drop(&mut self) {
        self.0.send_modify(|running| *running -= 1);
    }
}

#[cfg(test)]
mod tests;
