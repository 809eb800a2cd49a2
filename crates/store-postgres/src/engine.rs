//! The engine's operations on PostgreSQL: fair claims within upstream budgets, the
//! create-call log, compare-and-set transitions with their refunds and webhook events,
//! and the due-time schedule. Several nodes run these at once against one database.
//!
//! How each rule stays true across nodes:
//! - **Claims** take one transaction-scoped advisory lock per schema, so claims run one
//!   at a time cluster-wide, as they do on SQLite's single writer. The caps a claim
//!   honours (an account's `max_concurrent_jobs`, an upstream's in-flight slots) are
//!   counts over many rows; two claims running side by side would each see the other's
//!   slots as free and together overshoot them. A claim is a handful of index reads, so
//!   taking turns costs little. Queued rows are still read `for update skip locked`, so
//!   a claim never waits behind a cancel or a transition holding one job.
//! - **Create budgets** take an advisory lock per upstream account, then count the
//!   window and record the call in one statement, so the budget holds however many nodes
//!   submit at once.
//! - **Transitions** lock the job row (`for update`) and compare its stage (and due time)
//!   before writing; the loser of a race reads the winner's row and gets `None`. The
//!   refund and the client's webhook event are written in the same transaction.

use deadpool_postgres::{GenericClient, Object};
use domain::{claim, AccountId, JobId, Stage};
use store::{CallReservation, ClaimRequest, ClaimedJob, EngineJob, QueueDepth, Result, StoreError, Transition};
use uuid::Uuid;

use crate::rows::{self, engine_job_columns, ENGINE_JOB_COLUMNS};
use crate::wakeups::{Announcer, Work};
use crate::{db_err, locks, Clock, Param};

pub(crate) async fn engine_job(client: &impl GenericClient, id: JobId) -> Result<Option<EngineJob>> {
    const SQL: &str = concat!("select ", engine_job_columns!(), " from job where job_id = $1");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query_opt(&stmt, &[&id.0]).await.map_err(db_err)?.as_ref().map(rows::engine_job).transpose()
}

/// Gathers what the claim plan needs ([`domain::claim`]) under the claim lock, and
/// moves the planned jobs to `submitting`.
pub(crate) async fn claim_jobs(client: &mut Object, req: &ClaimRequest, now_ms: i64) -> Result<Vec<ClaimedJob>> {
    if req.max_jobs == 0 || req.upstreams.is_empty() {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await.map_err(db_err)?;
    locks::take(&tx, locks::CLAIMS, "").await?;
    let rooms = upstream_rooms(&tx, req, now_ms).await?;
    if !claim::any_room(&rooms) {
        return Ok(Vec::new());
    }
    let mut accounts = candidates(&tx).await?;
    claim::order(&mut accounts, req.after_account);
    let accounts: Vec<claim::Account> = accounts.into_iter().filter(|a| a.capacity > 0).collect();
    // Queues are read (and locked) in serving order, a few accounts per query, until
    // `max_jobs` accounts have a job to give: later accounts cannot be reached.
    let limit = claim::per_account_limit(&rooms, req.max_jobs);
    let mut queues: Vec<claim::Queue<Uuid>> = Vec::new();
    let mut waiting = 0;
    while queues.len() < accounts.len() && waiting < req.max_jobs {
        let chunk = &accounts[queues.len()..(queues.len() + req.max_jobs - waiting).min(accounts.len())];
        for queue in fetch_queues(&tx, chunk, limit, now_ms).await? {
            waiting += usize::from(!queue.jobs.is_empty());
            queues.push(queue);
        }
    }
    let picked: Vec<(Uuid, String)> = claim::plan(&queues, &rooms, req.max_jobs)
        .into_iter()
        .map(|(job, room)| (job, req.upstreams[room].name.clone()))
        .collect();
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let claimed = mark_claimed(&tx, &picked, now_ms, req.lease_ms).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(claimed)
}

/// Each upstream's room, in the request's order.
async fn upstream_rooms(client: &impl GenericClient, req: &ClaimRequest, now_ms: i64) -> Result<Vec<claim::Room>> {
    // Upstream tasks in flight are those created (or being created) and not finished
    // upstream: `submitting` and `running`, not `downloading`, as on SQLite.
    const SQL: &str = "select u.name,
                              (select count(*) from upstream_call c
                               where c.upstream_account = u.name and c.called_at > $2) as used,
                              (select count(*) from job j
                               where j.upstream_account = u.name and j.stage in ('submitting', 'running')) as in_flight
                       from unnest($1::text[]) with ordinality as u(name, position)
                       order by u.position";
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let names: Vec<&str> = req.upstreams.iter().map(|u| u.name.as_str()).collect();
    let rows = client.query(&stmt, &[&names, &(now_ms - claim::UPSTREAM_WINDOW_MS)]).await.map_err(db_err)?;
    req.upstreams
        .iter()
        .zip(rows.iter())
        .map(|(u, row)| {
            let used: i64 = rows::get(row, 1)?;
            let in_flight: i64 = rows::get(row, 2)?;
            Ok(claim::Room::new(u.create_rpm, used, u.claimable_now, u.max_in_flight, in_flight))
        })
        .collect()
}

/// Customer accounts with queued jobs, in id order, with their free capacity.
///
/// The accounts are found by a loose index scan over `job_queued`: one seek per account
/// (the next account id after the last one found) instead of visiting every queued job.
/// An account whose queued jobs are all backing off is listed too; it yields no job.
async fn candidates(client: &impl GenericClient) -> Result<Vec<claim::Account>> {
    const SQL: &str = "with recursive queued_account(account_id) as (
                           (select account_id from job where stage = 'queued' order by account_id limit 1)
                           union all
                           select (select j.account_id from job j
                                   where j.stage = 'queued' and j.account_id > q.account_id
                                   order by j.account_id limit 1)
                           from queued_account q where q.account_id is not null
                       )
                       select q.account_id, a.max_concurrent_jobs - (
                                  select count(*) from job j where j.account_id = q.account_id
                                    and j.stage in ('submitting', 'running', 'downloading'))
                       from queued_account q
                       join account a on a.account_id = q.account_id
                       order by q.account_id";
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let rows = client.query(&stmt, &[]).await.map_err(db_err)?;
    rows.iter()
        .map(|row| Ok(claim::Account { account_id: AccountId(rows::get(row, 0)?), capacity: rows::get(row, 1)? }))
        .collect()
}

/// Fetches and locks the oldest eligible queued jobs of `accounts`, in one query: their
/// queues, in the same order.
///
/// `skip locked`: a job another transaction holds (a cancel in progress) is passed over
/// rather than waited for; it is still queued for the next claim if the cancel fails.
async fn fetch_queues(
    client: &impl GenericClient,
    accounts: &[claim::Account],
    per_account_limit: i64,
    now_ms: i64,
) -> Result<Vec<claim::Queue<Uuid>>> {
    const SQL: &str = "select c.account_id, j.job_id
                       from unnest($1::uuid[], $2::bigint[]) as c(account_id, wanted)
                       cross join lateral (
                           select job_id, created_at from job
                           where stage = 'queued' and account_id = c.account_id
                             and (due_at is null or due_at <= $3)
                           order by created_at, job_id
                           limit c.wanted
                           for update skip locked
                       ) j
                       order by c.account_id, j.created_at, j.job_id";
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.account_id.0).collect();
    let limits: Vec<i64> = accounts.iter().map(|a| a.capacity.min(per_account_limit)).collect();
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let rows = client.query(&stmt, &[&ids, &limits, &now_ms]).await.map_err(db_err)?;
    let mut queues: Vec<claim::Queue<Uuid>> =
        accounts.iter().map(|a| claim::Queue { capacity: a.capacity, jobs: Vec::new() }).collect();
    for row in &rows {
        let account: Uuid = rows::get(row, 0)?;
        let job: Uuid = rows::get(row, 1)?;
        if let Some(at) = ids.iter().position(|id| *id == account) {
            queues[at].jobs.push(job);
        }
    }
    Ok(queues)
}

/// Moves the picked jobs to `submitting` with their lease; returns them in pick order.
async fn mark_claimed(
    client: &impl GenericClient,
    picked: &[(Uuid, String)],
    now_ms: i64,
    lease_ms: i64,
) -> Result<Vec<ClaimedJob>> {
    // The stage changes are logged for the admin timeline by the same statement.
    const SQL: &str = concat!(
        "with claimed as (
             update job set stage = 'submitting', status = 'PROCESSING', upstream_account = c.upstream_name,
                            due_at = $3, started_at = coalesce(started_at, $4),
                            progress = greatest(coalesce(progress, 0), $5), updated_at = $4
             from unnest($1::uuid[], $2::text[]) as c(claimed_id, upstream_name)
             where job_id = c.claimed_id and stage = 'queued'
             returning job.*
         ), logged as (
             insert into job_stage_change (job_id, from_stage, to_stage, note, at)
             select job_id, 'queued', 'submitting', 'upstream ' || upstream_account, $4 from claimed
         )
         select ",
        engine_job_columns!(),
        " from claimed"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let ids: Vec<Uuid> = picked.iter().map(|(id, _)| *id).collect();
    let upstreams: Vec<&str> = picked.iter().map(|(_, u)| u.as_str()).collect();
    let params: [Param<'_>; 5] = [&ids, &upstreams, &(now_ms + lease_ms), &now_ms, &claim::CLAIMED_PROGRESS];
    let rows = client.query(&stmt, &params).await.map_err(db_err)?;
    if rows.len() != picked.len() {
        // The rows were locked by this transaction since they were read as queued.
        return Err(StoreError::Internal(format!("{} of {} locked queued jobs moved", rows.len(), picked.len())));
    }
    let mut jobs: Vec<EngineJob> = rows.iter().map(rows::engine_job).collect::<Result<_>>()?;
    let mut claimed = Vec::with_capacity(picked.len());
    for (id, upstream) in picked {
        let at = jobs.iter().position(|j| j.record.id.0 == *id).expect("every picked job was returned (counted above)");
        claimed.push(ClaimedJob { job: jobs.swap_remove(at), upstream: upstream.clone() });
    }
    Ok(claimed)
}

pub(crate) async fn reserve_upstream_call(
    client: &mut Object,
    upstream: &str,
    job_id: JobId,
    create_rpm: u32,
    window_ms: i64,
    clock: &Clock,
) -> Result<CallReservation> {
    // Rows older than the window can never count again, so the same statement deletes
    // them. Counting what is left and adding the new call happen together, and the
    // advisory lock taken first means no other node counts this upstream meanwhile (the
    // statement starts after the lock, so it sees every call committed before).
    const SQL: &str = "with expired as (
                           delete from upstream_call where upstream_account = $1 and called_at <= $2
                       ),
                       recent as (
                           select count(*) as used, min(called_at) as oldest from upstream_call
                           where upstream_account = $1 and called_at > $2
                       ),
                       call as (
                           insert into upstream_call (upstream_account, job_id, called_at)
                           select $1, $3, $4 from recent where used < $5
                           returning job_id
                       ),
                       counted as (
                           update job set attempts = attempts + 1 where job_id in (select job_id from call)
                       )
                       select used, oldest from recent";
    let tx = client.transaction().await.map_err(db_err)?;
    locks::take(&tx, locks::UPSTREAM_CALLS, upstream).await?;
    // The clock is read once the lock is held, so calls are recorded in the order they
    // were granted.
    let now_ms = clock.now_ms();
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 5] = [&upstream, &(now_ms - window_ms), &job_id.0, &now_ms, &i64::from(create_rpm)];
    let row = tx.query_one(&stmt, &params).await.map_err(db_err)?;
    let used: i64 = rows::get(&row, 0)?;
    let oldest: Option<i64> = rows::get(&row, 1)?;
    tx.commit().await.map_err(db_err)?;
    if used >= i64::from(create_rpm) {
        return Ok(CallReservation::FullUntil(oldest.unwrap_or(now_ms) + window_ms));
    }
    Ok(CallReservation::Granted)
}

pub(crate) async fn transition(
    client: &mut Object,
    t: &Transition,
    now_ms: i64,
    announcer: &Announcer,
) -> Result<Option<EngineJob>> {
    if !t.from.can_move_to(t.to) {
        return Err(StoreError::Internal(format!("job {}: {:?} -> {:?} is not a transition", t.job_id, t.from, t.to)));
    }
    let tx = client.transaction().await.map_err(db_err)?;
    // The row lock serialises racing transitions of one job (two pollers, a poll and a
    // MiniMax callback): the second reads the row as the first left it and finds the
    // stage (or due time) no longer what it expected.
    let stmt = tx
        .prepare_cached("select stage, due_at, credit_cost, account_id, progress from job where job_id = $1 for update")
        .await
        .map_err(db_err)?;
    let Some(current) = tx.query_opt(&stmt, &[&t.job_id.0]).await.map_err(db_err)? else {
        return Err(StoreError::NotFound(format!("job {}", t.job_id)));
    };
    let stage: &str = rows::get(&current, 0)?;
    let due_at: Option<i64> = rows::get(&current, 1)?;
    if stage != t.from.as_str() || t.if_due_at_ms.is_some_and(|expected| due_at != Some(expected)) {
        return Ok(None);
    }
    let cost: i64 = rows::get(&current, 2)?;
    let account = AccountId(rows::get(&current, 3)?);
    let old_progress: Option<i64> = rows::get(&current, 4)?;

    // A change of stage (not a poll staying in `running`) is logged for the admin
    // timeline by the same statement: no extra round trip on the engine's hot path.
    const UPDATE: &str = concat!(
        "with moved as (
             update job set stage = $2::text, status = $3::text, due_at = $4::bigint,
                            progress = greatest(coalesce(progress, 0), coalesce($5::bigint, 0)),
                            upstream_task_id = coalesce($6::text, upstream_task_id),
                            upstream_file_id = coalesce($7::text, upstream_file_id),
                            result = coalesce($8::text, result), result_bytes = coalesce($9::bigint, result_bytes),
                            error = coalesce($10::text, error),
                            completed_at = case when $11::boolean then $12::bigint else completed_at end,
                            credit_cost = case when $13::boolean then 0 else credit_cost end,
                            upstream_account = case when $2::text = 'queued' then null else upstream_account end,
                            updated_at = $12::bigint
             where job_id = $1 and stage = $14::text
             returning *
         ), logged as (
             insert into job_stage_change (job_id, from_stage, to_stage, note, at)
             select job_id, $14::text, $2::text, $15::text, $12::bigint from moved where $14::text <> $2::text
         )
         select ",
        engine_job_columns!(),
        ", webhook_url, webhook_events from moved"
    );
    let terminal = t.to.is_terminal();
    let result = t.result.as_ref().map(|v| v.to_string());
    // What the timeline says about the change: the failure, else the task MiniMax took.
    let note = t.error.clone().or_else(|| t.upstream_task_id.as_ref().map(|task| format!("MiniMax task {task}")));
    let stmt = tx.prepare_cached(UPDATE).await.map_err(db_err)?;
    let params: [Param<'_>; 15] = [
        &t.job_id.0,
        &t.to.as_str(),
        &t.to.public_status().as_str(),
        &if terminal { None } else { t.due_at_ms },
        &t.progress,
        &t.upstream_task_id,
        &t.upstream_file_id,
        &result,
        &t.result_bytes,
        &t.error,
        &terminal,
        &now_ms,
        &t.to.refunds(),
        &t.from.as_str(),
        &note,
    ];
    let row = tx.query_one(&stmt, &params).await.map_err(db_err)?;
    let job = rows::engine_job(&row)?;
    let webhook_url: Option<&str> = rows::get(&row, ENGINE_JOB_COLUMNS)?;
    let webhook_events: Option<&str> = rows::get(&row, ENGINE_JOB_COLUMNS + 1)?;
    if t.to.refunds() && cost > 0 {
        let note = if t.to == Stage::Failed { "failed" } else { "cancelled" };
        crate::accounts::refund(&tx, account, t.job_id, cost, note, now_ms).await?;
    }
    // The client's webhook event, in this same transaction: a crash cannot separate them.
    let raised =
        crate::webhooks::raise_event(&tx, &job, webhook_url, webhook_events, old_progress.unwrap_or(0), now_ms).await?;
    tx.commit().await.map_err(db_err)?;
    if raised {
        announcer.announce(Work::Webhooks);
    }
    if t.to == Stage::Queued {
        // Back in the queue (a retry after a transient error): any node's dispatcher may
        // take it once its back-off is over.
        announcer.announce(Work::Jobs);
    }
    Ok(Some(job))
}

pub(crate) async fn due_jobs(client: &Object, now_ms: i64, limit: usize) -> Result<Vec<EngineJob>> {
    const SQL: &str = concat!(
        "select ",
        engine_job_columns!(),
        " from job where stage in ('submitting', 'running', 'downloading') and due_at <= $1
          order by due_at, job_id limit $2"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    client.query(&stmt, &[&now_ms, &limit]).await.map_err(db_err)?.iter().map(rows::engine_job).collect()
}

pub(crate) async fn next_due_at(client: &Object) -> Result<Option<i64>> {
    // As on SQLite: the due times of active jobs. (A queued job backing off is found by
    // the dispatcher's own polling.)
    let stmt = client
        .prepare_cached("select min(due_at) from job where stage in ('submitting', 'running', 'downloading')")
        .await
        .map_err(db_err)?;
    rows::get(&client.query_one(&stmt, &[]).await.map_err(db_err)?, 0)
}

pub(crate) async fn queue_depth(client: &Object) -> Result<QueueDepth> {
    let stmt = client
        .prepare_cached(
            "select (select count(*) from job where stage = 'queued'),
                    (select count(*) from job where stage in ('submitting', 'running', 'downloading')),
                    (select min(created_at) from job where stage = 'queued')",
        )
        .await
        .map_err(db_err)?;
    let row = client.query_one(&stmt, &[]).await.map_err(db_err)?;
    let queued: i64 = rows::get(&row, 0)?;
    let active: i64 = rows::get(&row, 1)?;
    let oldest_queued_at_ms: Option<i64> = rows::get(&row, 2)?;
    Ok(QueueDepth { queued: queued as u64, active: active as u64, oldest_queued_at_ms })
}

pub(crate) async fn results_to_expire(client: &Object, before_ms: i64, limit: usize) -> Result<Vec<JobId>> {
    let stmt = client
        .prepare_cached(
            "select job_id from job where stage = 'completed' and not expired and completed_at < $1
             order by completed_at, job_id limit $2",
        )
        .await
        .map_err(db_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&stmt, &[&before_ms, &limit]).await.map_err(db_err)?;
    rows.iter().map(|r| rows::get(r, 0).map(JobId)).collect()
}

/// Returns the job's account when the job changed.
pub(crate) async fn mark_expired(client: &Object, id: JobId, now_ms: i64) -> Result<Option<AccountId>> {
    let stmt = client
        .prepare_cached(
            "update job set expired = true, updated_at = $2 where job_id = $1 and stage = 'completed'
             returning account_id",
        )
        .await
        .map_err(db_err)?;
    let row = client.query_opt(&stmt, &[&id.0, &now_ms]).await.map_err(db_err)?;
    row.map(|r| rows::get(&r, 0).map(AccountId)).transpose()
}
