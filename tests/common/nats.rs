//! A NATS JetStream cluster of its own for one test: three `nats-server` processes on
//! 127.0.0.1 (the binary installed by `scripts/test-servers.sh`), which the test may kill and
//! start again with their storage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{NatsOperator, eventually, free_port, servers};

/// A running JetStream cluster.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<NatsNode>,
    /// With TLS on the client port: the CA its certificate is signed by.
    tls_ca: Option<PathBuf>,
    /// In operator mode: the credentials [`client`](Self::client) connects with.
    credentials: Option<PathBuf>,
}

struct NatsNode {
    name: String,
    client_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream answers (a meta leader is elected).
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, "", None, None).await
    }

    /// Like [`start`](Self::start), clients reaching the nodes over TLS with the
    /// certificate `server.crt` and key `server.key` in `tls_dir` (issued for 127.0.0.1 by
    /// its `ca.crt`).
    pub async fn start_tls(size: usize, tls_dir: &std::path::Path) -> Self {
        let tls = format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            tls_dir.join("server.crt").display(),
            tls_dir.join("server.key").display()
        );
        Self::start_with(size, &tls, Some(tls_dir.join("ca.crt")), None).await
    }

    /// Like [`start`](Self::start), in operator mode: only users of `operator`'s account
    /// connect; the test's own client uses `credentials`.
    pub async fn start_operator(
        size: usize,
        operator: &NatsOperator,
        credentials: PathBuf,
    ) -> Self {
        Self::start_with(size, &operator.server_config(), None, Some(credentials)).await
    }

    async fn start_with(
        size: usize,
        extra_config: &str,
        tls_ca: Option<PathBuf>,
        credentials: Option<PathBuf>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, route))| {
                let name = format!("n{}", i + 1);
                let config = dir.path().join(format!("{name}.conf"));
                // A lone server runs JetStream on its own, without a cluster to form.
                let cluster = if size > 1 {
                    format!(
                        "cluster {{ name: hydrant-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                        routes.join(", ")
                    )
                } else {
                    String::new()
                };
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client}\n{extra_config}\
                         jetstream {{ store_dir: \"{}\" }}\n{cluster}",
                        dir.path().join(&name).display(),
                    ),
                )
                .unwrap();
                NatsNode {
                    name,
                    client_port: *client,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            dir,
            nodes,
            tls_ca,
            credentials,
        };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// `nats://` addresses of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The YAML list of the nodes' addresses.
    pub fn servers_yaml(&self) -> String {
        format!("[{}]", self.urls().join(", "))
    }

    /// A client of the cluster (connected once a node listens); fails the test with the
    /// last connection error and the nodes' logs after 30 s.
    pub async fn client(&self) -> async_nats::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addresses: Vec<async_nats::ServerAddr> =
            self.urls().iter().map(|u| u.parse().unwrap()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut options = async_nats::ConnectOptions::new();
            if let Some(ca) = &self.tls_ca {
                options = options.add_root_certificates(ca.clone()).require_tls(true);
            }
            if let Some(credentials) = &self.credentials {
                options = options.credentials_file(credentials).await.unwrap();
            }
            let error = match options.connect(addresses.clone()).await {
                Ok(client) => return client,
                Err(error) => error,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "no NATS node took a connection within 30 s: {error}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name)))
                    .unwrap_or_default();
                format!("--- nats-server {} ---\n{log}", n.name)
            })
            .collect()
    }

    /// Starts node `i` (again), with the storage it had.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", node.name))).unwrap();
        node.child = Some(
            Command::new(&servers().nats_server)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start nats-server"),
        );
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the node named `name` (`n1` …).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The name of the node leading JetStream stream `stream`.
    pub async fn stream_leader(&self, stream: &str) -> String {
        let jetstream = async_nats::jetstream::new(self.client().await);
        eventually(
            Duration::from_secs(30),
            "the stream to have a leader",
            || {
                let jetstream = jetstream.clone();
                async move {
                    let mut stream = jetstream.get_stream(stream).await.ok()?;
                    let info = stream.info().await.ok()?;
                    info.cluster.as_ref()?.leader.clone()
                }
            },
        )
        .await
    }

    /// Waits until a stream replicated on every node can be created (the cluster formed
    /// and elected its meta leader).
    async fn wait_ready(&self) {
        let client = self.client().await;
        let jetstream = async_nats::jetstream::new(client);
        let replicas = self.nodes.len();
        eventually(
            Duration::from_secs(30),
            "JetStream to form its cluster",
            || {
                let jetstream = jetstream.clone();
                async move {
                    jetstream
                        .get_or_create_stream(async_nats::jetstream::stream::Config {
                            name: "ready".to_string(),
                            subjects: vec!["ready".to_string()],
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .ok()?;
                    jetstream.delete_stream("ready").await.ok()
                }
            },
        )
        .await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
