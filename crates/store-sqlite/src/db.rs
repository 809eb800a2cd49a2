//! What every part of the SQLite store shares below the writer: opening a connection
//! with the settings durability needs, mapping rusqlite errors onto [`StoreError`], the
//! clock, and the ledger insert that every money-moving write makes.
//!
//! It depends on nothing else in the crate, so any module may use it without an import
//! cycle.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use domain::{AccountId, JobId, Stage};
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use store::{LedgerKind, Result, StoreError};

/// Opens a connection to the database at `path`: WAL, a busy timeout and foreign keys,
/// and for a writer `synchronous = FULL`.
pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(map_err)?;
    // WAL lets readers run beside the writer; FULL makes each commit survive power loss,
    // which "nothing acknowledged is lost" needs. Group commit pays for the fsync.
    let pragmas = if read_only {
        "pragma foreign_keys = on;"
    } else {
        "pragma journal_mode = wal; pragma synchronous = full; pragma foreign_keys = on;"
    };
    conn.execute_batch(pragmas).map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    register_unicode_lower(&conn).map_err(map_err)?;
    Ok(conn)
}

/// `unicode_lower(text)`: lowercase by Unicode's rules, as Rust and PostgreSQL fold case.
/// SQLite's own `lower()` folds ASCII only, so an account search for "über" would miss
/// "Über GmbH" here and find it on PostgreSQL.
fn register_unicode_lower(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("unicode_lower", 1, flags, |ctx| {
        Ok(ctx.get::<Option<String>>(0)?.map(|text| text.to_lowercase()))
    })
}

/// Maps rusqlite errors onto what a caller can act on.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable(e.to_string()),
            ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::SystemIoFailure => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        },
        _ => StoreError::Internal(e.to_string()),
    }
}

/// Appends a ledger row. The ledger is append-only (triggers refuse updates and
/// deletes), and an account's balance must always equal the sum of its rows.
pub(crate) fn insert_ledger(
    conn: &Connection,
    account: AccountId,
    kind: LedgerKind,
    amount: i64,
    job: Option<JobId>,
    note: Option<&str>,
    at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "insert into ledger_entry (account_id, kind, amount, job_id, note, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![account.to_string(), kind.as_str(), amount, job.map(|j| j.to_string()), note, at_ms])?;
    Ok(())
}

/// Unix ms by the wall clock.
pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Records one stage change of a job for the admin timeline, in the transaction that
/// makes it. One insert and no reads: it sits on the claim and transition paths.
pub(crate) fn insert_stage_change(
    conn: &Connection,
    job: &str,
    from: Stage,
    to: Stage,
    note: Option<&str>,
    at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "insert into job_stage_change (job_id, from_stage, to_stage, note, at) values (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![job, from.as_str(), to.as_str(), note, at_ms])?;
    Ok(())
}
