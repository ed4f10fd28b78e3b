//! A `_bulk` endpoint for the search benchmark that indexes nothing: it reads each request
//! (gunzipping it when compressed), counts its documents and answers every item `201`, so
//! the measured figure is Hydrant's and not a search server's.

use std::io::Read as _;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

/// One item of the answer, as a cluster writes it for a created document.
const ITEM: &str =
    r#"{"index":{"_index":"bench","_id":"0","_version":1,"result":"created","status":201}}"#;

/// Serves the endpoint on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Clusters take bodies up to 100 MiB (`http.max_content_length`).
    let app = axum::Router::new()
        .route("/_bulk", post(bulk))
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

async fn bulk(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let counted = tokio::task::spawn_blocking(move || count_lines(&body, gzip)).await;
    let Ok(Ok(lines)) = counted else {
        return (StatusCode::BAD_REQUEST, "unreadable bulk body").into_response();
    };
    let documents = lines / 2;
    let mut answer = String::with_capacity(40 + documents * (ITEM.len() + 1));
    answer.push_str(r#"{"took":1,"errors":false,"items":["#);
    for i in 0..documents {
        if i > 0 {
            answer.push(',');
        }
        answer.push_str(ITEM);
    }
    answer.push_str("]}");
    ([("content-type", "application/json")], answer).into_response()
}

/// Lines in the (gzip-compressed) body.
fn count_lines(body: &[u8], gzip: bool) -> std::io::Result<usize> {
    if !gzip {
        return Ok(body.iter().filter(|b| **b == b'\n').count());
    }
    let mut decoder = flate2::read::GzDecoder::new(body);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut lines = 0;
    loop {
        let read = decoder.read(&mut buffer)?;
        if read == 0 {
            return Ok(lines);
        }
        lines += buffer[..read].iter().filter(|b| **b == b'\n').count();
    }
}
