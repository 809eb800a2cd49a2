//! What an operator reads to run the business: the overview, usage reports (JSON or
//! CSV), the MiniMax accounts' health (and holding one out of rotation), and the audit
//! log.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{AuditRecord, UpstreamBudget, UsageBucket, UsageGroup, UsageQuery, UsageRow};

use super::{
    body_as, encode_page_cursor, id_cursor, invalid, page, page_limit, parse_account_id, parse_time, Operator, Result,
};
use crate::admin;
use crate::api::dto::timestamp;
use crate::api::error::ApiError;
use crate::api::extract::{query_param, read_limited, Path, Query};
use crate::engine::UpstreamState;
use crate::state::AppState;

/// The widest usage report, in buckets: about two years of days or a month of hours.
const MAX_BUCKETS: i64 = 24 * 31;
/// The most rows one usage report answers with.
const MAX_USAGE_ROWS: usize = 50_000;
/// Largest body of a hold request.
const HOLD_BODY_MAX: usize = 4096;
/// The window MiniMax counts create calls in.
const CREATE_WINDOW_MS: i64 = 60_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/overview", get(overview))
        .route("/usage", get(usage))
        .route("/upstreams", get(upstreams))
        .route("/upstreams/{name}/{action}", post(hold_or_release))
        .route("/audit", get(audit))
}

/// Jobs by status now, the queue's oldest wait, completions and failures per minute over
/// the last hour (every minute present, so a chart needs no gap filling) and today's
/// credits.
async fn overview(State(state): State<AppState>, _operator: Operator) -> Result<Json<Value>> {
    let now = crate::now_ms();
    let o = state.store.overview(now).await?;
    let by_status: serde_json::Map<String, Value> =
        o.by_status.iter().map(|(status, n)| (status.as_str().to_owned(), json!(n))).collect();
    let queued = o.by_status.iter().find(|(s, _)| *s == domain::JobStatus::Queued).map_or(0, |(_, n)| *n);
    let this_minute = now - now.rem_euclid(60_000);
    let per_minute: Vec<Value> = (0..60)
        .rev()
        .map(|back| {
            let minute = this_minute - back * 60_000;
            let (completed, failed) =
                o.per_minute.iter().find(|(m, _, _)| *m == minute).map_or((0, 0), |(_, c, f)| (*c, *f));
            json!({"minute": timestamp(minute), "completed": completed, "failed": failed})
        })
        .collect();
    Ok(Json(json!({
        "jobsByStatus": by_status,
        "queueDepth": queued,
        "oldestQueuedAgeSeconds": o.oldest_queued_at_ms.map(|at| ((now - at).max(0) as f64) / 1000.0),
        "perMinute": per_minute,
        "creditsChargedToday": o.charged_today,
        "creditsRefundedToday": o.refunded_today,
    })))
}

/// One usage row on the wire (also the CSV's columns, in the same order).
fn usage_json(r: &UsageRow) -> Value {
    json!({
        "group": r.group,
        "bucketStart": timestamp(r.bucket_start_ms),
        "submitted": r.submitted,
        "completed": r.completed,
        "failed": r.failed,
        "cancelled": r.cancelled,
        "creditsCharged": r.credits_charged,
        "creditsRefunded": r.credits_refunded,
        "netCredits": r.net_credits(),
    })
}

/// Usage per group and bucket: JSON, or CSV for `Accept: text/csv`.
async fn usage(
    State(state): State<AppState>,
    _operator: Operator,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response> {
    let param = |name| query_param(&params, name).filter(|v| !v.is_empty());
    let group_by = match param("group_by").unwrap_or("account") {
        "account" => UsageGroup::Account,
        "key" => UsageGroup::Key,
        "model" => UsageGroup::Model,
        _ => return Err(invalid("group_by", "must be account, key or model")),
    };
    let bucket = match param("bucket").unwrap_or("day") {
        "day" => UsageBucket::Day,
        "hour" => UsageBucket::Hour,
        _ => return Err(invalid("bucket", "must be day or hour")),
    };
    let now = crate::now_ms();
    let to_ms = param("to").map(|t| parse_time("to", t)).transpose()?.unwrap_or(now + 1);
    let from_ms = match param("from") {
        Some(t) => parse_time("from", t)?,
        None => to_ms - 30 * UsageBucket::Day.millis(),
    };
    if from_ms >= to_ms {
        return Err(invalid("from", "must be before to"));
    }
    if (to_ms - from_ms) / bucket.millis() > MAX_BUCKETS {
        return Err(invalid(
            "to",
            format!("the range holds more than {MAX_BUCKETS} buckets; narrow it or use bigger buckets"),
        ));
    }
    let account_id = param("account").map(parse_account_id).transpose()?;
    let rows = state.store.usage(&UsageQuery { group_by, bucket, from_ms, to_ms, account_id }).await?;
    if rows.len() > MAX_USAGE_ROWS {
        return Err(invalid(
            "to",
            format!("the report has more than {MAX_USAGE_ROWS} rows; narrow the range, use days, or name an account"),
        ));
    }
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")));
    if wants_csv {
        return csv_response(&rows);
    }
    Ok(Json(json!({
        "groupBy": param("group_by").unwrap_or("account"),
        "bucket": param("bucket").unwrap_or("day"),
        "from": timestamp(from_ms),
        "to": timestamp(to_ms),
        "data": rows.iter().map(usage_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn csv_response(rows: &[UsageRow]) -> Result<Response> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let header_row = [
        "group",
        "bucket_start",
        "submitted",
        "completed",
        "failed",
        "cancelled",
        "credits_charged",
        "credits_refunded",
        "net_credits",
    ];
    let written = out.write_record(header_row).and_then(|()| {
        rows.iter().try_for_each(|r| {
            out.write_record([
                r.group.clone(),
                timestamp(r.bucket_start_ms),
                r.submitted.to_string(),
                r.completed.to_string(),
                r.failed.to_string(),
                r.cancelled.to_string(),
                r.credits_charged.to_string(),
                r.credits_refunded.to_string(),
                r.net_credits().to_string(),
            ])
        })
    });
    let bytes = written
        .map_err(|e| e.to_string())
        .and_then(|()| out.into_inner().map_err(|e| e.to_string()))
        .map_err(|e| ApiError::Internal(format!("writing the usage CSV: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response())
}

/// Every configured MiniMax account: its budget and use in the current window, jobs in
/// flight, whether it is in rotation and why not, and its errors over the last hour as
/// this node saw them.
async fn upstreams(State(state): State<AppState>, _operator: Operator) -> Result<Json<Value>> {
    let data = upstream_views(&state, &node_upstreams(&state)).await?;
    Ok(Json(json!({"data": data})))
}

/// Every MiniMax account this node would use, as its engine sees it; on a node with the
/// engine off, the configured accounts with nothing seen.
fn node_upstreams(state: &AppState) -> Vec<UpstreamState> {
    match &state.engine {
        Some(engine) => engine.upstream_states(),
        None => state
            .config
            .minimax
            .accounts
            .iter()
            .map(|a| UpstreamState {
                budget: UpstreamBudget {
                    name: a.name.clone(),
                    create_rpm: a.create_rpm,
                    max_in_flight: a.max_in_flight,
                    claimable_now: 0,
                },
                out_of_rotation: None,
                errors_last_hour: Default::default(),
            })
            .collect(),
    }
}

/// The wire view of each of `upstreams`, with the store's figures and holds.
async fn upstream_views(state: &AppState, upstreams: &[UpstreamState]) -> Result<Vec<Value>> {
    let now = crate::now_ms();
    let activity = state.store.upstream_activity(now, CREATE_WINDOW_MS).await?;
    let holds = state.store.upstream_holds(now).await?;
    let views = upstreams
        .iter()
        .map(|mine| {
            let UpstreamBudget { name, create_rpm, max_in_flight, .. } = &mine.budget;
            let used = activity.iter().find(|a| &a.name == name);
            let creates_in_window = used.map_or(0, |a| a.creates_in_window);
            let hold = holds.iter().find(|h| &h.name == name);
            // The engine's own bench first (it says what MiniMax answered), else a hold.
            let out = mine
                .out_of_rotation
                .clone()
                .map(|o| (o.until_ms, o.reason))
                .or_else(|| hold.map(|h| (h.until_ms, h.reason.clone())));
            json!({
                "name": name,
                "createRpm": create_rpm,
                "createsInWindow": creates_in_window,
                "createsLeft": create_rpm.saturating_sub(creates_in_window),
                "maxInFlight": max_in_flight,
                "inFlight": used.map_or(0, |a| a.in_flight),
                "inRotation": out.is_none(),
                "outOfRotationUntil": out.as_ref().map(|(until, _)| timestamp(*until)),
                "outOfRotationReason": out.as_ref().map(|(_, why)| why.clone()),
                "held": hold.is_some(),
                "errorsLastHour": mine.errors_last_hour,
            })
        })
        .collect();
    Ok(views)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    minutes: Option<i64>,
    reason: Option<String>,
}

/// `bench` holds the account out of rotation (for every node on the store); `unbench`
/// releases it.
async fn hold_or_release(
    State(state): State<AppState>,
    operator: Operator,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>> {
    let upstreams = node_upstreams(&state);
    let configured: Vec<String> = upstreams.iter().map(|u| u.budget.name.clone()).collect();
    match action.as_str() {
        "bench" => {
            // The body is optional: a bare POST holds for an hour.
            let deadline = std::time::Duration::from_millis(state.config.server.body_deadline_ms);
            let bytes = read_limited(&headers, body, HOLD_BODY_MAX, deadline).await?;
            let body: HoldBody = if bytes.iter().all(u8::is_ascii_whitespace) {
                HoldBody::default()
            } else {
                body_as(domain::json::parse_bounded(&bytes)?)?
            };
            let minutes = body.minutes.unwrap_or(60);
            admin::hold_upstream(state.store.as_ref(), &configured, &name, minutes, body.reason, operator.audit())
                .await?;
        }
        "unbench" => {
            admin::release_upstream(state.store.as_ref(), &configured, &name, operator.audit()).await?;
        }
        _ => return Err(ApiError::NotFound("No such admin route".into())),
    }
    if let Some(engine) = &state.engine {
        engine.holds_changed();
    }
    let views = upstream_views(&state, &upstreams).await?;
    let view = views.into_iter().find(|v| v["name"] == name.as_str()).unwrap_or(Value::Null);
    Ok(Json(view))
}

fn audit_json(r: &AuditRecord) -> Value {
    json!({
        "id": r.id,
        "tokenId": r.token_id,
        "actor": r.actor,
        "action": r.action,
        "target": r.target,
        "before": r.before,
        "after": r.after,
        "requestId": r.request_id,
        "createdAt": timestamp(r.created_at_ms),
    })
}

async fn audit(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let limit = page_limit(query_param(&params, "limit"))?;
    let before = id_cursor("audit", query_param(&params, "cursor"))?;
    let rows = state.store.audit_log(before, limit).await?;
    Ok(Json(page(rows, limit, |r| encode_page_cursor("audit", &r.id.to_string()), audit_json)))
}
