//! What only PostgreSQL has to prove, beyond the shared contract: migrations racing at
//! startup, the schema's own guards, several nodes on one database (admin writes among
//! them), wake-ups, and readiness. Each test works in a fresh schema (see `support/schema.rs`).

#[path = "support/schema.rs"]
mod schema;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use domain::{ApiKeyStatus, JobId, JobStatus, Stage};
use schema::TestSchema;
use store::{
    AdminWrite, AdminWritten, AuditContext, CancelOutcome, ClaimRequest, CreditAdjustment, CreditOutcome,
    IdempotencyClaim, NewJob, Store, StoreError, SubmitOutcome, Transition, UpstreamBudget,
};
use store_contract::support::{account, submit, with_webhook};
use store_postgres::PgStore;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;

/// How long a wake-up may take to arrive before the test fails.
const WAKE_WITHIN: Duration = Duration::from_secs(5);

/// The shared contract's job, subscribed to webhooks so its transitions raise events
/// (the wake-up test counts on them).
fn job(key: &store::ApiKeyRecord, cost: i64) -> NewJob {
    with_webhook(store_contract::support::job(key, cost), None)
}

#[tokio::test]
async fn migrations_apply_once_when_nodes_start_together() {
    let Some(schema) = TestSchema::create().await else { return };
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = schema.url.clone();
            tokio::spawn(async move { PgStore::migrate(&url).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().expect("migrate"));
    }
    applied.sort();
    // Every migration in the folder, by name: a new one must not need this test edited.
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres");
    let mut expected: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".sql").to_string())
        .collect();
    expected.sort();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(applied, expected, "each applied exactly once");
    assert!(PgStore::migrate(&schema.url).await.unwrap().is_empty(), "nothing left to apply");
    let store = PgStore::connect(&schema.url).await.expect("a migrated schema opens");
    assert!(store.ping().await.is_ok());
    store.close().await;
    schema.drop_schema().await;
}

/// A database error's SQLSTATE, for the raw checks below.
fn sqlstate(result: Result<u64, tokio_postgres::Error>) -> SqlState {
    result.expect_err("the schema must refuse this").code().cloned().expect("a database error")
}

#[tokio::test]
async fn the_schema_guards_the_ledger_and_balances() {
    let Some(schema) = TestSchema::create().await else { return };
    let store = PgStore::connect(&schema.url).await.unwrap();
    let key = account(&store, 10, 1).await;
    let id = submit(&store, job(&key, 4)).await;
    assert!(matches!(store.cancel_job(key.account_id, id).await.unwrap(), CancelOutcome::Cancelled(_)));
    let raw = schema.raw().await;
    let append_only = SqlState::INTEGRITY_CONSTRAINT_VIOLATION;
    assert_eq!(sqlstate(raw.execute("update ledger_entry set amount = 1000", &[]).await), append_only);
    assert_eq!(sqlstate(raw.execute("delete from ledger_entry", &[]).await), append_only);
    assert_eq!(sqlstate(raw.execute("truncate ledger_entry", &[]).await), append_only);
    assert_eq!(sqlstate(raw.execute("update account set credits = -1", &[]).await), SqlState::CHECK_VIOLATION);
    // A second refund of the same job is refused by its unique index.
    let again = raw
        .execute(
            "insert into ledger_entry (account_id, kind, amount, job_id, created_at) values ($1, 'refund', 4, $2, 0)",
            &[&key.account_id.0, &id.0],
        )
        .await;
    assert_eq!(sqlstate(again), SqlState::UNIQUE_VIOLATION);
    assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 10);
    assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 10);
    store.close().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn nodes_see_each_others_writes_at_once() {
    let Some(schema) = TestSchema::create().await else { return };
    let (a, b) = (PgStore::connect(&schema.url).await.unwrap(), PgStore::connect(&schema.url).await.unwrap());
    let key = account(&a, 10, 1).await;
    let id = submit(&a, job(&key, 5)).await;
    // Read on b first, so a cache (there must be none) would hold the QUEUED version.
    assert_eq!(b.get_job(key.account_id, id).await.unwrap().unwrap().status, JobStatus::Queued);
    assert!(matches!(a.cancel_job(key.account_id, id).await.unwrap(), CancelOutcome::Cancelled(_)));
    assert_eq!(b.get_job(key.account_id, id).await.unwrap().unwrap().status, JobStatus::Cancelled);
    assert_eq!(b.get_account(key.account_id).await.unwrap().unwrap().credits, 10);
    assert_eq!(b.find_api_key(&key.digest).await.unwrap().unwrap().status, ApiKeyStatus::Active);
    b.set_api_key_status(key.id, ApiKeyStatus::Disabled).await.unwrap();
    assert_eq!(a.find_api_key(&key.digest).await.unwrap().unwrap().status, ApiKeyStatus::Disabled);
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn claims_from_several_nodes_never_overlap_and_keep_the_caps() {
    let Some(schema) = TestSchema::create().await else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(PgStore::connect(&schema.url).await.unwrap()));
    }
    let capped = account(&*nodes[0], 100, 4).await;
    let roomy = account(&*nodes[0], 100, 100).await;
    let mut queued = HashSet::new();
    for i in 0..30 {
        queued.insert(submit(&*nodes[i % 3], job(if i % 2 == 0 { &capped } else { &roomy }, 1)).await);
    }
    let request = ClaimRequest {
        upstreams: vec![UpstreamBudget {
            name: "a".into(),
            create_rpm: 1000,
            max_in_flight: 1000,
            claimable_now: 1000,
        }],
        max_jobs: 2,
        lease_ms: 60_000,
        after_account: None,
    };
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (node, request) = (nodes[i % 3].clone(), request.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..20 {
                    mine.extend(node.claim_jobs(request.clone()).await.unwrap().into_iter().map(|c| c.job.record.id));
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let unique: HashSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "a job was claimed by two nodes");
    // Every roomy job, and exactly maxConcurrentJobs of the capped account's.
    assert_eq!(claimed.len(), 15 + 4);
    assert!(unique.is_subset(&queued));
    for node in nodes {
        node.close().await;
    }
    schema.drop_schema().await;
}

/// Submissions are written in batches, one collector per node. Racing from three nodes
/// on two accounts: no balance is overdrawn, one idempotency key makes one job across
/// nodes, and a job that breaks a rule (an unknown API key) is refused on its own while
/// the jobs batched with it go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_submissions_from_several_nodes_keep_every_rule() {
    let Some(schema) = TestSchema::create().await else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(PgStore::connect(&schema.url).await.unwrap()));
    }
    let small = account(&*nodes[0], 20, 1).await;
    let large = account(&*nodes[0], 1000, 1).await;
    let tasks: Vec<_> = (0..90)
        .map(|i| {
            // Kinds take turns, so every node's batches mix all three.
            let node = nodes[(i / 3) % 3].clone();
            let new = match i % 3 {
                0 => job(&small, 1),
                1 => {
                    let mut keyed = job(&large, 1);
                    keyed.idempotency =
                        Some(IdempotencyClaim { key: "shared".into(), fingerprint: [7; 32], not_before_ms: 0 });
                    keyed
                }
                _ => {
                    let mut paid = job(&large, 2);
                    if i == 2 {
                        paid.api_key_id = domain::ApiKeyId::new();
                    }
                    paid
                }
            };
            tokio::spawn(async move { (i, node.submit_job(new).await) })
        })
        .collect();
    let (mut created_small, mut refused_small, mut keyed_created, mut replayed, mut created_large) =
        (0, 0, Vec::new(), Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            (2, outcome) => assert!(matches!(outcome, Err(StoreError::Conflict(_))), "{outcome:?}"),
            (i, Ok(SubmitOutcome::Created { job_id, .. })) => match i % 3 {
                0 => created_small += 1,
                1 => keyed_created.push(job_id),
                _ => created_large += 1,
            },
            (i, Ok(SubmitOutcome::InsufficientCredits { required: 1, available: 0 })) if i % 3 == 0 => {
                refused_small += 1
            }
            (i, Ok(SubmitOutcome::Replayed { job_id, status: JobStatus::Queued })) if i % 3 == 1 => {
                replayed.push(job_id)
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((created_small, refused_small), (20, 10));
    assert_eq!(keyed_created.len(), 1, "one job for the shared key");
    assert_eq!(replayed, vec![keyed_created[0]; 29], "every other request replays it");
    assert_eq!(created_large, 29, "only the job with the unknown API key is refused");
    for (key, balance) in [(&small, 0), (&large, 1000 - 1 - 29 * 2)] {
        assert_eq!(nodes[1].get_account(key.account_id).await.unwrap().unwrap().credits, balance);
        assert_eq!(nodes[2].ledger_sum(key.account_id).await.unwrap(), balance);
    }
    for node in nodes {
        node.close().await;
    }
    schema.drop_schema().await;
}

async fn woken(notify: &Notify) -> bool {
    tokio::time::timeout(WAKE_WITHIN, notify.notified()).await.is_ok()
}

/// Waits out any wake-up already on its way, so the next check sees only new ones.
async fn settle(notify: &Notify) {
    while tokio::time::timeout(Duration::from_millis(300), notify.notified()).await.is_ok() {}
}

#[tokio::test]
async fn wakeups_reach_other_nodes_when_work_is_committed() {
    let Some(schema) = TestSchema::create().await else { return };
    let listener = PgStore::connect(&schema.url).await.unwrap();
    let writer = PgStore::connect(&schema.url).await.unwrap();
    let wakeups = listener.subscribe_wakeups();
    // The first wake-up comes once the listener is connected (it may have missed work).
    assert!(woken(wakeups.jobs()).await && woken(wakeups.webhooks()).await, "listener connected");

    let key = account(&writer, 5, 10).await;
    settle(wakeups.jobs()).await;
    // A refused submission commits nothing, so it announces nothing.
    let refused = writer.submit_job(job(&key, 50)).await.unwrap();
    assert!(matches!(refused, SubmitOutcome::InsufficientCredits { .. }));
    assert!(tokio::time::timeout(Duration::from_millis(500), wakeups.jobs().notified()).await.is_err());

    let id = submit(&writer, job(&key, 1)).await;
    assert!(woken(wakeups.jobs()).await, "a submission wakes the dispatchers");
    settle(wakeups.webhooks()).await;
    writer.transition(Transition::new(id, Stage::Queued, Stage::Submitting)).await.unwrap().unwrap();
    settle(wakeups.jobs()).await;
    writer.transition(Transition::new(id, Stage::Submitting, Stage::Queued)).await.unwrap().unwrap();
    assert!(woken(wakeups.jobs()).await, "a requeued job wakes the dispatchers");
    writer.transition(Transition::new(id, Stage::Queued, Stage::Failed).error("no")).await.unwrap().unwrap();
    assert!(woken(wakeups.webhooks()).await, "a raised event wakes the delivery workers");
    settle(wakeups.webhooks()).await;
    assert_eq!(writer.replay_webhooks(id).await.unwrap(), 1);
    assert!(woken(wakeups.webhooks()).await, "a replay wakes the delivery workers");

    // Another schema's work is not ours.
    let Some(other_schema) = TestSchema::create().await else { return };
    let other = PgStore::connect(&other_schema.url).await.unwrap();
    let other_key = account(&other, 5, 1).await;
    settle(wakeups.jobs()).await;
    submit(&other, job(&other_key, 1)).await;
    assert!(tokio::time::timeout(Duration::from_millis(500), wakeups.jobs().notified()).await.is_err());

    drop(wakeups);
    for store in [listener, writer, other] {
        store.close().await;
    }
    schema.drop_schema().await;
    other_schema.drop_schema().await;
}

#[tokio::test]
async fn readiness_and_unreachable_databases() {
    let Some(schema) = TestSchema::create().await else { return };
    let store = PgStore::connect(&schema.url).await.unwrap();
    assert!(store.ping().await.is_ok());
    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store is not ready");
    schema.drop_schema().await;

    // Nothing listens on port 1: connecting is "try again later", not a bug.
    let refused = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres").await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{:?}", refused.err());
    let nonsense = PgStore::connect("postgres://[not a host").await;
    assert!(matches!(nonsense, Err(StoreError::Internal(_))), "{:?}", nonsense.err());
}

#[tokio::test]
async fn a_store_whose_pool_is_busy_still_answers_its_ping() {
    let Some(schema) = TestSchema::create().await else { return };
    // Named, to tell this store's sessions from those of tests running beside it.
    let url = format!("{}&application_name={}", schema.url, schema.name);
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    let key = account(&*store, 100, 1).await;
    // A transaction outside the store holds the account row, so each grant below waits
    // for it while holding one pooled connection; 16 of them take the whole pool.
    let mut raw = schema.raw().await;
    let blocker = raw.transaction().await.unwrap();
    blocker.execute("select 1 from account where account_id = $1 for update", &[&key.account_id.0]).await.unwrap();
    let grants: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.grant_credits(key.account_id, 1, None).await })
        })
        .collect();
    let observer = schema.raw().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The first grant waits for the blocker, the others queue behind it for the row.
        let row = observer
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1 and wait_event_type = 'Lock'",
                &[&schema.name],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) >= 16 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the grants did not all queue behind the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The database answers, so the store is ready, although no pooled connection is free.
    let ping = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
    assert!(matches!(ping, Ok(Ok(()))), "{ping:?}");

    blocker.commit().await.unwrap();
    for grant in grants {
        grant.await.unwrap().unwrap();
    }
    assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 116);
    store.close().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_submission_waits_at_most_five_seconds_for_a_locked_account_and_writes_nothing() {
    let Some(schema) = TestSchema::create().await else { return };
    let store = PgStore::connect(&schema.url).await.unwrap();
    let key = account(&store, 100, 1).await;
    // A transaction left open elsewhere (by hand in psql, say) holds the account's row.
    let mut raw = schema.raw().await;
    let blocker = raw.transaction().await.unwrap();
    blocker.execute("select 1 from account where account_id = $1 for update", &[&key.account_id.0]).await.unwrap();
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(20), store.submit_job(job(&key, 5))).await;
    let waited = started.elapsed();
    assert!(matches!(refused, Ok(Err(store::StoreError::Unavailable(_)))), "{refused:?}");
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(15), "waited {waited:?}");
    blocker.rollback().await.unwrap();
    // Nothing was written, and the account takes submissions again at once.
    assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 100);
    submit(&store, job(&key, 5)).await;
    assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 95);
    assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 95);
    store.close().await;
    schema.drop_schema().await;
}

/// An operator's credit adjustment, as `reelgate credits` makes it.
fn adjustment(account_id: domain::AccountId, amount: i64, key: Option<&str>) -> AdminWrite {
    AdminWrite::AdjustCredits(CreditAdjustment {
        account_id,
        amount,
        note: Some("invoice".into()),
        idempotency_key: key.map(str::to_owned),
    })
}

/// Credit adjustments from several nodes at once: one billing key applies once whichever
/// node each retry reaches, deductions never take a balance below zero, and each applied
/// change has exactly one audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_adjustments_from_several_nodes_apply_once_and_never_overdraw() {
    let Some(schema) = TestSchema::create().await else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(PgStore::connect(&schema.url).await.unwrap()));
    }
    let key = account(&*nodes[0], 10, 1).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let node = nodes[i % 3].clone();
            let write = if i % 2 == 0 {
                adjustment(key.account_id, 7, Some("inv-9"))
            } else {
                adjustment(key.account_id, -2, None)
            };
            tokio::spawn(async move { node.admin_write(write, AuditContext::cli(Some("ops"))).await.unwrap() })
        })
        .collect();
    let (mut granted, mut replayed, mut deducted, mut refused) = (0, 0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            AdminWritten::Credits(CreditOutcome::Applied(_, entry)) if entry.amount > 0 => granted += 1,
            AdminWritten::Credits(CreditOutcome::Applied(..)) => deducted += 1,
            AdminWritten::Credits(CreditOutcome::Replayed(_, entry)) => {
                assert_eq!(entry.idempotency_key.as_deref(), Some("inv-9"));
                replayed += 1;
            }
            AdminWritten::Credits(CreditOutcome::Insufficient { .. }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((granted, replayed), (1, 5), "one key, one grant");
    // 10 + 7 credits cover eight deductions of 2 at most; six were asked for.
    assert_eq!(deducted + refused, 6);
    let balance = nodes[1].get_account(key.account_id).await.unwrap().unwrap().credits;
    assert_eq!(balance, 17 - 2 * deducted);
    assert!(balance >= 0);
    assert_eq!(nodes[2].ledger_sum(key.account_id).await.unwrap(), balance);
    let audit = nodes[0].audit_log(None, 100).await.unwrap();
    assert_eq!(audit.len(), (granted + deducted) as usize, "one audit row per applied change, none for the others");
    assert!(audit.iter().all(|a| a.action == "credits.adjust" && a.actor == "cli:ops"));
    for node in nodes {
        node.close().await;
    }
    schema.drop_schema().await;
}

/// An admin cancel is announced to other nodes' event streams like the account's own
/// cancel; the audit log cannot be changed afterwards; migration 0008's ledger rules hold
/// in the schema itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cancels_reach_other_nodes_and_the_audit_log_is_append_only() {
    let Some(schema) = TestSchema::create().await else { return };
    let listener = PgStore::connect(&schema.url).await.unwrap();
    let writer = PgStore::connect(&schema.url).await.unwrap();
    let wakeups = listener.subscribe_wakeups();
    assert!(woken(wakeups.jobs()).await, "listener connected");
    let mut changes = listener.job_changes();
    let key = account(&writer, 10, 1).await;
    let id = submit(&writer, job(&key, 4)).await;
    let AdminWritten::Cancel(CancelOutcome::Cancelled(cancelled)) =
        writer.admin_write(AdminWrite::CancelJob { id }, AuditContext::cli(None)).await.unwrap()
    else {
        panic!("the queued job is cancelled");
    };
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    // The submission is announced first; the cancel after it.
    let mut announced = 0;
    while announced < 2 {
        let change = tokio::time::timeout(WAKE_WITHIN, changes.recv()).await.expect("announced").unwrap();
        assert_eq!(change, store::JobChange { account_id: key.account_id, job_id: id });
        announced += 1;
    }
    assert_eq!(listener.get_job(key.account_id, id).await.unwrap().unwrap().status, JobStatus::Cancelled);
    assert_eq!(listener.get_account(key.account_id).await.unwrap().unwrap().credits, 10);

    let raw = schema.raw().await;
    let append_only = SqlState::INTEGRITY_CONSTRAINT_VIOLATION;
    assert_eq!(sqlstate(raw.execute("update audit_log set actor = 'someone else'", &[]).await), append_only);
    assert_eq!(sqlstate(raw.execute("delete from audit_log", &[]).await), append_only);
    assert_eq!(sqlstate(raw.execute("truncate audit_log", &[]).await), append_only);
    let insert = "insert into ledger_entry (account_id, kind, amount, job_id, idempotency_key, created_at)
                  values ($1, $2, $3, $4, $5, 0)";
    let none: Option<uuid::Uuid> = None;
    let deduct_up = raw.execute(insert, &[&key.account_id.0, &"deduct", &5i64, &none, &None::<&str>]).await;
    assert_eq!(sqlstate(deduct_up), SqlState::CHECK_VIOLATION, "a deduction is never positive");
    let deduct_job = raw.execute(insert, &[&key.account_id.0, &"deduct", &-1i64, &Some(id.0), &None::<&str>]).await;
    assert_eq!(sqlstate(deduct_job), SqlState::CHECK_VIOLATION, "a deduction belongs to no job");
    raw.execute(insert, &[&key.account_id.0, &"grant", &0i64, &none, &Some("k")]).await.unwrap();
    let twice = raw.execute(insert, &[&key.account_id.0, &"grant", &0i64, &none, &Some("k")]).await;
    assert_eq!(sqlstate(twice), SqlState::UNIQUE_VIOLATION, "an idempotency key applies once per account");
    assert_eq!(writer.audit_log(None, 10).await.unwrap().len(), 1);
    drop(wakeups);
    listener.close().await;
    writer.close().await;
    schema.drop_schema().await;
}
