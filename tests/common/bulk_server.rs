//! A fault-injecting `_bulk` server on 127.0.0.1: each document's `fate` field decides how
//! its item answers (201, 429 or 503 for the first attempts, 400 always), the first
//! requests can be refused whole with 503, bodies over [`BODY_LIMIT`] get 413 (as a cluster
//! with a small `http.max_content_length`), and every item it processes is recorded.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Largest request body taken.
pub const BODY_LIMIT: usize = 1024 * 1024 + 64 * 1024;

/// How a document's items answer, from its `fate` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Indexed at once (no `fate` field).
    Ok,
    /// 429 on the first attempt, then indexed.
    RetryOnce,
    /// `es_rejected_execution_exception` on the first two attempts, then indexed.
    RejectedTwice,
    /// 503 on the first attempt, then indexed.
    UnavailableOnce,
    /// 400 `mapper_parsing_exception`, always.
    Bad,
    /// 429, always.
    Busy,
}

impl Fate {
    /// The value of the `fate` field.
    pub fn name(self) -> &'static str {
        match self {
            Fate::Ok => "ok",
            Fate::RetryOnce => "retry-once",
            Fate::RejectedTwice => "rejected-twice",
            Fate::UnavailableOnce => "unavailable-once",
            Fate::Bad => "bad",
            Fate::Busy => "busy",
        }
    }

    fn of(doc: &Value) -> Fate {
        match doc["fate"].as_str() {
            Some("retry-once") => Fate::RetryOnce,
            Some("rejected-twice") => Fate::RejectedTwice,
            Some("unavailable-once") => Fate::UnavailableOnce,
            Some("bad") => Fate::Bad,
            Some("busy") => Fate::Busy,
            _ => Fate::Ok,
        }
    }

    /// The item's status and error on attempt `attempt` (1-based).
    fn answer(self, attempt: u32) -> (u16, Option<Value>) {
        let error = |kind: &str, reason: &str| Some(json!({ "type": kind, "reason": reason }));
        match (self, attempt) {
            (Fate::RetryOnce, 1) | (Fate::Busy, _) => {
                (429, error("too_many_requests", "slow down"))
            }
            (Fate::RejectedTwice, 1 | 2) => (
                429,
                error("es_rejected_execution_exception", "write queue is full"),
            ),
            (Fate::UnavailableOnce, 1) => (
                503,
                error(
                    "unavailable_shards_exception",
                    "primary shard is not active",
                ),
            ),
            (Fate::Bad, _) => (
                400,
                error(
                    "mapper_parsing_exception",
                    "failed to parse field [fate] of type [long]",
                ),
            ),
            _ => (201, None),
        }
    }
}

#[derive(Default)]
struct Recorded {
    /// Indexed documents by `_index` and `_id`.
    docs: HashMap<(String, String), Value>,
    /// Items processed per `_id` (whole-request refusals not counted).
    attempts: HashMap<String, u32>,
    /// Requests answered, including refused ones (not those over the body limit).
    requests: u32,
    /// Requests refused whole.
    refused_requests: u32,
    /// Requests whose body was gzip.
    gzip_requests: u32,
    /// `Authorization` headers seen.
    authorizations: Vec<String>,
}

struct Shared {
    recorded: Mutex<Recorded>,
    refuse_first: u32,
    required_authorization: Option<String>,
    /// While `true`, requests are processed (documents indexed) but not answered.
    holding: tokio::sync::watch::Sender<bool>,
}

/// The running server.
pub struct BulkServer {
    /// Its base URL.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl BulkServer {
    /// Starts a server that refuses its first `refuse_first` requests whole with 503 and,
    /// when `required_authorization` is set, answers 401 to requests without that
    /// `Authorization` header.
    pub async fn start(refuse_first: u32, required_authorization: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Recorded::default()),
            refuse_first,
            required_authorization: required_authorization.map(str::to_string),
            holding: tokio::sync::watch::Sender::new(false),
        });
        let app = axum::Router::new()
            .route("/", get(root))
            .route("/_bulk", post(bulk))
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// Indexed documents by `_id` (with their index).
    pub fn documents(&self) -> HashMap<String, (String, Value)> {
        self.shared
            .recorded
            .lock()
            .unwrap()
            .docs
            .iter()
            .map(|((index, id), doc)| (id.clone(), (index.clone(), doc.clone())))
            .collect()
    }

    /// How many times each `_id` was processed as an item.
    pub fn attempts(&self) -> HashMap<String, u32> {
        self.shared.recorded.lock().unwrap().attempts.clone()
    }

    /// Requests answered, requests refused whole, requests with a gzip body.
    pub fn request_counts(&self) -> (u32, u32, u32) {
        let recorded = self.shared.recorded.lock().unwrap();
        (
            recorded.requests,
            recorded.refused_requests,
            recorded.gzip_requests,
        )
    }

    /// While `hold` is `true`, documents are indexed but requests get no answer (as a
    /// cluster that indexed a batch and stalled before replying).
    pub fn hold_answers(&self, hold: bool) {
        self.shared.holding.send_replace(hold);
    }

    /// Every `Authorization` header received.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.recorded.lock().unwrap().authorizations.clone()
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(given) = &given {
        shared
            .recorded
            .lock()
            .unwrap()
            .authorizations
            .push(given.clone());
    }
    match &shared.required_authorization {
        Some(required) => given.as_deref() == Some(required),
        None => true,
    }
}

async fn root(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    if !authorized(&shared, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing authentication credentials",
        )
            .into_response();
    }
    axum::Json(json!({ "version": { "number": "2.19.0", "distribution": "opensearch" } }))
        .into_response()
}

async fn bulk(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    if !authorized(&shared, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing authentication credentials",
        )
            .into_response();
    }
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = if gzip {
        // One gzip member, as clusters built on Netty read only the first.
        let mut decoder = flate2::read::GzDecoder::new(&body[..]);
        let mut out = Vec::new();
        if decoder.read_to_end(&mut out).is_err() {
            return (StatusCode::BAD_REQUEST, "body is not gzip").into_response();
        }
        let mut rest = Vec::new();
        let _ = decoder.into_inner().read_to_end(&mut rest);
        if !rest.is_empty() {
            return (StatusCode::BAD_REQUEST, "more than one gzip member").into_response();
        }
        out
    } else {
        body.to_vec()
    };
    let (items, errors) = {
        let mut recorded = shared.recorded.lock().unwrap();
        recorded.requests += 1;
        recorded.gzip_requests += u32::from(gzip);
        if recorded.requests <= shared.refuse_first {
            recorded.refused_requests += 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "cluster is starting").into_response();
        }
        let text = String::from_utf8(body).expect("bulk bodies are UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        if !lines.len().is_multiple_of(2) {
            return (StatusCode::BAD_REQUEST, "odd number of bulk lines").into_response();
        }
        let mut items = Vec::new();
        let mut errors = false;
        for pair in lines.chunks(2) {
            let action: Value = serde_json::from_str(pair[0]).expect("action lines are JSON");
            let doc: Value = serde_json::from_str(pair[1]).expect("document lines are JSON");
            let index = action["index"]["_index"].as_str().unwrap().to_string();
            let id = action["index"]["_id"]
                .as_str()
                .map_or_else(|| format!("auto-{}", fastrand::u64(..)), str::to_string);
            let attempt = {
                let attempts = recorded.attempts.entry(id.clone()).or_insert(0);
                *attempts += 1;
                *attempts
            };
            let (status, error) = Fate::of(&doc).answer(attempt);
            let mut item = json!({ "_index": index, "_id": id, "status": status });
            match error {
                Some(error) => {
                    errors = true;
                    item["error"] = error;
                }
                None => {
                    recorded.docs.insert((index, id), doc);
                }
            }
            items.push(json!({ "index": item }));
        }
        (items, errors)
    };
    let _ = shared
        .holding
        .subscribe()
        .wait_for(|holding| !holding)
        .await;
    axum::Json(json!({ "took": 1, "errors": errors, "items": items })).into_response()
}
