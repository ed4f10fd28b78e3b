//! TLS on the listener with certificates made in the test (rcgen): curl, boto3 and the AWS
//! CLI trust it through their CA options; with `client_ca`, only clients with a certificate
//! from that CA get in; SIGHUP serves a renewed certificate to new connections without
//! dropping an open one.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use serde_json::{Value, json};

/// A certificate authority made for the test.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// Writes this CA's certificate to `dir/name` and returns the path.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// Issues a certificate for `purpose`, written as `dir/<name>.pem` and `dir/<name>-key.pem`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        purpose: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn start_tls(dir: &tempfile::TempDir, client_ca: Option<&Path>) -> Hydrant {
    let tls_dir = dir.path().join("tls");
    let mut tls = format!(
        "  tls:\n    cert: {}\n    key: {}\n",
        tls_dir.join("server.pem").display(),
        tls_dir.join("server-key.pem").display()
    );
    if let Some(ca) = client_ca {
        tls.push_str(&format!("    client_ca: {}\n", ca.display()));
    }
    let work = tempfile::tempdir().unwrap();
    Hydrant::start_in(
        work,
        &tls,
        "events:\n  buffer: { size_mib: 1, interval_seconds: 900 }\n  destination:\n    local: { path: out }\n",
        &[],
    )
}

/// `curl` of `url` with extra arguments: whether it succeeded, and its output.
fn curl(url: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn clients_trust_the_listener_through_their_ca_options() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let ca = Authority::new("Hydrant test CA");
    let ca_path = ca.write(&tls, "ca.pem");
    ca.issue(&tls, "server", ExtendedKeyUsagePurpose::ServerAuth);
    let mut hydrant = start_tls(&dir, None);
    let endpoint = hydrant.base_url.clone();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    let ca_arg = ca_path.to_str().unwrap();
    let (ok, out) = curl(&format!("{endpoint}/health"), &["--cacert", ca_arg]);
    assert!(ok && out == "ok\n", "{out}");
    let (ok, out) = curl(&format!("{endpoint}/health"), &[]);
    assert!(
        !ok,
        "a client that does not trust the CA must refuse: {out}"
    );
    let (ok, out) = curl(
        &format!("{}/health", endpoint.replace("https://", "http://")),
        &[],
    );
    assert!(
        !ok || !out.contains("ok"),
        "plain HTTP is not served: {out}"
    );
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, out) = curl(
            &format!("{endpoint}/health"),
            &[&["--cacert", ca_arg][..], &version[..]].concat(),
        );
        assert!(ok && out == "ok\n", "{version:?}: {out}");
    }

    // boto3 with `verify=`.
    let output = Command::new(&servers().python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/signed_calls_boto3.py"
        ))
        .arg(&endpoint)
        .arg(
            json!([{ "name": "put", "op": "PutRecord", "stream": "events",
                     "key_id": "any", "secret": "any", "verify": ca_arg }])
            .to_string(),
        )
        .output()
        .unwrap();
    let outcome: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(outcome["ok"], true, "{outcome}");

    // The AWS CLI with `--ca-bundle`.
    stdout_of(
        Command::new(&servers().aws_cli)
            .args([
                "firehose",
                "put-record",
                "--endpoint-url",
                &endpoint,
                "--ca-bundle",
                ca_arg,
            ])
            .args([
                "--delivery-stream-name",
                "events",
                "--record",
                r#"{"Data":"{\"via\":\"cli\"}"}"#,
            ])
            .env("AWS_ACCESS_KEY_ID", "any")
            .env("AWS_SECRET_ACCESS_KEY", "any")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        "aws firehose put-record",
    );

    assert!(hydrant.terminate().success(), "{}", hydrant.log());
    let delivered: usize = files_under(&hydrant.dir.path().join("out"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    assert_eq!(delivered, 2, "the boto3 and the CLI record");
}

#[tokio::test]
async fn with_client_ca_only_certificates_from_that_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let server_ca = Authority::new("server CA");
    let ca_path = server_ca.write(&tls, "ca.pem");
    server_ca.issue(&tls, "server", ExtendedKeyUsagePurpose::ServerAuth);
    let clients = Authority::new("client CA");
    let clients_path = clients.write(&tls, "clients.pem");
    let (cert, key) = clients.issue(&tls, "shipper", ExtendedKeyUsagePurpose::ClientAuth);
    let stranger_ca = Authority::new("another CA");
    let (stranger_cert, stranger_key) =
        stranger_ca.issue(&tls, "stranger", ExtendedKeyUsagePurpose::ClientAuth);
    let hydrant = start_tls(&dir, Some(&clients_path));
    let url = format!("{}/health", hydrant.base_url);
    let ca = ca_path.to_str().unwrap();

    let (ok, out) = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok && out == "ok\n", "{out}");
    let (ok, out) = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--cert",
            stranger_cert.to_str().unwrap(),
            "--key",
            stranger_key.to_str().unwrap(),
        ],
    );
    assert!(!ok, "a certificate from another CA must be refused: {out}");
    let (ok, out) = curl(&url, &["--cacert", ca]);
    assert!(!ok, "a client without a certificate must be refused: {out}");
    assert!(
        hydrant.log().contains("client_certificates=true"),
        "{}",
        hydrant.log()
    );
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let old_ca = Authority::new("old CA");
    let old_ca_path = old_ca.write(&tls, "old-ca.pem");
    old_ca.issue(&tls, "server", ExtendedKeyUsagePurpose::ServerAuth);
    let hydrant = start_tls(&dir, None);
    let endpoint = hydrant.base_url.clone();
    let port = endpoint.rsplit(':').next().unwrap().to_string();

    // A client that keeps one connection open across the reload.
    let script = "import http.client, ssl, sys\n\
                  conn = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), context=ssl.create_default_context(cafile=sys.argv[2]))\n\
                  conn.request('GET', '/health'); print(conn.getresponse().read().decode().strip(), flush=True)\n\
                  sock = conn.sock\n\
                  sys.stdin.readline()\n\
                  conn.request('GET', '/health'); body = conn.getresponse().read().decode().strip()\n\
                  print(body, 'same-connection' if conn.sock is sock else 'new-connection', flush=True)\n";
    let mut open = Command::new(&servers().python)
        .args(["-c", script, &port, old_ca_path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(open.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ok");

    let new_ca = Authority::new("new CA");
    let new_ca_path = new_ca.write(&tls, "new-ca.pem");
    new_ca.issue(&tls, "server", ExtendedKeyUsagePurpose::ServerAuth);
    hydrant.signal_hangup();
    hydrant
        .wait_for_log(
            "SIGHUP: reloaded the TLS certificate files",
            Duration::from_secs(10),
        )
        .await;

    let health = format!("{endpoint}/health");
    let (ok, out) = curl(&health, &["--cacert", new_ca_path.to_str().unwrap()]);
    assert!(
        ok && out == "ok\n",
        "new connections get the new certificate: {out}"
    );
    let (ok, _) = curl(&health, &["--cacert", old_ca_path.to_str().unwrap()]);
    assert!(!ok, "the old certificate is no longer served");

    open.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ok same-connection");
    assert!(open.wait().unwrap().success());

    // Files that do not load leave the current certificate in use.
    std::fs::write(tls.join("server.pem"), "garbage").unwrap();
    hydrant.signal_hangup();
    hydrant
        .wait_for_log(
            "SIGHUP: keeping the current TLS certificate",
            Duration::from_secs(10),
        )
        .await;
    let (ok, out) = curl(&health, &["--cacert", new_ca_path.to_str().unwrap()]);
    assert!(ok && out == "ok\n", "{out}");
}
