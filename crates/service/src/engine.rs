//! The job engine: takes QUEUED jobs to MiniMax and back.
//!
//! This module owns the engine's start and stop and what its parts share: the
//! [`Engine`] handles, the MiniMax accounts in rotation ([`Upstream`]), and the moves
//! every step makes (apply a transition, requeue, fail with a refund). The parts:
//! - [`dispatch`]: the **dispatcher** claims queued jobs (fairly across customer
//!   accounts, within every MiniMax account's per-minute budget and in-flight cap, see
//!   `Store::claim_jobs`) and submits each one; the **poller** asks the store for work
//!   whose due time has come (a running task's next poll, an expired lease) and runs the
//!   step for its stage. The schedule lives in an index, not in a timer per job, so
//!   100,000 jobs in flight cost only the polls actually due;
//! - one module per step: [`submit`], [`poll`], [`mirror`] (the result copy);
//! - [`reaper`]: deletes result videos past their retention, and expired uploads;
//! - [`pacing`]: the token bucket and pacer that space calls to one account;
//! - [`policy`]: what to do about each upstream error, as a pure function;
//! - [`minimax`] (the adapter), [`callback`] (MiniMax's pushes), [`inputs`] (images).
//!
//! Every change of a job is a compare-and-set transition in the store. A step claims
//! its job by moving the due time forward (a lease): if this process dies, the job
//! becomes due again and is picked up after a restart. Refunds happen inside the
//! transition to FAILED, guarded by a unique index, so they happen exactly once.
//!
//! A create call that may have reached MiniMax without an answer (timeout after
//! sending) cannot be checked: MiniMax has no idempotency key and no task listing. The
//! job is requeued and submitted again; the customer was charged once, at acceptance,
//! and is never charged again, but the operator's MiniMax account may pay for an
//! orphaned task. Such cases are logged and counted (`upstream_errors_total` with
//! code `unknown_outcome`).

pub mod callback;
mod dispatch;
pub mod error;
pub mod health;
pub mod inputs;
pub mod minimax;
mod mirror;
mod pacing;
pub mod policy;
mod poll;
mod reaper;
mod submit;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{AccountId, JobId, Stage};
use store::{EngineJob, Store, Transition, UpstreamBudget};
use tokio::sync::{Notify, Semaphore};

use crate::background::Background;
use crate::config::EngineConfig;
use crate::links::Links;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::results::ResultStore;
use minimax::MiniMaxClient;
use pacing::{Pacer, TokenBucket};

pub use error::EngineError;
pub use submit::{minimax_model, minimax_resolution};

/// Progress milestones: progress only ever rises (the store keeps the maximum).
mod progress {
    pub const SUBMITTED: i64 = 10;
    pub const PREPARING: i64 = 15;
    pub const QUEUEING: i64 = 20;
    pub const PROCESSING_START: i64 = 25;
    pub const PROCESSING_STEP: i64 = 5;
    pub const PROCESSING_MAX: i64 = 90;
    pub const DOWNLOADING: i64 = 95;
    pub const DONE: i64 = 100;
}

/// One configured MiniMax account as the engine uses it.
pub struct Upstream {
    /// Its budget (name, create RPM, in-flight cap).
    pub budget: UpstreamBudget,
    /// Its client.
    pub client: MiniMaxClient,
    /// Spaces query and retrieve calls to the account's query RPM.
    pacer: Pacer,
    /// Spreads create calls over the minute instead of spending the budget at once.
    creates: Mutex<TokenBucket>,
    /// Out of rotation after an account problem, and recent errors.
    health: health::Health,
}

impl Upstream {
    /// An upstream account.
    pub fn new(budget: UpstreamBudget, client: MiniMaxClient, query_rpm: u32) -> Self {
        Self {
            creates: Mutex::new(TokenBucket::for_rpm(budget.create_rpm)),
            budget,
            client,
            pacer: Pacer::per_minute(query_rpm),
            health: health::Health::default(),
        }
    }
}

/// One MiniMax account's state as this node's engine sees it, for the admin view.
#[derive(Clone, Debug)]
pub struct UpstreamState {
    /// Name, create budget and in-flight cap, as configured.
    pub budget: UpstreamBudget,
    /// Out of rotation by the engine's own bench (operator holds are in the store).
    pub out_of_rotation: Option<health::OutOfRotation>,
    /// Errors answered over the last hour, by code.
    pub errors_last_hour: std::collections::BTreeMap<String, u64>,
}

/// Everything the engine needs, shared by its loops and steps.
pub struct Engine {
    store: Arc<dyn Store>,
    config: EngineConfig,
    upstreams: Vec<Upstream>,
    results: Arc<dyn ResultStore>,
    /// Result, upload and callback URLs.
    links: Links,
    /// Whether MiniMax gets a callback URL.
    callbacks: bool,
    /// Fetches client-supplied image URLs through the SSRF guard.
    images: reqwest::Client,
    allow_private_urls: bool,
    /// Whether the store answers; no work is claimed while it does not.
    readiness: Readiness,
    /// How often expired uploads are deleted.
    upload_reap_interval: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Wakes the dispatcher (a new job, a freed slot).
    wake: Notify,
    /// Wakes the poller (a job became due now).
    poll_wake: Notify,
    /// Wakes the webhook worker (a transition may have raised an event).
    webhook_wake: Arc<Notify>,
    /// MiniMax accounts held out of rotation by operators, as last read.
    holds: health::Holds,
    /// Round-robin position across customer accounts.
    last_served: Mutex<Option<AccountId>>,
    /// Jobs with a step running in this process, so the poller does not start a second.
    busy: Mutex<HashSet<JobId>>,
    /// Failed download attempts per job (reset by a restart, bounded by the deadline).
    download_failures: Mutex<HashMap<JobId, u32>>,
    submits: Arc<Semaphore>,
    polls: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
}

/// Handles for stopping the engine.
pub struct EngineHandle {
    /// The engine.
    pub engine: Arc<Engine>,
    background: Background,
}

impl EngineHandle {
    /// Stops claiming work and waits (up to `grace`) for steps in flight. A step cut
    /// short is safe: its lease expires and the job is taken up again after a restart.
    pub async fn shutdown(self, grace: Duration) {
        self.background.shutdown(grace).await;
    }
}

/// What [`Engine::new`] needs.
pub struct EngineParts {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Engine settings.
    pub config: EngineConfig,
    /// MiniMax accounts.
    pub upstreams: Vec<Upstream>,
    /// Result storage (the app state's).
    pub results: Arc<dyn ResultStore>,
    /// Result, upload and callback URLs (the app state's).
    pub links: Links,
    /// Whether to hand MiniMax a callback URL.
    pub callbacks: bool,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Shared with the webhook worker.
    pub webhook_wake: Arc<Notify>,
    /// Whether client-supplied URLs may reach private addresses.
    pub allow_private_urls: bool,
    /// The proxy for outbound requests (`egress.proxy_url`), if any.
    pub proxy_url: Option<String>,
    /// Whether the store answers.
    pub readiness: Readiness,
    /// How often expired uploads are deleted (`uploads.reap_interval_ms`).
    pub upload_reap_interval: Duration,
}

impl Engine {
    /// Builds the engine.
    pub fn new(parts: EngineParts) -> Arc<Self> {
        let allow_private_urls = parts.allow_private_urls;
        let mut upstreams = parts.upstreams;
        for upstream in &mut upstreams {
            parts.metrics.add_upstream(&upstream.budget.name);
            upstream.client.record_calls_in(parts.metrics.clone());
        }
        let c = &parts.config;
        Arc::new(Self {
            images: crate::guard::guarded_client(image_timeout(c), allow_private_urls, 3, parts.proxy_url.as_deref()),
            submits: Arc::new(Semaphore::new(c.max_concurrent_submits)),
            polls: Arc::new(Semaphore::new(c.max_concurrent_polls)),
            downloads: Arc::new(Semaphore::new(c.max_concurrent_downloads)),
            store: parts.store,
            upstreams,
            results: parts.results,
            links: parts.links,
            callbacks: parts.callbacks,
            allow_private_urls,
            metrics: parts.metrics,
            config: parts.config,
            wake: Notify::new(),
            poll_wake: Notify::new(),
            webhook_wake: parts.webhook_wake,
            readiness: parts.readiness,
            upload_reap_interval: parts.upload_reap_interval,
            holds: health::Holds::default(),
            last_served: Mutex::new(None),
            busy: Mutex::new(HashSet::new()),
            download_failures: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the loops.
    pub fn start(self: &Arc<Self>) -> EngineHandle {
        let background = Background::new("engine steps");
        let (stop, tasks) = (&background.stop, &background.tasks);
        tasks.spawn(self.clone().dispatch_loop(stop.clone(), tasks.clone()));
        tasks.spawn(self.clone().poll_loop(stop.clone(), tasks.clone()));
        tasks.spawn(self.clone().reap_loop(stop.clone()));
        tasks.spawn(self.clone().reap_uploads_loop(stop.clone()));
        EngineHandle { engine: self.clone(), background }
    }

    /// Tells the dispatcher there may be new work.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The URLs this server hands out.
    pub fn links(&self) -> &Links {
        &self.links
    }

    fn now_ms() -> i64 {
        crate::now_ms()
    }

    /// Applies a transition; one that happened may have raised a client webhook event,
    /// so the webhook worker is woken.
    async fn apply(&self, t: Transition) -> store::Result<Option<EngineJob>> {
        let moved = self.store.transition(t).await?;
        if moved.is_some() {
            self.webhook_wake.notify_one();
        }
        Ok(moved)
    }

    fn image_timeout(&self) -> Duration {
        image_timeout(&self.config)
    }

    fn upstream(&self, name: Option<&str>) -> Option<&Upstream> {
        name.and_then(|n| self.upstreams.iter().find(|u| u.budget.name == n))
    }

    fn mark_busy(&self, id: JobId) -> bool {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(id)
    }

    fn unmark_busy(&self, id: JobId) {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Exponential back-off with ±20% jitter for the `attempt`-th retry (1-based).
    fn backoff_ms(&self, attempt: u32) -> i64 {
        let base = self.config.retry_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = base.min(self.config.retry_max_ms) as f64;
        (capped * rand::random_range(0.8..1.2)) as i64
    }

    /// How long a [`policy::Delay`] is, in milliseconds.
    fn delay_ms(&self, delay: policy::Delay) -> i64 {
        match delay {
            policy::Delay::Now => 0,
            policy::Delay::Backoff { attempt, at_least_ms } => self.backoff_ms(attempt).max(at_least_ms),
        }
    }

    /// Takes `upstream` out of rotation for `engine.account_cooloff_ms`, saying why.
    fn bench(&self, upstream: &Upstream, why: &dyn std::fmt::Display) {
        upstream.health.bench(Duration::from_millis(self.config.account_cooloff_ms), &why.to_string());
        self.metrics.inc("upstream_accounts_benched_total", &[("upstream", &upstream.budget.name)]);
    }

    /// Counts an error MiniMax answered, in the metrics and in the account's health.
    fn count_upstream_error(&self, upstream: &str, code: &str) {
        self.metrics.inc("upstream_errors_total", &[("upstream", upstream), ("code", code)]);
        if let Some(u) = self.upstream(Some(upstream)) {
            u.health.record_error(code);
        }
    }

    /// Whether `upstream` may take work now: neither benched by the engine nor held by
    /// an operator (as of the last read of the holds).
    fn in_rotation(&self, upstream: &Upstream) -> bool {
        upstream.health.benched(&upstream.budget.name).is_none() && self.holds.on(&upstream.budget.name).is_none()
    }

    /// Makes the engine read the operator holds again before its next claim.
    pub fn holds_changed(&self) {
        self.holds.forget();
        self.wake.notify_one();
    }

    /// Every configured MiniMax account's state on this node.
    pub fn upstream_states(&self) -> Vec<UpstreamState> {
        self.upstreams
            .iter()
            .map(|u| UpstreamState {
                budget: u.budget.clone(),
                out_of_rotation: u.health.benched(&u.budget.name),
                errors_last_hour: u.health.errors_last_hour(),
            })
            .collect()
    }

    async fn requeue(&self, job: &EngineJob, lease: Option<i64>, not_before_ms: i64, why: &str) {
        let t = Transition::new(job.record.id, Stage::Submitting, Stage::Queued).if_due_at(lease).due_at(not_before_ms);
        match self.apply(t).await {
            Ok(Some(_)) => tracing::info!(job.id = %job.record.id, reason = why, "job back in the queue"),
            Ok(None) => {}
            Err(e) => tracing::error!(job.id = %job.record.id, error = %e, "could not requeue; the lease will"),
        }
    }

    /// Fails a job from `from` with a refund, and counts it.
    async fn fail(&self, job: &EngineJob, from: Stage, if_due: Option<i64>, message: String, reason: &str) {
        let t = Transition::new(job.record.id, from, Stage::Failed).if_due_at(if_due).error(message);
        match self.apply(t).await {
            Ok(Some(done)) => {
                self.metrics.inc("jobs_failed_total", &[("reason", reason)]);
                self.record_job_end(job, "failed");
                if matches!(from, Stage::Queued | Stage::Submitting) {
                    self.drop_job_inputs(&job.record).await;
                }
                if job.record.credit_cost > 0 {
                    self.metrics.inc("refunds_total", &[]);
                }
                tracing::info!(
                    job.id = %job.record.id, upstream.task_id = done.upstream_task_id.as_deref().unwrap_or(""),
                    reason, refunded = job.record.credit_cost, "job failed"
                );
                self.notify();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(job.id = %job.record.id, error = %e, "could not fail the job; it will be retried")
            }
        }
    }

    /// Records how long `job` took from its acceptance to its end. Wall clock, like the
    /// `created_at` it starts from: the job may have been accepted by another node.
    fn record_job_end(&self, job: &EngineJob, outcome: &str) {
        let took_ms = (Self::now_ms() - job.record.created_at_ms).max(0) as u64;
        self.metrics.observe(
            "job_duration_seconds",
            &[("model", &job.record.model), ("outcome", outcome)],
            Duration::from_millis(took_ms),
        );
    }

    /// Create calls each upstream account may make now, for the `upstream_creates_left` gauge.
    pub fn creates_left(&self) -> Vec<(String, u32)> {
        self.upstreams
            .iter()
            .map(|u| (u.budget.name.clone(), u.creates.lock().unwrap_or_else(|p| p.into_inner()).available()))
            .collect()
    }

    /// Whether the job has run longer than `engine.job_deadline_ms` since it started.
    fn deadline_passed(&self, job: &EngineJob) -> bool {
        let started = job.started_at_ms.unwrap_or(job.record.created_at_ms);
        Self::now_ms() > started + self.config.job_deadline_ms as i64
    }
}

/// Timeout of one input image fetch: the query timeout, but at least 30 s for 20 MB.
fn image_timeout(config: &EngineConfig) -> Duration {
    Duration::from_millis(config.query_timeout_ms.max(30_000))
}
