//! Whole-object compression: the codecs live in [`hydrant_sinks::compress`], shared with the
//! destinations that compress their own requests; this module picks one from a stream's
//! configuration.

pub use hydrant_sinks::compress::{Codec, CompressedChunk};

use crate::config::Compression;

/// The codec a stream's configuration asks for (`level`: gzip 0–9, default 6; zstd 1–19,
/// default 3).
pub fn codec_of(compression: Compression, level: Option<u32>) -> Codec {
    match compression {
        Compression::None => Codec::None,
        Compression::Gzip => Codec::Gzip {
            level: level.unwrap_or(6),
        },
        Compression::Zstd => Codec::Zstd {
            level: level.map_or(3, |l| l as i32),
        },
        Compression::Snappy => Codec::Snappy,
    }
}
