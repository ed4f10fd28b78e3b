//! One file being tailed: its identity, its open handle (so a deleted or renamed file is
//! still read to its end) and how far it has been read.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::lines::{LineSplitter, Lines};
use super::multiline::{Joiner, MultilineRule};

/// Bytes of a file's start its identity covers (or up to its first newline).
const FINGERPRINT_BYTES: usize = 256;

/// What makes a file the same file: device and inode, plus a digest of its first line so
/// that a recycled inode, or a file truncated and rewritten in place, counts as new.
pub fn identity(file: &File) -> std::io::Result<Option<Vec<u8>>> {
    let meta = file.metadata()?;
    let mut head = [0u8; FINGERPRINT_BYTES];
    let filled = read_up_to(file, &mut head, 0)?;
    let head = &head[..filled];
    let first_line = match memchr::memchr(b'\n', head) {
        Some(newline) => &head[..=newline],
        None if filled == FINGERPRINT_BYTES => head,
        // Not even one whole line yet: nothing to read, and nothing to tell it by.
        None => return Ok(None),
    };
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&meta.dev().to_le_bytes());
    key.extend_from_slice(&meta.ino().to_le_bytes());
    key.extend_from_slice(&sha2::Sha256::digest(first_line)[..16]);
    Ok(Some(key))
}

/// Fills `buf` from `file` at `offset`, stopping early at the file's end; how many bytes.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let read = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// A file being read.
#[derive(Debug)]
pub struct TrackedFile {
    /// Its identity, once it has a first line.
    pub key: Option<Vec<u8>>,
    /// Where it was last seen.
    pub path: PathBuf,
    /// Device and inode, to recognise it under another name.
    pub inode: (u64, u64),
    file: File,
    /// End of the last line queued into the spool (its read position).
    pub position: u64,
    /// Bytes it had when last looked at.
    pub size: u64,
    splitter: LineSplitter,
    /// Joins lines into events, when the source has a multiline rule.
    joiner: Option<Joiner>,
    /// Scans that have not found it under any matching name since it was last read to its end.
    pub unseen_scans: u32,
}

/// What a read found.
#[derive(Debug)]
pub enum Read {
    /// Lines (possibly none) and refused lines.
    Lines(Lines),
    /// The file is shorter than what was read of it: truncated in place.
    Truncated,
}

impl TrackedFile {
    /// Starts tracking `file` (found at `path`), reading from `position`.
    pub fn new(
        path: &Path,
        file: File,
        key: Option<Vec<u8>>,
        position: u64,
        reading: &Reading,
    ) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            key,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            file,
            position,
            size: meta.len(),
            splitter: LineSplitter::new(position, reading.max_line),
            joiner: reading.joiner(position),
            unseen_scans: 0,
        })
    }

    /// Reads up to `budget` new bytes and cuts them into lines.
    pub fn read(&mut self, budget: usize) -> std::io::Result<Read> {
        self.size = self.file.metadata()?.len();
        let offset = self.splitter.offset();
        if self.size < offset {
            return Ok(Read::Truncated);
        }
        let mut lines = Lines::default();
        match &self.key {
            None => {
                self.key = identity(&self.file)?;
                if self.key.is_none() {
                    return Ok(Read::Lines(lines));
                }
            }
            // Truncated and written past where it was read to before this look: its first
            // line changed.
            Some(key) if self.size > offset && identity(&self.file)?.as_ref() != Some(key) => {
                return Ok(Read::Truncated);
            }
            Some(_) => {}
        }
        let wanted = ((self.size - offset) as usize).min(budget);
        let mut buf = vec![0u8; wanted];
        let filled = read_up_to(&self.file, &mut buf, offset)?;
        self.splitter.feed(&buf[..filled], &mut lines);
        if let Some(joiner) = &mut self.joiner {
            lines = joiner.join(lines, std::time::Instant::now());
        }
        Ok(Read::Lines(lines))
    }

    /// Starts over from the first byte, under a new identity: the file was truncated (a
    /// `copytruncate` rotation) and is being written again. Returns the old identity.
    pub fn restart(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        self.position = 0;
        self.rewind(reading);
        self.key.take()
    }

    /// Reads again from the read position: lines read after it were not queued.
    pub fn rewind(&mut self, reading: &Reading) {
        self.splitter = LineSplitter::new(self.position, reading.max_line);
        self.joiner = reading.joiner(self.position);
    }

    /// Whether everything the file holds has been read and made into records.
    pub fn at_end(&self) -> bool {
        self.splitter.offset() >= self.size && self.joiner.as_ref().is_none_or(Joiner::is_idle)
    }
}

/// How a source cuts files into records.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Longest record in bytes.
    pub max_line: usize,
    /// Lines joined into events, if any.
    pub multiline: Option<MultilineRule>,
}

impl Reading {
    fn joiner(&self, offset: u64) -> Option<Joiner> {
        self.multiline
            .clone()
            .map(|rule| Joiner::new(rule, offset, self.max_line))
    }
}
