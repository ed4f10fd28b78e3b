//! `spool.jetstream`: running as one node of a Hydrant cluster whose accepted records are kept
//! in NATS JetStream instead of the local spool.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::at;
use super::{ConfigProblem, StreamConfig};

/// Where the cluster keeps its records and leases, and how it splits the work.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// NATS servers of the JetStream cluster (`nats://host:4222`); any of them will do, the
    /// client learns the others.
    #[serde(default = "no_servers")]
    pub servers: Spanned<Vec<String>>,
    /// Copies JetStream keeps of every record and lease (1–5, default 3).
    #[serde(default = "default_replicas")]
    pub replicas: Spanned<u32>,
    /// Ordered logs each delivery stream is split into; each is delivered by one node at a
    /// time (1–1024, default 8). Fixed once a stream has records.
    #[serde(default = "default_partitions")]
    pub partitions: Spanned<u32>,
    /// A NATS credentials file (`.creds`, a user JWT and its nkey seed); relative to the
    /// configuration file.
    #[serde(default)]
    pub credentials: Option<Spanned<String>>,
    /// TLS to the NATS servers.
    #[serde(default)]
    pub tls: Option<JetStreamTlsConfig>,
    /// How long a node that stops renewing its partition leases keeps them, in seconds
    /// (3–300, default 10): the longest a lost node's partitions wait for another node.
    #[serde(default = "default_lease_ttl_seconds")]
    pub lease_ttl_seconds: Spanned<u64>,
}

/// TLS settings of the connection to the NATS servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamTlsConfig {
    /// PEM file of the certificate authorities the servers' certificates are checked
    /// against (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// PEM client certificate, for servers that verify clients (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
}

fn no_servers() -> Spanned<Vec<String>> {
    super::spanned(Vec::new())
}

fn default_replicas() -> Spanned<u32> {
    super::spanned(3)
}

fn default_partitions() -> Spanned<u32> {
    super::spanned(8)
}

fn default_lease_ttl_seconds() -> Spanned<u64> {
    super::spanned(10)
}

/// Problems with `spool.jetstream` itself.
pub(super) fn validate(config: &JetStreamConfig, problems: &mut Vec<ConfigProblem>) {
    if config.servers.value.is_empty() {
        problems.push(at(
            &config.servers,
            "`spool.jetstream`: missing field `servers` (or an empty list): name at least one NATS server, such as nats://10.0.0.5:4222",
        ));
    }
    for server in &config.servers.value {
        if let Err(error) = server.parse::<async_nats::ServerAddr>() {
            problems.push(at(
                &config.servers,
                format!(
                    "`spool.jetstream.servers`: `{server}` is not a NATS server address such as nats://10.0.0.5:4222: {error}"
                ),
            ));
        }
    }
    if !(1..=5).contains(&config.replicas.value) {
        problems.push(at(
            &config.replicas,
            format!(
                "`spool.jetstream`: `replicas` must be between 1 and 5, got {}",
                config.replicas.value
            ),
        ));
    }
    if !(1..=1024).contains(&config.partitions.value) {
        problems.push(at(
            &config.partitions,
            format!(
                "`spool.jetstream`: `partitions` must be between 1 and 1024, got {}",
                config.partitions.value
            ),
        ));
    }
    if !(3..=300).contains(&config.lease_ttl_seconds.value) {
        problems.push(at(
            &config.lease_ttl_seconds,
            format!(
                "`spool.jetstream`: `lease_ttl_seconds` must be between 3 and 300, got {}",
                config.lease_ttl_seconds.value
            ),
        ));
    }
    if let Some(tls) = &config.tls
        && let (Some(file), None) | (None, Some(file)) = (&tls.cert_file, &tls.key_file)
    {
        problems.push(at(
            file,
            "`spool.jetstream.tls`: `cert_file` and `key_file` go together",
        ));
    }
}

/// Problems with stream `name` on a cluster: what it cannot do there (yet).
pub(super) fn validate_stream(
    name: &Spanned<String>,
    stream: &StreamConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let stream_name = &name.value;
    if stream_name.contains('.') {
        problems.push(at(
            name,
            format!(
                "stream name `{stream_name}`: on a JetStream cluster a stream name cannot contain `.` (it separates NATS subject tokens); use `-` or `_`"
            ),
        ));
    }
    if !stream.sources.is_empty() {
        problems.push(at(
            name,
            format!(
                "stream `{stream_name}`: file sources keep their read positions in the local spool and are not available on a JetStream cluster; remove `sources` or `spool.jetstream`"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_config;

    #[test]
    fn a_cluster_section_loads_with_its_defaults() {
        let config = parse_config(
            "spool:\n  jetstream:\n    servers: [nats://127.0.0.1:4222]\nstreams:\n  s:\n    destination:\n      local: { path: x }\n",
            "c.yaml",
        )
        .unwrap();
        let jetstream = config.spool.jetstream.unwrap();
        assert_eq!(jetstream.servers.value, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(jetstream.replicas.value, 3);
        assert_eq!(jetstream.partitions.value, 8);
        assert_eq!(jetstream.lease_ttl_seconds.value, 10);
    }

    #[test]
    fn cluster_mistakes_are_named_where_they_are() {
        let error = parse_config(
            "spool:\n  encryption: { key: c3Bvb2wtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyEhISE= }\n  jetstream:\n    servers: [\"http://x:1:2\"]\n    partitions: 0\n    tls: { cert_file: c.pem }\nstreams:\n  a.b:\n    destination:\n      local: { path: x }\n    sources:\n      - file: { include: [\"*.log\"] }\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "c.yaml:2:22: `spool.encryption` applies to the local spool",
            "c.yaml:4:14: `spool.jetstream.servers`: `http://x:1:2` is not a NATS server address",
            "c.yaml:5:17: `spool.jetstream`: `partitions` must be between 1 and 1024, got 0",
            "c.yaml:6:23: `spool.jetstream.tls`: `cert_file` and `key_file` go together",
            "c.yaml:8:3: stream name `a.b`: on a JetStream cluster a stream name cannot contain `.`",
            "c.yaml:8:3: stream `a.b`: file sources keep their read positions in the local spool",
        ] {
            assert!(error.contains(expected), "{expected}\nnot in\n{error}");
        }
    }
}
