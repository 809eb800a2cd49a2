//! Compare-and-set transitions, refunds, the events they raise, the due-time schedule
//! and result expiry.

use domain::{JobId, JobStatus, Stage, WebhookEvent, WebhookStatus};
use serde_json::{json, Value};
use store::{LedgerKind, QueueDepth, StoreError, Transition};

use crate::support::*;

/// Transitions are compare-and-set on the stage and due time; illegal moves are bugs.
pub async fn transitions_are_compare_and_set(db: Db) {
    let key = account(&*db, 100, 1).await;
    let id = submit(&*db, job(&key, 10)).await;
    let claimed = claim_some(&db, 1).await;
    let lease = claimed[0].job.due_at_ms;
    let next_poll = now_ms() + 1_000;

    // Two workers race to record the submission; only the one holding the lease wins.
    let mut win =
        Transition::new(id, Stage::Submitting, Stage::Running).if_due_at(lease).due_at(next_poll).progress(10);
    let mut lose = win.clone();
    win.upstream_task_id = Some("task-1".into());
    lose.upstream_task_id = Some("task-2".into());
    let running = advance(&db, win.clone()).await;
    assert_eq!(
        (running.stage, running.record.status, running.record.progress),
        (Stage::Running, JobStatus::Processing, Some(10))
    );
    assert_eq!((running.due_at_ms, running.upstream_task_id.as_deref()), (Some(next_poll), Some("task-1")));
    assert!(db.transition(lose).await.unwrap().is_none(), "the stage moved on");
    assert!(db.transition(win).await.unwrap().is_none(), "the same move twice");
    // A claim on due work must match the stored due time.
    let stale = Transition::new(id, Stage::Running, Stage::Running).if_due_at(lease).due_at(next_poll + 5);
    assert!(db.transition(stale).await.unwrap().is_none());
    let expect_none = Transition::new(id, Stage::Running, Stage::Running).if_due_at(Some(next_poll + 1));
    assert!(db.transition(expect_none).await.unwrap().is_none());

    // Progress never goes backwards; unspecified fields keep their values.
    let polled = advance(
        &db,
        Transition::new(id, Stage::Running, Stage::Running)
            .if_due_at(Some(next_poll))
            .progress(4)
            .due_at(next_poll + 10),
    )
    .await;
    assert_eq!((polled.record.progress, polled.due_at_ms), (Some(10), Some(next_poll + 10)));
    assert_eq!(polled.upstream_task_id.as_deref(), Some("task-1"));
    let mut download = Transition::new(id, Stage::Running, Stage::Downloading).progress(90).due_at(next_poll + 20);
    download.upstream_file_id = Some("file-1".into());
    let downloading = advance(&db, download).await;
    assert_eq!(
        (downloading.upstream_file_id.as_deref(), downloading.upstream_task_id.as_deref()),
        (Some("file-1"), Some("task-1"))
    );
    assert_eq!(downloading.upstream_account.as_deref(), Some("a"));

    let result = json!({"videoUrl": "https://cdn.example.com/v.mp4", "n": 1});
    let mut done = Transition::new(id, Stage::Downloading, Stage::Completed).progress(100).due_at(next_poll + 30);
    done.result = Some(result.clone());
    done.result_bytes = Some(4096);
    let completed = advance(&db, done).await;
    let r = &completed.record;
    assert_eq!(
        (completed.stage, r.status, r.progress, r.result.as_ref()),
        (Stage::Completed, JobStatus::Completed, Some(100), Some(&result))
    );
    assert_eq!(
        (completed.due_at_ms, r.credit_cost, r.error.as_deref()),
        (None, 10, None),
        "terminal: no due time, no refund"
    );
    assert!(r.completed_at_ms.is_some());
    let public = db.get_job(key.account_id, id).await.unwrap().unwrap();
    assert_eq!(
        (public.status, public.result.as_ref(), public.progress),
        (JobStatus::Completed, Some(&result), Some(100))
    );
    assert_balance(&db, key.account_id, 90).await;

    // Moves the table does not allow are bugs, reported as such; unknown jobs are not found.
    for (from, to) in
        [(Stage::Completed, Stage::Running), (Stage::Queued, Stage::Completed), (Stage::Failed, Stage::Queued)]
    {
        let refused = db.transition(Transition::new(id, from, to)).await;
        assert!(matches!(refused, Err(StoreError::Internal(_))), "{from:?} -> {to:?}: {refused:?}");
    }
    let missing = db.transition(Transition::new(JobId::new(), Stage::Queued, Stage::Submitting)).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
}

fn payload(db_event: &store::WebhookEventRecord, deliveries: &[store::WebhookDelivery]) -> Value {
    let d = deliveries.iter().find(|d| d.event_id == db_event.event_id).expect("claimed");
    serde_json::from_str(&d.payload).expect("payloads are JSON")
}

/// A failure refunds once and raises exactly the webhook events the job subscribed to.
pub async fn failures_refund_once_and_raise_the_subscribed_events(db: Db) {
    let key = account(&*db, 100, 10).await;
    let default_events = submit(&*db, with_webhook(job(&key, 10), None)).await;
    let progress_only = submit(&*db, with_webhook(job(&key, 10), Some(&["progress"]))).await;
    let no_webhook = submit(&*db, job(&key, 10)).await;
    assert_balance(&db, key.account_id, 70).await;
    for id in [default_events, progress_only] {
        advance(&db, Transition::new(id, Stage::Queued, Stage::Submitting).progress(5)).await;
        advance(&db, Transition::new(id, Stage::Submitting, Stage::Running).progress(50)).await;
        // No progress, no progress event.
        advance(&db, Transition::new(id, Stage::Running, Stage::Running).progress(50)).await;
    }
    // A poll and a callback both see the failure: one wins, one refund.
    for id in [default_events, progress_only] {
        let fail = Transition::new(id, Stage::Running, Stage::Failed).error("upstream said no");
        let (a, b) = tokio::join!(db.transition(fail.clone()), db.transition(fail));
        assert_eq!(a.unwrap().is_some() as u8 + b.unwrap().is_some() as u8, 1);
    }
    let failed = advance(&db, Transition::new(no_webhook, Stage::Queued, Stage::Failed).error("refused")).await;
    assert_eq!((failed.record.status, failed.record.credit_cost, failed.due_at_ms), (JobStatus::Failed, 0, None));
    assert!(failed.record.completed_at_ms.is_some());
    assert_balance(&db, key.account_id, 100).await;
    let ledger = db.ledger(key.account_id).await.unwrap();
    let refunds: Vec<_> = ledger.iter().filter(|e| e.kind == LedgerKind::Refund).collect();
    assert_eq!(refunds.len(), 3);
    assert!(refunds.iter().all(|e| e.amount == 10 && e.note.as_deref() == Some("failed")));
    let mut refunded: Vec<JobId> = refunds.iter().filter_map(|e| e.job_id).collect();
    refunded.sort();
    let mut expected = vec![default_events, progress_only, no_webhook];
    expected.sort();
    assert_eq!(refunded, expected);

    let job = engine_job(&db, default_events).await;
    assert_eq!(
        (job.stage, job.record.credit_cost, job.record.error.as_deref()),
        (Stage::Failed, 0, Some("upstream said no"))
    );
    assert_eq!(job.record.webhook_status, Some(WebhookStatus::Pending), "the failed event is still to be delivered");

    let deliveries = db.claim_webhooks(100, 60_000).await.unwrap();
    // Without a subscription list: the final event only.
    let events = db.webhook_events(default_events).await.unwrap();
    assert_eq!(events.iter().map(|e| e.event).collect::<Vec<_>>(), [WebhookEvent::Failed]);
    let e = &events[0];
    assert_eq!(
        (e.status, e.url.as_str(), e.attempts.len()),
        (WebhookStatus::Pending, "https://hooks.example.com/reelgate", 0)
    );
    let body = payload(e, &deliveries);
    assert_eq!(
        body,
        json!({"event": "failed", "jobId": default_events.to_string(), "status": "FAILED",
               "error": "upstream said no", "model": "hailuo-2.3"})
    );
    // Subscribed to progress only: one event per progress increase, and no final event.
    let events = db.webhook_events(progress_only).await.unwrap();
    assert_eq!(events.iter().map(|e| e.event).collect::<Vec<_>>(), [WebhookEvent::Progress, WebhookEvent::Progress]);
    let bodies: Vec<(Value, Value)> = events
        .iter()
        .map(|e| {
            let body = payload(e, &deliveries);
            (body["status"].clone(), body["progress"].clone())
        })
        .collect();
    assert_eq!(bodies, [(json!("PROCESSING"), json!(5)), (json!("PROCESSING"), json!(50))]);
    assert!(db.webhook_events(no_webhook).await.unwrap().is_empty());
    assert_eq!(deliveries.len(), 3, "every raised event is claimable");
}

/// Due work comes back soonest first; a requeued job returns to the queue after its back-off.
pub async fn due_jobs_come_soonest_first_and_requeued_jobs_return(db: Db) {
    let key = account(&*db, 100, 10).await;
    let ids = submit_n(&db, &key, 3).await;
    let got = claim_some(&db, 2).await;
    assert_eq!(self::ids_of(&got), ids[..2].to_vec());
    let now = now_ms();
    assert!(db.due_jobs(now, 10).await.unwrap().is_empty(), "the leases are not over");
    assert_eq!(db.next_due_at().await.unwrap(), got.iter().filter_map(|c| c.job.due_at_ms).min());
    let third_created = engine_job(&db, ids[2]).await.record.created_at_ms;
    let depth = QueueDepth { queued: 1, active: 2, oldest_queued_at_ms: Some(third_created) };
    assert_eq!(db.queue_depth().await.unwrap(), depth);

    // The second job's next look comes first.
    let lease = got[1].job.due_at_ms;
    advance(&db, Transition::new(ids[1], Stage::Submitting, Stage::Running).if_due_at(lease).due_at(now - 10)).await;
    let due = db.due_jobs(now + 120_000, 10).await.unwrap();
    assert_eq!(due.iter().map(|j| j.record.id).collect::<Vec<_>>(), vec![ids[1], ids[0]]);
    assert_eq!(db.due_jobs(now + 120_000, 1).await.unwrap().len(), 1);
    assert_eq!(db.due_jobs(now, 10).await.unwrap().iter().map(|j| j.record.id).collect::<Vec<_>>(), vec![ids[1]]);
    assert_eq!(db.next_due_at().await.unwrap(), Some(now - 10));

    // A transient failure puts the first job back in the queue, away from its upstream.
    assert_eq!(db.reserve_upstream_call("a", ids[0], 10, 60_000).await.unwrap(), store::CallReservation::Granted);
    let requeued = advance(&db, Transition::new(ids[0], Stage::Submitting, Stage::Queued).due_at(now - 1)).await;
    assert_eq!(
        (requeued.stage, requeued.record.status, requeued.upstream_account.as_deref()),
        (Stage::Queued, JobStatus::Queued, None)
    );
    assert_eq!(requeued.attempts, 1);
    // A requeued job keeps its submission time: it is the oldest queued again.
    let depth = QueueDepth { queued: 2, active: 1, oldest_queued_at_ms: Some(requeued.record.created_at_ms) };
    assert_eq!(db.queue_depth().await.unwrap(), depth);
    assert!(
        !db.due_jobs(now + 120_000, 10).await.unwrap().iter().any(|j| j.record.id == ids[0]),
        "queued jobs are the dispatcher's"
    );
    // Its back-off is over, and it is older than the other queued job: it goes first.
    let again = claim_some(&db, 1).await;
    assert_eq!(ids_of(&again), vec![ids[0]]);
    assert_eq!((again[0].job.attempts, again[0].job.started_at_ms), (1, got[0].job.started_at_ms), "history is kept");

    // A job backing off is not claimed before its time.
    let later = advance(&db, Transition::new(ids[0], Stage::Submitting, Stage::Queued).due_at(now + 600_000)).await;
    assert_eq!(later.due_at_ms, Some(now + 600_000));
    assert_eq!(ids_of(&claim_some(&db, 5).await), vec![ids[2]]);
    assert!(claim_some(&db, 5).await.is_empty());
}

fn ids_of(claimed: &[store::ClaimedJob]) -> Vec<JobId> {
    ids(claimed)
}

/// Completed results are listed for expiry oldest first and marked expired once.
pub async fn completed_results_expire(db: Db) {
    let key = account(&*db, 100, 10).await;
    let jobs = submit_n(&db, &key, 3).await;
    let first = complete(&db, jobs[0]).await;
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let second = complete(&db, jobs[1]).await;
    let first_done = first.record.completed_at_ms.unwrap();
    let horizon = now_ms() + 60_000;
    assert_eq!(db.results_to_expire(horizon, 10).await.unwrap(), vec![jobs[0], jobs[1]], "oldest first");
    assert_eq!(db.results_to_expire(horizon, 1).await.unwrap(), vec![jobs[0]]);
    assert!(db.results_to_expire(first_done, 10).await.unwrap().is_empty(), "strictly before");
    assert_eq!(
        second.record.result.as_ref().unwrap()["videoUrl"],
        json!(format!("https://cdn.example.com/{}.mp4", jobs[1]))
    );

    db.mark_expired(jobs[0]).await.unwrap();
    let expired = db.get_job(key.account_id, jobs[0]).await.unwrap().unwrap();
    assert!(expired.expired);
    assert_eq!(expired.status, JobStatus::Completed);
    assert_eq!(db.results_to_expire(horizon, 10).await.unwrap(), vec![jobs[1]]);
    // Only completed jobs expire; an unknown id is not an error.
    db.mark_expired(jobs[2]).await.unwrap();
    assert!(!db.get_job(key.account_id, jobs[2]).await.unwrap().unwrap().expired);
    db.mark_expired(JobId::new()).await.unwrap();
}
