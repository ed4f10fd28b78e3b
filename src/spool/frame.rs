//! The on-disk record frame:
//!
//! ```text
//! | len u32 | crc32c u32 | seq u64 | arrival_ms i64 | payload (len bytes) |
//! ```
//!
//! All integers little-endian; the CRC-32C covers `seq`, `arrival_ms` and the payload, so a
//! torn or corrupted frame is recognised and never mistaken for a record. The top bit of
//! `len` marks an encrypted frame, whose payload is sealed by [`super::cipher`].

use super::cipher::{OVERHEAD, SpoolCipher};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;

/// Largest record a frame holds: the largest record the API takes (Firehose's 1,000 KiB). A
/// header declaring more (with an encrypted frame's overhead) is corrupt or torn, and is
/// never trusted for an allocation.
pub const MAX_PAYLOAD_LEN: usize = 1_024_000;

/// The bit of `len` that marks an encrypted payload.
const ENCRYPTED: u32 = 1 << 31;

/// A frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// Record sequence number.
    pub seq: u64,
    /// Arrival time, Unix milliseconds.
    pub arrival_ms: i64,
}

/// Appends one frame of `record` to `out`, encrypted when `cipher` is given; `record` is at
/// most [`MAX_PAYLOAD_LEN`] bytes.
pub fn encode_record(
    seq: u64,
    arrival_ms: i64,
    record: &[u8],
    cipher: Option<&SpoolCipher>,
    out: &mut Vec<u8>,
) {
    let Some(cipher) = cipher else {
        encode(seq, arrival_ms, record, out);
        return;
    };
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    cipher.seal(seq, arrival_ms, record, out);
    let payload = &out[start + HEADER_LEN..];
    let crc = checksum(seq, arrival_ms, payload);
    let len = payload.len() as u32 | ENCRYPTED;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    out[start + 16..start + 24].copy_from_slice(&arrival_ms.to_le_bytes());
}

/// Bytes the frame of a `record_len`-byte record takes on disk.
pub fn record_frame_len(record_len: usize, encrypted: bool) -> usize {
    frame_len(record_len + if encrypted { OVERHEAD } else { 0 })
}

/// Appends one plain frame to `out`; `payload` is at most [`MAX_PAYLOAD_LEN`] bytes.
pub fn encode(seq: u64, arrival_ms: i64, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(
        payload.len() <= MAX_PAYLOAD_LEN,
        "records are checked at ingest"
    );
    let crc = checksum(seq, arrival_ms, payload);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Size of a frame carrying `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Parses a header.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> FrameHeader {
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    FrameHeader {
        len: u32_at(0),
        crc: u32_at(4),
        seq: u64_at(8),
        arrival_ms: u64_at(16) as i64,
    }
}

impl FrameHeader {
    /// The payload length, or `None` when it is larger than any frame ever written (the
    /// header is corrupt or torn): checked before the checksum can be, so that a damaged
    /// length never sizes an allocation.
    pub fn payload_len(&self) -> Option<usize> {
        let len = (self.len & !ENCRYPTED) as usize;
        let max = MAX_PAYLOAD_LEN + if self.encrypted() { OVERHEAD } else { 0 };
        (len <= max).then_some(len)
    }

    /// Whether the payload is encrypted.
    pub fn encrypted(&self) -> bool {
        self.len & ENCRYPTED != 0
    }
}

/// Whether `payload` matches the header's checksum.
pub fn verify(header: &FrameHeader, payload: &[u8]) -> bool {
    Some(payload.len()) == header.payload_len()
        && checksum(header.seq, header.arrival_ms, payload) == header.crc
}

fn checksum(seq: u64, arrival_ms: i64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &arrival_ms.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_any_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode(42, -7, b"hello", &mut out);
        assert_eq!(out.len(), frame_len(5));
        let header = decode_header(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!((header.len, header.seq, header.arrival_ms), (5, 42, -7));
        assert!(verify(&header, &out[HEADER_LEN..]));
        for bit in 0..(out.len() - 4) * 8 {
            let mut corrupt = out.clone();
            corrupt[4 + bit / 8] ^= 1 << (bit % 8);
            let header = decode_header(corrupt[..HEADER_LEN].try_into().unwrap());
            assert!(
                !verify(&header, &corrupt[HEADER_LEN..]),
                "bit {bit} undetected"
            );
        }
    }
}
