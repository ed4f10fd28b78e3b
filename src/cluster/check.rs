//! What `hydrant validate` checks of a JetStream cluster before a node is started on it:
//! that its servers answer with these credentials, run JetStream, are enough for the
//! configured replicas, run a nats-server release that keeps acknowledged messages
//! through a server's loss, that the streams already there match the configuration, and that
//! the credentials may write what a node writes.

use std::path::Path;

use async_nats::{Event, ServerError, client::RequestErrorKind, header, jetstream};
use tokio::sync::mpsc;

use super::server_version::version_problem;
use super::{ClusterSettings, LEASE_BUCKET, connect_client_with, stream_name};
use crate::config::Config;

/// What a probe publish learned of the credentials' right to write one subject.
enum Probe {
    /// JetStream answered (and, by the probe's expected sequence, stored nothing).
    Allowed,
    /// Nothing listens on the subject: its stream is not there yet.
    NoStream,
    /// The server refused the publish (or the reply's subscription) with this error.
    Denied(String),
    /// No answer for another reason.
    Unknown(String),
}

/// Why the credentials cannot write below `subjects` of JetStream stream `stream` (`what`
/// it is for), if they cannot.
async fn write_problem(
    client: &async_nats::Client,
    denials: &mut mpsc::UnboundedReceiver<String>,
    stream: &str,
    what: &str,
    subjects: &str,
) -> Option<String> {
    match probe_publish(client, denials, &format!("{subjects}.hydrant-validate")).await {
        Probe::Allowed | Probe::NoStream => None,
        Probe::Denied(denial) => Some(format!(
            "the credentials may not write JetStream stream {stream} ({what}): the server answered `{denial}`; allow publishing to `{subjects}.>` and subscribing to `_INBOX.>`"
        )),
        Probe::Unknown(error) => Some(format!(
            "cannot check that the credentials may write JetStream stream {stream} ({what}): {error}"
        )),
    }
}

/// Publishes an empty message to `subject` that JetStream is sure to refuse (it expects a
/// last sequence no subject reaches), so the right to write it is learned without writing;
/// `denials` carries the server's permission errors.
async fn probe_publish(
    client: &async_nats::Client,
    denials: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
) -> Probe {
    while denials.try_recv().is_ok() {}
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        u64::MAX.to_string().as_str(),
    );
    let request = client.request_with_headers(subject.to_string(), headers, bytes::Bytes::new());
    tokio::select! {
        answer = request => match answer {
            Ok(_) => Probe::Allowed,
            Err(error) if error.kind() == RequestErrorKind::NoResponders => Probe::NoStream,
            Err(error) => match denials.try_recv() {
                Ok(denial) => Probe::Denied(denial),
                Err(_) => Probe::Unknown(error.to_string()),
            },
        },
        Some(denial) = denials.recv() => Probe::Denied(denial),
    }
}

/// Problems with the cluster `config` names (none without `spool.jetstream`); `notes` gets
/// what is fine but worth knowing (streams to be created at the first start).
pub async fn check_cluster(
    config: &Config,
    base_dir: &Path,
    notes: &mut Vec<String>,
) -> Vec<String> {
    let Some(jetstream_config) = &config.spool.jetstream else {
        return Vec::new();
    };
    let settings = ClusterSettings::new(
        jetstream_config,
        config.spool.max_mib.value * 1024 * 1024,
        base_dir,
    );
    let (denied, mut denials) = mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let denied = denied.clone();
        async move {
            if let Event::ServerError(ServerError::Other(error)) = event
                && error.contains("Permissions Violation")
            {
                let _ = denied.send(error);
            }
        }
    });
    let client = match connect_client_with(&settings, "validate", options).await {
        Ok(client) => client,
        Err(error) => return vec![error.to_string()],
    };
    let info = client.server_info();
    let mut problems: Vec<String> = version_problem(&info.server_name, &info.version)
        .into_iter()
        .collect();
    if !info.jetstream {
        problems.push(format!(
            "NATS server {} does not run JetStream; enable it (`jetstream {{ store_dir: ... }}`)",
            info.server_name
        ));
        return problems;
    }
    // Every server of the cluster announces its client address to clients.
    let servers = info.connect_urls.len().max(1);
    if settings.replicas > servers {
        problems.push(format!(
            "`spool.jetstream.replicas` is {} but the NATS cluster has {servers} server{}; lower it or add servers",
            settings.replicas,
            if servers == 1 { "" } else { "s" }
        ));
    }
    let jetstream = jetstream::new(client.clone());
    // Each stream with the subjects a node writes below (partitions, lease keys).
    let mut wanted: Vec<(String, String, String)> = config
        .streams
        .iter()
        .map(|(name, _)| {
            (
                stream_name(&name.value),
                format!("delivery stream `{}`", name.value),
                format!("hydrant.{}", name.value),
            )
        })
        .collect();
    wanted.push((
        format!("KV_{LEASE_BUCKET}"),
        "the lease bucket".to_string(),
        format!("$KV.{LEASE_BUCKET}"),
    ));
    for (stream, what, subjects) in wanted {
        match jetstream.get_stream(&stream).await {
            Ok(mut found) => match found.info().await {
                Ok(info) if info.config.num_replicas != settings.replicas => problems.push(format!(
                    "JetStream stream {stream} ({what}) has {} replicas, the configuration asks for {}; change one of them (`nats stream edit`)",
                    info.config.num_replicas, settings.replicas
                )),
                Ok(_) => problems.extend(
                    write_problem(&client, &mut denials, &stream, &what, &subjects).await,
                ),
                Err(error) => problems.push(format!(
                    "cannot read JetStream stream {stream} ({what}): {error}; check the credentials' permissions"
                )),
            },
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref cause)
                        if cause.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                notes.push(format!(
                    "JetStream stream {stream} ({what}) will be created at the first start"
                ));
            }
            Err(error) => problems.push(format!(
                "cannot look up JetStream stream {stream} ({what}): {error}; check the credentials' permissions"
            )),
        }
    }
    problems
}
