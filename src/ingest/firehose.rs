//! Firehose's data-plane and read-only control-plane operations over AWS JSON 1.1.

use std::borrow::Cow;
use std::io::Write as _;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::auth::Principal;
use super::aws_error::{AwsError, AwsErrorType};
use super::record_limits::*;
use super::stream_name::check_stream_name;
use super::{AMZ_JSON, ApiState, now_ms};
use crate::pipeline::{DeliveryStream, DestinationSummary, Pipeline};

const TARGET_PREFIX: &str = "Firehose_20150804.";
const SLOW_DOWN: &str = "Slow down.";

/// Dispatches on `X-Amz-Target`.
pub(super) async fn handle(State(state): State<ApiState>, request: Request) -> Response {
    match dispatch(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn dispatch(state: &ApiState, request: Request) -> Result<Response, AwsError> {
    let started = std::time::Instant::now();
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let operation = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
        AwsError::new(
            AwsErrorType::UnknownOperation,
            if target.is_empty() {
                "missing X-Amz-Target header; expected Firehose_20150804.<Operation>".to_string()
            } else {
                format!("unknown X-Amz-Target `{target}`; expected Firehose_20150804.<Operation>")
            },
        )
    })?;
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anyone);
    let body = super::body::read_body(request.into_body(), MAX_FIREHOSE_BODY_BYTES).await?;
    let caller = Caller {
        pipeline: &state.pipeline,
        principal: &principal,
    };
    let (name, answer) = match operation {
        "PutRecord" => ("PutRecord", put_record(caller, body).await),
        "PutRecordBatch" => ("PutRecordBatch", put_record_batch(caller, body).await),
        "ListDeliveryStreams" => ("ListDeliveryStreams", list_delivery_streams(caller, &body)),
        "DescribeDeliveryStream" => (
            "DescribeDeliveryStream",
            describe_delivery_stream(caller, &body),
        ),
        other => {
            return Err(AwsError::new(
                AwsErrorType::UnknownOperation,
                format!(
                    "operation `{other}` is not supported; Hydrant serves PutRecord, PutRecordBatch, \
                 ListDeliveryStreams and DescribeDeliveryStream"
                ),
            ));
        }
    };
    ::metrics::histogram!(crate::metrics::API_CALL_SECONDS, "operation" => name)
        .record(started.elapsed().as_secs_f64());
    answer
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, AwsError> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|error| {
        AwsError::new(
            AwsErrorType::Serialization,
            format!("request body is not a valid JSON request for this operation: {error}"),
        )
    })
}

/// The streams a call reaches and who makes it.
#[derive(Clone, Copy)]
struct Caller<'p> {
    pipeline: &'p Pipeline,
    principal: &'p Principal,
}

/// The stream `name` that operation `action` works on, once the caller may do that.
fn lookup<'p>(
    caller: Caller<'p>,
    action: &str,
    name: Option<&str>,
) -> Result<std::sync::Arc<DeliveryStream>, AwsError> {
    let pipeline = caller.pipeline;
    let Some(name) = name else {
        return Err(AwsError::constraint(
            "deliveryStreamName",
            "null",
            "Member must not be null",
        ));
    };
    caller.principal.authorize(action, Some(name))?;
    if let Err(reason) = check_stream_name(name) {
        return Err(AwsError::constraint(
            "deliveryStreamName",
            name,
            &format!(
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and length 1-64 ({reason})"
            ),
        ));
    }
    pipeline.stream(name).ok_or_else(|| {
        AwsError::new(
            AwsErrorType::ResourceNotFound,
            format!(
                "Delivery stream {name} not found. Configured streams: {}",
                pipeline.sorted_names().join(", ")
            ),
        )
    })
}

#[derive(Deserialize)]
struct RecordInput<'a> {
    #[serde(rename = "Data", borrow, default)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PutRecordInput<'a> {
    #[serde(rename = "DeliveryStreamName", borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(rename = "Record", borrow, default)]
    record: Option<RecordInput<'a>>,
}

#[derive(Deserialize)]
struct PutRecordBatchInput<'a> {
    #[serde(rename = "DeliveryStreamName", borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(rename = "Records", borrow, default)]
    records: Option<Vec<RecordInput<'a>>>,
}

/// Decodes every record's base64 `Data` into one buffer; `ends[i]` is where record `i` ends.
fn decode_records(
    records: &[RecordInput<'_>],
    member: impl Fn(usize) -> String,
) -> Result<(Vec<u8>, Vec<usize>), AwsError> {
    let estimate: usize = records
        .iter()
        .map(|r| r.data.as_ref().map_or(0, |d| d.len() / 4 * 3 + 3))
        .sum();
    let mut data = Vec::with_capacity(estimate);
    let mut ends = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let Some(encoded) = record.data.as_deref() else {
            return Err(AwsError::constraint(
                &member(i),
                "null",
                "Member must not be null",
            ));
        };
        let start = data.len();
        base64::engine::general_purpose::STANDARD
            .decode_vec(encoded.as_bytes(), &mut data)
            .map_err(|error| {
                AwsError::new(
                    AwsErrorType::Serialization,
                    format!("{} is not valid base64: {error}", member(i)),
                )
            })?;
        let len = data.len() - start;
        if len > MAX_RECORD_BYTES {
            return Err(AwsError::constraint(
                &member(i),
                format_args!("<{len} bytes>"),
                &format!("Member must have length less than or equal to {MAX_RECORD_BYTES}"),
            ));
        }
        ends.push(data.len());
    }
    Ok((data, ends))
}

fn record_slices<'d>(data: &'d [u8], ends: &[usize]) -> Vec<&'d [u8]> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let slice = &data[start..end];
            start = end;
            slice
        })
        .collect()
}

/// Appends decoded records to the named stream and waits until they are durable; returns
/// the stream, how many records (a prefix) were taken, and the sequence number of the first
/// one's id. The decoded records are released before waiting for the disk.
async fn append<'p>(
    caller: Caller<'p>,
    action: &str,
    stream_name: Option<&str>,
    data: Vec<u8>,
    ends: &[usize],
) -> Result<(std::sync::Arc<DeliveryStream>, usize, u64), AwsError> {
    let stream = lookup(caller, action, stream_name)?;
    let pipeline = caller.pipeline;
    let slices = record_slices(&data, ends);
    let admission = stream
        .admit(&slices, now_ms(), pipeline.backpressure_wait)
        .await
        .map_err(|error| spool_unavailable(&stream.name, &error))?;
    drop(slices);
    drop(data);
    let accepted = admission
        .durable()
        .await
        .map_err(|error| spool_unavailable(&stream.name, &error))?;
    Ok((stream, accepted.count, accepted.first_seq))
}

/// A put the spool could not make durable (disk full, I/O error): the records were not
/// accepted, so the producer must retry.
pub(super) fn spool_unavailable(stream: &str, error: &crate::spool::SpoolError) -> AwsError {
    tracing::error!(stream, "refusing a put: {error}");
    AwsError::new(
        AwsErrorType::ServiceUnavailable,
        format!("the records could not be stored durably ({error}); retry later"),
    )
}

fn json_response(body: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    response
}

async fn put_record(caller: Caller<'_>, body: bytes::Bytes) -> Result<Response, AwsError> {
    let (stream_name, data, ends) = {
        let input: PutRecordInput = parse(&body)?;
        let Some(record) = input.record else {
            return Err(AwsError::constraint(
                "record",
                "null",
                "Member must not be null",
            ));
        };
        let (data, ends) = decode_records(&[record], |_| "record.data".to_string())?;
        (input.stream.map(Cow::into_owned), data, ends)
    };
    drop(body);
    let (stream, taken, seq) =
        append(caller, "PutRecord", stream_name.as_deref(), data, &ends).await?;
    if taken == 0 {
        return Err(AwsError::new(AwsErrorType::ServiceUnavailable, SLOW_DOWN));
    }
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(br#"{"RecordId":""#);
    stream.record_ids.write(seq, &mut out);
    out.extend_from_slice(br#"","Encrypted":false}"#);
    Ok(json_response(out))
}

async fn put_record_batch(caller: Caller<'_>, body: bytes::Bytes) -> Result<Response, AwsError> {
    let (stream_name, data, ends) = decode_batch(&body)?;
    drop(body);
    let (stream, taken, seq) = append(
        caller,
        "PutRecordBatch",
        stream_name.as_deref(),
        data,
        &ends,
    )
    .await?;
    let failed = ends.len() - taken;
    let mut out = Vec::with_capacity(64 + taken * 48 + failed * 80);
    let _ = write!(
        out,
        r#"{{"FailedPutCount":{failed},"Encrypted":false,"RequestResponses":["#
    );
    for i in 0..ends.len() {
        if i > 0 {
            out.push(b',');
        }
        if i < taken {
            out.extend_from_slice(br#"{"RecordId":""#);
            stream.record_ids.write(seq + i as u64, &mut out);
            out.extend_from_slice(br#""}"#);
        } else {
            out.extend_from_slice(
                br#"{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."}"#,
            );
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(out))
}

/// A decoded `PutRecordBatch`: the stream name, and the records back to back with their ends.
type DecodedBatch = (Option<String>, Vec<u8>, Vec<usize>);

fn decode_batch(body: &[u8]) -> Result<DecodedBatch, AwsError> {
    let input: PutRecordBatchInput = parse(body)?;
    let Some(records) = input.records else {
        return Err(AwsError::constraint(
            "records",
            "null",
            "Member must not be null",
        ));
    };
    if records.is_empty() {
        return Err(AwsError::constraint(
            "records",
            "[]",
            "Member must have length greater than or equal to 1",
        ));
    }
    if records.len() > MAX_BATCH_RECORDS {
        return Err(AwsError::constraint(
            "records",
            format_args!("<{} records>", records.len()),
            &format!("Member must have length less than or equal to {MAX_BATCH_RECORDS}"),
        ));
    }
    let (data, ends) = decode_records(&records, |i| format!("records.{}.member.data", i + 1))?;
    if data.len() > MAX_BATCH_BYTES {
        return Err(AwsError::new(
            AwsErrorType::InvalidArgument,
            format!(
                "PutRecordBatch carries {} bytes of record data; the limit is {MAX_BATCH_BYTES} \
                 bytes (4 MiB) per call: split the batch",
                data.len()
            ),
        ));
    }
    Ok((input.stream.map(Cow::into_owned), data, ends))
}

#[derive(Deserialize)]
struct ListInput {
    #[serde(rename = "Limit", default)]
    limit: Option<i64>,
    #[serde(rename = "DeliveryStreamType", default)]
    stream_type: Option<String>,
    #[serde(rename = "ExclusiveStartDeliveryStreamName", default)]
    exclusive_start: Option<String>,
}

fn list_delivery_streams(caller: Caller<'_>, body: &[u8]) -> Result<Response, AwsError> {
    caller.principal.authorize("ListDeliveryStreams", None)?;
    let pipeline = caller.pipeline;
    let input: ListInput = parse(body)?;
    let limit = input.limit.unwrap_or(10);
    if !(1..=10_000).contains(&limit) {
        return Err(AwsError::constraint(
            "limit",
            limit,
            "Member must have value between 1 and 10000",
        ));
    }
    let direct_put = match input.stream_type.as_deref() {
        None | Some("DirectPut") => true,
        Some("KinesisStreamAsSource" | "MSKAsSource" | "DatabaseAsSource") => false,
        Some(other) => {
            return Err(AwsError::constraint(
                "deliveryStreamType",
                other,
                "Member must satisfy enum value set: [DirectPut, KinesisStreamAsSource, MSKAsSource, DatabaseAsSource]",
            ));
        }
    };
    let all_names = pipeline.sorted_names();
    let names: Vec<&String> = if direct_put {
        all_names
            .iter()
            .filter(|n| {
                input
                    .exclusive_start
                    .as_ref()
                    .is_none_or(|start| *n > start)
            })
            .collect()
    } else {
        Vec::new()
    };
    let limit = limit as usize;
    let body = json!({
        "DeliveryStreamNames": names.iter().take(limit).collect::<Vec<_>>(),
        "HasMoreDeliveryStreams": names.len() > limit,
    });
    Ok(json_response(body.to_string().into_bytes()))
}

#[derive(Deserialize)]
struct DescribeInput {
    #[serde(rename = "DeliveryStreamName", default)]
    stream: Option<String>,
}

fn describe_delivery_stream(caller: Caller<'_>, body: &[u8]) -> Result<Response, AwsError> {
    let input: DescribeInput = parse(body)?;
    let stream = lookup(caller, "DescribeDeliveryStream", input.stream.as_deref())?;
    let summary = &stream.summary;
    let created = stream.created.timestamp_millis() as f64 / 1000.0;
    let hints = json!({
        "SizeInMBs": summary.size_mib,
        "IntervalInSeconds": summary.interval_seconds,
    });
    let DestinationSummary {
        arn: bucket_arn,
        endpoint,
    } = summary.destination.clone();
    let mut s3 = json!({
        "RoleARN": "arn:aws:iam::000000000000:role/hydrant",
        "BucketARN": bucket_arn,
        "Prefix": summary.prefix,
        "BufferingHints": hints,
        "CompressionFormat": summary.compression_format,
        "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
        "S3BackupMode": "Disabled",
    });
    if let Some(endpoint) = endpoint {
        s3["HydrantEndpoint"] = json!(endpoint);
    }
    let body = json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": stream.name,
            "DeliveryStreamARN": format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{}", stream.name),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "CreateTimestamp": created,
            "DeliveryStreamEncryptionConfiguration": { "Status": "DISABLED" },
            "Destinations": [{
                "DestinationId": "destinationId-000000000001",
                "ExtendedS3DestinationDescription": s3,
            }],
            "HasMoreDestinations": false,
        }
    });
    Ok(json_response(body.to_string().into_bytes()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"{"DeliveryStreamName":"events","Records":[{"Data":"eyJhIjoxfQ=="},{"Data":"aGVsbG8="}]}"#;

    /// A valid batch with bytes replaced, inserted or cut off at random places.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec((0usize..VALID.len(), any::<u8>(), 0u8..3), 1..8).prop_map(|edits| {
            let mut body = VALID.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at.min(body.len());
                match kind {
                    0 if at < body.len() => body[at] = byte,
                    1 => body.insert(at, byte),
                    _ => body.truncate(at),
                }
            }
            body
        })
    }

    fn documented(error: &AwsError) -> bool {
        matches!(
            error.kind,
            AwsErrorType::Serialization | AwsErrorType::Validation | AwsErrorType::InvalidArgument
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn hostile_batches_decode_or_fail_with_a_documented_error(
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated()]
        ) {
            match decode_batch(&body) {
                Ok((_, data, ends)) => {
                    prop_assert!(data.len() <= MAX_BATCH_BYTES);
                    prop_assert!(ends.len() <= MAX_BATCH_RECORDS);
                    prop_assert_eq!(ends.last().copied().unwrap_or(0), data.len());
                }
                Err(error) => prop_assert!(documented(&error), "{:?}", error),
            }
            if let Err(error) = parse::<PutRecordInput>(&body).and_then(|input| {
                let record = input.record.ok_or_else(|| AwsError::constraint("record", "null", "x"))?;
                decode_records(&[record], |_| "record.data".into())
            }) {
                prop_assert!(documented(&error), "{:?}", error);
            }
        }
    }
}
