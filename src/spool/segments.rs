//! Segment files: `<first seq, 20 digits>.seg`, in sequence order; recovery at start-up.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::cipher::{DecryptError, SpoolCipher};
use super::frame;

/// One segment file.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The segment recovery left open for appending.
#[derive(Debug)]
pub struct ActiveSegment {
    /// The file, positioned at its end.
    pub file: File,
    /// Its size.
    pub bytes: u64,
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// Remaining segments in order (the last is the active one).
    pub segments: Vec<Segment>,
    /// The segment to append to.
    pub active: ActiveSegment,
    /// Sequence number of the next record to append.
    pub next_seq: u64,
}

/// Path of the segment starting at `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// Reads the spool's incarnation id, creating it for a new spool.
pub fn incarnation(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join("spool.id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(id) = u64::from_str_radix(text.trim(), 16)
    {
        return Ok(id);
    }
    let id = fastrand::u64(..);
    let tmp = dir.join("spool.id.tmp");
    {
        let mut file = File::create(&tmp)?;
        writeln!(file, "{id:016x}")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(id)
}

/// Makes directory entries (new or renamed files) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let Ok(first_seq) = stem.parse::<u64>() else {
            continue;
        };
        segments.push(Segment {
            first_seq,
            path: entry.path(),
            bytes: std::fs::metadata(entry.path())?.len(),
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Recovers the segments in `dir`: deletes those wholly at or below `checkpoint`, cuts torn
/// or corrupt frames off the end of the last one, and opens it for appending.
pub fn recover(dir: &Path, checkpoint: Option<u64>) -> std::io::Result<Recovered> {
    let mut segments = list(dir)?;
    if let Some(checkpoint) = checkpoint {
        delete_delivered(&mut segments, checkpoint);
    }
    let Some(last) = segments.last_mut() else {
        let first_seq = checkpoint.map_or(0, |c| c + 1);
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(dir)?;
        segments.push(Segment {
            first_seq,
            path,
            bytes: 0,
        });
        return Ok(Recovered {
            segments,
            active: ActiveSegment { file, bytes: 0 },
            next_seq: first_seq,
        });
    };
    let (valid_bytes, next_seq) = scan(&last.path, last.first_seq)?;
    let file = OpenOptions::new().append(true).open(&last.path)?;
    if valid_bytes < last.bytes {
        tracing::warn!(
            segment = %last.path.display(),
            cut_bytes = last.bytes - valid_bytes,
            "cutting a torn write off the end of the spool"
        );
        file.set_len(valid_bytes)?;
        file.sync_all()?;
        last.bytes = valid_bytes;
    }
    let next_seq = next_seq.max(checkpoint.map_or(0, |c| c + 1));
    Ok(Recovered {
        active: ActiveSegment {
            file,
            bytes: valid_bytes,
        },
        segments,
        next_seq,
    })
}

/// Length of the valid prefix of a segment and the sequence number after its last frame.
fn scan(path: &Path, first_seq: u64) -> std::io::Result<(u64, u64)> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut valid = 0u64;
    let mut next_seq = first_seq;
    let mut header = [0u8; frame::HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if read_full(&mut reader, &mut header)? < frame::HEADER_LEN {
            break;
        }
        let parsed = frame::decode_header(&header);
        let Some(len) = parsed.payload_len() else {
            break;
        };
        if parsed.seq != next_seq {
            break;
        }
        payload.resize(len, 0);
        if read_full(&mut reader, &mut payload)? < payload.len()
            || !frame::verify(&parsed, &payload)
        {
            break;
        }
        valid += frame::frame_len(payload.len()) as u64;
        next_seq += 1;
    }
    Ok((valid, next_seq))
}

/// Checks, before anything in `dir` is changed, that the spool can be read with `cipher`:
/// the first intact frame of every segment decrypts (or is plain). A spool encrypted with
/// another key, or encrypted while no key is configured, is an error naming the segment.
pub fn check_readable(dir: &Path, cipher: Option<&SpoolCipher>) -> Result<(), String> {
    let segments = list(dir).map_err(|e| format!("cannot list the segments: {e}"))?;
    for segment in segments {
        let name = segment.path.display();
        let mut reader = BufReader::new(
            File::open(&segment.path).map_err(|e| format!("cannot open {name}: {e}"))?,
        );
        let mut header = [0u8; frame::HEADER_LEN];
        let got = read_full(&mut reader, &mut header).map_err(|e| format!("{name}: {e}"))?;
        let parsed = frame::decode_header(&header);
        let Some(len) = parsed.payload_len().filter(|_| got == frame::HEADER_LEN) else {
            continue;
        };
        let mut payload = vec![0u8; len];
        let got = read_full(&mut reader, &mut payload).map_err(|e| format!("{name}: {e}"))?;
        if got < len || !frame::verify(&parsed, &payload) || !parsed.encrypted() {
            continue;
        }
        let opened = match cipher {
            None => Err(DecryptError::NoKeys),
            Some(cipher) => cipher
                .open(parsed.seq, parsed.arrival_ms, &mut payload)
                .map(drop),
        };
        if let Err(error) = opened {
            return Err(format!("segment {name} cannot be read: {error}"));
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Deletes every segment, except the last, whose records are all at or below `delivered`;
/// returns the bytes freed.
pub fn delete_delivered(segments: &mut Vec<Segment>, delivered: u64) -> u64 {
    let mut freed = 0;
    while segments.len() > 1 && segments[1].first_seq <= delivered + 1 {
        let segment = segments.remove(0);
        match std::fs::remove_file(&segment.path) {
            Ok(()) => freed += segment.bytes,
            Err(e) => {
                tracing::error!(segment = %segment.path.display(), "cannot delete a delivered spool segment: {e}");
                segments.insert(0, segment);
                break;
            }
        }
    }
    freed
}
