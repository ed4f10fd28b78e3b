//! `POST /streams/{stream}/records`: one record per line, for curl and log shippers.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Principal;
use super::aws_error::{AwsError, AwsErrorType};
use super::record_limits::{MAX_NDJSON_BODY_BYTES, MAX_NDJSON_RECORDS, MAX_RECORD_BYTES};
use super::stream_name::check_stream_name;
use super::{ApiState, now_ms};

/// Takes every non-empty line of the body as a record (a trailing `\r` is dropped). Answers
/// `200 {"accepted": N}`; when the stream's buffers stay full, `503` with the number of
/// leading lines that were accepted, so a shipper can resend only the rest.
pub(super) async fn handle(
    State(state): State<ApiState>,
    Path(stream_name): Path<String>,
    request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let response = match accept(&state, &stream_name, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    ::metrics::histogram!(crate::metrics::API_CALL_SECONDS, "operation" => "PostRecords")
        .record(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    state: &ApiState,
    stream_name: &str,
    request: Request,
) -> Result<Response, AwsError> {
    if let Err(reason) = check_stream_name(stream_name) {
        return Err(AwsError::new(
            AwsErrorType::Validation,
            format!("stream name `{stream_name}` in the path is invalid: {reason}"),
        ));
    }
    if let Some(principal) = request.extensions().get::<Principal>() {
        principal.authorize("PutRecordBatch", Some(stream_name))?;
    }
    let stream = state.pipeline.stream(stream_name).ok_or_else(|| {
        AwsError::new(
            AwsErrorType::ResourceNotFound,
            format!("Delivery stream {stream_name} not found."),
        )
    })?;
    let body = super::body::read_body(request.into_body(), MAX_NDJSON_BODY_BYTES).await?;
    let lines = split_records(&body)?;
    let admission = stream
        .admit(&lines, now_ms(), state.pipeline.backpressure_wait)
        .await
        .map_err(|error| super::firehose::spool_unavailable(stream_name, &error))?;
    let offered = lines.len();
    drop(lines);
    drop(body);
    let taken = admission
        .durable()
        .await
        .map_err(|error| super::firehose::spool_unavailable(stream_name, &error))?
        .count;
    let (status, body) = if taken == offered {
        (StatusCode::OK, json!({ "accepted": taken }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "__type": AwsErrorType::ServiceUnavailable.name(),
                "message": "Slow down.",
                "accepted": taken,
            }),
        )
    };
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status != StatusCode::OK {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The records of an NDJSON body: every non-empty line (a trailing `\r` dropped), each at
/// most [`MAX_RECORD_BYTES`], at most [`MAX_NDJSON_RECORDS`] of them.
///
/// Line ends are found with `memchr` (several bytes per instruction): a byte-at-a-time split
/// was 3 % of the service's CPU under the NDJSON load.
fn split_records(body: &[u8]) -> Result<Vec<&[u8]>, AwsError> {
    let mut lines = Vec::new();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (number, end) in ends.enumerate() {
        let line = &body[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(AwsError::new(
                AwsErrorType::Validation,
                format!(
                    "line {} is {} bytes; a record may be at most {MAX_RECORD_BYTES} bytes",
                    number + 1,
                    line.len()
                ),
            ));
        }
        if lines.len() == MAX_NDJSON_RECORDS {
            return Err(AwsError::new(
                AwsErrorType::Validation,
                format!(
                    "the body holds more than {MAX_NDJSON_RECORDS} records; send at most {MAX_NDJSON_RECORDS} lines per request"
                ),
            ));
        }
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_body_splits_into_its_non_empty_lines(
            body in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..2048)
        ) {
            let lines = split_records(&body).unwrap();
            let expected: Vec<&[u8]> = body
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty())
                .collect();
            prop_assert_eq!(lines, expected);
        }
    }

    #[test]
    fn too_long_lines_and_too_many_lines_are_named() {
        let long = vec![b'x'; MAX_RECORD_BYTES + 1];
        let error = split_records(&[b"ok\n".as_slice(), &long].concat()).unwrap_err();
        assert_eq!(error.kind, AwsErrorType::Validation);
        assert!(
            error.message.starts_with("line 2 is 1024001 bytes"),
            "{}",
            error.message
        );
        let many = b"r\n".repeat(MAX_NDJSON_RECORDS + 1);
        let error = split_records(&many).unwrap_err();
        assert!(
            error.message.contains("more than 50000 records"),
            "{}",
            error.message
        );
    }
}
