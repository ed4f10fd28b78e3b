//! zstd in independently compressed chunks: each chunk is one zstd frame, and a sequence of
//! frames is a valid zstd stream that `zstd -d` and every zstd library read whole.

use super::CompressedChunk;

/// One zstd frame holding `raw`.
pub(super) fn compress_chunk(raw: &[u8], level: i32) -> CompressedChunk {
    let data = zstd::bulk::compress(raw, level)
        .expect("zstd compression of an in-memory buffer at a validated level cannot fail");
    CompressedChunk::without_crc(data, raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_frames_decode_as_one_stream() {
        let pieces: [&[u8]; 3] = [b"first chunk, ", b"", b"second chunk\n"];
        let body: Vec<u8> = pieces
            .iter()
            .flat_map(|p| compress_chunk(p, 3).data.to_vec())
            .collect();
        let decoded = zstd::stream::decode_all(&body[..]).unwrap();
        assert_eq!(decoded, pieces.concat());
    }
}
