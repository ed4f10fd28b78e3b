//! Reading records back from the spool, in sequence order, as they become readable.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cipher::{DecryptError, SpoolCipher};
use super::segments::read_full;
use super::{StreamSpool, frame, lock};

/// Records read in one go: a buffer holding their payloads, and where each one is.
#[derive(Debug, Default)]
pub struct RecordChunk {
    /// Payloads (from disk: back to back; from the write cache: frames as written).
    pub data: Bytes,
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
    /// The first record the segment's name says it holds.
    first_seq: u64,
}

/// Reads one stream's spool from a sequence number on.
pub struct SpoolReader {
    spool: Arc<StreamSpool>,
    next_seq: u64,
    segment: Option<OpenSegment>,
    evicts: bool,
}

impl SpoolReader {
    /// A reader from `next_seq`; with `evicts`, it is the stream's main reader and drops
    /// cached groups once it has read them.
    pub(super) fn new(spool: Arc<StreamSpool>, next_seq: u64, evicts: bool) -> Self {
        Self {
            spool,
            next_seq,
            segment: None,
            evicts,
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
                return self.read_available(available, max_bytes).await.map(Some);
            }
            if self.spool.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            if written.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Reads records `next_seq..end` (at most about `max_bytes`): from the cache of recently
    /// written groups when they are still there, else from the segment files on a blocking
    /// thread (reads of megabytes must not stall the async reactor's API calls).
    async fn read_available(&mut self, end: u64, max_bytes: usize) -> std::io::Result<RecordChunk> {
        if let Some(chunk) = self.read_cached() {
            return chunk;
        }
        let stand_in = SpoolReader::new(Arc::clone(&self.spool), self.next_seq, self.evicts);
        let mut reader = std::mem::replace(self, stand_in);
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.read_from_disk(end, max_bytes);
            (reader, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        *self = reader;
        read
    }

    /// The rest of the cached group holding `next_seq`: without copying it, or decrypted
    /// into a new buffer when the spool is encrypted.
    fn read_cached(&mut self) -> Option<std::io::Result<RecordChunk>> {
        let mut tail = lock(&self.spool.tail);
        if self.evicts {
            while tail
                .front()
                .is_some_and(|g| g.first_seq + g.records <= self.next_seq)
            {
                let dropped = tail.pop_front().expect("checked front");
                self.spool
                    .tail_bytes
                    .fetch_sub(dropped.held, Ordering::AcqRel);
            }
        }
        let next_seq = self.next_seq;
        let holding = tail.partition_point(|g| g.first_seq + g.records <= next_seq);
        let group = tail.get(holding).filter(|g| g.first_seq <= next_seq)?;
        let data = group.data.clone();
        drop(tail);
        // The file position no longer matches; reopen if the disk is needed again.
        self.segment = None;
        let mut records = Vec::new();
        let mut offset = 0;
        while offset + frame::HEADER_LEN <= data.len() {
            let header: &[u8; frame::HEADER_LEN] = data[offset..offset + frame::HEADER_LEN]
                .try_into()
                .expect("header length");
            let parsed = frame::decode_header(header);
            let start = offset + frame::HEADER_LEN;
            let stop = start
                + parsed
                    .payload_len()
                    .expect("frames written by this process");
            if parsed.seq >= self.next_seq {
                records.push((parsed.seq, parsed.arrival_ms, start..stop));
            }
            offset = stop;
        }
        self.next_seq = records.last().map_or(self.next_seq, |r| r.0 + 1);
        let chunk = RecordChunk { data, records };
        Some(match &self.spool.cipher {
            None => Ok(chunk),
            Some(cipher) => self.decrypt_cached(cipher, chunk),
        })
    }

    /// The records of `chunk` (encrypted frames' payloads) decrypted into a new buffer.
    fn decrypt_cached(
        &self,
        cipher: &SpoolCipher,
        chunk: RecordChunk,
    ) -> std::io::Result<RecordChunk> {
        let mut data = Vec::with_capacity(chunk.data.len());
        let mut records = Vec::with_capacity(chunk.records.len());
        for (seq, arrival_ms, span) in chunk.records {
            let start = data.len();
            data.extend_from_slice(&chunk.data[span]);
            self.decrypt_tail(cipher, seq, arrival_ms, &mut data, start)?;
            records.push((seq, arrival_ms, start..data.len()));
        }
        Ok(RecordChunk {
            data: data.into(),
            records,
        })
    }

    /// Decrypts the encrypted payload of record `seq` held in `data[start..]`, leaving the
    /// record there in its place.
    fn decrypt_tail(
        &self,
        cipher: &SpoolCipher,
        seq: u64,
        arrival_ms: i64,
        data: &mut Vec<u8>,
        start: usize,
    ) -> std::io::Result<()> {
        let plain = cipher
            .open(seq, arrival_ms, &mut data[start..])
            .map_err(|e| self.undecryptable(seq, &e))?;
        data.copy_within(start + plain.start..start + plain.end, start);
        data.truncate(start + plain.len());
        Ok(())
    }

    /// The error of record `seq`, whose frame could not be decrypted.
    fn undecryptable(&self, seq: u64, error: &DecryptError) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "spool {}: record {seq} cannot be read: {error}",
                self.spool.dir().display()
            ),
        )
    }

    /// Reads records `next_seq..end` (at most about `max_bytes`) from the segment files.
    fn read_from_disk(&mut self, end: u64, max_bytes: usize) -> std::io::Result<RecordChunk> {
        let mut data: Vec<u8> = Vec::new();
        let mut records = Vec::new();
        let mut header = [0u8; frame::HEADER_LEN];
        while self.next_seq < end && data.len() < max_bytes {
            if self.segment.is_none() {
                self.open_segment_for(self.next_seq, false)?;
            }
            let segment = self.segment.as_mut().expect("opened above");
            let got = read_full(&mut segment.reader, &mut header)?;
            if got == 0 {
                // End of this segment: the next record starts the following one — unless
                // this segment was that one, and ended without holding it.
                let finished = self.segment.take().map(|s| s.first_seq);
                if finished == Some(self.next_seq) {
                    return Err(self.corrupt("its segment ends before holding it"));
                }
                self.open_segment_for(self.next_seq, true)?;
                continue;
            }
            if got < frame::HEADER_LEN {
                return Err(self.corrupt("found a torn frame header"));
            }
            let parsed = frame::decode_header(&header);
            let Some(len) = parsed.payload_len() else {
                return Err(self.corrupt(&format!(
                    "a frame header declares {} payload bytes, more than the largest record ({})",
                    parsed.len,
                    frame::MAX_PAYLOAD_LEN
                )));
            };
            let start = data.len();
            data.resize(start + len, 0);
            let read = read_full(&mut segment.reader, &mut data[start..])?;
            if read < len || !frame::verify(&parsed, &data[start..]) || parsed.seq > self.next_seq {
                return Err(self.corrupt("found a damaged frame or a gap"));
            }
            if parsed.seq < self.next_seq {
                // Before the start point (already delivered): skip.
                data.truncate(start);
                continue;
            }
            if parsed.encrypted() {
                let Some(cipher) = &self.spool.cipher else {
                    return Err(self.undecryptable(parsed.seq, &DecryptError::NoKeys));
                };
                self.decrypt_tail(cipher, parsed.seq, parsed.arrival_ms, &mut data, start)?;
            }
            records.push((parsed.seq, parsed.arrival_ms, start..data.len()));
            self.next_seq += 1;
        }
        Ok(RecordChunk {
            data: data.into(),
            records,
        })
    }

    /// The error of a spool found damaged at the next record.
    fn corrupt(&self, what: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "spool {} is corrupt at record {} ({what})",
                self.spool.dir().display(),
                self.next_seq
            ),
        )
    }

    /// Opens the segment holding `seq`: the last one starting at or before it, or with
    /// `starting` the one that starts exactly at it.
    fn open_segment_for(&mut self, seq: u64, starting: bool) -> std::io::Result<()> {
        let found = {
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
                .map(|s| (s.path.clone(), s.first_seq))
        };
        let Some((path, first_seq)) = found else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no spool segment holds record {seq}"),
            ));
        };
        let file = File::open(&path)?;
        self.segment = Some(OpenSegment {
            reader: BufReader::with_capacity(1 << 20, file),
            first_seq,
        });
        Ok(())
    }
}
