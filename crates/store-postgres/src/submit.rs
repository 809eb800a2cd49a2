//! Submissions, batched: the front door's hot write.
//!
//! A submission debits its account, inserts the job and its `charge` ledger row, and
//! records its idempotency key, all or nothing. Written one request at a time, each job
//! costs a commit (a WAL flush), and concurrent requests on one account queue behind
//! each other's row lock for the whole commit. So this module owns one collector task per
//! store: [`Submitter::submit`] queues the job and waits; the collector takes everything
//! queued while the previous batch was being written, writes it, then answers every
//! caller. Under load a batch holds as many jobs as arrived during one write, so the
//! cost of a commit is shared by all of them; alone, a submission waits for nothing but
//! its own batch.
//!
//! A batch is written in at most two steps.
//!
//! **The common case, one statement** ([`WRITE_FITTING`]): lock the batch's accounts
//! and, for each account that can pay for all of its jobs in the batch and whose jobs
//! name no stored idempotency key, write them all: the job rows, their ledger rows and
//! keys from arrays (`unnest`), and one debit per account. One round trip, one commit.
//! For such an account every job would also have gone through one at a time: it is the
//! one case in which [`domain::submission::decide`] accepts every job without looking
//! further, so this shortcut saves a round trip without deciding anything the rule
//! could decide otherwise. The jobs of other accounts (short of credits, replays, unknown
//! accounts) are left to the second step, and so is the whole batch if the statement
//! fails on a rule (a key inserted meanwhile, an API key that does not exist).
//!
//! **The rest, decided under locks** ([`decide`]), one transaction of two round trips:
//!
//! 1. `begin`, then lock the jobs' accounts (`for no key update`, in account order so
//!    that two batches never wait for each other in a cycle) and read their balances,
//!    then read the idempotency keys the jobs name. The statements are sent together
//!    (pipelined). The key read starts after the locks are held, so under READ
//!    COMMITTED it sees every key committed before.
//! 2. Decide each job in arrival order with the rule shared by both backends,
//!    [`domain::submission::decide`]: an unknown account is `NotFound`; a key seen
//!    within its replay window is a replay (or a mismatch) of the job holding it,
//!    including a job earlier in this batch; a job the remaining balance does not cover
//!    is refused with that balance; any other job is accepted and its cost taken from
//!    the remaining balance.
//! 3. One statement ([`WRITE_DECIDED`]) writes the accepted jobs as above; `commit` is
//!    sent with it.
//!
//! Why the key read can be trusted until the commit: every writer of an account's
//! idempotency keys is a batch holding that account's row lock (the purge only deletes
//! keys past their window, which a batch treats as absent anyway). Why the balance can:
//! it was read under the same lock, and the `credits >= 0` check backs this up.
//!
//! When the second step's write fails on a rule, nothing was written; each of its jobs is
//! then decided on its own, so only the offending one is refused. Any other failure (the
//! database unreachable) is every waiting job's answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use domain::submission::{self, Decision, StoredKey};
use domain::{AccountId, JobId, JobStatus};
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
/// Starts a batch's transaction (both steps). Another node's batch holds an account's
/// lock for a few milliseconds; the lock timeout only stops a transaction left open on
/// an account (say, by hand in psql) from holding up every submission of this node for
/// longer than the pool would make a caller wait. The batch then fails as `Unavailable`.
const BEGIN: &str = "begin; set local lock_timeout = '5s'";

/// Locks the batch's accounts, in account order, and reads their balances.
const LOCK_ACCOUNTS: &str = "select account_id, credits from account
     where account_id = any($1::uuid[]) order by account_id for no key update";

/// The stored idempotency keys among the `(account, key)` pairs, each with its job's
/// status.
const READ_KEYS: &str = "select k.account_id, k.idempotency_key, k.fingerprint, k.job_id, k.created_at, j.status
     from idempotency_key k left join job j on j.job_id = k.job_id
     where (k.account_id, k.idempotency_key) in (select * from unnest($1::uuid[], $2::text[]))";

// The write statements. Both take the same parameters: $1 now, then one array per
// column with one element per job, in arrival order: $2 job id, $3 account, $4 API key,
// $5 model, $6 cost, $7 webhook URL, $8 webhook events, $9 webhook status, $10 input,
// $11 idempotency key and $12 body fingerprint (both null without a key). Both return
// the ids of the jobs inserted.
//
// They differ in who decided which jobs go in (the `fits` step) and in what an existing
// idempotency key means (the `claim` step). In both, jobs are inserted only for accounts
// whose debit went through, and each debit is the sum of that account's jobs in the
// batch, so the balance moves by exactly the charges written. Foreign keys are checked at
// the end of the statement, so a key may point at a job inserted by the same statement.
macro_rules! write_sql {
    ($fits:literal, $on_key_conflict:literal) => {
        concat!(
            "with req as (
                 select * from unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bigint[], $7::text[],
                                      $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[])
                     with ordinality as r(job_id, account_id, api_key_id, model, cost, webhook_url, webhook_events,
                                          webhook_status, input, idempotency_key, fingerprint, ord)
             ),
             ",
            $fits,
            ",
             debit as (
                 update account a set credits = a.credits - f.total, updated_at = $1::bigint
                 from fits f
                 where a.account_id = f.account_id and a.credits >= f.total
                 returning a.account_id
             ),
             new_job as (
                 insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost,
                                  webhook_url, webhook_events, webhook_status, input, created_at, updated_at)
                 select r.job_id, r.account_id, r.api_key_id, r.model, 'QUEUED', 0, r.cost,
                        r.webhook_url, r.webhook_events, r.webhook_status, r.input, $1::bigint, $1::bigint
                 from req r join debit d on d.account_id = r.account_id
                 order by r.ord
                 returning job_id, account_id, credit_cost
             ),
             charge as (
                 insert into ledger_entry (account_id, kind, amount, job_id, created_at)
                 select account_id, 'charge', -credit_cost, job_id, $1::bigint from new_job
             ),
             claim as (
                 insert into idempotency_key (account_id, idempotency_key, fingerprint, job_id, created_at)
                 select account_id, idempotency_key, fingerprint, job_id, $1::bigint from req
                 where idempotency_key is not null and job_id in (select job_id from new_job) ",
            $on_key_conflict,
            "
             )
             select job_id from new_job"
        )
    };
}

/// The first attempt at a batch, one statement in its own transaction (begun and
/// committed in the same round trip): it locks the batch's accounts, in account order, and writes every job
/// of each account that can pay for all of its jobs in the batch and names no stored
/// idempotency key. The jobs of the other accounts are left to [`decide`].
///
/// The lock returns each balance as last committed, whatever the statement's snapshot
/// saw. The key check reads the snapshot, so a key committed since (or being inserted by
/// another transaction) is not seen by it, but the plain insert of `claim` then fails
/// on the unique key and the whole statement with it: a conflict, after which every job
/// of the batch goes to [`decide`]. The same happens when the batch itself names a key
/// twice.
const WRITE_FITTING: &str = write_sql!(
    "locked as materialized (
         select account_id, credits from account
         where account_id in (select account_id from req)
         order by account_id for no key update
     ),
     fits as (
         select l.account_id, sum(r.cost)::bigint as total
         from locked l join req r on r.account_id = l.account_id
         group by l.account_id, l.credits
         having sum(r.cost) <= l.credits
            and not exists (select 1 from req q
                            join idempotency_key k on k.account_id = q.account_id
                                                  and k.idempotency_key = q.idempotency_key
                            where q.account_id = l.account_id)
     )",
    ""
);

/// The write of [`decide`], inside its transaction, which holds the accounts' locks and
/// has accepted exactly these jobs. A key already stored is overwritten: the decision
/// found it absent or past its window under the account's lock (see the module comment).
const WRITE_DECIDED: &str = write_sql!(
    "fits as (select account_id, sum(cost)::bigint as total from req group by account_id)",
    "on conflict (account_id, idempotency_key) do update
         set fingerprint = excluded.fingerprint, job_id = excluded.job_id, created_at = excluded.created_at"
);

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

/// Writes one batch and answers its callers: first every job [`WRITE_FITTING`] can
/// write, then the rest through [`decide`].
async fn write_and_answer(pool: &Pool, batch: Vec<Pending>, now_ms: i64) {
    let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
    let inserted = match write_fitting(pool, &jobs, now_ms).await {
        Ok(inserted) => inserted,
        // A key or an API key broke a rule and nothing was written: every job is decided
        // under the locks.
        Err(StoreError::Conflict(_)) => HashSet::new(),
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut rest = Vec::with_capacity(batch.len() - inserted.len());
    for pending in batch {
        if inserted.contains(&pending.job.id.0) {
            let outcome = SubmitOutcome::Created { job_id: pending.job.id, status: JobStatus::Queued };
            // A caller that gave up no longer listens; its job stands as written.
            let _ = pending.reply.send(Ok(outcome));
        } else {
            rest.push(pending);
        }
    }
    if !rest.is_empty() {
        decide_and_answer(pool, rest, now_ms).await;
    }
}

/// Runs [`WRITE_FITTING`]; the ids of the jobs it wrote.
///
/// In a transaction of its own, begun and committed in the same round trip as the
/// statement, so that [`BEGIN`]'s lock timeout bounds its wait for the accounts' locks
/// too: without it, an account row held by a transaction left open elsewhere would hold
/// this node's every submission for as long.
async fn write_fitting(pool: &Pool, jobs: &[&NewJob], now_ms: i64) -> Result<HashSet<Uuid>> {
    let mut tx = Transaction { client: Some(pool.get().await.map_err(pool_err)?), open: false };
    let write = tx.client().prepare_cached(WRITE_FITTING).await.map_err(db_err)?;
    let columns = Columns::of(jobs);
    let params = columns.params(&now_ms);
    tx.open = true;
    let client = tx.client();
    // `biased` polls in the order written, which is the order the requests go out.
    let (begun, written, committed) = tokio::join!(
        biased;
        client.batch_execute(BEGIN),
        client.query(&write, &params),
        client.batch_execute("commit")
    );
    let written = match (begun, written, committed) {
        (Ok(()), Ok(written), Ok(())) => written,
        // A failed statement turns the commit into a rollback: nothing was written.
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return Err(tx.abort(db_err(e)).await),
    };
    tx.open = false;
    written.iter().map(|r| rows::get::<Uuid>(r, 0)).collect()
}

/// Decides and writes jobs under their accounts' locks ([`decide`]) and answers their
/// callers; on a refused write, one job at a time.
async fn decide_and_answer(pool: &Pool, batch: Vec<Pending>, now_ms: i64) {
    let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
    match decide(pool, &jobs, now_ms).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
        // Nothing was written. One job broke a rule: find it by writing each alone.
        Err(StoreError::Conflict(_)) if batch.len() > 1 => {
            for pending in batch {
                let outcome = match decide(pool, &[&pending.job], now_ms).await {
                    Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| Err(lost(&pending.job))),
                    Err(e) => Err(e),
                };
                let _ = pending.reply.send(outcome);
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

fn lost(job: &NewJob) -> StoreError {
    StoreError::Internal(format!("the batch holding job {} gave no outcome for it", job.id))
}

/// Decides `jobs` under their accounts' locks and writes the accepted ones, in one
/// transaction of two round trips (see the module comment); each job's outcome, in
/// order. `Err` means nothing was written.
async fn decide(pool: &Pool, jobs: &[&NewJob], now_ms: i64) -> Result<Vec<Result<SubmitOutcome>>> {
    let mut tx = Transaction { client: Some(pool.get().await.map_err(pool_err)?), open: false };
    let client = tx.client();
    let lock = client.prepare_cached(LOCK_ACCOUNTS).await.map_err(db_err)?;
    let read_keys = client.prepare_cached(READ_KEYS).await.map_err(db_err)?;
    let write = client.prepare_cached(WRITE_DECIDED).await.map_err(db_err)?;

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
        balances.insert(AccountId(rows::get::<Uuid>(row, 0)?), rows::get::<i64>(row, 1)?);
    }
    let mut stored = HashMap::with_capacity(keys.len());
    for row in &keys {
        let job_id: Uuid = rows::get(row, 3)?;
        let status: Option<String> = rows::get(row, 5)?;
        let key = StoredKey {
            job_id: JobId(job_id),
            fingerprint: rows::get(row, 2)?,
            created_at_ms: rows::get(row, 4)?,
            // The foreign key keeps the key's job; a missing or unknown status is a bug.
            status: status
                .as_deref()
                .and_then(JobStatus::parse)
                .ok_or_else(|| StoreError::Internal(format!("job {job_id} has no readable status")))?,
        };
        stored.insert((AccountId(rows::get::<Uuid>(row, 0)?), rows::get::<String>(row, 1)?), key);
    }

    // The rule, in arrival order (see `domain::submission`).
    let batch: Vec<submission::Submission<'_>> = jobs.iter().map(|j| j.submission()).collect();
    let decisions = submission::decide(&batch, &balances, &stored);
    let accepted: Vec<&NewJob> =
        jobs.iter().zip(&decisions).filter(|(_, d)| **d == Decision::Accept).map(|(j, _)| *j).collect();
    // Accepted jobs are answered once the write has committed.
    let mut outcomes: Vec<Option<Result<SubmitOutcome>>> = jobs
        .iter()
        .zip(&decisions)
        .map(|(job, d)| (*d != Decision::Accept).then(|| SubmitOutcome::decided(*d, job)))
        .collect();

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

/// Jobs as the write statements' arrays.
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
    keys: Vec<Option<&'a str>>,
    fingerprints: Vec<Option<&'a [u8]>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &[&'a NewJob]) -> Self {
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
            keys: jobs.iter().map(|j| j.idempotency.as_ref().map(|c| c.key.as_str())).collect(),
            fingerprints: jobs.iter().map(|j| j.idempotency.as_ref().map(|c| &c.fingerprint[..])).collect(),
        }
    }

    fn params<'p>(&'p self, now_ms: &'p i64) -> [Param<'p>; 12] {
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
            &self.keys,
            &self.fingerprints,
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
