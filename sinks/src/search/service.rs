//! Sending one bulk request to a cluster's endpoints in turn, and asking who it is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

use super::response::{ItemOutcome, parse_bulk_response};
use crate::error::{Service, SinkError, SinkErrorKind};

/// How requests prove who is sending them.
#[derive(Debug, Clone)]
pub enum SearchAuth {
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An API key, sent as `Authorization: ApiKey <key>` (the encoded form both
    /// Elasticsearch and OpenSearch hand out).
    ApiKey(String),
}

/// Everything needed to reach a cluster.
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// Base URLs of the cluster's nodes (`https://node1:9200`), used in turn.
    pub endpoints: Vec<String>,
    /// Credentials, if the cluster asks for them.
    pub auth: Option<SearchAuth>,
    /// Whether request bodies are gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// PEM file of the roots the cluster's certificate must chain to (`None`: the
    /// system's).
    pub ca_file: Option<PathBuf>,
}

/// A cluster that takes bulk requests.
#[derive(Debug)]
pub struct SearchSink {
    client: reqwest::Client,
    bulk_urls: Vec<String>,
    endpoints: Vec<String>,
    next: AtomicUsize,
    authorization: Option<HeaderValue>,
    gzip: bool,
    describe: String,
}

impl SearchSink {
    /// A sink for the cluster `settings` names (nothing is sent yet).
    pub fn new(settings: SearchSettings) -> Result<Self, SinkError> {
        let describe = settings.endpoints.join(",");
        let fail = |reason: String| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::Search,
                describe.clone(),
                "_bulk",
                reason,
            )
        };
        if settings.endpoints.is_empty() {
            return Err(fail("no endpoint".into()));
        }
        let client = crate::http::client(settings.ca_file.as_deref(), settings.request_timeout)
            .map_err(&fail)?;
        let authorization = match &settings.auth {
            None => None,
            Some(auth) => {
                let value = match auth {
                    SearchAuth::Basic { username, password } => format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"))
                    ),
                    SearchAuth::ApiKey(key) => format!("ApiKey {key}"),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    fail("the credentials contain characters a header cannot".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let endpoints: Vec<String> = settings
            .endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect();
        Ok(Self {
            client,
            bulk_urls: endpoints.iter().map(|e| format!("{e}/_bulk")).collect(),
            endpoints,
            next: AtomicUsize::new(0),
            authorization,
            gzip: settings.gzip,
            describe,
        })
    }

    /// The endpoints, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether request bodies must be gzip-compressed.
    pub fn gzip(&self) -> bool {
        self.gzip
    }

    fn error(&self, kind: SinkErrorKind, target: &str, reason: String) -> SinkError {
        SinkError::new(
            kind,
            Service::Search,
            self.describe.clone(),
            target.to_string(),
            reason,
        )
    }

    /// The error of a request answered with a failure status (the start of its body says
    /// why).
    fn status_error(&self, status: reqwest::StatusCode, url: &str, body: &[u8]) -> SinkError {
        self.error(
            status_kind(status.as_u16()),
            url,
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            ),
        )
        .with_status(status.as_u16())
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// Sends one bulk request whose body (gzip-compressed when [`gzip`](Self::gzip)) holds
    /// `documents` documents; returns what happened to each, in order. Endpoints are used
    /// in turn, one per request.
    pub async fn bulk(
        &self,
        body: Vec<Bytes>,
        documents: usize,
    ) -> Result<Vec<ItemOutcome>, SinkError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.bulk_urls.len();
        let url = &self.bulk_urls[turn];
        // One contiguous body with a Content-Length: every cluster version takes it.
        let body = match <[Bytes; 1]>::try_from(body) {
            Ok([only]) => only,
            Err(parts) => Bytes::from(parts.concat()),
        };
        let mut request = self
            .request(reqwest::Method::POST, url)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = request.send().await.map_err(|e| {
            self.error(
                SinkErrorKind::Unavailable,
                url,
                crate::http::describe_transport_error(&e),
            )
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            self.error(
                SinkErrorKind::Unavailable,
                url,
                crate::http::describe_transport_error(&e),
            )
        })?;
        if !status.is_success() {
            return Err(self.status_error(status, url, &body));
        }
        parse_bulk_response(&body, documents)
            .map_err(|reason| self.error(SinkErrorKind::Unavailable, url, reason))
    }

    /// Asks every endpoint who it is (`GET /`); the first failure says what is wrong
    /// (unreachable, credentials refused). Returns the cluster's version.
    pub async fn check(&self) -> Result<String, SinkError> {
        let mut version = String::new();
        for endpoint in &self.endpoints {
            let url = format!("{endpoint}/");
            let response = self
                .request(reqwest::Method::GET, &url)
                .send()
                .await
                .map_err(|e| {
                    self.error(
                        SinkErrorKind::Unavailable,
                        &url,
                        crate::http::describe_transport_error(&e),
                    )
                })?;
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            if !status.is_success() {
                return Err(self.status_error(status, &url, &body));
            }
            version = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let number = v.pointer("/version/number")?.as_str()?.to_string();
                    let distribution = v
                        .pointer("/version/distribution")
                        .and_then(|d| d.as_str())
                        .unwrap_or("elasticsearch");
                    Some(format!("{distribution} {number}"))
                })
                .unwrap_or_else(|| "unknown version".into());
        }
        Ok(version)
    }
}

/// How a whole-request HTTP status is classified.
fn status_kind(status: u16) -> SinkErrorKind {
    match status {
        401 | 403 => SinkErrorKind::AccessDenied,
        404 => SinkErrorKind::NotFound,
        408 | 429 | 500..=599 => SinkErrorKind::Unavailable,
        _ => SinkErrorKind::Rejected,
    }
}
