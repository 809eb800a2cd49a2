//! The webhook outbox on SQLite: events raised inside job transitions, claims with a
//! lease, attempts and their outcomes.

use domain::{JobId, WebhookEvent, WebhookStatus};
use rusqlite::{params, Connection, OptionalExtension};
use store::{
    AttemptOutcome, AttemptRecord, EngineJob, Result, StoreError, WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};

use crate::db::map_err;
use crate::rows::job_columns;
use crate::writer::WriteCtx;

/// Writes the events a transition raises for the job's client, inside the transition's
/// transaction. `old_progress` is the progress before the transition.
pub(crate) fn raise_events(ctx: &WriteCtx<'_>, job: &EngineJob, old_progress: i64) -> Result<()> {
    let conn = ctx.conn;
    let (url, events): (Option<String>, Option<String>) = conn
        .prepare_cached("select webhook_url, webhook_events from job where job_id = ?1")
        .and_then(|mut s| s.query_row([job.record.id.to_string()], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(map_err)?;
    let Some(url) = url else { return Ok(()) };
    let Some(raised) = store::raised_event(job, events.as_deref(), old_progress) else { return Ok(()) };
    conn.prepare_cached(
        "insert into webhook_event (webhook_event_id, job_id, event, url, payload, status, next_attempt_at, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            raised.event_id,
            job.record.id.to_string(),
            raised.event.as_str(),
            url,
            raised.payload,
            ctx.now_ms
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

pub(crate) fn claim_in_tx(ctx: &WriteCtx<'_>, limit: usize, lease_ms: i64) -> Result<Vec<WebhookDelivery>> {
    let conn = ctx.conn;
    let rows = (|| -> rusqlite::Result<Vec<WebhookDelivery>> {
        let mut s = conn.prepare_cached(
            "select e.webhook_event_id, e.job_id, e.event, e.url, e.payload, e.attempts, k.key_digest
             from webhook_event e join job j on j.job_id = e.job_id join api_key k on k.api_key_id = j.api_key_id
             where e.status = 'pending' and e.next_attempt_at <= ?1
             order by e.next_attempt_at limit ?2",
        )?;
        let rows = s.query_map(params![ctx.now_ms, limit as i64], |r| {
            let event: String = r.get(2)?;
            let job: String = r.get(1)?;
            let digest: Vec<u8> = r.get(6)?;
            Ok(WebhookDelivery {
                event_id: r.get(0)?,
                job_id: job.parse().map_err(|_| bad(1))?,
                event: WebhookEvent::parse(&event).ok_or_else(|| bad(2))?,
                url: r.get(3)?,
                payload: r.get(4)?,
                attempts: r.get(5)?,
                secret: digest.try_into().map_err(|_| bad(6))?,
            })
        })?;
        rows.collect()
    })()
    .map_err(map_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for delivery in rows {
        conn.prepare_cached(
            "update webhook_event set next_attempt_at = ?2, updated_at = ?3 where webhook_event_id = ?1",
        )
        .and_then(|mut s| s.execute(params![delivery.event_id, ctx.now_ms + lease_ms, ctx.now_ms]))
        .map_err(map_err)?;
        out.push(delivery);
    }
    Ok(out)
}

fn bad(col: usize) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, "invalid webhook row".into())
}

pub(crate) fn defer_in_tx(ctx: &WriteCtx<'_>, ids: &[String], until_ms: i64) -> Result<()> {
    for id in ids {
        ctx.conn
            .prepare_cached(
                "update webhook_event set next_attempt_at = ?2, updated_at = ?3 where webhook_event_id = ?1 and status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id, until_ms, ctx.now_ms]))
            .map_err(map_err)?;
    }
    Ok(())
}

/// Records the attempt; returns the job's new public row when its `webhookStatus` changed.
pub(crate) fn record_in_tx(ctx: &WriteCtx<'_>, a: &WebhookAttempt) -> Result<Option<store::JobRecord>> {
    let conn = ctx.conn;
    let found: Option<(String, String)> = conn
        .prepare_cached("select job_id, event from webhook_event where webhook_event_id = ?1")
        .and_then(|mut s| s.query_row([&a.event_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(map_err)?;
    let Some((job_id, event)) = found else {
        return Err(StoreError::NotFound(format!("webhook event {}", a.event_id)));
    };
    conn.prepare_cached(
        "insert into webhook_attempt (webhook_event_id, attempted_at, status_code, duration_ms, error, response_body)
         values (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![a.event_id, a.attempted_at_ms, a.status_code, a.duration_ms, a.error, a.response_body])
    })
    .map_err(map_err)?;
    let (status, next) = match a.outcome {
        AttemptOutcome::Delivered => (WebhookStatus::Delivered, None),
        AttemptOutcome::RetryAt(at) => (WebhookStatus::Pending, Some(at)),
        AttemptOutcome::GaveUp => (WebhookStatus::Failed, None),
    };
    conn.prepare_cached(
        "update webhook_event set status = ?2, next_attempt_at = ?3, attempts = attempts + 1, updated_at = ?4
         where webhook_event_id = ?1",
    )
    .and_then(|mut s| s.execute(params![a.event_id, status.as_str(), next, ctx.now_ms]))
    .map_err(map_err)?;
    // Progress events do not decide the job's webhookStatus: the final event does.
    if event == WebhookEvent::Progress.as_str() {
        return Ok(None);
    }
    let changed = conn
        .prepare_cached(
            "update job set webhook_status = ?2, updated_at = ?3
             where job_id = ?1 and webhook_status is not null and webhook_status <> ?2",
        )
        .and_then(|mut s| s.execute(params![job_id, status.as_str(), ctx.now_ms]))
        .map_err(map_err)?;
    if changed == 0 {
        return Ok(None);
    }
    conn.prepare_cached(concat!("select ", job_columns!(), " from job where job_id = ?1"))
        .and_then(|mut s| s.query_row([&job_id], crate::rows::job_from_row).optional())
        .map_err(map_err)
}

pub(crate) fn events(conn: &Connection, job: JobId) -> rusqlite::Result<Vec<WebhookEventRecord>> {
    let mut s = conn.prepare_cached(
        "select webhook_event_id, event, url, status, next_attempt_at, created_at
         from webhook_event where job_id = ?1 order by created_at, webhook_event_id",
    )?;
    let mut events: Vec<WebhookEventRecord> = s
        .query_map([job.to_string()], |r| {
            let event: String = r.get(1)?;
            let status: String = r.get(3)?;
            Ok(WebhookEventRecord {
                event_id: r.get(0)?,
                event: WebhookEvent::parse(&event).ok_or_else(|| bad(1))?,
                url: r.get(2)?,
                status: WebhookStatus::parse(&status).ok_or_else(|| bad(3))?,
                next_attempt_at_ms: r.get(4)?,
                created_at_ms: r.get(5)?,
                attempts: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut a = conn.prepare_cached(
        "select attempted_at, status_code, duration_ms, error, response_body
         from webhook_attempt where webhook_event_id = ?1 order by webhook_attempt_id",
    )?;
    for e in &mut events {
        e.attempts = a
            .query_map([&e.event_id], |r| {
                Ok(AttemptRecord {
                    attempted_at_ms: r.get(0)?,
                    status_code: r.get(1)?,
                    duration_ms: r.get(2)?,
                    error: r.get(3)?,
                    response_body: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(events)
}

pub(crate) fn replay_in_tx(ctx: &WriteCtx<'_>, job: JobId) -> Result<usize> {
    ctx.conn
        .prepare_cached(
            "update webhook_event set status = 'pending', attempts = 0, next_attempt_at = ?2, updated_at = ?2
             where job_id = ?1 and (event = 'completed' or event = 'failed')",
        )
        .and_then(|mut s| s.execute(params![job.to_string(), ctx.now_ms]))
        .map_err(map_err)
}
