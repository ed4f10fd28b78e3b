//! Whole-object compression: the codecs live in [`hydrant_sinks::compress`], shared with the
//! destinations that compress their own requests; this module picks one from a stream's
//! configuration.

pub use hydrant_sinks::compress::{Codec, CompressedChunk, GzipMembers};

use crate::config::{Compression, GzipMembersConfig};

/// The codec a stream's configuration asks for (`level`: gzip 0–9, default 6; zstd 1–19,
/// default 3; `members`: how gzip chunks are joined).
pub fn codec_of(compression: Compression, level: Option<u32>, members: GzipMembersConfig) -> Codec {
    match compression {
        Compression::None => Codec::None,
        Compression::Gzip => Codec::Gzip {
            level: level.unwrap_or(6),
            members: match members {
                GzipMembersConfig::Multiple => GzipMembers::PerChunk,
                GzipMembersConfig::Single => GzipMembers::One,
            },
        },
        Compression::Zstd => Codec::Zstd {
            level: level.map_or(3, |l| l as i32),
        },
        Compression::Snappy => Codec::Snappy,
    }
}
