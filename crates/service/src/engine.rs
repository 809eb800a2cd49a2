//! The job engine: takes QUEUED jobs to MiniMax and back.
//!
//! Three loops share one [`Engine`]:
//! - the **dispatcher** claims queued jobs (fairly across customer accounts, within
//!   every MiniMax account's per-minute budget and in-flight cap, see
//!   `Store::claim_jobs`) and submits each one ([`Engine::submit`]);
//! - the **poller** asks the store for work whose due time has come (a running task's
//!   next poll, an expired lease) and runs the step for its stage. The schedule lives in
//!   an index, not in a timer per job, so 100,000 jobs in flight cost only the polls
//!   actually due;
//! - the **reaper** deletes result videos past their retention; a second one deletes
//!   expired uploads, more often, since they live for hours rather than days.
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
pub mod inputs;
pub mod metrics;
pub mod minimax;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{AccountId, JobId, ModelId, Resolution, Stage, UploadId};
use futures_util::StreamExt;
use serde_json::json;
use store::{CallReservation, ClaimRequest, ClaimedJob, EngineJob, Store, Transition, UpstreamBudget};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background::Background;
use crate::config::EngineConfig;
use crate::readiness::Readiness;
use crate::results::{Object, ResultStore};
use crate::signing::{Purpose, Signer};
use minimax::{CreateTask, MiniMaxClient, TaskState, UpstreamError};

pub use metrics::Metrics;

/// The window MiniMax's per-minute budgets are counted over. One second more than a
/// minute, so that network delays between our count and MiniMax's cannot squeeze one
/// call too many into MiniMax's own window.
const BUDGET_WINDOW_MS: i64 = 61_000;
/// How often the dispatcher looks for work when nothing wakes it.
const DISPATCH_TICK: Duration = Duration::from_millis(500);
/// The shortest pause between two dispatch rounds.
const DISPATCH_MIN_GAP: Duration = Duration::from_millis(20);
/// The poller's longest sleep.
const POLL_TICK: Duration = Duration::from_millis(1000);
/// Due jobs fetched per poller round.
const POLL_BATCH: usize = 256;
/// How often the reaper runs.
const REAP_INTERVAL: Duration = Duration::from_secs(3600);
/// How far a result copy's lease reaches. A copy may take up to `download_timeout_ms`
/// (10 min), but a lease that long would leave a dead node's copies untouched for as
/// long; instead the copying process renews a short lease while it works.
const DOWNLOAD_LEASE: Duration = Duration::from_secs(30);
/// How often a copy in progress renews its lease.
const DOWNLOAD_LEASE_RENEWAL: Duration = Duration::from_secs(10);

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
    /// Out of rotation until then, after an account problem.
    benched_until: Mutex<Option<Instant>>,
}

impl Upstream {
    /// An upstream account.
    pub fn new(budget: UpstreamBudget, client: MiniMaxClient, query_rpm: u32) -> Self {
        Self {
            creates: Mutex::new(TokenBucket::for_rpm(budget.create_rpm)),
            budget,
            client,
            pacer: Pacer::per_minute(query_rpm),
            benched_until: Mutex::new(None),
        }
    }

    fn in_rotation(&self) -> bool {
        let mut benched = self.benched_until.lock().unwrap_or_else(|p| p.into_inner());
        match *benched {
            Some(until) if until > Instant::now() => false,
            Some(_) => {
                *benched = None;
                tracing::info!(upstream = %self.budget.name, "MiniMax account back in rotation");
                true
            }
            None => true,
        }
    }
}

/// Create calls over time: a bucket of `capacity` tokens refilled at the account's
/// per-minute rate. MiniMax documents a "rate growth limit" (2045) against sudden
/// spikes, so a budget of 20 a minute becomes a burst of a few and then one every three
/// seconds, not twenty at once followed by a minute of silence.
struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last: Instant,
}

impl TokenBucket {
    fn for_rpm(rpm: u32) -> Self {
        // A tenth of a minute's budget may go at once, at least one call.
        let capacity = (f64::from(rpm) / 6.0).max(1.0);
        Self { tokens: capacity, capacity, per_ms: f64::from(rpm) / 60_000.0, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = now;
    }

    /// Whole tokens available now.
    fn available(&mut self) -> u32 {
        self.refill();
        self.tokens.floor().max(0.0) as u32
    }

    /// Spends `n` tokens (never more than are available).
    fn spend(&mut self, n: u32) {
        self.refill();
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }
}

/// Spaces calls evenly: one every `interval`, without bursts.
struct Pacer {
    next: Mutex<Instant>,
    interval: Duration,
}

impl Pacer {
    fn per_minute(rpm: u32) -> Self {
        Self { next: Mutex::new(Instant::now()), interval: Duration::from_secs(60) / rpm.max(1) }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Everything the engine needs, shared by its loops and steps.
pub struct Engine {
    store: Arc<dyn Store>,
    config: EngineConfig,
    upstreams: Vec<Upstream>,
    results: Arc<dyn ResultStore>,
    signer: Signer,
    /// Base of result URLs.
    public_base_url: String,
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
    /// Result storage.
    pub results: Arc<dyn ResultStore>,
    /// Token signer.
    pub signer: Signer,
    /// Base of result URLs (the public URL, or the listen address).
    pub public_base_url: String,
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
        let c = &parts.config;
        Arc::new(Self {
            images: crate::guard::guarded_client(image_timeout(c), allow_private_urls, 3, parts.proxy_url.as_deref()),
            submits: Arc::new(Semaphore::new(c.max_concurrent_submits)),
            polls: Arc::new(Semaphore::new(c.max_concurrent_polls)),
            downloads: Arc::new(Semaphore::new(c.max_concurrent_downloads)),
            store: parts.store,
            upstreams: parts.upstreams,
            results: parts.results,
            signer: parts.signer,
            public_base_url: parts.public_base_url,
            callbacks: parts.callbacks,
            allow_private_urls,
            metrics: parts.metrics,
            config: parts.config,
            wake: Notify::new(),
            poll_wake: Notify::new(),
            webhook_wake: parts.webhook_wake,
            readiness: parts.readiness,
            upload_reap_interval: parts.upload_reap_interval,
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

    /// The URL a completed job's video is served at.
    pub fn result_url(&self, job: JobId) -> String {
        format!(
            "{}/v2/results/{job}/{}.mp4",
            self.public_base_url,
            self.signer.token(Purpose::Result, &job.to_string())
        )
    }

    /// The URL an upload is served at; also what a job names to use it (see
    /// [`Engine::upload_in`]). The extension only helps clients that guess by name.
    pub fn upload_url(&self, id: UploadId, content_type: &str) -> String {
        let ext = match content_type {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            "image/webp" => "webp",
            _ => "bin",
        };
        format!(
            "{}/v2/uploads/{id}/{}.{ext}",
            self.public_base_url,
            self.signer.token(Purpose::Upload, &id.to_string())
        )
    }

    /// What every one of this server's upload URLs starts with.
    pub fn upload_url_prefix(&self) -> String {
        format!("{}/v2/uploads/", self.public_base_url)
    }

    /// The upload `url` names, when it is one of this server's upload URLs with a valid
    /// token: `Some(None)` for one of ours whose id or token is wrong, `None` for any
    /// other URL.
    pub fn upload_in(&self, url: &str) -> Option<Option<UploadId>> {
        let rest = url.strip_prefix(&self.public_base_url)?.strip_prefix("/v2/uploads/")?;
        let parsed = (|| {
            let (id, file) = rest.split_once('/')?;
            let token = file.split_once('.').map_or(file, |(token, _)| token);
            let upload: UploadId = id.parse().ok()?;
            self.signer.verify(Purpose::Upload, id, token).then_some(upload)
        })();
        Some(parsed)
    }

    /// The result store.
    pub fn results(&self) -> &Arc<dyn ResultStore> {
        &self.results
    }

    /// The token signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
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

    // ----- dispatcher -----

    async fn dispatch_loop(self: Arc<Self>, stop: CancellationToken, tasks: TaskTracker) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(DISPATCH_TICK) => {}
            }
            if let Err(e) = self.dispatch_once(&stop, &tasks).await {
                tracing::warn!(error = %e, "dispatch round failed; retrying shortly");
            }
            // Under a burst of submissions every request wakes the dispatcher; rounds a
            // few milliseconds apart serve them just as well and keep claims from
            // crowding the writer that the submissions themselves need.
            tokio::time::sleep(DISPATCH_MIN_GAP).await;
        }
    }

    async fn dispatch_once(self: &Arc<Self>, stop: &CancellationToken, tasks: &TaskTracker) -> store::Result<()> {
        loop {
            let free = self.submits.available_permits();
            let upstreams: Vec<UpstreamBudget> = self
                .upstreams
                .iter()
                .filter(|u| u.in_rotation())
                .map(|u| UpstreamBudget {
                    claimable_now: u.creates.lock().unwrap_or_else(|p| p.into_inner()).available(),
                    ..u.budget.clone()
                })
                .filter(|b| b.claimable_now > 0)
                .collect();
            if free == 0 || upstreams.is_empty() || stop.is_cancelled() || !self.readiness.is_ready() {
                return Ok(());
            }
            let after_account = *self.last_served.lock().unwrap_or_else(|p| p.into_inner());
            // Long enough for both image fetches and the create call, with room to record
            // the outcome; only a dead or hung process lets it run out.
            let lease_ms =
                (self.config.submit_timeout_ms + 2 * self.image_timeout().as_millis() as u64 + 30_000) as i64;
            let claimed =
                self.store.claim_jobs(ClaimRequest { upstreams, max_jobs: free, lease_ms, after_account }).await?;
            if claimed.is_empty() {
                return Ok(());
            }
            if let Some(last) = claimed.last() {
                *self.last_served.lock().unwrap_or_else(|p| p.into_inner()) = Some(last.job.record.account_id);
            }
            for upstream in &self.upstreams {
                let taken = claimed.iter().filter(|c| c.upstream == upstream.budget.name).count() as u32;
                upstream.creates.lock().unwrap_or_else(|p| p.into_inner()).spend(taken);
            }
            for job in claimed {
                let Ok(permit) = self.submits.clone().try_acquire_owned() else {
                    // Cannot happen (we claimed at most `free`), but never run unbounded.
                    tracing::warn!(job.id = %job.job.record.id, "no submit slot; the job's lease will return it");
                    continue;
                };
                self.mark_busy(job.job.record.id);
                let engine = self.clone();
                tasks.spawn(async move {
                    let id = job.job.record.id;
                    engine.submit(job).await;
                    engine.unmark_busy(id);
                    drop(permit);
                });
            }
        }
    }

    /// Builds the create call for a claimed job, reserves it against the upstream's
    /// budget, sends it, and records what happened.
    async fn submit(self: &Arc<Self>, claimed: ClaimedJob) {
        let ClaimedJob { job, upstream: upstream_name } = claimed;
        let id = job.record.id;
        let lease = job.due_at_ms;
        let Some(upstream) = self.upstream(Some(&upstream_name)) else { return };
        let task = match self.create_task(&job).await {
            Ok(task) => task,
            Err(problem) => {
                tracing::info!(job.id = %id, reason = %problem, "input refused; failing the job");
                self.fail(&job, Stage::Submitting, lease, problem, "input").await;
                return;
            }
        };
        // Jobs claimed in the same round as one that found this account broken must not
        // be sent to it as well.
        if !upstream.in_rotation() {
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
        self.metrics.inc("upstream_errors_total", &[("upstream", name), ("code", &err.code_label())]);
        let now = Self::now_ms();
        match &err {
            UpstreamError::RateLimited { .. } => {
                tracing::warn!(job.id = %id, upstream = %name, error = %err, "MiniMax rate limit; the job stays queued");
                // MiniMax counts per minute: try again once its window has moved on.
                let retry = now + self.backoff_ms(attempts).max(10_000);
                self.requeue(job, lease, retry, "rate limited").await;
            }
            UpstreamError::Account { .. } => {
                tracing::error!(
                    job.id = %id, upstream = %name, error = %err,
                    "MiniMax account problem; taking the account out of rotation"
                );
                self.bench(upstream);
                self.requeue(job, lease, now, "upstream account out of rotation").await;
            }
            UpstreamError::Rejected { .. } => {
                tracing::info!(job.id = %id, upstream = %name, error = %err, "MiniMax refused the job");
                self.fail(
                    job,
                    Stage::Submitting,
                    lease,
                    err.client_message(),
                    &format!("rejected_{}", err.code_label()),
                )
                .await;
            }
            UpstreamError::Transient { .. } | UpstreamError::Ambiguous { .. } => {
                if matches!(err, UpstreamError::Ambiguous { .. }) {
                    tracing::warn!(
                        job.id = %id, upstream = %name, error = %err,
                        "create outcome unknown; retrying (MiniMax may run an orphaned task; the customer is not charged again)"
                    );
                } else {
                    tracing::warn!(job.id = %id, upstream = %name, error = %err, attempt = attempts, "transient MiniMax error");
                }
                if attempts >= self.config.max_submit_attempts {
                    self.fail(job, Stage::Submitting, lease, err.client_message(), "upstream_unavailable").await;
                } else {
                    self.requeue(job, lease, now + self.backoff_ms(attempts), "transient error").await;
                }
            }
        }
    }

    fn bench(&self, upstream: &Upstream) {
        *upstream.benched_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + Duration::from_millis(self.config.account_cooloff_ms));
        self.metrics.inc("upstream_accounts_benched_total", &[("upstream", &upstream.budget.name)]);
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

    /// The data URL of input `field` of job `id`. One of this server's upload URLs is
    /// read from the job's copy in the result store, never over HTTP, so the SSRF guard
    /// stays closed to loopback; any other URL is fetched through the guard.
    async fn input_image(&self, id: JobId, image: &domain::ImageRef, field: &'static str) -> Result<String, String> {
        let max = self.config.max_input_image_bytes;
        let is_upload = matches!(image, domain::ImageRef::Url(url) if self.upload_in(url).is_some());
        if !is_upload {
            return inputs::prepare(&self.images, image, field, max, self.allow_private_urls).await;
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
        inputs::data_url(&bytes, field, max)
    }

    /// Deletes job `job`'s copies of the uploads it names, once it no longer needs them
    /// (its task was created upstream, or it failed or was cancelled before).
    pub async fn drop_job_inputs(&self, job: &store::JobRecord) {
        let Ok(input) = serde_json::from_str::<serde_json::Value>(job.input.get()) else { return };
        let Ok(req) = domain::validation::parse_generate(&input, domain::validation::UrlPolicy::AllowPrivate) else {
            return;
        };
        for (field, image) in [("image", &req.image), ("end_image", &req.end_image)] {
            let Some(domain::ImageRef::Url(url)) = image else { continue };
            if self.upload_in(url).is_none() {
                continue;
            }
            if let Err(e) = self.results.delete_object(Object::JobInput(job.id, field)).await {
                tracing::warn!(job.id = %job.id, error = %e, "could not delete the job's copy of an upload");
            }
        }
    }

    /// MiniMax's request for a job: our stored input in MiniMax's vocabulary, images
    /// fetched and checked.
    async fn create_task(&self, job: &EngineJob) -> Result<CreateTask, String> {
        let input: serde_json::Value =
            serde_json::from_str(job.record.input.get()).map_err(|_| "the stored request is unreadable".to_string())?;
        // Private addresses pass this re-read: the fetch below applies the current
        // setting through the guard and says precisely why it refuses.
        let req = domain::validation::parse_generate(&input, domain::validation::UrlPolicy::AllowPrivate)
            .map_err(|_| "the stored request is invalid".to_string())?;
        let first_frame_image = match &req.image {
            Some(image) => Some(self.input_image(job.record.id, image, "image").await?),
            None => None,
        };
        let last_frame_image = match &req.end_image {
            Some(image) => Some(self.input_image(job.record.id, image, "end_image").await?),
            None => None,
        };
        let callback_url = self.callbacks.then(|| {
            let id = job.record.id.to_string();
            format!("{}/v1/minimax/callback/{id}/{}", self.public_base_url, self.signer.token(Purpose::Callback, &id))
        });
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

    // ----- poller -----

    async fn poll_loop(self: Arc<Self>, stop: CancellationToken, tasks: TaskTracker) {
        loop {
            let sleep = match self.poll_once(&tasks).await {
                Ok(sleep) => sleep,
                Err(e) => {
                    tracing::warn!(error = %e, "poll round failed; retrying shortly");
                    POLL_TICK
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.poll_wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Starts a step for every due job not already being worked on; returns how long
    /// to sleep before the next round.
    async fn poll_once(self: &Arc<Self>, tasks: &TaskTracker) -> store::Result<Duration> {
        if !self.readiness.is_ready() {
            return Ok(POLL_TICK);
        }
        let now = Self::now_ms();
        let due = self.store.due_jobs(now, POLL_BATCH).await?;
        let mut started = 0;
        for job in due {
            if !self.mark_busy(job.record.id) {
                continue;
            }
            let semaphore = match job.stage {
                Stage::Downloading => &self.downloads,
                Stage::Submitting => &self.submits,
                _ => &self.polls,
            };
            let permit = match semaphore.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.unmark_busy(job.record.id);
                    continue;
                }
            };
            started += 1;
            let engine = self.clone();
            tasks.spawn(async move {
                let id = job.record.id;
                engine.step(job).await;
                engine.unmark_busy(id);
                drop(permit);
                // A slot is free: due work waiting for one starts now, not at the next tick.
                engine.poll_wake.notify_one();
            });
        }
        if started > 0 {
            return Ok(Duration::from_millis(10));
        }
        let next = self.store.next_due_at().await?;
        Ok(match next {
            Some(at) if at > now => Duration::from_millis((at - now) as u64).min(POLL_TICK),
            // Due but all busy or out of permits: look again soon.
            Some(_) => Duration::from_millis(50),
            None => POLL_TICK,
        })
    }

    /// Runs the step a due job's stage calls for.
    async fn step(self: &Arc<Self>, job: EngineJob) {
        match job.stage {
            Stage::Submitting => self.recover_submit(job).await,
            Stage::Running => self.poll(job).await,
            Stage::Downloading => {
                let lease = Self::now_ms() + self.download_lease_ms();
                let t = Transition::new(job.record.id, Stage::Downloading, Stage::Downloading)
                    .if_due_at(job.due_at_ms)
                    .due_at(lease);
                if let Ok(Some(job)) = self.apply(t).await {
                    self.mirror(job, lease).await;
                }
            }
            _ => {}
        }
    }

    /// A submit whose lease ran out: this process (or a previous one) died or hung
    /// mid-call, so whether MiniMax created the task is unknown. Retry it.
    async fn recover_submit(&self, job: EngineJob) {
        let id = job.record.id;
        self.metrics.inc(
            "upstream_errors_total",
            &[("upstream", job.upstream_account.as_deref().unwrap_or("")), ("code", "unknown_outcome")],
        );
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

    fn download_lease_ms(&self) -> i64 {
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
    ) -> Option<Result<u64, String>> {
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

    fn deadline_passed(&self, job: &EngineJob) -> bool {
        let started = job.started_at_ms.unwrap_or(job.record.created_at_ms);
        Self::now_ms() > started + self.config.job_deadline_ms as i64
    }

    /// Polls a running task once and moves the job on.
    async fn poll(self: &Arc<Self>, job: EngineJob) {
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
                self.metrics
                    .inc("upstream_errors_total", &[("upstream", &upstream.budget.name), ("code", &err.code_label())]);
                tracing::info!(job.id = %id, upstream.task_id = %task_id, error = %err, "MiniMax task failed");
                self.fail(
                    &job,
                    Stage::Running,
                    Some(lease),
                    err.client_message(),
                    &format!("task_{}", err.code_label()),
                )
                .await;
                return;
            }
            Err(err) => {
                self.metrics
                    .inc("upstream_errors_total", &[("upstream", &upstream.budget.name), ("code", &err.code_label())]);
                tracing::warn!(job.id = %id, upstream.task_id = %task_id, error = %err, "poll failed; polling again later");
                match err {
                    UpstreamError::Account { .. } => self.bench(upstream),
                    UpstreamError::Rejected { .. } => {
                        self.fail(&job, Stage::Running, Some(lease), err.client_message(), "query_rejected").await;
                        return;
                    }
                    _ => {}
                }
                reschedule(now + (interval * 2).max(self.backoff_ms(1)), None)
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
        self.metrics.inc(
            "upstream_errors_total",
            &[("upstream", job.upstream_account.as_deref().unwrap_or("")), ("code", &err.code_label())],
        );
        self.fail(job, Stage::Running, None, err.client_message(), &format!("task_{}", err.code_label())).await;
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

    // ----- result mirroring -----

    /// Copies a finished task's video into the result store and completes the job; on
    /// failure, schedules another try or, after the last one, fails the job.
    async fn mirror(&self, job: EngineJob, mut lease: i64) {
        let id = job.record.id;
        let task_id = job.upstream_task_id.clone().unwrap_or_default();
        let outcome = match self.upstream(job.upstream_account.as_deref()) {
            None => Err("the MiniMax account that ran this job is no longer configured".to_string()),
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
                t.result = Some(json!({ "videoUrl": self.result_url(id) }));
                t.result_bytes = Some(bytes as i64);
                match self.apply(t).await {
                    Ok(Some(_)) => {
                        self.download_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        self.metrics.inc("jobs_completed_total", &[]);
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
    async fn copy_result(&self, job: &EngineJob, upstream: &Upstream) -> Result<u64, String> {
        let file_id = job.upstream_file_id.as_deref().ok_or("no file id recorded")?;
        upstream.pacer.wait().await;
        let links = upstream.client.retrieve(file_id).await.map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        for url in std::iter::once(&links.download_url).chain(links.backup_download_url.as_ref()) {
            match self.download(job.record.id, upstream.client.http(), url).await {
                Ok(bytes) => return Ok(bytes),
                Err(p) => problems.push(p),
            }
        }
        Err(problems.join("; "))
    }

    async fn download(&self, id: JobId, http: &reqwest::Client, url: &str) -> Result<u64, String> {
        let max = self.config.max_result_bytes;
        let response = http
            .get(url)
            .timeout(Duration::from_millis(self.config.download_timeout_ms))
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        if !response.status().is_success() {
            // 403 is how an expired signed link answers; the next try retrieves a new one.
            return Err(format!("download answered HTTP {}", response.status()));
        }
        let announced = response.content_length();
        if announced.is_some_and(|n| n > max) {
            return Err(format!("the video is larger than {max} bytes"));
        }
        let mut writer = self.results.begin(id).await.map_err(|e| format!("cannot store the video: {e}"))?;
        let mut stream = response.bytes_stream();
        let mut received: u64 = 0;
        let mut head = Vec::with_capacity(12);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("download interrupted after {received} bytes: {e}"))?;
            if head.len() < 12 {
                head.extend_from_slice(&chunk[..chunk.len().min(12 - head.len())]);
            }
            received += chunk.len() as u64;
            if received > max {
                return Err(format!("the video is larger than {max} bytes"));
            }
            writer.write(&chunk).await.map_err(|e| format!("cannot store the video: {e}"))?;
        }
        if let Some(n) = announced {
            if n != received {
                return Err(format!("download truncated: {received} of {n} bytes"));
            }
        }
        // Every MP4 starts with a box whose type (bytes 4..8) is `ftyp`.
        if received == 0 || head.get(4..8) != Some(b"ftyp") {
            return Err("the download is not an MP4 file".into());
        }
        writer.finish().await.map_err(|e| format!("cannot store the video: {e}"))
    }

    // ----- reaper -----

    async fn reap_loop(self: Arc<Self>, stop: CancellationToken) {
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
    pub async fn reap_once(&self) -> Result<usize, String> {
        let cutoff = Self::now_ms() - i64::from(self.config.result_retention_days) * 86_400_000;
        let mut reaped = 0;
        loop {
            let ids = self.store.results_to_expire(cutoff, 500).await.map_err(|e| e.to_string())?;
            if ids.is_empty() {
                return Ok(reaped);
            }
            for id in ids {
                // Delete first: a crash in between leaves a job that is reaped again, never
                // a job that says its video is gone while the file stays.
                self.results.delete(id).await.map_err(|e| e.to_string())?;
                self.store.mark_expired(id).await.map_err(|e| e.to_string())?;
                tracing::info!(job.id = %id, "result expired and deleted");
                reaped += 1;
            }
        }
    }
}

impl Engine {
    async fn reap_uploads_loop(self: Arc<Self>, stop: CancellationToken) {
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
    pub async fn reap_uploads_once(&self) -> Result<usize, String> {
        let mut reaped = 0;
        loop {
            let ids = self.store.uploads_to_reap(Self::now_ms(), 500).await.map_err(|e| e.to_string())?;
            if ids.is_empty() {
                return Ok(reaped);
            }
            for id in ids {
                // Bytes first: a crash in between leaves a record that is reaped again,
                // never bytes that nothing points at.
                self.results.delete_object(Object::Upload(id)).await.map_err(|e| e.to_string())?;
                self.store.delete_upload(id).await.map_err(|e| e.to_string())?;
                tracing::info!(upload.id = %id, "upload expired and deleted");
                reaped += 1;
            }
        }
    }
}

/// Timeout of one input image fetch: the query timeout, but at least 30 s for 20 MB.
fn image_timeout(config: &EngineConfig) -> Duration {
    Duration::from_millis(config.query_timeout_ms.max(30_000))
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
