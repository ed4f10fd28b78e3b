//! The README's configuration reference, checked against the configuration types: every
//! key a section documents is a field of its type and every field is documented; every
//! documented literal default is what the loader fills in; every documented `A–B` range is
//! the one validation enforces.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Visitor};

use super::*;

const README: &str = include_str!("../../README.md");

/// The field names serde knows for a struct, captured from its `Deserialize`.
fn fields_of<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut captured = Vec::new();
    let _ = T::deserialize(FieldNames(&mut captured));
    assert!(
        !captured.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    captured.into_iter().map(str::to_string).collect()
}

/// A deserializer that only records the field list `deserialize_struct` is handed.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

#[derive(Debug)]
struct Captured;

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("captured")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Captured
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        self.0.extend_from_slice(fields);
        Err(Captured)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// One row of a reference table.
#[derive(Debug)]
struct Row {
    /// The key paths the row documents (`buffer.size_mib`; `access_keys.id` for
    /// `access_keys[].id`).
    keys: Vec<String>,
    /// The default cell.
    default: String,
    /// The meaning cell.
    meaning: String,
}

/// The reference tables by section name (`server`, `destination.s3`, ...).
fn reference_tables() -> BTreeMap<String, Vec<Row>> {
    let reference = README
        .split("\n## Configuration reference\n")
        .nth(1)
        .expect("the README has a configuration reference");
    let reference = reference.split("\n## ").next().unwrap();
    let mut tables = BTreeMap::new();
    for section in reference.split("\n### `").skip(1) {
        let name = section.split('`').next().unwrap().to_string();
        let rows = section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
                let keys = cells[0]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|key| key.replace("[]", ""))
                    .collect();
                Row {
                    keys,
                    default: cells[1].to_string(),
                    meaning: cells[2..].join(" | "),
                }
            })
            .collect();
        tables.insert(name, rows);
    }
    tables
}

/// The fields of the type under each key prefix of a section (`""` is the section itself).
type PrefixFields = Vec<(&'static str, BTreeSet<String>)>;

/// For each section: the type of each key prefix it documents.
fn section_types() -> Vec<(&'static str, PrefixFields)> {
    vec![
        ("server", vec![("", fields_of::<ServerConfig>())]),
        (
            "server.auth",
            vec![
                ("", fields_of::<AuthConfig>()),
                ("access_keys", fields_of::<AccessKeyConfig>()),
                ("access_keys.allow", fields_of::<AllowConfig>()),
            ],
        ),
        (
            "spool",
            vec![
                ("", fields_of::<SpoolConfig>()),
                ("encryption", fields_of::<SpoolEncryptionConfig>()),
                ("jetstream", fields_of::<super::JetStreamConfig>()),
                ("jetstream.tls", fields_of::<super::JetStreamTlsConfig>()),
            ],
        ),
        (
            "streams.<name>",
            vec![
                ("", fields_of::<StreamConfig>()),
                ("buffer", fields_of::<BufferConfig>()),
                ("parquet", fields_of::<ParquetConfig>()),
                ("partitioning", fields_of::<super::PartitioningConfig>()),
            ],
        ),
        (
            "processors[].wasm",
            vec![("", fields_of::<WasmProcessorConfig>())],
        ),
        (
            "sources[].file",
            vec![
                ("", fields_of::<super::FileSourceConfig>()),
                ("multiline", fields_of::<super::MultilineConfig>()),
            ],
        ),
        (
            "destination.local",
            vec![("", fields_of::<LocalDestination>())],
        ),
        ("destination.s3", vec![("", fields_of::<S3Destination>())]),
        (
            "destination.postgres",
            vec![("", fields_of::<PostgresDestination>())],
        ),
        (
            "destination.opensearch",
            vec![
                ("", fields_of::<SearchDestination>()),
                ("backup", fields_of::<SearchBackup>()),
            ],
        ),
        (
            "destination.http_endpoint",
            vec![
                ("", fields_of::<HttpEndpointDestination>()),
                ("backup", fields_of::<SearchBackup>()),
            ],
        ),
    ]
}

#[test]
fn every_field_is_documented_and_every_documented_key_exists() {
    let tables = reference_tables();
    let sections = section_types();
    let documented: BTreeSet<&str> = tables.keys().map(String::as_str).collect();
    let typed: BTreeSet<&str> = sections.iter().map(|(name, _)| *name).collect();
    assert_eq!(documented, typed, "reference sections");
    for (section, prefixes) in &sections {
        let keys: Vec<&String> = tables[*section].iter().flat_map(|row| &row.keys).collect();
        for (prefix, fields) in prefixes {
            let next: BTreeSet<String> = keys
                .iter()
                .filter_map(|key| match *prefix {
                    "" => Some(key.split('.').next().unwrap().to_string()),
                    prefix => key
                        .strip_prefix(prefix)
                        .and_then(|rest| rest.strip_prefix('.'))
                        .map(|rest| rest.split('.').next().unwrap().to_string()),
                })
                .collect();
            // A section that documents a nested key only through its parent (`tls`) is
            // checked at the parent.
            if next.is_empty() && !prefix.is_empty() {
                continue;
            }
            assert_eq!(
                &next, fields,
                "README section `{section}`, keys under `{prefix}`: documented (left) vs. fields (right)"
            );
        }
    }
}

/// A configuration with `key: value` set in `section` (nested as the key's dots say; left
/// out when `value` is `None`), and everything else a valid minimal stream needs; `None` for
/// sections that need more than that.
fn config_with(section: &str, key: &str, value: Option<&str>) -> Option<String> {
    let (key, skeleton) = match section {
        "server" => (key, "server:\n  {K}\nstreams:\n  s:\n    {L}\n"),
        "spool" => (key, "spool:\n  {K}\nstreams:\n  s:\n    {L}\n"),
        "streams.<name>" if key.starts_with("parquet.") => (
            key.strip_prefix("parquet.").unwrap(),
            "streams:\n  s:\n    format: parquet\n    parquet:\n      schema: infer\n      {K}\n    {L}\n",
        ),
        "streams.<name>" if key.starts_with("partitioning.") => (
            key.strip_prefix("partitioning.").unwrap(),
            "streams:\n  s:\n    partitioning:\n      query: '{a: .a}'\n      {K}\n    destination: { local: { path: x, prefix: '!{partitionKeyFromQuery:a}/' } }\n",
        ),
        "streams.<name>" if key == "gzip_members" => (
            key,
            "streams:\n  s:\n    compression: gzip\n    {K}\n    {L}\n",
        ),
        "streams.<name>" => (key, "streams:\n  s:\n    {K}\n    {L}\n"),
        "processors[].wasm" => (
            key,
            "streams:\n  s:\n    processors:\n      - wasm:\n          module: m.wasm\n          {K}\n    {L}\n",
        ),
        "sources[].file" if key.starts_with("multiline.") => (
            key.strip_prefix("multiline.").unwrap(),
            "streams:\n  s:\n    sources:\n      - file:\n          include: [x.log]\n          multiline:\n            start_pattern: '^x'\n            {K}\n    {L}\n",
        ),
        "sources[].file" => (
            key,
            "streams:\n  s:\n    sources:\n      - file:\n          include: [x.log]\n          {K}\n    {L}\n",
        ),
        "destination.local" => (
            key,
            "streams:\n  s:\n    destination:\n      local:\n        path: x\n        {K}\n",
        ),
        "destination.s3" => (
            key,
            "streams:\n  s:\n    destination:\n      s3:\n        bucket: b\n        {K}\n",
        ),
        "destination.postgres" => (
            key,
            "streams:\n  s:\n    destination:\n      postgres:\n        user: u\n        table: t\n        columns: [ { name: a } ]\n        {K}\n",
        ),
        "destination.opensearch" => (
            key,
            "streams:\n  s:\n    destination:\n      opensearch:\n        endpoint: http://127.0.0.1:9200\n        index: i\n        {K}\n",
        ),
        "destination.http_endpoint" => (
            key,
            "streams:\n  s:\n    destination:\n      http_endpoint:\n        url: http://127.0.0.1:8080/f\n        {K}\n",
        ),
        _ => return None,
    };
    let text = skeleton.replace("{L}", "destination: { local: { path: x } }");
    Some(match value {
        Some(value) => {
            let mut nested = format!("{}: {value}", key.rsplit('.').next().unwrap());
            for part in key.rsplit('.').skip(1) {
                nested = format!("{part}: {{ {nested} }}");
            }
            text.replace("{K}", &nested)
        }
        None => text
            .lines()
            .filter(|line| !line.contains("{K}"))
            // `server:` and `spool:` hold only the key: left out with it.
            .filter(|line| !matches!(*line, "server:" | "spool:"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// The configuration `text` describes, without where each value was written.
fn parsed_without_locations(text: &str) -> Result<String, String> {
    let config = parse_config(text, "reference.yaml").map_err(|e| e.to_string())?;
    let debug = format!("{config:?}");
    // Drop every `Location { ... }` (they differ by where a value was written).
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug.as_str();
    while let Some(at) = rest.find("Location {") {
        out.push_str(&rest[..at]);
        let mut depth = 0;
        let mut end = at;
        for (i, c) in rest[at..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = at + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The rows whose single key can be set alone (no list element, one key per row).
fn settable_rows() -> Vec<(String, String, Row)> {
    let mut out = Vec::new();
    for (section, rows) in reference_tables() {
        for row in rows {
            if row.keys.len() == 1 && !row.keys[0].contains("access_keys") {
                let key = row.keys[0].clone();
                out.push((section.clone(), key, row));
            }
        }
    }
    out
}

#[test]
fn every_documented_default_is_the_loaded_default() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (section, key, row) in settable_rows() {
        // Only a default that is one literal value (`5`, `none`, `local: { ... }`).
        let literal = row
            .default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'));
        let Some(literal) = literal.filter(|l| !l.contains('`')) else {
            continue;
        };
        // The name of an environment variable the default is read from (`AWS_REGION`).
        if literal.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        let value = if literal.contains('!') {
            format!("\"{literal}\"")
        } else if literal.contains(": ") {
            format!("{{ {literal} }}")
        } else {
            literal.to_string()
        };
        let Some(with_default) = config_with(&section, &key, Some(&value)) else {
            continue;
        };
        let without = config_with(&section, &key, None).unwrap();
        let with = match parsed_without_locations(&with_default) {
            Ok(with) => with,
            // A key of an optional section with required siblings (`encryption.key`).
            Err(e) if e.contains("missing field") => continue,
            Err(e) => panic!("`{section}` `{key}: {value}`:\n{with_default}\n{e}"),
        };
        let left_out = parsed_without_locations(&without)
            .unwrap_or_else(|e| panic!("`{section}` without `{key}`:\n{without}\n{e}"));
        if with != left_out {
            wrong.push(format!("README `{section}`: `{key}` is documented with default `{literal}`, which is not what the loader fills in"));
        }
        checked += 1;
    }
    assert_eq!(wrong, Vec::<String>::new());
    assert!(checked >= 40, "only {checked} defaults checked");
}

/// The one `A–B` range a meaning states, if it states exactly one.
fn documented_range(meaning: &str) -> Option<(f64, f64)> {
    let ranges: Vec<(f64, f64)> = meaning
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';' || c == ',')
        .filter_map(|word| {
            let (low, high) = word.split_once('–')?;
            Some((low.parse().ok()?, high.parse().ok()?))
        })
        .collect();
    match ranges.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

#[test]
fn every_documented_range_is_the_validated_range() {
    let mut checked = 0;
    for (section, key, row) in settable_rows() {
        // Ranges of keys that take a number (their default is one).
        let numeric_default = row.default.trim_matches('`').parse::<f64>().is_ok();
        let Some((low, high)) = documented_range(&row.meaning).filter(|_| numeric_default) else {
            continue;
        };
        let name = key.rsplit('.').next().unwrap();
        let problem_about = |value: f64| -> Option<String> {
            let text = config_with(&section, &key, Some(&value.to_string()))?;
            match parse_config(&text, "range.yaml") {
                Ok(_) => None,
                Err(error) => {
                    let error = error.to_string();
                    let names_it =
                        error.contains(&format!("`{name}`")) || error.contains(&format!("`{key}`"));
                    names_it.then_some(error)
                }
            }
        };
        assert!(
            problem_about(high).is_none(),
            "README `{section}`: `{key}` documents {high} as allowed, but: {:?}",
            problem_about(high)
        );
        assert!(
            problem_about(high + 1.0).is_some(),
            "README `{section}`: `{key}` documents at most {high}, but {} is taken",
            high + 1.0
        );
        if low >= 1.0 {
            assert!(
                problem_about(low).is_none(),
                "README `{section}`: `{key}` documents {low} as allowed, but: {:?}",
                problem_about(low)
            );
            let below = if low.fract() == 0.0 {
                low - 1.0
            } else {
                low / 2.0
            };
            assert!(
                problem_about(below).is_some(),
                "README `{section}`: `{key}` documents at least {low}, but {below} is taken"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} ranges checked");
}
