//! Where finished videos live once reelgate has copied them from MiniMax, behind the
//! [`ResultStore`] trait. This build keeps them on the local file system
//! ([`fs::FsResults`]); an object store is a second implementation of the same trait.
//!
//! Videos stream in and out in chunks: a result is never held in memory whole.

pub mod fs;

use async_trait::async_trait;
use domain::JobId;
use tokio::io::{AsyncRead, AsyncSeek};

/// A result being written. Dropping it without [`finish`](ResultWriter::finish) leaves
/// nothing behind.
#[async_trait]
pub trait ResultWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    /// Makes the result durable and visible under its job id; returns its size.
    async fn finish(self: Box<Self>) -> std::io::Result<u64>;
}

/// Something a stored result can be read from, at any offset (for Range requests).
pub trait ResultReader: AsyncRead + AsyncSeek + Send + Unpin {}
impl<T: AsyncRead + AsyncSeek + Send + Unpin> ResultReader for T {}

/// An opened result.
pub struct StoredResult {
    /// Size in bytes.
    pub len: u64,
    /// Its bytes.
    pub reader: Box<dyn ResultReader>,
}

/// Storage for result videos.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Starts writing the result of `job`, replacing any earlier one once finished.
    async fn begin(&self, job: JobId) -> std::io::Result<Box<dyn ResultWriter>>;
    /// Opens the result of `job`, if there is one.
    async fn open(&self, job: JobId) -> std::io::Result<Option<StoredResult>>;
    /// Deletes the result of `job`; deleting a missing result is not an error.
    async fn delete(&self, job: JobId) -> std::io::Result<()>;
}
