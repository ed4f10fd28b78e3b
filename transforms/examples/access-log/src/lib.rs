//! Parses NGINX / Apache access-log lines (combined or common log format) into JSON
//! objects; lines that are not access-log lines are `processing-failed`.
//!
//! `config`: `{ "keep_raw": false }` (`true` adds the original line as `raw`).

use hydrant_transform::{Outcome, Record, Transform};
use regex::Regex;
use serde_json::{Map, Value, json};

struct AccessLog {
    line: Regex,
    keep_raw: bool,
}

impl Transform for AccessLog {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Value =
            serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
        let keep_raw = match config.get("keep_raw") {
            None => false,
            Some(Value::Bool(keep)) => *keep,
            Some(other) => return Err(format!("`keep_raw` must be true or false, got {other}")),
        };
        // host ident user [time] "request" status bytes ["referer" "user agent"]
        let line = Regex::new(
            r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-)(?: "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)")?\s*$"#,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { line, keep_raw })
    }

    fn transform(&self, record: &Record) -> Outcome {
        let Ok(text) = std::str::from_utf8(&record.data) else {
            return Outcome::failed("the line is not UTF-8");
        };
        let text = text.trim_end_matches(['\n', '\r']);
        let Some(fields) = self.line.captures(text) else {
            return Outcome::failed("not an access-log line (combined or common log format)");
        };
        let time_local = &fields[4];
        let Ok(time) = chrono::DateTime::parse_from_str(time_local, "%d/%b/%Y:%H:%M:%S %z") else {
            return Outcome::failed(format!("unreadable time `{time_local}`"));
        };
        let mut out = Map::new();
        out.insert("remote_addr".into(), json!(&fields[1]));
        out.insert("remote_user".into(), dash_is_null(&fields[3]));
        out.insert("time".into(), json!(time.to_rfc3339()));
        let request = &fields[5];
        let mut parts = request.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(method), Some(path), protocol) if !method.is_empty() => {
                out.insert("method".into(), json!(method));
                out.insert("path".into(), json!(path));
                out.insert(
                    "protocol".into(),
                    protocol.map_or(Value::Null, |p| json!(p)),
                );
            }
            _ => {
                out.insert("request".into(), json!(request));
            }
        }
        out.insert(
            "status".into(),
            json!(fields[6].parse::<u16>().unwrap_or_default()),
        );
        out.insert(
            "bytes".into(),
            fields[7].parse::<u64>().map_or(json!(0), |b| json!(b)),
        );
        if let Some(referer) = fields.get(8) {
            out.insert("referer".into(), dash_is_null(referer.as_str()));
        }
        if let Some(agent) = fields.get(9) {
            out.insert("user_agent".into(), dash_is_null(agent.as_str()));
        }
        if self.keep_raw {
            out.insert("raw".into(), json!(text));
        }
        Outcome::ok(Value::Object(out).to_string())
    }
}

fn dash_is_null(value: &str) -> Value {
    if value == "-" {
        Value::Null
    } else {
        json!(value)
    }
}

hydrant_transform::export!(AccessLog);
