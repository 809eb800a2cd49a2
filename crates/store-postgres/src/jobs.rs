//! The front door's other job writes and reads: cancellation with its refund, the
//! reads behind `GET /v2/jobs`, and the purge of old idempotency keys. Submissions are
//! in `submit`. Statements are prepared once per pooled connection and reused from its
//! cache.

use deadpool_postgres::{GenericClient, Object};
use domain::{AccountId, ApiKeyId, JobId, JobStatus};
use store::{CancelOutcome, JobQuery, JobRecord, Result, StoreError};

use crate::rows::{self, job_columns};
use crate::{db_err, Param};

pub(crate) async fn cancel_job(
    client: &mut Object,
    account_id: AccountId,
    id: JobId,
    now_ms: i64,
) -> Result<CancelOutcome> {
    let tx = client.transaction().await.map_err(db_err)?;
    let (outcome, _) = cancel_in(&tx, Some(account_id), id, now_ms).await?;
    // Only a cancel wrote anything; otherwise the transaction is dropped, rolled back.
    if let CancelOutcome::Cancelled(_) = &outcome {
        tx.commit().await.map_err(db_err)?;
    }
    Ok(outcome)
}

/// Cancels a queued job inside the caller's transaction `tx` (which commits it when the
/// outcome is `Cancelled`): of `account_id`, or of any account when `None` (an
/// operator's cancel). Also returns the credits the job carried before.
pub(crate) async fn cancel_in(
    tx: &impl GenericClient,
    account_id: Option<AccountId>,
    id: JobId,
    now_ms: i64,
) -> Result<(CancelOutcome, i64)> {
    // The row lock makes concurrent cancels (and a racing claim or transition) take
    // turns: the second one reads the row as the first left it.
    let stmt = tx
        .prepare_cached(
            "select status, credit_cost, account_id from job
             where job_id = $1 and ($2::uuid is null or account_id = $2::uuid) for update",
        )
        .await
        .map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&id.0, &account_id.map(|a| a.0)]).await.map_err(db_err)? else {
        return Ok((CancelOutcome::NotFound, 0));
    };
    let status: &str = rows::get(&row, 0)?;
    let status = JobStatus::parse(status).ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?;
    let cost: i64 = rows::get(&row, 1)?;
    let owner = AccountId(rows::get(&row, 2)?);
    if status != JobStatus::Queued {
        return Ok((CancelOutcome::NotCancellable(status), cost));
    }
    // QUEUED is only ever shown for stage `queued`, so this job has not reached MiniMax.
    // No webhook event exists for cancellation, so the job stops waiting for one. The
    // stage change is logged for the admin timeline by the same statement.
    const CANCEL: &str = concat!(
        "with cancelled as (
             update job set status = 'CANCELLED', stage = 'cancelled', credit_cost = 0, completed_at = $2,
                            updated_at = $2, webhook_status = null, due_at = null
             where job_id = $1 and stage = 'queued'
             returning *
         ), logged as (
             insert into job_stage_change (job_id, from_stage, to_stage, at)
             select job_id, 'queued', 'cancelled', $2 from cancelled
         )
         select ",
        job_columns!(),
        " from cancelled"
    );
    let stmt = tx.prepare_cached(CANCEL).await.map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&id.0, &now_ms]).await.map_err(db_err)? else {
        return Err(StoreError::Conflict(format!("job {id} changed state during cancel")));
    };
    let job = rows::job(&row)?;
    if cost > 0 {
        crate::accounts::refund(tx, owner, id, cost, "cancelled", now_ms).await?;
    }
    Ok((CancelOutcome::Cancelled(std::sync::Arc::new(job)), cost))
}

pub(crate) async fn get_job(
    client: &impl GenericClient,
    account_id: AccountId,
    id: JobId,
) -> Result<Option<JobRecord>> {
    const SQL: &str = concat!("select ", job_columns!(), " from job where job_id = $1 and account_id = $2");
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    client.query_opt(&stmt, &[&id.0, &account_id.0]).await.map_err(db_err)?.as_ref().map(rows::job).transpose()
}

pub(crate) async fn list_jobs(client: &Object, q: &JobQuery) -> Result<Vec<JobRecord>> {
    // A NULL parameter disables its filter, so two cached plans serve every combination.
    // The keyset condition is a row comparison in its own statement, which the planner
    // turns into an index seek on job_account_created.
    macro_rules! list_sql {
        ($keyset:literal) => {
            concat!(
                "select ",
                job_columns!(),
                " from job
                 where account_id = $1::uuid
                   and ($2::uuid is null or api_key_id = $2::uuid)
                   and ($3::text is null or status = $3::text)
                   and ($4::text is null or model = $4::text)
                   and ($5::uuid is null or job_id = $5::uuid) ",
                $keyset,
                " order by created_at desc, job_id desc limit $8::bigint"
            )
        };
    }
    const FIRST_PAGE: &str = list_sql!("and $6::bigint is null and $7::uuid is null");
    const NEXT_PAGE: &str = list_sql!("and (created_at, job_id) < ($6::bigint, $7::uuid)");
    let stmt = client.prepare_cached(if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE }).await.map_err(db_err)?;
    let limit = i64::from(q.limit) + 1;
    let params: [Param<'_>; 8] = [
        &q.account_id.0,
        &q.api_key_id.map(|k| k.0),
        &q.status.map(|s| s.as_str()),
        &q.model,
        &q.job_id.map(|j| j.0),
        &q.after.map(|a| a.created_at_ms),
        &q.after.map(|a| a.id.0),
        &limit,
    ];
    client.query(&stmt, &params).await.map_err(db_err)?.iter().map(rows::job).collect()
}

pub(crate) async fn jobs_changed_since(
    client: &Object,
    account_id: AccountId,
    api_key_id: Option<ApiKeyId>,
    since_ms: i64,
    limit: u32,
) -> Result<Vec<JobRecord>> {
    const SQL: &str = concat!(
        "select ",
        job_columns!(),
        " from job where account_id = $1::uuid and ($2::uuid is null or api_key_id = $2::uuid)
                   and updated_at >= $3::bigint
          order by updated_at, job_id limit $4::bigint"
    );
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 4] = [&account_id.0, &api_key_id.map(|k| k.0), &since_ms, &i64::from(limit)];
    client.query(&stmt, &params).await.map_err(db_err)?.iter().map(rows::job).collect()
}

pub(crate) async fn job_models(
    client: &Object,
    account_id: AccountId,
    api_key_id: Option<ApiKeyId>,
) -> Result<Vec<String>> {
    // Byte order ("C"), as SQLite sorts, whatever the database's collation.
    let stmt = client
        .prepare_cached(
            "select distinct model collate \"C\" from job
             where account_id = $1 and ($2::uuid is null or api_key_id = $2::uuid) order by 1",
        )
        .await
        .map_err(db_err)?;
    let rows = client.query(&stmt, &[&account_id.0, &api_key_id.map(|k| k.0)]).await.map_err(db_err)?;
    rows.iter().map(|r| rows::get(r, 0)).collect()
}

pub(crate) async fn purge_idempotency_keys(client: &Object, before_ms: i64) -> Result<u64> {
    let stmt = client.prepare_cached("delete from idempotency_key where created_at < $1").await.map_err(db_err)?;
    client.execute(&stmt, &[&before_ms]).await.map_err(db_err)
}
