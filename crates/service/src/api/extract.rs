//! Extractors: the authenticated and rate-limited [`Caller`], the size-limited
//! [`JsonBody`], and [`Path`] and [`Query`], axum's own with their rejections in our
//! envelope; and the checked `Idempotency-Key` header, which generates and uploads share.
//!
//! Authentication lives in an extractor so a handler cannot forget it: a handler that
//! takes a `Caller` only runs for an active key within its request rate. Handlers use
//! the [`Path`] and [`Query`] of this module, never axum's, whose rejections are plain
//! text.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use domain::json::ValueCounter;
use domain::keys::looks_like_key;
use domain::{ApiKeyStatus, KeyDigest, ValidationErrors};
use http_body_util::BodyExt;
use serde_json::Value;
use store::ApiKeyRecord;

use crate::api::error::ApiError;
use crate::ratelimit::RateClass;
use crate::state::AppState;

/// Largest buffer reserved from a declared Content-Length before the bytes arrive.
const PRESIZE_MAX: usize = 64 * 1024;

/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key (and through it the account) making the request.
///
/// Extracting it also takes a token from the key's rate bucket: the [`RateClass`] the
/// route was given as a request extension (see `videos::router`), or
/// [`RateClass::Read`] when it was given none. This happens before the body is read
/// (extractors that read it run last), so a refused request has charged nothing.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<ApiKeyRecord>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = authenticate(parts, state).await?;
        let class = parts.extensions.get::<RateClass>().copied().unwrap_or(RateClass::Read);
        state
            .rate_limits
            .check(class, key.id)
            .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
        Ok(Caller(key))
    }
}

/// The active key the request presents.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Arc<ApiKeyRecord>, ApiError> {
    let mut presented_keys = parts.headers.get_all(API_KEY_HEADER).iter();
    let Some(raw) = presented_keys.next() else {
        return Err(ApiError::MissingKey);
    };
    // Proxies and frameworks disagree on which of two headers counts; honouring
    // either would be a guess about who is calling.
    if presented_keys.next().is_some() {
        return Err(ApiError::AmbiguousKey);
    }
    if raw.is_empty() {
        return Err(ApiError::MissingKey);
    }
    let presented = raw.to_str().map_err(|_| ApiError::InvalidKey)?.trim();
    if !looks_like_key(presented) {
        return Err(ApiError::InvalidKey);
    }
    let key = state.keys.lookup(&KeyDigest::of(presented)).await?;
    match key {
        // A disabled account's keys are switched off with it; a revoked key stays unknown.
        Some(k) if k.status == ApiKeyStatus::Active && !k.account_disabled => Ok(k),
        Some(k) if k.status != ApiKeyStatus::Revoked => Err(ApiError::InactiveKey),
        _ => Err(ApiError::InvalidKey),
    }
}

/// Axum's `Path`, refused in our envelope (a segment that is not UTF-8 is a 400).
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// Axum's `Query`, refused in our envelope.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// The value of query parameter `name`; when it is repeated, the last one wins.
pub fn query_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A request body parsed as JSON, refused with our envelope when too large or malformed.
///
/// Axum's `Json` answers 415/422 in its own format; Apiframe clients expect 400 with
/// `details` (or 413), so the body is read and parsed here. The content type is not
/// required to be JSON: what matters is whether the bytes are.
///
/// The body is copied into one buffer as it arrives. When it surely holds more JSON
/// values than `domain::json` allows, the rest is still read, to keep the connection
/// usable, but no longer kept: a hostile megabyte costs a few kilobytes of memory, not
/// a megabyte per concurrent request.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.limits.max_body_bytes;
        let declared = declared_length(req.headers());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        // The server's body timeout ends a body that stops; the deadline ends one that
        // trickles.
        let deadline = std::time::Duration::from_millis(state.config.server.body_deadline_ms);
        let read = read_within_budget(Body::new(req.into_body()), declared, limit);
        let bytes = tokio::time::timeout(deadline, read).await.map_err(|_| ApiError::RequestTimeout)??;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ValidationErrors::root("Request body is empty; expected a JSON object").into());
        }
        // Within a budget of values: a parsed body must not dwarf the bytes it came from.
        let value: Value = domain::json::parse_bounded(&bytes)?;
        Ok(JsonBody(value))
    }
}

/// Reads a JSON body of at most `limit` bytes, keeping it only while it stays within the
/// JSON value budget: past it the rest is read through and dropped, and the answer is
/// the budget's 400.
async fn read_within_budget(mut body: Body, declared: Option<u64>, limit: usize) -> Result<Vec<u8>, ApiError> {
    // Reserved up front only up to an ordinary body's size: larger ones grow as they
    // arrive, so a body refused early never costs the size it declared.
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(PRESIZE_MAX));
    let mut read = 0usize;
    let mut counter = ValueCounter::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(body_error)?;
        let Ok(chunk) = frame.into_data() else { continue };
        read += chunk.len();
        if read > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        if counter.over_budget() {
            continue;
        }
        counter.feed(&chunk);
        if counter.over_budget() {
            bytes = Vec::new();
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if counter.over_budget() {
        return Err(domain::json::too_many_values().into());
    }
    Ok(bytes)
}

/// The `Content-Length` a request declares, if it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

/// Reads a whole request body of at most `limit` bytes within `deadline`; a larger one
/// (declared or sent) is [`ApiError::PayloadTooLarge`], so it is refused in our envelope
/// rather than by axum's plain-text 413, and a slower one [`ApiError::RequestTimeout`].
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit));
    read.await.map_err(|_| ApiError::RequestTimeout)?.map_err(|e| {
        // to_bytes wraps http-body-util's LengthLimitError somewhere in the source chain.
        if source_is::<http_body_util::LengthLimitError>(&e) {
            ApiError::PayloadTooLarge(limit)
        } else {
            body_error(e)
        }
    })
}

/// A body that could not be read: the server's body timeout (408), or a client gone or
/// misbehaving (400).
fn body_error(e: axum::Error) -> ApiError {
    if source_is::<tower_http::timeout::TimeoutError>(&e) {
        ApiError::RequestTimeout
    } else {
        ApiError::BadRequest(format!("Could not read the request body: {e}"))
    }
}

/// Whether `E` is somewhere in the error's source chain (axum wraps body errors).
fn source_is<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<E>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Longest `Idempotency-Key` accepted (the spec's maxLength).
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The request's `Idempotency-Key`, checked against the spec's limits.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let path = "Idempotency-Key";
    let value = raw.to_str().map_err(|_| ApiError::invalid(path, "Must be printable ASCII"))?;
    if value.is_empty() {
        return Err(ApiError::invalid(path, "Must not be empty"));
    }
    if value.len() > IDEMPOTENCY_KEY_MAX {
        return Err(ApiError::invalid(path, format!("Must be at most {IDEMPOTENCY_KEY_MAX} characters")));
    }
    Ok(Some(value.to_string()))
}
