//! Where finished videos live once reelgate has copied them from MiniMax, and the
//! files clients upload with `POST /v2/uploads`, behind the [`ResultStore`] trait: on
//! the local file system ([`fs::FsResults`]) or in an S3-compatible bucket
//! ([`s3::S3Results`]). Which one runs is `results.backend`. Each stored thing is an
//! [`Object`]: a job's result or an upload, named apart so neither can shadow the other.
//!
//! Videos stream in and out in chunks: a result is never held in memory whole. Reading
//! is "open, then read one byte range": an object store cannot seek inside a response
//! the way a file can, but it can start a response at any offset, and the HTTP Range
//! requests players send need nothing more.
//!
//! This module decides nothing about HTTP (that is `api/results.rs`) nor about which
//! URL a client is given (that is the engine's `result_url` and [`presigned_video_url`]).

pub mod fs;
pub mod s3;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{JobId, UploadId};
use futures_util::stream::BoxStream;
use serde_json::Value;

/// The bytes of a result, in chunks, as they arrive from storage.
pub type ResultStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A result being written. Dropping it without [`finish`](ResultWriter::finish) leaves
/// nothing behind.
#[async_trait]
pub trait ResultWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    /// Makes the result durable and visible under its job id; returns its size.
    async fn finish(self: Box<Self>) -> std::io::Result<u64>;
}

/// The reading half of an opened result, implemented by each backend.
#[async_trait]
pub trait ResultBody: Send {
    /// Streams the bytes in `range`, which [`StoredResult::read`] has checked lies
    /// within the result and is not empty.
    async fn read(self: Box<Self>, range: Range<u64>) -> std::io::Result<ResultStream>;
}

/// An opened result: its size, known before any byte is sent (for `Content-Length` and
/// for answering 416), and one read of any part of it.
///
/// Opening pins the version that was measured (the file handle, or the object's ETag),
/// so a result replaced or deleted between the two steps is never served with the old
/// length: the read then fails instead.
pub struct StoredResult {
    /// Size in bytes.
    pub len: u64,
    body: Box<dyn ResultBody>,
}

impl StoredResult {
    /// An opened result of `len` bytes read through `body`.
    pub fn new(len: u64, body: Box<dyn ResultBody>) -> Self {
        Self { len, body }
    }

    /// Streams the bytes in `range` (end exclusive). A range reaching past the end is
    /// an `InvalidInput` error; a result gone since it was opened is `NotFound`.
    pub async fn read(self, range: Range<u64>) -> std::io::Result<ResultStream> {
        if range.start > range.end || range.end > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("range {range:?} outside a result of {} bytes", self.len),
            ));
        }
        if range.is_empty() {
            // Object stores refuse an empty range, and there is nothing to fetch anyway.
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        self.body.read(range).await
    }
}

/// Something kept in the result store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// A job's result video.
    Result(JobId),
    /// A file a client uploaded.
    Upload(UploadId),
    /// A job's own copy of an upload it names as input `field` (`image`, `end_image`),
    /// made when the job is accepted, so the job does not depend on the upload's life.
    JobInput(JobId, &'static str),
}

/// Storage for result videos and uploads.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Starts writing `object`, replacing any earlier one once finished.
    async fn begin_object(&self, object: Object) -> std::io::Result<Box<dyn ResultWriter>>;
    /// Opens `object`, if it exists.
    async fn open_object(&self, object: Object) -> std::io::Result<Option<StoredResult>>;
    /// Deletes `object`; deleting a missing one is not an error.
    async fn delete_object(&self, object: Object) -> std::io::Result<()>;
    /// Copies `from` to `to` inside the store (no bytes pass through reelgate on S3);
    /// false when `from` does not exist.
    async fn copy_object(&self, from: Object, to: Object) -> std::io::Result<bool>;
    /// Starts writing the result of `job`, replacing any earlier one once finished.
    async fn begin(&self, job: JobId) -> std::io::Result<Box<dyn ResultWriter>> {
        self.begin_object(Object::Result(job)).await
    }
    /// Opens the result of `job`, if there is one.
    async fn open(&self, job: JobId) -> std::io::Result<Option<StoredResult>> {
        self.open_object(Object::Result(job)).await
    }
    /// Deletes the result of `job`; deleting a missing result is not an error.
    async fn delete(&self, job: JobId) -> std::io::Result<()> {
        self.delete_object(Object::Result(job)).await
    }
    /// A URL that fetches the result of `job` straight from storage, made now, when
    /// this store is configured to hand such URLs out; `None` means clients get
    /// reelgate's own result URL.
    async fn presigned_url(&self, _job: JobId) -> std::io::Result<Option<String>> {
        Ok(None)
    }
}

/// The result object to show a client for `job` in place of `stored`, when results are
/// handed out as presigned URLs: `stored` with a `videoUrl` signed now. `None` means
/// show `stored` as it is.
///
/// The stored object always holds reelgate's own URL, which never expires. Presigned
/// URLs do expire (7 days at most on S3), so they are made on every read and never
/// written down. If signing fails the client still gets the stored URL, which works.
pub async fn presigned_video_url(results: &dyn ResultStore, job: JobId, stored: &Value) -> Option<Value> {
    stored.get("videoUrl")?;
    match results.presigned_url(job).await {
        Ok(Some(url)) => {
            let mut fresh = stored.clone();
            fresh["videoUrl"] = Value::String(url);
            Some(fresh)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(job.id = %job, error = %e, "could not presign the result URL; handing out reelgate's own");
            None
        }
    }
}
