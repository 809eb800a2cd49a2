//! Extractors: the authenticated [`Caller`] and the size-limited [`JsonBody`].
//!
//! Authentication lives in an extractor so a handler cannot forget it: a handler that
//! takes a `Caller` only runs for an active key.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use domain::keys::looks_like_key;
use domain::{ApiKeyStatus, KeyDigest, ValidationErrors};
use serde_json::Value;
use store::ApiKeyRecord;

use crate::api::error::ApiError;
use crate::state::AppState;

/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key (and through it the account) making the request.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<ApiKeyRecord>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(API_KEY_HEADER) else {
            return Err(ApiError::MissingKey);
        };
        if raw.is_empty() {
            return Err(ApiError::MissingKey);
        }
        let presented = raw.to_str().map_err(|_| ApiError::InvalidKey)?.trim();
        if !looks_like_key(presented) {
            return Err(ApiError::InvalidKey);
        }
        let key = state.keys.lookup(&KeyDigest::of(presented)).await?;
        match key {
            Some(k) if k.status == ApiKeyStatus::Active => Ok(Caller(k)),
            Some(k) if k.status == ApiKeyStatus::Disabled => Err(ApiError::InactiveKey),
            _ => Err(ApiError::InvalidKey),
        }
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
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.limits.max_body_bytes;
        let declared =
            req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        // The body timeout ends a body that stops; this ends one that trickles.
        let deadline = std::time::Duration::from_millis(state.config.server.body_deadline_ms);
        let read = tokio::time::timeout(deadline, axum::body::to_bytes(Body::new(req.into_body()), limit));
        let bytes = read.await.map_err(|_| ApiError::RequestTimeout)?.map_err(|e| {
            // to_bytes wraps http-body-util's LengthLimitError somewhere in the source chain.
            if source_is::<http_body_util::LengthLimitError>(&e) {
                ApiError::PayloadTooLarge(limit)
            } else if source_is::<tower_http::timeout::TimeoutError>(&e) {
                ApiError::RequestTimeout
            } else {
                ApiError::BadRequest(format!("Could not read the request body: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ValidationErrors::root("Request body is empty; expected a JSON object").into());
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::from(ValidationErrors::root(format!("Invalid JSON: {e}"))))?;
        Ok(JsonBody(value))
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
