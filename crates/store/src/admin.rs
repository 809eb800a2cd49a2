//! What the operator's tools ask of a store: admin tokens, accounts and keys, credit
//! adjustments, the audit log, cross-account job views, usage reports and the upstream
//! accounts' shared state.
//!
//! Every change an operator makes goes through [`crate::Store::admin_write`], one method
//! for all of them, so each backend has one place where an admin change and its audit row
//! are written in the same transaction. A write that is refused or replayed (a
//! deduction beyond the balance, a retried grant, a job no longer cancellable, a release
//! of an account not held) writes no audit row; an accepted one is recorded even when it
//! sets a value to what it already was, as the operator's act.

use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, JobStatus, KeyDigest, Stage};
use serde_json::{json, Value};

use crate::{Account, ApiKeyRecord, CancelOutcome, JobCursor, LedgerEntry, NewApiKey};

/// Who makes an admin change, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditContext {
    /// The admin token used, or `None` for the command line on the server's machine.
    pub token_id: Option<String>,
    /// A readable actor: the token's name, or `cli` (with the OS user when known).
    pub actor: String,
    /// The HTTP request's id, when the change came through the API.
    pub request_id: Option<String>,
}

impl AuditContext {
    /// The command line, as the OS user `user` (when known).
    pub fn cli(user: Option<&str>) -> Self {
        let actor = match user {
            Some(u) if !u.is_empty() => format!("cli:{u}"),
            _ => "cli".to_owned(),
        };
        Self { token_id: None, actor, request_id: None }
    }
}

/// One audit row: an admin change, with the target's state before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// Monotonic row id (also the paging cursor).
    pub id: i64,
    /// The admin token used, `None` from the command line.
    pub token_id: Option<String>,
    /// Readable actor (see [`AuditContext::actor`]).
    pub actor: String,
    /// What was done, e.g. `account.create`, `credits.adjust`, `key.revoke`.
    pub action: String,
    /// What it was done to, e.g. `account:<uuid>`, `key:<uuid>`, `upstream:<name>`.
    pub target: String,
    /// The target before the change (`None` for a creation).
    pub before: Option<Value>,
    /// The target after the change.
    pub after: Option<Value>,
    /// The HTTP request id, when there was one.
    pub request_id: Option<String>,
    /// Time, unix milliseconds.
    pub created_at_ms: i64,
}

/// An admin token as stored: never the secret, only its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminToken {
    /// Id (a UUID, as text).
    pub id: String,
    /// The operator's label.
    pub name: String,
    /// Public prefix (`rga_` + 8 characters).
    pub prefix: String,
    /// SHA-256 of the token.
    pub digest: KeyDigest,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// Revocation time; a revoked token is refused like an unknown one.
    pub revoked_at_ms: Option<i64>,
}

/// Input for a new account.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Display name.
    pub name: String,
    /// Contact e-mail, if the operator has one.
    pub email: Option<String>,
    /// Plan label.
    pub plan: String,
    /// Jobs allowed in PROCESSING at once (at least 1).
    pub max_concurrent_jobs: u32,
    /// Credits granted in the same transaction (a `grant` ledger row when positive).
    pub initial_credits: i64,
}

/// Changes to an account; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct AccountPatch {
    /// New display name.
    pub name: Option<String>,
    /// New contact e-mail (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// New plan label.
    pub plan: Option<String>,
    /// New concurrency cap (at least 1).
    pub max_concurrent_jobs: Option<u32>,
    /// Disable (its keys get 403) or enable again.
    pub disabled: Option<bool>,
}

/// A credit adjustment by an operator.
#[derive(Clone, Debug)]
pub struct CreditAdjustment {
    /// The account.
    pub account_id: AccountId,
    /// Signed: positive grants (ledger kind `grant`), negative deducts (`deduct`). Never 0.
    pub amount: i64,
    /// Why, recorded in the ledger.
    pub note: Option<String>,
    /// The billing system's `Idempotency-Key`: the same key for the same account applies
    /// once, forever.
    pub idempotency_key: Option<String>,
}

/// How a credit adjustment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    /// Applied: the account after and the ledger row written.
    Applied(Account, LedgerEntry),
    /// The idempotency key was used before with the same amount and note: nothing was
    /// written; the account now and the original row.
    Replayed(Account, LedgerEntry),
    /// The idempotency key was used before with another amount or note: nothing written.
    IdempotencyMismatch,
    /// The deduction would take the balance below zero: nothing written.
    Insufficient {
        /// The balance.
        available: i64,
    },
}

/// A MiniMax account taken out of rotation by hand, shared by every node on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHold {
    /// The configured account's name.
    pub name: String,
    /// Out of rotation until this time (unix ms).
    pub until_ms: i64,
    /// Why, as the operator put it.
    pub reason: String,
    /// When the hold was made (unix ms).
    pub created_at_ms: i64,
}

/// Every change an operator can make. Each is one transaction with its audit row.
#[derive(Clone, Debug)]
pub enum AdminWrite {
    /// Create an admin token.
    CreateToken {
        /// Label.
        name: String,
        /// Public prefix.
        prefix: String,
        /// SHA-256 of the token.
        digest: KeyDigest,
    },
    /// Revoke an admin token (id or prefix resolved by the caller).
    RevokeToken {
        /// Token id.
        id: String,
    },
    /// Create an account.
    CreateAccount(NewAccount),
    /// Change an account.
    UpdateAccount {
        /// The account.
        id: AccountId,
        /// What changes.
        patch: AccountPatch,
    },
    /// Create an API key (and an account when `account_id` is `None`).
    CreateKey(NewApiKey),
    /// Disable, enable or revoke a key. Revoked keys cannot come back.
    SetKeyStatus {
        /// The key.
        id: ApiKeyId,
        /// New status.
        status: ApiKeyStatus,
    },
    /// Grant or deduct credits.
    AdjustCredits(CreditAdjustment),
    /// Cancel a queued job of any account, refunding it.
    CancelJob {
        /// The job.
        id: JobId,
    },
    /// Schedule a job's completed or failed webhooks again.
    ReplayWebhooks {
        /// The job.
        id: JobId,
    },
    /// Take a MiniMax account out of rotation until a time.
    HoldUpstream(UpstreamHold),
    /// Put a held MiniMax account back in rotation.
    ReleaseUpstream {
        /// The configured account's name.
        name: String,
    },
}

/// What [`crate::Store::admin_write`] did, by the write's kind.
#[derive(Clone, Debug)]
pub enum AdminWritten {
    /// A token, as created or revoked.
    Token(AdminToken),
    /// An account, as created or changed.
    Account(Account),
    /// A key (with its account), as created or changed.
    Key(Account, ApiKeyRecord),
    /// A credit adjustment's outcome.
    Credits(CreditOutcome),
    /// A cancel's outcome (`NotFound` when no such job).
    Cancel(CancelOutcome),
    /// How many webhook events were scheduled again (0 writes no audit row).
    Replayed(usize),
    /// The hold made, or `None` when a release found nothing held.
    Upstream(Option<UpstreamHold>),
}

/// Filters for [`crate::Store::list_accounts`], newest first.
#[derive(Clone, Debug, Default)]
pub struct AccountQuery {
    /// Case-insensitive substring of the name or e-mail, or an exact account id.
    pub search: Option<String>,
    /// Start after this `(created_at_ms, id)` position.
    pub after: Option<(i64, AccountId)>,
    /// Page size; the store returns at most `limit + 1` rows.
    pub limit: u32,
}

/// Filters for [`crate::Store::admin_jobs`], newest first, across accounts.
#[derive(Clone, Debug, Default)]
pub struct AdminJobQuery {
    /// Only this account's jobs.
    pub account_id: Option<AccountId>,
    /// Only jobs submitted with this key.
    pub api_key_id: Option<ApiKeyId>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this model id.
    pub model: Option<String>,
    /// Created at or after this time (unix ms).
    pub from_ms: Option<i64>,
    /// Created before this time (unix ms).
    pub to_ms: Option<i64>,
    /// Start after this position.
    pub after: Option<JobCursor>,
    /// Page size; the store returns at most `limit + 1` rows.
    pub limit: u32,
}

/// One step in a job's life, for the admin timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageChange {
    /// When (unix ms).
    pub at_ms: i64,
    /// The stage left (`None` for the job's creation).
    pub from: Option<Stage>,
    /// The stage entered.
    pub to: Stage,
    /// What happened, when there is more to say (the failure reason, the upstream).
    pub note: Option<String>,
}

/// How usage rows are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    /// By account.
    Account,
    /// By API key.
    Key,
    /// By model.
    Model,
}

/// The time bucket of usage rows, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageBucket {
    /// Hours.
    Hour,
    /// Days.
    Day,
}

impl UsageBucket {
    /// The bucket's length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

/// A usage report's scope. Jobs count in the bucket of their submission time: a job
/// submitted in the range counts with everything that became of it (its completion,
/// its refund), so a day's figures settle once its jobs have ended.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    /// Grouping.
    pub group_by: UsageGroup,
    /// Bucket length.
    pub bucket: UsageBucket,
    /// Jobs submitted at or after this time (unix ms).
    pub from_ms: i64,
    /// Jobs submitted before this time (unix ms).
    pub to_ms: i64,
    /// Only this account's jobs.
    pub account_id: Option<AccountId>,
}

/// One group's figures in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The group's value: an account id, a key id or a model id.
    pub group: String,
    /// The bucket's start (unix ms, UTC).
    pub bucket_start_ms: i64,
    /// Jobs submitted.
    pub submitted: i64,
    /// Of those, completed.
    pub completed: i64,
    /// Of those, failed.
    pub failed: i64,
    /// Of those, cancelled.
    pub cancelled: i64,
    /// Credits charged at submission.
    pub credits_charged: i64,
    /// Credits refunded (failures and cancels).
    pub credits_refunded: i64,
}

impl UsageRow {
    /// Charged less refunded.
    pub fn net_credits(&self) -> i64 {
        self.credits_charged - self.credits_refunded
    }
}

/// What one configured MiniMax account is doing, as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamActivity {
    /// The configured account's name.
    pub name: String,
    /// Create calls in the window ending now.
    pub creates_in_window: u32,
    /// Jobs submitting, running or downloading on it.
    pub in_flight: u32,
}

/// The figures on the console's overview.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    /// Jobs by public status, every status present.
    pub by_status: Vec<(JobStatus, i64)>,
    /// Submission time of the oldest queued job (unix ms).
    pub oldest_queued_at_ms: Option<i64>,
    /// Per minute of the last hour, oldest first: (minute start, completed, failed), by
    /// the time the jobs ended. Minutes with neither are left out.
    pub per_minute: Vec<(i64, i64, i64)>,
    /// Credits charged since midnight UTC.
    pub charged_today: i64,
    /// Credits refunded since midnight UTC.
    pub refunded_today: i64,
}

/// Snapshot helpers: the JSON both backends store as an audit row's before and after,
/// so the audit log reads the same on SQLite and PostgreSQL.
pub mod snapshot {
    use super::*;

    /// An account.
    pub fn account(a: &Account) -> Value {
        json!({
            "id": a.id.to_string(),
            "name": a.name,
            "email": a.email,
            "credits": a.credits,
            "plan": a.plan,
            "maxConcurrentJobs": a.max_concurrent_jobs,
            "disabled": a.disabled,
        })
    }

    /// An API key (never its digest).
    pub fn key(k: &ApiKeyRecord) -> Value {
        json!({
            "id": k.id.to_string(),
            "accountId": k.account_id.to_string(),
            "name": k.name,
            "prefix": k.prefix,
            "status": k.status.as_str(),
        })
    }

    /// An admin token (never its digest).
    pub fn token(t: &AdminToken) -> Value {
        json!({"id": t.id, "name": t.name, "prefix": t.prefix, "revokedAt": t.revoked_at_ms})
    }

    /// An upstream hold.
    pub fn hold(h: &UpstreamHold) -> Value {
        json!({"name": h.name, "until": h.until_ms, "reason": h.reason})
    }

    /// A job's state as an admin change sees it.
    pub fn job(status: JobStatus, credit_cost: i64) -> Value {
        json!({"status": status.as_str(), "creditCost": credit_cost})
    }
}
