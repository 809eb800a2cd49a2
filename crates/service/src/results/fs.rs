//! Result videos as files under `<data_dir>/results/`, written to a temporary file in
//! the same directory and renamed into place only once complete and synced, so a
//! reader or a crash never sees half a video under the final name. Uploads sit beside
//! the videos as `upload-<id>`, and jobs' copies of them as `input-<job id>-<field>`.

use std::io::{SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
#[cfg(test)]
use domain::JobId;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Object, ResultBody, ResultStore, ResultStream, ResultWriter, StoredResult};

/// The file system result store.
pub struct FsResults {
    dir: PathBuf,
}

impl FsResults {
    /// Uses (creating if needed) `dir`; leftovers of writes a crash interrupted are removed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, object: Object) -> PathBuf {
        match object {
            Object::Result(job) => self.dir.join(format!("{job}.mp4")),
            Object::Upload(id) => self.dir.join(format!("upload-{id}")),
            Object::JobInput(job, field) => self.dir.join(format!("input-{job}-{field}")),
        }
    }
}

struct FsWriter {
    // The blocking file API runs on the blocking pool through `spawn_blocking`;
    // chunks are tens of KB, so each hop is cheap next to the network read feeding it.
    file: Option<tempfile::NamedTempFile>,
    target: PathBuf,
    written: u64,
}

#[async_trait]
impl ResultWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("the result writer failed earlier"))?;
        let len = chunk.len() as u64;
        let chunk = chunk.to_vec();
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = file.write_all(&chunk);
            (file, res)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        res?;
        self.written += len;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> std::io::Result<u64> {
        let FsWriter { file, target, written } = *self;
        let file = file.ok_or_else(|| std::io::Error::other("the result writer failed earlier"))?;
        tokio::task::spawn_blocking(move || {
            file.as_file().sync_all()?;
            file.persist(&target).map_err(|e| e.error)?;
            // The rename is durable once the directory entry is.
            if let Some(dir) = target.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(written)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[async_trait]
impl ResultStore for FsResults {
    async fn begin_object(&self, object: Object) -> std::io::Result<Box<dyn ResultWriter>> {
        let dir = self.dir.clone();
        let file = tokio::task::spawn_blocking(move || tempfile::Builder::new().prefix(".partial").tempfile_in(dir))
            .await
            .map_err(std::io::Error::other)??;
        Ok(Box::new(FsWriter { file: Some(file), target: self.path(object), written: 0 }))
    }

    async fn open_object(&self, object: Object) -> std::io::Result<Option<StoredResult>> {
        match tokio::fs::File::open(self.path(object)).await {
            Ok(file) => {
                // The open handle keeps reading the file it measured even if the reaper
                // unlinks it or a new copy is renamed over it meanwhile.
                let len = file.metadata().await?.len();
                Ok(Some(StoredResult::new(len, Box::new(FsBody(file)))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn copy_object(&self, from: Object, to: Object) -> std::io::Result<bool> {
        let (from, to, dir) = (self.path(from), self.path(to), self.dir.clone());
        tokio::task::spawn_blocking(move || {
            let mut source = match std::fs::File::open(&from) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            // The same temporary-file-then-rename as a write, so a half copy is never seen.
            let mut copy = tempfile::Builder::new().prefix(".partial").tempfile_in(&dir)?;
            std::io::copy(&mut source, copy.as_file_mut())?;
            copy.as_file().sync_all()?;
            copy.persist(&to).map_err(|e| e.error)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(true)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn delete_object(&self, object: Object) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(object)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// An open result file.
struct FsBody(tokio::fs::File);

#[async_trait]
impl ResultBody for FsBody {
    async fn read(self: Box<Self>, range: Range<u64>) -> std::io::Result<ResultStream> {
        let mut file = self.0;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start)).await?;
        }
        Ok(tokio_util::io::ReaderStream::new(file.take(range.end - range.start)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    async fn read(stored: StoredResult, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        let chunks: Vec<bytes::Bytes> = stored.read(range).await?.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn results_read_by_range_and_an_opened_file_survives_its_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let results = FsResults::open(dir.path()).unwrap();
        let job = JobId::new();
        assert!(results.open(job).await.unwrap().is_none());
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = results.begin(job).await.unwrap();
        writer.write(&bytes[..70_000]).await.unwrap();
        assert!(results.open(job).await.unwrap().is_none(), "nothing is visible before finish");
        writer.write(&bytes[70_000..]).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);

        let stored = results.open(job).await.unwrap().unwrap();
        assert_eq!(stored.len, bytes.len() as u64);
        assert_eq!(read(stored, 0..100_000).await.unwrap(), bytes);
        let stored = results.open(job).await.unwrap().unwrap();
        assert_eq!(read(stored, 99_990..100_000).await.unwrap(), bytes[99_990..]);
        let stored = results.open(job).await.unwrap().unwrap();
        assert_eq!(read(stored, 7..7).await.unwrap(), b"");
        let stored = results.open(job).await.unwrap().unwrap();
        let err = read(stored, 0..100_001).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

        // The reaper deleting a result mid-request does not cut the answer short.
        let stored = results.open(job).await.unwrap().unwrap();
        results.delete(job).await.unwrap();
        assert_eq!(read(stored, 1000..2000).await.unwrap(), bytes[1000..2000]);
        assert!(results.open(job).await.unwrap().is_none());
        results.delete(job).await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let results = FsResults::open(dir.path()).unwrap();
        let mut writer = results.begin(JobId::new()).await.unwrap();
        writer.write(b"half a video").await.unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
