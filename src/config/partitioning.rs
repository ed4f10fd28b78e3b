//! The `partitioning:` section of a stream: dynamic partitioning, as Firehose's
//! `DynamicPartitioningConfiguration` with its `MetadataExtraction` query. Records are filed
//! under keys taken from their content (a jq query) or returned by a transform, and the
//! prefix names them (`service=!{partitionKeyFromQuery:service}/`).

use serde::Deserialize;
use serde_saphyr::Spanned;

use hydrant_sinks::object::{KeyTemplate, KeyTemplateError};
use hydrant_sinks::partition::{KeySource, NameTemplate, Partitioner, object_literal_keys};

use super::validate::at;
use super::{ConfigProblem, Destination, StreamConfig};

/// How a stream's records are split into partitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitioningConfig {
    /// A jq expression whose first output is an object holding every
    /// `partitionKeyFromQuery` key the prefix names, e.g.
    /// `{service: .service, day: (.ts | .[0:10])}`.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// Partitions buffering at once; what a record of one more meets is `on_limit`.
    /// 1–10,000, default 500.
    #[serde(default = "default_max_active_partitions")]
    pub max_active_partitions: Spanned<u32>,
    /// What a record of a new partition meets when `max_active_partitions` are buffering.
    #[serde(default = "default_on_limit")]
    pub on_limit: Spanned<OnLimitConfig>,
    /// MiB of memory all partitions' buffered records may hold together (as the destination
    /// keeps them: compressed, or as Parquet columns); past it the largest partition is
    /// delivered early. Default 256.
    #[serde(default = "default_max_buffered_mib")]
    pub max_buffered_mib: Spanned<u32>,
}

/// What a record of a partition beyond `max_active_partitions` meets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimitConfig {
    /// The error output, as `DynamicPartitioning.ActivePartitionsLimitExceeded` (Firehose's
    /// behaviour; one new key never stalls the stream).
    #[default]
    ErrorOutput,
    /// The stream waits until a partition closes by its own size or age; producers are told
    /// "Slow down." meanwhile. Nothing goes to the error output.
    Backpressure,
}

fn default_max_active_partitions() -> Spanned<u32> {
    super::spanned(500)
}

fn default_on_limit() -> Spanned<OnLimitConfig> {
    super::spanned(OnLimitConfig::default())
}

fn default_max_buffered_mib() -> Spanned<u32> {
    super::spanned(256)
}

impl StreamConfig {
    /// The stream's object key prefix, parsed (with partition keys when the stream is
    /// partitioned).
    pub fn key_template(&self) -> Result<KeyTemplate, KeyTemplateError> {
        let prefix = &self.destination.layout().prefix.value;
        match self.partitioning {
            Some(_) => KeyTemplate::parse_partitioned(prefix),
            None => KeyTemplate::parse(prefix),
        }
    }

    /// What extracts the partition keys of the stream's records (`None` without
    /// `partitioning:`); fails when the query does not compile or keys cannot be produced.
    pub fn partitioner(&self) -> Result<Option<Partitioner>, String> {
        let Some(partitioning) = &self.partitioning else {
            return Ok(None);
        };
        let needed = self.partition_keys_needed()?;
        let query = partitioning.query.as_ref().map(|q| q.value.as_str());
        Partitioner::new(query, needed).map(Some)
    }
}

impl StreamConfig {
    /// The partition keys the stream's destination names: in an object store's prefix, or
    /// in a search destination's index.
    fn partition_keys_needed(&self) -> Result<Vec<(KeySource, String)>, String> {
        match &self.destination {
            Destination::Opensearch(search) => NameTemplate::parse(&search.index.value)
                .map(|index| index.keys())
                .map_err(|error| format!("invalid index: {error}")),
            _ => self
                .key_template()
                .map(|prefix| prefix.partition_keys())
                .map_err(|error| format!("invalid prefix: {error}")),
        }
    }
}

/// Problems with a stream's `partitioning:` section; `spooled` says whether streams keep a
/// spool.
pub(super) fn validate(
    name: &str,
    stream: &StreamConfig,
    spooled: bool,
    problems: &mut Vec<ConfigProblem>,
) {
    let Some(partitioning) = &stream.partitioning else {
        return;
    };
    let limit = &partitioning.max_active_partitions;
    if !(1..=10_000).contains(&limit.value) {
        problems.push(at(
            limit,
            format!(
                "stream `{name}`: `partitioning.max_active_partitions` must be between 1 and 10000, got {}",
                limit.value
            ),
        ));
    }
    let memory = &partitioning.max_buffered_mib;
    if memory.value == 0 {
        problems.push(at(
            memory,
            format!("stream `{name}`: `partitioning.max_buffered_mib` must be at least 1"),
        ));
    }
    // Where the keys are named: an object store's prefix, or a search index.
    let (names, place): (&Spanned<String>, &str) = match &stream.destination {
        Destination::Opensearch(search) => (&search.index, "index"),
        destination if destination.is_object_store() => (destination.layout().prefix, "prefix"),
        _ => {
            problems.push(at(
                limit,
                format!(
                    "stream `{name}`: dynamic partitioning needs an object destination (`local` \
                     or `s3`) or a search destination"
                ),
            ));
            return;
        }
    };
    if !spooled {
        problems.push(at(
            names,
            format!(
                "stream `{name}`: dynamic partitioning needs the spool (it keeps every \
                 partition's records until their batch is delivered, across restarts); remove \
                 `spool.fsync: disabled`"
            ),
        ));
    }
    // Syntax problems are reported with the other prefix and index checks.
    let Ok(needed) = stream.partition_keys_needed() else {
        return;
    };
    if needed.is_empty() {
        problems.push(at(
            names,
            format!(
                "stream `{name}`: a partitioned stream's `{place}` must name at least one key, \
                 e.g. `service=!{{partitionKeyFromQuery:service}}`"
            ),
        ));
    }
    if let Some((_, key)) = needed.iter().find(|(s, _)| *s == KeySource::Lambda)
        && stream.processors.is_empty()
    {
        problems.push(at(
            names,
            format!(
                "stream `{name}`: `!{{partitionKeyFromLambda:{key}}}` needs a transform in \
                 `processors:` that returns it in `partition-keys`"
            ),
        ));
    }
    match &partitioning.query {
        Some(query) => {
            if let Err(error) = Partitioner::new(Some(&query.value), Vec::new()) {
                problems.push(at(
                    query,
                    format!("stream `{name}`: `partitioning.query`: {error}"),
                ));
            } else if let Some(produced) = object_literal_keys(&query.value) {
                for (_, key) in needed.iter().filter(|(s, _)| *s == KeySource::Query) {
                    if !produced.contains(key) {
                        problems.push(at(
                            query,
                            format!(
                                "stream `{name}`: `partitioning.query` does not produce `{key}`, \
                                 which the {place} names (it produces: {})",
                                produced.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        None => {
            if let Some((_, key)) = needed.iter().find(|(s, _)| *s == KeySource::Query) {
                problems.push(at(
                    names,
                    format!(
                        "stream `{name}`: `!{{partitionKeyFromQuery:{key}}}` needs a \
                         `partitioning.query` that produces it"
                    ),
                ));
            }
        }
    }
}
