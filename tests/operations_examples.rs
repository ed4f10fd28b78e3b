//! The operations examples users copy: the systemd unit passes `systemd-analyze verify` and
//! the alert rules pass `promtool check rules`, and each alert names metrics the service
//! exports.

mod common;

use std::process::Command;

use common::{Hydrant, servers};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_systemd_unit_verifies() {
    // `verify` also checks that the programs the unit runs exist: point it at this build.
    let unit = repo_file("examples/systemd/hydrant.service")
        .replace("/usr/local/bin/hydrant", env!("CARGO_BIN_EXE_hydrant"));
    assert!(unit.contains(&format!("ExecStart={} run", env!("CARGO_BIN_EXE_hydrant"))));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hydrant.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(&servers().systemd_analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("hydrant.service:"),
        "the unit draws warnings: {said}"
    );
}

#[tokio::test]
async fn the_alert_rules_check_and_name_exported_metrics() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/prometheus/hydrant-alerts.yml");
    let output = Command::new(&servers().promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let hydrant = Hydrant::start(
        "events:\n  buffer: { size_mib: 1, interval_seconds: 1 }\n  destination:\n    local: { path: out }\n",
    );
    let exported = hydrant.metrics().await;
    let text = repo_file("examples/prometheus/hydrant-alerts.yml");
    let named: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("hydrant_"))
        .collect();
    assert!(named.len() >= 4, "{named:?}");
    for metric in named {
        assert!(
            exported.contains(&format!("\n{metric}{{"))
                || exported.contains(&format!("# TYPE {metric} ")),
            "the rules use {metric}, which /metrics does not export:\n{exported}"
        );
    }
}
