//! Dynamic partitioning: the keys a record is filed under — from a jq query over the record
//! (`!{partitionKeyFromQuery:NAME}`) and from the keys a transform returned with it
//! (`!{partitionKeyFromLambda:NAME}`) — how they are extracted, and how a value is made safe
//! to appear in an object key.

use std::fmt::Write as _;

use jaq_json::Val;

use crate::field_query::{FieldQuery, FieldValue};
use crate::jq::JqFilter;

/// Longest key value, in bytes; a longer one is an extraction failure.
pub const MAX_KEY_VALUE_BYTES: usize = 512;

/// Error code of a record whose keys could not be extracted.
pub const METADATA_EXTRACTION_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";

/// Error code of a record that would open a partition beyond the stream's limit.
pub const ACTIVE_PARTITIONS_LIMIT_EXCEEDED: &str =
    "DynamicPartitioning.ActivePartitionsLimitExceeded";

/// Where a key's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySource {
    /// The stream's jq query (`partitionKeyFromQuery`).
    Query,
    /// The keys a transform returned with the record (`partitionKeyFromLambda`).
    Lambda,
}

impl KeySource {
    /// The name of the source as templates write it.
    pub fn template_name(self) -> &'static str {
        match self {
            KeySource::Query => "partitionKeyFromQuery",
            KeySource::Lambda => "partitionKeyFromLambda",
        }
    }
}

/// The keys of one partition: every record of a partitioned batch has the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKeys {
    /// `(source, name, value)`, in the order the stream's templates need them.
    values: Vec<(KeySource, String, String)>,
}

impl PartitionKeys {
    /// The value of key `name` from `source`.
    pub fn get(&self, source: KeySource, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(s, n, _)| *s == source && n == name)
            .map(|(_, _, value)| value.as_str())
    }

    /// A stable 64-bit digest of the keys (FNV-1a), which seeds the names of a partition's
    /// objects so that a replayed batch names the same ones.
    pub fn seed(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (source, name, value) in &self.values {
            let tag = [*source as u8];
            for bytes in [
                &tag[..],
                name.as_bytes(),
                &[0xff],
                value.as_bytes(),
                &[0xfe],
            ] {
                for byte in bytes {
                    hash ^= u64::from(*byte);
                    hash = hash.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        hash
    }

    /// `name=value, …`, for logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (index, (_, name, value)) in self.values.iter().enumerate() {
            if index > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{name}={value}");
        }
        out
    }
}

/// Extracts a record's partition keys: the keys a stream's templates name, from its jq
/// query and from the keys its transforms returned.
pub struct Partitioner {
    query: Option<JqFilter>,
    /// The query, when it only picks fields: read from the record without jq.
    fields: Option<FieldQuery>,
    /// The query keys the templates need, in order (what `fields` is asked for).
    query_names: Vec<String>,
    /// Keys the templates need, in order, each with its name as the jq object key it is
    /// looked up by (made once, not per record).
    needed: Vec<(KeySource, String, Val)>,
}

impl std::fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(KeySource, &str)> = self
            .needed
            .iter()
            .map(|(source, name, _)| (*source, name.as_str()))
            .collect();
        f.debug_struct("Partitioner")
            .field("needed", &names)
            .finish()
    }
}

impl Partitioner {
    /// A partitioner producing `needed` keys, the query ones from `query` (a jq expression
    /// whose first output is an object holding them). Fails when the query does not compile
    /// or query keys are needed without one.
    pub fn new(query_text: Option<&str>, needed: Vec<(KeySource, String)>) -> Result<Self, String> {
        let query = query_text.map(JqFilter::compile).transpose()?;
        let fields = query_text.and_then(FieldQuery::parse);
        let query_names = needed
            .iter()
            .filter(|(source, _)| *source == KeySource::Query)
            .map(|(_, name)| name.clone())
            .collect();
        if query.is_none()
            && let Some((_, name)) = needed.iter().find(|(s, _)| *s == KeySource::Query)
        {
            return Err(format!(
                "`!{{partitionKeyFromQuery:{name}}}` needs a `partitioning.query`"
            ));
        }
        let needed = needed
            .into_iter()
            .map(|(source, name)| {
                let field = Val::from(name.clone());
                (source, name, field)
            })
            .collect();
        Ok(Self {
            query,
            fields,
            query_names,
            needed,
        })
    }

    /// The keys of `record`, whose transforms returned `lambda` keys; or why they cannot be
    /// extracted (the record then goes to the error output as
    /// [`METADATA_EXTRACTION_FAILED`]).
    pub fn keys(
        &self,
        record: &[u8],
        lambda: &[(String, String)],
    ) -> Result<PartitionKeys, String> {
        let mut picked = self
            .fields
            .as_ref()
            .and_then(|fields| fields.values(record, &self.query_names))
            .map(Vec::into_iter);
        let fields = match &self.query {
            _ if picked.is_some() => None,
            Some(query) => match query.first_value(record)? {
                Some(Val::Obj(fields)) => Some(fields),
                Some(other) => {
                    return Err(format!(
                        "the partitioning query must output an object; it output {}",
                        kind_of(&other)
                    ));
                }
                None => return Err("the partitioning query output nothing".into()),
            },
            None => None,
        };
        let mut values = Vec::with_capacity(self.needed.len());
        for (source, name, field) in &self.needed {
            let value = match source {
                KeySource::Query => match picked.as_mut().and_then(Iterator::next) {
                    Some(FieldValue::Text(text)) => text,
                    Some(FieldValue::Missing) => return Err(no_value(name)),
                    None => {
                        let value = fields.as_ref().and_then(|fields| fields.get(field));
                        scalar_text(name, value)?
                    }
                },
                KeySource::Lambda => lambda
                    .iter()
                    .rev()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
                    .ok_or_else(|| format!("the transform returned no partition key `{name}`"))?,
            };
            check_value(name, &value)?;
            values.push((*source, name.clone(), value));
        }
        Ok(PartitionKeys { values })
    }
}

/// The text of a key's value: strings as they are, numbers and booleans as JSON writes them.
fn scalar_text(name: &str, value: Option<&Val>) -> Result<String, String> {
    match value {
        None | Some(Val::Null) => Err(no_value(name)),
        Some(Val::TStr(bytes) | Val::BStr(bytes)) => {
            Ok(String::from_utf8_lossy(bytes).into_owned())
        }
        Some(value @ (Val::Bool(_) | Val::Num(_))) => Ok(value.to_string()),
        Some(other) => Err(format!(
            "the partitioning query gave {} for `{name}`; a key must be a string, number or boolean",
            kind_of(other)
        )),
    }
}

/// Why key `name` has no value.
fn no_value(name: &str) -> String {
    format!("the partitioning query gave no value for `{name}`")
}

fn kind_of(value: &Val) -> &'static str {
    match value {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Num(_) => "a number",
        Val::TStr(_) | Val::BStr(_) => "a string",
        Val::Arr(_) => "an array",
        Val::Obj(_) => "an object",
    }
}

/// A value must be non-empty and at most [`MAX_KEY_VALUE_BYTES`] bytes.
fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("partition key `{name}` is empty"));
    }
    if value.len() > MAX_KEY_VALUE_BYTES {
        return Err(format!(
            "partition key `{name}` is {} bytes long; at most {MAX_KEY_VALUE_BYTES} are allowed",
            value.len()
        ));
    }
    Ok(())
}

/// Appends `value` to an object key so that it stays one path segment: characters outside
/// S3's safe set (ASCII letters and digits, `-_.!*'()`) are percent-encoded — `/`, `%`,
/// NUL, line breaks and every non-ASCII byte among them — and a value of only dots (`.`,
/// `..`) has its dots encoded, so no value can climb out of the prefix or make an empty
/// segment.
pub fn push_safe_segment(value: &str, out: &mut String) {
    let only_dots = !value.is_empty() && value.bytes().all(|b| b == b'.');
    for byte in value.bytes() {
        let safe = byte.is_ascii_alphanumeric() || b"-_!*'()".contains(&byte) || byte == b'.';
        if safe && !(only_dots && byte == b'.') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// `keys` in order, each once: the keys a template names.
pub(crate) fn distinct_keys<'a>(
    keys: impl Iterator<Item = (KeySource, &'a str)>,
) -> Vec<(KeySource, String)> {
    let mut distinct: Vec<(KeySource, String)> = Vec::new();
    for (source, name) in keys {
        if !distinct.iter().any(|(s, n)| *s == source && n == name) {
            distinct.push((source, name.to_string()));
        }
    }
    distinct
}

/// The key named by `!{namespace:name}` when `namespace` is `partitionKeyFromQuery` or
/// `partitionKeyFromLambda` (`None` for any other namespace), or why the name is invalid.
pub fn parse_key_expression(
    namespace: &str,
    name: &str,
) -> Option<Result<(KeySource, String), String>> {
    let source = match namespace {
        "partitionKeyFromQuery" => KeySource::Query,
        "partitionKeyFromLambda" => KeySource::Lambda,
        _ => return None,
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    Some(if valid {
        Ok((source, name.to_string()))
    } else {
        Err(format!(
            "`!{{{namespace}:{name}}}` needs a key name of letters, digits, `_` and `-`"
        ))
    })
}

/// A name with partition keys in it, such as a search index
/// `logs-!{partitionKeyFromQuery:service}`: literal text and key values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    segments: Vec<NameSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NameSegment {
    Literal(String),
    Key(KeySource, String),
}

impl From<String> for NameTemplate {
    /// A name without keys.
    fn from(name: String) -> Self {
        Self {
            segments: vec![NameSegment::Literal(name)],
        }
    }
}

impl NameTemplate {
    /// Parses `text`, whose only expressions may be partition keys.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                segments.push(NameSegment::Literal(rest[..start].to_string()));
            }
            let body_start = start + 2;
            let Some(len) = rest[body_start..].find('}') else {
                return Err("unterminated expression: `!{` without a closing `}`".into());
            };
            let body = &rest[body_start..body_start + len];
            let (namespace, name) = body.split_once(':').unwrap_or((body, ""));
            match parse_key_expression(namespace, name) {
                Some(key) => {
                    let (source, name) = key?;
                    segments.push(NameSegment::Key(source, name));
                }
                None => {
                    return Err(format!(
                        "`!{{{body}}}` cannot be used here; only `!{{partitionKeyFromQuery:NAME}}` \
                         and `!{{partitionKeyFromLambda:NAME}}` can"
                    ));
                }
            }
            rest = &rest[body_start + len + 1..];
        }
        if !rest.is_empty() {
            segments.push(NameSegment::Literal(rest.to_string()));
        }
        Ok(Self { segments })
    }

    /// The keys the name holds, in order, each once.
    pub fn keys(&self) -> Vec<(KeySource, String)> {
        distinct_keys(self.segments.iter().filter_map(|segment| match segment {
            NameSegment::Key(source, name) => Some((*source, name.as_str())),
            NameSegment::Literal(_) => None,
        }))
    }

    /// The name with every key replaced by `x`: what a checker of names can judge.
    pub fn sample(&self) -> String {
        self.segments
            .iter()
            .map(|segment| match segment {
                NameSegment::Literal(text) => text.as_str(),
                NameSegment::Key(..) => "x",
            })
            .collect()
    }

    /// The name of the partition with `keys` as a search index: each value lowercased,
    /// with characters other than letters, digits, `_`, `-` and `.` replaced by `_`, and a
    /// value of only dots by `_`.
    pub fn render_index(&self, keys: Option<&PartitionKeys>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                NameSegment::Literal(text) => out.push_str(text),
                NameSegment::Key(source, name) => {
                    let value = keys.and_then(|k| k.get(*source, name)).unwrap_or("missing");
                    if value.bytes().all(|b| b == b'.') {
                        out.push('_');
                        continue;
                    }
                    out.extend(value.chars().map(|c| {
                        let c = c.to_ascii_lowercase();
                        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                            c
                        } else {
                            '_'
                        }
                    }));
                }
            }
        }
        out
    }
}

/// The keys of a query that is one object construction (`{service: .s, "day": .d}`,
/// `{service}`, `{$day}`): what `hydrant validate` checks a prefix's keys against. `None`
/// for any other query, whose keys are only known record by record.
pub fn object_literal_keys(query: &str) -> Option<Vec<String>> {
    let body = query.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut entries = vec![String::new()];
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for c in body.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else {
            match c {
                '"' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    entries.push(String::new());
                    continue;
                }
                _ => {}
            }
            // The outer braces closed early: `{a: 1} + {b: 2}` is not one construction.
            if depth < 0 {
                return None;
            }
        }
        entries.last_mut()?.push(c);
    }
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let key = match entry.split_once(':') {
            Some((key, _)) => key.trim(),
            None => entry,
        };
        let key = key.strip_prefix('$').unwrap_or(key);
        let key = match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
            Some(quoted) if !quoted.contains(['\\', '"', '(']) => quoted,
            Some(_) => return None,
            None => key,
        };
        let identifier = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier && !entry.starts_with('"') {
            return None;
        }
        keys.push(key.to_string());
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(code: &str, names: &[&str]) -> Partitioner {
        Partitioner::new(
            Some(code),
            names
                .iter()
                .map(|n| (KeySource::Query, n.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn query_keys_come_from_the_first_output_object() {
        let partitioner = query(
            "{service: .service, day: (.ts | .[0:10]), n: .n, ok: .ok}",
            &["service", "day", "n", "ok"],
        );
        let keys = partitioner
            .keys(
                br#"{"service":"api","ts":"2026-11-29T10:00:00Z","n":42,"ok":true}"#,
                &[],
            )
            .unwrap();
        assert_eq!(keys.get(KeySource::Query, "service"), Some("api"));
        assert_eq!(keys.get(KeySource::Query, "day"), Some("2026-11-29"));
        assert_eq!(keys.get(KeySource::Query, "n"), Some("42"));
        assert_eq!(keys.get(KeySource::Query, "ok"), Some("true"));
        assert_eq!(
            keys.describe(),
            "service=api, day=2026-11-29, n=42, ok=true"
        );
    }

    #[test]
    fn keys_that_cannot_be_extracted_say_why() {
        let partitioner = query("{service: .service}", &["service"]);
        let failure = |record: &[u8]| partitioner.keys(record, &[]).unwrap_err();
        assert!(failure(br#"{"other":1}"#).contains("no value for `service`"));
        assert!(failure(br#"{"service":null}"#).contains("no value for `service`"));
        assert!(failure(br#"{"service":[1]}"#).contains("an array"));
        assert!(failure(br#"{"service":{"a":1}}"#).contains("an object"));
        assert!(failure(br#"{"service":""}"#).contains("is empty"));
        assert!(failure(b"not json").contains("not JSON"));
        let long = format!(r#"{{"service":"{}"}}"#, "x".repeat(MAX_KEY_VALUE_BYTES + 1));
        assert!(failure(long.as_bytes()).contains("513 bytes long"));
        let exact = format!(r#"{{"service":"{}"}}"#, "x".repeat(MAX_KEY_VALUE_BYTES));
        assert!(partitioner.keys(exact.as_bytes(), &[]).is_ok());

        let not_object = query(".service", &["service"]);
        assert!(
            not_object
                .keys(br#"{"service":"a"}"#, &[])
                .unwrap_err()
                .contains("must output an object; it output a string")
        );
        let failing = query(r#"error("boom")"#, &["service"]);
        assert!(failing.keys(b"{}", &[]).unwrap_err().contains("boom"));
    }

    #[test]
    fn lambda_keys_come_from_the_transform_and_the_last_one_wins() {
        let partitioner = Partitioner::new(
            Some("{service: .service}"),
            vec![
                (KeySource::Query, "service".into()),
                (KeySource::Lambda, "customer".into()),
            ],
        )
        .unwrap();
        let lambda = [
            ("customer".to_string(), "first".to_string()),
            ("customer".to_string(), "acme".to_string()),
        ];
        let keys = partitioner.keys(br#"{"service":"api"}"#, &lambda).unwrap();
        assert_eq!(keys.get(KeySource::Lambda, "customer"), Some("acme"));
        assert_eq!(keys.get(KeySource::Query, "service"), Some("api"));
        assert!(
            partitioner
                .keys(br#"{"service":"api"}"#, &[])
                .unwrap_err()
                .contains("no partition key `customer`")
        );
    }

    #[test]
    fn query_keys_need_a_query_and_the_query_must_compile() {
        let error = Partitioner::new(None, vec![(KeySource::Query, "service".into())]).unwrap_err();
        assert!(error.contains("needs a `partitioning.query`"), "{error}");
        assert!(Partitioner::new(Some("{a: .a"), Vec::new()).is_err());
        assert!(Partitioner::new(None, vec![(KeySource::Lambda, "c".into())]).is_ok());
    }

    #[test]
    fn seeds_differ_between_partitions_and_repeat_for_the_same_one() {
        let partitioner = query("{s: .s}", &["s"]);
        let seed = |record: &[u8]| partitioner.keys(record, &[]).unwrap().seed();
        assert_eq!(seed(br#"{"s":"a"}"#), seed(br#"{"s":"a"}"#));
        assert_ne!(seed(br#"{"s":"a"}"#), seed(br#"{"s":"b"}"#));
    }

    #[test]
    fn object_constructions_name_their_keys() {
        let keys = |q: &str| object_literal_keys(q);
        assert_eq!(
            keys(r#"{service: .service, "event date": (.ts | .[0:10]), $day, n}"#),
            Some(vec![
                "service".into(),
                "event date".into(),
                "day".into(),
                "n".into()
            ])
        );
        assert_eq!(
            keys(r#" { a: {b: 1, c: [1, 2]}, d: "x,y:z" } "#),
            Some(vec!["a".into(), "d".into()])
        );
        assert_eq!(keys(".service"), None);
        assert_eq!(keys("{a: 1} + {b: 2}"), None);
        assert_eq!(keys("{(.k): 1}"), None);
        assert_eq!(keys(r#"{"\(.k)": 1}"#), None);
        assert_eq!(keys("{}"), Some(Vec::new()));
    }

    #[test]
    fn index_names_take_keys_made_safe_for_a_cluster() {
        let template = NameTemplate::parse(
            "logs-!{partitionKeyFromQuery:service}-!{partitionKeyFromLambda:tenant}",
        )
        .unwrap();
        assert_eq!(
            template.keys(),
            [
                (KeySource::Query, "service".to_string()),
                (KeySource::Lambda, "tenant".to_string())
            ]
        );
        assert_eq!(template.sample(), "logs-x-x");
        let partitioner = Partitioner::new(Some("{service: .s}"), template.keys()).unwrap();
        let keys = partitioner
            .keys(
                br#"{"s":"Web API/../*"}"#,
                &[("tenant".to_string(), "..".to_string())],
            )
            .unwrap();
        assert_eq!(template.render_index(Some(&keys)), "logs-web_api_..__-_");
        assert_eq!(
            NameTemplate::from("plain".to_string()).render_index(None),
            "plain"
        );
        for bad in [
            "logs-!{timestamp:yyyy}",
            "logs-!{partitionKeyFromQuery:}",
            "logs-!{partitionKeyFromQuery:a",
        ] {
            assert!(NameTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    fn safe(value: &str) -> String {
        let mut out = String::new();
        push_safe_segment(value, &mut out);
        out
    }

    #[test]
    fn hostile_values_stay_one_segment_inside_the_prefix() {
        assert_eq!(safe("api-v2_x.y"), "api-v2_x.y");
        assert_eq!(safe("../etc"), "..%2Fetc");
        assert_eq!(safe(".."), "%2E%2E");
        assert_eq!(safe("."), "%2E");
        assert_eq!(safe("..."), "%2E%2E%2E");
        assert_eq!(safe("%2e%2e"), "%252e%252e");
        assert_eq!(safe("/abs"), "%2Fabs");
        assert_eq!(safe("a\0b\nc\r"), "a%00b%0Ac%0D");
        assert_eq!(safe("k=v&x y"), "k%3Dv%26x%20y");
        assert_eq!(safe("é"), "%C3%A9");
        for hostile in [
            "../",
            "..",
            "/",
            "%2e%2e/",
            "a/../../b",
            "\0",
            "\n",
            &"/".repeat(512),
        ] {
            let encoded = safe(hostile);
            assert!(!encoded.contains('/'), "{hostile:?} → {encoded}");
            assert!(!encoded.is_empty());
            assert!(encoded != "." && encoded != "..", "{hostile:?} → {encoded}");
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{encoded}");
        }
    }
}
