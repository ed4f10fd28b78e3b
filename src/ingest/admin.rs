//! `POST /admin/reload`: what `hydrant reload` calls — the service reads its configuration
//! file again and applies it (as at SIGHUP), answering what changed, or every problem that
//! refused the file (`FILE:LINE:COLUMN: message`) while the running configuration stays.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::auth::Principal;

/// The permission a key needs to reload (`allow.actions`).
pub const RELOAD_ACTION: &str = "Reload";

pub(super) async fn reload(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    if let Err(denied) = principal.authorize(RELOAD_ACTION, None) {
        return denied.into_response();
    }
    let Some(path) = state.config_path.as_deref() else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"problems": ["this service was not started from a configuration file"]})),
        )
            .into_response();
    };
    let outcome = state.pipeline.reload(path).await;
    let answer = match &outcome {
        Ok(report) => (StatusCode::OK, Json(json!({ "reloaded": report }))).into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "problems": error.problems() })),
        )
            .into_response(),
    };
    crate::server::log_reload(path, outcome);
    answer
}
