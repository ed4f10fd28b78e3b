//! The ingest API: Firehose's data plane (AWS JSON 1.1 on `POST /`), a plain NDJSON endpoint
//! for curl and log shippers, and a health check.

mod admin;
pub mod auth;
pub mod aws_error;
mod body;
mod firehose;
mod ndjson;
mod record_limits;
mod stats;
pub mod stream_name;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::IntoResponse as _;
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::pipeline::Pipeline;

/// `Content-Type` of AWS JSON 1.1 requests and answers.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The running streams.
    pub pipeline: Arc<Pipeline>,
    /// Bounds requests processed at once.
    pub request_slots: Arc<Semaphore>,
    /// Bytes of request memory available (one permit per byte): bounds what request bodies
    /// hold at once, whatever the number of connections.
    pub request_memory: Arc<Semaphore>,
    /// Renders the Prometheus metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Checks callers' keys; `None` when unsigned calls are accepted.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// How long a request body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// The console's last hour; `None` when the console is disabled.
    pub history: Option<Arc<crate::console::History>>,
    /// The configuration file the service was started from, read again by a reload.
    pub config_path: Option<Arc<std::path::PathBuf>>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let (root, console) = match state.history {
        Some(_) => (
            post(firehose::handle).get(crate::console::page),
            Router::new().route(crate::console::STATUS_PATH, get(crate::console::status)),
        ),
        None => (post(firehose::handle), Router::new()),
    };
    Router::new()
        .route("/", root)
        .merge(console)
        .route("/streams/{stream}/records", post(ndjson::handle))
        .route("/streams/{stream}/stats", get(stats::handle))
        .route("/metrics", get(render_metrics))
        .route("/admin/reload", post(admin::reload))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route("/health", get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(state.clone(), limit_and_tag))
        .with_state(state)
}

/// Holds the request's share of request memory, receives its body (within
/// `body_read_timeout`), then holds a request slot while it is processed; tags every answer
/// with a request id as AWS services do. The body arrives before the slot is taken, so a
/// client that sends slowly holds only its memory share, never a slot that producers need.
async fn limit_and_tag(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // The body and the records decoded from it; without a length, assume the largest body.
    let body_bytes = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(record_limits::MAX_NDJSON_BODY_BYTES)
        .min(record_limits::MAX_NDJSON_BODY_BYTES);
    let share = u32::try_from((2 * body_bytes).max(4096)).unwrap_or(u32::MAX);
    let _memory = state.request_memory.acquire_many(share).await;
    let (parts, body) = request.into_parts();
    let limit = record_limits::MAX_NDJSON_BODY_BYTES;
    let receive = body::receive_body(body, body_bytes, limit);
    let body = match tokio::time::timeout(state.body_read_timeout, receive).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return tag(error.into_response()),
        Err(_) => {
            return tag(
                aws_error::AwsError::new(
                    aws_error::AwsErrorType::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} s (server.body_read_timeout_seconds)",
                        state.body_read_timeout.as_secs()
                    ),
                )
                .into_response(),
            );
        }
    };
    let _slot = state.request_slots.acquire().await;
    tag(next.run(Request::from_parts(parts, Body::from(body))).await)
}

/// Gives `response` a request id, as AWS services do.
fn tag(mut response: Response) -> Response {
    let id = format!("{:032x}", fastrand::u128(..));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

/// `GET /metrics`: Prometheus text format, every stream's totals published first.
async fn render_metrics(
    State(state): State<ApiState>,
    Extension(principal): Extension<auth::Principal>,
) -> Response {
    use axum::response::IntoResponse as _;
    if let Err(denied) = principal.authorize("GetMetrics", None) {
        return denied.into_response();
    }
    for stream in state.pipeline.streams() {
        stream.publish_metrics();
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Current time as Unix milliseconds: records' approximate arrival timestamp.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
