//! The poll step: asks MiniMax about a running task and moves the job on (progress, the
//! result copy, or failure); and the same moves when MiniMax pushes the state to our
//! callback instead.

use std::sync::Arc;

use domain::Stage;
use store::{EngineJob, Transition};

use super::minimax::{TaskState, UpstreamError};
use super::policy::{self, Action, Step};
use super::{progress, Engine};

impl Engine {
    /// Polls a running task once and moves the job on.
    pub(super) async fn poll(self: &Arc<Self>, job: EngineJob) {
        let id = job.record.id;
        let task_id = job.upstream_task_id.clone().unwrap_or_default();
        if self.deadline_passed(&job) {
            let minutes = self.config.job_deadline_ms / 60_000;
            let message = format!("The video was not ready within {minutes} minutes; the job was given up.");
            self.fail(&job, Stage::Running, job.due_at_ms, message, "deadline").await;
            return;
        }
        let Some(upstream) = self.upstream(job.upstream_account.as_deref()) else {
            let message = "The MiniMax account running this job is no longer configured.".to_string();
            self.fail(&job, Stage::Running, job.due_at_ms, message, "upstream_removed").await;
            return;
        };
        upstream.pacer.wait().await;
        // Claim this poll: move the due time past the call's timeout.
        let lease = Self::now_ms() + self.config.query_timeout_ms as i64 + 10_000;
        let claim = Transition::new(id, Stage::Running, Stage::Running).if_due_at(job.due_at_ms).due_at(lease);
        let job = match self.apply(claim).await {
            Ok(Some(job)) => job,
            _ => return,
        };
        let interval = self.config.poll_interval_ms as i64;
        let reschedule = |due: i64, p: Option<i64>| {
            let mut t = Transition::new(id, Stage::Running, Stage::Running).if_due_at(Some(lease)).due_at(due);
            t.progress = p;
            t
        };
        let now = Self::now_ms();
        let outcome = upstream.client.query(&task_id).await;
        tracing::debug!(job.id = %id, upstream.task_id = %task_id, outcome = ?outcome, "polled");
        let next = match outcome {
            Ok(TaskState::Preparing) => reschedule(now + interval, Some(progress::PREPARING)),
            Ok(TaskState::Queueing) => reschedule(now + interval, Some(progress::QUEUEING)),
            Ok(TaskState::Processing) => {
                let current = job.record.progress.unwrap_or(0);
                let p =
                    (current + progress::PROCESSING_STEP).clamp(progress::PROCESSING_START, progress::PROCESSING_MAX);
                reschedule(now + interval, Some(p))
            }
            Ok(TaskState::Success { file_id }) => {
                self.start_mirror(job, Some(lease), file_id).await;
                return;
            }
            Ok(TaskState::Fail(err)) => {
                self.count_upstream_error(&upstream.budget.name, &err.code_label());
                tracing::info!(job.id = %id, upstream.task_id = %task_id, error = %err, "MiniMax task failed");
                self.act_on_task_failure(&job, Some(lease), &err).await;
                return;
            }
            Err(err) => {
                self.count_upstream_error(&upstream.budget.name, &err.code_label());
                tracing::warn!(job.id = %id, upstream.task_id = %task_id, error = %err, "poll failed; polling again later");
                let decision = policy::decide(Step::Poll { interval_ms: interval }, &err);
                if decision.bench {
                    self.bench(upstream, &err);
                }
                match decision.action {
                    Action::RetryAt { after } | Action::Requeue { after, .. } => {
                        reschedule(now + self.delay_ms(after), None)
                    }
                    Action::Fail { message, reason } => {
                        self.fail(&job, Stage::Running, Some(lease), message, &reason).await;
                        return;
                    }
                }
            }
        };
        if let Err(e) = self.apply(next).await {
            tracing::error!(job.id = %id, error = %e, "could not reschedule the poll; the lease will");
        }
    }

    /// MiniMax reports success (by poll or callback): move to Downloading, due at once.
    /// The poller then copies the video under a download slot; doing it here would keep
    /// a poll slot (or a callback) waiting behind slow downloads. `if_due` is the poll's
    /// lease, or `None` for a callback.
    pub(crate) async fn start_mirror(&self, job: EngineJob, if_due: Option<i64>, file_id: String) {
        let mut t = Transition::new(job.record.id, Stage::Running, Stage::Downloading)
            .if_due_at(if_due)
            .due_at(Self::now_ms())
            .progress(progress::DOWNLOADING);
        t.upstream_file_id = Some(file_id);
        if let Ok(Some(_)) = self.apply(t).await {
            self.poll_wake.notify_one();
        }
    }

    /// Fails a running job on MiniMax's word (callback).
    pub(crate) async fn fail_running(&self, job: &EngineJob, err: UpstreamError) {
        self.count_upstream_error(job.upstream_account.as_deref().unwrap_or(""), &err.code_label());
        self.act_on_task_failure(job, None, &err).await;
    }

    /// MiniMax says the task failed: the job fails as the [`policy`] words it.
    async fn act_on_task_failure(&self, job: &EngineJob, if_due: Option<i64>, err: &UpstreamError) {
        let decision = policy::decide(Step::Task, err);
        if let Action::Fail { message, reason } = decision.action {
            self.fail(job, Stage::Running, if_due, message, &reason).await;
        }
    }

    /// Raises a running job's progress (callback `processing`).
    pub(crate) async fn note_processing(&self, job: &EngineJob) {
        let p = (job.record.progress.unwrap_or(0) + progress::PROCESSING_STEP)
            .clamp(progress::PROCESSING_START, progress::PROCESSING_MAX);
        // Keep the poll schedule as it is; only progress changes.
        let mut t = Transition::new(job.record.id, Stage::Running, Stage::Running).if_due_at(job.due_at_ms).progress(p);
        t.due_at_ms = job.due_at_ms;
        let _ = self.apply(t).await;
    }
}
