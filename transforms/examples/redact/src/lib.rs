//! Masks e-mail addresses, IPv4 addresses and payment card numbers (13–19 digits, spaces or
//! dashes allowed, Luhn-checked) inside chosen string fields of JSON records.
//!
//! `config`: `{ "fields": ["message", "user.email"], "mask": ["email", "ipv4", "card"],
//! "replacement": "[REDACTED]" }` (`mask` defaults to all three, `replacement` to
//! `[REDACTED]`). Records that are not JSON objects are `processing-failed`.

use hydrant_transform::{Outcome, Record, Transform};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    fields: Vec<String>,
    #[serde(default = "all_masks")]
    mask: Vec<String>,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn all_masks() -> Vec<String> {
    vec!["email".into(), "ipv4".into(), "card".into()]
}

fn default_replacement() -> String {
    "[REDACTED]".into()
}

struct Redact {
    fields: Vec<Vec<String>>,
    email: Option<Regex>,
    ipv4: Option<Regex>,
    card: Option<Regex>,
    replacement: String,
}

impl Transform for Redact {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if config.fields.is_empty() {
            return Err("`fields` lists no field to redact".into());
        }
        let mut redact = Redact {
            fields: config
                .fields
                .iter()
                .map(|f| {
                    f.trim_start_matches('.')
                        .split('.')
                        .map(str::to_string)
                        .collect()
                })
                .collect(),
            email: None,
            ipv4: None,
            card: None,
            replacement: config.replacement,
        };
        for mask in &config.mask {
            let regex = |pattern: &str| Regex::new(pattern).map_err(|e| e.to_string());
            match mask.as_str() {
                "email" => {
                    redact.email = Some(regex(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")?)
                }
                "ipv4" => {
                    redact.ipv4 = Some(regex(
                        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
                    )?)
                }
                "card" => redact.card = Some(regex(r"\b\d(?:[ -]?\d){12,18}\b")?),
                other => return Err(format!("unknown mask `{other}` (email, ipv4, card)")),
            }
        }
        Ok(redact)
    }

    fn transform(&self, record: &Record) -> Outcome {
        let mut doc: Value = match serde_json::from_slice(&record.data) {
            Ok(doc @ Value::Object(_)) => doc,
            Ok(_) => return Outcome::failed("the record is not a JSON object"),
            Err(e) => return Outcome::failed(format!("the record is not JSON: {e}")),
        };
        for path in &self.fields {
            if let Some(Value::String(text)) = field_mut(&mut doc, path) {
                *text = self.redact(text);
            }
        }
        Outcome::ok(doc.to_string())
    }
}

impl Redact {
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        if let Some(email) = &self.email {
            text = email
                .replace_all(&text, self.replacement.as_str())
                .into_owned();
        }
        if let Some(card) = &self.card {
            text = card
                .replace_all(&text, |found: &regex::Captures<'_>| {
                    if luhn_valid(&found[0]) {
                        self.replacement.clone()
                    } else {
                        found[0].to_string()
                    }
                })
                .into_owned();
        }
        if let Some(ipv4) = &self.ipv4 {
            text = ipv4
                .replace_all(&text, self.replacement.as_str())
                .into_owned();
        }
        text
    }
}

fn field_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |value, key| value.get_mut(key))
}

/// Whether the digits of `candidate` pass the Luhn check (as every card number does).
fn luhn_valid(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

hydrant_transform::export!(Redact);
