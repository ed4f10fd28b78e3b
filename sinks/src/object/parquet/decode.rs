//! arrow-json decoders for what Hydrant reads differently from arrow-json's defaults:
//! object keys matched to fields OpenX-style (ignoring case, mapped, dots as
//! underscores), timestamps from RFC 3339 strings or epoch numbers, binary as base64 —
//! and, at the top level, per-record errors instead of one error for the whole batch.
//!
//! The top-level decoder is where a bad record is singled out: when a column fails to
//! decode, each row is decoded alone to find the ones at fault, which are then decoded as
//! nulls and reported (row, reason) through [`RowErrors`]; the caller removes those rows.

use std::sync::{Arc, Mutex};

use arrow_array::builder::BinaryBuilder;
use arrow_array::{ArrayRef, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray};
use arrow_buffer::NullBuffer;
use arrow_json::reader::{ArrayDecoder, DecoderContext, DecoderFactory, Tape, TapeElement};
use arrow_schema::{ArrowError, DataType, FieldRef, Fields, TimeUnit};
use base64::Engine;
use chrono::Utc;

use super::EpochUnit;
use crate::object::framing::ConversionError;

/// Rows the top-level decoder rejected, by row number within the decode call, with why.
pub(super) type RowErrors = Arc<Mutex<Vec<(usize, ConversionError)>>>;

/// How JSON keys find their fields.
#[derive(Debug, Clone)]
pub(super) struct KeyRules {
    /// Compare names ignoring case.
    pub case_insensitive: bool,
    /// Read key `a.b` as `a_b`.
    pub dots_to_underscores: bool,
    /// Top-level column name → JSON key.
    pub mappings: Vec<(String, String)>,
}

impl KeyRules {
    /// `key` as compared with folded names, or `None` when folding leaves it unchanged.
    fn fold(&self, key: &str) -> Option<String> {
        let needs_case = self.case_insensitive && key.chars().any(|c| c.is_uppercase());
        let needs_dots = self.dots_to_underscores && key.contains('.');
        if !needs_case && !needs_dots {
            return None;
        }
        let mut folded = if needs_case {
            key.to_lowercase()
        } else {
            key.to_string()
        };
        if needs_dots {
            folded = folded.replace('.', "_");
        }
        Some(folded)
    }
}

/// Builds Hydrant's decoders; the declared non-nullable top-level columns are enforced by
/// the top-level decoder (the decoding schema itself is all-nullable, so that a bad row
/// can be decoded as nulls and removed).
#[derive(Debug)]
pub(super) struct HydrantDecoders {
    pub keys: Arc<KeyRules>,
    pub required: Arc<[bool]>,
    pub epoch: EpochUnit,
    pub row_errors: RowErrors,
}

impl DecoderFactory for HydrantDecoders {
    fn make_default_decoder(
        &self,
        ctx: &DecoderContext,
        field: &FieldRef,
        is_nullable: bool,
    ) -> Result<Option<Box<dyn ArrayDecoder>>, ArrowError> {
        Ok(match field.data_type() {
            DataType::Struct(fields) => {
                let top_level = field.name().is_empty() && !is_nullable;
                let names = FieldNames::new(fields, &self.keys, top_level);
                let children = fields
                    .iter()
                    .map(|f| ctx.make_decoder(f, true))
                    .collect::<Result<Vec<_>, _>>()?;
                let decoder = StructDecoder {
                    fields: fields.clone(),
                    names,
                    children,
                    positions: Vec::new(),
                };
                Some(if top_level {
                    Box::new(RecordDecoder {
                        inner: decoder,
                        required: Arc::clone(&self.required),
                        row_errors: Arc::clone(&self.row_errors),
                    })
                } else {
                    Box::new(decoder)
                })
            }
            DataType::Timestamp(unit, zone) => Some(Box::new(TimestampDecoder {
                unit: *unit,
                zone: zone.clone(),
                epoch: self.epoch,
            })),
            DataType::Binary => Some(Box::new(Base64Decoder)),
            _ => None,
        })
    }
}

/// Field lookup by JSON key: exact names first, then folded ones.
#[derive(Debug)]
struct FieldNames {
    names: Vec<(String, usize)>,
    keys: Arc<KeyRules>,
}

impl FieldNames {
    fn new(fields: &Fields, keys: &Arc<KeyRules>, top_level: bool) -> Self {
        let mut names = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            names.push((field.name().clone(), i));
            if top_level {
                for (column, key) in &keys.mappings {
                    if column == field.name() {
                        names.push((key.clone(), i));
                    }
                }
            }
        }
        let folded: Vec<_> = names
            .iter()
            .filter_map(|(name, i)| keys.fold(name).map(|f| (f, *i)))
            .collect();
        names.extend(folded);
        Self {
            names,
            keys: Arc::clone(keys),
        }
    }

    /// The field `key` names. `hint` is where the previous key of the object matched:
    /// records usually list their keys in the same order, so the search starts just after
    /// it and is one comparison in the common case.
    fn find(&self, key: &str, hint: &mut usize) -> Option<usize> {
        let len = self.names.len();
        let exact = |key: &str, hint: &mut usize| {
            let start = *hint;
            let at = (0..len)
                .map(|i| (start + i) % len)
                .find(|&at| self.names[at].0 == key)?;
            *hint = at + 1;
            Some(self.names[at].1)
        };
        exact(key, hint).or_else(|| self.keys.fold(key).and_then(|folded| exact(&folded, hint)))
    }
}

/// A struct (JSON object) whose keys are matched by [`FieldNames`].
struct StructDecoder {
    fields: Fields,
    names: FieldNames,
    children: Vec<Box<dyn ArrayDecoder>>,
    /// Tape position of each field's value per row (0, the tape's null, when absent).
    positions: Vec<Vec<u32>>,
}

impl StructDecoder {
    /// Fills `positions` for `pos`; a row that is JSON `null` (when `nullable`) gets all
    /// nulls, and anything else that is not an object is an error for the row.
    fn locate(
        &mut self,
        tape: &Tape<'_>,
        pos: &[u32],
        mut not_object: impl FnMut(usize, u32) -> Result<(), ArrowError>,
    ) -> Result<Vec<bool>, ArrowError> {
        self.positions.resize_with(self.fields.len(), Vec::new);
        for column in &mut self.positions {
            column.clear();
            column.resize(pos.len(), 0);
        }
        let mut valid = vec![true; pos.len()];
        for (row, &p) in pos.iter().enumerate() {
            let end = match tape.get(p) {
                TapeElement::StartObject(end) => end,
                TapeElement::Null => {
                    valid[row] = false;
                    continue;
                }
                _ => {
                    valid[row] = false;
                    not_object(row, p)?;
                    continue;
                }
            };
            let mut cur = p + 1;
            let mut hint = 0;
            while cur < end {
                let TapeElement::String(key) = tape.get(cur) else {
                    return Err(tape.error(cur, "field name"));
                };
                if let Some(field) = self.names.find(tape.get_string(key), &mut hint) {
                    self.positions[field][row] = cur + 1;
                }
                cur = tape.next(cur + 1, "field value")?;
            }
        }
        Ok(valid)
    }

    fn decode_child(&mut self, tape: &Tape<'_>, field: usize) -> Result<ArrayRef, ArrowError> {
        self.children[field].decode(tape, &self.positions[field])
    }

    fn assemble(
        &self,
        columns: Vec<ArrayRef>,
        valid: Option<Vec<bool>>,
        rows: usize,
    ) -> Result<ArrayRef, ArrowError> {
        let nulls = valid.map(NullBuffer::from);
        let array = if self.fields.is_empty() {
            StructArray::new_empty_fields(rows, nulls)
        } else {
            StructArray::try_new(self.fields.clone(), columns, nulls)?
        };
        Ok(Arc::new(array))
    }
}

impl ArrayDecoder for StructDecoder {
    fn decode(&mut self, tape: &Tape<'_>, pos: &[u32]) -> Result<ArrayRef, ArrowError> {
        let valid = self.locate(tape, pos, |_, p| Err(tape.error(p, "an object")))?;
        let mut columns = Vec::with_capacity(self.fields.len());
        for field in 0..self.fields.len() {
            let column = self
                .decode_child(tape, field)
                .map_err(|error| named(error, "field", self.fields[field].name()))?;
            columns.push(column);
        }
        let any_null = valid.iter().any(|v| !v);
        self.assemble(columns, any_null.then_some(valid), pos.len())
    }
}

/// The top level: one row per record, bad records reported instead of failing the batch.
struct RecordDecoder {
    inner: StructDecoder,
    required: Arc<[bool]>,
    row_errors: RowErrors,
}

impl RecordDecoder {
    /// Marks `row` bad: its values are decoded as nulls from now on.
    fn reject(&mut self, bad: &mut [Option<ConversionError>], row: usize, error: ConversionError) {
        if bad[row].is_none() {
            bad[row] = Some(error);
            for column in &mut self.inner.positions {
                column[row] = 0;
            }
        }
    }
}

impl ArrayDecoder for RecordDecoder {
    fn decode(&mut self, tape: &Tape<'_>, pos: &[u32]) -> Result<ArrayRef, ArrowError> {
        let mut bad: Vec<Option<ConversionError>> = vec![None; pos.len()];
        let mut not_objects = Vec::new();
        self.inner.locate(tape, pos, |row, _| {
            not_objects.push(row);
            Ok(())
        })?;
        for row in not_objects {
            self.reject(
                &mut bad,
                row,
                ConversionError::parse("the record is not a JSON object"),
            );
        }
        for row in 0..pos.len() {
            if tape.get(pos[row]) == TapeElement::Null {
                self.reject(
                    &mut bad,
                    row,
                    ConversionError::parse("the record is JSON null, not an object"),
                );
                continue;
            }
            for field in 0..self.inner.fields.len() {
                if !self.required[field] || bad[row].is_some() {
                    continue;
                }
                let at = self.inner.positions[field][row];
                if at == 0 || tape.get(at) == TapeElement::Null {
                    let name = self.inner.fields[field].name().clone();
                    self.reject(
                        &mut bad,
                        row,
                        ConversionError::malformed(format!(
                            "column '{name}' is not nullable but the record has no value for it"
                        )),
                    );
                }
            }
        }
        let mut columns = Vec::with_capacity(self.inner.fields.len());
        for field in 0..self.inner.fields.len() {
            let column = match self.inner.decode_child(tape, field) {
                Ok(column) => column,
                Err(_) => {
                    // Find the rows at fault one by one, then decode the rest together.
                    let name = self.inner.fields[field].name().clone();
                    for row in 0..pos.len() {
                        let at = self.inner.positions[field][row];
                        if at == 0 {
                            continue;
                        }
                        if let Err(error) = self.inner.children[field].decode(tape, &[at]) {
                            let message = named_message(error, "column", &name);
                            self.reject(&mut bad, row, ConversionError::malformed(message));
                        }
                    }
                    self.inner
                        .decode_child(tape, field)
                        .map_err(|error| named(error, "column", &name))?
                }
            };
            columns.push(column);
        }
        let mut errors = self
            .row_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        errors.extend(
            bad.into_iter()
                .enumerate()
                .filter_map(|(row, error)| error.map(|e| (row, e))),
        );
        self.inner.assemble(columns, None, pos.len())
    }
}

/// Prefixes a decoding error with the column or field it happened in.
fn named(error: ArrowError, what: &str, name: &str) -> ArrowError {
    ArrowError::JsonError(named_message(error, what, name))
}

/// [`named`], as the message alone.
fn named_message(error: ArrowError, what: &str, name: &str) -> String {
    let message = match error {
        ArrowError::JsonError(message) => message,
        other => other.to_string(),
    };
    format!("{what} '{name}': {message}")
}

/// Timestamps from RFC 3339 (or `YYYY-MM-DD hh:mm:ss`) strings, or epoch numbers.
struct TimestampDecoder {
    unit: TimeUnit,
    zone: Option<Arc<str>>,
    epoch: EpochUnit,
}

impl TimestampDecoder {
    fn value(&self, tape: &Tape<'_>, p: u32) -> Result<Option<i64>, ArrowError> {
        let per_second: i64 = match self.unit {
            TimeUnit::Microsecond => 1_000_000,
            _ => 1_000,
        };
        let from_epoch = |text: &str| -> Option<i64> {
            if let Ok(whole) = text.parse::<i64>() {
                let seconds = match self.epoch {
                    EpochUnit::Seconds => true,
                    EpochUnit::Milliseconds => false,
                    EpochUnit::Auto => whole.unsigned_abs() < 100_000_000_000,
                };
                return if seconds {
                    whole.checked_mul(per_second)
                } else {
                    whole.checked_mul(per_second / 1_000)
                };
            }
            let number: f64 = text.parse().ok()?;
            let seconds = match self.epoch {
                EpochUnit::Seconds => true,
                EpochUnit::Milliseconds => false,
                EpochUnit::Auto => number.abs() < 1e11,
            };
            let value = if seconds {
                number * per_second as f64
            } else {
                number * (per_second / 1_000) as f64
            };
            (value.is_finite() && value.abs() < 9.2e18).then(|| value.round() as i64)
        };
        match tape.get(p) {
            TapeElement::Null => Ok(None),
            TapeElement::Number(n) => {
                let text = tape.get_string(n);
                from_epoch(text).map(Some).ok_or_else(|| {
                    ArrowError::JsonError(format!("{text} is out of range for a timestamp"))
                })
            }
            TapeElement::String(s) => {
                let text = tape.get_string(s);
                if let Ok(at) = arrow_cast::parse::string_to_datetime(&Utc, text) {
                    let value = match self.unit {
                        TimeUnit::Microsecond => Some(at.timestamp_micros()),
                        _ => Some(at.timestamp_millis()),
                    };
                    return Ok(value);
                }
                from_epoch(text).map(Some).ok_or_else(|| {
                    ArrowError::JsonError(format!(
                        "\"{text}\" is not a timestamp (expected RFC 3339, e.g. 2024-05-01T12:00:00Z, or epoch seconds or milliseconds)"
                    ))
                })
            }
            _ => Err(tape.error(p, "a timestamp (RFC 3339 string or epoch number)")),
        }
    }
}

impl ArrayDecoder for TimestampDecoder {
    fn decode(&mut self, tape: &Tape<'_>, pos: &[u32]) -> Result<ArrayRef, ArrowError> {
        let values = pos
            .iter()
            .map(|&p| self.value(tape, p))
            .collect::<Result<Vec<_>, _>>()?;
        let zone = self.zone.clone();
        Ok(match self.unit {
            TimeUnit::Microsecond => {
                Arc::new(TimestampMicrosecondArray::from(values).with_timezone_opt(zone))
            }
            _ => Arc::new(TimestampMillisecondArray::from(values).with_timezone_opt(zone)),
        })
    }
}

/// Binary columns from base64 strings (standard alphabet, padding optional).
struct Base64Decoder;

impl ArrayDecoder for Base64Decoder {
    fn decode(&mut self, tape: &Tape<'_>, pos: &[u32]) -> Result<ArrayRef, ArrowError> {
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::general_purpose::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let mut builder = BinaryBuilder::with_capacity(pos.len(), 0);
        let mut bytes = Vec::new();
        for &p in pos {
            match tape.get(p) {
                TapeElement::Null => builder.append_null(),
                TapeElement::String(s) => {
                    bytes.clear();
                    engine
                        .decode_vec(tape.get_string(s), &mut bytes)
                        .map_err(|error| ArrowError::JsonError(format!("not base64 ({error})")))?;
                    builder.append_value(&bytes);
                }
                _ => return Err(tape.error(p, "a base64 string")),
            }
        }
        Ok(Arc::new(builder.finish()))
    }
}
