//! `GET /v1/files/retrieve?file_id=` and the signed download links it hands out.
//!
//! Retrieve answers MiniMax's file object (`file_id` as a JSON number, `bytes` 0 as in every real
//! sample, a primary and a backup URL) and starts rendering in the background, so the download
//! that follows usually finds the file ready. Downloads behave like an object store: 403 with an
//! XML body for a bad signature or an expired link, 404 for an unknown file, `Range` support with
//! 206/416, `Content-Type: video/mp4`.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::byte_range::ByteRange;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::api::{authenticate, ok_json, Shared};
use crate::links::LinkKind;
use crate::tasks::{Counter, Status};
use crate::wire::{self, BaseResp, FileObject, RetrieveResponse};

/// Read size of the download stream.
const CHUNK: usize = 64 * 1024;

pub async fn retrieve_file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let refuse = |base_resp| ok_json(&RetrieveResponse { file: None, base_resp });
    let key = match authenticate(&shared, &headers) {
        Ok(key) => key,
        Err(base_resp) => return refuse(base_resp),
    };
    let now = shared.clock.now_ms();
    if !shared.limiter.admit_query(&key, now, true) {
        return refuse(BaseResp::code(wire::RATE_LIMIT));
    }
    let Some(param) = params.get("file_id").filter(|p| !p.is_empty()) else {
        return refuse(BaseResp::invalid("file_id is required"));
    };
    let Ok(file_id) = param.parse::<u64>() else {
        return refuse(BaseResp::invalid("file_id must be an integer"));
    };
    let owner = shared.owner(&key);
    // A file exists once its task succeeded, and only for the key that created the task.
    let found = shared.tasks.task_of_file(file_id).and_then(|task_id| {
        shared.tasks.with_task(task_id, Some(Counter::Retrieves), |task, seen| {
            let done_at = task.done_at()?;
            (task.owner == owner && task.status_at(now) == Status::Success).then(|| {
                let faults = task.faults.as_deref();
                let scripted_error =
                    faults.and_then(|f| f.retrieve_error).filter(|&(_, n)| u32::from(seen) < n).map(|(code, _)| code);
                let expired = faults.is_some_and(|f| u32::from(seen) < f.expired_link);
                (scripted_error, expired, done_at, task.spec.clone())
            })
        })
    });
    let Some(Some((scripted_error, expired, done_at, spec))) = found else {
        return refuse(BaseResp::invalid("file not found"));
    };
    if let Some(code) = scripted_error {
        return refuse(BaseResp::code(code));
    }
    // Start the render now; the download waits for the same one.
    let videos = shared.videos.clone();
    tokio::spawn(async move {
        let _ = videos.get(&spec).await;
    });

    let now_unix = shared.clock.unix_secs(now);
    let expires = if expired || shared.chance(shared.config.faults.expired_link) {
        now_unix.saturating_sub(60)
    } else {
        now_unix + shared.config.link_ttl().as_secs()
    };
    let url = |kind| shared.signer.url(&shared.base_url, kind, file_id, expires);
    ok_json(&RetrieveResponse {
        file: Some(FileObject {
            file_id,
            bytes: 0,
            created_at: shared.clock.unix_secs(done_at),
            filename: "output.mp4",
            purpose: "video_generation",
            download_url: url(LinkKind::Primary),
            backup_download_url: url(LinkKind::Backup),
        }),
        base_resp: BaseResp::ok(),
    })
}

pub async fn download_primary(
    State(shared): State<Arc<Shared>>,
    Path(file_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    download(&shared, LinkKind::Primary, &file_id, &params, &headers).await
}

pub async fn download_backup(
    State(shared): State<Arc<Shared>>,
    Path(file_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    download(&shared, LinkKind::Backup, &file_id, &params, &headers).await
}

/// An object-store style XML error.
fn oss_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = crate::images::hex(&rand::random::<[u8; 12]>()).to_uppercase();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>{code}</Code>\n  <Message>{message}</Message>\n  \
         <RequestId>{request_id}</RequestId>\n  <HostId>sandbox.oss.reelgate.local</HostId>\n</Error>\n"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn download(
    shared: &Shared,
    kind: LinkKind,
    file_id: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    shared.limiter.downloads.fetch_add(1, Ordering::Relaxed);
    let (Some(expires), Some(signature)) = (params.get("Expires"), params.get("Signature")) else {
        return oss_error(StatusCode::FORBIDDEN, "AccessDenied", "You have no right to access this object.");
    };
    let (Ok(file_id), Ok(expires)) = (file_id.parse::<u64>(), expires.parse::<u64>()) else {
        return oss_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    };
    if !shared.signer.verify(kind, file_id, expires, signature) {
        return oss_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if shared.clock.unix_secs(shared.clock.now_ms()) > expires {
        return oss_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired.");
    }
    let found = shared.tasks.task_of_file(file_id).and_then(|task_id| {
        shared.tasks.with_task(task_id, Some(Counter::Downloads), |task, seen| {
            let truncate = task.faults.as_deref().is_some_and(|f| u32::from(seen) < f.truncated_download);
            (task.spec.clone(), truncate)
        })
    });
    let Some((spec, truncate)) = found else {
        return oss_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    let truncate = truncate || shared.chance(shared.config.faults.truncated_download);
    let video = match shared.videos.get(&spec).await {
        Ok(v) => v,
        Err(_) => return oss_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "Render failed."),
    };
    let total = video.len;
    let (status, start, len) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, total),
        Some(range) => match domain::byte_range::parse(range, total) {
            ByteRange::Whole => (StatusCode::OK, 0, total),
            ByteRange::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            ByteRange::Unsatisfiable => {
                return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{total}"))], ())
                    .into_response();
            }
        },
    };
    let mut file = match tokio::fs::File::open(&video.path).await {
        Ok(f) => f,
        Err(_) => return oss_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "File lost."),
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return oss_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "Seek failed.");
    }
    // A truncated download sends half the announced bytes, then fails the body: hyper drops the
    // connection, which is what a client sees when a CDN transfer breaks.
    let send = if truncate { len / 2 } else { len };
    let body = Body::from_stream(file_stream(file, send, truncate));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{total}", start + len - 1);
        h.insert(header::CONTENT_RANGE, header::HeaderValue::from_str(&value).expect("digits and dashes are valid"));
    }
    response
}

/// Streams `len` bytes from the file's current position, then optionally an error.
fn file_stream(
    file: tokio::fs::File,
    len: u64,
    fail_at_end: bool,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold((file, len, fail_at_end), |(mut file, left, fail)| async move {
        if left == 0 {
            return fail.then(|| {
                let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "scripted truncated download");
                (Err(err), (file, 0, false))
            });
        }
        let mut buf = vec![0; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64, fail)))
            }
            Err(e) => Some((Err(e), (file, 0, false))),
        }
    })
}
