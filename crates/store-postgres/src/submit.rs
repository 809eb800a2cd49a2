//! Submissions, batched: the front door's hot write.
//!
//! A submission debits its account, inserts the job and its `charge` ledger row, and
//! records its idempotency key, all or nothing. Each of these written one request at a
//! time costs a commit (a WAL flush) per job, and concurrent requests on one account
//! queue behind each other's row lock for the whole commit. So this module owns one
//! collector task per store: [`Submitter::submit`] queues the job and waits; the
//! collector takes everything queued while the previous batch was being written and
//! writes it as one transaction of two round trips, then answers every caller. Under load
//! a batch holds as many jobs as arrived during one commit, so the cost of a commit is
//! shared by all of them; alone, a submission waits for nothing but its own batch.
//!
//! A batch is one transaction:
//!
//! 1. `begin`, then lock the batch's accounts (`for no key update`, in account order so
//!    that two batches never wait for each other in a cycle) and read their balances,
//!    then read the idempotency keys the batch names. The three statements are sent
//!    together (pipelined) and cost one round trip. The key read starts after the locks
//!    are held, so under READ COMMITTED it sees every key committed before.
//! 2. Decide each job in arrival order, exactly as one-at-a-time submissions would: an
//!    unknown account is `NotFound`; a key seen within its replay window is a replay (or
//!    a mismatch) of the job holding it, including a job earlier in this batch; a job
//!    the remaining balance does not cover is refused with that balance; any other job
//!    is accepted and its cost taken from the remaining balance.
//! 3. One statement writes the accepted jobs from arrays (`unnest`): the job rows, their
//!    ledger rows, their keys, and per account one debit of the sum of the jobs actually
//!    inserted, so the balance and the ledger cannot disagree. `commit` is sent with it.
//!
//! Why the key read can be trusted until the commit: every writer of an account's
//! idempotency keys is a batch holding that account's row lock (the purge only deletes
//! keys past their window, which a batch treats as absent anyway). Why the balance can:
//! it was read under the same lock, and the `credits >= 0` check backs this up.
//!
//! When the write fails on a rule (a conflict, such as an API key that does not exist),
//! nothing was written; every job of the batch is then tried again in a batch of its own,
//! so only the offending one is refused. Any other failure (the database unreachable) is
//! every job's answer.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use domain::{JobId, JobStatus};
use store::{NewJob, Result, StoreError, SubmitOutcome};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{db_err, pool_err, rows, Clock, Param};

/// The most jobs written by one statement. Far above what arrives during one commit;
/// it only bounds the statement's arrays.
const MAX_BATCH: usize = 512;
/// Batches written at once. One keeps every batch as large as possible; batches on the
/// same accounts would wait for each other's locks anyway.
const BATCHES_IN_FLIGHT: usize = 1;
/// Submissions queued for the collector at most; beyond that callers wait to queue.
const MAX_QUEUED: usize = 8192;
/// Starts a batch's transaction. Another node's batch holds an account's lock for a
/// few milliseconds; the lock timeout only stops a transaction left open on an account
/// (say, by hand in psql) from holding up every submission of this node for longer than
/// the pool would make a caller wait. The batch then fails as `Unavailable`.
const BEGIN: &str = "begin; set local lock_timeout = '5s'";

/// Locks the batch's accounts, in account order, and reads their balances.
const LOCK_ACCOUNTS: &str = "select account_id, credits from account
     where account_id = any($1::uuid[]) order by account_id for no key update";

/// The stored idempotency keys among the `(account, key)` pairs, each with its job's
/// status.
const READ_KEYS: &str = "select k.account_id, k.idempotency_key, k.fingerprint, k.job_id, k.created_at, j.status
     from idempotency_key k left join job j on j.job_id = k.job_id
     where (k.account_id, k.idempotency_key) in (select * from unnest($1::uuid[], $2::text[]))";

/// Writes the accepted jobs. Parameters: $1 now; per job, in arrival order: $2 job id,
/// $3 account, $4 API key, $5 model, $6 cost, $7 webhook URL, $8 webhook events, $9
/// webhook status, $10 input; per keyed job: $11 account, $12 key, $13 fingerprint, $14
/// job id. Returns the ids of the jobs inserted.
///
/// The debit sums what `new_job` returned, so it is exactly the charges written. Foreign
/// keys are checked at the end of the statement, so the keys may point at jobs inserted
/// by the same statement. A key already stored is overwritten: the decision step found
/// it absent or past its window under the account's lock (see the module comment).
const WRITE: &str = "with req as (
         select * from unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[], $7::text[],
                              $8::text[], $9::text[], $10::text[])
             with ordinality as r(job_id, account_id, api_key_id, model, cost, webhook_url, webhook_events,
                                  webhook_status, input, ord)
     ),
     new_job as (
         insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost,
                          webhook_url, webhook_events, webhook_status, input, created_at, updated_at)
         select job_id, account_id, api_key_id, model, 'QUEUED', 0, cost,
                webhook_url, webhook_events, webhook_status, input, $1::bigint, $1::bigint
         from req order by ord
         returning job_id, account_id, credit_cost
     ),
     debit as (
         update account a set credits = a.credits - t.total, updated_at = $1::bigint
         from (select account_id, sum(credit_cost)::bigint as total from new_job group by account_id) t
         where a.account_id = t.account_id
     ),
     charge as (
         insert into ledger_entry (account_id, kind, amount, job_id, created_at)
         select account_id, 'charge', -credit_cost, job_id, $1::bigint from new_job
     ),
     claim as (
         insert into idempotency_key (account_id, idempotency_key, fingerprint, job_id, created_at)
         select k.account_id, k.idempotency_key, k.fingerprint, k.job_id, $1::bigint
         from unnest($11::uuid[], $12::text[], $13::bytea[], $14::uuid[])
                  as k(account_id, idempotency_key, fingerprint, job_id)
         where k.job_id in (select job_id from new_job)
         on conflict (account_id, idempotency_key) do update
             set fingerprint = excluded.fingerprint, job_id = excluded.job_id, created_at = excluded.created_at
     )
     select job_id from new_job";

/// A submission waiting for its batch.
struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<SubmitOutcome>>,
}

/// The store's side of the collector: queues submissions and hands back their outcomes.
pub(crate) struct Submitter {
    queue: mpsc::Sender<Pending>,
    closed: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Submitter {
    /// Starts the collector; it stops when `closed` turns true or the store is dropped.
    pub(crate) fn start(pool: Pool, clock: Arc<Clock>, closed: watch::Receiver<bool>) -> Self {
        let (queue, queued) = mpsc::channel(MAX_QUEUED);
        let task = tokio::spawn(collect(pool, clock, queued, closed.clone()));
        Self { queue, closed, task }
    }

    /// Submits one job with the next batch and waits for its outcome.
    pub(crate) async fn submit(&self, job: NewJob) -> Result<SubmitOutcome> {
        let closed = || StoreError::Unavailable("the store is closed".into());
        if *self.closed.borrow() {
            return Err(closed());
        }
        let (reply, outcome) = oneshot::channel();
        self.queue.send(Pending { job, reply }).await.map_err(|_| closed())?;
        // A dropped reply means the collector stopped with the job unwritten or its
        // outcome unknown; either way the caller must try again later.
        outcome.await.map_err(|_| closed())?
    }
}

impl Drop for Submitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The collector: forms a batch from everything queued once a write slot is free.
async fn collect(
    pool: Pool,
    clock: Arc<Clock>,
    mut queued: mpsc::Receiver<Pending>,
    mut closed: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // Wait for a slot first: what arrives meanwhile joins the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = tokio::select! {
            next = queued.recv() => next,
            _ = closed.changed() => None,
        };
        let Some(first) = first else { return };
        let mut batch = Vec::with_capacity(queued.len() + 1);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (pool, now_ms) = (pool.clone(), clock.now_ms());
        tokio::spawn(async move {
            write_and_answer(&pool, batch, now_ms).await;
            drop(slot);
        });
    }
}

/// Writes one batch and answers its callers; splits it on a refused write.
async fn write_and_answer(pool: &Pool, batch: Vec<Pending>, now_ms: i64) {
    let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
    match write_batch(pool, &jobs, now_ms).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that gave up no longer listens; its job stands as written.
                let _ = pending.reply.send(outcome);
            }
        }
        // Nothing was written. One job broke a rule: find it by writing each alone.
        Err(StoreError::Conflict(_)) if batch.len() > 1 => {
            for pending in batch {
                let outcome = match write_batch(pool, &[&pending.job], now_ms).await {
                    Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| Err(lost(&pending.job))),
                    Err(e) => Err(e),
                };
                let _ = pending.reply.send(outcome);
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(copy_error(&e)));
            }
        }
    }
}

fn lost(job: &NewJob) -> StoreError {
    StoreError::Internal(format!("the batch holding job {} gave no outcome for it", job.id))
}

/// `StoreError` is not `Clone`; a batch's failure is every caller's.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

/// A stored idempotency key, as the decision step needs it.
struct StoredKey {
    fingerprint: Vec<u8>,
    job_id: Uuid,
    created_at: i64,
    /// The holding job's status; `None` only if the key's job is gone, which the foreign
    /// key forbids.
    status: Option<String>,
}

/// Writes `jobs` in one transaction and gives each job's outcome, in order. `Err` means
/// nothing was written.
async fn write_batch(pool: &Pool, jobs: &[&NewJob], now_ms: i64) -> Result<Vec<Result<SubmitOutcome>>> {
    let mut tx = Transaction { client: Some(pool.get().await.map_err(pool_err)?), open: false };
    let client = tx.client();
    let lock = client.prepare_cached(LOCK_ACCOUNTS).await.map_err(db_err)?;
    let read_keys = client.prepare_cached(READ_KEYS).await.map_err(db_err)?;
    let write = client.prepare_cached(WRITE).await.map_err(db_err)?;

    let mut accounts: Vec<Uuid> = jobs.iter().map(|j| j.account_id.0).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let (key_accounts, key_names): (Vec<Uuid>, Vec<&str>) =
        jobs.iter().filter_map(|j| j.idempotency.as_ref().map(|c| (j.account_id.0, c.key.as_str()))).unzip();

    // Round trip 1: begin, lock, read keys (skipped when no job has one). The driver
    // sends a request when its future is first polled, so `biased` (poll in the order
    // written) is what puts them on the wire in this order.
    tx.open = true;
    let client = tx.client();
    let lock_params: [Param<'_>; 1] = [&accounts];
    let key_params: [Param<'_>; 2] = [&key_accounts, &key_names];
    let (begun, locked, keys) = tokio::join!(
        biased;
        client.batch_execute(BEGIN),
        client.query(&lock, &lock_params),
        async {
            if key_names.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&read_keys, &key_params).await
            }
        }
    );
    let (locked, keys) = match (begun, locked, keys) {
        (Ok(()), Ok(locked), Ok(keys)) => (locked, keys),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return Err(tx.abort(db_err(e)).await),
    };

    let mut balances = HashMap::with_capacity(locked.len());
    for row in &locked {
        balances.insert(rows::get::<Uuid>(row, 0)?, rows::get::<i64>(row, 1)?);
    }
    let mut stored = HashMap::with_capacity(keys.len());
    for row in &keys {
        let key = StoredKey {
            fingerprint: rows::get(row, 2)?,
            job_id: rows::get(row, 3)?,
            created_at: rows::get(row, 4)?,
            status: rows::get(row, 5)?,
        };
        stored.insert((rows::get::<Uuid>(row, 0)?, rows::get::<String>(row, 1)?), key);
    }

    // Decide each job in arrival order.
    let mut outcomes: Vec<Option<Result<SubmitOutcome>>> = Vec::with_capacity(jobs.len());
    let mut accepted: Vec<&NewJob> = Vec::with_capacity(jobs.len());
    // Keys taken by jobs accepted earlier in this batch: later ones replay them.
    let mut taken: HashMap<(Uuid, &str), (JobId, &[u8; 32])> = HashMap::new();
    for job in jobs {
        let Some(balance) = balances.get_mut(&job.account_id.0) else {
            outcomes.push(Some(Err(StoreError::NotFound(format!("account {}", job.account_id)))));
            continue;
        };
        if let Some(claim) = &job.idempotency {
            if let Some((holder, fingerprint)) = taken.get(&(job.account_id.0, claim.key.as_str())) {
                outcomes.push(Some(Ok(if **fingerprint == claim.fingerprint {
                    SubmitOutcome::Replayed { job_id: *holder, status: JobStatus::Queued }
                } else {
                    SubmitOutcome::IdempotencyMismatch
                })));
                continue;
            }
            if let Some(key) = stored.get(&(job.account_id.0, claim.key.clone())) {
                if key.created_at >= claim.not_before_ms {
                    outcomes.push(Some(replay(key, claim.fingerprint)));
                    continue;
                }
                // Past its window: free, and this job takes it over.
            }
        }
        if *balance < job.cost {
            outcomes.push(Some(Ok(SubmitOutcome::InsufficientCredits { required: job.cost, available: *balance })));
            continue;
        }
        *balance -= job.cost;
        if let Some(claim) = &job.idempotency {
            taken.insert((job.account_id.0, claim.key.as_str()), (job.id, &claim.fingerprint));
        }
        accepted.push(job);
        // Filled in once the write has committed.
        outcomes.push(None);
    }

    if accepted.is_empty() {
        // Nothing to write; the locks go with the transaction.
        tx.finish("rollback").await?;
    } else {
        // Round trip 2: the write and the commit.
        let columns = Columns::of(&accepted);
        let params = columns.params(&now_ms);
        let client = tx.client();
        let (written, committed) = tokio::join!(biased; client.query(&write, &params), client.batch_execute("commit"));
        let written = match (written, committed) {
            (Ok(written), Ok(())) => written,
            // A failed write turns the commit into a rollback: nothing was written.
            (Err(e), _) | (_, Err(e)) => return Err(tx.abort(db_err(e)).await),
        };
        tx.open = false;
        let inserted: Result<Vec<Uuid>> = written.iter().map(|r| rows::get(r, 0)).collect();
        let inserted = inserted?;
        let mut accepted = accepted.iter();
        for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
            let job = accepted.next().expect("one accepted job per undecided outcome");
            // The write inserts every job it is given or fails as a whole.
            *outcome = Some(if inserted.contains(&job.id.0) {
                Ok(SubmitOutcome::Created { job_id: job.id, status: JobStatus::Queued })
            } else {
                Err(lost(job))
            });
        }
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every job is decided")).collect())
}

/// The outcome for a job whose key is held, within its window, by a stored job.
fn replay(key: &StoredKey, fingerprint: [u8; 32]) -> Result<SubmitOutcome> {
    if key.fingerprint != fingerprint {
        return Ok(SubmitOutcome::IdempotencyMismatch);
    }
    let status = key
        .status
        .as_deref()
        .and_then(JobStatus::parse)
        .ok_or_else(|| StoreError::Internal(format!("job {} has no readable status", key.job_id)))?;
    Ok(SubmitOutcome::Replayed { job_id: JobId(key.job_id), status })
}

/// The accepted jobs as the write statement's arrays.
struct Columns<'a> {
    job_ids: Vec<Uuid>,
    accounts: Vec<Uuid>,
    api_keys: Vec<Uuid>,
    models: Vec<&'a str>,
    costs: Vec<i64>,
    webhook_urls: Vec<Option<&'a str>>,
    webhook_events: Vec<Option<String>>,
    webhook_statuses: Vec<Option<&'static str>>,
    inputs: Vec<&'a str>,
    key_accounts: Vec<Uuid>,
    keys: Vec<&'a str>,
    fingerprints: Vec<&'a [u8]>,
    key_jobs: Vec<Uuid>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &[&'a NewJob]) -> Self {
        let keyed = || jobs.iter().filter_map(|j| j.idempotency.as_ref().map(|c| (*j, c)));
        Self {
            job_ids: jobs.iter().map(|j| j.id.0).collect(),
            accounts: jobs.iter().map(|j| j.account_id.0).collect(),
            api_keys: jobs.iter().map(|j| j.api_key_id.0).collect(),
            models: jobs.iter().map(|j| j.model.as_str()).collect(),
            costs: jobs.iter().map(|j| j.cost).collect(),
            webhook_urls: jobs.iter().map(|j| j.webhook_url.as_deref()).collect(),
            webhook_events: jobs.iter().map(|j| j.webhook_events.as_ref().map(|e| e.join(","))).collect(),
            // A job with a webhook waits for its delivery; one without has no status.
            webhook_statuses: jobs.iter().map(|j| j.webhook_url.as_ref().map(|_| "pending")).collect(),
            inputs: jobs.iter().map(|j| j.input_json.as_str()).collect(),
            key_accounts: keyed().map(|(j, _)| j.account_id.0).collect(),
            keys: keyed().map(|(_, c)| c.key.as_str()).collect(),
            fingerprints: keyed().map(|(_, c)| &c.fingerprint[..]).collect(),
            key_jobs: keyed().map(|(j, _)| j.id.0).collect(),
        }
    }

    fn params<'p>(&'p self, now_ms: &'p i64) -> [Param<'p>; 14] {
        [
            now_ms,
            &self.job_ids,
            &self.accounts,
            &self.api_keys,
            &self.models,
            &self.costs,
            &self.webhook_urls,
            &self.webhook_events,
            &self.webhook_statuses,
            &self.inputs,
            &self.key_accounts,
            &self.keys,
            &self.fingerprints,
            &self.key_jobs,
        ]
    }
}

/// A pooled connection inside a manually begun transaction (begin and commit are
/// pipelined with the statements, which `tokio_postgres::Transaction` cannot do).
///
/// If it is dropped while the transaction may still be open (an error path that could
/// not roll back, or the task cancelled mid-batch), the connection is taken out of the
/// pool and closed rather than handed to the next caller inside a transaction.
struct Transaction {
    client: Option<Object>,
    open: bool,
}

impl Transaction {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("the connection is held until drop")
    }

    /// Ends the transaction with `sql` (`commit` or `rollback`).
    async fn finish(&mut self, sql: &str) -> Result<()> {
        self.client().batch_execute(sql).await.map_err(db_err)?;
        self.open = false;
        Ok(())
    }

    /// Rolls back after `error` and returns it; a connection that cannot roll back is
    /// closed by `drop`.
    async fn abort(&mut self, error: StoreError) -> StoreError {
        // Harmless when the failed statement already ended the transaction.
        if self.finish("rollback").await.is_err() {
            tracing::debug!("could not roll back a failed submission batch; closing its connection");
        }
        error
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
    }
}
