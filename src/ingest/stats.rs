//! `GET /streams/{stream}/stats`: a stream's running totals, for operators and the load
//! generator (which waits for delivered to catch up with accepted).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::auth::Principal;
use super::aws_error::{AwsError, AwsErrorType};

pub(super) async fn handle(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    if let Err(denied) = principal.authorize("DescribeDeliveryStream", Some(&name)) {
        return denied.into_response();
    }
    let Some(stream) = state.pipeline.stream(&name) else {
        return AwsError::new(
            AwsErrorType::ResourceNotFound,
            format!("Delivery stream {name} not found."),
        )
        .into_response();
    };
    let counters = &stream.counters;
    Json(json!({
        "accepted_records": counters.accepted.load(Ordering::Relaxed),
        "buffered_records": stream.buffer.buffered_records(),
        "undelivered_records": stream.undelivered(),
        "data_freshness_seconds": stream.data_freshness_seconds(),
        "in_flight_records": counters.in_flight_records.load(Ordering::Relaxed),
        "delivered_records": counters.records.load(Ordering::Relaxed),
        "delivered_objects": counters.objects.load(Ordering::Relaxed),
        "failed_attempts": counters.failed_attempts.load(Ordering::Relaxed),
        "conversion_failures": counters.conversion_failures.load(Ordering::Relaxed),
        "dropped_records": counters.dropped_records.load(Ordering::Relaxed),
        "processing_failures": counters.processing_failures.load(Ordering::Relaxed),
        "partitioning_failures": counters.partitioning_failures.load(Ordering::Relaxed),
        "active_partitions": counters.active_partitions.load(Ordering::Relaxed),
        "partition_buffered_bytes": counters.partition_buffered_bytes.load(Ordering::Relaxed),
    }))
    .into_response()
}
