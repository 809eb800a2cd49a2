//! Customers: accounts, their API keys, credit adjustments and the ledger.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::{AccountId, ApiKeyId, ApiKeyStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{Account, AccountPatch, AccountQuery, ApiKeyRecord, LedgerEntry, UsageBucket, UsageGroup, UsageQuery};

use super::{
    body_as, decode_page_cursor, encode_page_cursor, id_cursor, invalid, page, page_limit, parse_account_id,
    usage_totals, Operator, Result,
};
use crate::admin::{self, AccountInput, KeyInput};
use crate::api::dto::timestamp;
use crate::api::error::ApiError;
use crate::api::extract::{idempotency_key, query_param, JsonBody, Path, Query};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list_accounts).post(create_account))
        .route("/accounts/{id}", get(get_account).patch(update_account))
        .route("/accounts/{id}/keys", post(create_key))
        .route("/accounts/{id}/credits", post(adjust_credits))
        .route("/accounts/{id}/ledger", get(ledger))
        .route("/keys", get(list_keys))
        .route("/keys/{id}/{action}", post(set_key_status))
}

/// An account on the wire: what the audit log records of it, and when it was made.
fn account_json(a: &Account) -> Value {
    let mut body = store::snapshot::account(a);
    body["createdAt"] = json!(timestamp(a.created_at_ms));
    body
}

fn key_json(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id.to_string(),
        "accountId": k.account_id.to_string(),
        "name": k.name,
        "email": k.email,
        "prefix": k.prefix,
        "status": k.status.as_str(),
        "createdAt": timestamp(k.created_at_ms),
    })
}

fn ledger_json(e: &LedgerEntry) -> Value {
    json!({
        "id": e.id,
        "kind": e.kind.as_str(),
        "amount": e.amount,
        "jobId": e.job_id.map(|j| j.to_string()),
        "note": e.note,
        "idempotencyKey": e.idempotency_key,
        "createdAt": timestamp(e.created_at_ms),
    })
}

async fn existing_account(state: &AppState, id: AccountId) -> Result<Account> {
    state.store.get_account(id).await?.ok_or_else(|| ApiError::NotFound("Account not found".into()))
}

async fn list_accounts(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let limit = page_limit(query_param(&params, "limit"))?;
    let after = query_param(&params, "cursor")
        .map(|raw| {
            let parts = decode_page_cursor("accounts", raw)?;
            let (at, id) = parts.split_once(':').ok_or_else(|| invalid("cursor", "pass nextCursor unchanged"))?;
            match (at.parse::<i64>(), id.parse::<AccountId>()) {
                (Ok(at), Ok(id)) => Ok((at, id)),
                _ => Err(invalid("cursor", "pass nextCursor unchanged")),
            }
        })
        .transpose()?;
    let search = query_param(&params, "search").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    if search.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(invalid("search", "must be at most 200 characters"));
    }
    let rows = state.store.list_accounts(&AccountQuery { search, after, limit }).await?;
    Ok(Json(page(
        rows,
        limit,
        |a| encode_page_cursor("accounts", &format!("{}:{}", a.created_at_ms, a.id)),
        account_json,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewAccountBody {
    name: String,
    email: Option<String>,
    plan: Option<String>,
    max_concurrent_jobs: Option<u32>,
    #[serde(default)]
    credits: i64,
}

async fn create_account(
    State(state): State<AppState>,
    operator: Operator,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let body: NewAccountBody = body_as(body)?;
    let input = AccountInput {
        name: body.name,
        email: body.email,
        plan: body.plan,
        max_concurrent_jobs: body.max_concurrent_jobs,
        credits: body.credits,
    };
    let account = admin::create_account(state.store.as_ref(), &state.config.accounts, input, operator.audit()).await?;
    Ok((StatusCode::CREATED, Json(account_json(&account))).into_response())
}

/// An account with its keys and this month's usage.
async fn get_account(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let id = parse_account_id(&id)?;
    let account = existing_account(&state, id).await?;
    let keys = state.store.list_api_keys(Some(id)).await?;
    let now = crate::now_ms();
    let month_start = month_start_ms(now);
    let query = UsageQuery {
        group_by: UsageGroup::Account,
        bucket: UsageBucket::Day,
        from_ms: month_start,
        to_ms: now + 1,
        account_id: Some(id),
    };
    let rows = state.store.usage(&query).await?;
    let mut body = account_json(&account);
    body["keys"] = keys.iter().map(key_json).collect();
    body["usageThisMonth"] = usage_totals(&rows);
    body["usageThisMonth"]["from"] = json!(timestamp(month_start));
    Ok(Json(body))
}

/// Midnight UTC on the first day of `now_ms`'s month.
fn month_start_ms(now_ms: i64) -> i64 {
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let first = now.date().replace_day(1).unwrap_or(now.date());
    (first.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

async fn update_account(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let id = parse_account_id(&id)?;
    let Value::Object(fields) = body else {
        return Err(domain::ValidationErrors::root("Expected a JSON object").into());
    };
    let mut patch = AccountPatch::default();
    for (field, value) in fields {
        match (field.as_str(), value) {
            ("name", Value::String(s)) => patch.name = Some(s),
            ("plan", Value::String(s)) => patch.plan = Some(s),
            ("email", Value::String(s)) => patch.email = Some(Some(s)),
            ("email", Value::Null) => patch.email = Some(None),
            ("disabled", Value::Bool(b)) => patch.disabled = Some(b),
            ("maxConcurrentJobs", Value::Number(n)) => {
                let n = n.as_u64().and_then(|n| u32::try_from(n).ok());
                patch.max_concurrent_jobs =
                    Some(n.ok_or_else(|| invalid("maxConcurrentJobs", "must be a whole number"))?);
            }
            ("name" | "plan" | "email" | "disabled" | "maxConcurrentJobs", _) => {
                return Err(invalid(&field, "has the wrong type"));
            }
            _ => return Err(invalid(&field, "is not a field of an account that can be changed")),
        }
    }
    let account = admin::update_account(state.store.as_ref(), id, patch, operator.audit()).await?;
    Ok(Json(account_json(&account)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    email: Option<String>,
}

/// A new key for an account; the secret is in this answer and nowhere else, ever.
async fn create_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let id = parse_account_id(&id)?;
    let body: NewKeyBody = body_as(body)?;
    existing_account(&state, id).await?;
    let input = KeyInput { account_id: Some(id), name: body.name, email: body.email, credits: 0 };
    let new = admin::create_key(state.store.as_ref(), &state.config.accounts, input, operator.audit()).await?;
    let body = json!({"key": key_json(&new.key), "secret": new.secret});
    Ok((StatusCode::CREATED, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Keys, oldest first, paged; all of them or one account's.
async fn list_keys(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let account = query_param(&params, "account").map(parse_account_id).transpose()?;
    let limit = page_limit(query_param(&params, "limit"))?;
    let after = query_param(&params, "cursor")
        .map(|raw| {
            let parts = decode_page_cursor("keys", raw)?;
            let (at, id) = parts.split_once(':').ok_or_else(|| invalid("cursor", "pass nextCursor unchanged"))?;
            match (at.parse::<i64>(), id.parse::<ApiKeyId>()) {
                (Ok(at), Ok(id)) => Ok((at, id)),
                _ => Err(invalid("cursor", "pass nextCursor unchanged")),
            }
        })
        .transpose()?;
    // Keys are few next to jobs (one or a few per customer), so the store hands over the
    // list and the page is cut here.
    let keys: Vec<ApiKeyRecord> = state
        .store
        .list_api_keys(account)
        .await?
        .into_iter()
        .filter(|k| after.is_none_or(|after| (k.created_at_ms, k.id) > after))
        .take(limit as usize + 1)
        .collect();
    Ok(Json(page(keys, limit, |k| encode_page_cursor("keys", &format!("{}:{}", k.created_at_ms, k.id)), key_json)))
}

async fn set_key_status(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let status = match action.as_str() {
        "disable" => ApiKeyStatus::Disabled,
        "enable" => ApiKeyStatus::Active,
        "revoke" => ApiKeyStatus::Revoked,
        _ => return Err(ApiError::NotFound("No such admin route".into())),
    };
    let id: ApiKeyId = id.parse().map_err(|_| ApiError::BadRequest("Invalid key id: expected a UUID".into()))?;
    let key = admin::set_key_status(state.store.as_ref(), id, status, operator.audit()).await?;
    Ok(Json(key_json(&key)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    amount: i64,
    note: Option<String>,
}

/// Grants or deducts credits; a retry with the same `Idempotency-Key` applies once and
/// answers as the first time did, with `replayed: true`.
async fn adjust_credits(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let id = parse_account_id(&id)?;
    let key = idempotency_key(&headers)?;
    let body: CreditsBody = body_as(body)?;
    let done = admin::adjust_credits(state.store.as_ref(), id, body.amount, body.note, key, operator.audit()).await?;
    Ok(Json(json!({
        "account": account_json(&done.account),
        "entry": ledger_json(&done.entry),
        "replayed": done.replayed,
    })))
}

async fn ledger(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let id = parse_account_id(&id)?;
    let limit = page_limit(query_param(&params, "limit"))?;
    let before = id_cursor("ledger", query_param(&params, "cursor"))?;
    existing_account(&state, id).await?;
    let rows = state.store.ledger_page(id, before, limit).await?;
    Ok(Json(page(rows, limit, |e| encode_page_cursor("ledger", &e.id.to_string()), ledger_json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_at_midnight_utc_on_the_first() {
        // 2026-12-03T09:41:00Z -> 2026-12-01T00:00:00Z
        assert_eq!(month_start_ms(1_796_290_860_000), 1_796_083_200_000);
        assert_eq!(timestamp(month_start_ms(1_796_290_860_000)), "2026-12-01T00:00:00.000Z");
    }
}
