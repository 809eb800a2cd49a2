//! The engine's operations on SQLite: fair claims within upstream budgets, the create
//! call log, compare-and-set transitions with their refunds, and the due-time schedule.
//!
//! Each function runs inside one writer transaction, so every check and the write it
//! guards are atomic: the single writer thread is this backend's lock.

use domain::{claim, AccountId, JobId, Stage};
use rusqlite::{params, Connection, OptionalExtension};
use store::{
    CallReservation, ClaimRequest, ClaimedJob, EngineJob, LedgerKind, QueueDepth, Result, StoreError, Transition,
};

use crate::db::{insert_ledger, insert_stage_change, map_err};
use crate::rows::{engine_job_columns, engine_job_from_row, job_columns};
use crate::writer::WriteCtx;

pub(crate) fn load_engine_job(conn: &Connection, id: JobId) -> rusqlite::Result<Option<EngineJob>> {
    conn.prepare_cached(concat!("select ", engine_job_columns!(), " from job where job_id = ?1"))?
        .query_row([id.to_string()], engine_job_from_row)
        .optional()
}

/// Gathers what the claim plan needs ([`domain::claim`]) inside the writer's
/// transaction, which the single writer makes a lock on every count read here, and
/// moves the planned jobs to `submitting`.
pub(crate) fn claim_in_tx(ctx: &WriteCtx<'_>, req: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
    let conn = ctx.conn;
    let now = ctx.now_ms;
    let rooms = upstream_rooms(conn, req, now).map_err(map_err)?;
    if !claim::any_room(&rooms) || req.max_jobs == 0 {
        return Ok(Vec::new());
    }
    let mut accounts = candidates(conn).map_err(map_err)?;
    claim::order(&mut accounts, req.after_account);
    // Later accounts cannot be reached once `max_jobs` accounts have a job to give.
    let limit = claim::per_account_limit(&rooms, req.max_jobs);
    let mut queues = Vec::new();
    let mut waiting = 0;
    for account in accounts.iter().filter(|a| a.capacity > 0) {
        if waiting >= req.max_jobs {
            break;
        }
        let jobs = next_queued(conn, account.account_id, now, account.capacity.min(limit)).map_err(map_err)?;
        waiting += usize::from(!jobs.is_empty());
        queues.push(claim::Queue { capacity: account.capacity, jobs });
    }
    let mut claimed = Vec::new();
    for (job_id, room) in claim::plan(&queues, &rooms, req.max_jobs) {
        let upstream = &req.upstreams[room].name;
        let moved = conn
            .prepare_cached(
                "update job set stage = 'submitting', status = 'PROCESSING', upstream_account = ?2, due_at = ?3,
                                started_at = coalesce(started_at, ?4), progress = max(coalesce(progress, 0), ?5),
                                updated_at = ?4
                 where job_id = ?1 and stage = 'queued'",
            )
            .and_then(|mut s| s.execute(params![job_id, upstream, now + req.lease_ms, now, claim::CLAIMED_PROGRESS]))
            .map_err(map_err)?;
        if moved != 1 {
            return Err(StoreError::Internal(format!("queued job {job_id} vanished during a claim")));
        }
        let note = format!("upstream {upstream}");
        insert_stage_change(conn, &job_id, Stage::Queued, Stage::Submitting, Some(&note), now).map_err(map_err)?;
        let id: JobId = job_id.parse().map_err(|_| StoreError::Internal(format!("bad job id {job_id}")))?;
        let job = load_engine_job(conn, id).map_err(map_err)?.expect("updated above");
        claimed.push(ClaimedJob { job, upstream: upstream.clone() });
    }
    Ok(claimed)
}

/// Each upstream's room, in the request's order.
fn upstream_rooms(conn: &Connection, req: &ClaimRequest, now: i64) -> rusqlite::Result<Vec<claim::Room>> {
    let mut used = Vec::with_capacity(req.upstreams.len());
    for u in &req.upstreams {
        let n: i64 = conn
            .prepare_cached("select count(*) from upstream_call where upstream_account = ?1 and called_at > ?2")?
            .query_row(params![u.name, now - claim::UPSTREAM_WINDOW_MS], |r| r.get(0))?;
        used.push(n);
    }
    let mut in_flight = vec![0; req.upstreams.len()];
    // Most rounds find every budget spent: skip counting tasks in flight then.
    let calls_left = |(u, used): (&store::UpstreamBudget, &i64)| {
        claim::Room::new(u.create_rpm, *used, u.claimable_now, 0, 0).calls > 0
    };
    if req.upstreams.iter().zip(&used).any(calls_left) {
        // Upstream tasks in flight: created (or being created) and not finished upstream.
        let mut s = conn.prepare_cached(
            "select upstream_account, count(*) from job
             where (stage = 'submitting' or stage = 'running' or stage = 'downloading') and stage <> 'downloading'
             group by upstream_account",
        )?;
        let rows = s.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, n) = row?;
            if let Some(at) = req.upstreams.iter().position(|u| name.as_deref() == Some(u.name.as_str())) {
                in_flight[at] = n;
            }
        }
    }
    Ok(req
        .upstreams
        .iter()
        .zip(used.iter().zip(&in_flight))
        .map(|(u, (used, in_flight))| {
            claim::Room::new(u.create_rpm, *used, u.claimable_now, u.max_in_flight, *in_flight)
        })
        .collect())
}

/// Customer accounts with queued jobs, in id order, with their free capacity.
///
/// The accounts are found by a loose index scan: one seek in `job_queued` per account
/// (the next account id after the last one found) instead of visiting every queued job,
/// so a queue of a million jobs from a few accounts costs a few seeks. An account whose
/// queued jobs are all backing off is listed too; it gives no job.
fn candidates(conn: &Connection) -> rusqlite::Result<Vec<claim::Account>> {
    let mut s = conn.prepare_cached(
        "with recursive queued_account(account_id) as (
             select min(account_id) from job where stage = 'queued'
             union all
             select (select min(account_id) from job where stage = 'queued' and account_id > q.account_id)
             from queued_account q where q.account_id is not null
         )
         select q.account_id, a.max_concurrent_jobs - (
                    select count(*) from job j where j.account_id = q.account_id
                      and (j.stage = 'submitting' or j.stage = 'running' or j.stage = 'downloading'))
         from queued_account q
         join account a on a.account_id = q.account_id
         order by q.account_id",
    )?;
    let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut accounts = Vec::new();
    for row in rows {
        let (id, capacity) = row?;
        let account_id = id
            .parse()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?;
        accounts.push(claim::Account { account_id, capacity });
    }
    Ok(accounts)
}

/// An account's oldest eligible queued jobs, at most `limit`.
fn next_queued(conn: &Connection, account: AccountId, now: i64, limit: i64) -> rusqlite::Result<Vec<String>> {
    let mut s = conn.prepare_cached(
        "select job_id from job
         where stage = 'queued' and account_id = ?1 and (due_at is null or due_at <= ?2)
         order by created_at, job_id limit ?3",
    )?;
    let rows = s.query_map(params![account.to_string(), now, limit], |r| r.get(0))?;
    rows.collect()
}

pub(crate) fn reserve_call_in_tx(
    ctx: &WriteCtx<'_>,
    upstream: &str,
    job_id: JobId,
    create_rpm: u32,
    window_ms: i64,
) -> Result<CallReservation> {
    let conn = ctx.conn;
    let since = ctx.now_ms - window_ms;
    (|| -> rusqlite::Result<CallReservation> {
        // Rows older than the window can never count again.
        conn.prepare_cached("delete from upstream_call where upstream_account = ?1 and called_at <= ?2")?
            .execute(params![upstream, since])?;
        let (used, oldest): (i64, Option<i64>) = conn
            .prepare_cached("select count(*), min(called_at) from upstream_call where upstream_account = ?1")?
            .query_row([upstream], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if used >= i64::from(create_rpm) {
            return Ok(CallReservation::FullUntil(oldest.unwrap_or(ctx.now_ms) + window_ms));
        }
        conn.prepare_cached("insert into upstream_call (upstream_account, job_id, called_at) values (?1, ?2, ?3)")?
            .execute(params![upstream, job_id.to_string(), ctx.now_ms])?;
        conn.prepare_cached("update job set attempts = attempts + 1 where job_id = ?1")?
            .execute([job_id.to_string()])?;
        Ok(CallReservation::Granted)
    })()
    .map_err(map_err)
}

pub(crate) fn transition_in_tx(ctx: &WriteCtx<'_>, t: &Transition) -> Result<Option<EngineJob>> {
    if !t.from.can_move_to(t.to) {
        return Err(StoreError::Internal(format!("job {}: {:?} -> {:?} is not a transition", t.job_id, t.from, t.to)));
    }
    let conn = ctx.conn;
    let job_id = t.job_id.to_string();
    // stage, due_at, credit_cost, account_id, progress
    type Current = (String, Option<i64>, i64, String, Option<i64>);
    let current: Option<Current> = conn
        .prepare_cached("select stage, due_at, credit_cost, account_id, progress from job where job_id = ?1")
        .and_then(|mut s| {
            s.query_row([&job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional()
        })
        .map_err(map_err)?;
    let Some((stage, due_at, cost, account, old_progress)) = current else {
        return Err(StoreError::NotFound(format!("job {job_id}")));
    };
    if stage != t.from.as_str() || t.if_due_at_ms.is_some_and(|expected| due_at != Some(expected)) {
        return Ok(None);
    }
    let terminal = t.to.is_terminal();
    let refund = t.to.refunds() && cost > 0;
    let result = t.result.as_ref().map(|v| v.to_string());
    conn.prepare_cached(
        "update job set stage = ?2, status = ?3, due_at = ?4,
                        progress = max(coalesce(progress, 0), coalesce(?5, 0)),
                        upstream_task_id = coalesce(?6, upstream_task_id),
                        upstream_file_id = coalesce(?7, upstream_file_id),
                        result = coalesce(?8, result), result_bytes = coalesce(?9, result_bytes),
                        error = coalesce(?10, error),
                        completed_at = case when ?11 then ?12 else completed_at end,
                        credit_cost = case when ?13 then 0 else credit_cost end,
                        upstream_account = case when ?2 = 'queued' then null else upstream_account end,
                        updated_at = ?12
         where job_id = ?1 and stage = ?14",
    )
    .and_then(|mut s| {
        s.execute(params![
            job_id,
            t.to.as_str(),
            t.to.public_status().as_str(),
            if terminal { None } else { t.due_at_ms },
            t.progress,
            t.upstream_task_id,
            t.upstream_file_id,
            result,
            t.result_bytes,
            t.error,
            terminal,
            ctx.now_ms,
            t.to.refunds(),
            t.from.as_str(),
        ])
    })
    .map_err(map_err)?;
    // A poll (same stage) is not a change the timeline shows.
    if t.from != t.to {
        let task = t.upstream_task_id.as_ref().map(|task| format!("MiniMax task {task}"));
        let note = t.error.as_deref().or(task.as_deref());
        insert_stage_change(conn, &job_id, t.from, t.to, note, ctx.now_ms).map_err(map_err)?;
    }
    if refund {
        let account_id: AccountId = account.parse().map_err(|_| StoreError::Internal("bad account id".into()))?;
        conn.prepare_cached("update account set credits = credits + ?1, updated_at = ?2 where account_id = ?3")
            .and_then(|mut s| s.execute(params![cost, ctx.now_ms, account]))
            .map_err(map_err)?;
        // The unique index on refunds per job turns a second refund into a constraint
        // error, which rolls this whole transition back.
        let note = if t.to == Stage::Failed { "failed" } else { "cancelled" };
        insert_ledger(conn, account_id, LedgerKind::Refund, cost, Some(t.job_id), Some(note), ctx.now_ms)
            .map_err(map_err)?;
    }
    let job = load_engine_job(conn, t.job_id).map_err(map_err)?.expect("updated above");
    // The client's webhook event, in this same transaction: a crash cannot separate them.
    crate::webhooks::raise_events(ctx, &job, old_progress.unwrap_or(0))?;
    Ok(Some(job))
}

pub(crate) fn due_jobs(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<Vec<EngineJob>> {
    let mut s = conn.prepare_cached(concat!(
        "select ",
        engine_job_columns!(),
        " from job where (stage = 'submitting' or stage = 'running' or stage = 'downloading') and due_at <= ?1
          order by due_at limit ?2"
    ))?;
    let rows = s.query_map(params![now_ms, limit as i64], engine_job_from_row)?;
    rows.collect()
}

pub(crate) fn next_due_at(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "select min(due_at) from job where (stage = 'submitting' or stage = 'running' or stage = 'downloading')",
    )?
    .query_row([], |r| r.get(0))
}

pub(crate) fn queue_depth(conn: &Connection) -> rusqlite::Result<QueueDepth> {
    let (queued, oldest_queued_at_ms): (i64, Option<i64>) = conn
        .prepare_cached("select count(*), min(created_at) from job where stage = 'queued'")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let active: i64 = conn
        .prepare_cached(
            "select count(*) from job where (stage = 'submitting' or stage = 'running' or stage = 'downloading')",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(QueueDepth { queued: queued as u64, active: active as u64, oldest_queued_at_ms })
}

pub(crate) fn results_to_expire(conn: &Connection, before_ms: i64, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut s = conn.prepare_cached(
        "select job_id from job where stage = 'completed' and expired = 0 and completed_at < ?1
         order by completed_at limit ?2",
    )?;
    let rows = s.query_map(params![before_ms, limit as i64], |r| r.get(0))?;
    rows.collect()
}

pub(crate) fn mark_expired_in_tx(ctx: &WriteCtx<'_>, id: JobId) -> Result<Option<store::JobRecord>> {
    let conn = ctx.conn;
    conn.prepare_cached("update job set expired = 1, updated_at = ?2 where job_id = ?1 and stage = 'completed'")
        .and_then(|mut s| s.execute(params![id.to_string(), ctx.now_ms]))
        .map_err(map_err)?;
    conn.prepare_cached(concat!("select ", job_columns!(), " from job where job_id = ?1"))
        .and_then(|mut s| s.query_row([id.to_string()], crate::rows::job_from_row).optional())
        .map_err(map_err)
}
