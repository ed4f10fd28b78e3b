//! The one definition of a valid JSON record, applied by every format and destination that
//! takes JSON (NDJSON objects, Parquet rows, table rows, search documents), so that a record
//! gets the same verdict wherever it goes.
//!
//! A valid record is exactly one JSON value (RFC 8259: no trailing or doubled commas, no
//! `NaN`), surrounded by whitespace at most; in UTF-8; whose escapes are Unicode scalar values
//! (no lone surrogate); with no key twice in one object; nested at most 128 levels; with
//! numbers a 64-bit float can hold. Checked with serde_json's strict parser, without building
//! the value: strings are borrowed, keys compared in place.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

/// Why a record is not valid JSON, with where (serde_json's line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJson(String);

/// Checks that `record` is one valid JSON value (see the module documentation).
///
/// ```
/// use hydrant_sinks::json::check_record;
/// assert!(check_record(br#"{"a": [1, 2.5, "x"]}"#).is_ok());
/// assert!(check_record(br#"{"a": 1,}"#).is_err());
/// assert!(check_record(br#"{"a": 1, "a": 2}"#).is_err());
/// ```
pub fn check_record(record: &[u8]) -> Result<(), InvalidJson> {
    let mut deserializer = serde_json::Deserializer::from_slice(record);
    Value
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|error| InvalidJson(error.to_string()))
}

/// Checks one value.
#[derive(Clone, Copy)]
struct Value;

impl<'de> DeserializeSeed<'de> for Value {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: SmallVec<[Key<'de>; 16]> = SmallVec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if keys.iter().any(|seen| seen.as_str() == key.as_str()) {
                return Err(A::Error::custom(format_args!(
                    "the key {:?} appears twice in one object",
                    key.as_str()
                )));
            }
            keys.push(key);
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// An object key: borrowed from the record unless it holds escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(key) => key,
            Key::Owned(key) => key,
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(key.to_string()))
    }
}

/// How the message of a record that is not valid JSON begins, in every format.
pub const NOT_VALID_JSON: &str = "the record is not valid JSON: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_records_pass() {
        for record in [
            &br#"{"a": 1, "b": [true, false, null, -1.5e3, "x\n\u00e9\ud83d\ude00"], "c": {}}"#[..],
            b"  42 \n",
            b"\"text\"",
            b"[]",
            br#"{"a\u0062": 1, "ab ": 2}"#,
            "{\"caf\u{e9}\": \"\u{1f600}\"}".as_bytes(),
            b"18446744073709551617",
        ] {
            assert_eq!(
                check_record(record),
                Ok(()),
                "{}",
                String::from_utf8_lossy(record)
            );
        }
    }

    #[test]
    fn every_kind_of_malformed_record_is_refused_with_where() {
        let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        let cases: Vec<(&[u8], &str)> = vec![
            (br#"{"id": 7, "uid": "x", }"#, "trailing comma"),
            (br#"{"id": 8 "uid": "x"}"#, "expected `,` or `}`"),
            (br#"{"id": 9,, "uid": "x"}"#, "key must be a string"),
            (b"[1,2,]", "trailing comma"),
            (b", ,", "expected value"),
            (b"{\"a\":\"\xff\"}", "invalid unicode code point"),
            (br#"{"a":"\ud800"}"#, "unexpected end of hex escape"),
            (br#"{"a":"\udc00"}"#, "lone leading surrogate"),
            (br#"{"a":NaN}"#, "expected value"),
            (br#"{"a":1,"a":2}"#, "the key \"a\" appears twice"),
            (br#"{"a":1,"\u0061":2}"#, "the key \"a\" appears twice"),
            (br#"{"a":{"b":1,"b":1}}"#, "the key \"b\" appears twice"),
            (deep_array.as_bytes(), "recursion limit exceeded"),
            (deep_object.as_bytes(), "recursion limit exceeded"),
            (b"", "EOF while parsing a value"),
            (br#"{"a":1} {"b":2}"#, "trailing characters"),
            (br#"{"a":1e400}"#, "number out of range"),
        ];
        for (record, expected) in cases {
            let error = check_record(record).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains("column"),
                "{}: {error}",
                String::from_utf8_lossy(&record[..record.len().min(40)])
            );
        }
    }
}
