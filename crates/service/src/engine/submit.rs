//! The submit step: turns a claimed job into MiniMax's create call (images fetched and
//! checked), reserves the call against the account's budget, sends it, and records the
//! outcome; also the recovery of a submit whose lease ran out, and the clean-up of a
//! job's copies of its uploads.

use std::sync::Arc;

use domain::{JobId, ModelId, Resolution, Stage};
use futures_util::StreamExt;
use store::{CallReservation, ClaimedJob, EngineJob, Transition};

use super::minimax::{CreateTask, UpstreamError};
use super::policy::{self, Action, Step};
use super::{inputs, progress, Engine, EngineError, Upstream};
use crate::results::Object;

/// The window a create call is reserved against (defined with the claim plan's window).
const BUDGET_WINDOW_MS: i64 = domain::claim::RESERVATION_WINDOW_MS;

impl Engine {
    /// Builds the create call for a claimed job, reserves it against the upstream's
    /// budget, sends it, and records what happened.
    pub(super) async fn submit(self: &Arc<Self>, claimed: ClaimedJob) {
        let ClaimedJob { job, upstream: upstream_name } = claimed;
        let id = job.record.id;
        let lease = job.due_at_ms;
        let Some(upstream) = self.upstream(Some(&upstream_name)) else { return };
        let task = match self.create_task(&job).await {
            Ok(task) => task,
            Err(problem) => {
                tracing::info!(job.id = %id, reason = %problem, "input refused; failing the job");
                self.fail(&job, Stage::Submitting, lease, problem.to_string(), "input").await;
                return;
            }
        };
        // Jobs claimed in the same round as one that found this account broken must not
        // be sent to it as well.
        if !self.in_rotation(upstream) {
            self.requeue(&job, lease, Self::now_ms(), "upstream account out of rotation").await;
            return;
        }
        match self.store.reserve_upstream_call(&upstream_name, id, upstream.budget.create_rpm, BUDGET_WINDOW_MS).await {
            Ok(CallReservation::Granted) => {}
            Ok(CallReservation::FullUntil(at)) => {
                self.requeue(&job, lease, at, "create budget spent").await;
                return;
            }
            Err(e) => {
                tracing::warn!(job.id = %id, error = %e, "could not reserve a create call; the lease will return the job");
                return;
            }
        }
        let attempts = job.attempts + 1;
        tracing::info!(job.id = %id, upstream = %upstream_name, attempt = attempts, "submitting to MiniMax");
        match upstream.client.create(&task).await {
            Ok(task_id) => {
                self.metrics.inc("submissions_total", &[("upstream", &upstream_name)]);
                let mut t = Transition::new(id, Stage::Submitting, Stage::Running)
                    .if_due_at(lease)
                    .due_at(Self::now_ms() + self.config.first_poll_delay_ms as i64)
                    .progress(progress::SUBMITTED);
                t.upstream_task_id = Some(task_id.clone());
                match self.apply(t).await {
                    Ok(Some(_)) => {
                        tracing::info!(job.id = %id, upstream.task_id = %task_id, "MiniMax task created");
                        // MiniMax has the images now (sent inline): the copies are done.
                        self.drop_job_inputs(&job.record).await;
                    }
                    Ok(None) => tracing::warn!(
                        job.id = %id, upstream.task_id = %task_id,
                        "the job moved on while its create call was in flight; MiniMax's task is orphaned"
                    ),
                    Err(e) => {
                        tracing::error!(job.id = %id, upstream.task_id = %task_id, error = %e, "could not record the task id")
                    }
                }
            }
            Err(err) => self.submit_failed(&job, upstream, lease, attempts, err).await,
        }
    }

    /// Records a failed create call as the [`policy`] decides.
    async fn submit_failed(
        &self,
        job: &EngineJob,
        upstream: &Upstream,
        lease: Option<i64>,
        attempts: u32,
        err: UpstreamError,
    ) {
        let id = job.record.id;
        let name = &upstream.budget.name;
        self.count_upstream_error(name, &err.code_label());
        match &err {
            UpstreamError::RateLimited { .. } => {
                tracing::warn!(job.id = %id, upstream = %name, error = %err, "MiniMax rate limit; the job stays queued")
            }
            UpstreamError::Account { .. } => tracing::error!(
                job.id = %id, upstream = %name, error = %err,
                "MiniMax account problem; taking the account out of rotation"
            ),
            UpstreamError::Rejected { .. } => {
                tracing::info!(job.id = %id, upstream = %name, error = %err, "MiniMax refused the job")
            }
            UpstreamError::Ambiguous { .. } => tracing::warn!(
                job.id = %id, upstream = %name, error = %err,
                "create outcome unknown; retrying (MiniMax may run an orphaned task; the customer is not charged again)"
            ),
            UpstreamError::Transient { .. } => {
                tracing::warn!(job.id = %id, upstream = %name, error = %err, attempt = attempts, "transient MiniMax error")
            }
        }
        let decision = policy::decide(Step::Submit { attempts, max_attempts: self.config.max_submit_attempts }, &err);
        if decision.bench {
            self.bench(upstream, &err);
        }
        match decision.action {
            Action::Requeue { after, why } => {
                self.requeue(job, lease, Self::now_ms() + self.delay_ms(after), why).await
            }
            // A create call has no task to ask about again; the policy never says so for one.
            Action::RetryAt { after } => self.requeue(job, lease, Self::now_ms() + self.delay_ms(after), "retry").await,
            Action::Fail { message, reason } => self.fail(job, Stage::Submitting, lease, message, &reason).await,
        }
    }

    /// A submit whose lease ran out: this process (or a previous one) died or hung
    /// mid-call, so whether MiniMax created the task is unknown. Retry it.
    pub(super) async fn recover_submit(&self, job: EngineJob) {
        let id = job.record.id;
        self.count_upstream_error(job.upstream_account.as_deref().unwrap_or(""), "unknown_outcome");
        if job.attempts >= self.config.max_submit_attempts {
            let message = "MiniMax did not answer the create call; the job was given up.".to_string();
            self.fail(&job, Stage::Submitting, job.due_at_ms, message, "upstream_unavailable").await;
            return;
        }
        tracing::warn!(
            job.id = %id, attempts = job.attempts,
            "submit lease expired with no recorded outcome; requeueing (an orphaned MiniMax task may exist)"
        );
        self.requeue(&job, job.due_at_ms, Self::now_ms(), "submit lease expired").await;
    }

    /// The data URL of input `field` of job `id`. One of this server's upload URLs is
    /// read from the job's copy in the result store, never over HTTP, so the SSRF guard
    /// stays closed to loopback; any other URL is fetched through the guard.
    async fn input_image(
        &self,
        id: JobId,
        image: &domain::ImageRef,
        field: &'static str,
    ) -> Result<String, EngineError> {
        let max = self.config.max_input_image_bytes;
        let is_upload = matches!(image, domain::ImageRef::Url(url) if self.links.upload_in(url).is_some());
        if !is_upload {
            return Ok(inputs::prepare(&self.images, image, field, max, self.allow_private_urls).await?);
        }
        let gone = || format!("{field}: the uploaded file is no longer available");
        let stored = self
            .results
            .open_object(Object::JobInput(id, field))
            .await
            .map_err(|e| format!("{field}: could not read the uploaded file ({e})"))?
            .ok_or_else(gone)?;
        let len = stored.len;
        let mut chunks = stored.read(0..len).await.map_err(|_| gone())?;
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        while let Some(chunk) = chunks.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| format!("{field}: could not read the uploaded file ({e})"))?);
        }
        Ok(inputs::data_url(&bytes, field, max)?)
    }

    /// Deletes job `job`'s copies of the uploads it names, once it no longer needs them
    /// (its task was created upstream, or it failed before).
    pub(super) async fn drop_job_inputs(&self, job: &store::JobRecord) {
        inputs::drop_job_copies(&self.links, self.results.as_ref(), job).await;
    }

    /// MiniMax's request for a job: our stored input in MiniMax's vocabulary, images
    /// fetched and checked.
    async fn create_task(&self, job: &EngineJob) -> Result<CreateTask, EngineError> {
        let input: serde_json::Value = serde_json::from_str(job.record.input.get())
            .map_err(|_| EngineError::Input("the stored request is unreadable".into()))?;
        // Private addresses pass this re-read: the fetch below applies the current
        // setting through the guard and says precisely why it refuses.
        let req = domain::validation::parse_generate(&input, domain::validation::UrlPolicy::AllowPrivate)
            .map_err(|_| EngineError::Input("the stored request is invalid".into()))?;
        let first_frame_image = match &req.image {
            Some(image) => Some(self.input_image(job.record.id, image, "image").await?),
            None => None,
        };
        let last_frame_image = match &req.end_image {
            Some(image) => Some(self.input_image(job.record.id, image, "end_image").await?),
            None => None,
        };
        let callback_url = self.callbacks.then(|| self.links.callback_url(job.record.id));
        Ok(CreateTask {
            model: minimax_model(req.model),
            prompt: Some(req.prompt),
            prompt_optimizer: req.prompt_optimizer,
            duration: req.duration.seconds(),
            resolution: minimax_resolution(req.resolution),
            first_frame_image,
            last_frame_image,
            callback_url,
        })
    }
}

/// MiniMax's name for a model.
pub fn minimax_model(model: ModelId) -> &'static str {
    match model {
        ModelId::Hailuo23 => "MiniMax-Hailuo-2.3",
        ModelId::Hailuo02 => "MiniMax-Hailuo-02",
        ModelId::Hailuo23Fast => "MiniMax-Hailuo-2.3-Fast",
    }
}

/// MiniMax's spelling of a resolution.
pub fn minimax_resolution(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::P768 => "768P",
        Resolution::P1080 => "1080P",
    }
}
