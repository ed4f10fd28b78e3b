//! Shared harness of the integration tests: the test servers (started by
//! `scripts/test-servers.sh`), the real `hydrant` binary, and readers for what it delivered.
#![allow(dead_code, unused_imports)]

mod bulk_server;
mod endpoint_receiver;
mod nats;
mod nats_auth;
mod producers;

pub use bulk_server::{BulkServer, Fate};
pub use endpoint_receiver::{Answer, EndpointReceiver, Received};
pub use nats::NatsCluster;
pub use nats_auth::NatsOperator;
pub use producers::{
    KilledRun, Producers, check_exactly_once, produce_through_kills, produce_through_kills_with,
    record,
};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use object_store::ObjectStoreExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, path::Path as ObjectPath};
use serde_json::Value;

/// Where the test servers are.
#[derive(Debug, Clone)]
pub struct TestServers {
    pub s3_endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub python: PathBuf,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub pg_db: String,
    /// Directory of the PostgreSQL tools (`psql`).
    pub pg_bin: PathBuf,
    /// The CA certificate the test server's TLS certificate is signed by.
    pub pg_ca: PathBuf,
    /// Base URL of the OpenSearch-compatible server.
    pub search_endpoint: String,
    /// The AWS CLI (`aws`).
    pub aws_cli: PathBuf,
    /// `node_modules` holding the AWS SDK for JavaScript v3's Firehose client.
    pub node_modules: PathBuf,
    /// Headless Chromium, for the console's tests.
    pub chromium: PathBuf,
    /// `systemd-analyze`, to verify the example unit.
    pub systemd_analyze: PathBuf,
    /// Prometheus's `promtool`, to check the example alert rules.
    pub promtool: PathBuf,
    /// `nats-server`, which the cluster tests run as JetStream clusters of their own.
    pub nats_server: PathBuf,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test servers; started through the project's script when `scripts/test` has not
/// already exported their settings (for example when running `cargo test` directly).
pub fn servers() -> &'static TestServers {
    static SERVERS: OnceLock<TestServers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let mut settings: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("HYDRANT_TEST_"))
            .collect();
        if !settings.contains_key("HYDRANT_TEST_S3_ENDPOINT")
            || !settings.contains_key("HYDRANT_TEST_PG_CA")
            || !settings.contains_key("HYDRANT_TEST_SEARCH_ENDPOINT")
            || !settings.contains_key("HYDRANT_TEST_NODE_MODULES")
            || !settings.contains_key("HYDRANT_TEST_CHROMIUM")
            || !settings.contains_key("HYDRANT_TEST_PROMTOOL")
            || !settings.contains_key("HYDRANT_TEST_NATS_SERVER")
        {
            let output = Command::new(repo_root().join("scripts/test-servers.sh"))
                .arg("ensure")
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/test-servers.sh");
            assert!(
                output.status.success(),
                "scripts/test-servers.sh ensure failed"
            );
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if let Some((k, v)) = line.split_once('=') {
                    settings.insert(k.to_string(), v.to_string());
                }
            }
        }
        let get = |k: &str| {
            settings
                .get(k)
                .unwrap_or_else(|| panic!("{k} missing from the test server settings"))
                .clone()
        };
        TestServers {
            s3_endpoint: get("HYDRANT_TEST_S3_ENDPOINT"),
            access_key: get("HYDRANT_TEST_S3_ACCESS_KEY"),
            secret_key: get("HYDRANT_TEST_S3_SECRET_KEY"),
            python: PathBuf::from(get("HYDRANT_TEST_PYTHON")),
            pg_host: get("HYDRANT_TEST_PG_HOST"),
            pg_port: get("HYDRANT_TEST_PG_PORT").parse().unwrap(),
            pg_user: get("HYDRANT_TEST_PG_USER"),
            pg_password: get("HYDRANT_TEST_PG_PASSWORD"),
            pg_db: get("HYDRANT_TEST_PG_DB"),
            pg_bin: PathBuf::from(get("HYDRANT_TEST_PG_BIN")),
            pg_ca: PathBuf::from(get("HYDRANT_TEST_PG_CA")),
            search_endpoint: get("HYDRANT_TEST_SEARCH_ENDPOINT"),
            aws_cli: PathBuf::from(get("HYDRANT_TEST_AWS_CLI")),
            node_modules: PathBuf::from(get("HYDRANT_TEST_NODE_MODULES")),
            chromium: PathBuf::from(get("HYDRANT_TEST_CHROMIUM")),
            systemd_analyze: PathBuf::from(get("HYDRANT_TEST_SYSTEMD_ANALYZE")),
            promtool: PathBuf::from(get("HYDRANT_TEST_PROMTOOL")),
            nats_server: PathBuf::from(get("HYDRANT_TEST_NATS_SERVER")),
        }
    })
}

/// The directory of the built WebAssembly transforms (examples and test guests):
/// `HYDRANT_TEST_TRANSFORMS` from `scripts/test`, else built now by
/// `scripts/build-transforms`.
pub fn transforms_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("HYDRANT_TEST_TRANSFORMS") {
            return PathBuf::from(dir);
        }
        let output = Command::new(repo_root().join("scripts/build-transforms"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-transforms");
        assert!(output.status.success(), "scripts/build-transforms failed");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// The built component of transform crate `name` (`hydrant_example_redact`, ...).
pub fn transform_module(name: &str) -> PathBuf {
    let path = transforms_dir().join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `hydrant validate` of the configuration `config`: whether it passed, and its output.
pub fn validate_config(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hydrant.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The error records (JSON lines) of type `error_type` under the local directory `dir`.
pub fn error_records(dir: &Path, error_type: &str) -> Vec<Value> {
    let dir = dir.join(error_type);
    if !dir.exists() {
        return Vec::new();
    }
    files_under(&dir)
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// The decoded `rawData` of an error record.
pub fn raw_data(error: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(error["rawData"].as_str().unwrap())
        .unwrap()
}

/// A client of the test database, with its connection driven in the background.
pub async fn pg_client() -> tokio_postgres::Client {
    let s = servers();
    let (client, connection) = tokio_postgres::Config::new()
        .host(&s.pg_host)
        .port(s.pg_port)
        .user(&s.pg_user)
        .password(&s.pg_password)
        .dbname(&s.pg_db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// A new table `(id text, doc jsonb)` named after `prefix`, for records with an `id`.
pub async fn new_id_doc_table(prefix: &str) -> String {
    let table = format!(
        "{prefix}_{:x}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    pg_client()
        .await
        .batch_execute(&format!("CREATE TABLE {table} (id text, doc jsonb)"))
        .await
        .unwrap();
    table
}

/// How often each `id` (a text column) appears in `table`.
pub async fn ids_in_table(client: &tokio_postgres::Client, table: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for row in client
        .query(&format!("SELECT id FROM {table}"), &[])
        .await
        .unwrap()
    {
        *counts.entry(row.get(0)).or_insert(0) += 1;
    }
    counts
}

/// The YAML of a postgres destination on the test server (password through `${PGPASS_TEST}`
/// unless `password` is given), with an error output in the local directory `errors`.
pub fn postgres_destination_yaml(table: &str, columns: &str, password: Option<&str>) -> String {
    let s = servers();
    format!(
        "postgres:\n  host: {}\n  port: {}\n  user: {}\n  password: \"{}\"\n  dbname: {}\n  table: {table}\n  \
         initial_backoff_ms: 50\n  max_backoff_seconds: 1\n  \
         error_output:\n    local: {{ path: errors }}\n  columns:\n{}",
        s.pg_host,
        s.pg_port,
        s.pg_user,
        password.unwrap_or(&s.pg_password),
        s.pg_db,
        indent(columns, 4)
    )
}

/// A name no other test run uses: lowercase, valid as a bucket and as a stream name.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{:x}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Creates `bucket` on the S3 server.
pub fn create_bucket(bucket: &str) {
    let status = Command::new(repo_root().join("scripts/test-servers.sh"))
        .args(["bucket", bucket])
        .env("HYDRANT_TEST_S3_PORT", port_of(&servers().s3_endpoint))
        .env("HYDRANT_TEST_S3_ACCESS_KEY", &servers().access_key)
        .env("HYDRANT_TEST_S3_SECRET_KEY", &servers().secret_key)
        .status()
        .expect("run scripts/test-servers.sh bucket");
    assert!(status.success(), "creating bucket {bucket} failed");
}

fn port_of(endpoint: &str) -> String {
    endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// A fresh bucket with a unique name.
pub fn new_bucket(prefix: &str) -> String {
    let bucket = unique_name(prefix);
    create_bucket(&bucket);
    bucket
}

/// The YAML of an S3 destination on the test server.
pub fn s3_destination_yaml(bucket: &str, prefix: &str, secret: Option<&str>) -> String {
    let s = servers();
    format!(
        "s3:\n  bucket: {bucket}\n  endpoint: {}\n  region: us-east-1\n  force_path_style: true\n  \
         access_key_id: {}\n  secret_access_key: {}\n  prefix: \"{prefix}\"\n  \
         initial_backoff_ms: 50\n  max_backoff_seconds: 1\n  request_timeout_seconds: 5\n",
        s.s3_endpoint,
        s.access_key,
        secret.unwrap_or(&s.secret_key)
    )
}

/// Indents every line of `text` by `spaces`.
pub fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

/// Objects in an S3 bucket, read back with an independent client.
pub struct Bucket {
    store: Box<dyn ObjectStore>,
}

impl Bucket {
    pub fn new(bucket: &str) -> Self {
        let s = servers();
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&s.s3_endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(&s.access_key)
            .with_secret_access_key(&s.secret_key)
            .build()
            .unwrap();
        Self {
            store: Box::new(store),
        }
    }

    /// Every key under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt as _;
        let prefix = ObjectPath::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// The ETag of `key`; multipart uploads end theirs in `-<parts>`.
    pub async fn etag(&self, key: &str) -> String {
        let meta = self.store.head(&ObjectPath::from(key)).await.unwrap();
        meta.e_tag.unwrap_or_default()
    }

    /// The `Content-Type` of `key`.
    pub async fn content_type(&self, key: &str) -> Option<String> {
        let result = self.store.get(&ObjectPath::from(key)).await.unwrap();
        result
            .attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.to_string())
    }

    /// The bytes of `key` and its content encoding.
    pub async fn get(&self, key: &str) -> (Vec<u8>, Option<String>) {
        let result = self.store.get(&ObjectPath::from(key)).await.unwrap();
        let encoding = result
            .attributes
            .get(&object_store::Attribute::ContentEncoding)
            .map(|v| v.to_string());
        (result.bytes().await.unwrap().to_vec(), encoding)
    }
}

/// Runs `command` to completion and returns its standard output; a run that fails fails
/// the test with the command's standard error, `what` naming the command.
pub fn stdout_of(command: &mut Command, what: &str) -> Vec<u8> {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Decompresses a gzip object, every member of it.
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// Decompresses a gzip object that must be exactly one member (`gzip_members: single`).
pub fn gunzip_single_member(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::new();
    decoder.read_to_end(&mut out).expect("valid gzip");
    let mut rest = Vec::new();
    decoder.into_inner().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "data after the gzip member");
    out
}

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of metric `name` of `stream` in a `/metrics` text.
pub fn metric(metrics: &str, name: &str, stream: &str) -> f64 {
    let prefix = format!("{name}{{stream=\"{stream}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} of {stream} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// A running `hydrant run` process.
pub struct Hydrant {
    child: Option<Child>,
    pub base_url: String,
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
    client: reqwest::Client,
}

impl Hydrant {
    /// Starts the real binary with `config` (YAML; `listen` is added) and waits until it
    /// announces its address.
    pub fn start(streams_yaml: &str) -> Self {
        Self::start_with_env(streams_yaml, &[])
    }

    /// Like [`Hydrant::start`], with extra environment variables for the process.
    pub fn start_with_env(streams_yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full("", streams_yaml, env)
    }

    /// Starts the real binary with extra top-level sections (`spool:` ...), streams and
    /// environment variables.
    pub fn start_full(top_yaml: &str, streams_yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), top_yaml, streams_yaml, env)
    }

    /// Starts the real binary in `dir` (which holds the configuration, the spool and local
    /// destinations), so a later process can continue from what this one left.
    pub fn start_in(
        dir: tempfile::TempDir,
        top_yaml: &str,
        streams_yaml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = format!(
            "server:\n  listen: 127.0.0.1:0\n  backpressure_wait_ms: 200\n{top_yaml}streams:\n{}",
            indent(streams_yaml, 2)
        );
        let config_path = dir.path().join("hydrant.yaml");
        std::fs::write(&config_path, config).unwrap();
        Self::launch(&config_path, dir, env)
    }

    /// Starts the real binary with an existing configuration file.
    pub fn start_with_file(config_path: &Path, dir: tempfile::TempDir) -> Self {
        Self::launch(config_path, dir, &[])
    }

    fn launch(config_path: &Path, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let log_path = dir.path().join("hydrant.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hydrant"))
            .args(["run", "--config"])
            .arg(config_path)
            .env("HYDRANT_LOG", "info,hydrant=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("start hydrant");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            for _ in lines {}
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "hydrant did not start; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            });
        let base_url = line
            .strip_prefix("hydrant listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self {
            child: Some(child),
            base_url,
            dir,
            log_path,
            client: reqwest::Client::new(),
        }
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Calls a Firehose operation; returns the status and the JSON answer.
    pub async fn call(&self, operation: &str, body: &Value) -> (u16, Value) {
        self.call_raw(
            Some(&format!("Firehose_20150804.{operation}")),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Sends `body` to `POST /` with the given `X-Amz-Target`.
    pub async fn call_raw(&self, target: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/", self.base_url))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body);
        if let Some(target) = target {
            request = request.header("x-amz-target", target);
        }
        let response = request.send().await.expect("request to hydrant");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text:?}"));
        (status, value)
    }

    /// `PutRecordBatch` of `records`; returns the answer, asserting HTTP 200.
    pub async fn put_batch(&self, stream: &str, records: &[Vec<u8>]) -> Value {
        let records: Vec<Value> = records
            .iter()
            .map(|r| serde_json::json!({ "Data": base64::engine::general_purpose::STANDARD.encode(r) }))
            .collect();
        let (status, answer) = self
            .call(
                "PutRecordBatch",
                &serde_json::json!({ "DeliveryStreamName": stream, "Records": records }),
            )
            .await;
        assert_eq!(status, 200, "PutRecordBatch answered {answer}");
        answer
    }

    /// `PutRecordBatch` that retries the records answered with an error until all are in.
    pub async fn put_all(&self, stream: &str, records: &[Vec<u8>]) {
        let mut pending: Vec<Vec<u8>> = records.to_vec();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "records still refused after 60 s"
            );
            let answer = self.put_batch(stream, &pending).await;
            let responses = answer["RequestResponses"].as_array().unwrap();
            assert_eq!(responses.len(), pending.len());
            pending = pending
                .into_iter()
                .zip(responses)
                .filter(|(_, r)| r.get("RecordId").is_none())
                .map(|(record, _)| record)
                .collect();
        }
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /streams/{stream}/stats`.
    pub async fn stats(&self, stream: &str) -> Value {
        let text = self
            .client
            .get(format!("{}/streams/{stream}/stats", self.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `POST /streams/{stream}/records` with an NDJSON body.
    pub async fn post_ndjson(&self, stream: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/streams/{stream}/records", self.base_url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    fn pid(&self) -> String {
        self.process_id().to_string()
    }

    /// The process id of the running service.
    pub fn process_id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the process (SIGKILL) and waits for it; returns its directory for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// `hydrant <subcommand> --endpoint <this service>` (`status`, `reload`), to add to.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hydrant"));
        command.args([subcommand, "--endpoint", &self.base_url]);
        command
    }

    /// Sends SIGHUP (reload the configuration and TLS files) without waiting.
    pub fn signal_hangup(&self) {
        self.signal("-HUP");
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_terminate(&self) {
        self.signal("-TERM");
    }

    fn signal(&self, flag: &str) {
        let status = Command::new("kill")
            .args([flag, &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_terminate();
        self.wait(Duration::from_secs(60))
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "hydrant did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle`; returns the log.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        eventually(
            timeout,
            &format!("log line containing {needle:?}"),
            || async {
                let log = self.log();
                log.contains(needle).then_some(log)
            },
        )
        .await
    }

    /// Waits until the log holds `needle` at least `count` times; returns the log.
    pub async fn wait_for_log_count(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> String {
        eventually(
            timeout,
            &format!("{count} log lines containing {needle:?}"),
            || async {
                let log = self.log();
                (log.matches(needle).count() >= count).then_some(log)
            },
        )
        .await
    }
}

impl Drop for Hydrant {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listens on (bound once by the OS, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards connections on `port` to `upstream` (an `http://host:port` URL) until stopped
/// or dropped: a destination that can be taken down and brought back for outage tests while
/// the real server does the work.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    /// Stops listening and cuts every open connection.
    pub fn stop(&self) {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts forwarding `port` to `upstream`.
pub async fn forward(port: u16, upstream: &str) -> Forwarder {
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(([127, 0, 0, 1], port).into())
        .expect("bind the forwarding port");
    let listener = socket.listen(128).unwrap();
    let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
        Default::default();
    let tracked = std::sync::Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let connection = tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            tracked.lock().unwrap().push(connection);
        }
    });
    Forwarder { task, connections }
}

/// Whether a [`forward_holding`] forwarder passes answers on, and how many it held back.
#[derive(Default)]
pub struct AnswerHold {
    hold: std::sync::atomic::AtomicBool,
    held: std::sync::atomic::AtomicUsize,
}

impl AnswerHold {
    /// Holds (`true`) or passes on (`false`) what the upstream answers from now on.
    pub fn set(&self, hold: bool) {
        self.hold.store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers (reads from the upstream) held back so far.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Starts forwarding `port` to `upstream`, passing requests on at once and holding the
/// upstream's answers while `hold` says so: a write the upstream carried out whose answer
/// the client never sees.
pub async fn forward_holding(port: u16, upstream: &str) -> (Forwarder, std::sync::Arc<AnswerHold>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarding port");
    let hold = std::sync::Arc::new(AnswerHold::default());
    let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
        Default::default();
    let tracked = std::sync::Arc::clone(&connections);
    let holding = std::sync::Arc::clone(&hold);
    let task = tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (upstream, hold) = (upstream.clone(), std::sync::Arc::clone(&holding));
            let connection = tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut upstream_read, mut upstream_write) = outbound.into_split();
                let requests = tokio::io::copy(&mut client_read, &mut upstream_write);
                let answers = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = upstream_read.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if hold.hold.load(std::sync::atomic::Ordering::SeqCst) {
                            hold.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            // Never passed on: the client gives up or dies waiting.
                            std::future::pending::<()>().await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = requests => {}
                    () = answers => {}
                }
            });
            tracked.lock().unwrap().push(connection);
        }
    });
    (Forwarder { task, connections }, hold)
}

/// The resident memory (VmRSS) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// The peak resident memory (VmHWM) of process `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Whether `path` is a local-directory object still being written: the object store stages an
/// upload as `<key>#<n>` and links it under its key when complete, removing the staged file, so
/// a listing can name a file that is gone (or not yet whole) when it is read.
fn is_staged_upload(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.contains('#'))
}

/// Every file below `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !is_staged_upload(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// POSTs `body` to `path` of the search test server; fails the test unless it succeeds.
pub async fn search_post(path: &str, body: Value) -> Value {
    let url = format!("{}/{path}", servers().search_endpoint);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "POST {url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}
