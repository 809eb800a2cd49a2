//! The dispatcher's claims (fairness, caps, concurrency) and the upstream create budget.

use std::collections::HashSet;

use domain::{AccountId, JobId, JobStatus, Stage};
use store::{CallReservation, QueueDepth, Transition, UpstreamBudget};

use crate::support::*;

/// Claims serve accounts round-robin and each account's jobs oldest first, with a lease.
pub async fn claims_go_round_robin_and_fifo_within_an_account(db: Db) {
    let big = account(&*db, 1000, 100).await;
    let big_jobs = submit_n(&db, &big, 30).await;
    let small = account(&*db, 10, 10).await;
    let small_job = submit_n(&db, &small, 1).await[0];

    let before = now_ms();
    let got = db.claim_jobs(claim(vec![budget("a", 100, 100)], 2, None)).await.unwrap();
    let got_ids = ids(&got);
    assert!(got_ids.contains(&small_job), "the second account's only job is served in the first round");
    assert!(got_ids.contains(&big_jobs[0]), "the other account's oldest job goes first");
    for c in &got {
        let j = &c.job;
        assert_eq!((c.upstream.as_str(), j.stage, j.record.status), ("a", Stage::Submitting, JobStatus::Processing));
        assert_eq!((j.upstream_account.as_deref(), j.record.progress, j.attempts), (Some("a"), Some(5), 0));
        assert!(j.due_at_ms.is_some_and(|d| d >= before + 60_000), "leased for lease_ms");
        assert!(j.started_at_ms.is_some_and(|s| s >= before));
        assert_eq!(engine_job(&db, j.record.id).await.due_at_ms, j.due_at_ms, "stored as returned");
    }
    // Later claims continue first-in first-out within the remaining account.
    let next = db.claim_jobs(claim(vec![budget("a", 100, 100)], 3, None)).await.unwrap();
    assert_eq!(ids(&next), big_jobs[1..4].to_vec());
    let oldest = Some(engine_job(&db, big_jobs[4]).await.record.created_at_ms);
    assert_eq!(db.queue_depth().await.unwrap(), QueueDepth { queued: 26, active: 5, oldest_queued_at_ms: oldest });
}

/// A claim starts after the account served last and wraps around.
pub async fn claims_start_after_the_account_served_last(db: Db) {
    let mut accounts: Vec<(AccountId, Vec<JobId>)> = Vec::new();
    for _ in 0..3 {
        let key = account(&*db, 100, 10).await;
        accounts.push((key.account_id, submit_n(&db, &key, 2).await));
    }
    accounts.sort_by_key(|(id, _)| *id);
    let take_one = |after: Option<AccountId>| db.claim_jobs(claim(vec![budget("a", 100, 100)], 1, after));
    assert_eq!(ids(&take_one(Some(accounts[0].0)).await.unwrap()), vec![accounts[1].1[0]]);
    assert_eq!(ids(&take_one(Some(accounts[1].0)).await.unwrap()), vec![accounts[2].1[0]]);
    // After the last account, service wraps around to the first.
    assert_eq!(ids(&take_one(Some(accounts[2].0)).await.unwrap()), vec![accounts[0].1[0]]);
    // Without a position, service starts with the lowest account id.
    assert_eq!(ids(&take_one(None).await.unwrap()), vec![accounts[0].1[1]]);
    // One round covers every account once, in order, starting after the given one.
    let round = db.claim_jobs(claim(vec![budget("a", 100, 100)], 2, Some(accounts[0].0))).await.unwrap();
    assert_eq!(ids(&round), vec![accounts[1].1[1], accounts[2].1[1]]);
}

/// Claims keep maxConcurrentJobs, in-flight slots, create budgets and the caller's pacing.
pub async fn claims_respect_account_and_upstream_caps(db: Db) {
    // maxConcurrentJobs = 1.
    let single = account(&*db, 1000, 1).await;
    submit_n(&db, &single, 5).await;
    let got = db.claim_jobs(claim(vec![budget("a", 100, 100)], 10, None)).await.unwrap();
    assert_eq!(got.len(), 1, "maxConcurrentJobs = 1");
    assert!(db.claim_jobs(claim(vec![budget("a", 100, 100)], 10, None)).await.unwrap().is_empty());
    // Downloading still counts against the account, though it frees the upstream slot.
    let held = got[0].job.record.id;
    advance(&db, Transition::new(held, Stage::Submitting, Stage::Running)).await;
    advance(&db, Transition::new(held, Stage::Running, Stage::Downloading)).await;
    assert!(db.claim_jobs(claim(vec![budget("a", 100, 100)], 10, None)).await.unwrap().is_empty());
    advance(&db, Transition::new(held, Stage::Downloading, Stage::Failed).error("x")).await;
    assert!(db.claim_jobs(claim(vec![budget("a", 100, 0)], 10, None)).await.unwrap().is_empty(), "no slot upstream");
    assert!(db.claim_jobs(claim(vec![budget("a", 100, 100)], 0, None)).await.unwrap().is_empty(), "max_jobs = 0");
    assert!(db.claim_jobs(claim(vec![], 10, None)).await.unwrap().is_empty(), "no upstream at all");
    assert_eq!(db.claim_jobs(claim(vec![budget("a", 100, 100)], 10, None)).await.unwrap().len(), 1);

    // In-flight slots: submitting and running hold one, downloading does not.
    let wide = account(&*db, 1000, 100).await;
    submit_n(&db, &wide, 10).await;
    let in_flight = db.claim_jobs(claim(vec![budget("b", 100, 3)], 10, None)).await.unwrap();
    assert_eq!(in_flight.len(), 3);
    assert!(in_flight.iter().all(|c| c.upstream == "b"));
    assert!(db.claim_jobs(claim(vec![budget("b", 100, 3)], 10, None)).await.unwrap().is_empty());
    let first = in_flight[0].job.record.id;
    advance(&db, Transition::new(first, Stage::Submitting, Stage::Running)).await;
    assert!(db.claim_jobs(claim(vec![budget("b", 100, 3)], 10, None)).await.unwrap().is_empty(), "running holds it");
    advance(&db, Transition::new(first, Stage::Running, Stage::Downloading)).await;
    assert_eq!(db.claim_jobs(claim(vec![budget("b", 100, 3)], 10, None)).await.unwrap().len(), 1);

    // The caller's pacing, and calls already made, limit a claim too.
    let paced = UpstreamBudget { claimable_now: 1, ..budget("c", 100, 100) };
    assert_eq!(db.claim_jobs(claim(vec![paced], 10, None)).await.unwrap().len(), 1);
    for id in submit_n(&db, &wide, 2).await {
        assert_eq!(db.reserve_upstream_call("d", id, 2, 60_000).await.unwrap(), CallReservation::Granted);
    }
    assert!(db.claim_jobs(claim(vec![budget("d", 2, 100)], 10, None)).await.unwrap().is_empty(), "budget spent");

    // Several upstreams: the one with the most calls left takes each job, spreading load.
    let spread = db.claim_jobs(claim(vec![budget("e", 2, 100), budget("f", 2, 100)], 4, None)).await.unwrap();
    assert_eq!(spread.len(), 4);
    assert_eq!(spread.iter().filter(|c| c.upstream == "e").count(), 2);
    let favoured = db.claim_jobs(claim(vec![budget("g", 1, 100), budget("h", 9, 100)], 1, None)).await.unwrap();
    assert_eq!(favoured.iter().map(|c| c.upstream.as_str()).collect::<Vec<_>>(), ["h"]);
}

/// Dispatchers claiming at once never get the same job.
pub async fn concurrent_claims_never_take_a_job_twice(db: Db) {
    let mut all = HashSet::new();
    for _ in 0..3 {
        let key = account(&*db, 100, 100).await;
        all.extend(submit_n(&db, &key, 10).await);
    }
    let per_task = concurrently(6, |_| {
        let db = db.clone();
        async move {
            let mut mine = Vec::new();
            for _ in 0..100 {
                let got = claim_some(&db, 3).await;
                if got.is_empty() && db.queue_depth().await.expect("depth").queued == 0 {
                    break;
                }
                mine.extend(ids(&got));
                tokio::task::yield_now().await;
            }
            mine
        }
    })
    .await;
    let claimed: Vec<JobId> = per_task.into_iter().flatten().collect();
    let unique: HashSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "a job was claimed twice");
    assert_eq!(unique, all);
    for id in unique {
        assert_eq!(engine_job(&db, id).await.stage, Stage::Submitting);
    }
}

/// Dispatchers claiming at once together stay within the account and upstream caps.
pub async fn concurrent_claims_respect_the_caps(db: Db) {
    // One account allowing 3 jobs at once; eight dispatchers race for its 20 jobs.
    let capped = account(&*db, 100, 3).await;
    let capped_jobs = submit_n(&db, &capped, 20).await;
    let taken: usize = concurrently(8, |_| {
        let db = db.clone();
        async move { claim_some(&db, 5).await.len() }
    })
    .await
    .into_iter()
    .sum();
    assert_eq!(taken, 3, "maxConcurrentJobs holds across concurrent claims");
    // Claims go oldest first, so the fourth job is now the oldest queued.
    let oldest = Some(engine_job(&db, capped_jobs[3]).await.record.created_at_ms);
    assert_eq!(db.queue_depth().await.unwrap(), QueueDepth { queued: 17, active: 3, oldest_queued_at_ms: oldest });

    // Roomy accounts, but an upstream with 7 in-flight slots.
    for _ in 0..3 {
        let key = account(&*db, 100, 100).await;
        submit_n(&db, &key, 10).await;
    }
    let taken: usize = concurrently(8, |_| {
        let db = db.clone();
        async move { db.claim_jobs(claim(vec![budget("narrow", 100, 7)], 5, None)).await.expect("claim").len() }
    })
    .await
    .into_iter()
    .sum();
    assert_eq!(taken, 7, "an upstream's in-flight cap holds across concurrent claims");
}

/// Forty racing reservations against a budget of twenty: exactly twenty are granted.
pub async fn upstream_budget_holds_under_concurrency(db: Db) {
    let key = account(&*db, 100, 1).await;
    let jobs = submit_n(&db, &key, 40).await;
    let before = now_ms();
    let outcomes = concurrently(40, |i| {
        let (db, id) = (db.clone(), jobs[i]);
        async move { db.reserve_upstream_call("a", id, 20, 60_000).await.expect("reserve") }
    })
    .await;
    let after = now_ms();
    let granted = outcomes.iter().filter(|o| **o == CallReservation::Granted).count();
    assert_eq!(granted, 20, "{outcomes:?}");
    for o in &outcomes {
        if let CallReservation::FullUntil(t) = o {
            assert!((before + 60_000..=after + 60_000).contains(t), "free again a window after the oldest call: {t}");
        }
    }
    // Each granted reservation counts as a create call of its job; refused ones do not.
    let mut attempts = 0;
    for id in &jobs {
        attempts += engine_job(&db, *id).await.attempts;
    }
    assert_eq!(attempts, 20);
}

/// The create budget is a sliding window per upstream account.
pub async fn the_create_budget_is_a_sliding_window(db: Db) {
    let key = account(&*db, 1000, 1).await;
    let ids = submit_n(&db, &key, 4).await;
    for id in &ids[..3] {
        assert_eq!(db.reserve_upstream_call("a", *id, 3, 60_000).await.unwrap(), CallReservation::Granted);
    }
    let full = db.reserve_upstream_call("a", ids[3], 3, 60_000).await.unwrap();
    assert!(matches!(full, CallReservation::FullUntil(t) if t > now_ms()), "{full:?}");
    // Another upstream account has its own budget.
    assert_eq!(db.reserve_upstream_call("b", ids[3], 3, 60_000).await.unwrap(), CallReservation::Granted);
    // With a window of 1 ms, the calls above have already left it.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(db.reserve_upstream_call("a", ids[3], 3, 1).await.unwrap(), CallReservation::Granted);
    assert_eq!(engine_job(&db, ids[3]).await.attempts, 2, "granted reservations count, refused ones do not");
    // A spent budget also stops claims.
    assert!(db.claim_jobs(claim(vec![budget("b", 1, 100)], 10, None)).await.unwrap().is_empty());
}
