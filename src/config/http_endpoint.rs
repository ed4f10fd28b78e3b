//! `destination: http_endpoint`: Firehose's HTTP endpoint delivery, to any receiver that
//! speaks its request/response specification.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::search::SearchBackup;
use super::validate::{at, is_http_url, within};
use super::{ConfigProblem, Destination, Secret};
use hydrant_sinks::http_endpoint::{EndpointSettings, HttpEndpoint};
use hydrant_sinks::prelude::SinkError;

const MIB: usize = 1024 * 1024;

/// An HTTP endpoint destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpointDestination {
    /// Where requests are `POST`ed, `https://` (or `http://` inside a trusted network).
    pub url: Spanned<String>,
    /// Sent as `X-Amz-Firehose-Access-Key` (write `${ENV}`). Default (or empty): not sent.
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// Sent as `X-Amz-Firehose-Common-Attributes`: string keys and values the receiver
    /// gets with every request. Default: none.
    #[serde(default)]
    pub common_attributes: BTreeMap<String, String>,
    /// `none` (default) or `gzip` (`Content-Encoding: gzip`).
    #[serde(default = "default_content_encoding")]
    pub content_encoding: Spanned<ContentEncoding>,
    /// Largest request body before compression, in MiB; a batch is cut into requests of at
    /// most this size. 1–64, default 5.
    #[serde(default = "default_max_request_mib")]
    pub max_request_mib: Spanned<u32>,
    /// Requests of one batch in flight at once. 1–32, default 1 (in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: Spanned<u32>,
    /// Timeout of one request, in seconds. 1–180, default 180 (Firehose gives endpoints
    /// three minutes).
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: Spanned<u64>,
    /// PEM file of the root certificates the endpoint's certificate must chain to,
    /// relative to the configuration file. Default: the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How long a request the endpoint does not take is retried before its records go to
    /// the `http-endpoint-failed` error output. 0–7200, default 300.
    #[serde(default = "default_retry_duration_seconds")]
    pub retry_duration_seconds: Spanned<u64>,
    /// First retry delay, in milliseconds. Default 200.
    #[serde(default = "super::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, in seconds. Default 30.
    #[serde(default = "super::default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
    /// Where records the endpoint did not take (and, with `mode: all`, every record) are
    /// kept: `mode: failed_only | all` and an object `destination`.
    #[serde(default)]
    pub backup: SearchBackup,
}

/// Compression of request bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncoding {
    /// Sent as is.
    #[default]
    None,
    /// gzip-compressed, `Content-Encoding: gzip`.
    Gzip,
}

impl HttpEndpointDestination {
    /// The endpoint, ready to send to (relative `ca_file` from `base_dir`).
    pub fn build(&self, base_dir: &Path) -> Result<Arc<HttpEndpoint>, SinkError> {
        let settings = EndpointSettings {
            url: self.url.value.clone(),
            access_key: self
                .access_key
                .as_ref()
                .map(|k| k.expose().to_string())
                .filter(|k| !k.is_empty()),
            common_attributes: self
                .common_attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            gzip: self.content_encoding.value == ContentEncoding::Gzip,
            request_timeout: Duration::from_secs(self.request_timeout_seconds.value.max(1)),
            ca_file: self.ca_file.as_ref().map(|path| base_dir.join(path)),
        };
        Ok(Arc::new(HttpEndpoint::new(
            &settings,
            self.max_request_mib.value as usize * MIB,
        )?))
    }
}

/// Problems with a stream's HTTP endpoint destination.
pub(super) fn validate(
    name: &str,
    stream: &super::StreamConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let Destination::HttpEndpoint(endpoint) = &stream.destination else {
        return;
    };
    if !is_http_url(&endpoint.url.value) {
        problems.push(at(
            &endpoint.url,
            format!(
                "stream `{name}`: `url` must be an http:// or https:// URL, got `{}`",
                endpoint.url.value
            ),
        ));
    }
    within(
        name,
        "max_request_mib",
        &endpoint.max_request_mib,
        1..=64,
        problems,
    );
    within(name, "concurrency", &endpoint.concurrency, 1..=32, problems);
    within(
        name,
        "request_timeout_seconds",
        &endpoint.request_timeout_seconds,
        1..=180,
        problems,
    );
    within(
        name,
        "retry_duration_seconds",
        &endpoint.retry_duration_seconds,
        0..=7200,
        problems,
    );
    if stream.buffer.size_mib.value > 64 {
        problems.push(at(
            &stream.buffer.size_mib,
            format!(
                "stream `{name}`: an HTTP endpoint takes `buffer.size_mib` between 1 and 64, got {}",
                stream.buffer.size_mib.value
            ),
        ));
    }
    if !endpoint.backup.destination.is_object_store() {
        problems.push(at(
            &endpoint.url,
            format!("stream `{name}`: `backup.destination` must be a `local` or `s3` destination"),
        ));
    }
    if stream.compression.value != super::Compression::None {
        problems.push(at(
            &stream.compression,
            format!(
                "stream `{name}`: an HTTP endpoint takes records as they are; remove the stream's `compression` (request compression is the destination's `content_encoding`)"
            ),
        ));
    }
    if stream.format.value != super::Format::Raw {
        problems.push(at(
            &stream.format,
            format!(
                "stream `{name}`: an HTTP endpoint sends each record as it is (base64 in its own `data` field); remove the stream's `format`"
            ),
        ));
    }
}

fn default_content_encoding() -> Spanned<ContentEncoding> {
    super::spanned(ContentEncoding::None)
}

fn default_max_request_mib() -> Spanned<u32> {
    super::spanned(5)
}

fn default_concurrency() -> Spanned<u32> {
    super::spanned(1)
}

fn default_request_timeout_seconds() -> Spanned<u64> {
    super::spanned(180)
}

fn default_retry_duration_seconds() -> Spanned<u64> {
    super::spanned(300)
}
