//! The front door's job writes and reads: submission with its charge and idempotency
//! key, cancellation with its refund, and the reads behind `GET /v2/jobs`.
//!
//! `submit_job` is the hot path, so a submission is a single statement and a single
//! round trip: a data-modifying CTE that debits the account only if the balance covers
//! the cost, inserts the job and its `charge` row from the debit's result, and records
//! the idempotency key. A lone statement is its own transaction, so either all of it
//! happens or none of it. Only the rare outcomes (insufficient credits, an idempotent
//! replay, a key reused with another body) cost a second query, which reads what
//! decided them. A created job is announced to every node's dispatcher after the commit
//! (see `wakeups` for why not inside it). Statements are prepared once per pooled
//! connection and reused from its cache.

use deadpool_postgres::{GenericClient, Object};
use domain::{AccountId, ApiKeyId, JobId, JobStatus};
use store::{CancelOutcome, JobQuery, JobRecord, NewJob, Result, StoreError, SubmitOutcome};
use tokio_postgres::error::SqlState;

use crate::rows::{self, job_columns};
use crate::wakeups::{Announcer, Work};
use crate::{db_err, Clock, Param};

/// How often a submission is retried when a concurrent write changed what decided its
/// outcome between the two queries (see `submit_job`). Each retry needs a new race.
const SUBMIT_ATTEMPTS: usize = 3;

/// The submission without an idempotency key. Parameters: $1 account, $2 cost, $3 now,
/// $4 job id, $5 API key, $6 model, $7 webhook URL, $8 webhook events, $9 webhook
/// status, $10 input.
///
/// The debit is a conditional UPDATE: under concurrency PostgreSQL re-checks
/// `credits >= $2` against the latest committed balance once it holds the row lock, so
/// concurrent submissions serialise on the account row and the balance never goes
/// negative (the CHECK constraint backs this up). The second column is the balance as the
/// statement's snapshot saw it, which explains a refusal without another query.
macro_rules! submit_sql {
    ($claim:literal, $debit_condition:literal) => {
        concat!(
            "with ",
            $claim,
            "debit as (
                 update account set credits = credits - $2::bigint, updated_at = $3::bigint
                 where account_id = $1::uuid and credits >= $2::bigint ",
            $debit_condition,
            "    returning account_id
             ),
             new_job as (
                 insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost,
                                  webhook_url, webhook_events, webhook_status, input, created_at, updated_at)
                 select $4::uuid, account_id, $5::uuid, $6::text, 'QUEUED', 0, $2::bigint,
                        $7::text, $8::text, $9::text, $10::text, $3::bigint, $3::bigint
                 from debit
                 returning job_id
             ),
             charge as (
                 insert into ledger_entry (account_id, kind, amount, job_id, created_at)
                 select account_id, 'charge', -$2::bigint, $4::uuid, $3::bigint from debit
             )
             select (select count(*) from new_job) = 1 as created,
                    (select credits from account where account_id = $1::uuid) as balance"
        )
    };
}

const SUBMIT: &str = submit_sql!("", "");

/// The submission with an idempotency key: as [`SUBMIT`], plus $11 key, $12 fingerprint
/// and $13 the replay window's start.
///
/// The key row is inserted first, and the debit happens only if that insert did. On a
/// conflict with a key still inside the replay window the insert does nothing (its
/// `do update` is filtered out), so nothing is debited or inserted: the second query
/// then finds the original job. A key older than the window is taken over, as SQLite
/// deletes and re-inserts it. When two requests race with one key, the second one's
/// insert waits for the first to commit and then sees the conflict.
///
/// The insert is guarded by the snapshot's balance so a submission that cannot be paid
/// normally leaves no key behind. If the balance is spent between the snapshot and the
/// debit, the key row would point at a job that was never inserted: the foreign key
/// then fails the statement, everything is rolled back, and `submit_job` reads the
/// balance to report the refusal.
const SUBMIT_WITH_KEY: &str = submit_sql!(
    "claim as (
         insert into idempotency_key (account_id, idempotency_key, fingerprint, job_id, created_at)
         select $1::uuid, $11::text, $12::bytea, $4::uuid, $3::bigint
         where exists (select 1 from account where account_id = $1::uuid and credits >= $2::bigint)
         on conflict (account_id, idempotency_key) do update
             set fingerprint = excluded.fingerprint, job_id = excluded.job_id, created_at = excluded.created_at
             where idempotency_key.created_at < $13::bigint
         returning 1
     ),
     ",
    "and exists (select 1 from claim)"
);

/// What decided a submission that did not go through: the balance now, and the key's
/// current holder (with that job's status), in one read.
const EXPLAIN_REFUSAL: &str = "select a.credits, k.fingerprint, k.job_id, k.created_at, j.status
     from (select $1::uuid as account_id) p
     left join account a on a.account_id = p.account_id
     left join idempotency_key k on k.account_id = p.account_id and k.idempotency_key = $2::text
     left join job j on j.job_id = k.job_id";

pub(crate) async fn submit_job(
    client: &Object,
    job: &NewJob,
    clock: &Clock,
    announcer: &Announcer,
) -> Result<SubmitOutcome> {
    let events = job.webhook_events.as_ref().map(|e| e.join(","));
    let webhook_status = job.webhook_url.as_ref().map(|_| "pending");
    let mut last_failure = None;
    for _ in 0..SUBMIT_ATTEMPTS {
        let now_ms = clock.now_ms();
        let base: [Param<'_>; 10] = [
            &job.account_id.0,
            &job.cost,
            &now_ms,
            &job.id.0,
            &job.api_key_id.0,
            &job.model.as_str(),
            &job.webhook_url,
            &events,
            &webhook_status,
            &job.input_json,
        ];
        let ran = match &job.idempotency {
            None => {
                let stmt = client.prepare_cached(SUBMIT).await.map_err(db_err)?;
                client.query_one(&stmt, &base).await
            }
            Some(claim) => {
                let stmt = client.prepare_cached(SUBMIT_WITH_KEY).await.map_err(db_err)?;
                let fingerprint: &[u8] = &claim.fingerprint;
                let mut params = base.to_vec();
                params.extend_from_slice(&[&claim.key as Param<'_>, &fingerprint, &claim.not_before_ms]);
                client.query_one(&stmt, &params).await
            }
        };
        let balance_seen = match ran {
            Ok(row) => {
                if rows::get::<bool>(&row, 0)? {
                    announcer.announce(Work::Jobs);
                    return Ok(SubmitOutcome::Created { job_id: job.id, status: JobStatus::Queued });
                }
                let balance: Option<i64> = rows::get(&row, 1)?;
                balance
            }
            // The key-row-without-a-job case described at SUBMIT_WITH_KEY. When nothing
            // explains it (a grant landed meanwhile), the submission is tried again; a
            // foreign key that keeps failing (an unknown API key) is reported.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                if let Some(outcome) = explain_refusal(client, job).await? {
                    return Ok(outcome);
                }
                last_failure = Some(db_err(e));
                continue;
            }
            Err(e) => return Err(db_err(e)),
        };
        // Without a key, the snapshot's balance explains the refusal on its own.
        if job.idempotency.is_none() {
            match balance_seen {
                None => return Err(StoreError::NotFound(format!("account {}", job.account_id))),
                Some(available) if available < job.cost => {
                    return Ok(SubmitOutcome::InsufficientCredits { required: job.cost, available });
                }
                // The balance covered the cost when the statement began but not when the
                // debit ran: read it again below.
                Some(_) => {}
            }
        }
        if let Some(outcome) = explain_refusal(client, job).await? {
            return Ok(outcome);
        }
        // Nothing explains the refusal any more: a concurrent write (a grant, a racing
        // request with this key that rolled back) changed it. Try again.
        last_failure = None;
    }
    Err(last_failure
        .unwrap_or_else(|| StoreError::Unavailable(format!("submission of job {} kept racing other writes", job.id))))
}

/// Reads why a submission was not inserted, in the order SQLite decides it: a live
/// idempotency key first, then the balance. `None` when nothing explains it now.
async fn explain_refusal(client: &Object, job: &NewJob) -> Result<Option<SubmitOutcome>> {
    let stmt = client.prepare_cached(EXPLAIN_REFUSAL).await.map_err(db_err)?;
    let key = job.idempotency.as_ref().map(|c| c.key.as_str());
    let row = client.query_one(&stmt, &[&job.account_id.0, &key]).await.map_err(db_err)?;
    let credits: Option<i64> = rows::get(&row, 0)?;
    let fingerprint: Option<&[u8]> = rows::get(&row, 1)?;
    let holder: Option<uuid::Uuid> = rows::get(&row, 2)?;
    let created_at: Option<i64> = rows::get(&row, 3)?;
    let status: Option<&str> = rows::get(&row, 4)?;
    if let (Some(claim), Some(fingerprint), Some(holder), Some(created_at)) =
        (&job.idempotency, fingerprint, holder, created_at)
    {
        if created_at >= claim.not_before_ms {
            if fingerprint != claim.fingerprint {
                return Ok(Some(SubmitOutcome::IdempotencyMismatch));
            }
            let status = status
                .and_then(JobStatus::parse)
                .ok_or_else(|| StoreError::Internal(format!("job {holder} has no readable status")))?;
            return Ok(Some(SubmitOutcome::Replayed { job_id: JobId(holder), status }));
        }
    }
    match credits {
        None => Err(StoreError::NotFound(format!("account {}", job.account_id))),
        Some(available) if available < job.cost => {
            Ok(Some(SubmitOutcome::InsufficientCredits { required: job.cost, available }))
        }
        Some(_) => Ok(None),
    }
}

pub(crate) async fn cancel_job(
    client: &mut Object,
    account_id: AccountId,
    id: JobId,
    now_ms: i64,
) -> Result<CancelOutcome> {
    let tx = client.transaction().await.map_err(db_err)?;
    // The row lock makes concurrent cancels (and a racing claim or transition) take
    // turns: the second one reads the row as the first left it.
    let stmt = tx
        .prepare_cached("select status, credit_cost from job where job_id = $1 and account_id = $2 for update")
        .await
        .map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&id.0, &account_id.0]).await.map_err(db_err)? else {
        return Ok(CancelOutcome::NotFound);
    };
    let status: &str = rows::get(&row, 0)?;
    let status = JobStatus::parse(status).ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?;
    let cost: i64 = rows::get(&row, 1)?;
    if status != JobStatus::Queued {
        return Ok(CancelOutcome::NotCancellable(status));
    }
    // QUEUED is only ever shown for stage `queued`, so this job has not reached MiniMax.
    // No webhook event exists for cancellation, so the job stops waiting for one.
    const CANCEL: &str = concat!(
        "update job set status = 'CANCELLED', stage = 'cancelled', credit_cost = 0, completed_at = $2,
                        updated_at = $2, webhook_status = null, due_at = null
         where job_id = $1 and stage = 'queued'
         returning ",
        job_columns!()
    );
    let stmt = tx.prepare_cached(CANCEL).await.map_err(db_err)?;
    let Some(row) = tx.query_opt(&stmt, &[&id.0, &now_ms]).await.map_err(db_err)? else {
        return Err(StoreError::Conflict(format!("job {id} changed state during cancel")));
    };
    let job = rows::job(&row)?;
    if cost > 0 {
        crate::accounts::refund(&tx, account_id, id, cost, "cancelled", now_ms).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(CancelOutcome::Cancelled(std::sync::Arc::new(job)))
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
