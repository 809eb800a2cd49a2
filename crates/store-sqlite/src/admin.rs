//! The operator's interface on SQLite (`store::admin`): every admin write, run in one
//! writer transaction together with its audit row, and the reads behind the console
//! (tokens, account and ledger pages, the audit log, jobs across accounts, timelines,
//! usage, upstream activity and holds, the overview).
//!
//! Writes reuse the paths the API takes (`create_key_in_tx`, `cancel_in_tx`,
//! `grant_in_tx`, the webhook replay), so an operator's change behaves exactly like the
//! customer's own; this module adds the audit row, and writes none when nothing changed.
//! Reads run on the read pool like every other read.

use domain::{AccountId, ApiKeyStatus, JobId, JobStatus, KeyDigest, Stage};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};
use store::{
    snapshot, Account, AccountPatch, AccountQuery, AdminJobQuery, AdminToken, AdminWrite, AdminWritten, AuditContext,
    AuditRecord, CancelOutcome, CreditAdjustment, CreditOutcome, JobRecord, LedgerEntry, LedgerKind, NewAccount,
    Overview, Result, StageChange, StoreError, UpstreamActivity, UpstreamHold, UsageGroup, UsageQuery, UsageRow,
};

use crate::db::map_err;
use crate::rows::{self, account_columns, account_from_row, job_columns, job_from_row, ledger_columns};
use crate::writer::WriteCtx;
use crate::{cancel_in_tx, create_key_in_tx, grant_in_tx, load_account, set_key_status_in_tx};

/// An open upper bound for keyset cursors on integer ids.
const NO_BOUND: i64 = i64::MAX;

/// Applies one admin write and its audit row inside the writer's transaction.
pub(crate) fn write_in_tx(ctx: &WriteCtx<'_>, write: &AdminWrite, who: &AuditContext) -> Result<AdminWritten> {
    let audit = |action: &str, target: String, before: Option<Value>, after: Option<Value>| {
        insert_audit(ctx, who, action, &target, before, after)
    };
    match write {
        AdminWrite::CreateToken { name, prefix, digest } => {
            let token = AdminToken {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.clone(),
                prefix: prefix.clone(),
                digest: *digest,
                created_at_ms: ctx.now_ms,
                revoked_at_ms: None,
            };
            ctx.conn
                .prepare_cached(
                    "insert into admin_token (admin_token_id, name, prefix, token_digest, created_at)
                     values (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![token.id, token.name, token.prefix, &digest.0[..], ctx.now_ms]))
                .map_err(map_err)?;
            audit("token.create", format!("token:{}", token.id), None, Some(snapshot::token(&token)))?;
            Ok(AdminWritten::Token(token))
        }
        AdminWrite::RevokeToken { id } => {
            let before = ctx
                .conn
                .prepare_cached(concat!("select ", token_columns!(), " from admin_token where admin_token_id = ?1"))
                .and_then(|mut s| s.query_row([id], token_from_row).optional())
                .map_err(map_err)?
                .ok_or_else(|| StoreError::NotFound(format!("admin token {id}")))?;
            if before.revoked_at_ms.is_some() {
                return Err(StoreError::Conflict(format!("admin token {id} is already revoked")));
            }
            ctx.conn
                .prepare_cached("update admin_token set revoked_at = ?2 where admin_token_id = ?1")
                .and_then(|mut s| s.execute(params![id, ctx.now_ms]))
                .map_err(map_err)?;
            let after = AdminToken { revoked_at_ms: Some(ctx.now_ms), ..before.clone() };
            audit(
                "token.revoke",
                format!("token:{id}"),
                Some(snapshot::token(&before)),
                Some(snapshot::token(&after)),
            )?;
            Ok(AdminWritten::Token(after))
        }
        AdminWrite::CreateAccount(new) => {
            let account = create_account_in_tx(ctx, new)?;
            audit("account.create", format!("account:{}", account.id), None, Some(snapshot::account(&account)))?;
            Ok(AdminWritten::Account(account))
        }
        AdminWrite::UpdateAccount { id, patch } => {
            let (before, after) = update_account_in_tx(ctx, *id, patch)?;
            audit(
                "account.update",
                format!("account:{id}"),
                Some(snapshot::account(&before)),
                Some(snapshot::account(&after)),
            )?;
            Ok(AdminWritten::Account(after))
        }
        AdminWrite::CreateKey(new) => {
            let (account, key) = create_key_in_tx(ctx, new)?;
            audit("key.create", format!("key:{}", key.id), None, Some(snapshot::key(&key)))?;
            Ok(AdminWritten::Key(account, key))
        }
        AdminWrite::SetKeyStatus { id, status } => {
            let (before, after) = set_key_status_in_tx(ctx, *id, *status)?;
            let action = match status {
                ApiKeyStatus::Active => "key.enable",
                ApiKeyStatus::Disabled => "key.disable",
                ApiKeyStatus::Revoked => "key.revoke",
            };
            audit(action, format!("key:{id}"), Some(snapshot::key(&before)), Some(snapshot::key(&after)))?;
            let account = load_account(ctx.conn, after.account_id)
                .map_err(map_err)?
                .ok_or_else(|| StoreError::Internal(format!("API key {id} has no account")))?;
            Ok(AdminWritten::Key(account, after))
        }
        AdminWrite::AdjustCredits(adjustment) => {
            let (before, outcome) = adjust_in_tx(ctx, adjustment)?;
            if let CreditOutcome::Applied(after, _) = &outcome {
                audit(
                    "credits.adjust",
                    format!("account:{}", adjustment.account_id),
                    Some(snapshot::account(&before)),
                    Some(snapshot::account(after)),
                )?;
            }
            Ok(AdminWritten::Credits(outcome))
        }
        AdminWrite::CancelJob { id } => {
            // The job's own account and state, so the cancel is exactly the customer's.
            let current: Option<(String, String, i64)> = ctx
                .conn
                .prepare_cached("select account_id, status, credit_cost from job where job_id = ?1")
                .and_then(|mut s| s.query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
                .map_err(map_err)?;
            let Some((account, status, cost)) = current else {
                return Ok(AdminWritten::Cancel(CancelOutcome::NotFound));
            };
            let account: AccountId =
                account.parse().map_err(|_| StoreError::Internal(format!("bad account {account}")))?;
            let status =
                JobStatus::parse(&status).ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?;
            let outcome = cancel_in_tx(ctx, account, *id)?;
            if let CancelOutcome::Cancelled(job) = &outcome {
                audit(
                    "job.cancel",
                    format!("job:{id}"),
                    Some(snapshot::job(status, cost)),
                    Some(snapshot::job(job.status, job.credit_cost)),
                )?;
            }
            Ok(AdminWritten::Cancel(outcome))
        }
        AdminWrite::ReplayWebhooks { id } => {
            let events = crate::webhooks::replay_in_tx(ctx, *id)?;
            if events > 0 {
                audit("job.webhooks.replay", format!("job:{id}"), None, Some(json!({ "events": events })))?;
            }
            Ok(AdminWritten::Replayed(events))
        }
        AdminWrite::HoldUpstream(hold) => {
            let before = load_hold(ctx.conn, &hold.name).map_err(map_err)?;
            ctx.conn
                .prepare_cached(
                    "insert into upstream_hold (upstream_account, until_at, reason, created_at) values (?1, ?2, ?3, ?4)
                     on conflict (upstream_account) do update
                     set until_at = excluded.until_at, reason = excluded.reason, created_at = excluded.created_at",
                )
                .and_then(|mut s| s.execute(params![hold.name, hold.until_ms, hold.reason, hold.created_at_ms]))
                .map_err(map_err)?;
            audit(
                "upstream.hold",
                format!("upstream:{}", hold.name),
                before.as_ref().map(snapshot::hold),
                Some(snapshot::hold(hold)),
            )?;
            Ok(AdminWritten::Upstream(Some(hold.clone())))
        }
        AdminWrite::ReleaseUpstream { name } => {
            let Some(before) = load_hold(ctx.conn, name).map_err(map_err)? else {
                return Ok(AdminWritten::Upstream(None));
            };
            ctx.conn
                .prepare_cached("delete from upstream_hold where upstream_account = ?1")
                .and_then(|mut s| s.execute([name]))
                .map_err(map_err)?;
            // A hold that ran out held nothing: its row goes, unaudited.
            if before.until_ms <= ctx.now_ms {
                return Ok(AdminWritten::Upstream(None));
            }
            audit("upstream.release", format!("upstream:{name}"), Some(snapshot::hold(&before)), None)?;
            Ok(AdminWritten::Upstream(Some(before)))
        }
    }
}

/// The audit row of a change, in the change's transaction.
fn insert_audit(
    ctx: &WriteCtx<'_>,
    who: &AuditContext,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "insert into audit_log (admin_token_id, actor, action, target, before, after, request_id, created_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                who.token_id,
                who.actor,
                action,
                target,
                before.map(|v| v.to_string()),
                after.map(|v| v.to_string()),
                who.request_id,
                ctx.now_ms
            ])
        })
        .map_err(map_err)?;
    Ok(())
}

fn create_account_in_tx(ctx: &WriteCtx<'_>, new: &NewAccount) -> Result<Account> {
    if new.max_concurrent_jobs == 0 {
        return Err(StoreError::Conflict("an account needs maxConcurrentJobs of at least 1".into()));
    }
    let id = AccountId::new();
    ctx.conn
        .prepare_cached(
            "insert into account (account_id, name, email, credits, plan, max_concurrent_jobs, created_at, updated_at)
             values (?1, ?2, ?3, 0, ?4, ?5, ?6, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![id.to_string(), new.name, new.email, new.plan, new.max_concurrent_jobs, ctx.now_ms])
        })
        .map_err(map_err)?;
    if new.initial_credits > 0 {
        grant_in_tx(ctx, id, new.initial_credits, Some("initial credits"))?;
    }
    Ok(load_account(ctx.conn, id).map_err(map_err)?.expect("inserted above"))
}

/// Applies a patch; returns the account before and after.
fn update_account_in_tx(ctx: &WriteCtx<'_>, id: AccountId, patch: &AccountPatch) -> Result<(Account, Account)> {
    if patch.max_concurrent_jobs == Some(0) {
        return Err(StoreError::Conflict("maxConcurrentJobs must be at least 1".into()));
    }
    let before =
        load_account(ctx.conn, id).map_err(map_err)?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
    ctx.conn
        .prepare_cached(
            "update account set name = coalesce(?2, name),
                                email = case when ?3 then ?4 else email end,
                                plan = coalesce(?5, plan),
                                max_concurrent_jobs = coalesce(?6, max_concurrent_jobs),
                                disabled = coalesce(?7, disabled),
                                updated_at = ?8
             where account_id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id.to_string(),
                patch.name,
                patch.email.is_some(),
                patch.email.clone().flatten(),
                patch.plan,
                patch.max_concurrent_jobs,
                patch.disabled,
                ctx.now_ms
            ])
        })
        .map_err(map_err)?;
    let after = load_account(ctx.conn, id).map_err(map_err)?.expect("checked above");
    Ok((before, after))
}

/// A credit adjustment: the account before it and the outcome.
fn adjust_in_tx(ctx: &WriteCtx<'_>, adj: &CreditAdjustment) -> Result<(Account, CreditOutcome)> {
    if adj.amount == 0 {
        return Err(StoreError::Conflict("an adjustment must be a non-zero number of credits".into()));
    }
    let conn = ctx.conn;
    let id = adj.account_id;
    let account =
        load_account(conn, id).map_err(map_err)?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
    if let Some(key) = &adj.idempotency_key {
        // The single writer makes this read and the insert below one step: no second
        // adjustment with this key can come between them (the unique index
        // `ledger_entry_idempotency` would refuse it anyway).
        let earlier = conn
            .prepare_cached(concat!(
                "select ",
                ledger_columns!(),
                " from ledger_entry where account_id = ?1 and idempotency_key = ?2"
            ))
            .and_then(|mut s| s.query_row(params![id.to_string(), key], rows::ledger_from_row).optional())
            .map_err(map_err)?;
        if let Some(entry) = earlier {
            let outcome = if entry.amount == adj.amount && entry.note == adj.note {
                CreditOutcome::Replayed(account.clone(), entry)
            } else {
                CreditOutcome::IdempotencyMismatch
            };
            return Ok((account, outcome));
        }
    }
    if account.credits + adj.amount < 0 {
        return Ok((account.clone(), CreditOutcome::Insufficient { available: account.credits }));
    }
    let kind = if adj.amount > 0 { LedgerKind::Grant } else { LedgerKind::Deduct };
    conn.prepare_cached("update account set credits = credits + ?1, updated_at = ?2 where account_id = ?3")
        .and_then(|mut s| s.execute(params![adj.amount, ctx.now_ms, id.to_string()]))
        .map_err(map_err)?;
    // `db::insert_ledger` writes the job-driven rows; only an operator's row carries a key.
    conn.prepare_cached(
        "insert into ledger_entry (account_id, kind, amount, note, idempotency_key, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![id.to_string(), kind.as_str(), adj.amount, adj.note, adj.idempotency_key, ctx.now_ms])
    })
    .map_err(map_err)?;
    let entry = LedgerEntry {
        id: conn.last_insert_rowid(),
        account_id: id,
        kind,
        amount: adj.amount,
        job_id: None,
        note: adj.note.clone(),
        idempotency_key: adj.idempotency_key.clone(),
        created_at_ms: ctx.now_ms,
    };
    let after = load_account(conn, id).map_err(map_err)?.expect("checked above");
    Ok((account, CreditOutcome::Applied(after, entry)))
}

macro_rules! token_columns {
    () => {
        "admin_token_id, name, prefix, token_digest, created_at, revoked_at"
    };
}
use token_columns;

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<AdminToken> {
    let digest: Vec<u8> = row.get(3)?;
    Ok(AdminToken {
        id: row.get(0)?,
        name: row.get(1)?,
        prefix: row.get(2)?,
        digest: KeyDigest(digest.try_into().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, "invalid digest".into())
        })?),
        created_at_ms: row.get(4)?,
        revoked_at_ms: row.get(5)?,
    })
}

fn load_hold(conn: &Connection, name: &str) -> rusqlite::Result<Option<UpstreamHold>> {
    conn.prepare_cached(
        "select upstream_account, until_at, reason, created_at from upstream_hold where upstream_account = ?1",
    )?
    .query_row([name], hold_from_row)
    .optional()
}

fn hold_from_row(row: &Row<'_>) -> rusqlite::Result<UpstreamHold> {
    Ok(UpstreamHold { name: row.get(0)?, until_ms: row.get(1)?, reason: row.get(2)?, created_at_ms: row.get(3)? })
}

fn json_column(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Value>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e)))
    })
    .transpose()
}

pub(crate) fn find_token(conn: &Connection, digest: &KeyDigest) -> rusqlite::Result<Option<AdminToken>> {
    conn.prepare_cached(concat!("select ", token_columns!(), " from admin_token where token_digest = ?1"))?
        .query_row([&digest.0[..]], token_from_row)
        .optional()
}

pub(crate) fn list_tokens(conn: &Connection) -> rusqlite::Result<Vec<AdminToken>> {
    let mut s = conn.prepare_cached(concat!(
        "select ",
        token_columns!(),
        " from admin_token order by created_at, admin_token_id"
    ))?;
    let rows = s.query_map([], token_from_row)?;
    rows.collect()
}

pub(crate) fn audit_log(conn: &Connection, before_id: Option<i64>, limit: u32) -> rusqlite::Result<Vec<AuditRecord>> {
    // A range on the rowid: each page is one seek, however deep.
    let mut s = conn.prepare_cached(
        "select audit_log_id, admin_token_id, actor, action, target, before, after, request_id, created_at
         from audit_log where audit_log_id < ?1 order by audit_log_id desc limit ?2",
    )?;
    let rows = s.query_map(params![before_id.unwrap_or(NO_BOUND), i64::from(limit) + 1], |r| {
        Ok(AuditRecord {
            id: r.get(0)?,
            token_id: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            before: json_column(r, 5)?,
            after: json_column(r, 6)?,
            request_id: r.get(7)?,
            created_at_ms: r.get(8)?,
        })
    })?;
    rows.collect()
}

pub(crate) fn ledger_page(
    conn: &Connection,
    id: AccountId,
    before_id: Option<i64>,
    limit: u32,
) -> rusqlite::Result<Vec<LedgerEntry>> {
    // Newest first down the rowid, filtering by account: the ledger has no account
    // index on purpose (see migration 0001), and an operator's page is rare.
    let mut s = conn.prepare_cached(concat!(
        "select ",
        ledger_columns!(),
        " from ledger_entry where ledger_entry_id < ?2 and account_id = ?1
          order by ledger_entry_id desc limit ?3"
    ))?;
    let rows = s.query_map(
        params![id.to_string(), before_id.unwrap_or(NO_BOUND), i64::from(limit) + 1],
        rows::ledger_from_row,
    )?;
    rows.collect()
}

pub(crate) fn list_accounts(conn: &Connection, q: &AccountQuery) -> rusqlite::Result<Vec<Account>> {
    // A search that is an account id finds that account only; any other search is a
    // case-insensitive substring of name or e-mail. `instr` rather than LIKE, so `%` and
    // `_` in a search are plain characters.
    macro_rules! accounts_sql {
        ($keyset:literal) => {
            concat!(
                "select ",
                account_columns!(),
                " from account
                 where (?1 is null or account_id = ?1)
                   and (?2 is null or instr(unicode_lower(name), ?2) > 0 or instr(unicode_lower(coalesce(email, '')), ?2) > 0) ",
                $keyset,
                " order by created_at desc, account_id desc limit ?5"
            )
        };
    }
    const FIRST_PAGE: &str = accounts_sql!("and ?3 is null and ?4 is null");
    const NEXT_PAGE: &str = accounts_sql!("and (created_at, account_id) < (?3, ?4)");
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (by_id, by_text) = match search {
        Some(s) => match s.parse::<AccountId>() {
            Ok(id) => (Some(id.to_string()), None),
            Err(_) => (None, Some(s.to_lowercase())),
        },
        None => (None, None),
    };
    let sql = if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE };
    let mut s = conn.prepare_cached(sql)?;
    let rows = s.query_map(
        params![
            by_id,
            by_text,
            q.after.map(|(at, _)| at),
            q.after.map(|(_, id)| id.to_string()),
            i64::from(q.limit) + 1
        ],
        account_from_row,
    )?;
    rows.collect()
}

pub(crate) fn admin_jobs(conn: &Connection, q: &AdminJobQuery) -> rusqlite::Result<Vec<JobRecord>> {
    // As `list_jobs`, across accounts, walking `job_created` newest first. The keyset
    // condition has its own statement: inside an `?n is null or ...` it would stop SQLite
    // from seeking in the index.
    macro_rules! admin_jobs_sql {
        ($keyset:literal) => {
            concat!(
                "select ",
                job_columns!(),
                " from job
                 where created_at >= ?5 and created_at < ?6
                   and (?1 is null or account_id = ?1)
                   and (?2 is null or api_key_id = ?2)
                   and (?3 is null or status = ?3)
                   and (?4 is null or model = ?4) ",
                $keyset,
                " order by created_at desc, job_id desc limit ?9"
            )
        };
    }
    const FIRST_PAGE: &str = admin_jobs_sql!("and ?7 is null and ?8 is null");
    const NEXT_PAGE: &str = admin_jobs_sql!("and (created_at, job_id) < (?7, ?8)");
    let sql = if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE };
    let mut s = conn.prepare_cached(sql)?;
    let rows = s.query_map(
        params![
            q.account_id.map(|a| a.to_string()),
            q.api_key_id.map(|k| k.to_string()),
            q.status.map(|s| s.as_str()),
            q.model,
            q.from_ms.unwrap_or(i64::MIN),
            q.to_ms.unwrap_or(i64::MAX),
            q.after.map(|a| a.created_at_ms),
            q.after.map(|a| a.id.to_string()),
            i64::from(q.limit) + 1
        ],
        job_from_row,
    )?;
    rows.collect()
}

pub(crate) fn job_timeline(conn: &Connection, id: JobId) -> rusqlite::Result<Vec<StageChange>> {
    let job_id = id.to_string();
    let created: Option<i64> = conn
        .prepare_cached("select created_at from job where job_id = ?1")?
        .query_row([&job_id], |r| r.get(0))
        .optional()?;
    let Some(created) = created else { return Ok(Vec::new()) };
    // The creation is the job's own row; every later change has a row of its own.
    let mut timeline = vec![StageChange { at_ms: created, from: None, to: Stage::Queued, note: None }];
    let mut s = conn.prepare_cached(
        "select at, from_stage, to_stage, note from job_stage_change where job_id = ?1 order by job_stage_change_id",
    )?;
    let stage = |r: &Row<'_>, col: usize| -> rusqlite::Result<Stage> {
        let text: String = r.get(col)?;
        Stage::parse(&text).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, "invalid stage".into())
        })
    };
    let rows = s.query_map([&job_id], |r| {
        Ok(StageChange { at_ms: r.get(0)?, from: Some(stage(r, 1)?), to: stage(r, 2)?, note: r.get(3)? })
    })?;
    for row in rows {
        timeline.push(row?);
    }
    Ok(timeline)
}

pub(crate) fn usage(conn: &Connection, q: &UsageQuery) -> rusqlite::Result<Vec<UsageRow>> {
    // One grouped query over `job_created`; each job's charge and refund come from the
    // ledger (a cancelled job's credit_cost is 0), found through the per-job unique
    // indexes on charges and refunds.
    let mut s = conn.prepare_cached(
        "select (j.created_at / ?1) * ?1 as bucket,
                case ?2 when 'account' then j.account_id when 'key' then j.api_key_id else j.model end as grp,
                count(*),
                sum(j.status = 'COMPLETED'), sum(j.status = 'FAILED'), sum(j.status = 'CANCELLED'),
                coalesce(sum(-(select l.amount from ledger_entry l where l.job_id = j.job_id and l.kind = 'charge')), 0),
                coalesce(sum((select l.amount from ledger_entry l where l.job_id = j.job_id and l.kind = 'refund')), 0)
         from job j
         where j.created_at >= ?3 and j.created_at < ?4 and (?5 is null or j.account_id = ?5)
         group by bucket, grp
         order by bucket, grp",
    )?;
    let group = match q.group_by {
        UsageGroup::Account => "account",
        UsageGroup::Key => "key",
        UsageGroup::Model => "model",
    };
    let rows =
        s.query_map(params![q.bucket.millis(), group, q.from_ms, q.to_ms, q.account_id.map(|a| a.to_string())], |r| {
            Ok(UsageRow {
                bucket_start_ms: r.get(0)?,
                group: r.get(1)?,
                submitted: r.get(2)?,
                completed: r.get(3)?,
                failed: r.get(4)?,
                cancelled: r.get(5)?,
                credits_charged: r.get(6)?,
                credits_refunded: r.get(7)?,
            })
        })?;
    rows.collect()
}

pub(crate) fn upstream_activity(
    conn: &Connection,
    now_ms: i64,
    window_ms: i64,
) -> rusqlite::Result<Vec<UpstreamActivity>> {
    let mut s = conn.prepare_cached(
        "select name, sum(calls), sum(in_flight) from (
             select upstream_account as name, count(*) as calls, 0 as in_flight
             from upstream_call where called_at > ?1 group by upstream_account
             union all
             select upstream_account, 0, count(*)
             from job
             where (stage = 'submitting' or stage = 'running' or stage = 'downloading') and upstream_account is not null
             group by upstream_account
         )
         group by name order by name",
    )?;
    let rows = s.query_map([now_ms - window_ms], |r| {
        Ok(UpstreamActivity { name: r.get(0)?, creates_in_window: r.get(1)?, in_flight: r.get(2)? })
    })?;
    rows.collect()
}

pub(crate) fn upstream_holds(conn: &Connection, now_ms: i64) -> rusqlite::Result<Vec<UpstreamHold>> {
    let mut s = conn.prepare_cached(
        "select upstream_account, until_at, reason, created_at from upstream_hold
         where until_at > ?1 order by upstream_account",
    )?;
    let rows = s.query_map([now_ms], hold_from_row)?;
    rows.collect()
}

pub(crate) fn overview(conn: &Connection, now_ms: i64) -> rusqlite::Result<Overview> {
    const MINUTE_MS: i64 = 60_000;
    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 86_400_000;
    let mut counts = std::collections::HashMap::new();
    {
        let mut s = conn.prepare_cached("select status, count(*) from job group by status")?;
        let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            counts.insert(status, n);
        }
    }
    let by_status = JobStatus::ALL.iter().map(|s| (*s, counts.get(s.as_str()).copied().unwrap_or(0))).collect();
    let oldest_queued_at_ms =
        conn.prepare_cached("select min(created_at) from job where stage = 'queued'")?.query_row([], |r| r.get(0))?;
    let per_minute = {
        let mut s = conn.prepare_cached(
            "select (completed_at / ?2) * ?2 as minute, sum(status = 'COMPLETED'), sum(status = 'FAILED')
             from job
             where completed_at > ?1 - ?3 and completed_at <= ?1 and (status = 'COMPLETED' or status = 'FAILED')
             group by minute order by minute",
        )?;
        let rows = s.query_map(params![now_ms, MINUTE_MS, HOUR_MS], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let midnight = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let (charged_today, refunded_today) = conn
        .prepare_cached(
            "select coalesce(-sum(case when kind = 'charge' then amount end), 0),
                    coalesce(sum(case when kind = 'refund' then amount end), 0)
             from ledger_entry where created_at >= ?1",
        )?
        .query_row([midnight], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Overview { by_status, oldest_queued_at_ms, per_minute, charged_today, refunded_today })
}
