//! PostgreSQL going down in the middle of loading and coming back: loads fail and are
//! retried, the pool reconnects, and every acknowledged record ends up in the table
//! exactly once.
//! (Its own test binary, so no other test's connections are cut by the restart.)

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_going_down_mid_load_loses_and_duplicates_nothing() {
    let table = new_id_doc_table("restart").await;
    let streams = format!(
        "restart:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n{}",
        indent(
            &postgres_destination_yaml(&table, "- { name: id }\n- { name: doc, from: . }\n", None),
            4
        )
    );
    let mut hydrant = Hydrant::start(&streams);
    let producers = Producers::start(4, "restart", Arc::new(Mutex::new(hydrant.base_url.clone())));
    hydrant
        .wait_for_log("delivered batch", Duration::from_secs(30))
        .await;
    let servers = |action: &str| {
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/test-servers.sh"
        ))
        .arg(action)
        .status()
        .unwrap();
        assert!(status.success(), "test-servers.sh {action}");
    };
    servers("stop-postgres");
    let log = hydrant
        .wait_for_log(
            "delivery attempt failed; will retry",
            Duration::from_secs(30),
        )
        .await;
    assert!(log.contains("Postgres.Unavailable"), "{log}");
    servers("start-postgres");
    let loaded_after = log.matches("delivered batch").count();
    let log = hydrant
        .wait_for_log_count("delivered batch", loaded_after + 2, Duration::from_secs(60))
        .await;
    assert!(log.contains("delivered batch"));
    let (acked, attempted) = producers.stop().await;
    assert!(
        acked.len() > 500,
        "only {} records acknowledged",
        acked.len()
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let client = pg_client().await;
    let delivered = ids_in_table(&client, &table).await;
    check_exactly_once(&delivered, &acked, &attempted);
}
