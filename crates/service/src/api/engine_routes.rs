//! Routes that serve the engine rather than Apiframe clients: MiniMax's callbacks and
//! the Prometheus metrics.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::api::extract::{read_limited, Path};
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
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(engine) = state.engine.as_ref() else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "No engine"}))).into_response();
    };
    // Read here, not with axum's `Bytes`, whose own limit (2 MiB) answers in plain text.
    let deadline = std::time::Duration::from_millis(state.config.server.body_deadline_ms);
    let body = match read_limited(&headers, body, MAX_CALLBACK_BYTES, deadline).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let reply = callback::handle(engine, &job_id, &token, &body).await;
    let status = match reply {
        CallbackReply::Challenge(_) | CallbackReply::Accepted => StatusCode::OK,
        CallbackReply::Forbidden => StatusCode::NOT_FOUND,
        CallbackReply::BadRequest(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(reply.body())).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !scraper_allowed(state.config.metrics.bearer_token.expose_secret(), &headers) {
        let body = Json(serde_json::json!({"error": "Missing or wrong bearer token"}));
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    let depth = state.store.queue_depth().await.ok();
    let creates_left = state.engine.as_ref().map(|e| e.creates_left()).unwrap_or_default();
    let text = state.metrics.render(depth, &creates_left);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Whether the request may read `/metrics`: always when no token is configured.
fn scraper_allowed(token: &str, headers: &HeaderMap) -> bool {
    if token.is_empty() {
        return true;
    }
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Digests compared, not the strings: the time a mismatch takes then says nothing
    // about how much of the token was right.
    sent.is_some_and(|sent| Sha256::digest(sent.as_bytes()) == Sha256::digest(token.as_bytes()))
}
