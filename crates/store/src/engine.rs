//! What the job engine asks of a store: claiming queued jobs fairly within upstream
//! budgets, compare-and-set transitions between stages, and the due-time schedule.
//!
//! Every method is a single transaction. Transitions are compare-and-set on the stored
//! stage (and, for claims on due work, the stored due time), so two workers, or a
//! worker and a MiniMax callback, can never both move a job: the loser gets `None`.

use std::sync::Arc;

use domain::{AccountId, JobId, Stage};
use serde_json::Value;

use crate::JobRecord;

/// A job as the engine sees it: the public record plus the engine's bookkeeping.
#[derive(Clone, Debug)]
pub struct EngineJob {
    /// The public view, exactly as `GET /v2/jobs/{id}` shows it.
    pub record: Arc<JobRecord>,
    /// Internal stage.
    pub stage: Stage,
    /// The configured MiniMax account the job was handed to.
    pub upstream_account: Option<String>,
    /// MiniMax's task id, once known.
    pub upstream_task_id: Option<String>,
    /// MiniMax's file id, once the task succeeded.
    pub upstream_file_id: Option<String>,
    /// Create calls made so far.
    pub attempts: u32,
    /// When the engine must look at the job next (unix ms).
    pub due_at_ms: Option<i64>,
    /// When the engine first took the job (unix ms).
    pub started_at_ms: Option<i64>,
}

/// The budget of one configured MiniMax account, as a claim must respect it.
#[derive(Clone, Debug)]
pub struct UpstreamBudget {
    /// The account's name in the configuration.
    pub name: String,
    /// Create calls allowed in any 60-second window.
    pub create_rpm: u32,
    /// Tasks allowed to be submitting or running upstream at once.
    pub max_in_flight: u32,
    /// Jobs this claim may take for the account at most (the caller's pacing), on top
    /// of the per-minute budget.
    pub claimable_now: u32,
}

/// Input for [`EngineStore::claim_jobs`].
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Upstream accounts currently in rotation.
    pub upstreams: Vec<UpstreamBudget>,
    /// Claim at most this many jobs.
    pub max_jobs: usize,
    /// How long the claim holds before the job is due again (a crashed submit).
    pub lease_ms: i64,
    /// Round-robin position: service starts with the first account after this one.
    pub after_account: Option<AccountId>,
}

/// A job taken for submission, and the upstream account it must go to.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    /// The job, now in stage `Submitting`.
    pub job: EngineJob,
    /// The upstream account chosen for it.
    pub upstream: String,
}

/// A compare-and-set move of one job. Fields left `None` are not changed.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The job.
    pub job_id: JobId,
    /// The stage the job must be in for the move to happen.
    pub from: Stage,
    /// Also require this stored due time (a claim on a due job).
    pub if_due_at_ms: Option<i64>,
    /// The new stage; must be allowed by [`Stage::can_move_to`].
    pub to: Stage,
    /// The new due time; `None` clears it. Terminal stages always clear it.
    pub due_at_ms: Option<i64>,
    /// Raise progress to at least this; progress never goes backwards.
    pub progress: Option<i64>,
    /// Record MiniMax's task id.
    pub upstream_task_id: Option<String>,
    /// Record MiniMax's file id.
    pub upstream_file_id: Option<String>,
    /// The result object (`{"videoUrl": ...}`), for `Completed`.
    pub result: Option<Value>,
    /// Size of the stored video, for `Completed`.
    pub result_bytes: Option<i64>,
    /// The failure reason shown to the client, for `Failed`.
    pub error: Option<String>,
}

impl Transition {
    /// A move from `from` to `to` that changes nothing else and clears the due time.
    pub fn new(job_id: JobId, from: Stage, to: Stage) -> Self {
        Self {
            job_id,
            from,
            if_due_at_ms: None,
            to,
            due_at_ms: None,
            progress: None,
            upstream_task_id: None,
            upstream_file_id: None,
            result: None,
            result_bytes: None,
            error: None,
        }
    }

    /// Sets the next due time.
    pub fn due_at(mut self, ms: i64) -> Self {
        self.due_at_ms = Some(ms);
        self
    }

    /// Requires the stored due time to be `ms`.
    pub fn if_due_at(mut self, ms: Option<i64>) -> Self {
        self.if_due_at_ms = ms;
        self
    }

    /// Raises progress to at least `p`.
    pub fn progress(mut self, p: i64) -> Self {
        self.progress = Some(p);
        self
    }

    /// The failure reason.
    pub fn error(mut self, e: impl Into<String>) -> Self {
        self.error = Some(e.into());
        self
    }
}

/// A create call reserved against an upstream account's per-minute budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallReservation {
    /// Within budget: the call may be sent now.
    Granted,
    /// The budget is spent; the oldest call in the window leaves it at this time (unix ms).
    FullUntil(i64),
}

/// Counts for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Jobs the engine is working on.
    pub active: u64,
    /// Submission time of the oldest queued job (unix ms), if any is queued.
    pub oldest_queued_at_ms: Option<i64>,
}
