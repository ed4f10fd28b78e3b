//! The batch journal of one stream: which record ranges were sealed into a batch before that
//! batch was written (so a restart rebuilds exactly the same batches, with the same object
//! keys), and up to which record everything is delivered (the checkpoint).
//!
//! One line per event, the CRC-32C over the rest of the line in hex at its end; a torn last
//! line is ignored:
//! - `S <first> <last>` / `D <first> <last>`: a batch of the whole stream sealed / delivered
//!   (delivering one moves the checkpoint past it);
//! - `S <first> <last> <part> [<over>,...]` / `D ...`: one partition's batch of a partitioned
//!   stream, whose records are that partition's records between `first` and `last` (the
//!   checkpoint moves separately, once no partition still buffers an older record); `over`
//!   lists partitions whose records of that range went to the error output;
//! - `C <through> <through>`: everything up to `through` is delivered.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Rewrite the journal once it grows past this.
const COMPACT_BYTES: u64 = 1024 * 1024;

/// An inclusive range of record sequence numbers forming one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqRange {
    /// First record.
    pub first: u64,
    /// Last record (inclusive).
    pub last: u64,
}

/// One batch of a partitioned stream, as journaled: a partition's records in `range`, or
/// (for the reserved parts) what a window of the stream sent to the error output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// The records' range.
    pub range: SeqRange,
    /// Which partition (a digest of its keys), or one of the reserved parts
    /// ([`WINDOW_FAILURES`], [`WINDOW_FAILED`]).
    pub part: u64,
    /// For [`WINDOW_FAILURES`]: partitions whose records of the range went to the error
    /// output because the stream held too many partitions.
    pub over_limit: Vec<u64>,
}

/// Reserved part: the records of a window that were refused (transform, partitioning,
/// format) or whose partition was over the limit, written to the error output.
pub const WINDOW_FAILURES: u64 = 0;

/// Reserved part: a window that could not be encoded at all; all its records went to the
/// error output.
pub const WINDOW_FAILED: u64 = 1;

/// What one journal line says.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Sealed(SeqRange),
    Delivered(SeqRange),
    PartSealed(PartEntry),
    PartDelivered(PartEntry),
    Checkpoint(u64),
}

/// The journal file and what it says.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Size of the journal after it was last rewritten: it is rewritten again once it has
    /// doubled (and passed [`COMPACT_BYTES`]), so a large state is not rewritten per line.
    compacted_bytes: u64,
    delivered_through: Option<u64>,
    sealed: VecDeque<SeqRange>,
    parts_sealed: Vec<PartEntry>,
    parts_delivered: Vec<PartEntry>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads its state.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("batches.journal");
        let mut journal = Self {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            bytes: 0,
            compacted_bytes: 0,
            delivered_through: None,
            sealed: VecDeque::new(),
            parts_sealed: Vec::new(),
            parts_delivered: Vec::new(),
        };
        if let Ok(file) = File::open(&journal.path) {
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                let Some(line) = parse_line(&line) else {
                    break;
                };
                journal.apply(line);
            }
        }
        journal.prune();
        journal.compact()?;
        Ok(journal)
    }

    /// Updates the state with what `line` says.
    fn apply(&mut self, line: Line) {
        match line {
            Line::Sealed(range) => {
                if !self.sealed.contains(&range) {
                    self.sealed.push_back(range);
                }
            }
            Line::Delivered(range) => {
                self.advance(range.last);
                self.sealed.retain(|r| r.last > range.last);
            }
            Line::PartSealed(entry) => {
                if !self.parts_sealed.contains(&entry) {
                    self.parts_sealed.push(entry);
                }
            }
            Line::PartDelivered(entry) => {
                self.parts_sealed
                    .retain(|e| (e.range, e.part) != (entry.range, entry.part));
                self.parts_delivered.push(entry);
            }
            Line::Checkpoint(through) => self.advance(through),
        }
    }

    fn advance(&mut self, through: u64) {
        self.delivered_through = Some(self.delivered_through.map_or(through, |d| d.max(through)));
    }

    /// Forgets partition entries the checkpoint has passed.
    fn prune(&mut self) {
        if let Some(done) = self.delivered_through {
            self.sealed.retain(|r| r.last > done);
            self.parts_sealed.retain(|e| e.range.last > done);
            self.parts_delivered.retain(|e| e.range.last > done);
        }
    }

    /// Everything at or below this sequence number is delivered (or in the error output).
    pub fn delivered_through(&self) -> Option<u64> {
        self.delivered_through
    }

    /// Batches sealed and possibly written, but not confirmed delivered, in order.
    pub fn pending_sealed(&self) -> Vec<SeqRange> {
        self.sealed.iter().copied().collect()
    }

    /// Partition batches past the checkpoint: sealed but not confirmed delivered, and
    /// delivered.
    pub fn parts(&self) -> (Vec<PartEntry>, Vec<PartEntry>) {
        (self.parts_sealed.clone(), self.parts_delivered.clone())
    }

    /// Durably records that `range` is about to be written as one batch.
    pub fn record_sealed(&mut self, range: SeqRange) -> std::io::Result<()> {
        if self.sealed.contains(&range) {
            return Ok(());
        }
        self.append(&Line::Sealed(range))?;
        self.file.sync_data()?;
        self.sealed.push_back(range);
        Ok(())
    }

    /// Records that `range` is delivered. Not synced: if it is lost in a crash, the batch is
    /// written again under the same key, which the destination already holds.
    pub fn record_delivered(&mut self, range: SeqRange) -> std::io::Result<()> {
        self.append(&Line::Delivered(range))?;
        self.apply(Line::Delivered(range));
        self.compact_if_large()
    }

    /// Durably records that a partition's batch is about to be written.
    pub fn record_part_sealed(&mut self, entry: PartEntry) -> std::io::Result<()> {
        if self.parts_sealed.contains(&entry) {
            return Ok(());
        }
        let line = Line::PartSealed(entry);
        self.append(&line)?;
        self.file.sync_data()?;
        self.apply(line);
        Ok(())
    }

    /// Records that a partition's batch is delivered. Not synced: if it is lost in a crash,
    /// the batch is rebuilt from its sealed entry and written again under the same key.
    pub fn record_part_delivered(&mut self, entry: PartEntry) -> std::io::Result<()> {
        let line = Line::PartDelivered(entry);
        self.append(&line)?;
        self.apply(line);
        self.compact_if_large()
    }

    /// Records that everything up to `through` is delivered. Not synced: a checkpoint lost
    /// in a crash only makes the restart look at delivered records again, which the
    /// partition entries skip.
    pub fn record_checkpoint(&mut self, through: u64) -> std::io::Result<()> {
        self.append(&Line::Checkpoint(through))?;
        self.advance(through);
        self.prune();
        self.compact_if_large()
    }

    fn compact_if_large(&mut self) -> std::io::Result<()> {
        if self.bytes > COMPACT_BYTES.max(2 * self.compacted_bytes) {
            self.compact()?;
        }
        Ok(())
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        let line = format_line(line);
        self.file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Rewrites the journal with only the current state, atomically.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut text = String::new();
        if let Some(d) = self.delivered_through {
            text.push_str(&format_line(&Line::Checkpoint(d)));
        }
        for range in &self.sealed {
            text.push_str(&format_line(&Line::Sealed(*range)));
        }
        for entry in &self.parts_delivered {
            text.push_str(&format_line(&Line::PartDelivered(entry.clone())));
        }
        for entry in &self.parts_sealed {
            text.push_str(&format_line(&Line::PartSealed(entry.clone())));
        }
        {
            let mut file = File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = text.len() as u64;
        self.compacted_bytes = self.bytes;
        Ok(())
    }
}

fn format_line(line: &Line) -> String {
    use std::fmt::Write as _;
    let mut body = String::new();
    let part = |kind: char, e: &PartEntry, body: &mut String| {
        let _ = write!(body, "{kind} {} {} {}", e.range.first, e.range.last, e.part);
        if !e.over_limit.is_empty() {
            let over: Vec<String> = e.over_limit.iter().map(u64::to_string).collect();
            let _ = write!(body, " {}", over.join(","));
        }
    };
    match line {
        Line::Sealed(r) => {
            let _ = write!(body, "S {} {}", r.first, r.last);
        }
        Line::Delivered(r) => {
            let _ = write!(body, "D {} {}", r.first, r.last);
        }
        Line::Checkpoint(through) => {
            let _ = write!(body, "C {through} {through}");
        }
        Line::PartSealed(e) => part('S', e, &mut body),
        Line::PartDelivered(e) => part('D', e, &mut body),
    }
    format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse_line(line: &str) -> Option<Line> {
    let (body, crc) = line.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut parts = body.split(' ');
    let kind = parts.next()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let range = SeqRange { first, last };
    let part = match parts.next() {
        None => None,
        Some(part) => {
            let over_limit = match parts.next() {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?,
            };
            Some(PartEntry {
                range,
                part: part.parse().ok()?,
                over_limit,
            })
        }
    };
    match (kind, part) {
        ("S", None) => Some(Line::Sealed(range)),
        ("D", None) => Some(Line::Delivered(range)),
        ("C", None) => Some(Line::Checkpoint(last)),
        ("S", Some(entry)) => Some(Line::PartSealed(entry)),
        ("D", Some(entry)) => Some(Line::PartDelivered(entry)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen_and_torn_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path()).unwrap();
            journal
                .record_sealed(SeqRange { first: 0, last: 9 })
                .unwrap();
            journal
                .record_sealed(SeqRange {
                    first: 10,
                    last: 19,
                })
                .unwrap();
            journal
                .record_delivered(SeqRange { first: 0, last: 9 })
                .unwrap();
            journal
                .record_sealed(SeqRange {
                    first: 20,
                    last: 29,
                })
                .unwrap();
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("batches.journal"))
            .unwrap();
        file.write_all(b"D 10 19 dead").unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.delivered_through(), Some(9));
        assert_eq!(
            journal.pending_sealed(),
            [
                SeqRange {
                    first: 10,
                    last: 19
                },
                SeqRange {
                    first: 20,
                    last: 29
                }
            ]
        );
    }

    #[test]
    fn partition_entries_survive_reopen_until_the_checkpoint_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |first, last, part, over_limit: Vec<u64>| PartEntry {
            range: SeqRange { first, last },
            part,
            over_limit,
        };
        {
            let mut journal = Journal::open(dir.path()).unwrap();
            journal.record_part_sealed(entry(0, 7, 42, vec![])).unwrap();
            journal.record_part_sealed(entry(3, 9, 43, vec![])).unwrap();
            journal
                .record_part_sealed(entry(4, 5, WINDOW_FAILURES, vec![44, 45]))
                .unwrap();
            journal
                .record_part_delivered(entry(0, 7, 42, vec![]))
                .unwrap();
            journal
                .record_part_delivered(entry(4, 5, WINDOW_FAILURES, vec![44, 45]))
                .unwrap();
            journal.record_checkpoint(2).unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.delivered_through(), Some(2));
        let (sealed, delivered) = journal.parts();
        assert_eq!(sealed, [entry(3, 9, 43, vec![])]);
        assert_eq!(
            delivered,
            [
                entry(0, 7, 42, vec![]),
                entry(4, 5, WINDOW_FAILURES, vec![44, 45])
            ]
        );
        drop(journal);
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.record_checkpoint(7).unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.parts(), (vec![entry(3, 9, 43, vec![])], vec![]));
        assert!(journal.pending_sealed().is_empty());
    }
}
