//! `GET /v2/jobs/{id}`, `GET /v2/jobs` and `POST /v2/jobs/{id}/cancel` (our addition):
//! jobs, only ever within the caller's account.
//!
//! Listing is keyset-paginated on `(createdAt desc, id desc)`. The cursor names the
//! last row returned, so a page never depends on how many rows came before it: jobs
//! inserted while a client pages land before its position and cannot shift or repeat
//! the rows it has yet to see.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use domain::{JobId, JobStatus, ValidationErrors};
use serde::Serialize;
use store::{CancelOutcome, JobCursor, JobQuery, JobRecord};

use crate::api::dto::JobView;
use crate::api::error::{ApiError, Result};
use crate::api::extract::{query_param, Caller, Path, Query};
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
const CURSOR_VERSION: &str = "v1";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/jobs", get(list_jobs))
        .route("/v2/jobs/{id}", get(get_job))
        .route("/v2/jobs/{id}/cancel", post(cancel_job))
        .route("/v2/jobs/{id}/webhooks", get(get_job_webhooks))
}

/// Our addition: the job's webhook events and every delivery attempt, for the job's
/// owner to see why a webhook did (not) arrive.
async fn get_job_webhooks(
    State(state): State<AppState>,
    Caller(key): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = parse_job_id(&id)?;
    let job = state.store.get_job(key.account_id, id).await?.ok_or_else(job_not_found)?;
    let events = webhook_events_json(&state.store.webhook_events(id).await?);
    Ok(Json(serde_json::json!({
        "jobId": id.to_string(),
        "webhookStatus": job.webhook_status.map(|w| w.as_str()),
        "events": events,
    }))
    .into_response())
}

/// A job's webhook events with their attempts, as `GET /v2/jobs/{id}/webhooks` (and the
/// admin job view) show them.
pub(crate) fn webhook_events_json(events: &[store::WebhookEventRecord]) -> Vec<serde_json::Value> {
    let ts = crate::api::dto::timestamp;
    events
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.event_id,
                "event": e.event.as_str(),
                "url": e.url,
                "status": e.status.as_str(),
                "createdAt": ts(e.created_at_ms),
                "nextAttemptAt": e.next_attempt_at_ms.filter(|_| e.status == domain::WebhookStatus::Pending).map(ts),
                "attempts": e.attempts.iter().map(|a| serde_json::json!({
                    "attemptedAt": ts(a.attempted_at_ms),
                    "statusCode": a.status_code,
                    "durationMs": a.duration_ms,
                    "error": a.error,
                    "responseBody": a.response_body,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

async fn get_job(State(state): State<AppState>, Caller(key): Caller, Path(id): Path<String>) -> Result<Response> {
    let id = parse_job_id(&id)?;
    // Another account's job is indistinguishable from a missing one.
    let job = state.store.get_job(key.account_id, id).await?.ok_or_else(job_not_found)?;
    Ok(Json(view(&state, &job, true).await).into_response())
}

/// Cancels a job that has not been submitted upstream yet and refunds it in full.
/// MiniMax cannot stop a task once it has it, so later states answer 409 rather than
/// pretend: the generation would run (and cost) anyway.
async fn cancel_job(State(state): State<AppState>, Caller(key): Caller, Path(id): Path<String>) -> Result<Response> {
    let id = parse_job_id(&id)?;
    match state.store.cancel_job(key.account_id, id).await? {
        CancelOutcome::Cancelled(job) => {
            // A cancelled job never reaches MiniMax: its copies of uploads go now.
            crate::engine::inputs::drop_job_copies(&state.links, state.results.as_ref(), &job).await;
            Ok(Json(JobView::new(&job, true)).into_response())
        }
        CancelOutcome::NotFound => Err(job_not_found()),
        CancelOutcome::NotCancellable(status) => Err(ApiError::Conflict(match status {
            JobStatus::Cancelled => "Job is already CANCELLED".to_string(),
            other => format!("Job is {}; only QUEUED jobs can be cancelled", other.as_str()),
        })),
    }
}

/// The job as a client sees it. When result videos are handed out as presigned bucket
/// URLs, a completed job's `videoUrl` is signed now, on every read, so it is never stale.
pub(crate) async fn view<'a>(state: &AppState, job: &'a JobRecord, with_input: bool) -> JobView<'a> {
    let view = JobView::new(job, with_input);
    let (Some(stored), false) = (&job.result, job.expired) else { return view };
    match crate::results::presigned_video_url(state.results.as_ref(), job.id, stored).await {
        Some(fresh) => view.with_result(fresh),
        None => view,
    }
}

pub(crate) fn parse_job_id(raw: &str) -> Result<JobId> {
    raw.parse().map_err(|_| ApiError::BadRequest("Invalid job id: expected a UUID".into()))
}

pub(crate) fn job_not_found() -> ApiError {
    ApiError::NotFound("Job not found".into())
}

async fn list_jobs(
    State(state): State<AppState>,
    Caller(key): Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response> {
    let list = parse_list_query(&params)
        .map_err(|details| ApiError::Validation { message: "Invalid query parameters".into(), details })?;
    // Every key is its account's admin here, so `scope=team` is allowed; the default
    // `user` scope lists the jobs submitted with the calling key, as Apiframe does.
    let api_key_id = if list.team { None } else { Some(key.id) };
    let limit = list.limit;
    let query = JobQuery {
        account_id: key.account_id,
        api_key_id,
        status: list.status,
        model: list.model,
        job_id: list.job_id,
        after: list.after,
        limit,
    };
    let mut rows = state.store.list_jobs(&query).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if has_more { rows.last().map(|j| encode_cursor(j.created_at_ms, j.id)) } else { None };
    let models = match list.include_models {
        true => Some(state.store.job_models(key.account_id, api_key_id).await?),
        false => None,
    };
    let mut jobs: Vec<JobView<'_>> = Vec::with_capacity(rows.len());
    for job in &rows {
        jobs.push(view(&state, job, false).await);
    }
    Ok(Json(JobListView { jobs, next_cursor, has_more, models }).into_response())
}

/// The query of `GET /v2/jobs`, checked.
#[derive(Debug, PartialEq)]
struct ListQuery {
    status: Option<JobStatus>,
    model: Option<String>,
    limit: u32,
    after: Option<JobCursor>,
    /// `scope=team`: every key's jobs, not only the caller's.
    team: bool,
    job_id: Option<JobId>,
    include_models: bool,
}

/// Parses the query parameters of `GET /v2/jobs`, reporting every bad one.
fn parse_list_query(params: &[(String, String)]) -> std::result::Result<ListQuery, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let param = |name: &str| query_param(params, name);

    let status = param("status").and_then(|s| {
        JobStatus::parse(s).or_else(|| {
            errors.add("status", "Expected one of QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED");
            None
        })
    });
    let model = param("model").and_then(|m| {
        if m.is_empty() || m.len() > 100 {
            errors.add("model", "Expected a model id");
            None
        } else {
            Some(m.to_string())
        }
    });
    let limit = match param("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.add("limit", format!("Expected an integer from 1 to {MAX_LIMIT}"));
                DEFAULT_LIMIT
            }
        },
    };
    let after = param("cursor").and_then(|c| {
        decode_cursor(c).or_else(|| {
            errors.add("cursor", "Invalid cursor; pass nextCursor from a previous page unchanged");
            None
        })
    });
    let team = match param("scope").unwrap_or("user") {
        "user" => false,
        "team" => true,
        _ => {
            errors.add("scope", "Expected 'user' or 'team'");
            false
        }
    };
    let job_id = param("search").and_then(|s| {
        s.parse::<JobId>().ok().or_else(|| {
            errors.add("search", "Expected a job id (UUID)");
            None
        })
    });
    let include_models = match param("include_models") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            errors.add("include_models", "Expected 'true' or 'false'");
            false
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ListQuery { status, model, limit, after, team, job_id, include_models })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobListView<'a> {
    jobs: Vec<JobView<'a>>,
    next_cursor: Option<String>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<Vec<String>>,
}

pub(crate) fn encode_cursor(created_at_ms: i64, id: JobId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}:{created_at_ms}:{id}"))
}

pub(crate) fn decode_cursor(raw: &str) -> Option<JobCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    if parts.next()? != CURSOR_VERSION {
        return None;
    }
    let created_at_ms = parts.next()?.parse().ok()?;
    let id = parts.next()?.parse().ok()?;
    Some(JobCursor { created_at_ms, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = JobId::new();
        let c = decode_cursor(&encode_cursor(1234, id)).unwrap();
        assert_eq!((c.created_at_ms, c.id), (1234, id));
        for bad in ["", "!!!", "djE6eA", &URL_SAFE_NO_PAD.encode(format!("v2:1:{id}"))] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    /// Property test: any query string is answered, never a panic, and what is
    /// accepted is within the documented bounds.
    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        const NAMES: [&str; 8] = ["status", "model", "limit", "cursor", "scope", "search", "include_models", "x"];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,16}",
                "[0-9-]{0,12}",
                prop_oneof![Just("QUEUED"), Just("team"), Just("user"), Just("true"), Just("100"), Just("0")]
                    .prop_map(str::to_string),
                (any::<i64>(), "\\PC{0,40}").prop_map(|(t, id)| URL_SAFE_NO_PAD.encode(format!("v1:{t}:{id}"))),
                Just(encode_cursor(7, JobId::new())),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_query_is_parsed_or_refused(params in vec((proptest::sample::select(NAMES.to_vec()), value()), 0..8)) {
                let params: Vec<(String, String)> = params.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                match parse_list_query(&params) {
                    Ok(q) => prop_assert!((1..=MAX_LIMIT).contains(&q.limit)),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }
        }
    }
}
