//! Group commit: puts queue frames into the current group; the flusher thread writes each
//! group with one gathered `write` and (under `fsync: always`) one `fdatasync`, then wakes
//! them all.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::segments::{self, ActiveSegment, Segment};
use super::{FsyncPolicy, SpoolError, StreamSpool, lock};

/// The outcome every put of a group waits for.
pub type GroupResult = Option<Result<(), SpoolError>>;

/// Smallest buffer a part of a group is given: puts of a few records share one.
const MIN_PART_BYTES: usize = 64 << 10;

/// Consecutive frames of a group in one buffer, allocated at the size they need.
#[derive(Debug)]
pub struct GroupPart {
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Frames in `data`.
    pub records: u64,
    /// Encoded frames.
    pub data: Vec<u8>,
}

/// Frames queued by puts, written together. They are kept in parts sized to the puts that
/// made them rather than one buffer grown by doubling: a group collects everything that
/// arrives during one write and fsync (tens of MiB at 64 connections), and regrowing one
/// buffer held up to three times that while copying.
#[derive(Debug)]
pub struct Group {
    /// The frames, in sequence order.
    pub parts: Vec<GroupPart>,
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Frames in the group.
    pub records: u64,
    /// Cursor log entries of the records from outside inputs, written before the frames.
    pub marks: Vec<u8>,
    /// Signalled once the group is durable (or failed).
    pub done: watch::Sender<GroupResult>,
}

impl Group {
    fn new(first_seq: u64) -> Self {
        Self {
            parts: Vec::new(),
            first_seq,
            records: 0,
            marks: Vec::new(),
            done: watch::Sender::new(None),
        }
    }

    /// The buffer the next `bytes` bytes of frames, starting at `first_seq`, go into: the
    /// last part when it has room for them, else a new one.
    pub fn room_for(&mut self, first_seq: u64, bytes: usize) -> &mut GroupPart {
        let fits = self
            .parts
            .last()
            .is_some_and(|part| part.data.capacity() - part.data.len() >= bytes);
        if !fits {
            self.parts.push(GroupPart {
                first_seq,
                records: 0,
                data: Vec::with_capacity(bytes.max(MIN_PART_BYTES)),
            });
        }
        self.parts.last_mut().expect("a part was just ensured")
    }
}

/// State shared by puts and the flusher.
#[derive(Debug)]
pub struct WriterState {
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// The group puts are joining.
    pub group: Group,
    /// Bytes queued or being written, not yet counted on disk.
    pub pending_bytes: u64,
    /// A sync of everything below this sequence number was asked for.
    pub sync_wanted: u64,
    /// No more puts; the flusher writes what is queued and exits.
    pub shutdown: bool,
}

impl WriterState {
    /// State of a spool whose next record is `next_seq`.
    pub fn new(next_seq: u64) -> Self {
        Self {
            next_seq,
            group: Group::new(next_seq),
            pending_bytes: 0,
            sync_wanted: 0,
            shutdown: false,
        }
    }
}

struct Flusher<'a> {
    spool: &'a StreamSpool,
    file: File,
    file_bytes: u64,
    unsynced: bool,
    last_sync: Instant,
}

/// The flusher thread's body.
pub fn run_flusher(spool: &StreamSpool, active: ActiveSegment) {
    let mut flusher = Flusher {
        spool,
        file: active.file,
        file_bytes: active.bytes,
        unsynced: false,
        last_sync: Instant::now(),
    };
    let idle_wait = match spool.settings.fsync {
        FsyncPolicy::Always => Duration::from_secs(1),
        FsyncPolicy::Interval(interval) => interval.max(Duration::from_millis(1)),
    };
    loop {
        let (group, sync_wanted, shutdown) = {
            let mut state = lock(&spool.writer);
            while state.group.records == 0 && !state.shutdown && !flusher.sync_due(&state) {
                state = spool
                    .wake_flusher
                    .wait_timeout(state, idle_wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let next = Group::new(state.next_seq);
            let group = std::mem::replace(&mut state.group, next);
            (group, state.sync_wanted, state.shutdown)
        };
        if group.records > 0 {
            flusher.write_group(group);
        }
        if flusher.unsynced
            && (shutdown
                || sync_wanted > *spool.synced.borrow()
                || flusher.last_sync.elapsed() >= idle_wait)
        {
            flusher.sync();
        }
        if shutdown && lock(&spool.writer).group.records == 0 {
            flusher.sync();
            return;
        }
    }
}

impl Flusher<'_> {
    fn sync_due(&self, state: &WriterState) -> bool {
        self.unsynced
            && (state.sync_wanted > *self.spool.synced.borrow()
                || matches!(self.spool.settings.fsync, FsyncPolicy::Interval(i) if self.last_sync.elapsed() >= i))
    }

    fn write_group(&mut self, mut group: Group) {
        let len: u64 = group.parts.iter().map(|p| p.data.len() as u64).sum();
        let end_seq = group.first_seq + group.records;
        let always = matches!(self.spool.settings.fsync, FsyncPolicy::Always);
        let log_len = lock(&self.spool.cursors).len();
        let result = self
            .roll_if_full(group.first_seq)
            .and_then(|()| lock(&self.spool.cursors).append(&group.marks, always))
            .and_then(|()| write_parts(&mut self.file, &group.parts))
            .and_then(|()| match self.spool.settings.fsync {
                FsyncPolicy::Always => timed_sync(&self.file),
                FsyncPolicy::Interval(_) => Ok(()),
            });
        match result {
            Ok(()) => {
                self.file_bytes += len;
                self.spool.disk_bytes.fetch_add(len, Ordering::AcqRel);
                self.spool.live.written(end_seq, len);
                if let Some(last) = lock(&self.spool.segments).last_mut() {
                    last.bytes = self.file_bytes;
                }
                lock(&self.spool.writer).pending_bytes -= len;
                for part in std::mem::take(&mut group.parts) {
                    self.spool.cache_group(part);
                }
                self.spool.written.send_replace(end_seq);
                match self.spool.settings.fsync {
                    FsyncPolicy::Always => {
                        self.spool.synced.send_replace(end_seq);
                        self.last_sync = Instant::now();
                        self.cursors_synced();
                    }
                    FsyncPolicy::Interval(_) => self.unsynced = true,
                }
                group.done.send_replace(Some(Ok(())));
            }
            Err(error) => {
                if let Err(cut) = lock(&self.spool.cursors).cut_back(log_len) {
                    tracing::error!(
                        spool = %self.spool.settings.dir.display(),
                        "cannot take back the cursor log entries of a failed write: {cut}"
                    );
                }
                self.fail(group, &error);
            }
        }
    }

    /// Everything written is on stable storage: so are the cursors' new positions.
    fn cursors_synced(&self) {
        if let Err(error) = lock(&self.spool.cursors).synced() {
            tracing::error!(
                spool = %self.spool.settings.dir.display(),
                "cannot rewrite the cursor log; it keeps growing until this succeeds: {error}"
            );
        }
    }

    /// A failed write leaves the file as it was and fails this group and the one queued
    /// behind it (whose sequence numbers followed it); numbering resumes where it failed.
    fn fail(&mut self, group: Group, error: &std::io::Error) {
        let _ = self.file.set_len(self.file_bytes);
        let spool = self.spool;
        let failure = SpoolError::Write {
            dir: spool.settings.dir.clone(),
            reason: error.to_string(),
        };
        tracing::error!(
            spool = %spool.settings.dir.display(),
            records = group.records,
            "spool write failed; the puts are answered with ServiceUnavailableException: {error}"
        );
        let queued = {
            let mut state = lock(&spool.writer);
            state.next_seq = group.first_seq;
            state.pending_bytes = 0;
            std::mem::replace(&mut state.group, Group::new(group.first_seq))
        };
        group.done.send_replace(Some(Err(failure.clone())));
        queued.done.send_replace(Some(Err(failure)));
    }

    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        match timed_sync(&self.file) {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.spool.synced.send_replace(*self.spool.written.borrow());
                self.cursors_synced();
            }
            Err(error) => tracing::error!(
                spool = %self.spool.settings.dir.display(),
                "spool fsync failed; will retry: {error}"
            ),
        }
    }

    /// Starts a new segment at `first_seq` once the current one is full.
    fn roll_if_full(&mut self, first_seq: u64) -> std::io::Result<()> {
        if self.file_bytes < self.spool.segment_bytes {
            return Ok(());
        }
        self.file.sync_data()?;
        if self.unsynced {
            self.unsynced = false;
            self.spool.synced.send_replace(*self.spool.written.borrow());
        }
        let dir = &self.spool.settings.dir;
        let path = segments::segment_path(dir, first_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        segments::sync_dir(dir)?;
        self.file = file;
        self.file_bytes = 0;
        lock(&self.spool.segments).push(Segment {
            first_seq,
            path,
            bytes: 0,
        });
        Ok(())
    }
}

/// Writes every part, in order, with as few `writev` calls as the kernel allows.
fn write_parts(file: &mut File, parts: &[GroupPart]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(&p.data)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut rest, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// `fdatasync` of a segment, its duration recorded in `hydrant_spool_fsync_seconds`.
fn timed_sync(file: &std::fs::File) -> std::io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    ::metrics::histogram!(crate::metrics::SPOOL_FSYNC_SECONDS)
        .record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_put_gets_a_part_of_exactly_its_size_and_small_ones_share() {
        let mut group = Group::new(10);
        let big = 3 * MIN_PART_BYTES + 17;
        let part = group.room_for(10, big);
        part.data.resize(big, 1);
        part.records = 1;
        assert_eq!(group.parts[0].data.capacity(), big);
        for seq in 11..15 {
            let part = group.room_for(seq, 100);
            part.data.extend_from_slice(&[2; 100]);
            part.records += 1;
        }
        assert_eq!(
            group.parts.len(),
            2,
            "small puts after a full part share one"
        );
        assert_eq!(group.parts[1].first_seq, 11);
        assert_eq!(group.parts[1].records, 4);
        assert_eq!(group.parts[1].data.capacity(), MIN_PART_BYTES);
    }

    #[test]
    fn parts_past_the_kernels_iovec_limit_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut file = File::create(&path).unwrap();
        let parts: Vec<GroupPart> = (0..3000u64)
            .map(|i| GroupPart {
                first_seq: i,
                records: 1,
                data: vec![(i % 251) as u8; 1 + (i as usize % 7)],
            })
            .collect();
        write_parts(&mut file, &parts).unwrap();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.data.clone()).collect();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
