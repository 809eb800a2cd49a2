//! Row decoding: the column lists and the functions turning rows into store records.
//! Row shapes stay private to this backend.

use domain::Stage;
use domain::{ApiKeyStatus, JobStatus, KeyDigest, WebhookStatus};
use rusqlite::types::Type;
use rusqlite::Row;
use store::{Account, ApiKeyRecord, EngineJob, JobRecord, LedgerEntry, LedgerKind};

// Column lists are macros so queries are assembled with `concat!` at compile time: the
// hot read paths then hand SQLite's statement cache a static string, with no formatting.
macro_rules! account_columns {
    () => {
        "account_id, name, credits, plan, max_concurrent_jobs, created_at, email, disabled"
    };
}
/// A key's columns with its account's `disabled`, read from [`key_source`].
macro_rules! key_columns {
    () => {
        "k.api_key_id, k.account_id, k.name, k.email, k.prefix, k.key_digest, k.status, k.created_at, a.disabled"
    };
}
/// Keys joined to their accounts: a disabled account refuses its keys, so every key read
/// carries the flag.
macro_rules! key_source {
    () => {
        "api_key k join account a on a.account_id = k.account_id"
    };
}
macro_rules! ledger_columns {
    () => {
        "ledger_entry_id, account_id, kind, amount, job_id, note, created_at, idempotency_key"
    };
}
macro_rules! job_columns {
    () => {
        "job_id, account_id, api_key_id, model, status, progress, result, error, \
         credit_cost, webhook_status, input, created_at, completed_at, expired, updated_at"
    };
}
/// The public columns followed by the engine's bookkeeping (read by [`engine_job_from_row`]).
macro_rules! engine_job_columns {
    () => {
        concat!(
            job_columns!(),
            ", stage, upstream_account, upstream_task_id, upstream_file_id, attempts, due_at, started_at"
        )
    };
}
pub(crate) use {account_columns, engine_job_columns, job_columns, key_columns, key_source, ledger_columns};

fn bad(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, format!("invalid {what}").into())
}

fn parsed<T: std::str::FromStr>(row: &Row<'_>, col: usize) -> rusqlite::Result<T> {
    let s: String = row.get(col)?;
    s.parse().map_err(|_| bad(col, "id"))
}

pub(crate) fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: parsed(row, 0)?,
        name: row.get(1)?,
        credits: row.get(2)?,
        plan: row.get(3)?,
        max_concurrent_jobs: row.get(4)?,
        created_at_ms: row.get(5)?,
        email: row.get(6)?,
        disabled: row.get(7)?,
    })
}

pub(crate) fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let digest: Vec<u8> = row.get(5)?;
    let status: String = row.get(6)?;
    Ok(ApiKeyRecord {
        id: parsed(row, 0)?,
        account_id: parsed(row, 1)?,
        name: row.get(2)?,
        email: row.get(3)?,
        prefix: row.get(4)?,
        digest: KeyDigest(digest.try_into().map_err(|_| bad(5, "digest"))?),
        status: ApiKeyStatus::parse(&status).ok_or_else(|| bad(6, "key status"))?,
        created_at_ms: row.get(7)?,
        account_disabled: row.get(8)?,
    })
}

pub(crate) fn ledger_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let kind: String = row.get(2)?;
    let job: Option<String> = row.get(4)?;
    Ok(LedgerEntry {
        id: row.get(0)?,
        account_id: parsed(row, 1)?,
        kind: LedgerKind::parse(&kind).ok_or_else(|| bad(2, "ledger kind"))?,
        amount: row.get(3)?,
        job_id: job.map(|j| j.parse().map_err(|_| bad(4, "job id"))).transpose()?,
        note: row.get(5)?,
        created_at_ms: row.get(6)?,
        idempotency_key: row.get(7)?,
    })
}

pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let status: String = row.get(4)?;
    let result: Option<String> = row.get(6)?;
    let webhook_status: Option<String> = row.get(9)?;
    let input: String = row.get(10)?;
    Ok(JobRecord {
        id: parsed(row, 0)?,
        account_id: parsed(row, 1)?,
        api_key_id: parsed(row, 2)?,
        model: row.get(3)?,
        status: JobStatus::parse(&status).ok_or_else(|| bad(4, "job status"))?,
        progress: row.get(5)?,
        result: result.map(|r| serde_json::from_str(&r).map_err(|_| bad(6, "result json"))).transpose()?,
        error: row.get(7)?,
        credit_cost: row.get(8)?,
        webhook_status: webhook_status
            .map(|w| WebhookStatus::parse(&w).ok_or_else(|| bad(9, "webhook status")))
            .transpose()?,
        input: serde_json::value::RawValue::from_string(input).map_err(|_| bad(10, "input json"))?,
        created_at_ms: row.get(11)?,
        completed_at_ms: row.get(12)?,
        expired: row.get(13)?,
        updated_at_ms: row.get(14)?,
    })
}

pub(crate) fn engine_job_from_row(row: &Row<'_>) -> rusqlite::Result<EngineJob> {
    let record = job_from_row(row)?;
    let stage: String = row.get(15)?;
    Ok(EngineJob {
        record: std::sync::Arc::new(record),
        stage: Stage::parse(&stage).ok_or_else(|| bad(15, "stage"))?,
        upstream_account: row.get(16)?,
        upstream_task_id: row.get(17)?,
        upstream_file_id: row.get(18)?,
        attempts: row.get(19)?,
        due_at_ms: row.get(20)?,
        started_at_ms: row.get(21)?,
    })
}
