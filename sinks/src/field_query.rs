//! A partitioning query that only picks fields — `{service: .service, region: .meta.region}`
//! — evaluated by reading the record's JSON directly instead of running jq. Most queries
//! have this shape, and jq's parse of every whole record into its own values was the
//! partitioned path's largest cost after compression. Whatever this cannot decide exactly
//! as jq would (a value that is not a string, number or boolean, escapes in field names,
//! a record that is not a JSON object) is left to jq.

use std::collections::HashMap;

use serde_json::value::RawValue;

/// An object construction whose values are plain field paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldQuery {
    /// Each output key and the path it reads (later keys of the same name win, as in jq).
    fields: Vec<(String, Vec<String>)>,
}

/// What the record says about one output key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// The value's text, as jq writes it for a partition key.
    Text(String),
    /// The key is missing or null.
    Missing,
}

impl FieldQuery {
    /// The query, when `query` is `{key: .a.b, other: .c, shorthand}` (identifiers and
    /// simple quoted keys only); `None` for anything else.
    pub fn parse(query: &str) -> Option<Self> {
        let mut rest = query.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        while !rest.is_empty() {
            let (key, after) = match rest.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    let key = &quoted[..end];
                    if key.contains('\\') {
                        return None;
                    }
                    (key, &quoted[end + 1..])
                }
                None => identifier(rest)?,
            };
            let after = after.trim_start();
            let (path, after) = match after.strip_prefix(':') {
                Some(value) => path(value.trim_start())?,
                // `{service}` is `{service: .service}`; a quoted key needs a value.
                None if !rest.starts_with('"') => (vec![key.to_string()], after),
                None => return None,
            };
            fields.retain(|(name, _)| name != key);
            fields.push((key.to_string(), path));
            let after = after.trim_start();
            rest = match after.strip_prefix(',') {
                Some(more) => more.trim_start(),
                None if after.is_empty() => after,
                None => return None,
            };
        }
        (!fields.is_empty()).then_some(Self { fields })
    }

    /// The values of output keys `names` for `record`, in order; `None` when jq must
    /// decide (its answer may differ, or it fails).
    pub fn values<S: AsRef<str>>(&self, record: &[u8], names: &[S]) -> Option<Vec<FieldValue>> {
        let top: HashMap<&str, &RawValue> = serde_json::from_slice(record).ok()?;
        names
            .iter()
            .map(
                |name| match self.fields.iter().find(|(key, _)| key == name.as_ref()) {
                    None => Some(FieldValue::Missing),
                    Some((_, path)) => resolve(&top, path),
                },
            )
            .collect()
    }
}

/// The value at `path` in an object whose fields are `top`.
fn resolve(top: &HashMap<&str, &RawValue>, path: &[String]) -> Option<FieldValue> {
    let mut value = match top.get(path[0].as_str()) {
        Some(value) => *value,
        None => return Some(FieldValue::Missing),
    };
    for field in &path[1..] {
        if value.get().trim() == "null" {
            return Some(FieldValue::Missing);
        }
        let object: HashMap<&str, &RawValue> = serde_json::from_str(value.get()).ok()?;
        value = match object.get(field.as_str()) {
            Some(inner) => inner,
            None => return Some(FieldValue::Missing),
        };
    }
    scalar(value.get().trim())
}

/// A scalar's text as jq writes it (strings unescaped, numbers as written but `-0` as `0`,
/// booleans); `None` for objects and arrays.
fn scalar(text: &str) -> Option<FieldValue> {
    match text.as_bytes().first()? {
        b'n' => Some(FieldValue::Missing),
        b't' | b'f' => Some(FieldValue::Text(text.to_string())),
        b'"' => serde_json::from_str::<String>(text)
            .ok()
            .map(FieldValue::Text),
        b'-' | b'0'..=b'9' if text == "-0" => Some(FieldValue::Text("0".into())),
        b'-' | b'0'..=b'9' => Some(FieldValue::Text(text.to_string())),
        _ => None,
    }
}

/// An identifier at the start of `text`, and what follows it.
fn identifier(text: &str) -> Option<(&str, &str)> {
    let end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit())))
        .map_or(text.len(), |(i, _)| i);
    (end > 0).then(|| text.split_at(end))
}

/// A path `.a.b` at the start of `text`, and what follows it.
fn path(mut text: &str) -> Option<(Vec<String>, &str)> {
    let mut fields = Vec::new();
    while let Some(after) = text.strip_prefix('.') {
        let (field, rest) = identifier(after)?;
        fields.push(field.to_string());
        text = rest;
    }
    (!fields.is_empty()).then_some((fields, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jq::JqFilter;
    use jaq_json::Val;

    #[test]
    fn only_plain_field_picks_take_the_fast_path() {
        let query = FieldQuery::parse(r#"{service: .service, "day": .meta.day, region}"#).unwrap();
        assert_eq!(
            query.fields,
            [
                ("service".to_string(), vec!["service".to_string()]),
                (
                    "day".to_string(),
                    vec!["meta".to_string(), "day".to_string()]
                ),
                ("region".to_string(), vec!["region".to_string()]),
            ]
        );
        for other in [
            "{day: (.ts | .[0:10])}",
            "{user: (.user_id % 10)}",
            "{a: .a?}",
            "{a: .[\"a\"]}",
            "{(.k): .v}",
            ".a",
            "{}",
            "{a: .a} | .",
            "{\"a\\u0062\": .a}",
        ] {
            assert_eq!(FieldQuery::parse(other), None, "{other}");
        }
    }

    /// What jq makes of output key `name` for `record`: the same text the partitioner
    /// takes, or `None` when jq fails or the value is not a scalar.
    fn by_jq(query: &str, record: &[u8], name: &str) -> Option<FieldValue> {
        let filter = JqFilter::compile(query).unwrap();
        let Ok(Some(Val::Obj(fields))) = filter.first_value(record) else {
            return None;
        };
        match fields.get(&Val::from(name.to_string())) {
            None | Some(Val::Null) => Some(FieldValue::Missing),
            Some(Val::TStr(b) | Val::BStr(b)) => {
                Some(FieldValue::Text(String::from_utf8_lossy(b).into_owned()))
            }
            Some(v @ (Val::Bool(_) | Val::Num(_))) => Some(FieldValue::Text(v.to_string())),
            Some(_) => None,
        }
    }

    #[test]
    fn every_decided_value_is_what_jq_gives() {
        let query = "{a: .a, b: .m.b}";
        let fast = FieldQuery::parse(query).unwrap();
        let records: &[&[u8]] = &[
            br#"{"a": "x/y", "m": {"b": 1}}"#,
            br#"{"a": "caf\u00e9 \"q\"", "m": {"b": -0}}"#,
            br#"{"a": 12345678901234567890123, "m": {"b": 1.50}}"#,
            br#"{"a": 1e3, "m": {"b": true}}"#,
            br#"{"a": null, "m": null}"#,
            br#"{"m": {"c": 1}}"#,
            br#"{"a": "first", "a": "last", "m": {"b": false}}"#,
            br#"{"a": [1], "m": {"b": {"c": 1}}}"#,
            br#"{"a": "x", "m": 5}"#,
            br#"{"a": "\ud800"}"#,
            br#"[1, 2]"#,
            br#"{"a": NaN}"#,
            br#"not json"#,
            br#"{"a": "x"} trailing"#,
            b"{\"a\": \"tab\\tnl\\n\"}\n",
        ];
        for record in records {
            // Records the fast path does not decide are jq's.
            if let Some(values) = fast.values(record, &["a", "b", "missing"]) {
                for (name, value) in ["a", "b", "missing"].iter().zip(values) {
                    assert_eq!(
                        Some(value),
                        by_jq(query, record, name),
                        "{name} of {}",
                        String::from_utf8_lossy(record)
                    );
                }
            }
        }
        // Decided without jq: the common cases.
        assert!(fast.values(records[0], &["a", "b"]).is_some());
        assert!(fast.values(records[4], &["a", "b"]).is_some());
    }
}
