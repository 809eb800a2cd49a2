//! Extractors: the authenticated [`Caller`] and the size-limited [`JsonBody`].
//!
//! Authentication lives in an extractor so a handler cannot forget it: a handler that
//! takes a `Caller` only runs for an active key.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use domain::json::ValueCounter;
use domain::keys::looks_like_key;
use domain::{ApiKeyStatus, KeyDigest, ValidationErrors};
use http_body_util::BodyExt;
use serde_json::Value;
use store::ApiKeyRecord;

use crate::api::error::ApiError;
use crate::state::AppState;

/// Largest buffer reserved from a declared Content-Length before the bytes arrive.
const PRESIZE_MAX: usize = 64 * 1024;

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
        let declared =
            req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let mut body = Body::new(req.into_body());
        // Reserved up front only up to an ordinary body's size: larger ones grow as they
        // arrive, so a body refused early never costs the size it declared.
        let mut bytes: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(PRESIZE_MAX));
        let mut read = 0usize;
        let mut counter = ValueCounter::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BadRequest(format!("Could not read the request body: {e}")))?;
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
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ValidationErrors::root("Request body is empty; expected a JSON object").into());
        }
        // Within a budget of values: a parsed body must not dwarf the bytes it came from.
        let value: Value = domain::json::parse_bounded(&bytes)?;
        Ok(JsonBody(value))
    }
}
