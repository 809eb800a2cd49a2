//! Cancelling queued jobs: the refund, and who may cancel what.

use domain::{AccountId, JobId, JobStatus};
use store::{CancelOutcome, LedgerKind};

use crate::support::*;

/// Cancelling a queued job refunds it with one ledger row; other states and accounts are refused.
pub async fn cancelling_a_queued_job_refunds_it_once(db: Db) {
    let key = account(&*db, 10, 5).await;
    let id = submit(&*db, with_webhook(job(&key, 4), None)).await;
    assert_balance(&db, key.account_id, 6).await;
    let CancelOutcome::Cancelled(cancelled) = db.cancel_job(key.account_id, id).await.unwrap() else {
        panic!("a queued job is cancellable")
    };
    assert_eq!((cancelled.id, cancelled.status, cancelled.credit_cost), (id, JobStatus::Cancelled, 0));
    // No webhook event exists for a cancellation, so the job stops waiting for one.
    assert_eq!(cancelled.webhook_status, None);
    assert!(cancelled.completed_at_ms.is_some());
    let stored = db.get_job(key.account_id, id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.credit_cost, stored.completed_at_ms),
        (JobStatus::Cancelled, 0, cancelled.completed_at_ms)
    );
    assert_balance(&db, key.account_id, 10).await;
    let ledger = db.ledger(key.account_id).await.unwrap();
    let refund = ledger.last().unwrap();
    assert_eq!(
        (refund.kind, refund.amount, refund.job_id, refund.note.as_deref()),
        (LedgerKind::Refund, 4, Some(id), Some("cancelled"))
    );

    let again = db.cancel_job(key.account_id, id).await.unwrap();
    assert!(matches!(again, CancelOutcome::NotCancellable(JobStatus::Cancelled)), "{again:?}");
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Refund).await, 1);

    // Another account's job and an unknown job are both "not found".
    let other = submit(&*db, job(&key, 1)).await;
    let bob = account(&*db, 0, 1).await;
    assert!(matches!(db.cancel_job(bob.account_id, other).await.unwrap(), CancelOutcome::NotFound));
    assert!(matches!(db.cancel_job(key.account_id, JobId::new()).await.unwrap(), CancelOutcome::NotFound));
    assert!(matches!(db.cancel_job(AccountId::new(), other).await.unwrap(), CancelOutcome::NotFound));

    // Once the engine has taken it, it is too late.
    assert_eq!(ids(&claim_some(&db, 1).await), vec![other]);
    let late = db.cancel_job(key.account_id, other).await.unwrap();
    assert!(matches!(late, CancelOutcome::NotCancellable(JobStatus::Processing)), "{late:?}");
    assert_balance(&db, key.account_id, 9).await;

    // A free job is cancelled without a refund row.
    let free = submit(&*db, job(&key, 0)).await;
    assert!(matches!(db.cancel_job(key.account_id, free).await.unwrap(), CancelOutcome::Cancelled(_)));
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Refund).await, 1);
    assert_balance(&db, key.account_id, 9).await;
}

/// Twenty racing cancels of one job: one wins, one refund.
pub async fn racing_cancels_refund_once(db: Db) {
    let key = account(&*db, 5, 1).await;
    let id = submit(&*db, job(&key, 5)).await;
    let outcomes = concurrently(20, |_| {
        let (db, account) = (db.clone(), key.account_id);
        async move { db.cancel_job(account, id).await.expect("cancel") }
    })
    .await;
    let won = outcomes.iter().filter(|o| matches!(o, CancelOutcome::Cancelled(_))).count();
    let lost = outcomes.iter().filter(|o| matches!(o, CancelOutcome::NotCancellable(JobStatus::Cancelled))).count();
    assert_eq!((won, lost), (1, 19), "{outcomes:?}");
    assert_balance(&db, key.account_id, 5).await;
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Refund).await, 1);
}
