//! Helpers the cases share: accounts with keys, job builders, engine shortcuts and
//! ledger checks. Everything goes through the `Store` trait.
//!
//! The account, job and submission helpers are public: each backend's own tests (what
//! only that backend has to prove) build their fixtures with them too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use domain::{AccountId, ApiKeySecret, JobId, ModelId, Stage};
use store::{
    Account, ApiKeyRecord, ClaimRequest, ClaimedJob, EngineJob, IdempotencyClaim, LedgerKind, NewApiKey, NewJob, Store,
    SubmitOutcome, Transition, UpstreamBudget,
};

/// The test's view of a store.
pub(crate) type Db = Arc<dyn Store>;

/// Unix milliseconds now, from the same kind of clock the backends use.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis() as i64
}

/// A new account with `credits` and a concurrency cap, and its first key.
pub async fn account(db: &dyn Store, credits: i64, max_concurrent_jobs: u32) -> ApiKeyRecord {
    let secret = ApiKeySecret::generate();
    let (_, key) = db
        .create_api_key(NewApiKey {
            account_id: None,
            name: "contract".into(),
            email: "contract@reelgate.local".into(),
            prefix: secret.prefix,
            digest: secret.digest,
            initial_credits: credits,
            plan: "test".into(),
            max_concurrent_jobs,
        })
        .await
        .expect("create an account");
    key
}

/// Another key on an existing account.
pub(crate) async fn second_key(db: &Db, account_id: AccountId) -> ApiKeyRecord {
    let secret = ApiKeySecret::generate();
    let (_, key) = db
        .create_api_key(NewApiKey {
            account_id: Some(account_id),
            name: "second".into(),
            email: "second@reelgate.local".into(),
            prefix: secret.prefix,
            digest: secret.digest,
            initial_credits: 0,
            plan: "ignored".into(),
            max_concurrent_jobs: 1,
        })
        .await
        .expect("add a key");
    key
}

/// A job for `key` costing `cost`, with a distinct prompt.
pub fn job(key: &ApiKeyRecord, cost: i64) -> NewJob {
    static PROMPTS: AtomicU64 = AtomicU64::new(0);
    let n = PROMPTS.fetch_add(1, Ordering::Relaxed);
    NewJob {
        id: JobId::new(),
        account_id: key.account_id,
        api_key_id: key.id,
        model: ModelId::Hailuo23,
        cost,
        input_json: format!(r#"{{"model":"hailuo-2.3","prompt":"job {n}"}}"#),
        webhook_url: None,
        webhook_events: None,
        idempotency: None,
    }
}

/// The same job with an idempotency key and body fingerprint, replayable after `not_before_ms`.
pub fn with_key(mut job: NewJob, key: &str, fingerprint: u8, not_before_ms: i64) -> NewJob {
    job.idempotency = Some(IdempotencyClaim { key: key.into(), fingerprint: [fingerprint; 32], not_before_ms });
    job
}

/// The same job with a webhook subscription.
pub fn with_webhook(mut job: NewJob, events: Option<&[&str]>) -> NewJob {
    job.webhook_url = Some("https://hooks.example.com/reelgate".into());
    job.webhook_events = events.map(|e| e.iter().map(|s| s.to_string()).collect());
    job
}

/// Submits and expects a new job.
pub async fn submit(db: &dyn Store, job: NewJob) -> JobId {
    match db.submit_job(job).await.expect("submit") {
        SubmitOutcome::Created { job_id, .. } => job_id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

/// Submits `n` jobs of cost 1 for `key`, oldest first.
pub(crate) async fn submit_n(db: &Db, key: &ApiKeyRecord, n: usize) -> Vec<JobId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(submit(db.as_ref(), job(key, 1)).await);
    }
    ids
}

pub(crate) async fn get_account(db: &Db, id: AccountId) -> Account {
    db.get_account(id).await.expect("read the account").expect("the account exists")
}

/// Asserts that the balance is `expected` and equals the ledger's sum.
pub(crate) async fn assert_balance(db: &Db, id: AccountId, expected: i64) {
    let balance = get_account(db, id).await.credits;
    let sum: i64 = db.ledger(id).await.expect("read the ledger").iter().map(|e| e.amount).sum();
    assert_eq!((balance, sum), (expected, expected), "(balance, ledger sum)");
}

/// How many ledger rows of `kind` the account has.
pub(crate) async fn ledger_rows(db: &Db, id: AccountId, kind: LedgerKind) -> usize {
    db.ledger(id).await.expect("read the ledger").iter().filter(|e| e.kind == kind).count()
}

pub(crate) fn budget(name: &str, create_rpm: u32, max_in_flight: u32) -> UpstreamBudget {
    UpstreamBudget { name: name.into(), create_rpm, max_in_flight, claimable_now: u32::MAX }
}

pub(crate) fn claim(upstreams: Vec<UpstreamBudget>, max_jobs: usize, after: Option<AccountId>) -> ClaimRequest {
    ClaimRequest { upstreams, max_jobs, lease_ms: 60_000, after_account: after }
}

/// Claims with one roomy upstream `a`.
pub(crate) async fn claim_some(db: &Db, max_jobs: usize) -> Vec<ClaimedJob> {
    db.claim_jobs(claim(vec![budget("a", 1000, 1000)], max_jobs, None)).await.expect("claim")
}

pub(crate) fn ids(claimed: &[ClaimedJob]) -> Vec<JobId> {
    claimed.iter().map(|c| c.job.record.id).collect()
}

pub(crate) async fn engine_job(db: &Db, id: JobId) -> EngineJob {
    db.engine_job(id).await.expect("read the job").expect("the job exists")
}

/// Applies a transition that must win.
pub(crate) async fn advance(db: &Db, t: Transition) -> EngineJob {
    let (id, to) = (t.job_id, t.to);
    db.transition(t).await.expect("transition").unwrap_or_else(|| panic!("job {id} did not move to {to:?}"))
}

/// Takes a queued job through every stage to `Completed`, with a result.
pub(crate) async fn complete(db: &Db, id: JobId) -> EngineJob {
    advance(db, Transition::new(id, Stage::Queued, Stage::Submitting).progress(5)).await;
    advance(db, Transition::new(id, Stage::Submitting, Stage::Running).progress(30)).await;
    advance(db, Transition::new(id, Stage::Running, Stage::Downloading).progress(90)).await;
    let mut done = Transition::new(id, Stage::Downloading, Stage::Completed).progress(100);
    done.result = Some(serde_json::json!({"videoUrl": format!("https://cdn.example.com/{id}.mp4")}));
    done.result_bytes = Some(1234);
    advance(db, done).await
}

/// Runs `n` copies of `f` at once and returns their results in spawn order.
pub(crate) async fn concurrently<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("a concurrent task panicked"));
    }
    out
}
