//! Reading records back from the spool, in sequence order, as they become readable.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::segments::read_full;
use super::{StreamSpool, frame, lock};

/// Records read in one go: their payloads back to back, and where each one is.
#[derive(Debug, Default)]
pub struct RecordChunk {
    /// Payloads, concatenated.
    pub data: Vec<u8>,
    /// `(seq, arrival_ms, range in data)` per record, in sequence order.
    pub records: Vec<(u64, i64, Range<usize>)>,
}

impl RecordChunk {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

struct OpenSegment {
    reader: BufReader<File>,
}

/// Reads one stream's spool from a sequence number on.
pub struct SpoolReader {
    spool: Arc<StreamSpool>,
    next_seq: u64,
    segment: Option<OpenSegment>,
}

impl SpoolReader {
    pub(super) fn new(spool: Arc<StreamSpool>, next_seq: u64) -> Self {
        Self {
            spool,
            next_seq,
            segment: None,
        }
    }

    /// Sequence number of the next record this reader returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Waits for at least one readable record and returns up to about `max_bytes` of them;
    /// `None` once the spool is closed and everything written has been read.
    pub async fn read(&mut self, max_bytes: usize) -> std::io::Result<Option<RecordChunk>> {
        let mut written = self.spool.written.subscribe();
        loop {
            let available = *written.borrow_and_update();
            if available > self.next_seq {
                return self.read_available(available, max_bytes).map(Some);
            }
            if self.spool.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            if written.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Reads records `next_seq..end` (at most about `max_bytes`) from the segment files.
    fn read_available(&mut self, end: u64, max_bytes: usize) -> std::io::Result<RecordChunk> {
        let mut chunk = RecordChunk::default();
        let mut header = [0u8; frame::HEADER_LEN];
        while self.next_seq < end && chunk.data.len() < max_bytes {
            if self.segment.is_none() {
                self.open_segment_for(self.next_seq, false)?;
            }
            let segment = self.segment.as_mut().expect("opened above");
            let got = read_full(&mut segment.reader, &mut header)?;
            if got == 0 {
                // End of this segment: the next record starts the following one.
                self.segment = None;
                self.open_segment_for(self.next_seq, true)?;
                continue;
            }
            let parsed = frame::decode_header(&header);
            let start = chunk.data.len();
            chunk.data.resize(start + parsed.len as usize, 0);
            let read = if got == frame::HEADER_LEN {
                read_full(&mut segment.reader, &mut chunk.data[start..])?
            } else {
                0
            };
            let intact = got == frame::HEADER_LEN
                && read == parsed.len as usize
                && frame::verify(&parsed, &chunk.data[start..]);
            if !intact || parsed.seq > self.next_seq {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "spool {} is corrupt at record {} (found a damaged frame or a gap)",
                        self.spool.dir().display(),
                        self.next_seq
                    ),
                ));
            }
            if parsed.seq < self.next_seq {
                // Before the start point (already delivered): skip.
                chunk.data.truncate(start);
                continue;
            }
            chunk
                .records
                .push((parsed.seq, parsed.arrival_ms, start..chunk.data.len()));
            self.next_seq += 1;
        }
        Ok(chunk)
    }

    /// Opens the segment holding `seq`: the last one starting at or before it, or with
    /// `starting` the one that starts exactly at it.
    fn open_segment_for(&mut self, seq: u64, starting: bool) -> std::io::Result<()> {
        let path = {
            let segments = lock(&self.spool.segments);
            segments
                .iter()
                .rev()
                .find(|s| {
                    if starting {
                        s.first_seq == seq
                    } else {
                        s.first_seq <= seq
                    }
                })
                .map(|s| s.path.clone())
        };
        let Some(path) = path else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no spool segment holds record {seq}"),
            ));
        };
        let file = File::open(&path)?;
        self.segment = Some(OpenSegment {
            reader: BufReader::with_capacity(1 << 20, file),
        });
        Ok(())
    }
}
