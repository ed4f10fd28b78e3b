//! The status console: `GET /` serves one page (embedded in the binary: no build step, no
//! CDN) that polls `GET /console/status`, the JSON of every stream the caller may describe —
//! rates, backlog, data freshness, error output, the last delivery, health with the recent
//! errors, and the last hour's samples. `hydrant status` prints the same JSON as a table.

mod history;
pub mod terminal;

pub use history::{History, Sample, run_sampler};

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::deliver::HealthSnapshot;
use crate::ingest::ApiState;
use crate::ingest::auth::Principal;

/// The page, with its styles and script inline.
const PAGE: &str = include_str!("page.html");

/// Path of the console's JSON.
pub const STATUS_PATH: &str = "/console/status";

/// The console's JSON: what the page shows.
#[derive(Debug, Serialize)]
pub struct ConsoleStatus {
    /// When this was put together (Unix milliseconds).
    pub generated_at_ms: i64,
    /// Seconds between the history's samples.
    pub resolution_seconds: u64,
    /// Every stream the caller may describe, by name.
    pub streams: Vec<StreamStatus>,
}

/// One stream in the console.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    /// Its name.
    pub name: String,
    /// Where it delivers (an ARN, as `DescribeDeliveryStream` gives it).
    pub destination: String,
    /// The endpoint reached, when it is not AWS's.
    pub endpoint: Option<String>,
    /// Records accepted per second, over the last sample.
    pub rate_in: f64,
    /// Records delivered per second, over the last sample.
    pub rate_out: f64,
    /// Records acknowledged since start.
    pub accepted_records: u64,
    /// Records delivered since start.
    pub delivered_records: u64,
    /// Records accepted and not yet delivered.
    pub undelivered_records: u64,
    /// Age of the oldest undelivered record, in seconds (0 when nothing waits).
    pub data_freshness_seconds: f64,
    /// Records sent to the error output since start.
    pub error_output_records: u64,
    /// Requests sent to the destination since start, and how many failed.
    pub attempts: u64,
    /// Failed requests since start.
    pub failed_attempts: u64,
    /// Delivery health, the last delivery and the recent errors.
    #[serde(flatten)]
    pub health: HealthSnapshot,
    /// The last hour, oldest first.
    pub history: Vec<Sample>,
}

/// Whether a request is the console's (`GET /`, `GET /console/status`), whose callers are
/// browsers: asked for credentials rather than answered AWS's error when they send none.
pub fn is_console_request(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET && (path == "/" || path == STATUS_PATH)
}

/// The answer that makes a browser ask for an access key id and secret.
pub fn ask_for_credentials() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="Hydrant console (access key id and secret)", charset="UTF-8""#,
        )],
        "the console needs an access key id and its secret\n",
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// `GET /console/status`: the page's data.
pub async fn status(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Json<ConsoleStatus> {
    let history = state.history.as_deref();
    let streams = state
        .pipeline
        .sorted_names()
        .iter()
        .filter(|name| principal.may("DescribeDeliveryStream", Some(name)))
        .filter_map(|name| state.pipeline.stream(name))
        .map(|stream| {
            let series = history.map(|h| h.series(&stream.name)).unwrap_or_default();
            let latest = series.last();
            let counters = &stream.counters;
            let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            StreamStatus {
                name: stream.name.clone(),
                destination: stream.summary.destination.arn.clone(),
                endpoint: stream.summary.destination.endpoint.clone(),
                rate_in: latest.map_or(0.0, |s| s.rate_in),
                rate_out: latest.map_or(0.0, |s| s.rate_out),
                accepted_records: read(&counters.accepted),
                delivered_records: read(&counters.records),
                undelivered_records: stream.undelivered(),
                data_freshness_seconds: stream.data_freshness_seconds(),
                error_output_records: read(&counters.error_output_records),
                attempts: read(&counters.attempts),
                failed_attempts: read(&counters.failed_attempts),
                health: stream.health.snapshot(),
                history: series,
            }
        })
        .collect();
    Json(ConsoleStatus {
        generated_at_ms: chrono::Utc::now().timestamp_millis(),
        resolution_seconds: history.map_or(0, |h| h.resolution().as_secs()),
        streams,
    })
}
