//! The webhook outbox: claims with leases, deferrals, attempts, the job's
//! `webhookStatus`, replays, and concurrent delivery workers.

use std::collections::HashSet;

use domain::{JobId, Stage, WebhookEvent, WebhookStatus};
use serde_json::{json, Value};
use store::{AttemptOutcome, StoreError, Transition, WebhookAttempt};

use crate::support::*;

fn attempt(event_id: &str, status_code: Option<u16>, outcome: AttemptOutcome) -> WebhookAttempt {
    WebhookAttempt {
        event_id: event_id.into(),
        attempted_at_ms: now_ms(),
        status_code,
        duration_ms: 12,
        error: status_code.filter(|c| *c >= 300).map(|c| format!("HTTP {c}")),
        response_body: Some("body".into()),
        outcome,
    }
}

async fn webhook_status(db: &Db, account: domain::AccountId, id: JobId) -> Option<WebhookStatus> {
    db.get_job(account, id).await.unwrap().unwrap().webhook_status
}

/// Webhook events are leased, deferred and recorded, and final outcomes set the job's webhookStatus.
pub async fn webhook_deliveries_are_claimed_deferred_and_recorded(db: Db) {
    let key = account(&*db, 100, 10).await;
    let id = submit(&*db, with_webhook(job(&key, 5), None)).await;
    let done = complete(&db, id).await;

    let before = now_ms();
    let claimed = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let d = &claimed[0];
    assert_eq!(
        (d.job_id, d.event, d.url.as_str(), d.attempts),
        (id, WebhookEvent::Completed, "https://hooks.example.com/reelgate", 0)
    );
    assert_eq!(d.secret, key.digest.0, "signed with the digest of the key that created the job");
    assert!(d.event_id.starts_with("msg_"));
    let body: Value = serde_json::from_str(&d.payload).unwrap();
    assert_eq!(
        (body["event"].clone(), body["jobId"].clone(), body["status"].clone()),
        (json!("completed"), json!(id.to_string()), json!("COMPLETED"))
    );
    assert_eq!(
        (body["result"].clone(), body["creditCost"].clone(), body["progress"].clone()),
        (json!(done.record.result), json!(5), json!(100))
    );
    // Leased: not claimable again until the lease runs out.
    assert!(db.claim_webhooks(10, 30_000).await.unwrap().is_empty());
    let leased = db.webhook_events(id).await.unwrap();
    assert!(leased[0].next_attempt_at_ms.is_some_and(|t| t >= before + 30_000), "{leased:?}");

    // Deferred into the past: due again at once, without counting an attempt.
    db.defer_webhooks(vec![d.event_id.clone()], now_ms() - 1).await.unwrap();
    let again = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 0));
    // Deferred into the future: not due.
    db.defer_webhooks(vec![d.event_id.clone()], now_ms() + 60_000).await.unwrap();
    assert!(db.claim_webhooks(10, 30_000).await.unwrap().is_empty());

    // A failed attempt, retried at once.
    db.record_webhook_attempt(attempt(&d.event_id, Some(500), AttemptOutcome::RetryAt(now_ms() - 1))).await.unwrap();
    let events = db.webhook_events(id).await.unwrap();
    assert_eq!((events[0].status, events[0].attempts.len()), (WebhookStatus::Pending, 1));
    let recorded = &events[0].attempts[0];
    assert_eq!((recorded.status_code, recorded.duration_ms), (Some(500), 12));
    assert_eq!((recorded.error.as_deref(), recorded.response_body.as_deref()), (Some("HTTP 500"), Some("body")));
    assert_eq!(webhook_status(&db, key.account_id, id).await, Some(WebhookStatus::Pending));
    let retry = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!((retry.len(), retry[0].attempts, retry[0].payload.as_str()), (1, 1, d.payload.as_str()), "same bytes");

    // Delivered: settled, and the job says so.
    db.record_webhook_attempt(attempt(&d.event_id, Some(200), AttemptOutcome::Delivered)).await.unwrap();
    let events = db.webhook_events(id).await.unwrap();
    assert_eq!(
        (events[0].status, events[0].next_attempt_at_ms, events[0].attempts.len()),
        (WebhookStatus::Delivered, None, 2)
    );
    assert_eq!(events[0].attempts[1].error, None);
    assert_eq!(webhook_status(&db, key.account_id, id).await, Some(WebhookStatus::Delivered));
    assert!(db.claim_webhooks(10, 30_000).await.unwrap().is_empty());
    // Deferring a settled event changes nothing.
    db.defer_webhooks(vec![d.event_id.clone()], now_ms() - 1).await.unwrap();
    assert!(db.claim_webhooks(10, 30_000).await.unwrap().is_empty());
    let missing = db.record_webhook_attempt(attempt("msg_unknown", Some(200), AttemptOutcome::Delivered)).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");

    // Giving up on a final event marks the job failed; a progress event never decides.
    let chatty = submit(&*db, with_webhook(job(&key, 5), Some(&["progress", "failed"]))).await;
    advance(&db, Transition::new(chatty, Stage::Queued, Stage::Submitting).progress(5)).await;
    let progress = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!(progress.iter().map(|d| d.event).collect::<Vec<_>>(), [WebhookEvent::Progress]);
    db.record_webhook_attempt(attempt(&progress[0].event_id, None, AttemptOutcome::GaveUp)).await.unwrap();
    assert_eq!(webhook_status(&db, key.account_id, chatty).await, Some(WebhookStatus::Pending));
    advance(&db, Transition::new(chatty, Stage::Submitting, Stage::Failed).error("no")).await;
    let failed = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!(failed.iter().map(|d| d.event).collect::<Vec<_>>(), [WebhookEvent::Failed]);
    db.record_webhook_attempt(attempt(&failed[0].event_id, Some(410), AttemptOutcome::GaveUp)).await.unwrap();
    assert_eq!(webhook_status(&db, key.account_id, chatty).await, Some(WebhookStatus::Failed));
    let statuses: Vec<_> = db.webhook_events(chatty).await.unwrap().iter().map(|e| (e.event, e.status)).collect();
    assert_eq!(
        statuses,
        [(WebhookEvent::Progress, WebhookStatus::Failed), (WebhookEvent::Failed, WebhookStatus::Failed)]
    );
}

/// A replay makes the final events due again with a fresh schedule, keeping their history.
pub async fn replaying_webhooks_resends_the_final_events(db: Db) {
    let key = account(&*db, 100, 10).await;
    let id = submit(&*db, with_webhook(job(&key, 5), Some(&["progress", "completed"]))).await;
    complete(&db, id).await;
    let raised = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!(raised.iter().filter(|d| d.event == WebhookEvent::Progress).count(), 3, "at 5, 30 and 90");
    for d in &raised {
        db.record_webhook_attempt(attempt(&d.event_id, Some(200), AttemptOutcome::Delivered)).await.unwrap();
    }
    assert_eq!(webhook_status(&db, key.account_id, id).await, Some(WebhookStatus::Delivered));

    let before = now_ms();
    assert_eq!(db.replay_webhooks(id).await.unwrap(), 1, "only the final event");
    let events = db.webhook_events(id).await.unwrap();
    let completed = events.iter().find(|e| e.event == WebhookEvent::Completed).unwrap();
    assert_eq!((completed.status, completed.attempts.len()), (WebhookStatus::Pending, 1), "history is kept");
    assert!(completed.next_attempt_at_ms.is_some_and(|t| t >= before && t <= now_ms()));
    assert!(events.iter().filter(|e| e.event == WebhookEvent::Progress).all(|e| e.status == WebhookStatus::Delivered));
    let resent = db.claim_webhooks(10, 30_000).await.unwrap();
    assert_eq!(resent.len(), 1);
    assert_eq!((resent[0].event, resent[0].attempts), (WebhookEvent::Completed, 0), "a fresh retry schedule");
    let original = raised.iter().find(|d| d.event == WebhookEvent::Completed).unwrap();
    assert_eq!((&resent[0].event_id, &resent[0].payload), (&original.event_id, &original.payload));
    // The job's webhookStatus follows the new attempts.
    db.record_webhook_attempt(attempt(&resent[0].event_id, Some(500), AttemptOutcome::GaveUp)).await.unwrap();
    assert_eq!(webhook_status(&db, key.account_id, id).await, Some(WebhookStatus::Failed));

    let quiet = submit(&*db, job(&key, 5)).await;
    assert_eq!(db.replay_webhooks(quiet).await.unwrap(), 0);
    assert_eq!(db.replay_webhooks(JobId::new()).await.unwrap(), 0);
}

/// Delivery workers claiming at once never get the same event.
pub async fn concurrent_webhook_claims_never_share_an_event(db: Db) {
    let key = account(&*db, 100, 20).await;
    let mut expected = HashSet::new();
    for _ in 0..12 {
        let id = submit(&*db, with_webhook(job(&key, 1), None)).await;
        advance(&db, Transition::new(id, Stage::Queued, Stage::Failed).error("x")).await;
        expected.insert(id);
    }
    let claimed = concurrently(6, |_| {
        let db = db.clone();
        async move { db.claim_webhooks(3, 60_000).await.expect("claim webhooks") }
    })
    .await;
    let all: Vec<_> = claimed.into_iter().flatten().collect();
    let events: HashSet<&str> = all.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(events.len(), all.len(), "an event was handed to two workers");
    let jobs: HashSet<JobId> = all.iter().map(|d| d.job_id).collect();
    assert_eq!(jobs, expected);
}
