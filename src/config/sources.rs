//! `sources:` of a stream: inputs Hydrant reads itself, beside the API (log files).

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ConfigProblem;
use super::validate::at;

/// Longest line a file source takes: the longest record the API takes.
pub const MAX_LINE_KIB: u32 = 1000;

/// One source.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Tailed files, one record per line.
    File(FileSourceConfig),
}

/// A `file` source: every file matching `include` and no `exclude`, read line by line as
/// it grows, across rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Glob patterns of the files to read (relative ones from the configuration file's
    /// directory).
    pub include: Spanned<Vec<String>>,
    /// Glob patterns of files matching `include` not to read (`*.gz`); a pattern without a
    /// `/` is matched against the file name, one with a `/` against the whole path.
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// Where reading starts in a file found at start-up with no position saved: `end`
    /// (default, only new lines) or `beginning`. Files appearing later are read whole.
    #[serde(default)]
    pub start_at: StartAt,
    /// Joins the lines of one event (a stack trace) into one record.
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// Longest line (or joined event) in KiB (1–1000, default 1000); a longer one goes to
    /// the error output.
    #[serde(default = "default_max_line_kib")]
    pub max_line_kib: Spanned<u32>,
    /// How often the patterns are matched again to find new and rotated files, in
    /// milliseconds (10–60000, default 1000). Known files are read as soon as they grow.
    #[serde(default = "default_scan_interval_ms")]
    pub scan_interval_ms: Spanned<u64>,
}

/// How lines are joined into events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// Regular expression a line starting an event matches; the lines after it that do not
    /// match belong to it.
    pub start_pattern: Spanned<String>,
    /// An event no line has been added to for this long is complete, in milliseconds
    /// (1–60000, default 1000).
    #[serde(default = "default_multiline_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
}

/// Where a newly found file is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// After its last complete line.
    #[default]
    End,
    /// From its first byte.
    Beginning,
}

/// Problems with a stream's sources.
pub(super) fn validate(
    name: &str,
    sources: &[SourceConfig],
    spooled: bool,
    problems: &mut Vec<ConfigProblem>,
) {
    for SourceConfig::File(file) in sources {
        if !spooled {
            problems.push(at(
                &file.include,
                format!(
                    "stream `{name}`: a file source needs the spool (its read positions are kept \
                     with the spooled lines); remove `spool.fsync: disabled`"
                ),
            ));
        }
        if file.include.value.is_empty() {
            problems.push(at(
                &file.include,
                format!("stream `{name}`: `include` lists no pattern"),
            ));
        }
        for pattern in &file.include.value {
            if let Err(error) = glob::Pattern::new(pattern) {
                problems.push(at(
                    &file.include,
                    format!("stream `{name}`: include pattern `{pattern}` is not a glob: {error}"),
                ));
            }
        }
        for pattern in &file.exclude {
            if let Err(error) = glob::Pattern::new(&pattern.value) {
                problems.push(at(
                    pattern,
                    format!(
                        "stream `{name}`: exclude pattern `{}` is not a glob: {error}",
                        pattern.value
                    ),
                ));
            }
        }
        if !(1..=MAX_LINE_KIB).contains(&file.max_line_kib.value) {
            problems.push(at(
                &file.max_line_kib,
                format!(
                    "stream `{name}`: `max_line_kib` must be between 1 and {MAX_LINE_KIB}, got {}",
                    file.max_line_kib.value
                ),
            ));
        }
        if let Some(multiline) = &file.multiline {
            if let Err(error) = regex::bytes::Regex::new(&multiline.start_pattern.value) {
                problems.push(at(
                    &multiline.start_pattern,
                    format!(
                        "stream `{name}`: `start_pattern` is not a regular expression: {error}"
                    ),
                ));
            }
            if !(1..=60_000).contains(&multiline.timeout_ms.value) {
                problems.push(at(
                    &multiline.timeout_ms,
                    format!(
                        "stream `{name}`: `multiline.timeout_ms` must be between 1 and 60000, got {}",
                        multiline.timeout_ms.value
                    ),
                ));
            }
        }
        if !(10..=60_000).contains(&file.scan_interval_ms.value) {
            problems.push(at(
                &file.scan_interval_ms,
                format!(
                    "stream `{name}`: `scan_interval_ms` must be between 10 and 60000, got {}",
                    file.scan_interval_ms.value
                ),
            ));
        }
    }
}

fn default_max_line_kib() -> Spanned<u32> {
    super::spanned(MAX_LINE_KIB)
}

fn default_multiline_timeout_ms() -> Spanned<u64> {
    super::spanned(1000)
}

fn default_scan_interval_ms() -> Spanned<u64> {
    super::spanned(1000)
}

#[cfg(test)]
mod tests {
    use super::super::parse_config;

    fn problems(text: &str) -> String {
        parse_config(text, "sources.yaml").unwrap_err().to_string()
    }

    #[test]
    fn bad_file_sources_are_named_with_their_place() {
        let error = problems(
            "streams:\n  s:\n    sources:\n      - file:\n          include: [\"a[.log\"]\n          max_line_kib: 2000\n    destination: { local: { path: x } }\n",
        );
        assert!(
            error.contains("sources.yaml:5:20: stream `s`: include pattern `a[.log` is not a glob"),
            "{error}"
        );
        assert!(
            error.contains(
                "sources.yaml:6:25: stream `s`: `max_line_kib` must be between 1 and 1000, got 2000"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_bad_multiline_pattern_is_named_with_its_place() {
        let error = problems(
            "streams:\n  s:\n    sources:\n      - file:\n          include: [a.log]\n          multiline: { start_pattern: '^(', timeout_ms: 0 }\n    destination: { local: { path: x } }\n",
        );
        assert!(
            error.contains(
                "sources.yaml:6:39: stream `s`: `start_pattern` is not a regular expression"
            ),
            "{error}"
        );
        assert!(
            error.contains("`multiline.timeout_ms` must be between 1 and 60000, got 0"),
            "{error}"
        );
    }

    #[test]
    fn a_file_source_needs_the_spool() {
        let error = problems(
            "spool: { fsync: disabled }\nstreams:\n  s:\n    sources: [ { file: { include: [a.log] } } ]\n    destination: { local: { path: x } }\n",
        );
        assert!(error.contains("a file source needs the spool"), "{error}");
    }

    #[test]
    fn unknown_keys_of_a_file_source_are_refused() {
        let error = problems(
            "streams:\n  s:\n    sources: [ { file: { include: [a.log], start_at: middle } } ]\n    destination: { local: { path: x } }\n",
        );
        assert!(error.contains("sources.yaml:3:"), "{error}");
        assert!(error.contains("middle"), "{error}");
    }
}
