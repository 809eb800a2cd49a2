//! The mirror step: copies a finished task's video from MiniMax's download links into
//! the result store, under a lease it renews while it works, and completes the job; on
//! failure, tries again later or, after the last attempt, fails the job.

use std::time::Duration;

use domain::{JobId, Stage};
use futures_util::StreamExt;
use serde_json::json;
use store::{EngineJob, Transition};

use super::{progress, Engine, EngineError, Upstream};

/// How far a result copy's lease reaches. A copy may take up to `download_timeout_ms`
/// (10 min), but a lease that long would leave a dead node's copies untouched for as
/// long; instead the copying process renews a short lease while it works.
const DOWNLOAD_LEASE: Duration = Duration::from_secs(30);
/// How often a copy in progress renews its lease.
const DOWNLOAD_LEASE_RENEWAL: Duration = Duration::from_secs(10);

impl Engine {
    /// The length of a result copy's lease.
    pub(super) fn download_lease_ms(&self) -> i64 {
        DOWNLOAD_LEASE.as_millis() as i64
    }

    /// Runs the copy of a job's result while renewing its lease; `None` if the lease was
    /// lost (another process took the job over after this one stalled), in which case the
    /// copy is abandoned and nothing of it is kept.
    async fn copy_under_lease(
        &self,
        job: &EngineJob,
        upstream: &Upstream,
        lease: &mut i64,
    ) -> Option<Result<u64, EngineError>> {
        let id = job.record.id;
        let copy = self.copy_result(job, upstream);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                outcome = &mut copy => return Some(outcome),
                _ = tokio::time::sleep(DOWNLOAD_LEASE_RENEWAL) => {
                    let renewed = Self::now_ms() + self.download_lease_ms();
                    let t = Transition::new(id, Stage::Downloading, Stage::Downloading).if_due_at(Some(*lease)).due_at(renewed);
                    match self.apply(t).await {
                        Ok(Some(_)) => *lease = renewed,
                        Ok(None) => {
                            tracing::warn!(job.id = %id, "lost the lease on a result copy; another process has the job");
                            return None;
                        }
                        // The lease still runs for a while; try again at the next renewal.
                        Err(e) => tracing::warn!(job.id = %id, error = %e, "could not renew a result copy's lease"),
                    }
                }
            }
        }
    }

    /// Copies a finished task's video into the result store and completes the job; on
    /// failure, schedules another try or, after the last one, fails the job.
    pub(super) async fn mirror(&self, job: EngineJob, mut lease: i64) {
        let id = job.record.id;
        let task_id = job.upstream_task_id.clone().unwrap_or_default();
        let outcome = match self.upstream(job.upstream_account.as_deref()) {
            None => Err(EngineError::UpstreamRemoved),
            Some(upstream) => match self.copy_under_lease(&job, upstream, &mut lease).await {
                Some(outcome) => outcome,
                None => return,
            },
        };
        match outcome {
            Ok(bytes) => {
                let mut t = Transition::new(id, Stage::Downloading, Stage::Completed)
                    .if_due_at(Some(lease))
                    .progress(progress::DONE);
                t.result = Some(json!({ "videoUrl": self.links.result_url(id) }));
                t.result_bytes = Some(bytes as i64);
                match self.apply(t).await {
                    Ok(Some(_)) => {
                        self.download_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        self.metrics.inc("jobs_completed_total", &[]);
                        self.record_job_end(&job, "completed");
                        tracing::info!(job.id = %id, upstream.task_id = %task_id, bytes, "job completed");
                        self.notify();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(job.id = %id, error = %e, "could not complete the job; it will be retried")
                    }
                }
            }
            Err(problem) => {
                let failures = {
                    let mut map = self.download_failures.lock().unwrap_or_else(|p| p.into_inner());
                    let n = map.entry(id).or_default();
                    *n += 1;
                    *n
                };
                self.metrics.inc("download_failures_total", &[]);
                tracing::warn!(job.id = %id, upstream.task_id = %task_id, attempt = failures, error = %problem, "result copy failed");
                if failures >= self.config.max_download_attempts || self.deadline_passed(&job) {
                    self.download_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    let message = format!("The finished video could not be copied from MiniMax: {problem}");
                    self.fail(&job, Stage::Downloading, Some(lease), message, "download").await;
                } else {
                    let t = Transition::new(id, Stage::Downloading, Stage::Downloading)
                        .if_due_at(Some(lease))
                        .due_at(Self::now_ms() + self.backoff_ms(failures));
                    let _ = self.apply(t).await;
                }
            }
        }
    }

    /// Retrieves fresh links (they expire) and streams the video from the primary link,
    /// then the backup, into the result store. Returns the size stored.
    async fn copy_result(&self, job: &EngineJob, upstream: &Upstream) -> Result<u64, EngineError> {
        let file_id = job.upstream_file_id.as_deref().ok_or(EngineError::NoFileId)?;
        upstream.pacer.wait().await;
        let links = upstream.client.retrieve(file_id).await?;
        let mut problems = Vec::new();
        for url in std::iter::once(&links.download_url).chain(links.backup_download_url.as_ref()) {
            match self.download(job.record.id, upstream.client.http(), url).await {
                Ok(bytes) => return Ok(bytes),
                Err(p) => problems.push(p),
            }
        }
        Err(EngineError::AllLinks(problems))
    }

    /// Streams one download link into the result store, checking size and MP4-ness.
    async fn download(&self, id: JobId, http: &reqwest::Client, url: &str) -> Result<u64, EngineError> {
        let max = self.config.max_result_bytes;
        let response = http
            .get(url)
            .timeout(Duration::from_millis(self.config.download_timeout_ms))
            .send()
            .await
            .map_err(EngineError::Download)?;
        if !response.status().is_success() {
            // 403 is how an expired signed link answers; the next try retrieves a new one.
            return Err(EngineError::DownloadStatus(response.status()));
        }
        let announced = response.content_length();
        if announced.is_some_and(|n| n > max) {
            return Err(EngineError::TooLarge { max });
        }
        let mut writer = self.results.begin(id).await.map_err(EngineError::StoreVideo)?;
        let mut stream = response.bytes_stream();
        let mut received: u64 = 0;
        let mut head = Vec::with_capacity(12);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| EngineError::Interrupted { received, source })?;
            if head.len() < 12 {
                head.extend_from_slice(&chunk[..chunk.len().min(12 - head.len())]);
            }
            received += chunk.len() as u64;
            if received > max {
                return Err(EngineError::TooLarge { max });
            }
            writer.write(&chunk).await.map_err(EngineError::StoreVideo)?;
        }
        if let Some(n) = announced {
            if n != received {
                return Err(EngineError::Truncated { received, announced: n });
            }
        }
        // Every MP4 starts with a box whose type (bytes 4..8) is `ftyp`.
        if received == 0 || head.get(4..8) != Some(b"ftyp") {
            return Err(EngineError::NotMp4);
        }
        writer.finish().await.map_err(EngineError::StoreVideo)
    }
}
