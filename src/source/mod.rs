//! Inputs the service reads itself, beside the API: tailed log files. Each `file` source of
//! a stream is one task that finds files by glob, reads new lines from each and queues them
//! into the stream's spool with a cursor mark (see [`crate::spool::CursorMark`]), so after
//! any crash reading resumes exactly after the last spooled line.

mod file;
mod lines;
mod multiline;
mod scan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{FileSourceConfig, StartAt};
use crate::deliver::{DeliveryCounters, Refusal, SourceRefusals};
use crate::spool::{CursorMark, SpoolError, StreamSpool};
use file::{Read, Reading, TrackedFile};
use lines::Lines;
pub use scan::Patterns;

/// Error code of a line longer than `max_line_kib`.
const LINE_TOO_LONG: &str = "Source.LineTooLong";

/// How often known files are checked for new lines when there was nothing to read.
const POLL: Duration = Duration::from_millis(100);

/// Most bytes read from all files of a source in one round before queueing them.
const ROUND_BYTES: usize = 4 << 20;

/// How long a queue waits for room before checking whether it should stop.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Scans a file no longer matched must miss, once read to its end, before it is let go
/// (a writer may still add to a file just renamed away).
const LET_GO_AFTER_SCANS: u32 = 2;

/// A `file` source's settings, resolved against the configuration file's directory.
#[derive(Debug, Clone)]
pub struct FileSourceSettings {
    /// Which files.
    pub patterns: Patterns,
    /// Where files found at the first start are read from.
    pub start_at: StartAt,
    /// How files are cut into records.
    pub reading: Reading,
    /// How often the patterns are matched again.
    pub scan_interval: Duration,
}

impl FileSourceSettings {
    /// The settings of `config`, relative patterns taken from `base_dir`.
    pub fn new(config: &FileSourceConfig, base_dir: &Path) -> Self {
        Self {
            patterns: Patterns::new(config, base_dir),
            start_at: config.start_at,
            reading: Reading {
                max_line: config.max_line_kib.value as usize * 1024,
                multiline: config.multiline.as_ref().and_then(|m| {
                    let start = regex::bytes::Regex::new(&m.start_pattern.value).ok()?;
                    let timeout = Duration::from_millis(m.timeout_ms.value);
                    Some(multiline::MultilineRule { start, timeout })
                }),
            },
            scan_interval: Duration::from_millis(config.scan_interval_ms.value),
        }
    }
}

/// The running sources of one stream.
#[derive(Debug)]
pub struct SourceTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SourceTasks {
    /// Starts one task per source of stream `stream`.
    pub fn start(
        stream: &str,
        sources: Vec<FileSourceSettings>,
        spool: &Arc<StreamSpool>,
        counters: &Arc<DeliveryCounters>,
        refusals: &Arc<SourceRefusals>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = sources
            .into_iter()
            .enumerate()
            .map(|(index, settings)| {
                let source = FileSource {
                    stream: stream.to_string(),
                    index,
                    settings,
                    spool: Arc::clone(spool),
                    counters: Arc::clone(counters),
                    refusals: Arc::clone(refusals),
                    files: Vec::new(),
                    metrics: SourceMetrics::new(stream, index),
                };
                tokio::spawn(source.run(stopped.clone()))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops reading: each source finishes queueing what it read, then ends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Per-source metrics, labelled by stream and the source's place in `sources:`.
#[derive(Debug)]
struct SourceMetrics {
    files: Gauge,
    behind: Gauge,
    lines: Counter,
    refused: Counter,
}

impl SourceMetrics {
    fn new(stream: &str, index: usize) -> Self {
        let labels = [
            ("stream", stream.to_string()),
            ("source", format!("file-{index}")),
        ];
        let mut refused_labels = labels.to_vec();
        refused_labels.push(("reason", LINE_TOO_LONG.to_string()));
        Self {
            files: gauge!("hydrant_source_files_watched", &labels),
            behind: gauge!("hydrant_source_bytes_behind", &labels),
            lines: counter!("hydrant_source_lines_read_total", &labels),
            refused: counter!("hydrant_source_lines_refused_total", &refused_labels),
        }
    }
}

/// One `file` source at work.
struct FileSource {
    stream: String,
    index: usize,
    settings: FileSourceSettings,
    spool: Arc<StreamSpool>,
    counters: Arc<DeliveryCounters>,
    refusals: Arc<SourceRefusals>,
    files: Vec<TrackedFile>,
    metrics: SourceMetrics,
}

impl FileSource {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let started_before = self.started_marker();
        let mut first_start = !started_before.exists();
        let mut next_scan = tokio::time::Instant::now();
        while !*stop.borrow() {
            if tokio::time::Instant::now() >= next_scan {
                self.scan(first_start).await;
                if first_start {
                    first_start = false;
                    if let Err(error) = mark_started(&started_before) {
                        tracing::error!(stream = %self.stream, marker = %started_before.display(), "cannot record that the file source started; a restart would apply `start_at` again: {error}");
                    }
                }
                next_scan = tokio::time::Instant::now() + self.settings.scan_interval;
            }
            let read_any = self.read_round(&stop).await;
            self.publish();
            if !read_any {
                let wait =
                    POLL.min(next_scan.saturating_duration_since(tokio::time::Instant::now()));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// The file whose presence says this source ran before, so `start_at` applies once.
    fn started_marker(&self) -> PathBuf {
        self.spool
            .dir()
            .join(format!("file-source-{}.started", self.index))
    }

    /// Matches the patterns again: starts files found, follows renamed ones, lets go of
    /// files gone and read to their end.
    async fn scan(&mut self, first_start: bool) {
        let files = std::mem::take(&mut self.files);
        let patterns = self.settings.patterns.clone();
        let spool = Arc::clone(&self.spool);
        let start_at = if first_start {
            self.settings.start_at
        } else {
            StartAt::Beginning
        };
        let reading = self.settings.reading.clone();
        let stream = self.stream.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let mut files = files;
            scan::rescan(&stream, &patterns, &mut files, &spool, start_at, &reading);
            files
        })
        .await;
        match scanned {
            Ok(files) => self.files = files,
            Err(error) => tracing::error!(stream = %self.stream, "file scan failed: {error}"),
        }
    }

    /// Reads what every file has new and queues it; whether anything was read.
    async fn read_round(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let files = std::mem::take(&mut self.files);
        let reading = self.settings.reading.clone();
        let spool = Arc::clone(&self.spool);
        let read = tokio::task::spawn_blocking(move || {
            let mut files = files;
            let budget = (ROUND_BYTES / files.len().max(1)).max(64 << 10);
            let reads: Vec<std::io::Result<Read>> =
                files.iter_mut().map(|f| f.read(budget)).collect();
            for (file, read) in files.iter_mut().zip(&reads) {
                if matches!(read, Ok(Read::Truncated))
                    && let Some(old) = file.restart(&reading)
                {
                    spool.retire_cursor(&old);
                }
            }
            (files, reads)
        })
        .await;
        let Ok((files, reads)) = read else {
            tracing::error!(stream = %self.stream, "a file read task failed");
            return false;
        };
        self.files = files;
        let mut read_any = false;
        for (i, read) in reads.into_iter().enumerate() {
            let file = &mut self.files[i];
            match read {
                Ok(Read::Truncated) => {
                    tracing::info!(stream = %self.stream, file = %file.path.display(), "file was truncated (copytruncate rotation); reading it again from its start");
                    read_any = true;
                }
                Ok(Read::Lines(lines)) => {
                    read_any |= !lines.ends.is_empty() || !lines.refused.is_empty();
                    self.refuse(i, &lines).await;
                    let file = &mut self.files[i];
                    if lines.ends.is_empty() {
                        continue;
                    }
                    if let Err(error) = queue(&self.spool, &self.counters, file, &lines, stop).await
                    {
                        // This file's lines and those read from the files after it in this
                        // round were not queued: they are read again.
                        for file in &mut self.files[i..] {
                            file.rewind(&self.settings.reading);
                        }
                        if !*stop.borrow() {
                            tracing::error!(stream = %self.stream, file = %self.files[i].path.display(), "cannot spool lines; reading them again: {error}");
                            tokio::time::sleep(ROOM_WAIT).await;
                        }
                        return read_any;
                    }
                    self.metrics.lines.increment(lines.ends.len() as u64);
                }
                Err(error) => {
                    tracing::warn!(stream = %self.stream, file = %file.path.display(), "cannot read file: {error}");
                }
            }
        }
        read_any
    }

    /// Logs, counts and writes to the error output the lines of file `index` refused in
    /// `lines` — before the lines after them are queued, so a restart that reads past them
    /// has written them already.
    async fn refuse(&self, index: usize, lines: &Lines) {
        if lines.refused.is_empty() {
            return;
        }
        let file = &self.files[index];
        let max_kib = self.settings.reading.max_line / 1024;
        let refusals: Vec<Refusal<'_>> = lines
            .refused
            .iter()
            .map(|refused| {
                self.metrics.refused.increment(1);
                tracing::warn!(
                    stream = %self.stream,
                    file = %file.path.display(),
                    offset = refused.offset,
                    bytes = refused.length,
                    error_code = LINE_TOO_LONG,
                    "line longer than `max_line_kib` refused; its first bytes go to the error output"
                );
                Refusal {
                    input: file.key.as_deref().unwrap_or_default(),
                    offset: refused.offset,
                    code: LINE_TOO_LONG,
                    message: format!(
                        "line of {} bytes at offset {} of {} is longer than max_line_kib ({max_kib}); \
                         rawData holds its first {} bytes",
                        refused.length,
                        refused.offset,
                        file.path.display(),
                        refused.head.len()
                    ),
                    data: &refused.head,
                }
            })
            .collect();
        self.refusals.write(&refusals).await;
    }

    fn publish(&self) {
        self.metrics.files.set(self.files.len() as f64);
        let behind: u64 = self
            .files
            .iter()
            .map(|f| f.size.saturating_sub(f.position))
            .sum();
        self.metrics.behind.set(behind as f64);
    }
}

/// Queues `lines` of `file` into the spool with their cursor mark and waits until they are
/// durable; moves the file's read position past them.
async fn queue(
    spool: &StreamSpool,
    counters: &DeliveryCounters,
    file: &mut TrackedFile,
    lines: &Lines,
    stop: &watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    let Some(key) = file.key.as_deref() else {
        return Ok(());
    };
    let slices = lines.slices();
    let mark = CursorMark {
        key,
        start: file.position,
        lengths: &lines.lengths,
    };
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let mut taken = 0;
    let mut pending = Vec::new();
    while taken < slices.len() {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let queued = spool
            .enqueue_waiting(&slices, arrival_ms, deadline, &mut taken, Some(mark))
            .await;
        pending.extend(queued?);
        if *stop.borrow() {
            break;
        }
    }
    for enqueued in pending {
        enqueued.durable().await?;
    }
    file.position += lines.lengths[..taken].iter().sum::<u64>();
    counters.accepted.fetch_add(taken as u64, Ordering::Relaxed);
    let bytes = match taken {
        0 => 0,
        taken => lines.ends[taken - 1],
    };
    counters
        .accepted_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    if taken < slices.len() {
        return Err(SpoolError::Closed);
    }
    Ok(())
}

fn mark_started(marker: &Path) -> std::io::Result<()> {
    std::fs::write(marker, b"")?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What `hydrant validate` says about every file source of `config`: warnings (a pattern
/// matching no file yet) and problems (a matching file that cannot be read), one line each.
pub fn check_sources(
    config: &crate::config::Config,
    base_dir: &Path,
) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    for (name, stream) in config.streams.iter() {
        for crate::config::SourceConfig::File(file) in &stream.sources {
            let (warned, failed) = scan::check_patterns(file, base_dir);
            let named = |line| format!("stream `{}`: {line}", name.value);
            warnings.extend(warned.into_iter().map(named));
            problems.extend(failed.into_iter().map(named));
        }
    }
    (warnings, problems)
}
