//! The job-change feed (`Store::job_changes`) and the reads a resumed event stream makes
//! (`Store::jobs_changed_since`).

use std::time::Duration;

use domain::{JobId, Stage};
use store::{JobChange, Transition};
use tokio::sync::broadcast;

use crate::support::*;

/// The next change announced, within a second.
async fn next_change(changes: &mut broadcast::Receiver<JobChange>) -> JobChange {
    tokio::time::timeout(Duration::from_secs(1), changes.recv())
        .await
        .expect("a change is announced within a second")
        .expect("the feed is open")
}

/// Every committed change a client can see is announced once it is committed, with the
/// job and its account; and `jobs_changed_since` finds what changed, per key or account.
pub async fn committed_job_changes_are_announced(db: Db) {
    let key = account(&*db, 100, 5).await;
    let mut changes = db.job_changes();
    let expect = |job_id: JobId| JobChange { account_id: key.account_id, job_id };

    let first = submit(&*db, job(&key, 1)).await;
    assert_eq!(next_change(&mut changes).await, expect(first), "a submission");
    let record = db.get_job(key.account_id, first).await.unwrap().unwrap();
    assert!(record.updated_at_ms >= record.created_at_ms);

    let claimed = claim_some(&db, 1).await;
    assert_eq!(next_change(&mut changes).await, expect(first), "a claim");
    let moved = Transition::new(first, Stage::Submitting, Stage::Running)
        .if_due_at(claimed[0].job.due_at_ms)
        .due_at(now_ms() + 60_000)
        .progress(40);
    db.transition(moved).await.unwrap().expect("the transition applies");
    assert_eq!(next_change(&mut changes).await, expect(first), "a transition");
    let running = db.get_job(key.account_id, first).await.unwrap().unwrap();
    assert!(running.updated_at_ms >= record.updated_at_ms);

    let second = submit(&*db, job(&key, 1)).await;
    assert_eq!(next_change(&mut changes).await, expect(second));
    db.cancel_job(key.account_id, second).await.unwrap();
    assert_eq!(next_change(&mut changes).await, expect(second), "a cancellation");
    // A refused move changes nothing and announces nothing.
    let refused = Transition::new(second, Stage::Queued, Stage::Submitting);
    assert!(db.transition(refused).await.unwrap().is_none());
    assert!(changes.try_recv().is_err(), "nothing more was announced");

    // Another key of the same account, and another account.
    let sibling = second_key(&db, key.account_id).await;
    let third = submit(&*db, job(&sibling, 1)).await;
    let stranger = account(&*db, 10, 1).await;
    submit(&*db, job(&stranger, 1)).await;

    let everything = db.jobs_changed_since(key.account_id, None, 0, 100).await.unwrap();
    let mut found: Vec<JobId> = everything.iter().map(|j| j.id).collect();
    found.sort();
    let mut expected = vec![first, second, third];
    expected.sort();
    assert_eq!(found, expected, "the account's jobs, no other account's");
    assert!(everything.windows(2).all(|w| w[0].updated_at_ms <= w[1].updated_at_ms), "oldest change first");
    let keyed = db.jobs_changed_since(key.account_id, Some(key.id), 0, 100).await.unwrap();
    assert!(keyed.iter().all(|j| j.api_key_id == key.id) && keyed.len() == 2, "one key's jobs");
    let limited = db.jobs_changed_since(key.account_id, None, 0, 1).await.unwrap();
    assert_eq!(limited.len(), 1);
    let latest = everything.iter().map(|j| j.updated_at_ms).max().unwrap();
    let later = db.jobs_changed_since(key.account_id, None, latest + 1, 100).await.unwrap();
    assert!(later.is_empty(), "nothing changed after the latest change");
}
