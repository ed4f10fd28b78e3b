//! Read positions of outside inputs (a tailed file), kept with the spool so that what is in
//! the spool and where the input resumes can never disagree.
//!
//! A source queues records together with a [`CursorMark`]: "these records are the input
//! `key` from byte `start` on, each taking these many bytes of it". The flusher appends the
//! mark to `cursors.log` (and, under `fsync: always`, syncs it) *before* it writes the group
//! holding the records. On open, each mark is resolved against the records the spool really
//! holds: a mark whose records were all written moves its cursor past all of them, one whose
//! group was lost or cut short moves it past only the records that survived. So a restart
//! resumes each input exactly after its last spooled record: none lost, none twice.
//!
//! Entry layout, little-endian: `len u32 | crc32c u32 | body`, body = `first_seq u64 |
//! key_len u16 | key | start u64 | count u32 | count × LEB128 byte length`. A torn last entry
//! fails its checksum and is ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Rewrite the log as one entry per cursor once it grows past this.
const COMPACT_BYTES: u64 = 1 << 20;

/// Records being queued from an outside input, and where in it they came from.
#[derive(Debug, Clone, Copy)]
pub struct CursorMark<'a> {
    /// Which input (a tailed file's identity).
    pub key: &'a [u8],
    /// Byte offset in the input where the first record starts.
    pub start: u64,
    /// Bytes of the input each record took (a line with its newline, say), in order.
    pub lengths: &'a [u64],
}

impl CursorMark<'_> {
    /// The mark of the records after the first `taken`.
    pub fn after(&self, taken: usize) -> Self {
        Self {
            key: self.key,
            start: self.start + self.lengths[..taken].iter().sum::<u64>(),
            lengths: &self.lengths[taken..],
        }
    }

    /// Appends the entry for this mark's first `count` records, the first at `first_seq`.
    pub fn encode(&self, first_seq: u64, count: usize, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&first_seq.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for &length in &self.lengths[..count] {
            let mut value = length;
            loop {
                let byte = (value & 0x7f) as u8;
                value >>= 7;
                if value == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        let body_len = (out.len() - at - 8) as u32;
        let crc = crc32c::crc32c(&out[at + 8..]);
        out[at..at + 4].copy_from_slice(&body_len.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One decoded entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    first_seq: u64,
    key: Vec<u8>,
    start: u64,
    lengths: Vec<u64>,
}

impl Entry {
    /// Where the input resumes if the spool holds every record below `spool_end`: past the
    /// records kept, or `None` when none was. (An entry without records is a position
    /// written by a rewrite, always kept; but the start of an entry whose records were all
    /// lost says nothing: groups are written in order, and the same loss may have cut the
    /// entry before it short.)
    fn resolved_position(&self, spool_end: u64) -> Option<u64> {
        let durable = spool_end.saturating_sub(self.first_seq) as usize;
        let durable = durable.min(self.lengths.len());
        (durable > 0 || self.lengths.is_empty())
            .then(|| self.start + self.lengths[..durable].iter().sum::<u64>())
    }
}

/// The cursor log of one spool, and every cursor's position as of the last synced write.
#[derive(Debug)]
pub struct CursorLog {
    path: PathBuf,
    /// Opened at the first mark, so spools of streams without sources hold no file.
    file: Option<File>,
    bytes: u64,
    positions: HashMap<Vec<u8>, u64>,
    /// Entries appended since the positions were last brought up to date.
    unapplied: Vec<u8>,
}

impl CursorLog {
    /// Reads `dir`'s log, resolves every entry against a spool holding the records below
    /// `spool_end`, and rewrites the log as the resolved positions (so an entry whose
    /// records were lost is never read again once those sequence numbers are reused).
    pub fn open(dir: &Path, spool_end: u64) -> std::io::Result<Self> {
        let path = dir.join("cursors.log");
        let mut positions = HashMap::new();
        match File::open(&path) {
            Ok(mut file) => {
                let mut data = Vec::new();
                file.read_to_end(&mut data)?;
                apply(&mut positions, &data, spool_end);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let mut log = Self {
            path,
            file: None,
            bytes: 0,
            positions,
            unapplied: Vec::new(),
        };
        if !log.positions.is_empty() {
            log.rewrite()?;
        }
        Ok(log)
    }

    /// Where input `key` resumes, if any of it was spooled.
    pub fn position(&self, key: &[u8]) -> Option<u64> {
        self.positions.get(key).copied()
    }

    /// Records (synced) that input `key` resumes at `position`, whatever it held before: a
    /// starting point chosen before any of its records is spooled (`start_at: end`).
    pub fn set(&mut self, key: &[u8], position: u64) -> std::io::Result<()> {
        let mut entry = Vec::new();
        let mark = CursorMark {
            key,
            start: position,
            lengths: &[],
        };
        mark.encode(0, 0, &mut entry);
        self.append(&entry, true)?;
        self.positions.insert(key.to_vec(), position);
        Ok(())
    }

    /// Forgets `key` (left out of the next rewrite): its input is finished and gone. A
    /// later entry of the same key (the input came back) brings it back.
    pub fn retire(&mut self, key: &[u8]) {
        self.positions.remove(key);
    }

    /// Log length before an [`append`](Self::append), to [`cut_back`](Self::cut_back) to.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Appends encoded entries (synced when `sync`), before their records are written.
    pub fn append(&mut self, entries: &[u8], sync: bool) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.bytes = file.metadata()?.len();
                super::segments::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
                self.file.insert(file)
            }
        };
        file.write_all(entries)?;
        if sync {
            file.sync_data()?;
        }
        self.bytes += entries.len() as u64;
        self.unapplied.extend_from_slice(entries);
        Ok(())
    }

    /// Takes back entries appended since the log was `len` long: their records were not
    /// written, and their sequence numbers will be given to other records.
    pub fn cut_back(&mut self, len: u64) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let dropped = (self.bytes - len) as usize;
        self.unapplied
            .truncate(self.unapplied.len().saturating_sub(dropped));
        file.set_len(len)?;
        file.sync_data()?;
        self.bytes = len;
        Ok(())
    }

    /// Every record of the appended entries is now synced: moves the positions past them,
    /// and rewrites a log grown past its limit.
    pub fn synced(&mut self) -> std::io::Result<()> {
        if self.unapplied.is_empty() {
            return Ok(());
        }
        apply(
            &mut self.positions,
            &std::mem::take(&mut self.unapplied),
            u64::MAX,
        );
        if self.bytes > COMPACT_BYTES {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Replaces the log by one entry per live cursor (written aside, then renamed over).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut data = Vec::new();
        for (key, &position) in &self.positions {
            let mark = CursorMark {
                key,
                start: position,
                lengths: &[],
            };
            mark.encode(0, 0, &mut data);
        }
        let aside = self.path.with_extension("log.new");
        let mut file = File::create(&aside)?;
        file.write_all(&data)?;
        file.sync_data()?;
        std::fs::rename(&aside, &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        super::segments::sync_dir(dir)?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        self.bytes = data.len() as u64;
        Ok(())
    }
}

/// Moves `positions` by the entries in `data`, resolved against a spool holding the records
/// below `spool_end`.
/// The last entry of an input wins: its entries come in the order its reader read, and a
/// reader that starts a truncated file over moves its position back.
fn apply(positions: &mut HashMap<Vec<u8>, u64>, data: &[u8], spool_end: u64) {
    for entry in decode_all(data) {
        if let Some(position) = entry.resolved_position(spool_end) {
            positions.insert(entry.key, position);
        }
    }
}

/// Every whole, intact entry of `data`, up to the first torn or damaged one.
fn decode_all(data: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Some(entry) = decode_body(body) else {
            break;
        };
        entries.push(entry);
        at += 8 + len;
    }
    entries
}

fn decode_body(body: &[u8]) -> Option<Entry> {
    let mut rest = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let first_seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let key_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let key = take(key_len)?.to_vec();
    let start = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut lengths = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *take(1)?.first()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        lengths.push(value);
    }
    Some(Entry {
        first_seq,
        key,
        start,
        lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark<'a>(key: &'a [u8], start: u64, lengths: &'a [u64]) -> CursorMark<'a> {
        CursorMark {
            key,
            start,
            lengths,
        }
    }

    #[test]
    fn entries_round_trip_and_a_torn_last_one_is_ignored() {
        let mut data = Vec::new();
        mark(b"a", 5, &[1, 200, 70_000]).encode(9, 3, &mut data);
        mark(b"bb", 0, &[3, 4]).encode(12, 1, &mut data);
        let whole = data.len();
        mark(b"a", 70_206, &[10]).encode(13, 1, &mut data);
        let decoded = decode_all(&data[..data.len() - 1]);
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].lengths, vec![1, 200, 70_000]);
        assert_eq!(decoded[1].lengths, vec![3]);
        assert_eq!(decode_all(&data).len(), 3);
        assert_eq!(decode_all(&data[..whole]).len(), 2);
    }

    #[test]
    fn a_cursor_moves_only_past_the_records_the_spool_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        mark(b"f", 0, &[10, 10]).encode(0, 2, &mut data);
        mark(b"g", 100, &[1]).encode(2, 1, &mut data);
        // Records 3..6 of the next mark; the spool kept only up to record 4.
        mark(b"f", 20, &[5, 6, 7]).encode(3, 3, &mut data);
        // Lost whole: its start must not vouch for the records before it.
        mark(b"f", 38, &[2]).encode(6, 1, &mut data);
        std::fs::write(dir.path().join("cursors.log"), &data).unwrap();
        let log = CursorLog::open(dir.path(), 5).unwrap();
        assert_eq!(log.position(b"f"), Some(20 + 5 + 6));
        assert_eq!(log.position(b"g"), Some(101));
        // The resolved positions were written back: a later, longer spool does not revive
        // the lost records' marks.
        let reopened = CursorLog::open(dir.path(), 100).unwrap();
        assert_eq!(reopened.position(b"f"), Some(31));
        assert_eq!(reopened.position(b"g"), Some(101));
    }

    #[test]
    fn a_set_position_holds_until_records_move_it_and_survives_their_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CursorLog::open(dir.path(), 0).unwrap();
        log.set(b"f", 500).unwrap();
        assert_eq!(
            CursorLog::open(dir.path(), 0).unwrap().position(b"f"),
            Some(500)
        );
        let mut log = CursorLog::open(dir.path(), 0).unwrap();
        let mut data = Vec::new();
        mark(b"f", 500, &[10, 10]).encode(0, 2, &mut data);
        log.append(&data, true).unwrap();
        // Both records kept, then neither: the set position is where reading resumes.
        let dir_copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("cursors.log"),
            dir_copy.path().join("cursors.log"),
        )
        .unwrap();
        assert_eq!(
            CursorLog::open(dir.path(), 2).unwrap().position(b"f"),
            Some(520)
        );
        assert_eq!(
            CursorLog::open(dir_copy.path(), 0).unwrap().position(b"f"),
            Some(500)
        );
    }

    #[test]
    fn an_input_started_over_resumes_at_its_new_position_not_its_furthest() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        mark(b"f", 0, &[10, 10, 10]).encode(0, 3, &mut data);
        // Truncated in place and read again from 0, under the same identity.
        mark(b"f", 0, &[4]).encode(3, 1, &mut data);
        std::fs::write(dir.path().join("cursors.log"), &data).unwrap();
        assert_eq!(
            CursorLog::open(dir.path(), 4).unwrap().position(b"f"),
            Some(4)
        );
        let mut log = CursorLog::open(dir.path(), 4).unwrap();
        log.retire(b"f");
        let mut data = Vec::new();
        mark(b"f", 4, &[6]).encode(4, 1, &mut data);
        log.append(&data, true).unwrap();
        log.synced().unwrap();
        log.rewrite().unwrap();
        assert_eq!(
            CursorLog::open(dir.path(), 5).unwrap().position(b"f"),
            Some(10)
        );
    }

    #[test]
    fn cut_back_entries_never_move_a_cursor_and_retired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CursorLog::open(dir.path(), 0).unwrap();
        let mut data = Vec::new();
        mark(b"f", 0, &[4, 4]).encode(0, 2, &mut data);
        log.append(&data, true).unwrap();
        log.synced().unwrap();
        let before = log.len();
        data.clear();
        mark(b"f", 8, &[4]).encode(2, 1, &mut data);
        log.append(&data, true).unwrap();
        log.cut_back(before).unwrap();
        log.synced().unwrap();
        assert_eq!(log.position(b"f"), Some(8));
        assert_eq!(
            CursorLog::open(dir.path(), 3).unwrap().position(b"f"),
            Some(8)
        );
        let mut log = CursorLog::open(dir.path(), 3).unwrap();
        log.retire(b"f");
        log.rewrite().unwrap();
        assert_eq!(CursorLog::open(dir.path(), 3).unwrap().position(b"f"), None);
    }
}
