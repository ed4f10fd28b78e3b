//! The command line as a user meets it: `hydrant validate` on good and bad files, and the
//! quickstart example running end to end with no servers.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn validate(path: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hydrant"))
        .args(["validate", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_example_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let receiver = answering_listener();
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        // Only configuration files: running the quickstart leaves its output and spool
        // directories next to them.
        if !path.is_file() || path.extension().is_none_or(|e| e != "yaml" && e != "yml") {
            continue;
        }
        // The log-shipping examples reach their cluster (the test search server) and load
        // the ready-made transforms, the endpoint example its receiver.
        let transforms = transforms_dir().display().to_string();
        let (ok, stdout, stderr) = validate(
            &path,
            &[
                ("SEARCH_ENDPOINT", &servers().search_endpoint),
                ("HTTP_ENDPOINT_URL", &receiver),
                ("TRANSFORMS", &transforms),
            ],
        );
        assert!(ok, "{}: {stderr}", path.display());
        assert!(stdout.contains("ok (1 delivery stream)"), "{stdout}");
        checked += 1;
    }
    assert!(
        checked >= 5,
        "the quickstart, Parquet, partitioned lake, log-shipping and HTTP endpoint examples"
    );
}

/// The URL of a listener on 127.0.0.1 that answers every request `200` with an empty body
/// (enough for `validate` to find an endpoint there).
fn answering_listener() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/firehose", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    url
}

#[test]
fn every_semantic_problem_is_listed_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.yaml",
        "server:\n  listen: nowhere\nstreams:\n  ok-stream:\n    buffer:\n      size_mib: 500\n      interval_seconds: 901\n    compression: gzip\n    compression_level: 12\n    destination:\n      local:\n        path: out\n        prefix: \"logs/!{timestamp:EEE}/\"\n  \"bad name\":\n    destination:\n      s3:\n        bucket: b\n        endpoint: ftp://x\n        multipart_part_mib: 1\n",
    );
    let (ok, _, stderr) = validate(&path, &[]);
    assert!(!ok);
    let file = path.display().to_string();
    let expected = [
        (2, 11, "`listen` must be an IP address and port"),
        (
            6,
            17,
            "`buffer.size_mib` must be between 1 and 128, got 500",
        ),
        (
            7,
            25,
            "`buffer.interval_seconds` must be between 0 and 900, got 901",
        ),
        (
            9,
            24,
            "gzip `compression_level` must be between 0 and 9, got 12",
        ),
        (13, 22, "timestamp pattern letter `EEE` is not supported"),
        (
            14,
            3,
            "stream name `bad name`: character ' ' is not allowed",
        ),
        (
            18,
            19,
            "`endpoint` must be an http:// or https:// URL, got `ftp://x`",
        ),
        (19, 29, "`multipart_part_mib` must be at least 5"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (l, c, message)) in lines.iter().zip(expected) {
        let prefix = format!("{file}:{l}:{c}: ");
        assert!(
            line.contains(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.contains(message), "{line:?} should say {message:?}");
    }
}

#[test]
fn structural_errors_name_the_place_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "streams:\n  s:\n    destination: {local: {path: x}}\n    bufer: {}\n",
            "4:5: unknown field `bufer`, expected one of",
        ),
        (
            "streams:\n  s:\n    buffer:\n      size_mib: lots\n    destination: {local: {path: x}}\n",
            "4:17: expected a whole number, 0 or more, found `lots`",
        ),
        (
            "streams:\n  s:\n    compression: zip\n    destination: {local: {path: x}}\n",
            "3:18: unknown variant `zip`, expected one of none, gzip",
        ),
        (
            "streams:\n  s:\n    destination: {ftp: {path: x}}\n",
            "3:19: unknown variant `ftp`, expected one of local, s3",
        ),
        (
            "streams:\n  s:\n    buffer: {}\n",
            "missing field `destination`",
        ),
        ("streams: [\n", "expected"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("case{i}.yaml"), text);
        let (ok, _, stderr) = validate(&path, &[]);
        assert!(!ok, "case {i} should fail");
        let wanted = format!("{}:", path.display());
        assert!(stderr.contains(&wanted), "case {i}: {stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: {stderr:?} lacks {expected:?}"
        );
    }
}

#[test]
fn environment_variables_are_substituted_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "env.yaml",
        "streams:\n  s:\n    destination:\n      s3:\n        bucket: ${HYDRANT_CLI_TEST_BUCKET}\n        secret_access_key: ${HYDRANT_CLI_TEST_SECRET}\n        multipart_part_mib: ${HYDRANT_CLI_TEST_PART}\n",
    );
    let (ok, _, stderr) = validate(
        &path,
        &[
            ("HYDRANT_CLI_TEST_BUCKET", "bucket-from-env"),
            ("HYDRANT_CLI_TEST_SECRET", "s3cr3t-value"),
            ("HYDRANT_CLI_TEST_PART", "8"),
        ],
    );
    assert!(ok, "{stderr}");

    let (ok, _, stderr) = validate(&path, &[("HYDRANT_CLI_TEST_SECRET", "s3cr3t-value")]);
    assert!(!ok);
    assert!(
        stderr.contains(":5:17: environment variable `HYDRANT_CLI_TEST_BUCKET` is not set"),
        "{stderr}"
    );

    let (ok, _, stderr) = validate(
        &path,
        &[
            ("HYDRANT_CLI_TEST_BUCKET", "b"),
            ("HYDRANT_CLI_TEST_SECRET", "s3cr3t-value"),
            ("HYDRANT_CLI_TEST_PART", "2"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(":7:29: stream `s`: `multipart_part_mib` must be at least 5"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cr3t-value"),
        "secrets must not be echoed: {stderr}"
    );
}

#[tokio::test]
async fn the_quickstart_runs_with_no_servers_and_writes_gzip_ndjson_locally() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml"),
    )
    .unwrap();
    let config = example.replace("listen: 127.0.0.1:4573", "listen: 127.0.0.1:0");
    assert_ne!(config, example, "the quickstart listens on 127.0.0.1:4573");
    let path = write(dir.path(), "quickstart.yaml", &config);
    let mut hydrant = Hydrant::start_with_file(&path, dir);
    let (status, answer) = hydrant
        .post_ndjson(
            "quickstart",
            "{\"event\":\"signup\",\"user\":1}\n{\"event\":\"login\",\"user\":1}\n",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let out = hydrant.dir.path().join("hydrant-output/events");
    let hour_dir = walk_to_file(&out);
    let file_name = hour_dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        file_name.starts_with("quickstart-1-") && file_name.ends_with(".gz"),
        "{file_name}"
    );
    let depth = hour_dir.strip_prefix(&out).unwrap().components().count();
    assert_eq!(depth, 5, "events/YYYY/MM/dd/HH/<name>");
    let body = gunzip(&std::fs::read(&hour_dir).unwrap());
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "{\"event\":\"signup\",\"user\":1}\n{\"event\":\"login\",\"user\":1}\n"
    );
}

fn walk_to_file(dir: &Path) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    if entries[0].is_dir() {
        walk_to_file(&entries[0])
    } else {
        entries[0].clone()
    }
}

#[test]
fn validate_explains_which_stores_do_the_server_side_encryption_asked_for() {
    let (ok, output) = validate_config(
        "streams:\n  s:\n    destination:\n      s3:\n        bucket: b\n        \
         server_side_encryption: SSE-C\n        sse_customer_key: c3NlLWMtdGVzdC1rZXktb2YtMzItYnl0ZXMhISEhISE=\n",
    );
    assert!(ok, "{output}");
    assert!(
        output.contains(
            "note: stream `s` asks its store for SSE-C: AWS S3 and MinIO take it over HTTPS only"
        ),
        "{output}"
    );
    assert!(
        !output.contains("c3NlLWMt"),
        "the key is not printed: {output}"
    );
}
