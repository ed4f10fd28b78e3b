//! The postgres destination against a real PostgreSQL 15 with scram-sha-256 authentication:
//! rows arrive row for row with every supported type, records that do not fit go alone to
//! the error output, a kill -9 mid-load neither loses nor duplicates a row, and bad
//! credentials or a mismatched table are reported before anything is loaded.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use common::*;
use serde_json::{Value, json};

fn table_name(prefix: &str) -> String {
    format!(
        "{prefix}_{:x}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

const COLUMNS: &str = "
- { name: id, type: int8 }
- { name: name, from: user.name }
- { name: small }
- { name: n, type: int4 }
- { name: ratio }
- { name: score, type: float8 }
- { name: price, type: numeric }
- { name: ok, type: bool }
- { name: at, type: timestamptz }
- { name: local }
- { name: day, type: date }
- { name: uid, type: uuid }
- { name: doc, from: ., type: jsonb }
- { name: tags, type: jsonb }
- { name: label, from: '.user.name // \"anonymous\" | ascii_upcase' }
";

fn good_record(n: i64) -> Value {
    json!({
        "id": n,
        "user": { "name": if n % 5 == 0 { Value::Null } else { json!(format!("user-{n}")) } },
        "small": n % 300 - 150,
        "n": n * 1000,
        "ratio": n as f64 / 8.0,
        "score": n as f64 * 1.25,
        "price": format!("{}.{:03}", n, n % 1000),
        "ok": n % 2 == 0,
        "at": if n % 2 == 0 { json!(1_714_564_800 + n) } else { json!(format!("2024-05-01T12:00:00Z")) },
        "local": "2024-01-02 03:04:05.678",
        "day": "2024-02-29",
        "uid": format!("00000000-0000-4000-8000-{:012x}", n),
        "tags": ["a", n],
    })
}

#[tokio::test]
async fn rows_arrive_row_for_row_and_values_that_do_not_fit_go_alone_to_the_error_output() {
    let client = pg_client().await;
    let table = table_name("rows");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int8 PRIMARY KEY, name text, small int2, n int4, ratio float4, \
             score float8, price numeric(12,3), ok bool, at timestamptz, local timestamp, day date, \
             uid uuid, doc jsonb NOT NULL, tags jsonb, label text)"
        ))
        .await
        .unwrap();
    let streams = format!(
        "rows:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n{}",
        indent(
            &postgres_destination_yaml(&table, COLUMNS.trim_start(), None),
            4
        )
    );
    let mut hydrant = Hydrant::start(&streams);
    let mut records: Vec<Vec<u8>> = (0..300)
        .map(|n| serde_json::to_vec(&good_record(n)).unwrap())
        .collect();
    let bad: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            br#"{"id": 1000, "small": 70000}"#.to_vec(),
            "Postgres.InvalidValue",
            "column 'small': 70000 is out of range",
        ),
        (
            br#"{"id": 1001, "uid": "not-a-uuid"}"#.to_vec(),
            "Postgres.InvalidValue",
            "column 'uid'",
        ),
        (
            br#"{"id": 1002, "price": "12,5"}"#.to_vec(),
            "Postgres.InvalidValue",
            "column 'price'",
        ),
        (
            br#"{"name": "no id", "id": null}"#.to_vec(),
            "Postgres.InvalidValue",
            "column 'id' is NOT NULL",
        ),
        (
            b"this is not json".to_vec(),
            "DataFormatConversion.ParseError",
            "not valid JSON",
        ),
    ];
    // Refused by the server, not by Hydrant's checks: a value beyond numeric(12,3), and a
    // second row with an existing primary key.
    let refused: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            br#"{"id": 2000, "price": "1234567890123.5"}"#.to_vec(),
            "Postgres.Refused",
            "column 'price': numeric field overflow",
        ),
        (
            serde_json::to_vec(&json!({"id": 7, "user": {"name": "impostor"}})).unwrap(),
            "Postgres.Refused",
            "duplicate key value violates unique constraint",
        ),
    ];
    for (i, (data, _, _)) in bad.iter().enumerate() {
        records.insert(40 + i * 50, data.clone());
    }
    records.push(refused[0].0.clone());
    records.insert(150, refused[1].0.clone());
    hydrant.put_all("rows", &records).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let rows = client
        .query(&format!("SELECT id, name, small, n, ratio, score, price::text, ok, at, local, day, uid::text, doc, tags, label FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 300, "every good record once, no bad one");
    for (n, row) in rows.iter().enumerate() {
        let n = n as i64;
        let sent = good_record(n);
        assert_eq!(row.get::<_, i64>(0), n);
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            sent["user"]["name"].as_str()
        );
        assert_eq!(row.get::<_, i16>(2) as i64, n % 300 - 150);
        assert_eq!(row.get::<_, i32>(3) as i64, n * 1000);
        assert_eq!(row.get::<_, f32>(4), n as f32 / 8.0);
        assert_eq!(row.get::<_, f64>(5), n as f64 * 1.25);
        assert_eq!(row.get::<_, String>(6), sent["price"].as_str().unwrap());
        assert_eq!(row.get::<_, bool>(7), n % 2 == 0);
        let at: DateTime<Utc> = row.get(8);
        let expected_at = if n % 2 == 0 {
            1_714_564_800 + n
        } else {
            1_714_564_800
        };
        assert_eq!(at.timestamp(), expected_at, "row {n}");
        assert_eq!(
            row.get::<_, chrono::NaiveDateTime>(9).to_string(),
            "2024-01-02 03:04:05.678"
        );
        assert_eq!(
            row.get::<_, NaiveDate>(10),
            NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
        );
        assert_eq!(row.get::<_, String>(11), sent["uid"].as_str().unwrap());
        assert_eq!(
            row.get::<_, Value>(12),
            sent,
            "the whole record in a jsonb column"
        );
        assert_eq!(row.get::<_, Value>(13), sent["tags"]);
        let label = sent["user"]["name"]
            .as_str()
            .unwrap_or("anonymous")
            .to_uppercase();
        assert_eq!(row.get::<_, String>(14), label, "a jq expression column");
    }

    let errors = files_under(&hydrant.dir.path().join("errors"));
    let mut failures: HashMap<String, Vec<Value>> = HashMap::new();
    for file in &errors {
        let kind = file
            .strip_prefix(hydrant.dir.path().join("errors"))
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .to_string();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            failures
                .entry(kind.clone())
                .or_default()
                .push(serde_json::from_str(line).unwrap());
        }
    }
    assert_eq!(failures["postgres-failed"].len(), 6, "{failures:?}");
    assert_eq!(
        failures["format-conversion-failed"].len(),
        1,
        "{failures:?}"
    );
    for (data, code, words) in bad.iter().chain(&refused) {
        let found = failures
            .values()
            .flatten()
            .find(|f| {
                base64::engine::general_purpose::STANDARD
                    .decode(f["rawData"].as_str().unwrap())
                    .unwrap()
                    == *data
            })
            .unwrap_or_else(|| panic!("{} not in the error output", String::from_utf8_lossy(data)));
        assert_eq!(found["errorCode"], *code);
        let message = found["errorMessage"].as_str().unwrap();
        assert!(message.contains(words), "{message} should mention {words}");
    }
}

#[tokio::test]
async fn many_refused_rows_of_one_batch_are_written_to_the_error_output_once() {
    let client = pg_client().await;
    let table = table_name("refused");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int8 PRIMARY KEY, v int4 CHECK (v < 100))"
        ))
        .await
        .unwrap();
    let columns = "- { name: id }\n- { name: v }\n";
    let streams = format!(
        "refused:\n  buffer: {{ size_mib: 1, interval_seconds: 900 }}\n  destination:\n{}",
        indent(&postgres_destination_yaml(&table, columns, None), 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    // One batch of 300 rows; the server's check constraint refuses 200 of them.
    let records: Vec<Vec<u8>> = (0..300)
        .map(|id| {
            let v = if id % 3 == 0 { id % 100 } else { 100 + id };
            serde_json::to_vec(&json!({ "id": id, "v": v })).unwrap()
        })
        .collect();
    hydrant.put_all("refused", &records).await;
    // Shutting down delivers the open batch.
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let loaded = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(loaded, 100);
    let failed = error_records(&hydrant.dir.path().join("errors"), "postgres-failed");
    assert_eq!(failed.len(), 200, "every refused row, once");
    for record in &failed {
        assert_eq!(record["errorCode"], "Postgres.Refused");
        let message = record["errorMessage"].as_str().unwrap();
        assert!(message.contains("check constraint"), "{message}");
        let row: Value = serde_json::from_slice(&raw_data(record)).unwrap();
        assert!(row["v"].as_i64().unwrap() >= 100, "{row}");
    }
    let objects = files_under(&hydrant.dir.path().join("errors/postgres-failed"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let log = hydrant.log();
    let writes = log
        .lines()
        .filter(|l| l.contains("sent to the error output") && l.contains("postgres-failed"))
        .count();
    assert_eq!(writes, 1, "the error object is written once:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_load_neither_loses_nor_duplicates_a_row() {
    let client = pg_client().await;
    let table = table_name("durable");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text, pad text, doc jsonb)"
        ))
        .await
        .unwrap();
    let columns = "- { name: id }\n- { name: pad }\n- { name: doc, from: . }\n";
    let streams = format!(
        "durable:\n  buffer: {{ size_mib: 1, interval_seconds: 1 }}\n  destination:\n{}",
        indent(&postgres_destination_yaml(&table, columns, None), 4)
    );
    let KilledRun {
        mut hydrant,
        acked,
        attempted,
        ..
    } = produce_through_kills(&streams, "durable", 5, 0x9e55).await;
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let delivered = ids_in_table(&client, &table).await;
    check_exactly_once(&delivered, &acked, &attempted);
    let ledger: i64 = client
        .query_one(
            "SELECT count(*) FROM hydrant_deliveries WHERE target_table = $1",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ledger > 0, "each loaded batch is in the ledger");
}

#[tokio::test]
async fn validate_checks_credentials_the_table_and_its_columns() {
    let client = pg_client().await;
    let table = table_name("checked");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int8, tags text[], at timestamptz)"
        ))
        .await
        .unwrap();
    let config = |columns: &str, password: Option<&str>, table: &str| {
        format!(
            "streams:\n  s:\n    destination:\n{}",
            indent(&postgres_destination_yaml(table, columns, password), 6)
        )
    };
    let (ok, output) = validate_config(&config("- { name: id }\n- { name: at }\n", None, &table));
    assert!(ok, "{output}");

    let (ok, output) = validate_config(&config("- { name: id }\n", Some("wrong-password"), &table));
    assert!(!ok);
    assert!(output.contains("Postgres.AccessDenied"), "{output}");
    assert!(
        output.contains("password authentication failed"),
        "{output}"
    );

    let (ok, output) = validate_config(&config("- { name: id }\n", None, "no_such_table"));
    assert!(!ok);
    assert!(
        output.contains("table `no_such_table` does not exist"),
        "{output}"
    );

    let (ok, output) = validate_config(&config(
        "- { name: id, type: text }\n- { name: tags }\n- { name: missing }\n- { name: at, from: '.a +' }\n",
        None,
        &table,
    ));
    assert!(!ok);
    for expected in [
        "column `id` is `bigint` in the table but `Text` in the configuration",
        "column `tags` is `text[]`, which Hydrant cannot load",
        "column `missing` does not exist (the table has: id, tags, at)",
        "column `at`: jq expression `.a +` does not parse",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in {output}"
        );
    }
}

#[tokio::test]
async fn upsert_updates_rows_in_place_and_the_last_record_of_a_key_wins() {
    let client = pg_client().await;
    let table = table_name("upsert");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int8 PRIMARY KEY, name text, version int4)"
        ))
        .await
        .unwrap();
    let destination = postgres_destination_yaml(
        &table,
        "- { name: id }\n- { name: name }\n- { name: version }\n",
        None,
    ) + "  mode: upsert\n  conflict_columns: [id]\n";
    let streams = format!(
        "people:\n  buffer: {{ size_mib: 1, interval_seconds: 0 }}\n  destination:\n{}",
        indent(&destination, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let first: Vec<Vec<u8>> = (0..100)
        .map(|id| {
            serde_json::to_vec(&json!({"id": id, "name": format!("v1-{id}"), "version": 1}))
                .unwrap()
        })
        .collect();
    hydrant.put_all("people", &first).await;
    let count = format!("SELECT count(*) FROM {table}");
    eventually(Duration::from_secs(30), "the first 100 rows", || async {
        let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
        (n == 100).then_some(())
    })
    .await;
    let mut second: Vec<Vec<u8>> = (50..150)
        .map(|id| {
            serde_json::to_vec(&json!({"id": id, "name": format!("v2-{id}"), "version": 2}))
                .unwrap()
        })
        .collect();
    second.push(serde_json::to_vec(&json!({"id": 60, "name": "v3-60", "version": 3})).unwrap());
    hydrant.put_all("people", &second).await;
    assert!(hydrant.terminate().success(), "{}", hydrant.log());

    let rows = client
        .query(
            &format!("SELECT id, name, version FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 150, "50 updated in place, 50 new");
    for row in rows {
        let id: i64 = row.get(0);
        let (name, version): (String, i32) = (row.get(1), row.get(2));
        let expected = match id {
            60 => ("v3-60".to_string(), 3),
            0..50 => (format!("v1-{id}"), 1),
            _ => (format!("v2-{id}"), 2),
        };
        assert_eq!((name, version), expected, "row {id}");
    }

    let (ok, output) = validate_config(&format!(
        "streams:\n  s:\n    destination:\n{}",
        indent(
            &(postgres_destination_yaml(&table, "- { name: id }\n- { name: name }\n", None)
                + "  mode: upsert\n  conflict_columns: [name]\n"),
            6
        )
    ));
    assert!(!ok);
    assert!(
        output.contains("upsert on (name) is not possible"),
        "{output}"
    );
}

#[tokio::test]
async fn tls_connections_are_verified_against_the_configured_root() {
    let client = pg_client().await;
    let table = table_name("tls");
    client
        .batch_execute(&format!("CREATE TABLE {table} (id int8)"))
        .await
        .unwrap();
    let ca = servers().pg_ca.display().to_string();
    let with_tls = |tls: &str| postgres_destination_yaml(&table, "- { name: id }\n", None) + tls;
    let config = |destination: String| {
        format!(
            "streams:\n  s:\n    destination:\n{}",
            indent(&destination, 6)
        )
    };
    let verified = with_tls(&format!("  sslmode: verify-full\n  sslrootcert: {ca}\n"));
    let (ok, output) = validate_config(&config(verified.clone()));
    assert!(ok, "{output}");
    let (ok, output) = validate_config(&config(with_tls("  sslmode: require\n")));
    assert!(
        ok,
        "require encrypts without checking the certificate: {output}"
    );
    let (ok, output) = validate_config(&config(with_tls("  sslmode: verify-full\n")));
    assert!(!ok, "the system's roots do not know the test CA");
    assert!(output.contains("Postgres.Unavailable"), "{output}");
    assert!(output.to_lowercase().contains("certificate"), "{output}");

    let streams = format!(
        "tls:\n  buffer: {{ size_mib: 1, interval_seconds: 0 }}\n  destination:\n{}",
        indent(&verified, 4)
    );
    let mut hydrant = Hydrant::start(&streams);
    let records: Vec<Vec<u8>> = (0..10)
        .map(|id| format!("{{\"id\": {id}}}").into_bytes())
        .collect();
    hydrant.put_all("tls", &records).await;
    let count = format!("SELECT count(*) FROM {table}");
    eventually(Duration::from_secs(30), "the rows over TLS", || async {
        let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
        (n == 10).then_some(())
    })
    .await;
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'hydrant/tls'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "Hydrant's pooled connection is encrypted");
    assert!(hydrant.terminate().success(), "{}", hydrant.log());
}
