//! Rows encoded in PostgreSQL's binary COPY format, straight from the JSON records: each
//! record is split into its top-level fields without building a JSON tree, and each
//! column's value is converted from its JSON text (see [`ColumnType::convert`]) and
//! written in the column's binary format. CPU-heavy: run it off the async reactor.
//!
//! [`ColumnType::convert`]: super::ColumnType::convert

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use tokio_postgres::types::{IsNull, ToSql};

use super::{Column, Source};

/// Signature, flags and header extension length of a binary COPY stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The end-of-data marker of a binary COPY stream.
const TRAILER: &[u8] = b"\xff\xff";

/// Bytes per part handed to the connection.
const PART_BYTES: usize = 1024 * 1024;

/// Records' rows in binary COPY format (without header and trailer: see [`copy_stream_of`]),
/// with the records that could not be rows.
#[derive(Debug, Default)]
pub struct EncodedRows {
    /// Encoded rows, in parts; a row never spans two parts.
    pub parts: Vec<Bytes>,
    /// Where each row is: its part, byte range, and the index of its record.
    pub rows: Vec<RowSpan>,
    /// Records left out (their index among the input records) and why.
    pub rejected: Vec<(usize, RowError)>,
}

/// Where one encoded row is, so that a row the server refuses can be taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSpan {
    /// Index of its part.
    pub part: usize,
    /// Its bytes within the part.
    pub start: usize,
    /// End of its bytes within the part.
    pub end: usize,
    /// Its record: an index among the input records, or (once a batch is assembled) the
    /// record's sequence number.
    pub record: u64,
}

/// The COPY stream of `rows` (spans into `parts`, which hold no header or trailer):
/// consecutive rows of a part are sent as one slice.
pub fn copy_stream_of(parts: &[Bytes], rows: &[RowSpan]) -> Vec<Bytes> {
    let mut out = vec![Bytes::from_static(HEADER)];
    let mut run: Option<(usize, usize, usize)> = None;
    for row in rows {
        run = match run {
            Some((part, start, end)) if part == row.part && end == row.start => {
                Some((part, start, row.end))
            }
            Some((part, start, end)) => {
                out.push(parts[part].slice(start..end));
                Some((row.part, row.start, row.end))
            }
            None => Some((row.part, row.start, row.end)),
        };
    }
    if let Some((part, start, end)) = run {
        out.push(parts[part].slice(start..end));
    }
    out.push(Bytes::from_static(TRAILER));
    out
}

/// Why a record is not a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowError {
    /// It is not a JSON object.
    NotJson(String),
    /// A value does not fit its column (the message names it).
    InvalidValue(String),
}

/// Encodes `records` (JSON objects) as rows of `columns`.
pub(super) fn encode_rows<'a>(
    columns: &[Column],
    records: impl Iterator<Item = &'a [u8]>,
) -> EncodedRows {
    let mut out = EncodedRows::default();
    let mut buffer = BytesMut::with_capacity(PART_BYTES + PART_BYTES / 4);
    for (index, record) in records.enumerate() {
        let start = buffer.len();
        match encode_row(columns, record, &mut buffer) {
            Ok(()) => out.rows.push(RowSpan {
                part: out.parts.len(),
                start,
                end: buffer.len(),
                record: index as u64,
            }),
            Err(reason) => {
                buffer.truncate(start);
                out.rejected.push((index, reason));
            }
        }
        if buffer.len() >= PART_BYTES {
            out.parts.push(buffer.split().freeze());
        }
    }
    if !buffer.is_empty() {
        out.parts.push(buffer.freeze());
    }
    out
}

/// A record's top-level fields, with keys borrowed from the record unless one holds an
/// escape sequence.
enum Fields<'a> {
    Borrowed(HashMap<&'a str, &'a RawValue>),
    Owned(HashMap<String, &'a RawValue>),
}

impl<'a> Fields<'a> {
    fn parse(record: &'a [u8]) -> Result<Self, RowError> {
        serde_json::from_slice(record)
            .map(Fields::Borrowed)
            .or_else(|_| serde_json::from_slice(record).map(Fields::Owned))
            .map_err(|e| RowError::NotJson(format!("the record is not a JSON object: {e}")))
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        match self {
            Fields::Borrowed(fields) => fields.get(key).copied(),
            Fields::Owned(fields) => fields.get(key).copied(),
        }
    }

    /// The raw value at `path`, if the record has one.
    fn lookup(&self, path: &[String]) -> Option<&'a RawValue> {
        let (first, rest) = path.split_first()?;
        let mut value = self.get(first)?;
        for key in rest {
            value = Fields::parse(value.get().as_bytes()).ok()?.get(key)?;
        }
        Some(value)
    }
}

/// Appends one row: field count, then each field's length and bytes (-1 for NULL).
fn encode_row(columns: &[Column], record: &[u8], row: &mut BytesMut) -> Result<(), RowError> {
    crate::json::check_record(record)
        .map_err(|e| RowError::NotJson(format!("the record is not valid JSON: {e}")))?;
    let fields = Fields::parse(record)?;
    row.put_i16(columns.len() as i16);
    for column in columns {
        let computed;
        let raw = match &column.source {
            Source::Record => {
                Some(std::str::from_utf8(record).map_err(|e| RowError::NotJson(e.to_string()))?)
            }
            Source::Path(path) => fields.lookup(path).map(RawValue::get),
            Source::Jq(filter) => {
                computed = filter.first_output(record).map_err(|reason| {
                    RowError::InvalidValue(format!("column '{}': {reason}", column.name))
                })?;
                computed.as_deref()
            }
        };
        encode_field(column, raw, row).map_err(RowError::InvalidValue)?;
    }
    Ok(())
}

/// Appends one field: its length, then its bytes; the error names the column.
fn encode_field(column: &Column, raw: Option<&str>, row: &mut BytesMut) -> Result<(), String> {
    let value = column
        .ty
        .convert(raw)
        .map_err(|reason| format!("column '{}': {reason}", column.name))?;
    let at = row.len();
    row.put_i32(0);
    let len = match value.to_sql(&column.pg_type, row) {
        Ok(IsNull::No) => (row.len() - at - 4) as i32,
        Ok(IsNull::Yes) if column.not_null => {
            return Err(format!(
                "column '{}' is NOT NULL but the record has no value for it",
                column.name
            ));
        }
        Ok(IsNull::Yes) => -1,
        Err(error) => return Err(format!("column '{}': {error}", column.name)),
    };
    row[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
