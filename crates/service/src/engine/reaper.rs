//! The reapers: delete result videos kept past `engine.result_retention_days` (marking
//! their jobs expired), and expired uploads, more often, since they live for hours
//! rather than days. Each deletes the bytes before the record, so a crash in between
//! leaves work that is done again, never a file nothing points at.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::results::Object;

/// How often the result reaper runs.
const REAP_INTERVAL: Duration = Duration::from_secs(3600);

impl Engine {
    /// Reaps expired results now and then every [`REAP_INTERVAL`], until `stop`.
    pub(super) async fn reap_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.reap_once().await {
                tracing::warn!(error = %e, "result reaper failed; trying again later");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REAP_INTERVAL) => {}
            }
        }
    }

    /// Deletes videos kept longer than the retention period and marks their jobs expired.
    pub async fn reap_once(&self) -> Result<usize, EngineError> {
        let cutoff = Self::now_ms() - i64::from(self.config.result_retention_days) * 86_400_000;
        let mut reaped = 0;
        loop {
            let ids = self.store.results_to_expire(cutoff, 500).await?;
            if ids.is_empty() {
                return Ok(reaped);
            }
            for id in ids {
                // Delete first: a crash in between leaves a job that is reaped again, never
                // a job that says its video is gone while the file stays.
                self.results.delete(id).await.map_err(EngineError::Results)?;
                self.store.mark_expired(id).await?;
                tracing::info!(job.id = %id, "result expired and deleted");
                reaped += 1;
            }
        }
    }

    /// Reaps expired uploads now and then every `uploads.reap_interval_ms`, until `stop`.
    pub(super) async fn reap_uploads_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.reap_uploads_once().await {
                tracing::warn!(error = %e, "upload reaper failed; trying again later");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.upload_reap_interval) => {}
            }
        }
    }

    /// Deletes expired uploads: their bytes, then their record.
    pub async fn reap_uploads_once(&self) -> Result<usize, EngineError> {
        let mut reaped = 0;
        loop {
            let ids = self.store.uploads_to_reap(Self::now_ms(), 500).await?;
            if ids.is_empty() {
                return Ok(reaped);
            }
            for id in ids {
                // Bytes first: a crash in between leaves a record that is reaped again,
                // never bytes that nothing points at.
                self.results.delete_object(Object::Upload(id)).await.map_err(EngineError::Results)?;
                self.store.delete_upload(id).await?;
                tracing::info!(upload.id = %id, "upload expired and deleted");
                reaped += 1;
            }
        }
    }
}
