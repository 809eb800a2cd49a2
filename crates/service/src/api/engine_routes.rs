//! Routes that serve the engine rather than Apiframe clients: MiniMax's callbacks and
//! the Prometheus metrics.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::engine::callback::{self, CallbackReply};
use crate::state::AppState;

/// Largest callback body accepted; MiniMax's pushes are a few hundred bytes.
const MAX_CALLBACK_BYTES: usize = 64 * 1024;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/minimax/callback/{job_id}/{token}", post(minimax_callback)).route("/metrics", get(metrics))
}

async fn minimax_callback(
    State(state): State<AppState>,
    Path((job_id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(engine) = state.engine.as_ref() else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "No engine"}))).into_response();
    };
    if body.len() > MAX_CALLBACK_BYTES {
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(serde_json::json!({"error": "Body too large"}))).into_response();
    }
    let reply = callback::handle(engine, &job_id, &token, &body).await;
    let status = match reply {
        CallbackReply::Challenge(_) | CallbackReply::Accepted => StatusCode::OK,
        CallbackReply::Forbidden => StatusCode::NOT_FOUND,
        CallbackReply::BadRequest(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(reply.body())).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let depth = state.store.queue_depth().await.ok();
    let text = state.metrics.render(depth);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
