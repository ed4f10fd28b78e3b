//! What `hydrant validate` checks of a JetStream cluster before a node is started on it:
//! that its servers answer with these credentials, run JetStream, are enough for the
//! configured replicas, and that the streams already there match the configuration.

use std::path::Path;

use async_nats::jetstream;

use super::{ClusterSettings, LEASE_BUCKET, connect_client, stream_name};
use crate::config::Config;

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
    let client = match connect_client(&settings, "validate").await {
        Ok(client) => client,
        Err(error) => return vec![error.to_string()],
    };
    let info = client.server_info();
    let mut problems = Vec::new();
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
    let jetstream = jetstream::new(client);
    let mut wanted: Vec<(String, String)> = config
        .streams
        .iter()
        .map(|(name, _)| {
            (
                stream_name(&name.value),
                format!("delivery stream `{}`", name.value),
            )
        })
        .collect();
    wanted.push((format!("KV_{LEASE_BUCKET}"), "the lease bucket".to_string()));
    for (stream, what) in wanted {
        match jetstream.get_stream(&stream).await {
            Ok(mut found) => match found.info().await {
                Ok(info) if info.config.num_replicas != settings.replicas => problems.push(format!(
                    "JetStream stream {stream} ({what}) has {} replicas, the configuration asks for {}; change one of them (`nats stream edit`)",
                    info.config.num_replicas, settings.replicas
                )),
                Ok(_) => {}
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
