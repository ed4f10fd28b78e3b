//! The batch journal of one stream: which record ranges were sealed into a batch before that
//! batch was written (so a restart rebuilds exactly the same batches, with the same object
//! keys), and up to which record everything is delivered (the checkpoint).
//!
//! One line per event, `S <first> <last> <crc>` or `D <first> <last> <crc>`, the CRC-32C
//! over the rest of the line in hex; a torn last line is ignored.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Rewrite the journal once it grows past this.
const COMPACT_BYTES: u64 = 1024 * 1024;

/// An inclusive range of record sequence numbers forming one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First record.
    pub first: u64,
    /// Last record (inclusive).
    pub last: u64,
}

/// The journal file and what it says.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    delivered_through: Option<u64>,
    sealed: VecDeque<SeqRange>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and reads its state.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("batches.journal");
        let mut delivered_through = None;
        let mut sealed = VecDeque::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                let Some((kind, range)) = parse_line(&line) else {
                    break;
                };
                match kind {
                    'S' => sealed.push_back(range),
                    _ => {
                        delivered_through =
                            Some(delivered_through.map_or(range.last, |d: u64| d.max(range.last)));
                    }
                }
            }
        }
        let done = delivered_through;
        sealed.retain(|r| done.is_none_or(|d| r.last > d));
        let mut journal = Self {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            bytes: 0,
            delivered_through,
            sealed,
        };
        journal.compact()?;
        Ok(journal)
    }

    /// Everything at or below this sequence number is delivered (or in the error output).
    pub fn delivered_through(&self) -> Option<u64> {
        self.delivered_through
    }

    /// Batches sealed and possibly written, but not confirmed delivered, in order.
    pub fn pending_sealed(&self) -> Vec<SeqRange> {
        self.sealed.iter().copied().collect()
    }

    /// Durably records that `range` is about to be written as one batch.
    pub fn record_sealed(&mut self, range: SeqRange) -> std::io::Result<()> {
        if self.sealed.contains(&range) {
            return Ok(());
        }
        self.append('S', range)?;
        self.file.sync_data()?;
        self.sealed.push_back(range);
        Ok(())
    }

    /// Records that `range` is delivered. Not synced: if it is lost in a crash, the batch is
    /// written again under the same key, which the destination already holds.
    pub fn record_delivered(&mut self, range: SeqRange) -> std::io::Result<()> {
        self.append('D', range)?;
        self.delivered_through = Some(
            self.delivered_through
                .map_or(range.last, |d| d.max(range.last)),
        );
        self.sealed.retain(|r| r.last > range.last);
        if self.bytes > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(())
    }

    fn append(&mut self, kind: char, range: SeqRange) -> std::io::Result<()> {
        let line = format_line(kind, range);
        self.file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Rewrites the journal with only the current state, atomically.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut text = String::new();
        if let Some(d) = self.delivered_through {
            text.push_str(&format_line('D', SeqRange { first: d, last: d }));
        }
        for range in &self.sealed {
            text.push_str(&format_line('S', *range));
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
        Ok(())
    }
}

fn format_line(kind: char, range: SeqRange) -> String {
    let body = format!("{kind} {} {}", range.first, range.last);
    format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse_line(line: &str) -> Option<(char, SeqRange)> {
    let (body, crc) = line.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut parts = body.split(' ');
    let kind = parts.next()?.chars().next()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    matches!(kind, 'S' | 'D').then_some((kind, SeqRange { first, last }))
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
}
