//! gzip in independently compressed chunks: either one gzip member per chunk (libdeflate,
//! which compresses a whole buffer at once, about twice as fast as zlib), concatenated into a
//! multi-member file as RFC 1952 allows, or chunks that concatenate into a single gzip member
//! (zlib's sync flush, as `pigz` does) for readers that stop after the first member.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use libdeflater::{CompressionLvl, Compressor};

use super::CompressedChunk;

/// Fixed gzip header: magic, DEFLATE, no flags, no mtime, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty final DEFLATE block with fixed Huffman codes: closes the stream after chunks
/// that each ended with a sync flush.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// One CPU-pool thread's libdeflate compressor (its tables are large) and the scratch
/// buffer it writes into.
struct MemberCompressor {
    level: u32,
    compressor: Compressor,
    scratch: Vec<u8>,
}

thread_local! {
    static MEMBER_COMPRESSOR: RefCell<Option<MemberCompressor>> = const { RefCell::new(None) };
}

/// A complete gzip member of `raw` (header, DEFLATE, CRC-32 and length), by libdeflate. The
/// member is written into the thread's scratch buffer, sized for the worst case, and copied
/// out at its real size, so a chunk waiting for its upload holds only what it needs.
pub(super) fn compress_member(raw: &[u8], level: u32) -> CompressedChunk {
    MEMBER_COMPRESSOR.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().is_none_or(|c| c.level != level) {
            let lvl = CompressionLvl::new(level.min(12) as i32).unwrap_or_default();
            *cached = Some(MemberCompressor {
                level,
                compressor: Compressor::new(lvl),
                scratch: Vec::new(),
            });
        }
        let MemberCompressor {
            compressor,
            scratch,
            ..
        } = cached.as_mut().expect("set above");
        scratch.resize(compressor.gzip_compress_bound(raw.len()), 0);
        let len = compressor
            .gzip_compress(raw, scratch)
            .expect("the output buffer has the compressor's own bound");
        CompressedChunk {
            data: Bytes::copy_from_slice(&scratch[..len]),
            crc: 0,
            raw_len: raw.len(),
        }
    })
}

/// Raw DEFLATE of `raw` ending in a sync flush (byte-aligned, not final), plus its CRC-32.
pub(super) fn compress_chunk(raw: &[u8], level: u32) -> CompressedChunk {
    let crc = crc32fast::hash(raw);
    let mut compressor = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(raw.len() / 3 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = compressor.total_in() as usize;
        compressor
            .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
            .expect("DEFLATE on an in-memory buffer with a valid level cannot fail");
        // The flush is complete once all input is consumed and the output was not filled.
        if compressor.total_in() as usize == raw.len() && out.len() < out.capacity() {
            break;
        }
    }
    CompressedChunk {
        data: Bytes::from(out),
        crc,
        raw_len: raw.len(),
    }
}

/// Members one after another: a multi-member gzip file. No chunk makes one empty member,
/// so that the object is still a gzip file.
pub(super) fn assemble_members(chunks: Vec<CompressedChunk>, level: u32) -> Vec<Bytes> {
    if chunks.is_empty() {
        return vec![compress_member(&[], level).data];
    }
    chunks.into_iter().map(|chunk| chunk.data).collect()
}

/// Header, chunks, final block and trailer, as one gzip member.
pub(super) fn assemble(chunks: Vec<CompressedChunk>) -> Vec<Bytes> {
    let mut crc = crc32fast::Hasher::new();
    let mut total_len: u64 = 0;
    let mut parts = Vec::with_capacity(chunks.len() + 2);
    parts.push(Bytes::from_static(&HEADER));
    for chunk in chunks {
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            chunk.crc,
            chunk.raw_len as u64,
        ));
        total_len += chunk.raw_len as u64;
        if !chunk.data.is_empty() {
            parts.push(chunk.data);
        }
    }
    let mut trailer = Vec::with_capacity(10);
    trailer.extend_from_slice(&FINAL_BLOCK);
    trailer.extend_from_slice(&crc.finalize().to_le_bytes());
    trailer.extend_from_slice(&(total_len as u32).to_le_bytes());
    parts.push(Bytes::from(trailer));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip_single_member(parts: &[Bytes]) -> Vec<u8> {
        let body: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut decoder = flate2::read::GzDecoder::new(&body[..]);
        let mut out = Vec::new();
        decoder.read_to_end(&mut out).unwrap();
        // GzDecoder stops after the first member: everything must have been in it.
        let mut rest = Vec::new();
        decoder.into_inner().read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "{} bytes after the first gzip member",
            rest.len()
        );
        out
    }

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    b'\n'
                } else {
                    b'a' + rng.u8(0..20)
                }
            })
            .collect()
    }

    /// Chunks of very different sizes, an empty one among them.
    fn uneven_pieces() -> [Vec<u8>; 4] {
        [
            sample(100_000, 1),
            sample(1, 2),
            Vec::new(),
            sample(70_001, 3),
        ]
    }

    #[test]
    fn chunks_concatenate_into_one_valid_member() {
        let pieces = uneven_pieces();
        let expected: Vec<u8> = pieces.concat();
        let chunks = pieces.iter().map(|p| compress_chunk(p, 6)).collect();
        let parts = assemble(chunks);
        assert_eq!(gunzip_single_member(&parts), expected);
    }

    /// Every member, one after another, as multi-member readers read them.
    fn gunzip_all_members(parts: &[Bytes]) -> (Vec<u8>, usize) {
        let body: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        let members = body.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        (out, members)
    }

    #[test]
    fn members_concatenate_into_a_multi_member_file() {
        let pieces = uneven_pieces();
        let expected: Vec<u8> = pieces.concat();
        let chunks = pieces.iter().map(|p| compress_member(p, 6)).collect();
        let parts = assemble_members(chunks, 6);
        let (out, members) = gunzip_all_members(&parts);
        assert_eq!(out, expected);
        assert!(members >= 4, "one member per chunk, got {members}");
        let (empty, members) = gunzip_all_members(&assemble_members(Vec::new(), 6));
        assert!(empty.is_empty());
        assert_eq!(members, 1, "no chunks is one empty member");
    }

    #[test]
    fn member_levels_round_trip_and_compress_like_zlib() {
        let data = sample(200_000, 9);
        for level in 0..=9 {
            let member = compress_member(&data, level);
            assert_eq!(
                gunzip_all_members(std::slice::from_ref(&member.data)).0,
                data,
                "level {level}"
            );
            if level == 6 {
                let zlib = assemble(vec![compress_chunk(&data, 6)]);
                let zlib_len: usize = zlib.iter().map(Bytes::len).sum();
                assert!(
                    member.data.len() <= zlib_len + zlib_len / 20,
                    "libdeflate -6 {} vs zlib -6 {zlib_len}",
                    member.data.len()
                );
            }
        }
    }

    #[test]
    fn no_chunks_is_an_empty_member() {
        assert!(gunzip_single_member(&assemble(vec![])).is_empty());
    }

    #[test]
    fn every_level_round_trips_and_higher_levels_compress_more() {
        let data = sample(200_000, 9);
        let size = |level| {
            let parts = assemble(vec![compress_chunk(&data, level)]);
            assert_eq!(gunzip_single_member(&parts), data, "level {level}");
            parts.iter().map(Bytes::len).sum::<usize>()
        };
        let sizes: Vec<usize> = (0..=9).map(size).collect();
        assert!(sizes[9] < sizes[1], "{sizes:?}");
        assert!(sizes[1] < sizes[0], "{sizes:?}");
    }
}
