//! Whole-object compression, done in independent chunks so that one object is compressed on
//! every core at once while its records are still arriving.
//!
//! A zstd object is a sequence of zstd frames and a Snappy object a sequence of framed
//! chunks, both valid streams by their formats' definitions. A gzip object is, by default, a
//! sequence of gzip members, one per chunk (RFC 1952 §2.2; every common reader reads them
//! all): libdeflate compresses a whole chunk at once, about twice as fast as zlib. With
//! [`GzipMembers::One`] it is one gzip member instead, for readers that stop after the first:
//! each chunk is raw DEFLATE ending in a sync flush, the chunks are concatenated, an empty
//! final block closes the stream, and the trailer's CRC-32 is combined from the chunks'
//! CRCs. This is how `pigz` parallelises gzip.

mod gzip;
mod snappy;
mod zstd;

use bytes::Bytes;

/// One compressed piece of an object, with what the trailer needs to know about its input.
#[derive(Debug, Clone)]
pub struct CompressedChunk {
    /// Compressed bytes (for [`Codec::None`], the input itself).
    pub data: Bytes,
    /// CRC-32 of the uncompressed input (0 when the codec needs none).
    pub crc: u32,
    /// Uncompressed length.
    pub raw_len: usize,
}

impl CompressedChunk {
    /// A chunk whose codec needs no checksum in a trailer (everything but gzip).
    fn without_crc(data: Vec<u8>, raw_len: usize) -> Self {
        Self {
            data: Bytes::from(data),
            crc: 0,
            raw_len,
        }
    }
}

/// A whole-object codec with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// No compression.
    None,
    /// gzip at `level` (0–9).
    Gzip {
        /// Compression level.
        level: u32,
        /// One member per chunk, or one member for the whole object.
        members: GzipMembers,
    },
    /// zstd at `level` (1–19).
    Zstd {
        /// zstd compression level.
        level: i32,
    },
    /// Snappy, framing format.
    Snappy,
}

/// How a gzip object's chunks are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GzipMembers {
    /// One gzip member per chunk (libdeflate): the fastest.
    #[default]
    PerChunk,
    /// One gzip member for the whole object (zlib, sync-flushed chunks), for readers that
    /// stop after the first member.
    One,
}

impl Codec {
    /// Whether chunks need CPU work (and so belong on the compression pool).
    pub fn is_identity(self) -> bool {
        matches!(self, Codec::None)
    }

    /// Compresses one chunk. CPU-heavy for real codecs: call it off the async reactor.
    pub fn compress_chunk(self, raw: Vec<u8>) -> CompressedChunk {
        match self {
            Codec::None => {
                let len = raw.len();
                CompressedChunk::without_crc(raw, len)
            }
            codec => codec.compress_slice(&raw),
        }
    }

    /// Compresses one chunk the caller keeps (with [`Codec::None`], a copy). CPU-heavy for
    /// real codecs: call it off the async reactor.
    pub fn compress_slice(self, raw: &[u8]) -> CompressedChunk {
        match self {
            Codec::None => CompressedChunk::without_crc(raw.to_vec(), raw.len()),
            Codec::Gzip {
                level,
                members: GzipMembers::PerChunk,
            } => gzip::compress_member(raw, level),
            Codec::Gzip {
                level,
                members: GzipMembers::One,
            } => gzip::compress_chunk(raw, level),
            Codec::Zstd { level } => zstd::compress_chunk(raw, level),
            Codec::Snappy => snappy::compress_chunk(raw),
        }
    }

    /// The object body from its chunks, in order, without copying them.
    pub fn assemble(self, chunks: Vec<CompressedChunk>) -> Vec<Bytes> {
        match self {
            Codec::None | Codec::Zstd { .. } | Codec::Snappy => {
                chunks.into_iter().map(|c| c.data).collect()
            }
            Codec::Gzip {
                level,
                members: GzipMembers::PerChunk,
            } => gzip::assemble_members(chunks, level),
            Codec::Gzip {
                members: GzipMembers::One,
                ..
            } => gzip::assemble(chunks),
        }
    }

    /// File extension for object keys.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip { .. } => ".gz",
            Codec::Zstd { .. } => ".zst",
            Codec::Snappy => ".snappy",
        }
    }

    /// `Content-Encoding` for stores that keep HTTP metadata.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Codec::None => None,
            Codec::Gzip { .. } => Some("gzip"),
            Codec::Zstd { .. } => Some("zstd"),
            Codec::Snappy => Some("x-snappy-framed"),
        }
    }

    /// The name `DescribeDeliveryStream` reports, Firehose's where it has one.
    pub fn format_name(self) -> &'static str {
        match self {
            Codec::None => "UNCOMPRESSED",
            Codec::Gzip { .. } => "GZIP",
            Codec::Zstd { .. } => "ZSTD",
            Codec::Snappy => "Snappy",
        }
    }
}
