//! Drops JSON records whose field matches a condition (or, with `"keep": true`, keeps only
//! those).
//!
//! `config`: `{ "field": "level", "equals": "DEBUG" }`; conditions: `equals` (any JSON
//! value), `in` (a list), `matches` (a regular expression, on strings), `exists` (true or
//! false). Records that are not JSON objects are `processing-failed`.

use hydrant_transform::{Outcome, Record, Transform};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    field: String,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default, rename = "in")]
    one_of: Option<Vec<Value>>,
    #[serde(default)]
    matches: Option<String>,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    keep: bool,
}

enum Condition {
    Equals(Value),
    OneOf(Vec<Value>),
    Matches(Regex),
    Exists(bool),
}

struct Filter {
    path: Vec<String>,
    condition: Condition,
    keep: bool,
}

impl Transform for Filter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        let mut conditions = Vec::new();
        if let Some(value) = config.equals {
            conditions.push(Condition::Equals(value));
        }
        if let Some(values) = config.one_of {
            conditions.push(Condition::OneOf(values));
        }
        if let Some(pattern) = config.matches {
            let regex = Regex::new(&pattern).map_err(|e| format!("`matches`: {e}"))?;
            conditions.push(Condition::Matches(regex));
        }
        if let Some(exists) = config.exists {
            conditions.push(Condition::Exists(exists));
        }
        if conditions.len() != 1 {
            return Err("give exactly one of `equals`, `in`, `matches` or `exists`".into());
        }
        Ok(Filter {
            path: config
                .field
                .trim_start_matches('.')
                .split('.')
                .map(str::to_string)
                .collect(),
            condition: conditions.remove(0),
            keep: config.keep,
        })
    }

    fn transform(&self, record: &Record) -> Outcome {
        let doc: Value = match serde_json::from_slice(&record.data) {
            Ok(doc @ Value::Object(_)) => doc,
            Ok(_) => return Outcome::failed("the record is not a JSON object"),
            Err(e) => return Outcome::failed(format!("the record is not JSON: {e}")),
        };
        let field = self.path.iter().try_fold(&doc, |value, key| value.get(key));
        let matched = match (&self.condition, field) {
            (Condition::Exists(wanted), found) => found.is_some() == *wanted,
            (Condition::Equals(value), Some(found)) => found == value,
            (Condition::OneOf(values), Some(found)) => values.contains(found),
            (Condition::Matches(regex), Some(Value::String(text))) => regex.is_match(text),
            _ => false,
        };
        if matched != self.keep {
            Outcome::dropped()
        } else {
            Outcome::ok(record.data.clone())
        }
    }
}

hydrant_transform::export!(Filter);
