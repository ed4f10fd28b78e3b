//! An HTTP endpoint for the HTTP endpoint benchmark that keeps nothing: it reads each
//! request (gunzipping it when compressed), checks it is the protocol's JSON, and answers
//! `200` echoing its `requestId`, so the measured figure is Hydrant's and not a receiver's.

use std::io::Read as _;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

/// Serves the endpoint (any path) on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .fallback(post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(128 * 1024 * 1024));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    request_id: String,
    records: Vec<serde::de::IgnoredAny>,
}

async fn receive(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let read = tokio::task::spawn_blocking(move || -> Option<Body> {
        let json = if gzip {
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .ok()?;
            out
        } else {
            body.to_vec()
        };
        serde_json::from_slice(&json).ok()
    })
    .await;
    match read {
        Ok(Some(body)) => {
            std::hint::black_box(body.records.len());
            (
                [("content-type", "application/json")],
                serde_json::json!({ "requestId": body.request_id, "timestamp": chrono::Utc::now().timestamp_millis() })
                    .to_string(),
            )
                .into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "not a Firehose HTTP endpoint request",
        )
            .into_response(),
    }
}
