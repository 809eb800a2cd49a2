//! The webhook outbox on PostgreSQL: events raised inside job transitions, claims with a
//! lease (`for update skip locked`, so the delivery workers of several nodes share the
//! outbox without waiting on each other or sending one event twice at once), attempts
//! and their outcomes.

use deadpool_postgres::{GenericClient, Object};
use domain::{AccountId, JobId, WebhookEvent, WebhookStatus};
use store::{
    AttemptOutcome, AttemptRecord, EngineJob, Result, StoreError, WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};

use crate::rows;
use crate::wakeups::{Announcer, Work};
use crate::{db_err, Param};

/// Writes the event a transition raises for the job's client, inside the transition's
/// transaction; returns whether there was one. `old_progress` is the progress before the
/// transition; `url` and `events` are the job's subscription.
pub(crate) async fn raise_event(
    tx: &impl GenericClient,
    job: &EngineJob,
    url: Option<&str>,
    events: Option<&str>,
    old_progress: i64,
    now_ms: i64,
) -> Result<bool> {
    let Some(url) = url else { return Ok(false) };
    let Some(raised) = store::raised_event(job, events, old_progress) else { return Ok(false) };
    const SQL: &str = "insert into webhook_event (webhook_event_id, job_id, event, url, payload, status,
                                                 next_attempt_at, created_at, updated_at)
                       values ($1, $2, $3, $4, $5, 'pending', $6, $6, $6)";
    let stmt = tx.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 6] =
        [&raised.event_id, &job.record.id.0, &raised.event.as_str(), &url, &raised.payload, &now_ms];
    tx.execute(&stmt, &params).await.map_err(db_err)?;
    Ok(true)
}

pub(crate) async fn claim(client: &Object, limit: usize, lease_ms: i64, now_ms: i64) -> Result<Vec<WebhookDelivery>> {
    // One statement: pick the due events (skipping any another node is claiming right
    // now), push their due time out by the lease, and return what delivery needs. The
    // outer select restores the due-time order, which RETURNING does not promise.
    const SQL: &str = "with due as (
                           select webhook_event_id, next_attempt_at from webhook_event
                           where status = 'pending' and next_attempt_at <= $1
                           order by next_attempt_at, webhook_event_id
                           limit $2
                           for update skip locked
                       ),
                       claimed as (
                           update webhook_event e set next_attempt_at = $3, updated_at = $1
                           from due
                           where e.webhook_event_id = due.webhook_event_id
                           returning e.webhook_event_id, e.job_id, e.event, e.url, e.payload, e.attempts,
                                     due.next_attempt_at as was_due
                       )
                       select c.webhook_event_id, c.job_id, c.event, c.url, c.payload, c.attempts, k.key_digest
                       from claimed c
                       join job j on j.job_id = c.job_id
                       join api_key k on k.api_key_id = j.api_key_id
                       order by c.was_due, c.webhook_event_id";
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let params: [Param<'_>; 3] = [&now_ms, &limit, &(now_ms + lease_ms)];
    let rows = client.query(&stmt, &params).await.map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let event: &str = rows::get(row, 2)?;
            let attempts: i32 = rows::get(row, 5)?;
            let digest: &[u8] = rows::get(row, 6)?;
            Ok(WebhookDelivery {
                event_id: rows::get(row, 0)?,
                job_id: JobId(rows::get(row, 1)?),
                event: WebhookEvent::parse(event).ok_or_else(|| bad(format!("event {event:?}")))?,
                url: rows::get(row, 3)?,
                payload: rows::get(row, 4)?,
                attempts: u32::try_from(attempts).map_err(|_| bad(format!("attempts {attempts}")))?,
                secret: digest.try_into().map_err(|_| bad("key digest"))?,
            })
        })
        .collect()
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable webhook row: {what}"))
}

pub(crate) async fn defer(client: &Object, ids: &[String], until_ms: i64, now_ms: i64) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "update webhook_event set next_attempt_at = $2, updated_at = $3
             where webhook_event_id = any($1) and status = 'pending'",
        )
        .await
        .map_err(db_err)?;
    client.execute(&stmt, &[&ids, &until_ms, &now_ms]).await.map_err(db_err)?;
    Ok(())
}

/// Returns the job's change when its `webhookStatus` moved.
pub(crate) async fn record_attempt(
    client: &Object,
    a: &WebhookAttempt,
    now_ms: i64,
) -> Result<Option<store::JobChange>> {
    // One statement: the event's new state, the attempt row, and (for the final events;
    // progress events do not decide it) the job's webhookStatus. Everything hangs off
    // the event update, so an unknown event writes nothing.
    const SQL: &str = "with settled as (
                           update webhook_event
                           set status = $2, next_attempt_at = $3, attempts = attempts + 1, updated_at = $4
                           where webhook_event_id = $1
                           returning job_id, event
                       ),
                       attempt as (
                           insert into webhook_attempt (webhook_event_id, attempted_at, status_code, duration_ms,
                                                        error, response_body)
                           select $1, $5, $6, $7, $8, $9 from settled
                       ),
                       job_status as (
                           update job set webhook_status = $2, updated_at = $4
                           from settled
                           where job.job_id = settled.job_id and settled.event <> 'progress'
                             and job.webhook_status is not null and job.webhook_status <> $2
                           returning job.account_id, job.job_id
                       )
                       select (select count(*) from settled), account_id, job_id
                       from (select 1) one left join job_status on true";
    let (status, next) = match a.outcome {
        AttemptOutcome::Delivered => (WebhookStatus::Delivered, None),
        AttemptOutcome::RetryAt(at) => (WebhookStatus::Pending, Some(at)),
        AttemptOutcome::GaveUp => (WebhookStatus::Failed, None),
    };
    let status_code = a.status_code.map(i32::from);
    let stmt = client.prepare_cached(SQL).await.map_err(db_err)?;
    let params: [Param<'_>; 9] = [
        &a.event_id,
        &status.as_str(),
        &next,
        &now_ms,
        &a.attempted_at_ms,
        &status_code,
        &a.duration_ms,
        &a.error,
        &a.response_body,
    ];
    let row = client.query_one(&stmt, &params).await.map_err(db_err)?;
    let found: i64 = rows::get(&row, 0)?;
    if found == 0 {
        return Err(StoreError::NotFound(format!("webhook event {}", a.event_id)));
    }
    let account: Option<uuid::Uuid> = rows::get(&row, 1)?;
    let job: Option<uuid::Uuid> = rows::get(&row, 2)?;
    Ok(account.zip(job).map(|(account, job)| store::JobChange { account_id: AccountId(account), job_id: JobId(job) }))
}

pub(crate) async fn events(client: &Object, job: JobId) -> Result<Vec<WebhookEventRecord>> {
    let stmt = client
        .prepare_cached(
            "select webhook_event_id, event, url, status, next_attempt_at, created_at
             from webhook_event where job_id = $1 order by created_at, webhook_event_id",
        )
        .await
        .map_err(db_err)?;
    let mut events = client
        .query(&stmt, &[&job.0])
        .await
        .map_err(db_err)?
        .iter()
        .map(|row| {
            let event: &str = rows::get(row, 1)?;
            let status: &str = rows::get(row, 3)?;
            Ok(WebhookEventRecord {
                event_id: rows::get(row, 0)?,
                event: WebhookEvent::parse(event).ok_or_else(|| bad(format!("event {event:?}")))?,
                url: rows::get(row, 2)?,
                status: WebhookStatus::parse(status).ok_or_else(|| bad(format!("status {status:?}")))?,
                next_attempt_at_ms: rows::get(row, 4)?,
                created_at_ms: rows::get(row, 5)?,
                attempts: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if events.is_empty() {
        return Ok(events);
    }
    // Every event's attempts in one query rather than one per event.
    let stmt = client
        .prepare_cached(
            "select webhook_event_id, attempted_at, status_code, duration_ms, error, response_body
             from webhook_attempt where webhook_event_id = any($1) order by webhook_attempt_id",
        )
        .await
        .map_err(db_err)?;
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let attempts = client.query(&stmt, &[&ids]).await.map_err(db_err)?;
    for row in &attempts {
        let event_id: &str = rows::get(row, 0)?;
        let status_code: Option<i32> = rows::get(row, 2)?;
        let record = AttemptRecord {
            attempted_at_ms: rows::get(row, 1)?,
            status_code: status_code
                .map(|c| u16::try_from(c).map_err(|_| bad(format!("status code {c}"))))
                .transpose()?,
            duration_ms: rows::get(row, 3)?,
            error: rows::get(row, 4)?,
            response_body: rows::get(row, 5)?,
        };
        if let Some(event) = events.iter_mut().find(|e| e.event_id == event_id) {
            event.attempts.push(record);
        }
    }
    Ok(events)
}

pub(crate) async fn replay(client: &Object, job: JobId, now_ms: i64, announcer: &Announcer) -> Result<usize> {
    let replayed = replay_in(client, job, now_ms).await?;
    if replayed > 0 {
        announcer.announce(Work::Webhooks);
    }
    Ok(replayed)
}

/// Schedules the job's final events again on `client` (a connection or the caller's
/// transaction); returns how many. The caller announces them once they are committed.
pub(crate) async fn replay_in(client: &impl GenericClient, job: JobId, now_ms: i64) -> Result<usize> {
    let stmt = client
        .prepare_cached(
            "update webhook_event set status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2
             where job_id = $1 and event in ('completed', 'failed')",
        )
        .await
        .map_err(db_err)?;
    let replayed = client.execute(&stmt, &[&job.0, &now_ms]).await.map_err(db_err)?;
    Ok(replayed as usize)
}
