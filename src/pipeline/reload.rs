//! Changing the running streams without a restart (`SIGHUP`, `hydrant reload`): the file is
//! read again and, only if it is valid as a whole and every new or changed stream can be
//! built, streams added start, streams removed stop taking records and drain (their spool
//! is delivered first), and changed streams restart from their spool with the new settings.
//! The other streams are not touched.
//!
//! A changed stream's delivery loop is asked to stop after the batches it is writing; it
//! gets [`STOP_GRACE`] to do so (longer means its destination is failing, and the loop is
//! cut off: exactly as a crash would leave it, the journal then says what was written).
//! The new loop starts at the spool's checkpoint and rebuilds journaled batches with their
//! recorded boundaries, as after a restart. Records keep arriving into the spool meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Pipeline, PipelineError, StreamSet};
use crate::config::{Config, ConfigError, parse_config};

/// How long a changed stream's delivery loop may take to finish what it is writing.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What a reload changed.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Streams started.
    pub added: Vec<String>,
    /// Streams that stopped taking records and drain.
    pub removed: Vec<String>,
    /// Streams restarted with new settings.
    pub changed: Vec<String>,
    /// Streams left as they were.
    pub unchanged: Vec<String>,
    /// Sections that changed but apply only at the next start (`server`, `spool`).
    pub needs_restart: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is not a valid configuration.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// A new or changed stream cannot be built.
    #[error("{0}")]
    Stream(#[from] PipelineError),
    /// A stream added back while its earlier self still delivers what it took.
    #[error(
        "stream `{0}`: it was removed and still delivers what it took; reload again once that is done"
    )]
    StillDraining(String),
}

impl ReloadError {
    /// Every problem, one per line (`FILE:LINE:COLUMN: message` for the file's).
    pub fn problems(&self) -> Vec<String> {
        self.to_string().lines().map(str::to_string).collect()
    }
}

/// Each part of the file as written (after `${VAR}` substitution), to tell what changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fingerprints {
    server: serde_json::Value,
    spool: serde_json::Value,
    streams: HashMap<String, serde_json::Value>,
}

#[derive(Default, Deserialize)]
struct RawFile {
    #[serde(default)]
    server: serde_json::Value,
    #[serde(default)]
    spool: serde_json::Value,
    #[serde(default)]
    streams: BTreeMap<String, serde_json::Value>,
}

/// Loads the configuration at `path`, with the fingerprints of its parts.
pub fn load_with_fingerprints(path: &Path) -> Result<(Config, Fingerprints), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let config = parse_config(&text, &path.display().to_string())?;
    let options = serde_saphyr::options! {}.with_properties(std::env::vars().collect());
    // The text just parsed as a configuration, so it reads as plain data too.
    let raw: RawFile = serde_saphyr::from_str_with_options(&text, options).unwrap_or_default();
    Ok((
        config,
        Fingerprints {
            server: raw.server,
            spool: raw.spool,
            streams: raw.streams.into_iter().collect(),
        },
    ))
}

impl Pipeline {
    /// Reads the configuration at `path` again and applies it (see the module's docs).
    /// Nothing changes when it fails; the error lists every problem.
    pub async fn reload(&self, path: &Path) -> Result<ReloadReport, ReloadError> {
        let (config, fingerprints) = load_with_fingerprints(path)?;
        let mut factory = self.factory.lock().await;
        let current = self.snapshot();
        let mut report = ReloadReport::default();
        for (section, was, now) in [
            ("server", &factory.fingerprints.server, &fingerprints.server),
            ("spool", &factory.fingerprints.spool, &fingerprints.spool),
        ] {
            if was != now {
                report.needs_restart.push(section.to_string());
            }
        }
        // Build what is new or changed first: a stream that cannot be built refuses the
        // whole reload while everything still runs as before.
        let mut prepared = Vec::new();
        for (name, stream_config) in config.streams.iter() {
            let name = &name.value;
            let earlier = current.by_name.get(name);
            if earlier.is_some()
                && factory.fingerprints.streams.get(name) == fingerprints.streams.get(name)
            {
                report.unchanged.push(name.clone());
                continue;
            }
            factory.retired.retain(|(_, task)| !task.is_finished());
            let outcome = if earlier.is_none()
                && factory.retired.iter().any(|(retired, _)| retired == name)
            {
                Err(ReloadError::StillDraining(name.clone()))
            } else {
                let spool = earlier.and_then(|stream| stream.spool.clone());
                factory
                    .prepare(name, stream_config, spool)
                    .await
                    .map_err(ReloadError::from)
            };
            match outcome {
                Ok(parts) => prepared.push((name.clone(), stream_config, parts)),
                Err(error) => {
                    // Spools opened for new streams are closed again (their directories
                    // stay as they were).
                    for (name, _, parts) in prepared {
                        if let (None, Some(spool)) = (current.by_name.get(&name), parts.spool) {
                            let _ = tokio::task::spawn_blocking(move || spool.close()).await;
                        }
                    }
                    return Err(error);
                }
            }
        }
        let mut streams = current.by_name.clone();
        for (name, stream_config, parts) in prepared {
            let earlier = streams.get(&name).cloned();
            if let Some(earlier) = &earlier {
                factory.stop(&name, earlier).await;
                report.changed.push(name.clone());
            } else {
                report.added.push(name.clone());
            }
            let stream = factory.launch(&name, stream_config, parts, earlier.as_deref());
            streams.insert(name, stream);
        }
        let kept: Vec<&str> = config
            .streams
            .iter()
            .map(|(n, _)| n.value.as_str())
            .collect();
        let removed: Vec<String> = streams
            .keys()
            .filter(|name| !kept.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(stream) = streams.remove(&name) {
                if let Some(tasks) = factory.tasks.get_mut(&name) {
                    tasks.stop_sources().await;
                }
                stream.stop_taking().await;
                if let Some(tasks) = factory.tasks.remove(&name) {
                    let handles = tasks.into_handles().map(|task| (name.clone(), task));
                    factory.retired.extend(handles);
                }
                report.removed.push(name);
            }
        }
        factory.fingerprints = fingerprints;
        *self.running.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(StreamSet::new(streams));
        Ok(report)
    }
}

impl super::StreamFactory {
    /// Stops the tasks of `stream` (about to be replaced): with a spool, its delivery
    /// loop finishes what it is writing (or is cut off after [`STOP_GRACE`]) and the spool's
    /// journal writes settle; without one, its buffer closes and the loop delivers what it
    /// holds while the new stream already takes records.
    async fn stop(&mut self, name: &str, stream: &super::DeliveryStream) {
        let Some(mut tasks) = self.tasks.remove(name) else {
            return;
        };
        tasks.stop_sources().await;
        if stream.cluster_log.is_some() {
            // The assignment stops every partition's loop after its batch and gives the
            // partitions back; the new stream's assignment takes them again.
            if let Some(raise) = &tasks.stop {
                let _ = raise.send(true);
            }
            if let Some(assignment) = tasks.delivery {
                let _ = assignment.await;
            }
            if let Some(announce) = tasks.announce {
                announce.abort();
            }
            return;
        }
        let Some(spool) = &stream.spool else {
            stream.buffer.close();
            let handles = tasks.into_handles().map(|task| (name.to_string(), task));
            self.retired.extend(handles);
            return;
        };
        if let Some(feeder) = tasks.feeder {
            feeder.abort();
            let _ = feeder.await;
        }
        if let Some(raise) = &tasks.stop {
            let _ = raise.send(true);
        }
        if let Some(mut delivery) = tasks.delivery
            && tokio::time::timeout(STOP_GRACE, &mut delivery)
                .await
                .is_err()
        {
            tracing::warn!(
                stream = name,
                "the delivery loop did not finish its batch within {} s (is its destination failing?); restarting it from the spool",
                STOP_GRACE.as_secs()
            );
            delivery.abort();
            let _ = delivery.await;
        }
        if let Some(announce) = tasks.announce {
            announce.abort();
        }
        spool.quiesce().await;
    }
}
