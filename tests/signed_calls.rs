//! Signed calls with access keys, through three real AWS clients (boto3, the AWS CLI and the
//! AWS SDK for JavaScript v3) and plain HTTP: the right key works unchanged, and every
//! failure comes back under AWS's error name and status; keys are allowed only their
//! operations on their streams; secrets never reach the log.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const SHIPPER: &str = "AKIDSHIPPER000001";
const SHIPPER_SECRET: &str = "shipper-secret-0123456789abcdef";
const OPS: &str = "AKIDOPS0000000001";
const OPS_SECRET: &str = "ops-secret-fedcba9876543210xyz";

fn start() -> Hydrant {
    let auth = format!(
        "  auth:\n    access_keys:\n      - id: {SHIPPER}\n        secret: ${{SHIPPER_SECRET}}\n        \
         allow: {{ streams: [\"app-*\"], actions: [PutRecord, PutRecordBatch] }}\n      \
         - id: {OPS}\n        secret: ${{OPS_SECRET}}\n        allow: {{ streams: [\"*\"], actions: [\"*\"] }}\n"
    );
    let streams = "app-web:\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  destination:\n    local: { path: web }\n\
                   billing:\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  destination:\n    local: { path: billing }\n";
    Hydrant::start_full(
        &auth,
        streams,
        &[
            ("SHIPPER_SECRET", SHIPPER_SECRET),
            ("OPS_SECRET", OPS_SECRET),
        ],
    )
}

fn scenario(name: &str, op: &str, stream: &str, key: (&str, &str)) -> Value {
    json!({ "name": name, "op": op, "stream": stream, "key_id": key.0, "secret": key.1 })
}

/// Runs a client over `scenarios`; its outcomes by scenario name.
fn outcomes(mut command: Command, scenarios: &[Value]) -> HashMap<String, Value> {
    let stdout = stdout_of(
        command.arg(Value::Array(scenarios.to_vec()).to_string()),
        "the client",
    );
    let outcomes: HashMap<String, Value> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let outcome: Value = serde_json::from_str(line).unwrap();
            (outcome["name"].as_str().unwrap().to_string(), outcome)
        })
        .collect();
    assert_eq!(outcomes.len(), scenarios.len(), "{outcomes:#?}");
    outcomes
}

fn expect_ok(outcomes: &HashMap<String, Value>, name: &str) -> Value {
    let outcome = &outcomes[name];
    assert_eq!(outcome["ok"], true, "{name}: {outcome}");
    outcome["body"].clone()
}

fn expect_error(
    outcomes: &HashMap<String, Value>,
    name: &str,
    code: &str,
    status: u16,
    words: &str,
) {
    let outcome = &outcomes[name];
    assert_eq!(outcome["ok"], false, "{name}: {outcome}");
    assert_eq!(outcome["code"], code, "{name}: {outcome}");
    assert_eq!(outcome["status"], status, "{name}: {outcome}");
    let message = outcome["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(words),
        "{name}: {message:?} should contain {words:?}"
    );
}

/// The `via` field of every record delivered under `dir`, counted.
fn delivered_via(dir: &std::path::Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    if !dir.exists() {
        return counts;
    }
    for file in files_under(dir) {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            *counts
                .entry(record["via"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn aws_clients_work_with_the_right_key_and_get_aws_error_names_otherwise() {
    let mut hydrant = start();
    let endpoint = hydrant.base_url.clone();
    let shipper = (SHIPPER, SHIPPER_SECRET);
    let ops = (OPS, OPS_SECRET);
    let wrong_secret = (SHIPPER, "not-the-shipper-secret-at-all");
    let unknown = ("AKIDNOBODY0000001", "whatever-secret-0123456789");

    // boto3, the AWS SDK for Python.
    let mut boto3 = Command::new(&servers().python);
    boto3
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/signed_calls_boto3.py"
        ))
        .arg(&endpoint);
    let mut skewed = scenario("skewed", "PutRecord", "app-web", shipper);
    skewed["skew_seconds"] = json!(-20 * 60);
    let mut unsigned = scenario("unsigned", "PutRecord", "app-web", shipper);
    unsigned["unsigned"] = json!(true);
    let results = outcomes(
        boto3,
        &[
            scenario("put", "PutRecord", "app-web", shipper),
            scenario("batch", "PutRecordBatch", "app-web", shipper),
            scenario("ndjson", "NdjsonPost", "app-web", shipper),
            scenario("other stream", "PutRecord", "billing", shipper),
            scenario("other action", "DescribeDeliveryStream", "app-web", shipper),
            scenario("ndjson other stream", "NdjsonPost", "billing", shipper),
            scenario("ops list", "ListDeliveryStreams", "", ops),
            scenario("ops describe", "DescribeDeliveryStream", "billing", ops),
            scenario("ops put", "PutRecord", "billing", ops),
            scenario("wrong secret", "PutRecord", "app-web", wrong_secret),
            scenario("unknown key", "PutRecord", "app-web", unknown),
            unsigned,
            skewed,
        ],
    );
    assert!(expect_ok(&results, "put")["RecordId"].is_string());
    assert_eq!(expect_ok(&results, "batch")["FailedPutCount"], 0);
    assert_eq!(expect_ok(&results, "ndjson")["accepted"], 2);
    let denied = "AKIDSHIPPER000001 is not authorized to perform: firehose:PutRecord on resource: deliverystream/billing";
    expect_error(
        &results,
        "other stream",
        "AccessDeniedException",
        400,
        denied,
    );
    expect_error(
        &results,
        "other action",
        "AccessDeniedException",
        400,
        "firehose:DescribeDeliveryStream on resource: deliverystream/app-web",
    );
    expect_error(
        &results,
        "ndjson other stream",
        "AccessDeniedException",
        400,
        "firehose:PutRecordBatch on resource: deliverystream/billing",
    );
    let names = expect_ok(&results, "ops list")["DeliveryStreamNames"].clone();
    assert_eq!(names, json!(["app-web", "billing"]));
    assert_eq!(
        expect_ok(&results, "ops describe")["DeliveryStreamDescription"]["DeliveryStreamName"],
        "billing"
    );
    expect_ok(&results, "ops put");
    expect_error(
        &results,
        "wrong secret",
        "InvalidSignatureException",
        400,
        "The request signature we calculated does not match",
    );
    expect_error(
        &results,
        "unknown key",
        "UnrecognizedClientException",
        400,
        "The security token included in the request is invalid",
    );
    expect_error(
        &results,
        "unsigned",
        "MissingAuthenticationTokenException",
        403,
        "Missing Authentication Token",
    );
    expect_error(
        &results,
        "skewed",
        "InvalidSignatureException",
        400,
        "Signature expired",
    );

    // The AWS SDK for JavaScript v3.
    let mut node = Command::new("node");
    node.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/signed_calls_js.cjs"
    ))
    .arg(&endpoint)
    .env("NODE_PATH", &servers().node_modules);
    let mut js_skewed = scenario("skewed", "PutRecord", "app-web", shipper);
    js_skewed["skew_seconds"] = json!(20 * 60);
    let results = outcomes(
        node,
        &[
            scenario("put", "PutRecord", "app-web", shipper),
            scenario("batch", "PutRecordBatch", "app-web", shipper),
            scenario("other stream", "PutRecord", "billing", shipper),
            scenario("ops list", "ListDeliveryStreams", "", ops),
            scenario("wrong secret", "PutRecord", "app-web", wrong_secret),
            scenario("unknown key", "PutRecord", "app-web", unknown),
            js_skewed,
        ],
    );
    assert!(expect_ok(&results, "put")["RecordId"].is_string());
    assert_eq!(expect_ok(&results, "batch")["FailedPutCount"], 0);
    expect_error(
        &results,
        "other stream",
        "AccessDeniedException",
        400,
        denied,
    );
    assert_eq!(
        expect_ok(&results, "ops list")["DeliveryStreamNames"],
        json!(["app-web", "billing"])
    );
    expect_error(
        &results,
        "wrong secret",
        "InvalidSignatureException",
        400,
        "does not match",
    );
    expect_error(
        &results,
        "unknown key",
        "UnrecognizedClientException",
        400,
        "security token",
    );
    expect_error(
        &results,
        "skewed",
        "InvalidSignatureException",
        400,
        "Signature not yet current",
    );

    // The AWS CLI (version 1, from PyPI: blob parameters are taken as they are).
    let cli = |key: (&str, &str), stream: &str| {
        Command::new(&servers().aws_cli)
            .args(["firehose", "put-record", "--endpoint-url", &endpoint])
            .args(["--delivery-stream-name", stream])
            .args(["--record", r#"{"Data":"{\"via\":\"cli\"}"}"#])
            .env("AWS_ACCESS_KEY_ID", key.0)
            .env("AWS_SECRET_ACCESS_KEY", key.1)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("run the AWS CLI")
    };
    let put = cli(shipper, "app-web");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let answer: Value = serde_json::from_slice(&put.stdout).unwrap();
    assert!(answer["RecordId"].is_string(), "{answer}");
    for (key, stream, error) in [
        (
            shipper,
            "billing",
            "(AccessDeniedException) when calling the PutRecord operation",
        ),
        (wrong_secret, "app-web", "(InvalidSignatureException)"),
        (unknown, "app-web", "(UnrecognizedClientException)"),
    ] {
        let failed = cli(key, stream);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(
            !failed.status.success() && stderr.contains(error),
            "{stderr}"
        );
    }

    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let web = delivered_via(&hydrant.dir.path().join("web"));
    assert_eq!(
        web,
        HashMap::from([
            ("boto3".to_string(), 3),
            ("ndjson".to_string(), 2),
            ("js".to_string(), 3),
            ("cli".to_string(), 1)
        ]),
        "only the allowed puts were delivered"
    );
    assert_eq!(
        delivered_via(&hydrant.dir.path().join("billing")),
        HashMap::from([("boto3".to_string(), 1)])
    );
    let log = hydrant.log();
    assert!(log.contains("API calls must be signed"), "{log}");
    for secret in [SHIPPER_SECRET, OPS_SECRET] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

#[tokio::test]
async fn plain_http_endpoints_take_bearer_keys_and_health_stays_open() {
    let hydrant = start();
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<String>| {
        let mut request = client.get(format!("{}{path}", hydrant.base_url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let ops = Some(format!("{OPS}:{OPS_SECRET}"));
    let shipper = Some(format!("{SHIPPER}:{SHIPPER_SECRET}"));

    assert_eq!(get("/health", None).await, (200, "ok\n".to_string()));
    let (status, body) = get("/metrics", ops.clone()).await;
    assert_eq!(status, 200);
    assert!(body.contains("hydrant_records_accepted_total"), "{body}");
    let (status, body) = get("/streams/app-web/stats", ops.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("accepted_records"), "{body}");

    for (path, token, status, code) in [
        ("/metrics", None, 403, "MissingAuthenticationTokenException"),
        (
            "/streams/app-web/stats",
            None,
            403,
            "MissingAuthenticationTokenException",
        ),
        ("/metrics", shipper.clone(), 400, "AccessDeniedException"),
        (
            "/streams/app-web/stats",
            shipper.clone(),
            400,
            "AccessDeniedException",
        ),
        (
            "/metrics",
            Some(format!("{OPS}:wrong-secret-0123456789")),
            400,
            "InvalidSignatureException",
        ),
        (
            "/metrics",
            Some("AKIDNOBODY0000001:x".to_string()),
            400,
            "UnrecognizedClientException",
        ),
        (
            "/metrics",
            Some(OPS.to_string()),
            400,
            "IncompleteSignatureException",
        ),
    ] {
        let (got, body) = get(path, token.clone()).await;
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (got, answer["__type"].as_str().unwrap()),
            (status, code),
            "{path} {token:?}: {body}"
        );
    }

    let posted = client
        .post(format!("{}/streams/app-web/records", hydrant.base_url))
        .header(
            "authorization",
            format!("Bearer {SHIPPER}:{SHIPPER_SECRET}"),
        )
        .body("{\"via\":\"curl\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    let unsigned = client
        .post(format!("{}/", hydrant.base_url))
        .header("x-amz-target", "Firehose_20150804.ListDeliveryStreams")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 403);
}

#[tokio::test]
async fn without_auth_the_service_says_it_accepts_unsigned_calls() {
    let hydrant = Hydrant::start("open:\n  destination:\n    local: { path: out }\n");
    let (status, _) = hydrant.call("ListDeliveryStreams", &json!({})).await;
    assert_eq!(status, 200);
    let log = hydrant.log();
    assert!(log.contains("the API accepts unsigned calls"), "{log}");
}
