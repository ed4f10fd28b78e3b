//! JSON records to Parquet files: each chunk of a batch is decoded into Arrow record
//! batches on the CPU pool while the batch fills (bad records singled out and set
//! aside), and a sealed batch's record batches are written as one Parquet file.

mod decode;
mod types;

pub use types::parse_type;

use std::sync::{Arc, OnceLock};

use arrow_array::{BooleanArray, RecordBatch};
use arrow_json::ReaderBuilder;
use arrow_json::reader::Decoder;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};

use super::framing::{ConversionError, check_json};
use crate::destination::{ChunkRecord, chunk_records};
use decode::{HydrantDecoders, KeyRules, RowErrors};

/// How JSON records become Parquet rows: what a stream's `parquet:` section says.
#[derive(Debug, Clone, Default)]
pub struct ParquetOptions {
    /// The declared columns; `None` infers them from the first chunk.
    pub columns: Option<Vec<ParquetColumn>>,
    /// Match JSON keys to column and struct field names ignoring ASCII case.
    pub case_insensitive: bool,
    /// Column name → JSON key.
    pub column_to_json_key_mappings: Vec<(String, String)>,
    /// Read the JSON key `a.b` into the column `a_b`.
    pub dots_to_underscores: bool,
    /// How JSON numbers in timestamp columns count time.
    pub timestamp_numbers: EpochUnit,
    /// Column compression inside the file.
    pub compression: ParquetCompression,
    /// Level of `zstd` or `gzip` (their defaults when `None`).
    pub compression_level: Option<u32>,
    /// A row group is closed once its encoded columns reach this many MiB.
    pub row_group_mib: u32,
    /// Largest data page, in KiB.
    pub page_size_kib: u32,
    /// Dictionary-encode columns.
    pub dictionary: bool,
}

/// One declared column.
#[derive(Debug, Clone)]
pub struct ParquetColumn {
    /// Column name (also the JSON key it is read from, unless mapped).
    pub name: String,
    /// Column type, e.g. `int64`, `timestamptz(ms)` ([`parse_type`]).
    pub data_type: String,
    /// Whether the column may be null or missing.
    pub nullable: bool,
}

/// Unit of epoch numbers in timestamp columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    /// Seconds below 10^11 (until the year 5138), milliseconds from there.
    #[default]
    Auto,
    /// Always seconds (fractions allowed).
    Seconds,
    /// Always milliseconds.
    Milliseconds,
}

/// Column compression codec inside Parquet files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// Snappy: fast, modest ratio; what most engines default to.
    #[default]
    Snappy,
    /// zstd: a better ratio at similar read speed.
    Zstd,
    /// gzip: the most widely readable of the dense codecs.
    Gzip,
    /// Uncompressed pages.
    None,
}

/// A record that could not become a row, with the reason.
#[derive(Debug)]
pub struct RejectedRecord {
    /// Its index in the chunk.
    pub index: usize,
    /// Why.
    pub error: ConversionError,
}

/// What a chunk became: rows in order, and the records that could not be rows.
#[derive(Debug, Default)]
pub struct ConvertedChunk {
    /// Decoded rows, in record order.
    pub batches: Vec<RecordBatch>,
    /// Records left out, in record order.
    pub rejected: Vec<RejectedRecord>,
}

/// A stream's JSON → Parquet conversion: schema, key rules and writer settings.
#[derive(Debug)]
pub struct ParquetEncoder {
    /// The declared (or, once inferred, the inferred) schema; rows are written with it.
    schema: OnceLock<Schemas>,
    keys: Arc<KeyRules>,
    epoch: EpochUnit,
    properties: WriterProperties,
}

/// The schema as declared, and the all-nullable one decoding uses (so that a bad row can
/// be decoded as nulls and then removed).
#[derive(Debug)]
struct Schemas {
    declared: SchemaRef,
    decoding: SchemaRef,
    required: Arc<[bool]>,
}

impl Schemas {
    fn new(declared: Schema) -> Self {
        let required: Arc<[bool]> = declared.fields().iter().map(|f| !f.is_nullable()).collect();
        let decoding = Schema::new(
            declared
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        Self {
            declared: Arc::new(declared),
            decoding: Arc::new(decoding),
            required,
        }
    }
}

/// A file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the Parquet file: {0}")]
pub struct WriteError(#[from] parquet::errors::ParquetError);

impl ParquetEncoder {
    /// The encoder a stream's (validated) `parquet:` section describes.
    pub fn new(config: &ParquetOptions) -> Result<Self, String> {
        let schema = OnceLock::new();
        if let Some(columns) = &config.columns {
            let fields = columns
                .iter()
                .map(|c| {
                    parse_type(&c.data_type)
                        .map(|t| Field::new(c.name.clone(), t, c.nullable))
                        .map_err(|reason| format!("column `{}`: {reason}", c.name))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let _ = schema.set(Schemas::new(Schema::new(fields)));
        }
        let compression = match config.compression {
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(
                ZstdLevel::try_new(config.compression_level.map_or(3, |l| l as i32))
                    .map_err(|e| e.to_string())?,
            ),
            ParquetCompression::Gzip => Compression::GZIP(
                GzipLevel::try_new(config.compression_level.unwrap_or(6))
                    .map_err(|e| e.to_string())?,
            ),
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(compression)
            .set_dictionary_enabled(config.dictionary)
            .set_data_page_size_limit(config.page_size_kib as usize * 1024)
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(Some(config.row_group_mib.max(1) as usize * 1024 * 1024))
            .set_created_by(format!("hydrant version {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            schema,
            keys: Arc::new(KeyRules {
                case_insensitive: config.case_insensitive,
                dots_to_underscores: config.dots_to_underscores,
                mappings: config.column_to_json_key_mappings.to_vec(),
            }),
            epoch: config.timestamp_numbers,
            properties,
        })
    }

    /// The schema files are written with, once known (declared, or inferred from the
    /// first chunk).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.schema.get().map(|s| Arc::clone(&s.declared))
    }

    /// The settings files are written with.
    pub fn writer_properties(&self) -> &WriterProperties {
        &self.properties
    }

    /// Decodes the records of one chunk (`data`, split by `records`). CPU-heavy: call it
    /// off the async reactor. Never fails as a whole: a record that is not one JSON object
    /// or does not fit the schema is rejected alone.
    pub fn convert_chunk(&self, data: &[u8], records: &[ChunkRecord]) -> ConvertedChunk {
        let schemas = self.schema.get_or_init(|| infer_schema(data, records));
        let mut out = ConvertedChunk::default();
        let mut segment = Segment::new(self, schemas, records.len());
        for (index, bytes) in chunk_records(data, records).enumerate() {
            // The decoder is lenient (about commas, for one); every format refuses the same
            // records, so each is checked first and a bad one never reaches the decoder.
            if let Err(error) = check_json(bytes) {
                out.rejected.push(RejectedRecord { index, error });
                continue;
            }
            match segment.feed(bytes) {
                Fed::Row => segment.rows.push(index),
                Fed::Nothing(reason) => out.rejected.push(RejectedRecord {
                    index,
                    error: ConversionError::parse(reason),
                }),
                Fed::Broken(reason) => {
                    // The decoder holds part of this record: rebuild the segment without it.
                    out.rejected.push(RejectedRecord {
                        index,
                        error: ConversionError::parse(reason),
                    });
                    let rows = std::mem::take(&mut segment.rows);
                    let mut rebuilt = Segment::new(self, schemas, rows.len());
                    for &row in &rows {
                        let fed = rebuilt.feed(ChunkRecord::bytes(data, records, row));
                        debug_assert!(
                            matches!(fed, Fed::Row),
                            "a record decoded before decodes again"
                        );
                    }
                    rebuilt.rows = rows;
                    rebuilt.finish(schemas, &mut out);
                    segment = Segment::new(self, schemas, records.len() - index);
                }
            }
        }
        segment.finish(schemas, &mut out);
        out.rejected.sort_by_key(|r| r.index);
        out
    }

    /// Writes `batches` (from [`convert_chunk`](Self::convert_chunk), in order) as one
    /// Parquet file, consuming them so that each is freed once written. CPU-heavy. The file
    /// comes in parts of at most [`FILE_PART_BYTES`], so a large one is never reallocated
    /// or copied whole on its way to the store.
    pub fn write_file(&self, batches: Vec<RecordBatch>) -> Result<Vec<Bytes>, WriteError> {
        let schema = match self.schema.get() {
            Some(schemas) => Arc::clone(&schemas.declared),
            None => Arc::new(Schema::empty()),
        };
        let mut writer = ArrowWriter::try_new(
            PartsWriter::default(),
            schema,
            Some(self.properties.clone()),
        )?;
        for batch in batches {
            writer.write(&batch)?;
        }
        Ok(writer.into_inner()?.finish())
    }
}

/// Largest part of a written file: the default multipart part size.
pub const FILE_PART_BYTES: usize = 8 * 1024 * 1024;

/// A `Write` that keeps what is written as a list of parts of [`FILE_PART_BYTES`].
#[derive(Default)]
struct PartsWriter {
    parts: Vec<Bytes>,
    current: Vec<u8>,
}

impl PartsWriter {
    fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.parts.push(Bytes::from(self.current));
        }
        self.parts
    }
}

impl std::io::Write for PartsWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.current.capacity() == 0 {
            self.current.reserve_exact(FILE_PART_BYTES);
        }
        let taken = buf.len().min(FILE_PART_BYTES - self.current.len());
        self.current.extend_from_slice(&buf[..taken]);
        if self.current.len() == FILE_PART_BYTES {
            self.parts
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records fed to one arrow-json decoder.
struct Segment {
    decoder: Decoder,
    row_errors: RowErrors,
    /// Chunk index of each decoded row.
    rows: Vec<usize>,
}

enum Fed {
    /// The record became one row.
    Row,
    /// The record held no JSON value; the decoder is unchanged.
    Nothing(String),
    /// The record was bad and the decoder took part of it: the segment must be rebuilt.
    Broken(String),
}

impl Segment {
    fn new(encoder: &ParquetEncoder, schemas: &Schemas, records: usize) -> Self {
        let row_errors = RowErrors::default();
        let factory = HydrantDecoders {
            keys: Arc::clone(&encoder.keys),
            required: Arc::clone(&schemas.required),
            epoch: encoder.epoch,
            row_errors: Arc::clone(&row_errors),
        };
        let decoder = ReaderBuilder::new(Arc::clone(&schemas.decoding))
            .with_batch_size(records + 2)
            .with_coerce_primitive(true)
            .with_decoder_factory(Arc::new(factory))
            .build_decoder()
            .expect("the decoding schema only has types the decoder supports");
        Self {
            decoder,
            row_errors,
            rows: Vec::with_capacity(records),
        }
    }

    fn feed(&mut self, record: &[u8]) -> Fed {
        let before = self.decoder.len();
        let fed = self
            .decoder
            .decode(record)
            .and_then(|_| self.decoder.decode(b"\n"));
        match fed {
            Err(error) => Fed::Broken(format!(
                "the record is not valid JSON: {}",
                json_message(&error)
            )),
            Ok(_) if self.decoder.has_partial_record() => {
                Fed::Broken("the record is not valid JSON: it ends inside a value".into())
            }
            Ok(_) => match self.decoder.len() - before {
                1 => Fed::Row,
                0 => Fed::Nothing("the record is empty: it holds no JSON value".into()),
                n => Fed::Broken(format!(
                    "the record holds {n} JSON values; each record must be exactly one object"
                )),
            },
        }
    }

    /// Turns the decoded rows into a record batch of the good ones.
    fn finish(mut self, schemas: &Schemas, out: &mut ConvertedChunk) {
        let batch = match self.decoder.flush() {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(error) => {
                // Not a per-record problem the top-level decoder could single out.
                let message = json_message(&error);
                out.rejected
                    .extend(self.rows.iter().map(|&index| RejectedRecord {
                        index,
                        error: ConversionError::malformed(message.clone()),
                    }));
                return;
            }
        };
        let errors = std::mem::take(
            &mut *self
                .row_errors
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let batch = if errors.is_empty() {
            batch
        } else {
            let mut keep = vec![true; batch.num_rows()];
            for (row, error) in errors {
                keep[row] = false;
                out.rejected.push(RejectedRecord {
                    index: self.rows[row],
                    error,
                });
            }
            match arrow_select::filter::filter_record_batch(&batch, &BooleanArray::from(keep)) {
                Ok(batch) => batch,
                Err(error) => {
                    reject_all(&self.rows, &error.to_string(), out);
                    return;
                }
            }
        };
        if batch.num_rows() == 0 {
            return;
        }
        match RecordBatch::try_new(Arc::clone(&schemas.declared), batch.columns().to_vec()) {
            Ok(batch) => out.batches.push(batch),
            Err(error) => reject_all(&self.rows, &error.to_string(), out),
        }
    }
}

fn reject_all(rows: &[usize], message: &str, out: &mut ConvertedChunk) {
    let already: std::collections::HashSet<usize> = out.rejected.iter().map(|r| r.index).collect();
    out.rejected.extend(
        rows.iter()
            .filter(|index| !already.contains(index))
            .map(|&index| RejectedRecord {
                index,
                error: ConversionError::malformed(message.to_string()),
            }),
    );
}

/// The message of an arrow-json error, without the "Json error: " prefix.
fn json_message(error: &arrow_schema::ArrowError) -> String {
    match error {
        arrow_schema::ArrowError::JsonError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The schema of `schema: infer`: the fields of the chunk's JSON objects, all nullable;
/// fields that are only ever null become strings.
fn infer_schema(data: &[u8], records: &[ChunkRecord]) -> Schemas {
    let values = chunk_records(data, records).filter_map(|bytes| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .filter(serde_json::Value::is_object)
            .map(Ok)
    });
    let inferred = arrow_json::reader::infer_json_schema_from_iterator(values)
        .unwrap_or_else(|_| Schema::empty());
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| {
            let data_type = without_null_type(f.data_type());
            Field::new(f.name(), data_type, true)
        })
        .collect();
    Schemas::new(Schema::new(fields))
}

fn without_null_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Null => DataType::Utf8,
        DataType::List(element) => types::list_of(without_null_type(element.data_type())),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), without_null_type(f.data_type()), true))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_in_parts_of_at_most_the_part_size() {
        use std::io::Write as _;
        let data: Vec<u8> = (0..20 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
        let mut writer = PartsWriter::default();
        for piece in data.chunks(3 * 1024 * 1024 + 7) {
            writer.write_all(piece).unwrap();
        }
        let parts = writer.finish();
        let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(
            sizes,
            [FILE_PART_BYTES, FILE_PART_BYTES, 4 * 1024 * 1024 + 5]
        );
        assert_eq!(parts.concat(), data);
    }
}
