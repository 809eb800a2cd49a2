//! The storage interface of reelgate: the [`Store`] trait, the records it returns and
//! [`StoreError`].
//!
//! The trait speaks domain types only; each backend keeps its row types private. Every
//! credit movement a backend makes must be a ledger row written in the same
//! transaction as the balance change, and no operation may acknowledge a write before
//! it is durable.

#![forbid(unsafe_code)]

mod admin;
mod engine;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, JobStatus, KeyDigest, ModelId, UploadId, WebhookStatus};
use serde_json::value::RawValue;
use serde_json::Value;

pub use admin::{
    snapshot, AccountPatch, AccountQuery, AdminJobQuery, AdminToken, AdminWrite, AdminWritten, AuditContext,
    AuditRecord, CreditAdjustment, CreditOutcome, NewAccount, Overview, StageChange, UpstreamActivity, UpstreamHold,
    UsageBucket, UsageGroup, UsageQuery, UsageRow,
};
pub use engine::{CallReservation, ClaimRequest, ClaimedJob, EngineJob, QueueDepth, Transition, UpstreamBudget};
pub use webhooks::{
    raised_event, AttemptOutcome, AttemptRecord, RaisedEvent, WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};

/// What can go wrong in a backend, by what the caller can do about it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The named row does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A uniqueness or state rule refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is shutting down; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupt data.
    #[error("store failure: {0}")]
    Internal(String),
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A customer account (Apiframe's team).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Display name.
    pub name: String,
    /// Current balance; always equals the sum of the account's ledger.
    pub credits: i64,
    /// Plan label shown in `/v2/me`.
    pub plan: String,
    /// Jobs allowed in PROCESSING at once.
    pub max_concurrent_jobs: u32,
    /// Contact e-mail set by the operator, if any.
    pub email: Option<String>,
    /// A disabled account's keys are refused with 403; its queued jobs still run.
    pub disabled: bool,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
}

/// An API key as stored: never the secret, only its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Id.
    pub id: ApiKeyId,
    /// Owning account.
    pub account_id: AccountId,
    /// Label given at creation.
    pub name: String,
    /// Contact e-mail shown as the `/v2/me` user.
    pub email: String,
    /// Public prefix (`afk_` + 8 characters).
    pub prefix: String,
    /// SHA-256 of the key.
    pub digest: KeyDigest,
    /// Active, disabled or revoked.
    pub status: ApiKeyStatus,
    /// Whether the key's account is disabled (which refuses the key like a disabled one).
    pub account_disabled: bool,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
}

/// Input for [`Store::create_api_key`].
#[derive(Clone, Debug)]
pub struct NewApiKey {
    /// Attach to this account, or create one when `None`.
    pub account_id: Option<AccountId>,
    /// Name for the key (and for a new account).
    pub name: String,
    /// Contact e-mail.
    pub email: String,
    /// Public prefix.
    pub prefix: String,
    /// SHA-256 of the key.
    pub digest: KeyDigest,
    /// Credits granted to the key's account in the same transaction (ledger row
    /// `grant`), whether the account is new or not; `reelgate keys create` offers them
    /// only for a new account and points to `credits grant` otherwise.
    pub initial_credits: i64,
    /// Plan label for a new account.
    pub plan: String,
    /// Concurrency cap for a new account.
    pub max_concurrent_jobs: u32,
}

/// The kind of a ledger row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    /// Credits added by an operator.
    Grant,
    /// A job's cost taken at submission (negative amount).
    Charge,
    /// A failed or cancelled job's cost given back.
    Refund,
    /// Credits taken away by an operator (negative amount).
    Deduct,
}

impl LedgerKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Charge => "charge",
            Self::Refund => "refund",
            Self::Deduct => "deduct",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "grant" => Self::Grant,
            "charge" => Self::Charge,
            "refund" => Self::Refund,
            "deduct" => Self::Deduct,
            _ => return None,
        })
    }
}

/// One append-only ledger row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Monotonic row id.
    pub id: i64,
    /// Account moved.
    pub account_id: AccountId,
    /// Grant, charge or refund.
    pub kind: LedgerKind,
    /// Signed amount: positive adds credits.
    pub amount: i64,
    /// The job a charge or refund belongs to.
    pub job_id: Option<JobId>,
    /// Free text (grant reason).
    pub note: Option<String>,
    /// The `Idempotency-Key` of an operator's adjustment.
    pub idempotency_key: Option<String>,
    /// Time, unix milliseconds.
    pub created_at_ms: i64,
}

/// Idempotency data attached to a submission.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// SHA-256 of the canonical request body.
    pub fingerprint: [u8; 32],
    /// Replays older than this (unix ms) are forgotten.
    pub not_before_ms: i64,
}

/// A job to insert together with its charge.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Id chosen by the caller.
    pub id: JobId,
    /// Paying account.
    pub account_id: AccountId,
    /// Key that submitted it.
    pub api_key_id: ApiKeyId,
    /// Model.
    pub model: ModelId,
    /// Credits to charge.
    pub cost: i64,
    /// The request as submitted, as compact JSON text, returned as `input`. Serialized by
    /// the caller so the single writer thread does not spend its time on it.
    pub input_json: String,
    /// Webhook destination.
    pub webhook_url: Option<String>,
    /// Subscribed webhook events (wire spellings); `None` means the default set.
    pub webhook_events: Option<Vec<String>>,
    /// Idempotency key, when the client sent one.
    pub idempotency: Option<IdempotencyClaim>,
}

impl NewJob {
    /// The job as [`domain::submission::decide`] sees it.
    pub fn submission(&self) -> domain::submission::Submission<'_> {
        domain::submission::Submission {
            job_id: self.id,
            account_id: self.account_id,
            cost: self.cost,
            key: self.idempotency.as_ref().map(|c| domain::submission::KeyClaim {
                key: &c.key,
                fingerprint: &c.fingerprint,
                not_before_ms: c.not_before_ms,
            }),
        }
    }
}

/// How a submission ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// A new job was inserted and charged.
    Created {
        /// The job.
        job_id: JobId,
        /// Its status (QUEUED).
        status: JobStatus,
    },
    /// The idempotency key matched an earlier identical request: nothing was written.
    Replayed {
        /// The original job.
        job_id: JobId,
        /// Its current status.
        status: JobStatus,
    },
    /// The balance does not cover the cost: nothing was written.
    InsufficientCredits {
        /// The cost.
        required: i64,
        /// The balance.
        available: i64,
    },
    /// The idempotency key was used with a different body: nothing was written.
    IdempotencyMismatch,
}

impl SubmitOutcome {
    /// The outcome a store reports for `decision` on `job`, once the accepted jobs are
    /// written; an unknown account is `NotFound`.
    pub fn decided(decision: domain::submission::Decision, job: &NewJob) -> Result<Self> {
        use domain::submission::Decision;
        Ok(match decision {
            Decision::Accept => Self::Created { job_id: job.id, status: JobStatus::Queued },
            Decision::Replay { job_id, status } => Self::Replayed { job_id, status },
            Decision::Mismatch => Self::IdempotencyMismatch,
            Decision::Insufficient { required, available } => Self::InsufficientCredits { required, available },
            Decision::UnknownAccount => return Err(StoreError::NotFound(format!("account {}", job.account_id))),
        })
    }
}

/// How a cancel request ended.
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// The job was QUEUED and is now CANCELLED, its cost refunded by one ledger row.
    Cancelled(Arc<JobRecord>),
    /// The job had already left QUEUED; nothing was written.
    NotCancellable(JobStatus),
    /// No such job in this account.
    NotFound,
}

/// A job as read back.
#[derive(Clone, Debug)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Owner.
    pub account_id: AccountId,
    /// Submitting key.
    pub api_key_id: ApiKeyId,
    /// Model id as stored (an Apiframe model id).
    pub model: String,
    /// Public status.
    pub status: JobStatus,
    /// 0..=100.
    pub progress: Option<i64>,
    /// Result object (`{"videoUrl": ...}`) when completed.
    pub result: Option<Value>,
    /// Failure reason.
    pub error: Option<String>,
    /// Credits currently charged (0 after a refund).
    pub credit_cost: i64,
    /// Webhook delivery state, `None` without a webhook.
    pub webhook_status: Option<WebhookStatus>,
    /// The request as submitted, kept as JSON text: reads copy it out verbatim
    /// instead of parsing and re-serializing it.
    pub input: Box<RawValue>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// Terminal time, unix milliseconds.
    pub completed_at_ms: Option<i64>,
    /// Whether the result files were purged.
    pub expired: bool,
    /// Time of the latest change to the row, unix milliseconds (by the clock of the node
    /// that wrote it). Engine bookkeeping moves it too, so a change of it is not always a
    /// change a client can see.
    pub updated_at_ms: i64,
}

/// A change to a job, committed: which job, and whose. Announced by the store after the
/// commit, with ids only; whoever cares reads the job (see [`Store::job_changes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobChange {
    /// The job's account.
    pub account_id: AccountId,
    /// The job.
    pub job_id: JobId,
}

/// How many announced changes a [`Store::job_changes`] receiver may fall behind before it
/// skips (and is told so by `RecvError::Lagged`).
pub const JOB_CHANGES_CAPACITY: usize = 8192;

/// Keyset position in the `(created_at desc, id desc)` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobCursor {
    /// Creation time of the last job seen.
    pub created_at_ms: i64,
    /// Id of the last job seen.
    pub id: JobId,
}

/// Filters for [`Store::list_jobs`].
#[derive(Clone, Debug)]
pub struct JobQuery {
    /// Only this account's jobs (always set: listing is never cross-account).
    pub account_id: AccountId,
    /// Only jobs submitted with this key (Apiframe's default `scope=user`).
    pub api_key_id: Option<ApiKeyId>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this model id.
    pub model: Option<String>,
    /// Only this job id.
    pub job_id: Option<JobId>,
    /// Start after this position.
    pub after: Option<JobCursor>,
    /// Page size (1..=100).
    pub limit: u32,
}

/// A file uploaded with `POST /v2/uploads`: what is needed to serve it, to use it as a
/// job input, to answer a retry with the same `Idempotency-Key`, and to reap it. The
/// bytes live in the result store under the upload's id; the URL token is derived from
/// the id with the server's secret, so nothing secret is stored here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRecord {
    /// Id.
    pub id: UploadId,
    /// The account that uploaded it; no other account sees it.
    pub account_id: AccountId,
    /// MIME type decided from the bytes (`image/png`, `image/jpeg`, `image/webp`).
    pub content_type: String,
    /// Size in bytes.
    pub byte_size: i64,
    /// SHA-256 of the bytes: a retry with the same key must send the same bytes.
    pub sha256: Vec<u8>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// From this time on the upload is gone for clients and due for reaping.
    pub expires_at_ms: i64,
}

/// What [`Store::create_upload`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The upload was recorded.
    Created(UploadRecord),
    /// An unexpired upload of the same account already carries this idempotency key;
    /// nothing was written. The caller decides whether it is the same file.
    Existing(UploadRecord),
}

/// The storage backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an API key, and its account when `account_id` is `None`.
    async fn create_api_key(&self, new: NewApiKey) -> Result<(Account, ApiKeyRecord)>;
    /// Every key, or one account's keys, oldest first.
    async fn list_api_keys(&self, account_id: Option<AccountId>) -> Result<Vec<ApiKeyRecord>>;
    /// Changes a key's status. Revoked keys cannot come back.
    async fn set_api_key_status(&self, id: ApiKeyId, status: ApiKeyStatus) -> Result<ApiKeyRecord>;
    /// Looks a key up by digest.
    async fn find_api_key(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>>;

    /// An account by id.
    async fn get_account(&self, id: AccountId) -> Result<Option<Account>>;
    /// Adds credits with a `grant` ledger row; returns the account after.
    async fn grant_credits(&self, id: AccountId, amount: i64, note: Option<String>) -> Result<Account>;
    /// The account's ledger, oldest first.
    async fn ledger(&self, id: AccountId) -> Result<Vec<LedgerEntry>>;
    /// One page of the account's ledger, newest first: rows with an id below `before_id`
    /// (all when `None`), at most `limit + 1` so the caller can tell whether more exist.
    async fn ledger_page(&self, id: AccountId, before_id: Option<i64>, limit: u32) -> Result<Vec<LedgerEntry>>;

    /// Applies an operator's change and writes its audit row, in one transaction.
    async fn admin_write(&self, write: AdminWrite, audit: AuditContext) -> Result<AdminWritten>;
    /// An admin token by digest, revoked or not (the caller refuses revoked ones).
    async fn find_admin_token(&self, digest: &KeyDigest) -> Result<Option<AdminToken>>;
    /// Every admin token, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;
    /// One page of the audit log, newest first: rows with an id below `before_id`, at most
    /// `limit + 1`.
    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>>;
    /// One page of accounts, newest first, at most `limit + 1`.
    async fn list_accounts(&self, query: &AccountQuery) -> Result<Vec<Account>>;
    /// One page of jobs across accounts, newest first, at most `limit + 1`.
    async fn admin_jobs(&self, query: &AdminJobQuery) -> Result<Vec<JobRecord>>;
    /// A job's stage changes, oldest first, starting with its creation.
    async fn job_timeline(&self, id: JobId) -> Result<Vec<StageChange>>;
    /// Usage figures per group and bucket, ordered by bucket then group.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>>;
    /// Create calls in the `window_ms` before `now_ms` and jobs in flight, per upstream
    /// account that has either (others are left out).
    async fn upstream_activity(&self, now_ms: i64, window_ms: i64) -> Result<Vec<UpstreamActivity>>;
    /// Upstream accounts held out of rotation by hand, whose hold lasts beyond `now_ms`.
    async fn upstream_holds(&self, now_ms: i64) -> Result<Vec<UpstreamHold>>;
    /// The console overview's figures as of `now_ms`.
    async fn overview(&self, now_ms: i64) -> Result<Overview>;

    /// Charges and inserts a job in one durable transaction, honouring idempotency.
    async fn submit_job(&self, job: NewJob) -> Result<SubmitOutcome>;
    /// Cancels a job that has not been handed upstream yet: in one transaction, a
    /// compare-and-set from QUEUED to CANCELLED, `credit_cost` to 0, and the cost back to
    /// the account as one `refund` ledger row (unique per job, so never twice).
    async fn cancel_job(&self, account_id: AccountId, id: JobId) -> Result<CancelOutcome>;
    /// A job, only if it belongs to `account_id`.
    async fn get_job(&self, account_id: AccountId, id: JobId) -> Result<Option<Arc<JobRecord>>>;
    /// One page of jobs, newest first; returns at most `limit + 1` rows so the caller
    /// can tell whether more exist.
    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>>;
    /// Jobs of an account (of one key, when `api_key_id` is set) changed at or after
    /// `since_ms` by `updated_at`, oldest change first, at most `limit`: what an event
    /// stream resumed at that time must send again.
    async fn jobs_changed_since(
        &self,
        account_id: AccountId,
        api_key_id: Option<ApiKeyId>,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<JobRecord>>;
    /// Every job change this store commits from now on and, on a shared database, the
    /// changes other processes announce (see the backend). A receiver that falls behind
    /// by [`JOB_CHANGES_CAPACITY`] skips changes and learns so; a process that crashes
    /// between a commit and its announcement loses that announcement, so listeners must
    /// also re-read now and then.
    fn job_changes(&self) -> tokio::sync::broadcast::Receiver<JobChange>;
    /// Distinct model ids among an account's jobs (for `include_models`).
    async fn job_models(&self, account_id: AccountId, api_key_id: Option<ApiKeyId>) -> Result<Vec<String>>;

    /// Takes up to `max_jobs` queued jobs for submission, round-robin across customer
    /// accounts (one job per account per round, oldest first within an account), within
    /// each account's `max_concurrent_jobs` and each upstream account's create budget
    /// and in-flight cap. Each claimed job moves to `Submitting` with a lease.
    async fn claim_jobs(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>>;
    /// Records a create call to `upstream` for `job_id` if fewer than `create_rpm` were
    /// made in the last `window_ms`; the check and the record are one transaction.
    async fn reserve_upstream_call(
        &self,
        upstream: &str,
        job_id: JobId,
        create_rpm: u32,
        window_ms: i64,
    ) -> Result<CallReservation>;
    /// Applies a compare-and-set transition; `None` if the job was not in the expected
    /// stage (or due time): another worker won. Moving to `Failed` or `Cancelled` refunds
    /// the job's cost with one ledger row in the same transaction.
    async fn transition(&self, transition: Transition) -> Result<Option<EngineJob>>;
    /// Active jobs whose due time has come, soonest first.
    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<EngineJob>>;
    /// The earliest due time among active jobs (the poller's schedule). Queued jobs that
    /// are backing off are not counted: the dispatcher, which claims them, looks again
    /// on its own timer.
    async fn next_due_at(&self) -> Result<Option<i64>>;
    /// One job with its engine bookkeeping, whatever its account.
    async fn engine_job(&self, id: JobId) -> Result<Option<EngineJob>>;
    /// How many jobs wait and how many are being worked on.
    async fn queue_depth(&self) -> Result<QueueDepth>;
    /// Completed jobs finished before `before_ms` whose video is still kept, oldest first.
    async fn results_to_expire(&self, before_ms: i64, limit: usize) -> Result<Vec<JobId>>;
    /// Marks a completed job's video as deleted (`expired: true`).
    async fn mark_expired(&self, id: JobId) -> Result<()>;

    /// Takes up to `limit` outbox events that are due (by the store's clock, which wrote
    /// their due times) for delivery, moving each one's due time `lease_ms` ahead so a
    /// crashed attempt is retried, never lost.
    async fn claim_webhooks(&self, limit: usize, lease_ms: i64) -> Result<Vec<WebhookDelivery>>;
    /// Puts claimed events back to be due at `until_ms` without counting an attempt.
    async fn defer_webhooks(&self, event_ids: Vec<String>, until_ms: i64) -> Result<()>;
    /// Records an attempt and its outcome; a completed or failed event's outcome also
    /// sets the job's `webhookStatus`.
    async fn record_webhook_attempt(&self, attempt: WebhookAttempt) -> Result<()>;
    /// A job's events with their attempts, oldest first.
    async fn webhook_events(&self, job_id: JobId) -> Result<Vec<WebhookEventRecord>>;
    /// Schedules a job's completed or failed events for delivery again, now, with a
    /// fresh retry schedule; returns how many. Safe from another process: it changes
    /// only outbox rows, and the job's `webhookStatus` follows the new attempts.
    async fn replay_webhooks(&self, job_id: JobId) -> Result<usize>;

    /// The secret called `name` that every process on this database shares: the one
    /// stored, or `candidate` if none was, stored now. Concurrent first calls agree.
    async fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> Result<Vec<u8>>;

    /// Answers whether the database can be reached and used right now (for readiness):
    /// `Unavailable` when it cannot.
    async fn ping(&self) -> Result<()>;

    /// Forgets idempotency keys created before `before_ms`; returns how many.
    async fn purge_idempotency_keys(&self, before_ms: i64) -> Result<u64>;

    /// Records an upload whose bytes are stored. With an idempotency key held by an
    /// unexpired upload of the same account (at `upload.created_at_ms`), writes nothing
    /// and returns that one; a key held only by expired uploads is taken over.
    async fn create_upload(&self, upload: UploadRecord) -> Result<UploadOutcome>;
    /// The upload `id`, expired or not (callers compare `expires_at_ms` with their clock).
    async fn get_upload(&self, id: UploadId) -> Result<Option<UploadRecord>>;
    /// Uploads that expired before `before_ms`, soonest first, at most `limit`.
    async fn uploads_to_reap(&self, before_ms: i64, limit: usize) -> Result<Vec<UploadId>>;
    /// Forgets upload `id` (once its bytes are deleted); a missing one is not an error.
    async fn delete_upload(&self, id: UploadId) -> Result<()>;

    /// Finishes queued writes and releases the database; later calls fail with `Unavailable`.
    async fn close(&self);
}
