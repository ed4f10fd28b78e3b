//! Snappy in the framing format (`.snappy`, what Firehose calls Snappy): each chunk is
//! framed on its own; the format allows the stream identifier to repeat, so the chunks
//! concatenate into one valid stream.

use std::io::Write;

use super::CompressedChunk;

/// `raw` in the Snappy framing format.
pub(super) fn compress_chunk(raw: &[u8]) -> CompressedChunk {
    let mut encoder = snap::write::FrameEncoder::new(Vec::with_capacity(raw.len() / 2 + 64));
    encoder
        .write_all(raw)
        .expect("writing to an in-memory buffer cannot fail");
    let data = encoder
        .into_inner()
        .expect("flushing to an in-memory buffer cannot fail");
    CompressedChunk::without_crc(data, raw.len())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn concatenated_chunks_decode_as_one_stream() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let pieces: [&[u8]; 3] = [b"first chunk, ", &big, b"last\n"];
        let body: Vec<u8> = pieces
            .iter()
            .flat_map(|p| compress_chunk(p).data.to_vec())
            .collect();
        let mut decoded = Vec::new();
        snap::read::FrameDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, pieces.concat());
    }
}
