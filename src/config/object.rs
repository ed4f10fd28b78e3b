//! A stream whose destination is an object store (`local`, `s3`): its format, compression and
//! key layout make the object destination behind the seam.

use std::sync::Arc;
use std::time::Duration;

use hydrant_sinks::object::parquet::ParquetEncoder;
use hydrant_sinks::object::{ObjectDestination, ObjectFormat, ObjectKeyBuilder, RecordFramer};
use hydrant_sinks::prelude::ObjectSink;

use super::{Format, RecordDelimiter, SeamDestination, StreamConfig};
use crate::compress::{Codec, codec_of};

/// Longest one object write may take before it counts as failed and is sent again: the
/// store's own request timeouts end a hung request; a multipart upload of a large object
/// may take long.
const OBJECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3600);

impl StreamConfig {
    /// Whole-object compression.
    pub fn codec(&self) -> Codec {
        codec_of(
            self.compression.value,
            self.compression_level.as_ref().map(|level| level.value),
            self.gzip_members.value,
        )
    }

    /// How records are laid out in this stream's objects.
    pub fn object_format(&self) -> Result<ObjectFormat, String> {
        match (self.format.value, &self.parquet) {
            (Format::Parquet, Some(parquet)) => Ok(ObjectFormat::Parquet(Arc::new(
                ParquetEncoder::new(&parquet.options())?,
            ))),
            (Format::Parquet, None) => Err("`format: parquet` needs a `parquet:` section".into()),
            (Format::Ndjson, _) => Ok(ObjectFormat::Framed(RecordFramer::ndjson())),
            (Format::Raw, _) => Ok(ObjectFormat::Framed(RecordFramer::raw(
                self.record_delimiter == RecordDelimiter::Newline,
            ))),
        }
    }

    /// The object destination of stream `stream` (an object store), writing to `sink`;
    /// `replayable` when the stream has a spool (object keys then derive from each batch's
    /// records, and objects are written only once). Fails on invalid Parquet settings.
    pub fn object_seam(
        &self,
        stream: &str,
        sink: Arc<dyn ObjectSink>,
        replayable: bool,
    ) -> Result<SeamDestination, String> {
        let format = self.object_format()?;
        let codec = self.codec();
        let prefix = self
            .key_template()
            .map_err(|error| format!("invalid prefix: {error}"))?;
        let keys =
            ObjectKeyBuilder::new(stream, prefix, ObjectDestination::extension(&format, codec));
        Ok(SeamDestination {
            destination: Arc::new(ObjectDestination::new(
                sink, format, codec, keys, replayable,
            )),
            concurrency: 1,
            backup_all: false,
            attempt_timeout: OBJECT_ATTEMPT_TIMEOUT,
        })
    }
}
