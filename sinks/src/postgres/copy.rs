//! Rows encoded in PostgreSQL's binary COPY format, straight from the JSON records: each
//! record is split into its top-level fields without building a JSON tree, each column's
//! value is converted and written in the column's binary format, and `json`/`jsonb`
//! columns take the field's JSON text as it is. CPU-heavy: run it off the async reactor.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use tokio_postgres::types::{IsNull, ToSql};

use super::value::{ColumnType, Value};
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
    let mut row = BytesMut::new();
    for (index, record) in records.enumerate() {
        row.clear();
        match encode_row(columns, record, &mut row) {
            Ok(()) => {
                out.rows.push(RowSpan {
                    part: out.parts.len(),
                    start: buffer.len(),
                    end: buffer.len() + row.len(),
                    record: index as u64,
                });
                buffer.put_slice(&row);
            }
            Err(reason) => out.rejected.push((index, reason)),
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

/// One row: field count, then each field's length and bytes (-1 for NULL).
fn encode_row(columns: &[Column], record: &[u8], row: &mut BytesMut) -> Result<(), RowError> {
    // Keys borrow from the record unless one holds an escape sequence.
    let fields: HashMap<Cow<'_, str>, &RawValue> =
        match serde_json::from_slice::<HashMap<&str, &RawValue>>(record) {
            Ok(fields) => fields
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), v))
                .collect(),
            Err(_) => serde_json::from_slice::<HashMap<String, &RawValue>>(record)
                .map_err(|e| RowError::NotJson(format!("the record is not a JSON object: {e}")))?
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), v))
                .collect(),
        };
    row.put_i16(columns.len() as i16);
    for column in columns {
        let computed;
        let raw = match &column.source {
            Source::Record => {
                Some(std::str::from_utf8(record).map_err(|e| RowError::NotJson(e.to_string()))?)
            }
            Source::Path(path) => {
                let (first, rest) = path.split_first().expect("paths have a first key");
                lookup(&fields, first, rest).map(RawValue::get)
            }
            Source::Jq(filter) => {
                computed = filter.first_output(record).map_err(|reason| {
                    RowError::InvalidValue(format!("column '{}': {reason}", column.name))
                })?;
                computed.as_deref()
            }
        };
        let raw = raw.filter(|text| *text != "null");
        encode_field(column, raw, row).map_err(RowError::InvalidValue)?;
    }
    Ok(())
}

/// The raw value at `first.rest...`, if the record has one.
fn lookup<'a>(
    fields: &HashMap<Cow<'_, str>, &'a RawValue>,
    first: &str,
    rest: &[String],
) -> Option<&'a RawValue> {
    let mut value = *fields.get(first)?;
    for key in rest {
        let nested: HashMap<String, &'a RawValue> = serde_json::from_str(value.get()).ok()?;
        value = *nested.get(key)?;
    }
    Some(value)
}

/// Writes one field; the error names the column.
fn encode_field(column: &Column, raw: Option<&str>, row: &mut BytesMut) -> Result<(), String> {
    let missing = || {
        format!(
            "column '{}' is NOT NULL but the record has no value for it",
            column.name
        )
    };
    let Some(raw) = raw else {
        if column.not_null {
            return Err(missing());
        }
        row.put_i32(-1);
        return Ok(());
    };
    let named = |reason: String| format!("column '{}': {reason}", column.name);
    match column.ty {
        // The common types are written straight from the JSON text.
        ColumnType::Text if raw.starts_with('"') => {
            let text: Cow<'_, str> = match serde_json::from_str::<&str>(raw) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => Cow::Owned(
                    serde_json::from_str::<String>(raw).map_err(|e| named(e.to_string()))?,
                ),
            };
            if text.contains('\0') {
                return Err(named("text cannot contain NUL characters".into()));
            }
            row.put_i32(text.len() as i32);
            row.put_slice(text.as_bytes());
        }
        ColumnType::Int8 if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            let value: i64 = raw
                .parse()
                .map_err(|_| named(format!("{raw} is not an integer within bigint range")))?;
            row.put_i32(8);
            row.put_i64(value);
        }
        ColumnType::Int4 if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            let value: i32 = raw
                .parse()
                .map_err(|_| named(format!("{raw} is out of range (-2147483648 to 2147483647)")))?;
            row.put_i32(4);
            row.put_i32(value);
        }
        ColumnType::Float8
            if raw
                .bytes()
                .all(|b| b.is_ascii_digit() || b"-+.eE".contains(&b)) =>
        {
            let value: f64 = raw
                .parse()
                .map_err(|_| named(format!("{raw} is not a number")))?;
            row.put_i32(8);
            row.put_f64(value);
        }
        ColumnType::Jsonb => {
            row.put_i32(raw.len() as i32 + 1);
            row.put_u8(1);
            row.put_slice(raw.as_bytes());
        }
        ColumnType::Json => {
            row.put_i32(raw.len() as i32);
            row.put_slice(raw.as_bytes());
        }
        ty => {
            let json: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| named(e.to_string()))?;
            let value = ty.convert(Some(&json)).map_err(named)?;
            let at = row.len();
            row.put_i32(0);
            match value.to_sql(&column.pg_type, row) {
                Ok(IsNull::No) => {
                    let len = (row.len() - at - 4) as i32;
                    row[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                Ok(IsNull::Yes) => {
                    row[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                }
                Err(error) => return Err(named(error.to_string())),
            }
            if matches!(value, Value::Null) && column.not_null {
                return Err(missing());
            }
        }
    }
    Ok(())
}
