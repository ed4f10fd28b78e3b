//! JSON values converted to the PostgreSQL column types Hydrant loads, checked before they
//! are sent so that a value that does not fit sends only its record to the error output.

use std::borrow::Cow;
use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A column type values can be loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `text`, `varchar`, `bpchar`.
    Text,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `numeric`.
    Numeric,
    /// `boolean`.
    Bool,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `timestamp without time zone` (UTC wall-clock time).
    Timestamp,
    /// `date`.
    Date,
    /// `uuid`.
    Uuid,
    /// `jsonb`.
    Jsonb,
    /// `json`.
    Json,
}

impl ColumnType {
    /// The loadable type of a column of PostgreSQL type `ty`, if Hydrant can load it.
    pub fn of(ty: &Type) -> Option<Self> {
        Some(match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ColumnType::Text,
            Type::INT2 => ColumnType::Int2,
            Type::INT4 => ColumnType::Int4,
            Type::INT8 => ColumnType::Int8,
            Type::FLOAT4 => ColumnType::Float4,
            Type::FLOAT8 => ColumnType::Float8,
            Type::NUMERIC => ColumnType::Numeric,
            Type::BOOL => ColumnType::Bool,
            Type::TIMESTAMPTZ => ColumnType::TimestampTz,
            Type::TIMESTAMP => ColumnType::Timestamp,
            Type::DATE => ColumnType::Date,
            Type::UUID => ColumnType::Uuid,
            Type::JSONB => ColumnType::Jsonb,
            Type::JSON => ColumnType::Json,
            _ => return None,
        })
    }

    /// The name a configuration uses for this type (`int8`, `timestamptz`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "text" | "varchar" => ColumnType::Text,
            "int2" | "smallint" => ColumnType::Int2,
            "int4" | "int" | "integer" => ColumnType::Int4,
            "int8" | "bigint" => ColumnType::Int8,
            "float4" | "real" => ColumnType::Float4,
            "float8" | "double precision" => ColumnType::Float8,
            "numeric" | "decimal" => ColumnType::Numeric,
            "bool" | "boolean" => ColumnType::Bool,
            "timestamptz" => ColumnType::TimestampTz,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            "uuid" => ColumnType::Uuid,
            "jsonb" => ColumnType::Jsonb,
            "json" => ColumnType::Json,
            _ => return None,
        })
    }

    /// Converts the JSON text of a value (`None` when the record has no such field) to
    /// this type, borrowing from the text where it can.
    pub fn convert(self, raw: Option<&str>) -> Result<Value<'_>, String> {
        let json = match raw.map(Json::parse).transpose()? {
            None | Some(Json::Null) => return Ok(Value::Null),
            Some(json) => json,
        };
        let raw = raw.unwrap_or_default();
        let integer = |min: i64, max: i64| -> Result<i64, String> {
            let value = match &json {
                Json::Number(n) => n.parse().ok(),
                Json::Str(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("{raw} is not an integer"))?;
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(format!("{value} is out of range ({min} to {max})"))
            }
        };
        let float = || -> Result<f64, String> {
            match &json {
                Json::Number(n) => n.parse().ok(),
                Json::Str(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("{raw} is not a number"))
        };
        Ok(match self {
            ColumnType::Text => {
                // Anything but a string is kept as its JSON text.
                let text = match json {
                    Json::Str(s) => s,
                    _ => Cow::Borrowed(raw),
                };
                if text.contains('\0') {
                    return Err("text cannot contain NUL characters".into());
                }
                Value::Text(text)
            }
            ColumnType::Int2 => Value::Int2(integer(i16::MIN.into(), i16::MAX.into())? as i16),
            ColumnType::Int4 => Value::Int4(integer(i32::MIN.into(), i32::MAX.into())? as i32),
            ColumnType::Int8 => Value::Int8(integer(i64::MIN, i64::MAX)?),
            ColumnType::Float4 => Value::Float4(float()? as f32),
            ColumnType::Float8 => Value::Float8(float()?),
            ColumnType::Numeric => match &json {
                Json::Number(n) => Value::Numeric(encode_numeric(n)?),
                Json::Str(s) => Value::Numeric(encode_numeric(s.trim())?),
                _ => return Err(format!("{raw} is not a number")),
            },
            ColumnType::Bool => match &json {
                Json::Bool(b) => Value::Bool(*b),
                Json::Str(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
                Json::Str(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
                _ => return Err(format!("{raw} is not a boolean")),
            },
            ColumnType::TimestampTz => Value::TimestampTz(timestamp(&json, raw)?),
            ColumnType::Timestamp => Value::Timestamp(timestamp(&json, raw)?.naive_utc()),
            ColumnType::Date => match &json {
                Json::Str(s) => Value::Date(
                    NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                        .map_err(|_| format!("\"{s}\" is not a date (expected YYYY-MM-DD)"))?,
                ),
                _ => return Err(format!("{raw} is not a date (expected \"YYYY-MM-DD\")")),
            },
            ColumnType::Uuid => match &json {
                Json::Str(s) => Value::Uuid(
                    uuid::Uuid::parse_str(s).map_err(|_| format!("\"{s}\" is not a UUID"))?,
                ),
                _ => return Err(format!("{raw} is not a UUID")),
            },
            ColumnType::Jsonb | ColumnType::Json => Value::Json(raw),
        })
    }
}

/// A JSON value's text, told apart by its first byte; only strings are decoded.
enum Json<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    /// A string, borrowed unless it holds escape sequences.
    Str(Cow<'a, str>),
    /// An object or array.
    Composite,
}

impl<'a> Json<'a> {
    fn parse(raw: &'a str) -> Result<Self, String> {
        Ok(match raw.as_bytes().first() {
            Some(b'"') => Json::Str(match serde_json::from_str::<&str>(raw) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => {
                    Cow::Owned(serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?)
                }
            }),
            Some(b'n') => Json::Null,
            Some(b't') => Json::Bool(true),
            Some(b'f') => Json::Bool(false),
            Some(b'{' | b'[') => Json::Composite,
            _ => Json::Number(raw),
        })
    }
}

/// Timestamps from RFC 3339 strings or epoch numbers (below 10^11 seconds, else ms).
fn timestamp(json: &Json<'_>, raw: &str) -> Result<DateTime<Utc>, String> {
    let from_epoch = |number: f64| {
        let ms = if number.abs() < 1e11 {
            number * 1000.0
        } else {
            number
        };
        DateTime::<Utc>::from_timestamp_millis(ms.round() as i64)
    };
    match json {
        Json::Number(n) => n.parse().ok().and_then(from_epoch),
        Json::Str(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc())
            }),
        _ => None,
    }
    .ok_or_else(|| {
        format!("{raw} is not a timestamp (expected RFC 3339, e.g. 2024-05-01T12:00:00Z, or epoch seconds or milliseconds)")
    })
}

/// A value ready to be sent, in the column's binary format.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// Text.
    Text(Cow<'a, str>),
    /// smallint.
    Int2(i16),
    /// integer.
    Int4(i32),
    /// bigint.
    Int8(i64),
    /// real.
    Float4(f32),
    /// double precision.
    Float8(f64),
    /// numeric, already in PostgreSQL's binary format.
    Numeric(Vec<u8>),
    /// boolean.
    Bool(bool),
    /// timestamptz.
    TimestampTz(DateTime<Utc>),
    /// timestamp.
    Timestamp(NaiveDateTime),
    /// date.
    Date(NaiveDate),
    /// uuid.
    Uuid(uuid::Uuid),
    /// json or jsonb, as JSON text.
    Json(&'a str),
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(v) => v.as_ref().to_sql(ty, out),
            Value::Int2(v) => v.to_sql(ty, out),
            Value::Int4(v) => v.to_sql(ty, out),
            Value::Int8(v) => v.to_sql(ty, out),
            Value::Float4(v) => v.to_sql(ty, out),
            Value::Float8(v) => v.to_sql(ty, out),
            Value::Numeric(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            Value::Bool(v) => v.to_sql(ty, out),
            Value::TimestampTz(v) => v.to_sql(ty, out),
            Value::Timestamp(v) => v.to_sql(ty, out),
            Value::Date(v) => v.to_sql(ty, out),
            Value::Uuid(v) => v.to_sql(ty, out),
            Value::Json(text) => {
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each value is converted for its column's type before it is sent.
        true
    }

    to_sql_checked!();
}

/// A decimal string (`-12.50`, `1e3`) in PostgreSQL's binary `numeric` format: digit
/// count, weight, sign and display scale, then base-10000 digits.
pub fn encode_numeric(text: &str) -> Result<Vec<u8>, String> {
    let invalid = || format!("\"{text}\" is not a decimal number");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            &unsigned[..at],
            unsigned[at + 1..].parse::<i32>().map_err(|_| invalid())?,
        ),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || exponent.abs() > 1000
    {
        return Err(invalid());
    }
    let mut digits: String = format!("{int}{frac}");
    let mut point = int.len() as i32 + exponent;
    if point < 0 {
        digits = format!("{}{digits}", "0".repeat((-point) as usize));
        point = 0;
    }
    if point as usize > digits.len() {
        digits.push_str(&"0".repeat(point as usize - digits.len()));
    }
    let (int, frac) = digits.split_at(point as usize);
    let dscale = frac.len();
    let int = int.trim_start_matches('0');
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let mut groups: Vec<i16> = int
        .as_bytes()
        .chunks(4)
        .chain(frac.as_bytes().chunks(4))
        .map(|g| std::str::from_utf8(g).unwrap().parse().unwrap())
        .collect();
    let mut weight = (int.len() / 4) as i32 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    if weight > i16::MAX as i32 || dscale > 0x3FFF {
        return Err(format!("\"{text}\" is out of range for numeric"));
    }
    let mut out = Vec::with_capacity(8 + groups.len() * 2);
    out.extend((groups.len() as i16).to_be_bytes());
    out.extend((weight as i16).to_be_bytes());
    out.extend(
        if negative && !groups.is_empty() {
            0x4000u16
        } else {
            0
        }
        .to_be_bytes(),
    );
    out.extend((dscale as u16).to_be_bytes());
    for group in groups {
        out.extend(group.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numeric(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let bytes = encode_numeric(text).unwrap();
        let word = |i: usize| [bytes[i], bytes[i + 1]];
        let digits = bytes[8..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        (
            i16::from_be_bytes(word(0)),
            i16::from_be_bytes(word(2)),
            u16::from_be_bytes(word(4)),
            u16::from_be_bytes(word(6)),
            digits,
        )
    }

    #[test]
    fn numerics_encode_as_postgres_does() {
        // Expected values from PostgreSQL's numeric_send for the same literals.
        assert_eq!(numeric("12345.678"), (3, 1, 0, 3, vec![1, 2345, 6780]));
        assert_eq!(numeric("-0.0001"), (1, -1, 0x4000, 4, vec![1]));
        assert_eq!(numeric("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(numeric("10000"), (1, 1, 0, 0, vec![1]));
        assert_eq!(numeric("1.5e2"), (1, 0, 0, 0, vec![150]));
        assert!(encode_numeric("1.2.3").is_err());
        assert!(encode_numeric("abc").is_err());
        assert!(encode_numeric("").is_err());
    }

    #[test]
    fn values_that_do_not_fit_say_why() {
        assert!(matches!(
            ColumnType::Int2.convert(Some(&json!(7).to_string())),
            Ok(Value::Int2(7))
        ));
        assert_eq!(
            ColumnType::Int2
                .convert(Some(&json!(70000).to_string()))
                .unwrap_err(),
            "70000 is out of range (-32768 to 32767)"
        );
        assert!(
            ColumnType::Int8
                .convert(Some(&json!(1.5).to_string()))
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(matches!(ColumnType::Int8.convert(None), Ok(Value::Null)));
        assert!(
            ColumnType::Uuid
                .convert(Some(&json!("nope").to_string()))
                .unwrap_err()
                .contains("not a UUID")
        );
        assert!(
            ColumnType::Bool
                .convert(Some(&json!(1).to_string()))
                .unwrap_err()
                .contains("not a boolean")
        );
        assert!(
            ColumnType::Date
                .convert(Some(&json!("2024-13-01").to_string()))
                .is_err()
        );
        assert!(
            ColumnType::Text
                .convert(Some(&json!("a\u{0}b").to_string()))
                .is_err()
        );
        let Value::TimestampTz(at) = ColumnType::TimestampTz
            .convert(Some(&json!(1714564800).to_string()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(at.to_rfc3339(), "2024-05-01T12:00:00+00:00");
        let object = json!({"a": 1}).to_string();
        let Value::Text(text) = ColumnType::Text.convert(Some(&object)).unwrap() else {
            panic!()
        };
        assert_eq!(text, r#"{"a":1}"#);
    }
}
