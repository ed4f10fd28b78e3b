//! Object keys the Firehose way:
//! `<evaluated prefix>[YYYY/MM/dd/HH/]<stream>-<version>-YYYY-MM-dd-HH-mm-ss-<uuid><ext>`,
//! all times UTC and taken from the oldest record in the object.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::partition::{
    KeySource, PartitionKeys, distinct_keys, parse_key_expression, push_safe_segment,
};

/// Firehose numbers stream versions from 1; Hydrant's streams are configured from a file and
/// have no update API, so the version stays 1.
const STREAM_VERSION: u32 = 1;

/// A parsed key prefix such as `logs/!{timestamp:yyyy/MM/dd}/!{firehose:random-string}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    segments: Vec<Segment>,
    has_expressions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Timestamp(Vec<TimeField>),
    RandomString,
    ErrorOutputType,
    /// A dynamic partitioning key's value, made safe as one path segment.
    PartitionKey(KeySource, String),
}

/// Which expressions a prefix may hold.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    error_output_type: bool,
    partition_keys: bool,
}

/// One field of a Java `DateTimeFormatter` pattern, the syntax Firehose prefixes use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimeField {
    Literal(String),
    Year { width: usize },
    TwoDigitYear,
    Month { width: usize },
    Day { width: usize },
    DayOfYear { width: usize },
    Hour { width: usize },
    Minute { width: usize },
    Second { width: usize },
}

/// A prefix that cannot be used, with the byte offset of the offending expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyTemplateError {
    /// Byte offset inside the prefix where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl KeyTemplate {
    /// Parses a prefix. Supported expressions: `!{timestamp:<pattern>}` and
    /// `!{firehose:random-string}`.
    pub fn parse(prefix: &str) -> Result<Self, KeyTemplateError> {
        Self::parse_with(
            prefix,
            Allowed {
                error_output_type: false,
                partition_keys: false,
            },
        )
    }

    /// Parses the prefix of a stream with dynamic partitioning, which may also hold
    /// `!{partitionKeyFromQuery:NAME}` and `!{partitionKeyFromLambda:NAME}`.
    pub fn parse_partitioned(prefix: &str) -> Result<Self, KeyTemplateError> {
        Self::parse_with(
            prefix,
            Allowed {
                error_output_type: false,
                partition_keys: true,
            },
        )
    }

    /// Parses an error output prefix, which may also hold `!{firehose:error-output-type}`.
    pub fn parse_error_prefix(prefix: &str) -> Result<Self, KeyTemplateError> {
        Self::parse_with(
            prefix,
            Allowed {
                error_output_type: true,
                partition_keys: false,
            },
        )
    }

    /// The partition keys the prefix names, in order, each once.
    pub fn partition_keys(&self) -> Vec<(KeySource, String)> {
        distinct_keys(self.segments.iter().filter_map(|segment| match segment {
            Segment::PartitionKey(source, name) => Some((*source, name.as_str())),
            _ => None,
        }))
    }

    fn parse_with(prefix: &str, allowed: Allowed) -> Result<Self, KeyTemplateError> {
        let mut segments = Vec::new();
        let mut has_expressions = false;
        let mut rest = prefix;
        let mut offset = 0;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_string()));
            }
            let body_start = start + 2;
            let Some(len) = rest[body_start..].find('}') else {
                return Err(KeyTemplateError {
                    offset: offset + start,
                    message: "unterminated expression: `!{` without a closing `}`".into(),
                });
            };
            let body = &rest[body_start..body_start + len];
            segments.push(
                parse_expression(body, allowed).map_err(|message| KeyTemplateError {
                    offset: offset + start,
                    message,
                })?,
            );
            has_expressions = true;
            let consumed = body_start + len + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(Self {
            segments,
            has_expressions,
        })
    }

    /// Whether the prefix holds expressions; without any, Firehose appends `YYYY/MM/dd/HH/`.
    pub fn has_expressions(&self) -> bool {
        self.has_expressions
    }

    /// Appends the evaluated prefix for an object whose oldest record arrived at `time`,
    /// drawing random strings from `rng`.
    pub fn render_into(&self, time: DateTime<Utc>, rng: &mut fastrand::Rng, out: &mut String) {
        self.render_full(time, rng, "", None, out);
    }

    /// Like [`render_into`](Self::render_into), with `error_type` for
    /// `!{firehose:error-output-type}`.
    pub fn render_error_into(
        &self,
        time: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        error_type: &str,
        out: &mut String,
    ) {
        self.render_full(time, rng, error_type, None, out);
    }

    /// Like [`render_into`](Self::render_into), with a partition's `keys`.
    pub fn render_partition_into(
        &self,
        time: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        keys: &PartitionKeys,
        out: &mut String,
    ) {
        self.render_full(time, rng, "", Some(keys), out);
    }

    fn render_full(
        &self,
        time: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        error_type: &str,
        keys: Option<&PartitionKeys>,
        out: &mut String,
    ) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::ErrorOutputType => out.push_str(error_type),
                // Extraction guarantees every key the prefix names; a value missing anyway
                // still makes a non-empty segment.
                Segment::PartitionKey(source, name) => push_safe_segment(
                    keys.and_then(|keys| keys.get(*source, name))
                        .unwrap_or("missing"),
                    out,
                ),
                Segment::Timestamp(fields) => render_time(fields, time, out),
                Segment::RandomString => {
                    out.extend((0..11).map(|_| rng.alphanumeric().to_ascii_lowercase()));
                }
            }
        }
    }
}

fn parse_expression(body: &str, allowed: Allowed) -> Result<Segment, String> {
    let Some((namespace, value)) = body.split_once(':') else {
        return Err(format!(
            "expression `!{{{body}}}` needs the form `!{{namespace:value}}`"
        ));
    };
    match namespace {
        "timestamp" => parse_time_pattern(value).map(Segment::Timestamp),
        "firehose" => match value {
            "random-string" => Ok(Segment::RandomString),
            "error-output-type" if allowed.error_output_type => Ok(Segment::ErrorOutputType),
            "error-output-type" => Err(
                "`!{firehose:error-output-type}` is only allowed in an error output prefix".into(),
            ),
            other => Err(format!(
                "unknown firehose expression `{other}`; expected `random-string`"
            )),
        },
        "partitionKeyFromQuery" | "partitionKeyFromLambda" if allowed.partition_keys => {
            let (source, name) =
                parse_key_expression(namespace, value).expect("a partition key namespace")?;
            Ok(Segment::PartitionKey(source, name))
        }
        "partitionKeyFromQuery" | "partitionKeyFromLambda" if allowed.error_output_type => {
            Err(format!(
                "`!{{{namespace}:...}}` cannot be used in an error output prefix: records that \
                 fail partitioning have no keys"
            ))
        }
        "partitionKeyFromQuery" | "partitionKeyFromLambda" => Err(format!(
            "`!{{{namespace}:...}}` needs dynamic partitioning, which this stream does not configure"
        )),
        other => Err(format!(
            "unknown expression namespace `{other}`; expected `timestamp` or `firehose`"
        )),
    }
}

fn parse_time_pattern(pattern: &str) -> Result<Vec<TimeField>, String> {
    if pattern.is_empty() {
        return Err("`!{timestamp:}` needs a pattern such as `yyyy/MM/dd`".into());
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; `''` is a single quote.
            let mut literal = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                            "unterminated quote in timestamp pattern `{pattern}`"
                        ));
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        literal.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        literal.push(*other);
                        i += 1;
                    }
                }
            }
            if literal.is_empty() {
                literal.push('\'');
            }
            fields.push(TimeField::Literal(literal));
            continue;
        }
        let mut width = 1;
        while chars.get(i + width) == Some(&c) {
            width += 1;
        }
        let field = match c {
            'y' | 'u' if width == 2 => TimeField::TwoDigitYear,
            'y' | 'u' => TimeField::Year { width },
            'M' if width <= 2 => TimeField::Month { width },
            'd' if width <= 2 => TimeField::Day { width },
            'D' if width <= 3 => TimeField::DayOfYear { width },
            'H' if width <= 2 => TimeField::Hour { width },
            'm' if width <= 2 => TimeField::Minute { width },
            's' if width <= 2 => TimeField::Second { width },
            c if c.is_ascii_alphabetic() => {
                return Err(format!(
                    "timestamp pattern letter `{}` is not supported; use y, M, d, D, H, m, s \
                     and quoted literals",
                    c.to_string().repeat(width)
                ));
            }
            _ => TimeField::Literal(c.to_string().repeat(width)),
        };
        fields.push(field);
        i += width;
    }
    Ok(fields)
}

fn render_time(fields: &[TimeField], time: DateTime<Utc>, out: &mut String) {
    for field in fields {
        let (value, width) = match field {
            TimeField::Literal(text) => {
                out.push_str(text);
                continue;
            }
            TimeField::TwoDigitYear => (time.year().rem_euclid(100) as u32, 2),
            TimeField::Year { width } => (time.year() as u32, *width),
            TimeField::Month { width } => (time.month(), *width),
            TimeField::Day { width } => (time.day(), *width),
            TimeField::DayOfYear { width } => (time.ordinal(), *width),
            TimeField::Hour { width } => (time.hour(), *width),
            TimeField::Minute { width } => (time.minute(), *width),
            TimeField::Second { width } => (time.second(), *width),
        };
        let _ = write!(out, "{value:0width$}");
    }
}

/// Builds keys for one stream's objects.
#[derive(Debug, Clone)]
pub struct ObjectKeyBuilder {
    stream: String,
    prefix: KeyTemplate,
    extension: &'static str,
}

impl ObjectKeyBuilder {
    /// Keys for `stream` under `prefix`, ending in `extension` (e.g. `.gz`, or empty).
    pub fn new(stream: &str, prefix: KeyTemplate, extension: &'static str) -> Self {
        Self {
            stream: stream.to_string(),
            prefix,
            extension,
        }
    }

    /// The key of an object whose oldest record arrived at `oldest`. Its random parts come
    /// from `rng`: seeded from the object's record range, the same batch always gets the
    /// same key, which is what makes a replayed write detectable.
    pub fn key(&self, oldest: DateTime<Utc>, rng: &mut fastrand::Rng) -> String {
        self.key_with_type(oldest, rng, "")
    }

    /// Like [`key`](Self::key), for an object of the partition with `keys`.
    pub fn partition_key(
        &self,
        oldest: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        keys: &PartitionKeys,
    ) -> String {
        let mut key = String::with_capacity(128 + self.stream.len());
        self.prefix
            .render_partition_into(oldest, rng, keys, &mut key);
        self.finish_key(oldest, rng, key)
    }

    /// Like [`key`](Self::key), for an error output object of type `error_type` (the value
    /// of `!{firehose:error-output-type}`).
    pub fn key_with_type(
        &self,
        oldest: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        error_type: &str,
    ) -> String {
        let mut key = String::with_capacity(96 + self.stream.len());
        self.prefix
            .render_error_into(oldest, rng, error_type, &mut key);
        self.finish_key(oldest, rng, key)
    }

    /// Appends to an evaluated prefix the hour path (when the prefix has no expressions)
    /// and the object's name.
    fn finish_key(
        &self,
        oldest: DateTime<Utc>,
        rng: &mut fastrand::Rng,
        mut key: String,
    ) -> String {
        if !self.prefix.has_expressions() {
            let _ = write!(
                key,
                "{:04}/{:02}/{:02}/{:02}/",
                oldest.year(),
                oldest.month(),
                oldest.day(),
                oldest.hour()
            );
        }
        let _ = write!(
            key,
            "{}-{}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-",
            self.stream,
            STREAM_VERSION,
            oldest.year(),
            oldest.month(),
            oldest.day(),
            oldest.hour(),
            oldest.minute(),
            oldest.second()
        );
        push_uuid(rng, &mut key);
        key.push_str(self.extension);
        key
    }
}

/// A seed for the random parts of the key of the batch holding records `first..=last` of
/// the spool `incarnation`: equal inputs, equal keys; any difference, unrelated keys.
pub fn batch_seed(incarnation: u64, first: u64, last: u64) -> u64 {
    // SplitMix64 finaliser over the three values.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    mix(mix(mix(incarnation) ^ first) ^ last.rotate_left(32))
}

/// A random (version 4) UUID in its usual text form, as Firehose ends its keys with.
fn push_uuid(rng: &mut fastrand::Rng, out: &mut String) {
    let mut bytes = rng.u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2016, 2, 5, 7, 8, 9).unwrap()
    }

    fn split_uuid(key: &str, ext: &str) -> (String, String) {
        let body = key.strip_suffix(ext).unwrap();
        let (head, uuid) = body.split_at(body.len() - 36);
        (head.to_string(), uuid.to_string())
    }

    #[test]
    fn static_prefix_gets_the_default_hour_folders() {
        let builder = ObjectKeyBuilder::new("events", KeyTemplate::parse("raw/").unwrap(), ".gz");
        let (head, uuid) = split_uuid(&builder.key(at(), &mut fastrand::Rng::new()), ".gz");
        assert_eq!(head, "raw/2016/02/05/07/events-1-2016-02-05-07-08-09-");
        let groups: Vec<_> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&uuid[14..15], "4", "version nibble");
    }

    #[test]
    fn expressions_replace_the_default_folders() {
        let template =
            KeyTemplate::parse("logs/dt=!{timestamp:yyyy-MM-dd}/h=!{timestamp:HH}/").unwrap();
        let builder = ObjectKeyBuilder::new("s", template, "");
        let (head, _) = split_uuid(&builder.key(at(), &mut fastrand::Rng::new()), "");
        assert_eq!(head, "logs/dt=2016-02-05/h=07/s-1-2016-02-05-07-08-09-");
    }

    #[test]
    fn java_pattern_literals_and_widths() {
        let template = KeyTemplate::parse("!{timestamp:yy'y'D/M/d/''}").unwrap();
        let mut out = String::new();
        template.render_into(at(), &mut fastrand::Rng::new(), &mut out);
        assert_eq!(out, "16y36/2/5/'");
    }

    #[test]
    fn random_string_is_fresh_each_time() {
        let template = KeyTemplate::parse("!{firehose:random-string}/").unwrap();
        let mut rng = fastrand::Rng::new();
        let mut render = || {
            let mut out = String::new();
            template.render_into(at(), &mut rng, &mut out);
            out
        };
        let (a, b) = (render(), render());
        assert_eq!(a.len(), 12);
        assert!(
            a[..11]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn keys_seeded_from_a_batch_range_repeat_exactly() {
        let template = KeyTemplate::parse("p/!{firehose:random-string}/").unwrap();
        let builder = ObjectKeyBuilder::new("s", template, ".gz");
        let key = |first, last| {
            builder.key(
                at(),
                &mut fastrand::Rng::with_seed(batch_seed(7, first, last)),
            )
        };
        assert_eq!(key(10, 20), key(10, 20));
        assert_ne!(key(10, 20), key(10, 21));
        assert_ne!(key(10, 20), key(11, 20));
        assert_ne!(
            key(10, 20),
            builder.key(at(), &mut fastrand::Rng::with_seed(batch_seed(8, 10, 20)))
        );
    }

    #[test]
    fn bad_expressions_are_reported_with_offsets() {
        let err = KeyTemplate::parse("a/!{timestamp:yyyy").unwrap_err();
        assert_eq!(err.offset, 2);
        let err = KeyTemplate::parse("ab!{firehose:error-output-type}").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(err.message.contains("error output prefix"));
        assert!(
            KeyTemplate::parse("!{timestamp:EEE}")
                .unwrap_err()
                .message
                .contains("EEE")
        );
        assert!(
            KeyTemplate::parse("!{nope:x}")
                .unwrap_err()
                .message
                .contains("nope")
        );
    }

    fn keys_of(record: &str, query: &str, names: &[(KeySource, &str)]) -> PartitionKeys {
        let needed = names.iter().map(|(s, n)| (*s, n.to_string())).collect();
        let lambda = [("customer".to_string(), "acme/../x".to_string())];
        crate::partition::Partitioner::new(Some(query), needed)
            .unwrap()
            .keys(record.as_bytes(), &lambda)
            .unwrap()
    }

    #[test]
    fn partitioned_prefixes_name_their_keys_and_render_them_safely() {
        let template = KeyTemplate::parse_partitioned(
            "events/service=!{partitionKeyFromQuery:service}/c=!{partitionKeyFromLambda:customer}/dt=!{timestamp:yyyy-MM-dd}/s=!{partitionKeyFromQuery:service}/",
        )
        .unwrap();
        assert_eq!(
            template.partition_keys(),
            [
                (KeySource::Query, "service".to_string()),
                (KeySource::Lambda, "customer".to_string())
            ]
        );
        let keys = keys_of(
            r#"{"service":"../../etc"}"#,
            "{service: .service}",
            &[
                (KeySource::Query, "service"),
                (KeySource::Lambda, "customer"),
            ],
        );
        let builder = ObjectKeyBuilder::new("s", template, ".gz");
        let key = builder.partition_key(at(), &mut fastrand::Rng::with_seed(1), &keys);
        let (head, _) = split_uuid(&key, ".gz");
        assert_eq!(
            head,
            "events/service=..%2F..%2Fetc/c=acme%2F..%2Fx/dt=2016-02-05/s=..%2F..%2Fetc/s-1-2016-02-05-07-08-09-"
        );
        assert!(
            key.split('/')
                .all(|segment| segment != ".." && segment != "."),
            "{key}"
        );
    }

    #[test]
    fn partition_keys_are_refused_where_they_cannot_be_filled() {
        let err = KeyTemplate::parse("a/!{partitionKeyFromQuery:service}/").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(
            err.message.contains("needs dynamic partitioning"),
            "{}",
            err.message
        );
        let err = KeyTemplate::parse_error_prefix("e/!{partitionKeyFromLambda:c}/").unwrap_err();
        assert!(
            err.message.contains("error output prefix"),
            "{}",
            err.message
        );
        for bad in [
            "!{partitionKeyFromQuery:}",
            "!{partitionKeyFromQuery:a/b}",
            "!{partitionKeyFromQuery:a b}",
        ] {
            let err = KeyTemplate::parse_partitioned(bad).unwrap_err();
            assert!(err.message.contains("key name"), "{bad}: {}", err.message);
        }
    }

    mod hostile {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn hostile_prefixes_parse_or_are_refused_and_parsed_ones_build_keys(
                prefix in prop_oneof![
                    ".{0,60}",
                    "([a-z/=]{0,6}(!\\{(timestamp|firehose|partitionKeyFromQuery):[a-zA-Z'/-]{0,12}\\}?)?){0,4}",
                ]
            ) {
                for template in [
                    KeyTemplate::parse(&prefix),
                    KeyTemplate::parse_error_prefix(&prefix),
                    KeyTemplate::parse_partitioned(&prefix),
                ]
                    .into_iter()
                    .flatten()
                {
                    let keys = ObjectKeyBuilder::new("s", template, ".gz");
                    let key = keys.key_with_type(Utc::now(), &mut fastrand::Rng::with_seed(1), "s3-failed");
                    prop_assert!(key.ends_with(".gz"));
                }
            }
        }
    }
}
