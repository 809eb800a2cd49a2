//! The HTTP API: one router per resource, merged here, plus request ids, fallbacks,
//! `/healthz`, the OpenAPI document and the files of the Studio and the operator console.

pub mod dto;
pub mod error;
pub mod extract;

mod account;
mod admin;
mod console;
mod embedded;
mod engine_routes;
mod events;
mod jobs;
mod models;
mod results;
mod server_info;
mod studio;
mod unread_body;
mod uploads;
mod videos;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

pub use models::catalog_entries;

use crate::api::error::{ApiError, ErrorCause};
use crate::state::AppState;

/// The whole API; the admin API too, unless `admin.listen` gives it an address of its
/// own (see [`admin_router`]).
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .merge(videos::router())
        .merge(events::router())
        .merge(jobs::router())
        .merge(account::router())
        .merge(models::router())
        .merge(results::router())
        .merge(uploads::router())
        .merge(engine_routes::router())
        .merge(server_info::router())
        .merge(studio::router(&state.config))
        .route("/v2/openapi.json", get(get_openapi))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(get_readyz));
    if state.config.admin.listen.is_none() {
        routes = routes.merge(operator_routes());
    }
    with_edge(routes, state)
}

/// The admin API and console alone, for the address `admin.listen` names.
pub fn admin_router(state: AppState) -> Router {
    let routes = operator_routes().route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }));
    with_edge(routes, state)
}

/// What only operators use.
fn operator_routes() -> Router<AppState> {
    Router::new().nest("/admin/v1", admin::router()).merge(console::router())
}

/// The fallbacks and layers every listener's routes get: our 404 and 405, panics as
/// 500s, request timing, unread bodies drained, and request ids.
fn with_edge(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::NotFound("No such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), time_request))
        .layer(middleware::from_fn_with_state(state.clone(), unread_body::discard_unread_body))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Ready when the store answered its latest ping (see `readiness`): a load balancer
/// sends traffic elsewhere while this node cannot reach its database.
async fn get_readyz(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        // Built here rather than from `ApiError::Unavailable`, which logs every time: a
        // load balancer asks every few seconds, and the monitor already logged the outage.
        let body = serde_json::json!({"error": "Not ready: the database is unreachable"});
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response()
    }
}

async fn get_openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.as_str().to_owned()).into_response()
}

/// Records each request's duration by route template and status class. The template
/// (`/v2/jobs/{job_id}`), never the raw path, so the label's values stay as few as the
/// routes; anything no route matched shares one value.
async fn time_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let route = route.as_deref().unwrap_or("unmatched");
    state.metrics.observe(
        "http_request_duration_seconds",
        &[("route", route), ("status_class", class)],
        started.elapsed(),
    );
    response
}

/// A panic is a bug; the client still gets our 500 envelope, and the request-id
/// middleware logs the panic message.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ApiError::Internal(format!("handler panicked: {message}")).into_response()
}

/// Gives every response an `x-request-id` (the client's, if it sent a sane one) and
/// logs server errors once, with that id.
async fn request_id(mut req: Request, next: Next) -> Response {
    let incoming =
        req.headers().get("x-request-id").filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok()).cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let id = incoming.unwrap_or_else(next_request_id);
    // Handlers that record who did what (the admin audit log) read it from here.
    req.extensions_mut().insert(RequestId(id.to_str().unwrap_or_default().to_owned()));
    let mut response = next.run(req).await;
    if let Some(ErrorCause(cause)) = response.extensions_mut().remove::<ErrorCause>() {
        tracing::error!(
            request.id = id.to_str().unwrap_or(""),
            http.method = %method,
            http.path = %path,
            http.status = response.status().as_u16(),
            error = %cause,
            "request failed"
        );
    }
    response.headers_mut().insert("x-request-id", id);
    response
}

/// The request's id, as the `x-request-id` response header gives it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A process-unique id: a random per-process prefix and a counter. Cheaper than a UUID
/// per request and just as good for correlating logs.
fn next_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // "req_" + 8 hex digits of prefix + 12 of counter, written without the formatter.
    let mut id = *b"req_00000000000000000000";
    let digits = (u128::from(prefix) << 48) | u128::from(n & 0xffff_ffff_ffff);
    for (i, slot) in id[4..].iter_mut().rev().enumerate() {
        *slot = HEX[((digits >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("ASCII hex is a valid header value")
}
