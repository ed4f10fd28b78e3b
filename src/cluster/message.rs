//! How a put's records travel in JetStream messages, and how each record is numbered.
//!
//! One message carries up to [`MAX_RECORDS`] records of one put: the arrival time (8 bytes,
//! little-endian milliseconds), then each record as a 4-byte little-endian length and its
//! bytes. A record's *position* is its message's stream sequence shifted left 16 bits plus its
//! index in the message: increasing within a partition and unique within the stream, so it
//! serves as the record's sequence number in batches and their names.

use bytes::Bytes;

use crate::spool::RecordChunk;

/// Most records in one message (the index takes the low 16 bits of a position).
pub const MAX_RECORDS: usize = 1 << 16;

/// Bytes a message spends besides its records: the arrival time.
const HEADER_BYTES: usize = 8;

/// Bytes a record spends besides its data: its length.
const RECORD_OVERHEAD: usize = 4;

/// Position of record `index` of the message at stream sequence `seq`.
pub fn position(seq: u64, index: usize) -> u64 {
    (seq << 16) | index as u64
}

/// The stream sequence of the message holding the record at `position`.
pub fn message_seq(position: u64) -> u64 {
    position >> 16
}

/// Splits `records` into message bodies of at most `max_bytes` each, in order; returns each
/// body with its record count. A record too large for any message is returned as `Err` with
/// its index.
pub fn encode(
    records: &[&[u8]],
    arrival_ms: i64,
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, usize)>, usize> {
    let mut messages = Vec::new();
    let mut body = Vec::new();
    let mut count = 0;
    for (index, record) in records.iter().enumerate() {
        let framed = RECORD_OVERHEAD + record.len();
        if HEADER_BYTES + framed > max_bytes {
            return Err(index);
        }
        if count > 0 && (body.len() + framed > max_bytes || count == MAX_RECORDS) {
            messages.push((std::mem::take(&mut body), count));
            count = 0;
        }
        if count == 0 {
            let size = records[index..]
                .iter()
                .map(|r| RECORD_OVERHEAD + r.len())
                .try_fold(HEADER_BYTES, |total, len| {
                    (total + len <= max_bytes).then_some(total + len)
                });
            body.reserve(size.unwrap_or(max_bytes));
            body.extend_from_slice(&arrival_ms.to_le_bytes());
        }
        body.extend_from_slice(&(record.len() as u32).to_le_bytes());
        body.extend_from_slice(record);
        count += 1;
    }
    if count > 0 {
        messages.push((body, count));
    }
    Ok(messages)
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("message {seq} is not a Hydrant record message: {reason}")]
pub struct DecodeError {
    /// Its stream sequence.
    pub seq: u64,
    /// What is wrong.
    pub reason: &'static str,
}

/// The records of the message at stream sequence `seq` whose positions are at least `from`
/// and at most `through`, pointing into `body` (no copy).
pub fn decode(seq: u64, body: &Bytes, from: u64, through: u64) -> Result<RecordChunk, DecodeError> {
    let error = |reason| DecodeError { seq, reason };
    let Some((arrival, _)) = body.split_first_chunk::<HEADER_BYTES>() else {
        return Err(error("shorter than its arrival time"));
    };
    let arrival_ms = i64::from_le_bytes(*arrival);
    let mut records = Vec::new();
    let mut at = HEADER_BYTES;
    let mut index = 0;
    while at < body.len() {
        let Some((len, _)) = body[at..].split_first_chunk::<RECORD_OVERHEAD>() else {
            return Err(error("a record length is cut short"));
        };
        let start = at + RECORD_OVERHEAD;
        let end = start + u32::from_le_bytes(*len) as usize;
        if end > body.len() {
            return Err(error("a record is cut short"));
        }
        let record_position = position(seq, index);
        if (from..=through).contains(&record_position) {
            records.push((record_position, arrival_ms, start..end));
        }
        at = end;
        index += 1;
    }
    Ok(RecordChunk {
        data: body.clone(),
        records,
    })
}

/// Records of several messages gathered into one chunk (copied out of their messages).
#[derive(Debug, Default)]
pub struct Gathered {
    data: Vec<u8>,
    records: Vec<(u64, i64, std::ops::Range<usize>)>,
}

impl Gathered {
    /// Appends `chunk`'s records.
    pub fn append(&mut self, chunk: &RecordChunk) {
        for (at, arrival, span) in &chunk.records {
            let start = self.data.len();
            self.data.extend_from_slice(&chunk.data[span.clone()]);
            self.records.push((*at, *arrival, start..self.data.len()));
        }
    }

    /// The records gathered, as one chunk.
    pub fn into_chunk(self) -> RecordChunk {
        RecordChunk {
            data: self.data.into(),
            records: self.records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(seq: u64, body: &[u8], from: u64, through: u64) -> Result<RecordChunk, DecodeError> {
        decode(seq, &Bytes::copy_from_slice(body), from, through)
    }

    #[test]
    fn records_come_back_with_their_positions_and_arrival() {
        let records: Vec<&[u8]> = vec![b"one", b"", b"three"];
        let messages = encode(&records, 1_700_000_000_123, 1 << 20).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1, 3);
        let out = decoded(7, &messages[0].0, 0, u64::MAX).unwrap();
        let got: Vec<(u64, i64, &[u8])> = out
            .records
            .iter()
            .map(|(at, arrival, span)| (*at, *arrival, &out.data[span.clone()]))
            .collect();
        assert_eq!(
            got,
            vec![
                (7 << 16, 1_700_000_000_123, &b"one"[..]),
                ((7 << 16) + 1, 1_700_000_000_123, &b""[..]),
                ((7 << 16) + 2, 1_700_000_000_123, &b"three"[..]),
            ]
        );
    }

    #[test]
    fn messages_stay_under_the_size_and_keep_the_order() {
        let data: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 30]).collect();
        let records: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let messages = encode(&records, 5, 200).unwrap();
        assert!(messages.iter().all(|(body, _)| body.len() <= 200));
        assert_eq!(messages.iter().map(|(_, n)| n).sum::<usize>(), 100);
        let mut gathered = Gathered::default();
        for (i, (body, _)) in messages.iter().enumerate() {
            gathered.append(&decoded(i as u64 + 1, body, 0, u64::MAX).unwrap());
        }
        let out = gathered.into_chunk();
        let back: Vec<&[u8]> = out.records.iter().map(|r| &out.data[r.2.clone()]).collect();
        assert_eq!(back, records);
    }

    #[test]
    fn a_record_larger_than_any_message_is_named() {
        let big = vec![0u8; 300];
        let records: Vec<&[u8]> = vec![b"a", &big];
        assert_eq!(encode(&records, 0, 200), Err(1));
    }

    #[test]
    fn only_the_asked_positions_are_read() {
        let records: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d"];
        let messages = encode(&records, 0, 1 << 20).unwrap();
        let out = decoded(2, &messages[0].0, position(2, 1), position(2, 2)).unwrap();
        let back: Vec<&[u8]> = out.records.iter().map(|r| &out.data[r.2.clone()]).collect();
        assert_eq!(back, vec![&b"b"[..], b"c"]);
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        let records: Vec<&[u8]> = vec![b"hello"];
        let (body, _) = &encode(&records, 0, 1 << 20).unwrap()[0];
        for cut in 0..body.len() {
            let result = decoded(1, &body[..cut], 0, u64::MAX);
            assert!(cut == 8 || result.is_err(), "cut at {cut}");
        }
    }
}
