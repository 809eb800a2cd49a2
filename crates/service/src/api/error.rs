//! The API's error type and its single mapping to HTTP.
//!
//! Policy: every layer has its own error enum (`ValidationErrors` in the domain,
//! `StoreError` in storage); handlers convert them into [`ApiError`] with `?`, and only
//! `ApiError` knows HTTP. One `match` below picks every status and body, always in
//! Apiframe's envelope: `{"error": "..."}`, plus `details` for validation and the credit
//! numbers for 402. On a 5xx the client gets a generic message while the full cause
//! travels in an [`ErrorCause`] response extension to the request-id middleware, which
//! logs it once together with the request id. Axum's extractor rejections are converted
//! here too (through the [`Path`](crate::api::extract::Path) and
//! [`Query`](crate::api::extract::Query) wrappers), so no answer is ever plain text.
//!
//! A refusal costs little whatever the request: validation details are bounded where
//! they are collected (`ValidationErrors` lists at most 50 problems, about 8 KiB, and
//! quotes client text shortened), and the message is cut at [`MAX_MESSAGE_CHARS`], so
//! an error body stays well under 16 KiB.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::ValidationErrors;
use serde_json::json;
use store::StoreError;

/// Longest `error` message written, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// The hidden cause of a 5xx, handed to the logging middleware.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// Shorthand for handler results.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or query failed validation: 400 with per-path details.
    #[error("{message}")]
    Validation {
        /// Summary.
        message: String,
        /// Problems by JSON path (or parameter name).
        details: ValidationErrors,
    },
    /// A malformed path or header: 400 without details.
    #[error("{0}")]
    BadRequest(String),
    /// No X-API-Key header.
    #[error("API key is required")]
    MissingKey,
    /// More than one X-API-Key header: which one to honour would be a guess.
    #[error("Ambiguous credentials: send exactly one X-API-Key header")]
    AmbiguousKey,
    /// Unknown or revoked key.
    #[error("Invalid API key")]
    InvalidKey,
    /// Disabled key.
    #[error("API key is inactive")]
    InactiveKey,
    /// An event-stream token that is malformed, forged or expired.
    #[error("Invalid or expired event token: get a new one from POST /v2/jobs/events/token")]
    InvalidToken,
    /// The admin API without a valid admin token (a customer's key included).
    #[error("Invalid or missing admin token")]
    InvalidAdminToken,
    /// An operator's deduction larger than the balance: 409 with the balance.
    #[error("Deducting {requested} credits would take the balance of {available} below zero")]
    DeductionTooLarge {
        /// Credits asked to deduct.
        requested: i64,
        /// The balance.
        available: i64,
    },
    /// Missing, or owned by another account.
    #[error("{0}")]
    NotFound(String),
    /// Wrong method on a known path.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// State conflict (idempotency key reused with another body).
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit.
    #[error("Request body too large: the limit is {0} bytes")]
    PayloadTooLarge(usize),
    /// The body stopped arriving for longer than `server.body_read_timeout_ms`.
    #[error("Request body timed out: no data arrived for too long")]
    RequestTimeout,
    /// Balance below the job's cost.
    #[error("Insufficient credits")]
    InsufficientCredits {
        /// Cost.
        required: i64,
        /// Balance.
        available: i64,
    },
    /// The key's request rate is over its limit: 429 with `Retry-After`.
    #[error("Too many requests: retry after {retry_after_secs} s")]
    TooManyRequests {
        /// Whole seconds until a request would be allowed (at least 1).
        retry_after_secs: u64,
    },
    /// A Range header outside the file.
    #[error("Requested range not satisfiable")]
    RangeNotSatisfiable,
    /// The store is unavailable; retry later.
    #[error("Service temporarily unavailable, retry shortly")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    /// A 400 with details for the given path.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        let mut details = ValidationErrors::default();
        details.add(path, message);
        Self::Validation { message: "Invalid request".into(), details }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(details: ValidationErrors) -> Self {
        Self::Validation { message: "Invalid request body".into(), details }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("Not found: {what}")),
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::Unavailable(why) => Self::Unavailable(why),
            StoreError::Internal(why) => Self::Internal(why),
        }
    }
}

/// Axum's own extractor rejections (a path segment that is not UTF-8, a query string
/// that does not deserialize) would answer in plain text; they come here instead, so
/// the client sees the same envelope as for every other error. Axum already tells the
/// client's mistakes (4xx) from ours (5xx, a route and extractor that do not match).
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    if status.is_server_error() {
        ApiError::Internal(text)
    } else {
        ApiError::BadRequest(text)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.to_string();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        let (status, body) = match &self {
            Self::Validation { details, .. } => {
                (StatusCode::BAD_REQUEST, json!({"error": message, "details": details.details()}))
            }
            Self::BadRequest(_) | Self::AmbiguousKey => (StatusCode::BAD_REQUEST, json!({"error": message})),
            Self::MissingKey | Self::InvalidKey | Self::InvalidToken => {
                (StatusCode::UNAUTHORIZED, json!({"error": message}))
            }
            Self::InactiveKey => (StatusCode::FORBIDDEN, json!({"error": message})),
            Self::InvalidAdminToken => (StatusCode::UNAUTHORIZED, json!({"error": message})),
            Self::DeductionTooLarge { available, .. } => {
                (StatusCode::CONFLICT, json!({"error": message, "creditsAvailable": available}))
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, json!({"error": message})),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, json!({"error": message})),
            Self::Conflict(_) => (StatusCode::CONFLICT, json!({"error": message})),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, json!({"error": message})),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, json!({"error": message})),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, json!({"error": message})),
            Self::RangeNotSatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, json!({"error": message})),
            Self::InsufficientCredits { required, available } => (
                StatusCode::PAYMENT_REQUIRED,
                json!({"error": message, "creditsRequired": required, "creditsAvailable": available}),
            ),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": message})),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": message})),
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::InvalidAdminToken = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::TooManyRequests { retry_after_secs } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let Self::Unavailable(cause) | Self::Internal(cause) = self {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
