//! The status console: its JSON while records flow to a working and to an unreachable
//! destination, the page as headless Chromium renders it (with a screenshot kept as a test
//! artefact), `hydrant status` in a terminal, access with keys, and the delivery metrics
//! behind it.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Hydrant, eventually, metric, servers, stdout_of};
use serde_json::Value;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service with a stream into a local directory (`good`) and one into an S3 endpoint that
/// refuses connections (`down`), sampled every second.
fn start_two_streams(port: u16, top: &str, env: &[(&str, &str)]) -> Hydrant {
    let streams = format!(
        "good:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    local: {{ path: out }}\n\
         down:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n    s3:\n      \
         bucket: lake\n      endpoint: http://127.0.0.1:{port}\n      force_path_style: true\n      \
         access_key_id: test\n      secret_access_key: test\n      region: us-east-1\n      \
         retry_duration_seconds: 1\n"
    );
    Hydrant::start_full(
        &format!("  console:\n    resolution_seconds: 1\n{top}"),
        &streams,
        env,
    )
}

/// Posts a few records to both streams every 100 ms until `stop` is set.
fn produce(
    hydrant: &Hydrant,
    stop: Arc<AtomicBool>,
    token: Option<&str>,
) -> tokio::task::JoinHandle<()> {
    let base = hydrant.base_url.clone();
    let token = token.map(str::to_string);
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for stream in ["good", "down"] {
                let body: String = (0..20)
                    .map(|i| format!("{{\"n\":{n},\"i\":{i}}}\n"))
                    .collect();
                let mut request = client
                    .post(format!("{base}/streams/{stream}/records"))
                    .body(body);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let answer = request.send().await.unwrap();
                assert_eq!(
                    answer.status(),
                    200,
                    "{stream}: {}",
                    answer.text().await.unwrap()
                );
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn console_status(base: &str, token: Option<&str>) -> Value {
    let mut request = reqwest::Client::new().get(format!("{base}/console/status"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

fn stream<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stream {name} in {status}"))
}

/// Waits until the console shows `good` delivering (with a history of several samples, some
/// with records going out) and `down` failing.
async fn wait_for_both(base: &str, token: Option<&str>) -> Value {
    eventually(
        Duration::from_secs(60),
        "good delivering and down failing",
        || async {
            let status = console_status(base, token).await;
            let good = stream(&status, "good");
            let down = stream(&status, "down");
            let history = good["history"].as_array().unwrap();
            let flowing = history
                .iter()
                .filter(|s| s["rate_out"].as_f64() > Some(0.0))
                .count();
            (good["state"] == "ok"
                && history.len() >= 4
                && flowing >= 2
                && down["state"] == "failing"
                && down["undelivered_records"].as_u64() > Some(0))
            .then_some(status)
        },
    )
    .await
}

/// Headless Chromium with the flags this machine's closed network needs.
fn chromium(profile: &std::path::Path) -> Command {
    let mut command = Command::new(&servers().chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=4000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The points of the `series` polyline in the card of `stream`, from the rendered DOM.
fn plotted_points(dom: &str, stream: &str, series: &str) -> Vec<(f64, f64)> {
    let card = dom
        .split("<section ")
        .skip(1)
        .find(|section| section.contains(&format!("data-stream=\"{stream}\"")))
        .unwrap_or_else(|| panic!("no card for {stream} in the page:\n{dom}"));
    let polyline = card
        .split("<polyline ")
        .find(|p| p.contains(&format!("data-series=\"{series}\"")))
        .unwrap_or_else(|| panic!("no {series} plot for {stream}:\n{card}"));
    let points = polyline
        .split("points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    points
        .split_whitespace()
        .map(|xy| {
            let (x, y) = xy.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_stream_and_a_failing_destination_in_red() {
    let port = closed_port();
    let hydrant = start_two_streams(port, "", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&hydrant, Arc::clone(&stop), None);
    let status = wait_for_both(&hydrant.base_url, None).await;

    // The JSON: the failing stream's reason names the endpoint it cannot reach.
    let down = stream(&status, "down");
    let reason = down["recent_errors"][0]["message"].as_str().unwrap();
    assert!(
        reason.contains(&port.to_string()) || reason.contains("lake"),
        "{reason}"
    );
    assert!(down["failed_attempts"].as_u64() > Some(0), "{down}");
    assert!(
        down["data_freshness_seconds"].as_f64() > Some(0.0),
        "{down}"
    );
    let good = stream(&status, "good");
    let last = good["last_delivered"]["target"].as_str().unwrap();
    assert!(
        last.contains("good"),
        "the last object names its stream: {last}"
    );

    // The page, as a browser runs it.
    let profile = tempfile::tempdir().unwrap();
    let output = chromium(profile.path())
        .arg("--dump-dom")
        .arg(format!("{}/", hydrant.base_url))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("data-loaded=\"true\""),
        "the page did not load its status: {}\n{dom}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dom.contains("<tr class=\"ok\" data-stream=\"good\">"),
        "{dom}"
    );
    assert!(
        dom.contains("<tr class=\"failing\" data-stream=\"down\">"),
        "{dom}"
    );
    let down_card = dom
        .split("<section ")
        .skip(1)
        .find(|s| s.contains("data-stream=\"down\""))
        .unwrap();
    assert!(
        down_card.contains("class=\"card failing\"") && down_card.contains("<p class=\"reason\">"),
        "the failing stream's card is red with its reason: {down_card}"
    );
    for series in ["rate_in", "rate_out"] {
        let points = plotted_points(&dom, "good", series);
        assert!(points.len() >= 4, "{series}: {points:?}");
        let heights: Vec<f64> = points.iter().map(|(_, y)| *y).collect();
        assert!(
            heights.iter().any(|y| (y - heights[0]).abs() > 1.0),
            "the {series} plot has records in it: {points:?}"
        );
    }
    let backlog = plotted_points(&dom, "down", "backlog");
    assert!(
        backlog.first().unwrap().1 > backlog.last().unwrap().1,
        "the unreachable stream's backlog rises on its plot: {backlog:?}"
    );

    // A screenshot, kept with the test's build output.
    let artefacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join("console.png");
    let _ = std::fs::remove_file(&shot);
    stdout_of(
        chromium(profile.path())
            .arg("--window-size=1280,1000")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("{}/", hydrant.base_url)),
        "chromium --screenshot",
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("console screenshot: {}", shot.display());

    // The same table in a terminal.
    let output = stdout_of(&mut hydrant.command("status"), "hydrant status");
    let table = String::from_utf8_lossy(&output);
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .to_string()
    };
    assert!(row("good").contains(" ok "), "{table}");
    assert!(row("down").contains(" failing "), "{table}");
    assert!(table.contains("down: failing since"), "{table}");

    // The metrics behind it: attempts and failures of each stream's destination; past its
    // one-second retry duration, the unreachable stream's error output cannot be written
    // either (Firehose's BackupToS3 failing).
    let metrics = eventually(
        Duration::from_secs(30),
        "a failed error output write",
        || async {
            let metrics = hydrant.metrics().await;
            (metric(&metrics, "hydrant_backup_failures_total", "down") > 0.0).then_some(metrics)
        },
    )
    .await;
    assert!(metric(&metrics, "hydrant_delivery_failures_total", "down") > 0.0);
    assert!(metric(&metrics, "hydrant_delivery_attempts_total", "good") > 0.0);
    assert_eq!(
        metric(&metrics, "hydrant_delivery_failures_total", "good"),
        0.0
    );
    assert_eq!(
        metric(&metrics, "hydrant_backup_objects_total", "down"),
        0.0
    );
    assert!(
        metrics.contains("hydrant_stream_info{stream=\"down\",destination=\"s3\"} 1"),
        "{metrics}"
    );
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_the_console_asks_for_one_and_shows_only_its_streams() {
    const OPS: &str = "AKIDCONSOLEOPS01";
    const OPS_SECRET: &str = "ops-secret-for-the-console";
    const TEAM: &str = "AKIDCONSOLETEAM1";
    const TEAM_SECRET: &str = "team-secret-for-the-console";
    let keys = format!(
        "  auth:\n    access_keys:\n      - id: {OPS}\n        secret: ${{OPS_SECRET}}\n        \
         allow: {{ streams: [\"*\"], actions: [\"*\"] }}\n      - id: {TEAM}\n        \
         secret: ${{TEAM_SECRET}}\n        allow: {{ streams: [good], actions: [DescribeDeliveryStream] }}\n"
    );
    let hydrant = start_two_streams(
        closed_port(),
        &keys,
        &[("OPS_SECRET", OPS_SECRET), ("TEAM_SECRET", TEAM_SECRET)],
    );
    let client = reqwest::Client::new();
    for path in ["/", "/console/status"] {
        let answer = client
            .get(format!("{}{path}", hydrant.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{path}");
        let challenge = answer.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
    // What a browser sends once the user typed the key: every stream for operations.
    let answer = client
        .get(format!("{}/console/status", hydrant.base_url))
        .basic_auth(OPS, Some(OPS_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let all: Value = answer.json().await.unwrap();
    let names: Vec<&str> = all["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["down", "good"]);
    // A key allowed one stream sees that stream only; a wrong secret sees nothing.
    let team = console_status(&hydrant.base_url, Some(&format!("{TEAM}:{TEAM_SECRET}"))).await;
    let names: Vec<&str> = team["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good"]);
    let wrong = client
        .get(format!("{}/console/status", hydrant.base_url))
        .basic_auth(OPS, Some("not-the-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong.status(),
        400,
        "a wrong secret is InvalidSignatureException"
    );
    // `hydrant status` with a key, and without one.
    let status = |credentials: Option<&str>| {
        let mut command = hydrant.command("status");
        command.env_remove("HYDRANT_CREDENTIALS");
        if let Some(credentials) = credentials {
            command.env("HYDRANT_CREDENTIALS", credentials);
        }
        command.output().unwrap()
    };
    let refused = status(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--credentials"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let allowed = status(Some(&format!("{TEAM}:{TEAM_SECRET}")));
    let table = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        allowed.status.success() && table.lines().any(|l| l.starts_with("good ")),
        "{table}"
    );
    assert!(!table.contains("down"), "{table}");
}
