//! Uploads: `POST /v2/uploads` takes one image as `multipart/form-data` and keeps it in
//! the result store for `uploads.ttl_secs`; `GET /v2/uploads/{id}/{token}.{ext}` serves
//! it back, with Range, to anyone holding the URL (its token is an HMAC of the id, as
//! for result URLs), until it expires.
//!
//! Only what Hailuo can use is accepted: JPEG, PNG or WebP by content (the declared
//! type is ignored), passing MiniMax's image rules, so a bad image is refused here
//! instead of failing a paid job later. The body is streamed: the head of the file
//! (at most [`HEAD_BYTES`]) is held to sniff and probe it, then everything goes to
//! storage as it arrives. A refused or abandoned upload leaves nothing stored.
//!
//! Bodies are bounded three ways: `limits.max_upload_bytes` for the whole multipart
//! body (413), `uploads.body_deadline_ms` for its arrival (408), and the server's
//! read timeout for a body that stops.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use domain::UploadId;
use serde_json::json;
use sha2::{Digest, Sha256};
use store::{UploadOutcome, UploadRecord};

use crate::api::error::{ApiError, Result};
use crate::api::extract::{Caller, Path};
use crate::api::results::serve_stored;
use crate::engine::inputs;
use crate::ratelimit::RateClass;
use crate::results::{Object, ResultWriter};
use crate::signing::Purpose;
use crate::state::AppState;

/// How much of the file's start is held to decide its type and size. Every header a
/// probe needs (a JPEG's frame header comes after its EXIF block, at most 64 KiB, and
/// any other APPn segments) lies well within it.
pub const HEAD_BYTES: usize = 256 * 1024;
/// MiniMax's limit on an input image (it must be smaller).
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;
/// What to tell a client whose file is not an image Hailuo takes.
const IMAGES_ONLY: &str = "Hailuo takes JPEG, PNG or WebP images";

pub(crate) fn router() -> Router<AppState> {
    // An upload is a write that stores up to 25 MB, made once per image of a generate:
    // it draws from the generate bucket, not the read one.
    Router::new()
        .route("/v2/uploads", post(create_upload).layer(Extension(RateClass::Generate)))
        .route("/v2/uploads/{id}/{file}", get(get_upload))
}

/// A refusal of the file itself: 400 with `details.file`.
fn bad_file(message: impl Into<String>) -> ApiError {
    ApiError::invalid("file", message)
}

async fn create_upload(
    State(state): State<AppState>,
    Caller(key): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    if !state.readiness.is_ready() {
        return Err(ApiError::Unavailable("the database is unreachable".into()));
    }
    let idempotency_key = crate::api::extract::idempotency_key(&headers)?;
    let limit = state.config.limits.max_upload_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::BadRequest("Expected a multipart/form-data body with a `file` part".into()))?;

    let id = UploadId::new();
    let deadline = Duration::from_millis(state.config.uploads.body_deadline_ms);
    let received = tokio::time::timeout(deadline, receive(&state, id, body, &boundary, limit)).await;
    let file = match received {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => {
            discard(&state, id).await;
            return Err(e);
        }
        Err(_) => {
            discard(&state, id).await;
            return Err(ApiError::RequestTimeout);
        }
    };

    let now = crate::now_ms();
    let ttl_ms = i64::try_from(state.config.uploads.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let record = UploadRecord {
        id,
        account_id: key.account_id,
        content_type: file.mime.to_owned(),
        byte_size: file.len as i64,
        sha256: file.sha256.clone(),
        idempotency_key,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
    };
    let outcome = match state.store.create_upload(record).await {
        Ok(outcome) => outcome,
        Err(e) => {
            discard(&state, id).await;
            return Err(e.into());
        }
    };
    match outcome {
        UploadOutcome::Created(upload) => Ok(created(&state, &upload, false)),
        UploadOutcome::Existing(upload) => {
            // A retry: the bytes just stored are a copy (or another file); either way
            // only the first upload is kept.
            discard(&state, id).await;
            if upload.sha256 == file.sha256 {
                Ok(created(&state, &upload, true))
            } else {
                Err(ApiError::Conflict("Idempotency-Key was already used to upload a different file".into()))
            }
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// Deletes what an upload that will not be recorded left in storage.
async fn discard(state: &AppState, id: UploadId) {
    if let Err(e) = state.results.delete_object(Object::Upload(id)).await {
        tracing::warn!(upload.id = %id, error = %e, "could not delete a refused upload's bytes; the file stays");
    }
}

fn created(state: &AppState, upload: &UploadRecord, replayed: bool) -> Response {
    let body = json!({
        "id": upload.id.to_string(),
        "url": state.links.upload_url(upload.id, &upload.content_type),
        "kind": "image",
        "contentType": upload.content_type,
        "byteSize": upload.byte_size,
        "expiresAt": crate::api::dto::timestamp(upload.expires_at_ms),
    });
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The stored file of an upload.
struct Received {
    mime: &'static str,
    len: u64,
    sha256: Vec<u8>,
}

/// Reads the multipart body: exactly one `file` part, stored as upload `id`; any other
/// parts are read past. On an error the caller deletes what was stored.
async fn receive(state: &AppState, id: UploadId, body: Body, boundary: &str, limit: u64) -> Result<Received> {
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let stream = body.into_data_stream();
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut file = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, limit))? {
        if field.name() != Some("file") {
            while field.chunk().await.map_err(|e| multipart_error(e, limit))?.is_some() {}
            continue;
        }
        if file.is_some() {
            return Err(bad_file("Send exactly one file"));
        }
        file = Some(store_file(state, id, &mut field, limit).await?);
    }
    file.ok_or_else(|| bad_file("A `file` part is required"))
}

/// Sniffs and probes the head of the part, then streams the part into storage.
async fn store_file(state: &AppState, id: UploadId, field: &mut multer::Field<'_>, limit: u64) -> Result<Received> {
    let mut head = Vec::new();
    let mut rest = None;
    while head.len() < HEAD_BYTES {
        match field.chunk().await.map_err(|e| multipart_error(e, limit))? {
            Some(chunk) => {
                let take = chunk.len().min(HEAD_BYTES - head.len());
                head.extend_from_slice(&chunk[..take]);
                if take < chunk.len() {
                    rest = Some(chunk.slice(take..));
                }
            }
            None => break,
        }
    }
    let mime = check_head(&head)?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut writer: Box<dyn ResultWriter> = state
        .results
        .begin_object(Object::Upload(id))
        .await
        .map_err(|e| ApiError::Internal(format!("storing upload {id}: {e}")))?;
    // The head, then what was read past it, then the rest as it arrives.
    for chunk in std::iter::once(bytes::Bytes::from(head)).chain(rest) {
        write(&mut *writer, &mut hasher, &mut len, chunk, id).await?;
    }
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        write(&mut *writer, &mut hasher, &mut len, chunk, id).await?;
    }
    writer.finish().await.map_err(|e| ApiError::Internal(format!("storing upload {id}: {e}")))?;
    Ok(Received { mime, len, sha256: hasher.finalize().to_vec() })
}

async fn write(
    writer: &mut dyn ResultWriter,
    hasher: &mut Sha256,
    len: &mut u64,
    chunk: bytes::Bytes,
    id: UploadId,
) -> Result<()> {
    *len += chunk.len() as u64;
    if *len >= MAX_IMAGE_BYTES {
        return Err(bad_file(format!("The image must be smaller than {MAX_IMAGE_BYTES} bytes (MiniMax's limit)")));
    }
    hasher.update(&chunk);
    writer.write(&chunk).await.map_err(|e| ApiError::Internal(format!("storing upload {id}: {e}")))
}

/// The MIME type of a file starting with `head`, or why it is refused.
fn check_head(head: &[u8]) -> Result<&'static str> {
    if head.is_empty() {
        return Err(bad_file("The file is empty"));
    }
    if let Some(kind) = infer::get(head) {
        let refused = match kind.matcher_type() {
            infer::MatcherType::Video => Some("a video"),
            infer::MatcherType::Audio => Some("audio"),
            infer::MatcherType::Image if kind.mime_type() == "image/gif" => Some("a GIF"),
            _ => None,
        };
        if let Some(what) = refused {
            return Err(bad_file(format!("The file is {what} ({}); {IMAGES_ONLY}", kind.mime_type())));
        }
    }
    inputs::check(head).map_err(|problem| {
        if problem.starts_with("not a usable") {
            bad_file(format!("The file is not a usable image; {IMAGES_ONLY}"))
        } else {
            bad_file(format!("{}{}", problem[..1].to_uppercase(), &problem[1..]))
        }
    })
}

/// Maps a multipart failure: over the limit is 413, a body timeout 408, the rest 400.
fn multipart_error(e: multer::Error, limit: u64) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => too_large(limit),
        multer::Error::StreamReadFailed(source) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(err) = cause {
                if err.is::<tower_http::timeout::TimeoutError>() {
                    return ApiError::RequestTimeout;
                }
                cause = err.source();
            }
            ApiError::BadRequest(format!("Could not read the request body: {source}"))
        }
        e => ApiError::BadRequest(format!("Malformed multipart/form-data body: {e}")),
    }
}

async fn get_upload(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || ApiError::NotFound("This upload has expired or does not exist".into());
    let token = file.split_once('.').map_or(file.as_str(), |(token, _)| token);
    let upload_id: UploadId = id.parse().map_err(|_| not_found())?;
    if !state.signer.verify(Purpose::Upload, &id, token) {
        return Err(not_found());
    }
    let upload = state.store.get_upload(upload_id).await?.ok_or_else(not_found)?;
    if upload.expires_at_ms <= crate::now_ms() {
        return Err(not_found());
    }
    let stored = state
        .results
        .open_object(Object::Upload(upload_id))
        .await
        .map_err(|e| ApiError::Internal(format!("opening upload {upload_id}: {e}")))?
        .ok_or_else(not_found)?;
    // Cached no longer than the upload lives.
    serve_stored(stored, &headers, &upload.content_type, "private, max-age=600", "upload").await
}

/// For each image field of a generate that names one of this server's upload URLs:
/// checks the upload is live and the caller's, and copies it for job `job`, before
/// anything is charged. Returns the copies made (the caller deletes them if the job is
/// not accepted). An unknown, foreign or expired upload is a 400 naming the field.
///
/// Copying at acceptance rather than pinning the upload until the job reaches MiniMax:
/// a job may wait in its queue for longer than any upload lives, and a copy ties the
/// job to nothing the reaper or the acceptor has to know about. On S3 the copy is made
/// by the bucket; on a file system it is one local file copy of at most 20 MB.
pub(crate) async fn take_job_inputs(
    state: &AppState,
    account: domain::AccountId,
    request: &domain::GenerateRequest,
    job: domain::JobId,
) -> Result<Vec<Object>> {
    let mut copies = Vec::new();
    let fields = [("image", &request.image), ("end_image", &request.end_image)];
    for (field, image) in fields {
        let Some(domain::ImageRef::Url(url)) = image else { continue };
        let Some(named) = state.links.upload_in(url) else { continue };
        let path = format!("hailuoParams.{field}");
        let unknown = || ApiError::invalid(&path, "No such upload, or it has expired: upload the file again");
        let live = match named {
            Some(id) => state
                .store
                .get_upload(id)
                .await?
                .filter(|u| u.account_id == account && u.expires_at_ms > crate::now_ms()),
            None => None,
        };
        let copied = match live {
            Some(upload) => {
                let to = Object::JobInput(job, field);
                state
                    .results
                    .copy_object(Object::Upload(upload.id), to)
                    .await
                    .map_err(|e| ApiError::Internal(format!("copying upload {} for job {job}: {e}", upload.id)))
                    .map(|found| found.then_some(to))
            }
            None => Ok(None),
        };
        match copied {
            Ok(Some(to)) => copies.push(to),
            Ok(None) | Err(_) => {
                discard_job_inputs(state, &copies).await;
                return Err(copied.err().unwrap_or_else(unknown));
            }
        }
    }
    Ok(copies)
}

/// Deletes a job's copies of its uploads (the job was not accepted, or no longer needs
/// them).
pub(crate) async fn discard_job_inputs(state: &AppState, copies: &[Object]) {
    for copy in copies {
        if let Err(e) = state.results.delete_object(*copy).await {
            tracing::warn!(error = %e, object = ?copy, "could not delete a job's copy of an upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(e: ApiError) -> String {
        match e {
            ApiError::Validation { details, .. } => format!("{details:?}"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn the_head_decides_the_type_and_minimaxs_rules_apply() {
        assert_eq!(check_head(&png(640, 360)).unwrap(), "image/png");
        // Only the head is looked at: a file cut after its headers still probes.
        let big = png(2000, 1500);
        assert_eq!(check_head(&big[..big.len().min(HEAD_BYTES)]).unwrap(), "image/png");
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty"),
            (b"GIF89a\x01\x00\x01\x00\x80\x00\x00", "a GIF (image/gif)"),
            (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "a video"),
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio"),
            (b"plain text, not an image", "not a usable image"),
            (&png(200, 400), "short side"),
        ];
        for (bytes, expected) in cases {
            let problem = details(check_head(bytes).unwrap_err());
            assert!(problem.contains(expected), "{expected}: {problem}");
        }
    }
}
