//! Clients that send slowly (one byte a second, the "slowloris" pattern) hold neither request
//! slots nor the server: a slow body is answered `RequestTimeoutException` after
//! `body_read_timeout_seconds` and never holds one of `max_concurrent_requests` while it
//! trickles in; slow headers are cut off after `header_read_timeout_seconds`; meanwhile a
//! well-behaved producer's puts go through.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `head`, then one byte a second (at most `bytes`); returns what the server answered
/// and how long after `head` the connection ended.
async fn trickle(
    address: String,
    head: String,
    bytes: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (String, Duration) {
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    ready.send(()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        for _ in 0..bytes {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    writing.abort();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_do_not_stop_a_well_behaved_producer() {
    let hydrant = Hydrant::start_full(
        "  max_concurrent_requests: 8\n  header_read_timeout_seconds: 2\n  body_read_timeout_seconds: 3\n",
        "events:\n  buffer: { size_mib: 1, interval_seconds: 1 }\n  destination:\n    local: { path: out }\n",
        &[],
    );
    let address = hydrant.base_url.trim_start_matches("http://").to_string();
    let (ready, mut started) = tokio::sync::mpsc::channel(300);
    let mut slow_bodies = Vec::new();
    for _ in 0..200 {
        let head = format!(
            "POST /streams/events/records HTTP/1.1\r\nHost: {address}\r\nContent-Length: 1000\r\n\r\n"
        );
        slow_bodies.push(tokio::spawn(trickle(
            address.clone(),
            head,
            1000,
            ready.clone(),
        )));
    }
    let mut slow_headers = Vec::new();
    for _ in 0..50 {
        let head = "POST /streams/events/records HTTP/1.1\r\n".to_string();
        slow_headers.push(tokio::spawn(trickle(
            address.clone(),
            head,
            1000,
            ready.clone(),
        )));
    }
    for _ in 0..250 {
        started.recv().await.unwrap();
    }

    // Every slow connection is open and sending; a producer's puts still go through.
    for call in 0..20 {
        let records: Vec<Vec<u8>> = (0..50)
            .map(|i| format!(r#"{{"call":{call},"n":{i}}}"#).into_bytes())
            .collect();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            hydrant.put_batch("events", &records),
        )
        .await
        .unwrap_or_else(|_| panic!("put {call} did not get through the slow clients"));
        assert_eq!(answer["FailedPutCount"], 0, "{answer}");
    }

    for connection in slow_bodies {
        let (answer, took) = connection.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("RequestTimeoutException"),
            "{answer}"
        );
        assert!(took < Duration::from_secs(60), "held for {took:?}");
    }
    for connection in slow_headers {
        let (answer, took) = connection.await.unwrap();
        assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
        assert!(
            took < Duration::from_secs(30),
            "slow headers held for {took:?}"
        );
    }
}
