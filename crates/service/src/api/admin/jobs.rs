//! Jobs across accounts: the explorer's list, one job with its engine bookkeeping and
//! timeline, cancelling and webhook replays.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::{ApiKeyId, JobStatus};
use serde_json::{json, Value};
use store::{AdminJobQuery, JobRecord};

use super::{invalid, page_limit, parse_account_id, parse_time, split_page, Operator, Result};
use crate::admin;
use crate::api::dto::timestamp;
use crate::api::extract::{query_param, Path, Query};
use crate::api::jobs::{decode_cursor, encode_cursor, job_not_found, parse_job_id, view, webhook_events_json};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/webhooks/replay", post(replay_webhooks))
}

/// The public job view plus whose it is.
async fn job_json(state: &AppState, job: &JobRecord, with_input: bool) -> Value {
    let mut body = serde_json::to_value(view(state, job, with_input).await).unwrap_or_default();
    body["accountId"] = json!(job.account_id.to_string());
    body["apiKeyId"] = json!(job.api_key_id.to_string());
    body
}

async fn list_jobs(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let param = |name| query_param(&params, name).filter(|v| !v.is_empty());
    let limit = page_limit(param("limit"))?;
    let status = param("status")
        .map(|s| {
            JobStatus::parse(&s.to_ascii_uppercase())
                .ok_or_else(|| invalid("status", "must be QUEUED, PROCESSING, COMPLETED, FAILED or CANCELLED"))
        })
        .transpose()?;
    let api_key_id =
        param("key").map(|k| k.parse::<ApiKeyId>().map_err(|_| invalid("key", "must be an API key id"))).transpose()?;
    let after = param("cursor")
        .map(|c| decode_cursor(c).ok_or_else(|| invalid("cursor", "pass nextCursor from a previous page unchanged")))
        .transpose()?;
    let query = AdminJobQuery {
        account_id: param("account").map(parse_account_id).transpose()?,
        api_key_id,
        status,
        model: param("model").map(str::to_owned),
        from_ms: param("from").map(|t| parse_time("from", t)).transpose()?,
        to_ms: param("to").map(|t| parse_time("to", t)).transpose()?,
        after,
        limit,
    };
    let rows = state.store.admin_jobs(&query).await?;
    let (rows, next) = split_page(rows, limit, |j| encode_cursor(j.created_at_ms, j.id));
    let mut data = Vec::with_capacity(rows.len());
    for job in &rows {
        data.push(job_json(&state, job, false).await);
    }
    Ok(Json(json!({"data": data, "nextCursor": next})))
}

/// One job with where it ran upstream, its attempts, its timeline and its webhooks.
async fn get_job(State(state): State<AppState>, _operator: Operator, Path(id): Path<String>) -> Result<Json<Value>> {
    let id = parse_job_id(&id)?;
    let job = state.store.engine_job(id).await?.ok_or_else(job_not_found)?;
    let timeline = state.store.job_timeline(id).await?;
    let webhooks = state.store.webhook_events(id).await?;
    let mut body = job_json(&state, &job.record, true).await;
    body["stage"] = json!(job.stage.as_str());
    body["upstream"] = json!({
        "account": job.upstream_account,
        "taskId": job.upstream_task_id,
        "fileId": job.upstream_file_id,
    });
    body["attempts"] = json!(job.attempts);
    body["startedAt"] = json!(job.started_at_ms.map(timestamp));
    body["timeline"] = timeline
        .iter()
        .map(|c| {
            json!({
                "at": timestamp(c.at_ms),
                "from": c.from.map(|s| s.as_str()),
                "to": c.to.as_str(),
                "note": c.note,
            })
        })
        .collect();
    body["webhooks"] = json!(webhook_events_json(&webhooks));
    Ok(Json(body))
}

async fn cancel_job(State(state): State<AppState>, operator: Operator, Path(id): Path<String>) -> Result<Json<Value>> {
    let id = parse_job_id(&id)?;
    let job = admin::cancel_job(state.store.as_ref(), id, operator.audit()).await?;
    // As for a customer's cancel: a job that never reaches MiniMax needs no input copies.
    crate::engine::inputs::drop_job_copies(&state.links, state.results.as_ref(), &job).await;
    Ok(Json(job_json(&state, &job, true).await))
}

async fn replay_webhooks(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let id = parse_job_id(&id)?;
    state.store.engine_job(id).await?.ok_or_else(job_not_found)?;
    let replayed = admin::replay_webhooks(state.store.as_ref(), id, operator.audit()).await?;
    Ok(Json(json!({"replayed": replayed})))
}
