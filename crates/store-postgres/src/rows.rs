//! Row decoding: the column lists and the functions turning rows into store records.
//! Row shapes stay private to this backend; a row that does not decode is corrupt data,
//! reported as `Internal`.

use std::sync::Arc;

use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, JobStatus, KeyDigest, Stage, WebhookStatus};
use store::{
    Account, AdminToken, ApiKeyRecord, AuditRecord, EngineJob, JobRecord, LedgerEntry, LedgerKind, Result, StoreError,
    UpstreamHold,
};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;
use uuid::Uuid;

// Column lists are macros so queries are assembled with `concat!` at compile time, and a
// statement's text, the key of each connection's prepared-statement cache, is static.
macro_rules! account_columns {
    () => {
        "account_id, name, credits, plan, max_concurrent_jobs, created_at, email, disabled"
    };
}
/// A key with its account's `disabled` flag: read from `api_key k` joined with `account a`
/// (see [`key_from`]), or from a CTE named `k` holding a written key row.
macro_rules! key_columns {
    () => {
        "k.api_key_id, k.account_id, k.name, k.email, k.prefix, k.key_digest, k.status, k.created_at, a.disabled"
    };
}
/// The join behind [`key_columns`], after `from <key rows> k`.
macro_rules! key_join {
    () => {
        " join account a on a.account_id = k.account_id"
    };
}
/// `from` for reading stored keys with [`key_columns`].
macro_rules! key_from {
    () => {
        concat!(" from api_key k", $crate::rows::key_join!())
    };
}
macro_rules! ledger_columns {
    () => {
        "ledger_entry_id, account_id, kind, amount, job_id, note, created_at, idempotency_key"
    };
}
/// How many columns [`ledger_entry`] reads; a query may return more after them.
pub(crate) const LEDGER_COLUMNS: usize = 8;
macro_rules! job_columns {
    () => {
        "job_id, account_id, api_key_id, model, status, progress, result, error, \
         credit_cost, webhook_status, input, created_at, completed_at, expired, updated_at"
    };
}
/// The public columns followed by the engine's bookkeeping (read by [`engine_job`]).
macro_rules! engine_job_columns {
    () => {
        concat!(
            $crate::rows::job_columns!(),
            ", stage, upstream_account, upstream_task_id, upstream_file_id, attempts, due_at, started_at"
        )
    };
}
macro_rules! admin_token_columns {
    () => {
        "admin_token_id, name, prefix, token_digest, created_at, revoked_at"
    };
}
/// The snapshots are jsonb, read back as text: this backend's driver has no JSON types.
macro_rules! audit_columns {
    () => {
        "audit_log_id, admin_token_id, actor, action, target, before::text, after::text, request_id, created_at"
    };
}
macro_rules! hold_columns {
    () => {
        "upstream_account, until_at, reason, created_at"
    };
}
pub(crate) use {
    account_columns, admin_token_columns, audit_columns, engine_job_columns, hold_columns, job_columns, key_columns,
    key_from, key_join, ledger_columns,
};

/// How many columns [`engine_job`] reads; a query may return more after them.
pub(crate) const ENGINE_JOB_COLUMNS: usize = 22;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable row: {what}"))
}

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx).map_err(corrupt)
}

fn text_as<T>(row: &Row, idx: usize, parse: impl FnOnce(&str) -> Option<T>) -> Result<T> {
    let s: &str = get(row, idx)?;
    parse(s).ok_or_else(|| corrupt(format!("column {idx} holds {s:?}")))
}

fn small<T: TryFrom<i32>>(row: &Row, idx: usize) -> Result<T> {
    let n: i32 = get(row, idx)?;
    T::try_from(n).map_err(|_| corrupt(format!("column {idx} holds {n}")))
}

pub(crate) fn account(row: &Row) -> Result<Account> {
    account_at(row, 0)
}

/// An account whose [`account_columns`] start at column `at`.
pub(crate) fn account_at(row: &Row, at: usize) -> Result<Account> {
    Ok(Account {
        id: AccountId(get(row, at)?),
        name: get(row, at + 1)?,
        credits: get(row, at + 2)?,
        plan: get(row, at + 3)?,
        max_concurrent_jobs: small(row, at + 4)?,
        created_at_ms: get(row, at + 5)?,
        email: get(row, at + 6)?,
        disabled: get(row, at + 7)?,
    })
}

pub(crate) fn api_key(row: &Row) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: ApiKeyId(get(row, 0)?),
        account_id: AccountId(get(row, 1)?),
        name: get(row, 2)?,
        email: get(row, 3)?,
        prefix: get(row, 4)?,
        digest: digest(row, 5)?,
        status: text_as(row, 6, ApiKeyStatus::parse)?,
        created_at_ms: get(row, 7)?,
        account_disabled: get(row, 8)?,
    })
}

pub(crate) fn ledger_entry(row: &Row) -> Result<LedgerEntry> {
    Ok(LedgerEntry {
        id: get(row, 0)?,
        account_id: AccountId(get(row, 1)?),
        kind: text_as(row, 2, LedgerKind::parse)?,
        amount: get(row, 3)?,
        job_id: get::<Option<Uuid>>(row, 4)?.map(JobId),
        note: get(row, 5)?,
        created_at_ms: get(row, 6)?,
        idempotency_key: get(row, 7)?,
    })
}

pub(crate) fn job(row: &Row) -> Result<JobRecord> {
    let result: Option<&str> = get(row, 6)?;
    let input: &str = get(row, 10)?;
    Ok(JobRecord {
        id: JobId(get(row, 0)?),
        account_id: AccountId(get(row, 1)?),
        api_key_id: ApiKeyId(get(row, 2)?),
        model: get(row, 3)?,
        status: text_as(row, 4, JobStatus::parse)?,
        progress: get(row, 5)?,
        result: result.map(|r| serde_json::from_str(r).map_err(|_| corrupt("result is not JSON"))).transpose()?,
        error: get(row, 7)?,
        credit_cost: get(row, 8)?,
        webhook_status: get::<Option<&str>>(row, 9)?
            .map(|w| WebhookStatus::parse(w).ok_or_else(|| corrupt(format!("webhook status {w:?}"))))
            .transpose()?,
        // Copied out verbatim: the client gets back the bytes it sent.
        input: serde_json::value::RawValue::from_string(input.to_owned()).map_err(|_| corrupt("input is not JSON"))?,
        created_at_ms: get(row, 11)?,
        completed_at_ms: get(row, 12)?,
        expired: get(row, 13)?,
        updated_at_ms: get(row, 14)?,
    })
}

pub(crate) fn engine_job(row: &Row) -> Result<EngineJob> {
    let record = job(row)?;
    Ok(EngineJob {
        record: Arc::new(record),
        stage: text_as(row, 15, Stage::parse)?,
        upstream_account: get(row, 16)?,
        upstream_task_id: get(row, 17)?,
        upstream_file_id: get(row, 18)?,
        attempts: small(row, 19)?,
        due_at_ms: get(row, 20)?,
        started_at_ms: get(row, 21)?,
    })
}

fn digest(row: &Row, idx: usize) -> Result<KeyDigest> {
    let bytes: &[u8] = get(row, idx)?;
    Ok(KeyDigest(bytes.try_into().map_err(|_| corrupt("digest is not 32 bytes"))?))
}

fn json(row: &Row, idx: usize) -> Result<Option<serde_json::Value>> {
    get::<Option<&str>>(row, idx)?
        .map(|text| serde_json::from_str(text).map_err(|_| corrupt(format!("column {idx} is not JSON"))))
        .transpose()
}

pub(crate) fn admin_token(row: &Row) -> Result<AdminToken> {
    Ok(AdminToken {
        id: get::<Uuid>(row, 0)?.to_string(),
        name: get(row, 1)?,
        prefix: get(row, 2)?,
        digest: digest(row, 3)?,
        created_at_ms: get(row, 4)?,
        revoked_at_ms: get(row, 5)?,
    })
}

pub(crate) fn audit_record(row: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: get(row, 0)?,
        token_id: get::<Option<Uuid>>(row, 1)?.map(|id| id.to_string()),
        actor: get(row, 2)?,
        action: get(row, 3)?,
        target: get(row, 4)?,
        before: json(row, 5)?,
        after: json(row, 6)?,
        request_id: get(row, 7)?,
        created_at_ms: get(row, 8)?,
    })
}

pub(crate) fn hold(row: &Row) -> Result<UpstreamHold> {
    Ok(UpstreamHold { name: get(row, 0)?, until_ms: get(row, 1)?, reason: get(row, 2)?, created_at_ms: get(row, 3)? })
}
