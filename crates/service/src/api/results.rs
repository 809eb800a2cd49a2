//! Result videos: `GET /v2/results/{job_id}/{token}.mp4`, the `videoUrl` of a completed
//! job, streamed from the result store with HTTP Range support so browsers and players
//! can seek. The token (see `signing`) makes the URL a capability: players cannot send
//! an API key, and a URL opens only its own job's video.
//!
//! Every backend answers the same way (status, `Content-Length`, `Content-Range`):
//! the store only measures the result and streams the one byte range chosen here.
//! With S3 in `presigned` mode this route still works; clients are simply shown the
//! bucket's URL instead.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use domain::byte_range::{self, ByteRange};
use domain::JobId;

use crate::api::error::{ApiError, Result};
use crate::api::extract::Path;
use crate::results::StoredResult;
use crate::signing::Purpose;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v2/results/{job_id}/{file}", get(get_result))
}

async fn get_result(
    State(state): State<AppState>,
    Path((job_id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || ApiError::NotFound("No such result".into());
    let token = file.strip_suffix(".mp4").ok_or_else(not_found)?;
    let id: JobId = job_id.parse().map_err(|_| not_found())?;
    if !state.signer.verify(Purpose::Result, &job_id, token) {
        return Err(not_found());
    }
    let stored = state
        .results
        .open(id)
        .await
        .map_err(|e| ApiError::Internal(format!("opening result {id}: {e}")))?
        .ok_or_else(|| ApiError::NotFound("This result has expired or does not exist".into()))?;
    serve_stored(stored, &headers, "video/mp4", "private, max-age=86400", "result").await
}

/// Answers a GET of `stored` (a result or an upload), honouring one byte range: the
/// same status, `Content-Length` and `Content-Range` for every backend. `what` names it
/// in messages.
pub(crate) async fn serve_stored(
    stored: StoredResult,
    headers: &HeaderMap,
    content_type: &str,
    cache_control: &'static str,
    what: &str,
) -> Result<Response> {
    let len = stored.len;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| byte_range::parse(v, len));
    let (status, start, count) = match range {
        Some(ByteRange::Part(start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(ByteRange::Unsatisfiable) => {
            let mut response = ApiError::RangeNotSatisfiable.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII"));
            return Ok(response);
        }
        // No Range, or one we do not serve (several ranges, bad syntax): the whole file,
        // which RFC 9110 allows.
        Some(ByteRange::Whole) | None => (StatusCode::OK, 0, len),
    };
    let stream = match stored.read(start..start + count).await {
        Ok(stream) => stream,
        // Deleted (by the reaper) between opening and reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("This {what} has expired or does not exist")))
        }
        Err(e) => return Err(ApiError::Internal(format!("reading a {what}: {e}"))),
    };
    let body = Body::from_stream(stream);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).map_err(|_| ApiError::Internal(format!("bad type {content_type}")))?,
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", start + count - 1);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ASCII"));
    }
    Ok(response)
}
