//! Checks that need more than types: ranges, names, addresses, prefix expressions.

use std::net::SocketAddr;

use serde_saphyr::{Location, Spanned};

use super::{Compression, Config, ConfigProblem, Destination, StreamConfig};
use crate::ingest::stream_name::check_stream_name;
use hydrant_sinks::object::KeyTemplate;

/// Every problem in `config`, in file order.
pub(super) fn validate(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let server = &config.server;
    if server.listen.value.parse::<SocketAddr>().is_err() {
        problems.push(at(
            &server.listen,
            format!(
                "`listen` must be an IP address and port such as 127.0.0.1:4573, got `{}`",
                server.listen.value
            ),
        ));
    }
    if server.max_request_memory_mib.value < 40 {
        problems.push(at(
            &server.max_request_memory_mib,
            format!(
                "`max_request_memory_mib` must be at least 40 (two of the largest request bodies), got {}",
                server.max_request_memory_mib.value
            ),
        ));
    }
    for (timeout, key) in [
        (
            &server.header_read_timeout_seconds,
            "header_read_timeout_seconds",
        ),
        (
            &server.body_read_timeout_seconds,
            "body_read_timeout_seconds",
        ),
    ] {
        if !(1..=3600).contains(&timeout.value) {
            problems.push(at(
                timeout,
                format!("`{key}` must be 1 to 3600, got {}", timeout.value),
            ));
        }
    }
    let resolution = &server.console.resolution_seconds;
    if !(1..=60).contains(&resolution.value) {
        problems.push(at(
            resolution,
            format!(
                "`console.resolution_seconds` must be 1 to 60, got {}",
                resolution.value
            ),
        ));
    }
    if server.max_concurrent_requests.value == 0 {
        problems.push(at(
            &server.max_concurrent_requests,
            "`max_concurrent_requests` must be at least 1",
        ));
    }
    if let Some(auth) = &server.auth {
        validate_auth(auth, &mut problems);
    }
    let spool = &config.spool;
    if let Some(encryption) = &spool.encryption
        && let Err((key, message)) = encryption.keys()
    {
        problems.push(at(key, message));
    }
    if spool.fsync != super::FsyncConfig::Disabled {
        if spool.path.value.trim().is_empty() {
            problems.push(at(&spool.path, "`spool.path` is empty"));
        }
        if spool.max_mib.value < 8 {
            problems.push(at(
                &spool.max_mib,
                format!(
                    "`spool.max_mib` must be at least 8, got {}",
                    spool.max_mib.value
                ),
            ));
        }
    }
    if let Some(jetstream) = &spool.jetstream {
        super::cluster::validate(jetstream, &mut problems);
        if let Some(encryption) = &spool.encryption {
            problems.push(at(
                &encryption.key,
                "`spool.encryption` applies to the local spool; with `spool.jetstream` records are kept by the NATS servers (encrypt them at rest with their `jetstream: { cipher, key }` setting)",
            ));
        }
    }
    if let super::FsyncConfig::IntervalMs(ms) = spool.fsync
        && !(1..=60_000).contains(&ms)
    {
        problems.push(ConfigProblem::at(
            Location::UNKNOWN,
            format!("`spool.fsync.interval_ms` must be between 1 and 60000, got {ms}"),
        ));
    }
    if config.streams.0.is_empty() {
        problems.push(ConfigProblem::at(
            Location::UNKNOWN,
            "`streams` is empty: configure at least one delivery stream",
        ));
    }
    let spooled = config.spool.fsync != super::FsyncConfig::Disabled;
    for (name, stream) in config.streams.iter() {
        if let Err(reason) = check_stream_name(&name.value) {
            problems.push(at(name, format!("stream name `{}`: {reason}", name.value)));
        }
        validate_stream(&name.value, stream, spooled, &mut problems);
        if spool.jetstream.is_some() {
            super::cluster::validate_stream(name, stream, &mut problems);
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

fn validate_auth(auth: &super::AuthConfig, problems: &mut Vec<ConfigProblem>) {
    if auth.access_keys.value.is_empty() {
        problems.push(at(
            &auth.access_keys,
            "`auth.access_keys` is empty: no call could be made; add a key or remove `auth`",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for key in &auth.access_keys.value {
        let id = &key.id.value;
        if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            problems.push(at(
                &key.id,
                format!("access key id `{id}` must be 16 to 128 letters and digits"),
            ));
        }
        if !seen.insert(id.clone()) {
            problems.push(at(&key.id, format!("access key id `{id}` appears twice")));
        }
        if key.secret.value.expose().len() < 16 {
            problems.push(at(
                &key.secret,
                format!("the secret of access key `{id}` must be at least 16 characters"),
            ));
        }
        if key.allow.streams.is_empty() || key.allow.actions.is_empty() {
            problems.push(at(
                &key.id,
                format!(
                    "access key `{id}` allows nothing: give `allow.streams` and `allow.actions` (`[\"*\"]` for all)"
                ),
            ));
        }
        for pattern in &key.allow.streams {
            let name = pattern.value.replace('*', "a");
            if pattern.value != "*" && check_stream_name(&name).is_err() {
                problems.push(at(
                    pattern,
                    format!(
                        "`{}` is not a stream name pattern: stream names are 1-64 of [a-zA-Z0-9_.-], and `*` matches any run of them",
                        pattern.value
                    ),
                ));
            }
        }
        for action in &key.allow.actions {
            if action.value != "*" && !super::ACTIONS.contains(&action.value.as_str()) {
                problems.push(at(
                    action,
                    format!(
                        "unknown action `{}`; expected one of {} or `*`",
                        action.value,
                        super::ACTIONS.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(region) = &auth.region
        && (region.value.is_empty()
            || !region
                .value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        problems.push(at(
            region,
            format!(
                "`region` `{}` is not a region name such as us-east-1",
                region.value
            ),
        ));
    }
}

fn validate_stream(
    name: &str,
    stream: &StreamConfig,
    spooled: bool,
    problems: &mut Vec<ConfigProblem>,
) {
    let size = &stream.buffer.size_mib;
    if !(1..=128).contains(&size.value) {
        problems.push(at(
            size,
            format!(
                "stream `{name}`: `buffer.size_mib` must be between 1 and 128, got {}",
                size.value
            ),
        ));
    }
    let interval = &stream.buffer.interval_seconds;
    if interval.value > 900 {
        problems.push(at(
            interval,
            format!(
                "stream `{name}`: `buffer.interval_seconds` must be between 0 and 900, got {}",
                interval.value
            ),
        ));
    }
    super::parquet::validate(name, stream, problems);
    super::partitioning::validate(name, stream, spooled, problems);
    super::postgres::validate(name, stream, problems);
    super::search::validate(name, stream, problems);
    super::http_endpoint::validate(name, stream, problems);
    super::processors::validate(name, &stream.processors, problems);
    super::sources::validate(name, &stream.sources, spooled, problems);
    if stream.format.value == super::Format::Ndjson
        && stream.record_delimiter == super::RecordDelimiter::None
    {
        problems.push(ConfigProblem::at(
            Location::UNKNOWN,
            format!("stream `{name}`: `format: ndjson` writes one record per line; remove `record_delimiter: none`"),
        ));
    }
    if let Some(level) = &stream.compression_level {
        match stream.compression.value {
            Compression::None => problems.push(at(
                level,
                format!("stream `{name}`: `compression_level` needs a `compression` codec"),
            )),
            Compression::Gzip if level.value > 9 => problems.push(at(
                level,
                format!(
                    "stream `{name}`: gzip `compression_level` must be between 0 and 9, got {}",
                    level.value
                ),
            )),
            Compression::Gzip => {}
            Compression::Zstd if !(1..=19).contains(&level.value) => problems.push(at(
                level,
                format!(
                    "stream `{name}`: zstd `compression_level` must be between 1 and 19, got {}",
                    level.value
                ),
            )),
            Compression::Zstd => {}
            Compression::Snappy => problems.push(at(
                level,
                format!("stream `{name}`: snappy has no `compression_level`"),
            )),
        }
    }
    // Written in the file (not the default) for a stream that does not gzip.
    let members = &stream.gzip_members;
    if members.referenced != Location::UNKNOWN && stream.compression.value != Compression::Gzip {
        problems.push(at(
            members,
            format!("stream `{name}`: `gzip_members` needs `compression: gzip`"),
        ));
    }
    let layout = stream.destination.layout();
    if let Err(error) = KeyTemplate::parse_error_prefix(&layout.error_output_prefix.value) {
        let location = layout.error_output_prefix.referenced;
        problems.push(ConfigProblem {
            line: location.line(),
            column: location.column() + error.offset as u64,
            message: format!("stream `{name}`: `error_output_prefix`: {}", error.message),
        });
    }
    // A search destination has its own, lower limit.
    if layout.retry_duration.value > 604_800
        && !matches!(
            stream.destination,
            Destination::Opensearch(_) | Destination::HttpEndpoint(_)
        )
    {
        problems.push(at(
            layout.retry_duration,
            format!(
                "stream `{name}`: `retry_duration_seconds` must be between 0 and 604800 (7 days), got {}",
                layout.retry_duration.value
            ),
        ));
    }
    let prefix = layout.prefix;
    if let Err(error) = stream.key_template() {
        let location = prefix.referenced;
        problems.push(ConfigProblem {
            line: location.line(),
            column: location.column() + error.offset as u64,
            message: format!("stream `{name}`: `prefix`: {}", error.message),
        });
    }
    validate_destination(name, &stream.destination, problems);
}

/// Checks of one destination's own settings (an object destination, or a table's error
/// output).
fn validate_destination(name: &str, destination: &Destination, problems: &mut Vec<ConfigProblem>) {
    match destination {
        Destination::Local(local) => {
            if local.path.value.trim().is_empty() {
                problems.push(at(&local.path, format!("stream `{name}`: `path` is empty")));
            }
        }
        Destination::Postgres(pg) => validate_destination(name, &pg.error_output, problems),
        Destination::Opensearch(search) => {
            validate_destination(name, &search.backup.destination, problems)
        }
        Destination::HttpEndpoint(endpoint) => {
            validate_destination(name, &endpoint.backup.destination, problems)
        }
        Destination::S3(s3) => {
            if let Err((location, message)) = s3.server_side_encryption() {
                problems.push(ConfigProblem::at(
                    location,
                    format!("stream `{name}`: {message}"),
                ));
            }
            if s3.bucket.value.trim().is_empty() {
                problems.push(at(
                    &s3.bucket,
                    format!("stream `{name}`: `bucket` is empty"),
                ));
            }
            if let Some(endpoint) = &s3.endpoint
                && !is_http_url(&endpoint.value)
            {
                problems.push(at(
                    endpoint,
                    format!(
                        "stream `{name}`: `endpoint` must be an http:// or https:// URL, got `{}`",
                        endpoint.value
                    ),
                ));
            }
            if s3.multipart_part_mib.value < 5 {
                problems.push(at(
                    &s3.multipart_part_mib,
                    format!(
                        "stream `{name}`: `multipart_part_mib` must be at least 5 (the S3 minimum), got {}",
                        s3.multipart_part_mib.value
                    ),
                ));
            }
            if s3.multipart_threshold_mib.value < 5 {
                problems.push(at(
                    &s3.multipart_threshold_mib,
                    format!(
                        "stream `{name}`: `multipart_threshold_mib` must be at least 5, got {}",
                        s3.multipart_threshold_mib.value
                    ),
                ));
            }
        }
    }
}

/// Whether `url` is an `http://` or `https://` URL with something after the scheme.
pub(super) fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty())
}

/// A problem, located at `value`, when stream `name`'s `field` is outside `range`.
pub(super) fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    field: &str,
    value: &Spanned<T>,
    range: std::ops::RangeInclusive<T>,
    problems: &mut Vec<ConfigProblem>,
) {
    if !range.contains(&value.value) {
        problems.push(at(
            value,
            format!(
                "stream `{name}`: `{field}` must be between {} and {}, got {}",
                range.start(),
                range.end(),
                value.value
            ),
        ));
    }
}

pub(super) fn at<T>(spanned: &Spanned<T>, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem::at(spanned.referenced, message)
}
