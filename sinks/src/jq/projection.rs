//! Which fields of a record a jq filter can see. Most filters (`.a + .b`,
//! `{user: (.user_id % 100)}`, `{day: (.ts | .[0:10])}`) only read named top-level fields of
//! the record; for those, parsing every other field into jq values is wasted work — it was
//! the partitioned path's largest cost after compression. [`root_fields`] proves from the
//! parsed program that the record is only ever read through `.name` (never as a whole, by
//! `..`, by a computed index, or as a function's input), and [`Projection`] then hands jq an
//! object holding just those fields. Anything the proof does not cover keeps the full parse.

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::path::{Part, Path};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Calls that may run on the record itself because they ignore their input.
const INPUT_FREE_CALLS: [&str; 4] = ["true", "false", "null", "empty"];

/// The top-level fields `code` reads, when it provably reads the record through nothing else;
/// `None` when it may (or the program does not parse: compiling it says why).
pub fn root_fields(code: &str) -> Option<Vec<String>> {
    let term = jaq_core::load::parse(code, |parser| parser.term())?;
    let mut fields = Vec::new();
    reads_only_fields(&term, &mut fields).then(|| {
        fields.sort();
        fields.dedup();
        fields
    })
}

/// Whether `term`, run on the record, reads it only through `.name`, collecting the names.
/// Every term accepted here outputs values built from fields, never the record itself, so
/// whatever consumes its output (the right side of a pipe, a fold's update) may do anything.
fn reads_only_fields(term: &Term<&str>, fields: &mut Vec<String>) -> bool {
    match term {
        Term::Id | Term::Recurse | Term::Def(..) => false,
        Term::Num(_) | Term::Var(_) | Term::Break(_) => true,
        Term::Str(_, parts) => parts.iter().all(|part| match part {
            StrPart::Term(term) => reads_only_fields(term, fields),
            StrPart::Str(_) | StrPart::Char(_) => true,
        }),
        Term::Arr(items) => items
            .as_deref()
            .is_none_or(|items| reads_only_fields(items, fields)),
        Term::Obj(entries) => entries.iter().all(|(key, value)| match (key, value) {
            (Term::Var(_), None) => true,
            // `{name}` is `{name: .name}`.
            (key, None) => match plain_string(key) {
                Some(name) => {
                    fields.push(name.to_string());
                    true
                }
                None => false,
            },
            (key, Some(value)) => {
                reads_only_fields(key, fields) && reads_only_fields(value, fields)
            }
        }),
        Term::Neg(term) | Term::Label(_, term) => reads_only_fields(term, fields),
        Term::BinOp(left, op, right) => match op {
            // The right side runs on the left side's outputs.
            BinaryOp::Pipe(None) => reads_only_fields(left, fields),
            // `l as $x | r`: r runs on the record, with $x bound to l's outputs.
            BinaryOp::Pipe(Some(pattern)) => {
                reads_only_fields(left, fields)
                    && pattern_reads_only_fields(pattern, fields)
                    && reads_only_fields(right, fields)
            }
            // Assignments output the updated record.
            BinaryOp::Assign | BinaryOp::Update | BinaryOp::UpdateMath(_) | BinaryOp::UpdateAlt => {
                false
            }
            BinaryOp::Comma
            | BinaryOp::Alt
            | BinaryOp::Or
            | BinaryOp::And
            | BinaryOp::Math(_)
            | BinaryOp::Cmp(_) => {
                reads_only_fields(left, fields) && reads_only_fields(right, fields)
            }
        },
        // `reduce xs as $x (init; update)`: the updates run on the accumulator.
        Term::Fold(_, xs, pattern, args) => {
            reads_only_fields(xs, fields)
                && pattern_reads_only_fields(pattern, fields)
                && args
                    .first()
                    .is_none_or(|init| reads_only_fields(init, fields))
        }
        Term::TryCatch(body, catch) => {
            reads_only_fields(body, fields)
                && catch
                    .as_deref()
                    .is_none_or(|catch| reads_only_fields(catch, fields))
        }
        Term::IfThenElse(branches, otherwise) => {
            branches.iter().all(|(condition, then)| {
                reads_only_fields(condition, fields) && reads_only_fields(then, fields)
            }) && otherwise
                .as_deref()
                .is_none_or(|otherwise| reads_only_fields(otherwise, fields))
        }
        Term::Call(name, args) => args.is_empty() && INPUT_FREE_CALLS.contains(name),
        Term::Path(head, Path(parts)) => {
            // A path's index expressions run on the same input as its head.
            let mut parts = parts.iter();
            let head_ok = match &**head {
                Term::Id => match parts.next() {
                    Some((Part::Index(key), _)) => match plain_string(key) {
                        Some(name) => {
                            fields.push(name.to_string());
                            true
                        }
                        None => false,
                    },
                    _ => false,
                },
                head => reads_only_fields(head, fields),
            };
            head_ok
                && parts.all(|(part, _)| match part {
                    Part::Index(index) => reads_only_fields(index, fields),
                    Part::Range(from, to) => [from, to]
                        .into_iter()
                        .flatten()
                        .all(|bound| reads_only_fields(bound, fields)),
                })
        }
    }
}

/// Whether the keys a destructuring pattern computes read only fields.
fn pattern_reads_only_fields(pattern: &Pattern<&str>, fields: &mut Vec<String>) -> bool {
    match pattern {
        Pattern::Var(_) => true,
        Pattern::Arr(items) => items
            .iter()
            .all(|item| pattern_reads_only_fields(item, fields)),
        Pattern::Obj(entries) => entries.iter().all(|(key, value)| {
            reads_only_fields(key, fields) && pattern_reads_only_fields(value, fields)
        }),
    }
}

/// The text of a string literal without escapes or interpolation.
fn plain_string<'s>(term: &Term<&'s str>) -> Option<&'s str> {
    match term {
        Term::Str(None, parts) => match parts.as_slice() {
            [StrPart::Str(text)] => Some(text),
            _ => None,
        },
        _ => None,
    }
}

/// Builds, from a record, the JSON object of only the fields a filter reads.
#[derive(Debug, Clone)]
pub struct Projection {
    /// The field names, in the order of `keys`.
    names: Vec<String>,
    /// Each name as a JSON object key with its colon, ready to write.
    keys: Vec<String>,
}

impl Projection {
    /// A projection onto `names`.
    pub fn new(names: Vec<String>) -> Self {
        let keys = names
            .iter()
            .map(|name| format!("{}:", serde_json::Value::from(name.as_str())))
            .collect();
        Self { names, keys }
    }

    /// Writes into `out` the object of the named fields of `record` (the last of duplicated
    /// fields, as jq keeps); `false` when the record is not a JSON object this can read
    /// exactly as jq would, and jq must parse all of it.
    pub fn write(&self, record: &[u8], out: &mut Vec<u8>) -> bool {
        // jq refuses lone surrogate escapes that skipping a value would let pass.
        if has_surrogate_escape(record) {
            return false;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(record);
        let Ok(values) = (FieldsSeed { names: &self.names }).deserialize(&mut deserializer) else {
            return false;
        };
        if deserializer.end().is_err() {
            return false;
        }
        out.clear();
        out.push(b'{');
        for (key, value) in self.keys.iter().zip(&values) {
            if let Some(value) = value {
                if out.len() > 1 {
                    out.push(b',');
                }
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        out.push(b'}');
        true
    }
}

/// Whether `record` holds a `\uD800`–`\uDFFF` escape.
fn has_surrogate_escape(record: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', record)
        .any(|at| matches!(record.get(at + 1..at + 3), Some([b'u', b'd' | b'D'])))
}

/// Reads a JSON object keeping the raw text of the named fields and skipping (but checking)
/// every other value.
struct FieldsSeed<'n> {
    names: &'n [String],
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.names.len()];
        while let Some(wanted) = map.next_key_seed(KeySeed { names: self.names })? {
            match wanted {
                Some(index) => values[index] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// Reads an object key as the index of the name it matches, without keeping it.
struct KeySeed<'n> {
    names: &'n [String],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|name| name == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_only_read_named_fields_are_projected() {
        for (code, expected) in [
            (".a + .b", vec!["a", "b"]),
            ("{user: (.user_id % 100)}", vec!["user_id"]),
            ("{day: (.ts | .[0:10])}", vec!["ts"]),
            ("{service, region: .meta.region}", vec!["meta", "service"]),
            (r#"{"k": ."quoted key"}"#, vec!["quoted key"]),
            (".a[.i] // .b?", vec!["a", "b", "i"]),
            (".tags | join(\",\") | length", vec!["tags"]),
            (".x as $x | {v: ($x + .y)}", vec!["x", "y"]),
            ("reduce .xs[] as $x (.zero; . + $x)", vec!["xs", "zero"]),
            ("if .a then \"\\(.b)-x\" else null end", vec!["a", "b"]),
            ("try .a catch .b", vec!["a", "b"]),
            ("[.a, -.b] | map(. * 2)", vec!["a", "b"]),
            (".[\"a\"] | .[0]", vec!["a"]),
            ("\"constant\"", vec![]),
        ] {
            assert_eq!(
                root_fields(code),
                Some(expected.iter().map(|f| f.to_string()).collect()),
                "{code}"
            );
        }
    }

    #[test]
    fn filters_that_may_see_the_whole_record_are_not() {
        for code in [
            ".",
            "{all: .}",
            "..",
            "keys",
            "length",
            "to_entries",
            ".[.k]",
            ".[0]",
            ".[]",
            ".a = 1",
            ".a |= . + 1",
            ". as $r | $r.a",
            "def f: .a; f",
            "{(.k)}",
            "{\"a\\u0062\"}",
            "{\"\\(.k)\"}",
            "@base64",
            "select(.a) | .b",
            "tostring",
            ".a as {(keys[0]): $v} | $v",
            "not",
        ] {
            assert_eq!(root_fields(code), None, "{code}");
        }
    }

    #[test]
    fn the_projected_object_holds_only_the_named_fields() {
        let projection = Projection::new(vec!["a".into(), "b\"q".into()]);
        let mut out = Vec::new();
        assert!(projection.write(
            br#" {"z": [1, {"a": 2}], "a": {"n": "x"}, "b\"q": 1, "a": 3} "#,
            &mut out
        ));
        assert_eq!(out, br#"{"a":3,"b\"q":1}"#);
        assert!(projection.write(br#"{"c": 1}"#, &mut out));
        assert_eq!(out, b"{}");
        for refused in [
            &br#"[1]"#[..],
            br#"{"a": 1} x"#,
            br#"{"z": "\ud800", "a": 1}"#,
            br#"{"z": 01, "a": 1}"#,
            br#"{"z": "tab	here"}"#,
            br#"{"a": 1"#,
        ] {
            assert!(
                !projection.write(refused, &mut out),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }
}
