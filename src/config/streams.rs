//! The `streams:` mapping, kept in file order with each name's location.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::StreamConfig;

/// Delivery streams in the order the file lists them, each name with its location so that
/// problems with a name point at it.
#[derive(Debug, Default)]
pub struct Streams(pub Vec<(Spanned<String>, StreamConfig)>);

impl Streams {
    /// Iterates over `(name, config)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &StreamConfig)> {
        self.0.iter().map(|(name, config)| (name, config))
    }
}

impl<'de> Deserialize<'de> for Streams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StreamsVisitor;
        impl<'de> Visitor<'de> for StreamsVisitor {
            type Value = Streams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from delivery stream name to its settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Streams, A::Error> {
                let mut streams = Vec::new();
                while let Some((name, config)) = map.next_entry()? {
                    streams.push((name, config));
                }
                Ok(Streams(streams))
            }
        }
        deserializer.deserialize_map(StreamsVisitor)
    }
}
