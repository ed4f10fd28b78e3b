//! A receiver of Firehose's HTTP endpoint deliveries on 127.0.0.1, written from the
//! public request/response specification: it checks every header and the body shape of
//! each request (recording violations), answers per a script (200, another status, slow,
//! a wrong or missing `requestId`, a dropped connection), and records the records of every
//! request it answered 200, with the request id they came under.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 echoing the request id: taken.
    Ok,
    /// This status, with an `errorMessage` body: not taken.
    Status(u16),
    /// Taken, but answered 200 only after this long (past the client's timeout).
    Slow(Duration),
    /// 200 naming another request id: not taken.
    WrongId,
    /// 200 without a request id: not taken.
    MissingId,
    /// The connection is dropped without an answer: not taken.
    Reset,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `X-Amz-Firehose-Request-Id`.
    pub request_id: String,
    /// The decoded records.
    pub records: Vec<Vec<u8>>,
    /// How it was answered.
    pub answer: Answer,
    /// Whether the body came gzip-compressed.
    pub gzip: bool,
    /// Length of the JSON body (after decompression).
    pub json_len: usize,
}

#[derive(Default)]
struct Recorded {
    received: Vec<Received>,
    violations: Vec<String>,
}

struct Shared {
    script: Mutex<VecDeque<Answer>>,
    down: AtomicBool,
    access_key: Option<String>,
    common_attributes: Option<Value>,
    recorded: Mutex<Recorded>,
}

/// The running receiver.
pub struct EndpointReceiver {
    /// Where to send requests.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointReceiver {
    /// Starts a receiver that answers its first requests per `script`, then 200; it expects
    /// `access_key` and `common_attributes` (`{"k":"v"}`) on every request.
    pub async fn start(
        script: Vec<Answer>,
        access_key: Option<&str>,
        common_attributes: Option<Value>,
    ) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            down: AtomicBool::new(false),
            access_key: access_key.map(str::to_string),
            common_attributes,
            recorded: Mutex::new(Recorded::default()),
        });
        let app = axum::Router::new()
            .route("/firehose", axum::routing::post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/firehose", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// While `down`, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.recorded.lock().unwrap().received.clone()
    }

    /// Records of requests answered 200 (or taken slowly), with their request ids.
    pub fn taken(&self) -> Vec<(String, Vec<u8>)> {
        self.received()
            .into_iter()
            .filter(|r| matches!(r.answer, Answer::Ok | Answer::Slow(_)))
            .flat_map(|r| {
                let id = r.request_id;
                r.records.into_iter().map(move |data| (id.clone(), data))
            })
            .collect()
    }

    /// Records taken, counted once per request id (what a receiver that remembers ids
    /// keeps).
    pub fn deduplicated(&self) -> Vec<Vec<u8>> {
        let mut seen = std::collections::HashSet::new();
        let mut records = Vec::new();
        for request in self.received() {
            if matches!(request.answer, Answer::Ok | Answer::Slow(_))
                && seen.insert(request.request_id.clone())
            {
                records.extend(request.records);
            }
        }
        records
    }

    /// What did not follow the specification.
    pub fn violations(&self) -> Vec<String> {
        self.shared.recorded.lock().unwrap().violations.clone()
    }
}

impl Drop for EndpointReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut violations = Vec::new();
    if header("x-amz-firehose-protocol-version").as_deref() != Some("1.0") {
        violations.push("X-Amz-Firehose-Protocol-Version is not 1.0".to_string());
    }
    if header("content-type").as_deref() != Some("application/json") {
        violations.push(format!("Content-Type is {:?}", header("content-type")));
    }
    if header("x-amz-firehose-access-key") != shared.access_key {
        violations.push(format!(
            "X-Amz-Firehose-Access-Key is {:?}",
            header("x-amz-firehose-access-key")
        ));
    }
    let attributes = header("x-amz-firehose-common-attributes")
        .map(|text| serde_json::from_str::<Value>(&text).unwrap_or(Value::Null));
    let expected_attributes = shared
        .common_attributes
        .as_ref()
        .map(|a| json!({ "commonAttributes": a }));
    if attributes != expected_attributes {
        violations.push(format!(
            "X-Amz-Firehose-Common-Attributes is {attributes:?}"
        ));
    }
    let gzip = header("content-encoding").as_deref() == Some("gzip");
    let json = if gzip {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
            Ok(_) => out,
            Err(e) => {
                violations.push(format!("gzip body does not decode: {e}"));
                Vec::new()
            }
        }
    } else {
        body.to_vec()
    };
    let request_id = header("x-amz-firehose-request-id").unwrap_or_default();
    let mut records = Vec::new();
    match serde_json::from_slice::<Value>(&json) {
        Ok(body) => {
            if body["requestId"].as_str() != Some(request_id.as_str()) {
                violations.push(format!(
                    "body requestId {} differs from the header's {request_id}",
                    body["requestId"]
                ));
            }
            if !body["timestamp"].is_i64() {
                violations.push(format!(
                    "timestamp {} is not milliseconds",
                    body["timestamp"]
                ));
            }
            let keys: Vec<&String> = body
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if keys.len() != 3 {
                violations.push(format!("body has keys {keys:?}"));
            }
            for record in body["records"].as_array().cloned().unwrap_or_default() {
                match record["data"]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                {
                    Some(data) if record.as_object().is_some_and(|o| o.len() == 1) => {
                        records.push(data)
                    }
                    _ => violations.push(format!("record {record} is not {{\"data\": base64}}")),
                }
            }
        }
        Err(e) => violations.push(format!("body is not JSON: {e}")),
    }
    let answer = if shared.down.load(Ordering::SeqCst) {
        Answer::Status(503)
    } else {
        shared
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Ok)
    };
    {
        let mut recorded = shared.recorded.lock().unwrap();
        recorded.violations.extend(violations);
        recorded.received.push(Received {
            request_id: request_id.clone(),
            records,
            answer,
            gzip,
            json_len: json.len(),
        });
    }
    let now = chrono::Utc::now().timestamp_millis();
    match answer {
        Answer::Ok => Json(json!({ "requestId": request_id, "timestamp": now })),
        Answer::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Json(json!({ "requestId": request_id, "timestamp": now }))
        }
        Answer::Status(status) => (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({ "requestId": request_id, "timestamp": now, "errorMessage": "scripted failure" })),
        )
            .into_response(),
        Answer::WrongId => Json(json!({ "requestId": "someone-else", "timestamp": now })),
        Answer::MissingId => Json(json!({ "timestamp": now })),
        Answer::Reset => panic!("scripted connection reset: the connection is dropped unanswered"),
    }
}

#[allow(non_snake_case)]
fn Json(value: Value) -> Response {
    axum::Json(value).into_response()
}
