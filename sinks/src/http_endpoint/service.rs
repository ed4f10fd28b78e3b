//! Sending one request: `POST` to the endpoint's URL with the protocol's headers.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::request::EndpointBody;
use crate::error::{Service, SinkError, SinkErrorKind};

/// Everything needed to reach an endpoint.
#[derive(Clone)]
pub struct EndpointSettings {
    /// Where requests go (`https://ingest.example.com/firehose`).
    pub url: String,
    /// Sent as `X-Amz-Firehose-Access-Key`, if set.
    pub access_key: Option<String>,
    /// Sent as `X-Amz-Firehose-Common-Attributes` (`{"commonAttributes":{...}}`), if any.
    pub common_attributes: Vec<(String, String)>,
    /// Whether bodies are gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Timeout of one request (the specification gives endpoints three minutes).
    pub request_timeout: Duration,
    /// PEM file of the roots the endpoint's certificate must chain to (`None`: the system's).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for EndpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSettings")
            .field("url", &self.url)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("common_attributes", &self.common_attributes)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

/// The HTTP client of one endpoint.
#[derive(Debug)]
pub struct EndpointService {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
}

const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("x-amz-firehose-protocol-version");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-firehose-request-id");
const ACCESS_KEY: HeaderName = HeaderName::from_static("x-amz-firehose-access-key");
const COMMON_ATTRIBUTES: HeaderName = HeaderName::from_static("x-amz-firehose-common-attributes");

impl EndpointService {
    /// A client for `settings`' endpoint (nothing is sent yet).
    pub fn new(settings: &EndpointSettings) -> Result<Self, SinkError> {
        let fail = |reason: String| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::HttpEndpoint,
                settings.url.clone(),
                "",
                reason,
            )
        };
        let client = crate::http::client(settings.ca_file.as_deref(), settings.request_timeout)
            .map_err(&fail)?;
        let mut headers = HeaderMap::new();
        headers.insert(PROTOCOL_VERSION, HeaderValue::from_static("1.0"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if settings.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(key) = &settings.access_key {
            let mut value = HeaderValue::from_str(key)
                .map_err(|_| fail("`access_key` has characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            headers.insert(ACCESS_KEY, value);
        }
        if !settings.common_attributes.is_empty() {
            let attributes: serde_json::Map<String, serde_json::Value> = settings
                .common_attributes
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let json = serde_json::json!({ "commonAttributes": attributes }).to_string();
            let value = HeaderValue::from_str(&json).map_err(|_| {
                fail("`common_attributes` have characters a header cannot carry".into())
            })?;
            headers.insert(COMMON_ATTRIBUTES, value);
        }
        Ok(Self {
            client,
            url: settings.url.clone(),
            headers,
        })
    }

    /// Sends `body`; the answer's status and body, or why none came.
    pub async fn post(&self, body: &EndpointBody) -> Result<(u16, bytes::Bytes), SinkError> {
        let id = HeaderValue::from_str(&body.request_id).expect("request ids are hex and dashes");
        let transport = |error: reqwest::Error| {
            let kind = if error.is_timeout() {
                SinkErrorKind::TimedOut
            } else {
                SinkErrorKind::Unavailable
            };
            SinkError::new(
                kind,
                Service::HttpEndpoint,
                self.url.clone(),
                body.request_id.clone(),
                crate::http::describe_transport_error(&error),
            )
            .caused_by(error)
        };
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(REQUEST_ID, id)
            .body(body.bytes.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let answer = response.bytes().await.map_err(transport)?;
        Ok((status, answer))
    }

    /// Whether the endpoint answers at all (any HTTP status counts: the protocol has no
    /// health call).
    pub async fn reachable(&self) -> Result<String, SinkError> {
        let response = self.client.head(&self.url).send().await.map_err(|error| {
            SinkError::new(
                SinkErrorKind::Unavailable,
                Service::HttpEndpoint,
                self.url.clone(),
                "",
                crate::http::describe_transport_error(&error),
            )
            .caused_by(error)
        })?;
        Ok(format!("HTTP {}", response.status().as_u16()))
    }
}
