//! Finding a source's files: its glob patterns matched against the file system, and what
//! each match means for the files already being read.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{FileSourceConfig, StartAt};
use crate::spool::StreamSpool;

use super::LET_GO_AFTER_SCANS;
use super::file::{Reading, TrackedFile, identity};

/// Bytes looked back from a file's end for its last complete line (`start_at: end`).
const TAIL_LOOKBACK: u64 = 64 << 10;

/// Which files a source reads.
#[derive(Debug, Clone)]
pub struct Patterns {
    include: Vec<String>,
    /// (pattern, whether it is matched against the file name only).
    exclude: Vec<(glob::Pattern, bool)>,
}

impl Patterns {
    /// The patterns of `config`, relative ones taken from `base_dir`.
    pub fn new(config: &FileSourceConfig, base_dir: &Path) -> Self {
        let include = config
            .include
            .value
            .iter()
            .map(|p| base_dir.join(p).to_string_lossy().into_owned())
            .collect();
        let exclude = config
            .exclude
            .iter()
            .filter_map(|p| {
                let by_name = !p.value.contains('/');
                glob::Pattern::new(&p.value).ok().map(|g| (g, by_name))
            })
            .collect();
        Self { include, exclude }
    }

    /// Every file matching, each once, in pattern then name order.
    pub fn matches(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for pattern in &self.include {
            self.add_matches(pattern, &mut found);
        }
        found
    }

    /// Adds the files `pattern` (one of `include`) matches and no exclude pattern does.
    fn add_matches(&self, pattern: &str, found: &mut Vec<PathBuf>) {
        let Ok(paths) = glob::glob(pattern) else {
            return;
        };
        for path in paths.flatten() {
            if !self.excluded(&path) && !found.contains(&path) {
                found.push(path);
            }
        }
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.iter().any(|(pattern, by_name)| {
            if *by_name {
                path.file_name()
                    .is_some_and(|name| pattern.matches(&name.to_string_lossy()))
            } else {
                pattern.matches_path(path)
            }
        })
    }
}

/// Matches `patterns` again and updates `files`: a known file (same device and inode) found
/// under a new name is followed, a new one starts (from its saved position, else per
/// `start_at`), one no longer found is let go once read to its end.
pub fn rescan(
    stream: &str,
    patterns: &Patterns,
    files: &mut Vec<TrackedFile>,
    spool: &StreamSpool,
    start_at: StartAt,
    reading: &Reading,
) {
    let mut seen = HashSet::new();
    for path in patterns.matches() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let inode = (meta.dev(), meta.ino());
        if !seen.insert(inode) {
            continue;
        }
        if let Some(known) = files.iter_mut().find(|f| f.inode == inode) {
            known.path = path;
            known.unseen_scans = 0;
            continue;
        }
        match start(&path, spool, start_at, reading) {
            Ok(file) => {
                tracing::info!(stream, file = %path.display(), position = file.position, "reading file");
                files.push(file);
            }
            Err(error) => {
                tracing::warn!(stream, file = %path.display(), "cannot read file; will try again at the next scan: {error}");
            }
        }
    }
    files.retain_mut(|file| {
        if seen.contains(&file.inode) {
            return true;
        }
        if !file.at_end() {
            return true;
        }
        file.unseen_scans += 1;
        if file.unseen_scans < LET_GO_AFTER_SCANS {
            return true;
        }
        tracing::info!(stream, file = %file.path.display(), "file no longer matched (deleted or renamed away) and read to its end; letting it go");
        if let Some(key) = &file.key {
            spool.retire_cursor(key);
        }
        false
    });
}

/// Opens a newly found file at its saved position, or where `start_at` says.
fn start(
    path: &Path,
    spool: &StreamSpool,
    start_at: StartAt,
    reading: &Reading,
) -> std::io::Result<TrackedFile> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let key = identity(&file)?;
    let saved = key.as_deref().and_then(|k| spool.cursor(k));
    let position = match (saved, start_at) {
        // Shorter than what was read of it: truncated while the service was down.
        (Some(saved), _) if saved > size => 0,
        (Some(saved), _) => saved,
        (None, StartAt::Beginning) => 0,
        (None, StartAt::End) => {
            let end = after_last_line(&file, size)?;
            // Kept at once: a file that gets no new line before a restart must not be read
            // from its beginning then.
            if let Some(key) = &key {
                spool.set_cursor(key, end)?;
            }
            end
        }
    };
    TrackedFile::new(path, file, key, position, reading)
}

/// Offset just past the last newline in `file`'s last [`TAIL_LOOKBACK`] bytes (its end
/// when there is none there and the file is longer, 0 when it is shorter).
fn after_last_line(file: &File, size: u64) -> std::io::Result<u64> {
    let from = size.saturating_sub(TAIL_LOOKBACK);
    let mut tail = vec![0u8; (size - from) as usize];
    file.read_exact_at(&mut tail, from)?;
    Ok(match memchr::memrchr(b'\n', &tail) {
        Some(newline) => from + newline as u64 + 1,
        None if from > 0 => size,
        None => 0,
    })
}

/// What `hydrant validate` says about a source's patterns: one line per pattern matching
/// nothing (a warning: the files may appear later) and per file that cannot be read.
pub fn check_patterns(config: &FileSourceConfig, base_dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let patterns = Patterns::new(config, base_dir);
    for (pattern, absolute) in config.include.value.iter().zip(&patterns.include) {
        let mut matched = Vec::new();
        patterns.add_matches(absolute, &mut matched);
        if matched.is_empty() {
            warnings.push(format!("include pattern `{pattern}` matches no file yet"));
        }
        for path in matched {
            if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let readable = File::open(&path).and_then(|f| f.read_at(&mut [0u8; 1], 0));
            if let Err(error) = readable {
                problems.push(format!("cannot read `{}`: {error}", path.display()));
            }
        }
    }
    (warnings, problems)
}
