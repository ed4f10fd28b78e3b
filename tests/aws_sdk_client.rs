//! A real AWS SDK no one here wrote (boto3) drives Hydrant as it drives Firehose.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_puts_lists_and_describes_like_firehose() {
    let bucket = new_bucket("boto3");
    let down = s3_destination_yaml(&bucket, "full/", None).replace(
        &servers().s3_endpoint,
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let streams = format!(
        "sdk:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n{}\
         sdk-full:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n{}",
        indent(&s3_destination_yaml(&bucket, "sdk/", None), 4),
        indent(&down, 4),
    );
    // A small spool, so the stream whose destination is down fills up quickly.
    let hydrant = Hydrant::start_full("spool:\n  max_mib: 8\n", &streams, &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/firehose_boto3.py"
    );
    let base_url = hydrant.base_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&servers().python)
            .args([script, &base_url, "sdk", "sdk-full"])
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("run the boto3 client")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "boto3 client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut sent: Vec<u64> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    sent.sort_unstable();

    let s3 = Bucket::new(&bucket);
    let mut delivered = eventually(Duration::from_secs(20), "boto3's records in S3", || async {
        let mut numbers = Vec::new();
        for key in s3.keys("sdk/").await {
            for line in s3
                .get(&key)
                .await
                .0
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                let record: serde_json::Value = serde_json::from_slice(line).unwrap();
                assert_eq!(record["client"], "boto3");
                numbers.push(record["n"].as_u64().unwrap());
            }
        }
        (numbers.len() >= sent.len()).then_some(numbers)
    })
    .await;
    delivered.sort_unstable();
    assert_eq!(delivered, sent, "every record boto3 sent arrived once");
}
