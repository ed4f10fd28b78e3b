//! `destination: opensearch` (or `elasticsearch`): documents indexed with the `_bulk` API.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::{at, is_http_url};
use super::{ConfigProblem, Destination};
use hydrant_sinks::compress::{Codec, GzipMembers};
use hydrant_sinks::partition::NameTemplate;
use hydrant_sinks::prelude::SinkError;
use hydrant_sinks::search::{
    DocumentEncoder, DocumentIds, SearchAuth, SearchCluster, SearchSettings, SearchSink,
};

pub use hydrant_sinks::search::IndexRotation;

const MIB: usize = 1024 * 1024;

/// An OpenSearch or Elasticsearch destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchDestination {
    /// Base URL of the cluster (`https://search.internal:9200`); or `endpoints`.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// Base URLs of several nodes, used in turn.
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    /// Index name; with `index_rotation`, the record's arrival time is appended.
    pub index: Spanned<String>,
    /// `none` (default), `hour`, `day`, `week` or `month`: `logs-2016-02-25-13`,
    /// `logs-2016-02-25`, `logs-2016-w08` (ISO week), `logs-2016-02` (UTC arrival time).
    #[serde(default)]
    pub index_rotation: IndexRotation,
    /// `deterministic` (default: the record id `PutRecord` returned, so a document sent
    /// twice overwrites itself), `auto` (the cluster picks; a retried document may be
    /// indexed twice) or `{ field: path }` (a JSON field of the record).
    #[serde(default)]
    pub document_id: DocumentIdConfig,
    /// Credentials: `{ basic: { username, password } }` or `{ api_key: KEY }` (use
    /// `${ENV}`).
    #[serde(default)]
    pub auth: Option<SearchAuthConfig>,
    /// Compression of bulk request bodies: `none` (default) or `gzip`.
    #[serde(default = "default_compression")]
    pub compression: Spanned<super::Compression>,
    /// Largest bulk request body, in MiB before compression. 1–100, default 5.
    #[serde(default = "default_max_bulk_mib")]
    pub max_bulk_mib: Spanned<u32>,
    /// Bulk requests of one batch in flight at once. 1–32, default 2.
    #[serde(default = "default_concurrency")]
    pub concurrency: Spanned<u32>,
    /// How long documents the cluster refuses for now (429, 502, 503, 504, rejected
    /// execution) are retried before they go to the error output. 0–7200, default 300.
    #[serde(default = "default_retry_duration_seconds")]
    pub retry_duration_seconds: Spanned<u64>,
    /// First retry delay, in milliseconds. Default 200.
    #[serde(default = "super::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, in seconds. Default 30.
    #[serde(default = "super::default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
    /// Timeout of one bulk request. Default 60.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// PEM file of the root certificates the cluster's certificate must chain to,
    /// relative to the configuration file. Default: the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Where failed documents (and, with `mode: all`, every record) are kept.
    #[serde(default)]
    pub backup: SearchBackup,
}

/// Where each document's `_id` comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentIdConfig {
    /// The record id `PutRecord` returned: stable across retries and restarts.
    #[default]
    Deterministic,
    /// Chosen by the cluster.
    Auto,
    /// A field of the record (`request.id` or `.request.id`), a string or a number.
    Field(String),
}

/// Credentials sent with every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SearchAuthConfig {
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An encoded API key (`Authorization: ApiKey ...`).
    ApiKey(String),
}

/// The object destination failed documents (or all records) go to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBackup {
    /// `failed_only` (default): documents that cannot be indexed, with their reasons, in
    /// Firehose's `AmazonOpenSearchService-failed` format; `all`: also every record, as
    /// NDJSON objects under the destination's `prefix`, before it is indexed.
    #[serde(default)]
    pub mode: BackupMode,
    /// An object destination (`local` or `s3`). Default `local: { path: hydrant-errors }`.
    #[serde(default = "super::postgres::default_error_output")]
    pub destination: Box<Destination>,
}

impl Default for SearchBackup {
    fn default() -> Self {
        Self {
            mode: BackupMode::default(),
            destination: super::postgres::default_error_output(),
        }
    }
}

/// Which records the backup destination keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// Only documents that could not be indexed.
    #[default]
    FailedOnly,
    /// Every record, and the failed documents.
    All,
}

impl SearchDestination {
    /// The cluster, ready to index into; `run` is the stream's record id prefix (the first
    /// half of deterministic `_id`s), relative `ca_file` from `base_dir`.
    pub fn build(&self, base_dir: &std::path::Path, run: u64) -> Result<SearchCluster, SinkError> {
        let service = SearchSink::new(SearchSettings {
            endpoints: self.endpoint_urls(),
            auth: self.auth.as_ref().map(|auth| match auth {
                SearchAuthConfig::Basic { username, password } => SearchAuth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
                SearchAuthConfig::ApiKey(key) => SearchAuth::ApiKey(key.clone()),
            }),
            gzip: self.compression.value == super::Compression::Gzip,
            request_timeout: std::time::Duration::from_secs(self.request_timeout_seconds.max(1)),
            ca_file: self.ca_file.as_ref().map(|path| base_dir.join(path)),
        })?;
        Ok(SearchCluster::new(
            service,
            self.document_encoder(run),
            self.max_bulk_mib.value as usize * MIB,
        ))
    }

    /// How records become bulk lines; `run` is the stream's record id prefix.
    pub fn document_encoder(&self, run: u64) -> DocumentEncoder {
        let ids = match &self.document_id {
            DocumentIdConfig::Deterministic => DocumentIds::RecordId { run },
            DocumentIdConfig::Auto => DocumentIds::Auto,
            DocumentIdConfig::Field(path) => DocumentIds::Field(
                path.trim_start_matches('.')
                    .split('.')
                    .map(str::to_string)
                    .collect(),
            ),
        };
        let codec = match self.compression.value {
            // Request bodies stay one gzip member, which every HTTP server reads.
            super::Compression::Gzip => Codec::Gzip {
                level: 6,
                members: GzipMembers::One,
            },
            _ => Codec::None,
        };
        // Validated when the configuration is loaded; a name that does not parse is used as
        // it is written.
        let index = NameTemplate::parse(&self.index.value)
            .unwrap_or_else(|_| NameTemplate::from(self.index.value.clone()));
        DocumentEncoder::new(index, self.index_rotation, ids, codec)
    }

    /// Every configured endpoint.
    pub fn endpoint_urls(&self) -> Vec<String> {
        self.endpoint
            .iter()
            .chain(&self.endpoints)
            .map(|e| e.value.clone())
            .collect()
    }
}

/// Why `name` cannot be an index name (OpenSearch's and Elasticsearch's rules).
pub fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 200 {
        return Err("is longer than 200 bytes (rotation adds up to 14)".into());
    }
    if name.starts_with(['-', '_', '+']) {
        return Err("must not start with `-`, `_` or `+`".into());
    }
    if name == "." || name == ".." {
        return Err("must not be `.` or `..`".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_uppercase() || "\\/*?\"<>| ,#:".contains(*c))
    {
        return Err(format!(
            "must be lowercase without spaces or any of \\ / * ? \" < > | , # : (found `{c}`)"
        ));
    }
    Ok(())
}

/// Problems with a stream's search destination.
pub(super) fn validate(
    name: &str,
    stream: &super::StreamConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let Destination::Opensearch(search) = &stream.destination else {
        return;
    };
    if search.endpoint.is_none() && search.endpoints.is_empty() {
        problems.push(at(
            &search.index,
            format!("stream `{name}`: set `endpoint` (or `endpoints`) to the cluster's URL"),
        ));
    }
    for endpoint in search.endpoint.iter().chain(&search.endpoints) {
        let url = &endpoint.value;
        if !is_http_url(url) {
            problems.push(at(
                endpoint,
                format!(
                    "stream `{name}`: endpoint must be an http:// or https:// URL, got `{url}`"
                ),
            ));
        }
    }
    match NameTemplate::parse(&search.index.value) {
        Err(reason) => problems.push(at(
            &search.index,
            format!("stream `{name}`: index `{}`: {reason}", search.index.value),
        )),
        Ok(template) => {
            // Key values are made valid when they are filled in: judge the rest.
            if let Err(reason) = check_index_name(&template.sample()) {
                problems.push(at(
                    &search.index,
                    format!("stream `{name}`: index `{}` {reason}", search.index.value),
                ));
            }
            if let Some((source, key)) = template.keys().first()
                && stream.partitioning.is_none()
            {
                problems.push(at(
                    &search.index,
                    format!(
                        "stream `{name}`: index `{}` names `!{{{}:{key}}}`, which needs a \
                         `partitioning:` section",
                        search.index.value,
                        source.template_name()
                    ),
                ));
            }
        }
    }
    if let DocumentIdConfig::Field(path) = &search.document_id
        && path.trim_start_matches('.').is_empty()
    {
        problems.push(at(
            &search.index,
            format!("stream `{name}`: `document_id.field` is empty"),
        ));
    }
    if !matches!(
        search.compression.value,
        super::Compression::None | super::Compression::Gzip
    ) {
        problems.push(at(
            &search.compression,
            format!("stream `{name}`: bulk requests take `compression: none` or `gzip`"),
        ));
    }
    if !(1..=100).contains(&search.max_bulk_mib.value) {
        problems.push(at(
            &search.max_bulk_mib,
            format!(
                "stream `{name}`: `max_bulk_mib` must be between 1 and 100, got {}",
                search.max_bulk_mib.value
            ),
        ));
    }
    if !(1..=32).contains(&search.concurrency.value) {
        problems.push(at(
            &search.concurrency,
            format!(
                "stream `{name}`: `concurrency` must be between 1 and 32, got {}",
                search.concurrency.value
            ),
        ));
    }
    if search.retry_duration_seconds.value > 7200 {
        problems.push(at(
            &search.retry_duration_seconds,
            format!(
                "stream `{name}`: `retry_duration_seconds` must be between 0 and 7200 (2 hours), got {}",
                search.retry_duration_seconds.value
            ),
        ));
    }
    if !search.backup.destination.is_object_store() {
        problems.push(at(
            &search.index,
            format!("stream `{name}`: `backup.destination` must be a `local` or `s3` destination"),
        ));
    }
    if stream.format.value != super::Format::Raw
        || stream.compression.value != super::Compression::None
    {
        problems.push(at(
            &stream.format,
            format!(
                "stream `{name}`: a search destination takes JSON records as they are; remove the stream's `format` and `compression` (bulk compression is the destination's `compression`)"
            ),
        ));
    }
}

fn default_compression() -> Spanned<super::Compression> {
    super::spanned(super::Compression::None)
}

fn default_max_bulk_mib() -> Spanned<u32> {
    super::spanned(5)
}

fn default_concurrency() -> Spanned<u32> {
    super::spanned(2)
}

fn default_retry_duration_seconds() -> Spanned<u64> {
    super::spanned(300)
}

fn default_request_timeout_seconds() -> u64 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_cluster_rules() {
        for good in ["logs", "app.logs-v2", "a_b"] {
            assert!(check_index_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "Logs", "-x", "_x", "+x", "a b", "a,b", "a*", "a#b", "..", "a:b",
        ] {
            assert!(check_index_name(bad).is_err(), "{bad:?}");
        }
    }
}
