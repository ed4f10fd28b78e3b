//! The `parquet:` section of a stream with `format: parquet`: the table schema, how JSON
//! keys find their columns (OpenX JSON SerDe options), and the Parquet writer's settings.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::ConfigProblem;
use super::validate::at;
pub use hydrant_sinks::object::parquet::{EpochUnit, ParquetCompression};
use hydrant_sinks::object::parquet::{ParquetColumn, ParquetOptions, parse_type};

/// How JSON records become Parquet rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// The columns, or `infer` to take them from the first batch (a quick start only: the
    /// first batch decides every later file's schema, so a field missing from it is
    /// dropped from all of them).
    pub schema: Spanned<SchemaSource>,
    /// Match JSON keys to column and struct field names ignoring ASCII case. Default `true`.
    #[serde(default = "yes")]
    pub case_insensitive: bool,
    /// Column name → JSON key, for keys that cannot or should not be column names
    /// (`ts: "@timestamp"`). Top-level columns only.
    #[serde(default)]
    pub column_to_json_key_mappings: BTreeMap<String, String>,
    /// Read the JSON key `a.b` into the column `a_b`. Default `false`.
    #[serde(default)]
    pub convert_dots_in_json_keys_to_underscores: bool,
    /// How JSON numbers in timestamp columns count time: `auto` (default: below 10^11 they
    /// are epoch seconds, from there epoch milliseconds), `seconds` or `milliseconds`.
    #[serde(default)]
    pub timestamp_numbers: EpochUnit,
    /// Column compression inside the file. Default `snappy`.
    #[serde(default = "default_compression")]
    pub compression: Spanned<ParquetCompression>,
    /// Level of `zstd` (1–22, default 3) or `gzip` (0–9, default 6).
    #[serde(default)]
    pub compression_level: Option<Spanned<u32>>,
    /// A row group is closed once its encoded columns reach this many MiB. 1–1024, default 128.
    #[serde(default = "default_row_group_mib")]
    pub row_group_mib: Spanned<u32>,
    /// Largest data page, in KiB. 4–65536, default 1024.
    #[serde(default = "default_page_size_kib")]
    pub page_size_kib: Spanned<u32>,
    /// Dictionary-encode columns (falling back to plain pages when a dictionary grows too
    /// large). Default `true`.
    #[serde(default = "yes")]
    pub dictionary: bool,
}

/// Where the table schema comes from.
#[derive(Debug)]
pub enum SchemaSource {
    /// From the first batch.
    Infer,
    /// Declared column by column.
    Columns(Vec<ColumnConfig>),
}

/// One declared column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name (also the JSON key it is read from, unless mapped).
    pub name: Spanned<String>,
    /// Column type, e.g. `int64`, `timestamptz(ms)`, `decimal(10,2)`, `list<string>`.
    #[serde(rename = "type")]
    pub data_type: Spanned<String>,
    /// Whether the column may be null or missing. Default `true`; a record without a value
    /// for a non-nullable column goes to the error output.
    #[serde(default = "yes")]
    pub nullable: bool,
}

impl<'de> Deserialize<'de> for SchemaSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SchemaSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`infer` or a list of columns (`- { name: id, type: int64 }`)")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<SchemaSource, E> {
                if value == "infer" {
                    Ok(SchemaSource::Infer)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(value), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SchemaSource, A::Error> {
                let mut columns = Vec::new();
                while let Some(column) = seq.next_element()? {
                    columns.push(column);
                }
                Ok(SchemaSource::Columns(columns))
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

impl ParquetConfig {
    /// What the Parquet encoder needs of this section.
    pub fn options(&self) -> ParquetOptions {
        ParquetOptions {
            columns: match &self.schema.value {
                SchemaSource::Infer => None,
                SchemaSource::Columns(columns) => Some(
                    columns
                        .iter()
                        .map(|column| ParquetColumn {
                            name: column.name.value.clone(),
                            data_type: column.data_type.value.clone(),
                            nullable: column.nullable,
                        })
                        .collect(),
                ),
            },
            case_insensitive: self.case_insensitive,
            column_to_json_key_mappings: self
                .column_to_json_key_mappings
                .iter()
                .map(|(column, key)| (column.clone(), key.clone()))
                .collect(),
            dots_to_underscores: self.convert_dots_in_json_keys_to_underscores,
            timestamp_numbers: self.timestamp_numbers,
            compression: self.compression.value,
            compression_level: self.compression_level.as_ref().map(|level| level.value),
            row_group_mib: self.row_group_mib.value,
            page_size_kib: self.page_size_kib.value,
            dictionary: self.dictionary,
        }
    }
}

pub(super) fn yes() -> bool {
    true
}

fn default_compression() -> Spanned<ParquetCompression> {
    super::spanned(ParquetCompression::default())
}

fn default_row_group_mib() -> Spanned<u32> {
    super::spanned(128)
}

fn default_page_size_kib() -> Spanned<u32> {
    super::spanned(1024)
}

/// Problems with a stream's `format: parquet` settings (or with a `parquet:` section that
/// no format uses).
pub(super) fn validate(
    name: &str,
    stream: &super::StreamConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let is_parquet = stream.format.value == super::Format::Parquet;
    let Some(parquet) = &stream.parquet else {
        if is_parquet {
            problems.push(at(
                &stream.format,
                format!(
                    "stream `{name}`: `format: parquet` needs a `parquet:` section with a `schema:` \
                     (a list of `{{ name, type }}` columns, or `infer`)"
                ),
            ));
        }
        return;
    };
    if !is_parquet {
        problems.push(at(
            &parquet.schema,
            format!("stream `{name}`: a `parquet:` section needs `format: parquet`"),
        ));
    }
    if is_parquet && stream.compression.value != super::Compression::None {
        problems.push(at(
            &stream.compression,
            format!(
                "stream `{name}`: Parquet files compress their columns themselves; remove \
                 `compression` and set `parquet.compression` (snappy, zstd, gzip or none) instead"
            ),
        ));
    }
    if let SchemaSource::Columns(columns) = &parquet.schema.value {
        if columns.is_empty() {
            problems.push(at(
                &parquet.schema,
                format!("stream `{name}`: `parquet.schema` declares no columns"),
            ));
        }
        for (i, column) in columns.iter().enumerate() {
            let column_name = &column.name.value;
            if column_name.is_empty() {
                problems.push(at(
                    &column.name,
                    format!("stream `{name}`: a column name is empty"),
                ));
            }
            let same = |other: &ColumnConfig| {
                if parquet.case_insensitive {
                    other.name.value.eq_ignore_ascii_case(column_name)
                } else {
                    &other.name.value == column_name
                }
            };
            if columns[..i].iter().any(same) {
                problems.push(at(
                    &column.name,
                    format!("stream `{name}`: column `{column_name}` is declared twice{}", if parquet.case_insensitive { " (names are compared ignoring case; set `case_insensitive: false` to tell them apart)" } else { "" }),
                ));
            }
            if let Err(reason) = parse_type(&column.data_type.value) {
                problems.push(at(
                    &column.data_type,
                    format!("stream `{name}`: column `{column_name}`: {reason}"),
                ));
            }
        }
        for column_name in parquet.column_to_json_key_mappings.keys() {
            if !columns.iter().any(|c| &c.name.value == column_name) {
                problems.push(at(
                    &parquet.schema,
                    format!(
                        "stream `{name}`: `column_to_json_key_mappings` names `{column_name}`, which is not a declared column"
                    ),
                ));
            }
        }
    }
    let codec = parquet.compression.value;
    if let Some(level) = &parquet.compression_level {
        let range = match codec {
            ParquetCompression::Zstd => Some(1..=22),
            ParquetCompression::Gzip => Some(0..=9),
            ParquetCompression::Snappy | ParquetCompression::None => None,
        };
        match range {
            Some(range) if !range.contains(&level.value) => problems.push(at(
                level,
                format!(
                    "stream `{name}`: `parquet.compression_level` for {codec:?} must be between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    level.value
                ),
            )),
            Some(_) => {}
            None => problems.push(at(
                level,
                format!("stream `{name}`: `parquet.compression_level` needs `compression: zstd` or `gzip`"),
            )),
        }
    }
    if !(1..=1024).contains(&parquet.row_group_mib.value) {
        problems.push(at(
            &parquet.row_group_mib,
            format!(
                "stream `{name}`: `parquet.row_group_mib` must be between 1 and 1024, got {}",
                parquet.row_group_mib.value
            ),
        ));
    }
    if !(4..=65_536).contains(&parquet.page_size_kib.value) {
        problems.push(at(
            &parquet.page_size_kib,
            format!(
                "stream `{name}`: `parquet.page_size_kib` must be between 4 and 65536, got {}",
                parquet.page_size_kib.value
            ),
        ));
    }
}
