//! `POST /v2/videos/generate`: validate, price, then charge and insert in one write.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use domain::validation::{fingerprint, parse_generate, UrlPolicy};
use domain::JobId;
use serde_json::json;
use store::{IdempotencyClaim, NewJob, SubmitOutcome};

use crate::api::error::{ApiError, Result};
use crate::api::extract::{Caller, JsonBody};
use crate::ratelimit::RateClass;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    // Generates draw from their own, smaller rate bucket (see `Caller`).
    Router::new().route("/v2/videos/generate", post(create_video).layer(Extension(RateClass::Generate)))
}

async fn create_video(
    State(state): State<AppState>,
    Caller(key): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    // Fail fast, before any write, while this node cannot reach its database.
    if !state.readiness.is_ready() {
        return Err(ApiError::Unavailable("the database is unreachable".into()));
    }
    let idempotency_key = crate::api::extract::idempotency_key(&headers)?;
    let own_uploads = state.links.upload_url_prefix();
    let urls = if state.config.engine.allow_private_urls {
        UrlPolicy::allowing_private(true)
    } else {
        UrlPolicy::PublicExceptOwnUploads(&own_uploads)
    };
    let request = parse_generate(&body, urls)?;
    let cost = state
        .catalog
        .price(request.model, request.resolution, request.duration)
        .ok_or_else(|| ApiError::invalid("hailuoParams", "This resolution and duration are not offered"))?;

    let idempotency = idempotency_key.map(|key| IdempotencyClaim {
        key,
        fingerprint: fingerprint(&body),
        not_before_ms: state.config.limits.idempotency_window_start_ms(crate::now_ms()),
    });
    let job_id = JobId::new();
    // Uploads named as images are checked and copied for the job now, before the charge.
    let copies = crate::api::uploads::take_job_inputs(&state, key.account_id, &request, job_id).await?;
    let job = NewJob {
        id: job_id,
        account_id: key.account_id,
        api_key_id: key.id,
        model: request.model,
        cost: i64::from(cost),
        input_json: body.to_string(),
        webhook_url: request.webhook_url,
        webhook_events: request.webhook_events.map(|events| events.iter().map(|e| e.as_str().to_string()).collect()),
        idempotency,
    };
    let outcome = state.store.submit_job(job).await;
    if !matches!(outcome, Ok(SubmitOutcome::Created { .. })) {
        // Not accepted (or a replay of a job that has its own copies).
        crate::api::uploads::discard_job_inputs(&state, &copies).await;
    }
    match outcome? {
        SubmitOutcome::Created { job_id, status } => {
            if let Some(engine) = &state.engine {
                engine.notify();
            }
            Ok(accepted(job_id, status.as_str(), false))
        }
        SubmitOutcome::Replayed { job_id, status } => Ok(accepted(job_id, status.as_str(), true)),
        SubmitOutcome::InsufficientCredits { required, available } => {
            Err(ApiError::InsufficientCredits { required, available })
        }
        SubmitOutcome::IdempotencyMismatch => {
            Err(ApiError::Conflict("Idempotency-Key was already used with a different request body".into()))
        }
    }
}

fn accepted(job_id: JobId, status: &str, replayed: bool) -> Response {
    let mut response =
        (StatusCode::ACCEPTED, Json(json!({"jobId": job_id.to_string(), "status": status}))).into_response();
    if replayed {
        // Lets a client tell a replay from a fresh submission without changing the body shape.
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}
