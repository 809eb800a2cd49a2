//! The admin API under `/admin/v1`: what an operator's billing system and console call.
//! The actions themselves live in [`crate::admin`], shared with the command line; this
//! module owns the HTTP side: the admin-token check, the wire shapes, paging and the
//! OpenAPI document at `/admin/v1/openapi.json`.
//!
//! Every route but the document needs `Authorization: Bearer rga_...`. A customer's API
//! key is never accepted here, in any header. Answers use the public API's error
//! envelope.

mod customers;
mod jobs;
mod reports;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use domain::ValidationErrors;
use serde_json::{json, Value};
use store::{AdminToken, AuditContext};

use crate::admin::AdminError;
use crate::api::error::ApiError;
use crate::api::RequestId;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The OpenAPI document of the admin API, written by hand next to this module.
const OPENAPI: &str = include_str!("admin/openapi.json");

/// Default and largest page sizes.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 100;

/// The admin API's routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/session", get(session))
        .merge(customers::router())
        .merge(jobs::router())
        .merge(reports::router())
        .fallback(|| async { ApiError::NotFound("No such admin route".into()) })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Which token signed the console in, and what server this is.
async fn session(State(state): State<AppState>, operator: Operator) -> Json<Value> {
    Json(json!({
        "token": {"id": operator.token.id, "name": operator.token.name, "prefix": operator.token.prefix},
        "server": {"version": env!("CARGO_PKG_VERSION"), "sandbox": state.config.minimax.accounts.is_empty()},
    }))
}

/// An operator: a request that presented an active admin token. Taking one in a handler
/// is what makes the route admin-only.
pub(crate) struct Operator {
    token: AdminToken,
    request_id: Option<String>,
}

impl Operator {
    /// The audit context of a change made by this request.
    pub(crate) fn audit(&self) -> AuditContext {
        AuditContext {
            token_id: Some(self.token.id.clone()),
            actor: format!("token:{}", self.token.name),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = bearer(&parts.headers).ok_or(ApiError::InvalidAdminToken)?;
        let token = crate::admin::authenticate(state.store.as_ref(), presented).await.map_err(ApiError::from)?;
        let token = token.ok_or(ApiError::InvalidAdminToken)?;
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        Ok(Operator { token, request_id })
    }
}

/// The one bearer token of the request; two Authorization headers are refused.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid { field, message } => invalid(field, message),
            AdminError::NotFound(what) => ApiError::NotFound(what),
            AdminError::Conflict(why) => ApiError::Conflict(why),
            AdminError::Insufficient { requested, available } => ApiError::DeductionTooLarge { requested, available },
            AdminError::Store(e) => e.into(),
        }
    }
}

/// A 400 naming one query parameter or body field.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    let mut details = ValidationErrors::default();
    details.add(field, message.clone());
    ApiError::Validation { message: format!("Invalid {field}: {message}"), details }
}

/// The page size from `limit`.
fn page_limit(raw: Option<&str>) -> Result<u32> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(invalid("limit", format!("must be a whole number from 1 to {MAX_LIMIT}"))),
        },
    }
}

/// The first `limit` rows, and the cursor after them when the store found one more.
fn split_page<T>(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(cursor_of) } else { None };
    (rows, next)
}

/// A page answer: the first `limit` rows shown, and `nextCursor`.
fn page<T>(rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String, show: impl Fn(&T) -> Value) -> Value {
    let (rows, next) = split_page(rows, limit, cursor_of);
    json!({"data": rows.iter().map(show).collect::<Vec<_>>(), "nextCursor": next})
}

/// An opaque cursor from its parts (`kind` keeps one list's cursor out of another).
fn encode_page_cursor(kind: &str, parts: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{parts}"))
}

/// The parts of a cursor made by [`encode_page_cursor`] with `kind`.
fn decode_page_cursor(kind: &str, raw: &str) -> Result<String> {
    let refused = || invalid("cursor", "pass nextCursor from a previous page unchanged");
    let text = URL_SAFE_NO_PAD.decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(refused)?;
    text.strip_prefix(kind).and_then(|rest| rest.strip_prefix(':')).map(str::to_owned).ok_or_else(refused)
}

/// A keyset cursor on a row id (ledger, audit log).
fn id_cursor(kind: &str, raw: Option<&str>) -> Result<Option<i64>> {
    raw.map(|raw| {
        decode_page_cursor(kind, raw)?.parse::<i64>().map_err(|_| invalid("cursor", "pass nextCursor unchanged"))
    })
    .transpose()
}

/// A time given as RFC 3339 (`2026-12-01T00:00:00Z`) or a UTC date (`2026-12-01`).
fn parse_time(field: &str, raw: &str) -> Result<i64> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let at = time::OffsetDateTime::parse(raw, &Rfc3339).ok().or_else(|| {
        time::Date::parse(raw, format_description!("[year]-[month]-[day]")).ok().map(|d| d.midnight().assume_utc())
    });
    at.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .ok_or_else(|| invalid(field, "must be an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)"))
}

/// An account id from a path or query.
fn parse_account_id(raw: &str) -> Result<domain::AccountId> {
    raw.parse().map_err(|_| ApiError::BadRequest("Invalid account id: expected a UUID".into()))
}

/// The sums of usage rows (an account's "this month").
fn usage_totals(rows: &[store::UsageRow]) -> Value {
    let sum = |f: fn(&store::UsageRow) -> i64| rows.iter().map(f).sum::<i64>();
    json!({
        "submitted": sum(|r| r.submitted),
        "completed": sum(|r| r.completed),
        "failed": sum(|r| r.failed),
        "cancelled": sum(|r| r.cancelled),
        "creditsCharged": sum(|r| r.credits_charged),
        "creditsRefunded": sum(|r| r.credits_refunded),
        "netCredits": sum(store::UsageRow::net_credits),
    })
}

/// A JSON body as `T`, refused with a 400 naming the problem.
fn body_as<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    if !value.is_object() {
        return Err(ValidationErrors::root("Expected a JSON object").into());
    }
    serde_json::from_value(value).map_err(|e| ValidationErrors::root(format!("Invalid body: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer rga_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("rga_abc"));
        h.insert(header::AUTHORIZATION, "Basic cmdh".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer rga_x".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer rga_y".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn cursors_and_times_refuse_garbage() {
        let c = encode_page_cursor("ledger", "42");
        assert_eq!(id_cursor("ledger", Some(&c)).unwrap(), Some(42));
        assert!(id_cursor("audit", Some(&c)).is_err());
        assert!(id_cursor("ledger", Some("!!")).is_err());
        assert_eq!(parse_time("from", "1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("from", "1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert!(parse_time("from", "yesterday").is_err());
        assert!(page_limit(Some("0")).is_err() && page_limit(Some("101")).is_err());
        assert_eq!(page_limit(None).unwrap(), DEFAULT_LIMIT);
    }
}
