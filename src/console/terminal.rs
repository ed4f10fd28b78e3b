//! `hydrant status`: the console's table in a terminal, read from a running service's
//! `GET /console/status`.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::Value;

use super::STATUS_PATH;

/// Arguments of `hydrant status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:4573")]
    pub endpoint: String,
    /// `ACCESS_KEY_ID:SECRET` of a key allowed `DescribeDeliveryStream`, when the service has
    /// `server.auth` (or set `HYDRANT_CREDENTIALS`).
    #[arg(long, env = "HYDRANT_CREDENTIALS", hide_env_values = true)]
    pub credentials: Option<String>,
    /// Print the JSON as the service answered it.
    #[arg(long)]
    pub json: bool,
}

/// Fetches the status and prints it.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("{}{STATUS_PATH}", args.endpoint.trim_end_matches('/'));
    let request = reqwest::Client::new().get(&url);
    let response = call_service(request, args.credentials.as_deref(), &url).await?;
    let code = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    match code.as_u16() {
        200 => {}
        401 | 403 => anyhow::bail!(
            "{url} refused the call ({code}): give --credentials ACCESS_KEY_ID:SECRET of a key allowed DescribeDeliveryStream"
        ),
        404 => anyhow::bail!(
            "{url} is not there ({code}): is `server.console.enabled` false, or is this not a Hydrant service?"
        ),
        _ => anyhow::bail!("{url} answered {code}: {body}"),
    }
    let status: Value =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status, chrono::Utc::now().timestamp_millis()));
    }
    Ok(())
}

/// Sends `request` (to `url`) to a running service, with `credentials` (`ID:SECRET`) as a
/// Bearer key when given.
pub(crate) async fn call_service(
    mut request: reqwest::RequestBuilder,
    credentials: Option<&str>,
    url: &str,
) -> anyhow::Result<reqwest::Response> {
    if let Some(credentials) = credentials {
        request = request.bearer_auth(credentials);
    }
    request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}: is the service running there?"))
}

/// The status as a table with one row per stream, then each failing stream's last error.
pub fn table(status: &Value, now_ms: i64) -> String {
    let streams = status["streams"].as_array().cloned().unwrap_or_default();
    let mut rows = vec![
        [
            "STREAM",
            "HEALTH",
            "IN/S",
            "OUT/S",
            "BACKLOG",
            "FRESHNESS",
            "ERROR OUTPUT",
            "LAST DELIVERED",
        ]
        .map(String::from),
    ];
    for stream in &streams {
        let number = |key: &str| stream[key].as_f64().unwrap_or(0.0);
        let last = match stream["last_delivered"].as_object() {
            Some(last) => format!(
                "{} ({} ago)",
                last["target"].as_str().unwrap_or(""),
                ago(now_ms - last["at_ms"].as_i64().unwrap_or(now_ms))
            ),
            None => "-".into(),
        };
        rows.push([
            stream["name"].as_str().unwrap_or("").to_string(),
            stream["state"].as_str().unwrap_or("").to_string(),
            format!("{:.1}", number("rate_in")),
            format!("{:.1}", number("rate_out")),
            format!("{}", number("undelivered_records") as u64),
            format!("{:.1} s", number("data_freshness_seconds")),
            format!("{}", number("error_output_records") as u64),
            last,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for stream in &streams {
        if stream["state"] == "failing"
            && let Some(error) = stream["recent_errors"].get(0)
        {
            let _ = writeln!(
                out,
                "{}: failing since {} ago: {}",
                stream["name"].as_str().unwrap_or(""),
                ago(now_ms - error["at_ms"].as_i64().unwrap_or(now_ms)),
                error["message"].as_str().unwrap_or("")
            );
        }
    }
    if streams.is_empty() {
        out.push_str("no streams (or none this key may describe)\n");
    }
    out
}

/// `elapsed_ms` as people say it.
fn ago(elapsed_ms: i64) -> String {
    let seconds = elapsed_ms.max(0) / 1000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_has_a_row_per_stream_and_names_the_failing_ones_error() {
        let status = json!({
            "streams": [
                {"name": "events", "state": "ok", "rate_in": 1500.25, "rate_out": 1499.0,
                 "undelivered_records": 42, "data_freshness_seconds": 1.5,
                 "error_output_records": 3,
                 "last_delivered": {"at_ms": 95_000, "target": "events/2026/x.gz", "records": 10},
                 "recent_errors": []},
                {"name": "audit", "state": "failing", "rate_in": 3.0, "rate_out": 0.0,
                 "undelivered_records": 900, "data_freshness_seconds": 125.0,
                 "error_output_records": 0, "last_delivered": null,
                 "recent_errors": [{"at_ms": 40_000, "message": "ServiceUnavailable writing k to s3://audit: connection refused"}]}
            ]
        });
        let table = table(&status, 100_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("STREAM"), "{table}");
        assert!(
            lines[1].starts_with("events") && lines[1].contains("1500.2"),
            "{table}"
        );
        assert!(lines[1].contains("events/2026/x.gz (5 s ago)"), "{table}");
        assert!(
            lines[2].starts_with("audit") && lines[2].contains("failing"),
            "{table}"
        );
        assert!(
            lines[2].contains("125.0 s") && lines[2].contains("900"),
            "{table}"
        );
        assert_eq!(
            lines[3],
            "audit: failing since 1 min ago: ServiceUnavailable writing k to s3://audit: connection refused"
        );
        assert_eq!(
            super::table(&json!({"streams": []}), 0),
            "STREAM  HEALTH  IN/S  OUT/S  BACKLOG  FRESHNESS  ERROR OUTPUT  LAST DELIVERED\nno streams (or none this key may describe)\n"
        );
    }
}
