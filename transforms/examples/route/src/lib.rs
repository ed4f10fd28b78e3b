//! Emits dynamic partitioning keys from JSON fields, leaving records as they are.
//!
//! `config`: `{ "partition_keys": { "service": "service", "region": "cloud.region" } }`
//! (key name → field path). A record without one of the fields, or that is not a JSON
//! object, is `processing-failed`; numbers and booleans are keyed by their JSON text.

use std::collections::BTreeMap;

use hydrant_transform::{Outcome, Record, Transform};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    partition_keys: BTreeMap<String, String>,
}

struct Route {
    keys: Vec<(String, Vec<String>)>,
}

impl Transform for Route {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if config.partition_keys.is_empty() {
            return Err("`partition_keys` is empty".into());
        }
        Ok(Route {
            keys: config
                .partition_keys
                .into_iter()
                .map(|(key, path)| {
                    let path = path
                        .trim_start_matches('.')
                        .split('.')
                        .map(str::to_string)
                        .collect();
                    (key, path)
                })
                .collect(),
        })
    }

    fn transform(&self, record: &Record) -> Outcome {
        let doc: Value = match serde_json::from_slice(&record.data) {
            Ok(doc @ Value::Object(_)) => doc,
            Ok(_) => return Outcome::failed("the record is not a JSON object"),
            Err(e) => return Outcome::failed(format!("the record is not JSON: {e}")),
        };
        let mut outcome = Outcome::ok(record.data.clone());
        for (key, path) in &self.keys {
            let value = match path.iter().try_fold(&doc, |value, key| value.get(key)) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => {
                    return Outcome::failed(format!(
                        "no `{}` field for partition key `{key}`",
                        path.join(".")
                    ));
                }
                Some(other @ (Value::Number(_) | Value::Bool(_))) => other.to_string(),
                Some(_) => {
                    return Outcome::failed(format!(
                        "`{}` is not a string, number or boolean",
                        path.join(".")
                    ));
                }
            };
            outcome = outcome.with_partition_key(key.clone(), value);
        }
        outcome
    }
}

hydrant_transform::export!(Route);
