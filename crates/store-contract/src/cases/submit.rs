//! Submissions: the charge, refusals, idempotency, and races on one balance or one key.

use domain::{AccountId, JobId, JobStatus, WebhookStatus};
use store::{CancelOutcome, JobQuery, LedgerKind, StoreError, SubmitOutcome};

use crate::support::*;

fn everything(account_id: AccountId) -> JobQuery {
    JobQuery { account_id, api_key_id: None, status: None, model: None, job_id: None, after: None, limit: 100 }
}

/// A submission charges once, with one ledger row, and its input reads back byte for byte.
pub async fn a_submission_is_charged_once_and_reads_back_verbatim(db: Db) {
    let key = account(&*db, 20, 1).await;
    // Key order, spacing inside strings and non-ASCII text must come back byte for byte.
    let input = r#"{"prompt":"a  corgi, \"surfing\" — ünïcode","model":"hailuo-2.3","z":[1,2.5,{"y":null}],"a":{}}"#;
    let mut new = with_webhook(job(&key, 5), Some(&["completed", "progress"]));
    new.input_json = input.into();
    let before = now_ms();
    let outcome = db.submit_job(new.clone()).await.unwrap();
    assert_eq!(outcome, SubmitOutcome::Created { job_id: new.id, status: JobStatus::Queued });
    let after = now_ms();
    assert_balance(&db, key.account_id, 15).await;
    let ledger = db.ledger(key.account_id).await.unwrap();
    let charge = ledger.last().unwrap();
    assert_eq!(
        (charge.kind, charge.amount, charge.job_id, charge.note.as_deref()),
        (LedgerKind::Charge, -5, Some(new.id), None)
    );

    let stored = db.get_job(key.account_id, new.id).await.unwrap().expect("the job reads back");
    assert_eq!(stored.input.get(), input);
    assert_eq!((stored.id, stored.account_id, stored.api_key_id), (new.id, key.account_id, key.id));
    assert_eq!((stored.model.as_str(), stored.status, stored.progress), ("hailuo-2.3", JobStatus::Queued, Some(0)));
    assert_eq!((stored.credit_cost, stored.webhook_status), (5, Some(WebhookStatus::Pending)));
    assert_eq!(
        (stored.result.as_ref(), stored.error.as_deref(), stored.completed_at_ms, stored.expired),
        (None, None, None, false)
    );
    assert!((before..=after).contains(&stored.created_at_ms), "{before} <= {} <= {after}", stored.created_at_ms);
    assert_eq!(charge.created_at_ms, stored.created_at_ms);

    // Without a webhook there is no webhook status.
    let plain = submit(&*db, job(&key, 1)).await;
    assert_eq!(db.get_job(key.account_id, plain).await.unwrap().unwrap().webhook_status, None);
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Charge).await, 2);
    assert_balance(&db, key.account_id, 14).await;
}

/// A refused submission writes nothing: no job, no ledger row, no idempotency key.
pub async fn insufficient_credits_write_nothing(db: Db) {
    let key = account(&*db, 4, 1).await;
    let refused = db.submit_job(job(&key, 5)).await.unwrap();
    assert_eq!(refused, SubmitOutcome::InsufficientCredits { required: 5, available: 4 });
    let keyed = db.submit_job(with_key(job(&key, 5), "k", 1, 0)).await.unwrap();
    assert_eq!(keyed, SubmitOutcome::InsufficientCredits { required: 5, available: 4 });
    assert_balance(&db, key.account_id, 4).await;
    assert_eq!(db.ledger(key.account_id).await.unwrap().len(), 1, "only the initial grant");
    assert!(db.list_jobs(&everything(key.account_id)).await.unwrap().is_empty());
    assert!(db.job_models(key.account_id, None).await.unwrap().is_empty());

    // The refused keyed request left no key behind: once paid for, it goes through.
    db.grant_credits(key.account_id, 10, None).await.unwrap();
    let retried = with_key(job(&key, 5), "k", 1, 0);
    let id = retried.id;
    assert_eq!(db.submit_job(retried).await.unwrap(), SubmitOutcome::Created { job_id: id, status: JobStatus::Queued });
    assert_balance(&db, key.account_id, 9).await;

    // A job for an account that does not exist is refused as such, key or not.
    let mut orphan = job(&key, 1);
    orphan.account_id = AccountId::new();
    assert!(matches!(db.submit_job(orphan.clone()).await, Err(StoreError::NotFound(_))));
    assert!(matches!(db.submit_job(with_key(orphan, "k", 1, 0)).await, Err(StoreError::NotFound(_))));
    // An API key that does not exist breaks a foreign key: a conflict, and nothing written.
    let mut unknown_key = job(&key, 1);
    unknown_key.api_key_id = domain::ApiKeyId::new();
    assert!(matches!(db.submit_job(unknown_key.clone()).await, Err(StoreError::Conflict(_))));
    assert!(matches!(db.submit_job(with_key(unknown_key, "other", 1, 0)).await, Err(StoreError::Conflict(_))));
    assert_balance(&db, key.account_id, 9).await;
    assert_eq!(db.list_jobs(&everything(key.account_id)).await.unwrap().len(), 1);
}

/// The same key and body replay the original job; another body conflicts; expired keys are free.
pub async fn idempotent_replays_return_the_original_job(db: Db) {
    let key = account(&*db, 100, 1).await;
    let first = submit(&*db, with_key(job(&key, 5), "k1", 1, 0)).await;
    let replay = db.submit_job(with_key(job(&key, 5), "k1", 1, 0)).await.unwrap();
    assert_eq!(replay, SubmitOutcome::Replayed { job_id: first, status: JobStatus::Queued });
    let other_body = db.submit_job(with_key(job(&key, 5), "k1", 2, 0)).await.unwrap();
    assert_eq!(other_body, SubmitOutcome::IdempotencyMismatch);
    assert_balance(&db, key.account_id, 95).await;
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Charge).await, 1);
    assert_eq!(db.list_jobs(&everything(key.account_id)).await.unwrap().len(), 1);

    // Keys belong to one account.
    let bob = account(&*db, 10, 1).await;
    submit(&*db, with_key(job(&bob, 5), "k1", 1, 0)).await;

    // A replay shows the job's current status.
    assert!(matches!(db.cancel_job(key.account_id, first).await.unwrap(), CancelOutcome::Cancelled(_)));
    let replay = db.submit_job(with_key(job(&key, 5), "k1", 1, 0)).await.unwrap();
    assert_eq!(replay, SubmitOutcome::Replayed { job_id: first, status: JobStatus::Cancelled });

    // A key older than the replay window is free again, for any body, and then belongs
    // to the new job.
    let fresh = submit(&*db, with_key(job(&key, 5), "k1", 2, i64::MAX)).await;
    assert_ne!(fresh, first);
    let replay = db.submit_job(with_key(job(&key, 5), "k1", 2, 0)).await.unwrap();
    assert_eq!(replay, SubmitOutcome::Replayed { job_id: fresh, status: JobStatus::Queued });
    assert_eq!(db.submit_job(with_key(job(&key, 5), "k1", 1, 0)).await.unwrap(), SubmitOutcome::IdempotencyMismatch);
    // 100 - 5 (first) + 5 (its refund) - 5 (fresh)
    assert_balance(&db, key.account_id, 95).await;
}

/// Fifty racing submissions on a balance that covers twenty: exactly twenty go through.
pub async fn concurrent_submissions_never_overdraw(db: Db) {
    let key = account(&*db, 20, 1).await;
    let outcomes = concurrently(50, |_| {
        let (db, key) = (db.clone(), key.clone());
        async move { db.submit_job(job(&key, 1)).await.expect("submit") }
    })
    .await;
    let created = outcomes.iter().filter(|o| matches!(o, SubmitOutcome::Created { .. })).count();
    let refused: Vec<_> = outcomes.iter().filter(|o| !matches!(o, SubmitOutcome::Created { .. })).collect();
    assert_eq!((created, refused.len()), (20, 30));
    assert!(
        refused.iter().all(|o| **o == SubmitOutcome::InsufficientCredits { required: 1, available: 0 }),
        "{refused:?}"
    );
    assert_balance(&db, key.account_id, 0).await;
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Charge).await, 20);
    assert_eq!(db.list_jobs(&everything(key.account_id)).await.unwrap().len(), 20);
}

/// Racing submissions with distinct idempotency keys never overdraw, and the refused ones leave no key.
pub async fn concurrent_keyed_submissions_never_overdraw(db: Db) {
    // Distinct keys racing for one balance: the refused ones must leave no key behind.
    let key = account(&*db, 20, 1).await;
    let outcomes = concurrently(50, |i| {
        let (db, key) = (db.clone(), key.clone());
        async move { (i, db.submit_job(with_key(job(&key, 1), &format!("k{i}"), 1, 0)).await.expect("submit")) }
    })
    .await;
    let refused: Vec<usize> =
        outcomes.iter().filter(|(_, o)| !matches!(o, SubmitOutcome::Created { .. })).map(|(i, _)| *i).collect();
    assert_eq!(refused.len(), 30, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .filter(|(i, _)| refused.contains(i))
        .all(|(_, o)| *o == SubmitOutcome::InsufficientCredits { required: 1, available: 0 }));
    assert_balance(&db, key.account_id, 0).await;
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Charge).await, 20);
    db.grant_credits(key.account_id, 30, None).await.unwrap();
    for i in refused {
        submit(&*db, with_key(job(&key, 1), &format!("k{i}"), 1, 0)).await;
    }
    assert_balance(&db, key.account_id, 0).await;
    assert_eq!(db.list_jobs(&everything(key.account_id)).await.unwrap().len(), 50);
}

/// Twenty racing requests with one idempotency key make one job and one charge.
pub async fn racing_requests_with_one_key_make_one_job(db: Db) {
    let key = account(&*db, 100, 1).await;
    let outcomes = concurrently(20, |_| {
        let (db, key) = (db.clone(), key.clone());
        async move { db.submit_job(with_key(job(&key, 5), "same", 7, 0)).await.expect("submit") }
    })
    .await;
    let created: Vec<JobId> = outcomes
        .iter()
        .filter_map(|o| match o {
            SubmitOutcome::Created { job_id, .. } => Some(*job_id),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    let replayed = outcomes
        .iter()
        .filter(|o| **o == SubmitOutcome::Replayed { job_id: created[0], status: JobStatus::Queued })
        .count();
    assert_eq!(replayed, 19, "{outcomes:?}");
    assert_balance(&db, key.account_id, 95).await;
    assert_eq!(ledger_rows(&db, key.account_id, LedgerKind::Charge).await, 1);
    assert_eq!(db.list_jobs(&everything(key.account_id)).await.unwrap().len(), 1);
}

/// Purging forgets keys created before the cut-off, and only those.
pub async fn purged_idempotency_keys_are_forgotten(db: Db) {
    let key = account(&*db, 100, 1).await;
    let first = submit(&*db, with_key(job(&key, 1), "k", 1, 0)).await;
    let created_at = db.get_job(key.account_id, first).await.unwrap().unwrap().created_at_ms;
    // Only keys created strictly before the cut-off go.
    assert_eq!(db.purge_idempotency_keys(created_at).await.unwrap(), 0);
    let replay = db.submit_job(with_key(job(&key, 1), "k", 1, 0)).await.unwrap();
    assert_eq!(replay, SubmitOutcome::Replayed { job_id: first, status: JobStatus::Queued });
    assert_eq!(db.purge_idempotency_keys(now_ms() + 60_000).await.unwrap(), 1);
    assert_eq!(db.purge_idempotency_keys(now_ms() + 60_000).await.unwrap(), 0);
    // Forgotten: the same request now makes a second job.
    let second = submit(&*db, with_key(job(&key, 1), "k", 1, 0)).await;
    assert_ne!(second, first);
    assert_balance(&db, key.account_id, 98).await;
}
