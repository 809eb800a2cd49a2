//! The operator's actions: one implementation behind two front doors, the admin API
//! (`api::admin`) and the command line (`reelgate admin ...`, `reelgate keys ...`,
//! `reelgate credits ...`).
//!
//! Each action checks its input, then makes the change and its audit row in one store
//! transaction (`Store::admin_write`). None of them needs a running server: the command
//! line opens the store itself, and a running server notices key changes within its key
//! cache's TTL and hold changes within a second.

use std::sync::Arc;

use domain::{AccountId, ApiKeyId, ApiKeySecret, ApiKeyStatus, JobId, JobStatus, KeyDigest};
use store::{
    Account, AccountPatch, AdminToken, AdminWrite, AdminWritten, ApiKeyRecord, AuditContext, CancelOutcome,
    CreditAdjustment, CreditOutcome, JobRecord, LedgerEntry, NewAccount, NewApiKey, Store, StoreError, UpstreamHold,
};

use crate::config::AccountDefaults;

/// Longest name, plan, note or reason accepted, in characters.
const MAX_TEXT: usize = 200;
/// Largest credit amount one change may move, either way.
pub const MAX_CREDITS: i64 = 1_000_000_000_000;
/// Highest concurrency cap an account may be given.
pub const MAX_CONCURRENT_JOBS: u32 = 10_000;
/// Longest hold on a MiniMax account, in minutes (a week).
pub const MAX_HOLD_MINUTES: i64 = 7 * 24 * 60;

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// An input is wrong; `field` names it as the API spells it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, in the API's spelling.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A deduction larger than the balance.
    #[error("deducting {requested} credits would take the balance of {available} below zero")]
    Insufficient {
        /// Credits asked to deduct.
        requested: i64,
        /// The balance.
        available: i64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("No such {what}")),
            StoreError::Conflict(why) => Self::Conflict(why),
            other => Self::Store(other),
        }
    }
}

/// Shorthand.
pub type Result<T, E = AdminError> = std::result::Result<T, E>;

fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid { field, message: message.into() }
}

/// A name: trimmed, not empty, not too long, no control characters.
fn check_name(field: &'static str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    check_text(field, name)?;
    Ok(name.to_owned())
}

fn check_text(field: &'static str, text: &str) -> Result<()> {
    if text.chars().count() > MAX_TEXT {
        return Err(invalid(field, format!("must be at most {MAX_TEXT} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_email(raw: &str) -> Result<String> {
    let email = raw.trim();
    let plausible = email.len() <= 254
        && email.split_once('@').is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !plausible {
        return Err(invalid("email", "must be an e-mail address"));
    }
    Ok(email.to_owned())
}

fn check_concurrency(n: u32) -> Result<u32> {
    if n == 0 || n > MAX_CONCURRENT_JOBS {
        return Err(invalid("maxConcurrentJobs", format!("must be between 1 and {MAX_CONCURRENT_JOBS}")));
    }
    Ok(n)
}

/// A new admin token: the record, and the secret shown once.
pub struct NewToken {
    /// As stored.
    pub token: AdminToken,
    /// `rga_...`, never stored.
    pub secret: String,
}

/// Makes an admin token called `name`.
pub async fn create_token(store: &dyn Store, name: &str, audit: AuditContext) -> Result<NewToken> {
    let name = check_name("name", name)?;
    let secret = ApiKeySecret::generate_admin_token();
    let write = AdminWrite::CreateToken { name, prefix: secret.prefix.clone(), digest: secret.digest };
    match store.admin_write(write, audit).await? {
        AdminWritten::Token(token) => Ok(NewToken { token, secret: secret.plaintext }),
        other => Err(unexpected(other)),
    }
}

/// Every admin token, oldest first.
pub async fn list_tokens(store: &dyn Store) -> Result<Vec<AdminToken>> {
    Ok(store.list_admin_tokens().await?)
}

/// Revokes the token with this id or public prefix.
pub async fn revoke_token(store: &dyn Store, id_or_prefix: &str, audit: AuditContext) -> Result<AdminToken> {
    let tokens = store.list_admin_tokens().await?;
    let matches: Vec<&AdminToken> =
        tokens.iter().filter(|t| t.id == id_or_prefix || t.prefix == id_or_prefix).collect();
    let id = match matches.as_slice() {
        [one] => one.id.clone(),
        [] => return Err(AdminError::NotFound(format!("No admin token with id or prefix {id_or_prefix:?}"))),
        _ => return Err(invalid("id", format!("prefix {id_or_prefix:?} is ambiguous; use the token id"))),
    };
    match store.admin_write(AdminWrite::RevokeToken { id }, audit).await? {
        AdminWritten::Token(token) => Ok(token),
        other => Err(unexpected(other)),
    }
}

/// The active admin token `presented` is, if any: an unknown, malformed or revoked token
/// is `None`, as is a customer's API key.
pub async fn authenticate(store: &dyn Store, presented: &str) -> Result<Option<AdminToken>> {
    if !domain::keys::looks_like_admin_token(presented) {
        return Ok(None);
    }
    // The store compares the digest itself, in constant time, as it does for API keys.
    let token = store.find_admin_token(&KeyDigest::of(presented)).await?;
    Ok(token.filter(|t| t.revoked_at_ms.is_none()))
}

/// What an operator gives for a new account.
#[derive(Clone, Debug, Default)]
pub struct AccountInput {
    /// Display name.
    pub name: String,
    /// Contact e-mail.
    pub email: Option<String>,
    /// Plan label (the default plan when `None`).
    pub plan: Option<String>,
    /// Concurrency cap (the default when `None`).
    pub max_concurrent_jobs: Option<u32>,
    /// Credits to start with.
    pub credits: i64,
}

/// Creates an account.
pub async fn create_account(
    store: &dyn Store,
    defaults: &AccountDefaults,
    input: AccountInput,
    audit: AuditContext,
) -> Result<Account> {
    let new = NewAccount {
        name: check_name("name", &input.name)?,
        email: input.email.as_deref().map(check_email).transpose()?,
        plan: check_name("plan", input.plan.as_deref().unwrap_or(&defaults.default_plan))?,
        max_concurrent_jobs: check_concurrency(
            input.max_concurrent_jobs.unwrap_or(defaults.default_max_concurrent_jobs),
        )?,
        initial_credits: check_initial_credits(input.credits)?,
    };
    match store.admin_write(AdminWrite::CreateAccount(new), audit).await? {
        AdminWritten::Account(account) => Ok(account),
        other => Err(unexpected(other)),
    }
}

/// A credit adjustment: not zero, and within [`MAX_CREDITS`] either way.
fn check_amount(amount: i64) -> Result<i64> {
    if amount == 0 || !(-MAX_CREDITS..=MAX_CREDITS).contains(&amount) {
        return Err(invalid(
            "amount",
            format!("must be a non-zero whole number between -{MAX_CREDITS} and {MAX_CREDITS}"),
        ));
    }
    Ok(amount)
}

fn check_initial_credits(credits: i64) -> Result<i64> {
    if !(0..=MAX_CREDITS).contains(&credits) {
        return Err(invalid("credits", format!("must be between 0 and {MAX_CREDITS}")));
    }
    Ok(credits)
}

/// Changes an account; fields left `None` stay.
pub async fn update_account(
    store: &dyn Store,
    id: AccountId,
    mut patch: AccountPatch,
    audit: AuditContext,
) -> Result<Account> {
    if let Some(name) = &patch.name {
        patch.name = Some(check_name("name", name)?);
    }
    if let Some(Some(email)) = &patch.email {
        patch.email = Some(Some(check_email(email)?));
    }
    if let Some(plan) = &patch.plan {
        patch.plan = Some(check_name("plan", plan)?);
    }
    if let Some(n) = patch.max_concurrent_jobs {
        check_concurrency(n)?;
    }
    match store.admin_write(AdminWrite::UpdateAccount { id, patch }, audit).await? {
        AdminWritten::Account(account) => Ok(account),
        other => Err(unexpected(other)),
    }
}

/// What an operator gives for a new API key.
#[derive(Clone, Debug, Default)]
pub struct KeyInput {
    /// Attach to this account; `None` makes a new account named like the key.
    pub account_id: Option<AccountId>,
    /// The key's name.
    pub name: String,
    /// Contact e-mail shown as the user in `GET /v2/me` (made up from the name when `None`).
    pub email: Option<String>,
    /// Credits for a new account; refused for an existing one (grant them instead).
    pub credits: i64,
}

/// A new API key: its account, the record, and the secret shown once.
pub struct NewKey {
    /// The key's account.
    pub account: Account,
    /// As stored.
    pub key: ApiKeyRecord,
    /// `afk_...`, never stored.
    pub secret: String,
}

/// Creates an API key, and an account for it when none is named.
pub async fn create_key(
    store: &dyn Store,
    defaults: &AccountDefaults,
    input: KeyInput,
    audit: AuditContext,
) -> Result<NewKey> {
    let name = check_name("name", &input.name)?;
    let credits = check_initial_credits(input.credits)?;
    if input.account_id.is_some() && credits > 0 {
        return Err(invalid("credits", "applies to a new account only; grant credits to an existing one"));
    }
    let email = match input.email.as_deref() {
        Some(e) => check_email(e)?,
        None => format!("{}@reelgate.local", slug(&name)),
    };
    let secret = ApiKeySecret::generate();
    let new = NewApiKey {
        account_id: input.account_id,
        name,
        email,
        prefix: secret.prefix.clone(),
        digest: secret.digest,
        initial_credits: credits,
        plan: defaults.default_plan.clone(),
        max_concurrent_jobs: defaults.default_max_concurrent_jobs,
    };
    match store.admin_write(AdminWrite::CreateKey(new), audit).await? {
        AdminWritten::Key(account, key) => Ok(NewKey { account, key, secret: secret.plaintext }),
        other => Err(unexpected(other)),
    }
}

/// The key with this id or public prefix (`afk_xxxxxxxx`).
pub async fn resolve_key(store: &dyn Store, id_or_prefix: &str) -> Result<ApiKeyId> {
    if let Ok(id) = id_or_prefix.parse::<ApiKeyId>() {
        return Ok(id);
    }
    let keys = store.list_api_keys(None).await?;
    let matches: Vec<&ApiKeyRecord> = keys.iter().filter(|k| k.prefix == id_or_prefix).collect();
    match matches.as_slice() {
        [one] => Ok(one.id),
        [] => Err(AdminError::NotFound(format!("No API key with id or prefix {id_or_prefix:?}"))),
        _ => Err(invalid("id", format!("prefix {id_or_prefix:?} is ambiguous; use the key id"))),
    }
}

/// Disables, enables or revokes a key. A revoked key cannot come back.
pub async fn set_key_status(
    store: &dyn Store,
    id: ApiKeyId,
    status: ApiKeyStatus,
    audit: AuditContext,
) -> Result<ApiKeyRecord> {
    match store.admin_write(AdminWrite::SetKeyStatus { id, status }, audit).await? {
        AdminWritten::Key(_, key) => Ok(key),
        other => Err(unexpected(other)),
    }
}

/// A credit adjustment as applied (or as first applied, for a retry).
pub struct CreditsAdjusted {
    /// The account now.
    pub account: Account,
    /// The ledger row.
    pub entry: LedgerEntry,
    /// Whether this was a retry of an adjustment already applied.
    pub replayed: bool,
}

/// Grants (positive `amount`) or deducts (negative) credits; a retry with the same
/// `idempotency_key` applies once.
pub async fn adjust_credits(
    store: &dyn Store,
    account_id: AccountId,
    amount: i64,
    note: Option<String>,
    idempotency_key: Option<String>,
    audit: AuditContext,
) -> Result<CreditsAdjusted> {
    let amount = check_amount(amount)?;
    let note = note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(n) = &note {
        check_text("note", n)?;
    }
    if let Some(key) = &idempotency_key {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters"));
        }
    }
    let write = AdminWrite::AdjustCredits(CreditAdjustment { account_id, amount, note, idempotency_key });
    match store.admin_write(write, audit).await? {
        AdminWritten::Credits(CreditOutcome::Applied(account, entry)) => {
            Ok(CreditsAdjusted { account, entry, replayed: false })
        }
        AdminWritten::Credits(CreditOutcome::Replayed(account, entry)) => {
            Ok(CreditsAdjusted { account, entry, replayed: true })
        }
        AdminWritten::Credits(CreditOutcome::IdempotencyMismatch) => Err(AdminError::Conflict(
            "This Idempotency-Key was used with another amount or note; use a new key for a new adjustment".into(),
        )),
        AdminWritten::Credits(CreditOutcome::Insufficient { available }) => {
            Err(AdminError::Insufficient { requested: -amount, available })
        }
        other => Err(unexpected(other)),
    }
}

/// Cancels a queued job of any account, refunding it.
pub async fn cancel_job(store: &dyn Store, id: JobId, audit: AuditContext) -> Result<Arc<JobRecord>> {
    match store.admin_write(AdminWrite::CancelJob { id }, audit).await? {
        AdminWritten::Cancel(CancelOutcome::Cancelled(job)) => Ok(job),
        AdminWritten::Cancel(CancelOutcome::NotFound) => Err(AdminError::NotFound("Job not found".into())),
        AdminWritten::Cancel(CancelOutcome::NotCancellable(status)) => Err(AdminError::Conflict(match status {
            JobStatus::Cancelled => "Job is already CANCELLED".to_string(),
            other => format!("Job is {}; only QUEUED jobs can be cancelled", other.as_str()),
        })),
        other => Err(unexpected(other)),
    }
}

/// Schedules a job's completed or failed webhook events again; returns how many.
pub async fn replay_webhooks(store: &dyn Store, id: JobId, audit: AuditContext) -> Result<usize> {
    match store.admin_write(AdminWrite::ReplayWebhooks { id }, audit).await? {
        AdminWritten::Replayed(0) => {
            Err(AdminError::Conflict(format!("Job {id} has no completed or failed webhook event to replay")))
        }
        AdminWritten::Replayed(n) => Ok(n),
        other => Err(unexpected(other)),
    }
}

/// Holds the configured MiniMax account `name` out of rotation for `minutes`.
pub async fn hold_upstream(
    store: &dyn Store,
    configured: &[String],
    name: &str,
    minutes: i64,
    reason: Option<String>,
    audit: AuditContext,
) -> Result<UpstreamHold> {
    check_configured(configured, name)?;
    if !(1..=MAX_HOLD_MINUTES).contains(&minutes) {
        return Err(invalid("minutes", format!("must be between 1 and {MAX_HOLD_MINUTES}")));
    }
    let reason =
        reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).unwrap_or_else(|| "held by an operator".into());
    check_text("reason", &reason)?;
    let now = crate::now_ms();
    let hold = UpstreamHold { name: name.to_owned(), until_ms: now + minutes * 60_000, reason, created_at_ms: now };
    match store.admin_write(AdminWrite::HoldUpstream(hold.clone()), audit).await? {
        AdminWritten::Upstream(_) => Ok(hold),
        other => Err(unexpected(other)),
    }
}

/// Puts a held MiniMax account back in rotation; `None` when it was not held.
pub async fn release_upstream(
    store: &dyn Store,
    configured: &[String],
    name: &str,
    audit: AuditContext,
) -> Result<Option<UpstreamHold>> {
    check_configured(configured, name)?;
    match store.admin_write(AdminWrite::ReleaseUpstream { name: name.to_owned() }, audit).await? {
        AdminWritten::Upstream(released) => Ok(released),
        other => Err(unexpected(other)),
    }
}

fn check_configured(configured: &[String], name: &str) -> Result<()> {
    if configured.iter().any(|c| c == name) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("No MiniMax account named {name:?} is configured")))
    }
}

/// A store answering a write with another kind of outcome is a bug in the store.
fn unexpected(written: AdminWritten) -> AdminError {
    AdminError::Store(StoreError::Internal(format!("unexpected admin write outcome: {written:?}")))
}

/// A lowercase, dash-separated form of `name` for made-up e-mail addresses.
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "key".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_before_anything_is_written() {
        assert!(check_name("name", "  Acme  ").is_ok_and(|n| n == "Acme"));
        assert!(check_name("name", "   ").is_err());
        assert!(check_name("name", &"x".repeat(MAX_TEXT + 1)).is_err());
        assert!(check_name("name", "a\u{7}b").is_err());
        assert!(check_email("ops@example.com").is_ok());
        for bad in ["", "ops", "@example.com", "ops@localhost", "o ps@example.com"] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_concurrency(0).is_err() && check_concurrency(MAX_CONCURRENT_JOBS + 1).is_err());
        assert!(check_initial_credits(-1).is_err() && check_initial_credits(MAX_CREDITS).is_ok());
        assert!(check_configured(&["a".into()], "b").is_err() && check_configured(&["a".into()], "a").is_ok());
        assert_eq!(slug("Acme Video, Inc."), "acme-video--inc");
        assert_eq!(slug("***"), "key");
        for bad in [0, i64::MIN, i64::MAX, MAX_CREDITS + 1, -MAX_CREDITS - 1] {
            assert!(check_amount(bad).is_err(), "{bad}");
        }
        assert!(check_amount(-MAX_CREDITS).is_ok() && check_amount(1).is_ok());
    }
}
