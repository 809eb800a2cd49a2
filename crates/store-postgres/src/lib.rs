//! The PostgreSQL backend: [`PgStore`], a [`store::Store`] that several reelgate
//! processes ("nodes") share.
//!
//! It keeps the SQLite backend's semantics, method by method, but it cannot rely on being
//! the only writer, so:
//! - nothing is cached: every read asks the database, because another node may have
//!   changed the row a moment ago;
//! - every check and the write it guards are one statement or one transaction, with row
//!   locks (`for update`, `skip locked` where waiting is pointless) or advisory locks
//!   where a rule spans many rows (a claim's caps, an upstream's call budget);
//! - connections come from a pool ([`deadpool_postgres`]) and each keeps its own cache of
//!   prepared statements, so a hot statement is parsed and planned once per connection.
//!
//! Connections are plain TCP without TLS: reelgate expects its database on loopback or a
//! trusted private network. Times are unix milliseconds from this process's clock, as on
//! SQLite; nodes are assumed to be NTP-synchronised.
//!
//! Modules: [`accounts`] (keys, accounts, ledger), [`admin`] (the operator's writes with
//! their audit rows, and the console's reads), [`submit`] (submissions, written in
//! batches by one collector task), [`jobs`] (cancellation and the job reads), [`engine`] (claims, budgets, transitions, schedule), [`webhooks`]
//! (the outbox), [`wakeups`] (LISTEN/NOTIFY), [`session_lock`] (locks a process holds while it
//! runs), [`migrate`] and [`rows`] (decoding).

#![forbid(unsafe_code)]

mod accounts;
mod admin;
mod engine;
mod jobs;
mod migrate;
mod rows;
mod session_lock;
mod submit;
mod uploads;
mod wakeups;
mod webhooks;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, KeyDigest};
use store::{
    Account, AccountQuery, AdminJobQuery, AdminToken, AdminWrite, AdminWritten, ApiKeyRecord, AuditContext,
    AuditRecord, CallReservation, CancelOutcome, ClaimRequest, ClaimedJob, EngineJob, JobQuery, JobRecord, LedgerEntry,
    NewApiKey, NewJob, Overview, QueueDepth, Result, StageChange, StoreError, SubmitOutcome, Transition,
    UpstreamActivity, UpstreamHold, UsageQuery, UsageRow, WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

pub use session_lock::SessionLock;
use submit::Submitter;
use wakeups::{Announcer, Work};
pub use wakeups::{Wakeups, WAKEUP_CHANNEL};

/// Connections a store keeps open at most. Several nodes share one server, whose
/// `max_connections` defaults to 100, so each node stays modest. Public so that `reelgate
/// bench` can give its database baseline as many connections.
pub const POOL_SIZE: usize = 16;
/// How long a caller waits for a free pooled connection, and for a new connection to be
/// made, before the store answers `Unavailable`.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// Kept to open the dedicated LISTEN connections of [`PgStore::subscribe_wakeups`].
    config: tokio_postgres::Config,
    clock: Arc<Clock>,
    /// Set to `true` by `close`; wake-up listeners and the announcer stop when they see it.
    closed: watch::Sender<bool>,
    /// Tells other nodes about new work, see [`wakeups`].
    announcer: Announcer,
    /// The connection `ping` uses, outside the pool; `None` until the first ping and
    /// after a failed one (the next ping reconnects).
    probe: Mutex<Option<tokio_postgres::Client>>,
    /// Writes submissions in batches, see [`submit`].
    submitter: Submitter,
    /// Names this store in its job-change announcements, so its own listener skips them.
    node: uuid::Uuid,
    /// Job changes, this store's and (once [`PgStore::subscribe_wakeups`] listens) other
    /// nodes' (see [`store::Store::job_changes`]).
    changes: tokio::sync::broadcast::Sender<store::JobChange>,
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a key=value string) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<PgStore> {
        let config = parse_url(url)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            // `Fast` only checks that the socket is open; a dead connection surfaces on
            // its next query as Unavailable and the pool replaces it.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let closed = watch::channel(false).0;
        let node = uuid::Uuid::new_v4();
        let changes = tokio::sync::broadcast::channel(store::JOB_CHANGES_CAPACITY).0;
        let announcer = Announcer::start(pool.clone(), closed.subscribe(), node, changes.clone());
        let clock = Arc::new(Clock::default());
        let submitter = Submitter::start(pool.clone(), clock.clone(), closed.subscribe());
        let store =
            PgStore { pool, config, clock, closed, announcer, probe: Mutex::new(None), submitter, node, changes };
        let mut client = store.client().await?;
        migrate::apply(&mut client, store.clock.now_ms()).await?;
        Ok(store)
    }

    /// Applies pending migrations to the database at `url` without starting a store;
    /// returns the names applied now, in order.
    pub async fn migrate(url: &str) -> Result<Vec<String>> {
        let config = parse_url(url)?;
        let (mut client, connection) = config.connect(NoTls).await.map_err(db_err)?;
        let driver = tokio::spawn(connection);
        let applied = migrate::apply(&mut client, wall_clock_ms()).await;
        drop(client);
        // The connection future ends once the client is gone.
        let _ = driver.await;
        applied
    }

    /// Starts listening for work other nodes (and this one) announce, see [`Wakeups`].
    ///
    /// Opens one dedicated connection, outside the pool, that stays in `LISTEN` until the
    /// returned handle is dropped or the store is closed (or dropped). Optional: a node
    /// that never subscribes still announces its own work to the others. Other nodes' job
    /// changes reach [`store::Store::job_changes`] only while a subscription listens.
    pub fn subscribe_wakeups(&self) -> Wakeups {
        Wakeups::start(self.config.clone(), self.closed.subscribe(), self.node, self.changes.clone())
    }

    /// Sum of an account's ledger: what its balance must equal.
    pub async fn ledger_sum(&self, id: AccountId) -> Result<i64> {
        accounts::ledger_sum(&self.client().await?, id).await
    }

    /// A pooled connection, or `Unavailable`.
    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    // The error names the problem, never the URL: it may carry a password.
    url.parse().map_err(|e| StoreError::Internal(format!("invalid PostgreSQL URL: {e}")))
}

/// Unix milliseconds from this process's clock, never going backwards within the process
/// so rows written later sort later even if the wall clock steps back (as on SQLite).
#[derive(Default)]
struct Clock {
    last: AtomicI64,
}

impl Clock {
    fn now_ms(&self) -> i64 {
        let wall = wall_clock_ms();
        self.last.fetch_max(wall, Ordering::Relaxed).max(wall)
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Maps driver errors onto what a caller can act on: a broken rule is a `Conflict`, a
/// database that cannot answer now is `Unavailable`, anything else `Internal`.
pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let class = &code.code()[..2];
        return match class {
            // Integrity constraint violations: unique, foreign key, check, not null, and
            // the ledger's append-only trigger.
            "23" => StoreError::Conflict(describe(&e)),
            // Connection exceptions, insufficient resources, operator intervention
            // (shutdown, cancelled statement), and serialization failures or deadlocks,
            // which a retry resolves.
            "08" | "53" | "57" | "40" => StoreError::Unavailable(describe(&e)),
            _ if *code == SqlState::LOCK_NOT_AVAILABLE => StoreError::Unavailable(describe(&e)),
            _ => StoreError::Internal(describe(&e)),
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Internal(describe(&e))
    }
}

/// The driver's error with what the server or the socket said: `tokio_postgres::Error`
/// displays only "db error" for every server error, which made failures under load (too
/// many connections, a deadlock) impossible to tell apart in the logs.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// A failed attempt to connect: always "try later", like the pool's.
fn connect_err(e: tokio_postgres::Error) -> StoreError {
    match db_err(e) {
        StoreError::Internal(m) => StoreError::Unavailable(m),
        other => other,
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        // Failing to connect at all is always "try later".
        PoolError::Backend(e) => connect_err(e),
        PoolError::Closed => StoreError::Unavailable("the store is closed".into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Shorthand for `params` slices.
pub(crate) type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

#[async_trait]
impl store::Store for PgStore {
    async fn create_api_key(&self, new: NewApiKey) -> Result<(Account, ApiKeyRecord)> {
        accounts::create_api_key(&mut self.client().await?, new, self.clock.now_ms()).await
    }

    async fn list_api_keys(&self, account_id: Option<AccountId>) -> Result<Vec<ApiKeyRecord>> {
        accounts::list_api_keys(&self.client().await?, account_id).await
    }

    async fn set_api_key_status(&self, id: ApiKeyId, status: ApiKeyStatus) -> Result<ApiKeyRecord> {
        accounts::set_api_key_status(&self.client().await?, id, status, self.clock.now_ms()).await
    }

    async fn find_api_key(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>> {
        accounts::find_api_key(&self.client().await?, digest).await
    }

    async fn get_account(&self, id: AccountId) -> Result<Option<Account>> {
        accounts::get_account(&self.client().await?, id).await
    }

    async fn grant_credits(&self, id: AccountId, amount: i64, note: Option<String>) -> Result<Account> {
        if amount <= 0 {
            return Err(StoreError::Conflict("a grant must be a positive number of credits".into()));
        }
        accounts::grant_credits(&self.client().await?, id, amount, note.as_deref(), self.clock.now_ms()).await
    }

    async fn ledger(&self, id: AccountId) -> Result<Vec<LedgerEntry>> {
        accounts::ledger(&self.client().await?, id).await
    }

    async fn ledger_page(&self, id: AccountId, before_id: Option<i64>, limit: u32) -> Result<Vec<LedgerEntry>> {
        admin::ledger_page(&self.client().await?, id, before_id, limit).await
    }

    async fn admin_write(&self, write: AdminWrite, audit: AuditContext) -> Result<AdminWritten> {
        let written = admin::write(&mut self.client().await?, write, &audit, self.clock.now_ms()).await?;
        // After the commit, as every announcement (see `wakeups`): a cancel as cancel_job
        // announces it, replayed events as replay_webhooks does.
        match &written {
            AdminWritten::Cancel(CancelOutcome::Cancelled(job)) => self.announcer.job_changed([change_of(job)]),
            AdminWritten::Replayed(events) if *events > 0 => self.announcer.announce(Work::Webhooks),
            _ => {}
        }
        Ok(written)
    }

    async fn find_admin_token(&self, digest: &KeyDigest) -> Result<Option<AdminToken>> {
        admin::find_admin_token(&self.client().await?, digest).await
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        admin::list_admin_tokens(&self.client().await?).await
    }

    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        admin::audit_log(&self.client().await?, before_id, limit).await
    }

    async fn list_accounts(&self, query: &AccountQuery) -> Result<Vec<Account>> {
        admin::list_accounts(&self.client().await?, query).await
    }

    async fn admin_jobs(&self, query: &AdminJobQuery) -> Result<Vec<JobRecord>> {
        admin::admin_jobs(&self.client().await?, query).await
    }

    async fn job_timeline(&self, id: JobId) -> Result<Vec<StageChange>> {
        admin::job_timeline(&self.client().await?, id).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        admin::usage(&self.client().await?, query).await
    }

    async fn upstream_activity(&self, now_ms: i64, window_ms: i64) -> Result<Vec<UpstreamActivity>> {
        admin::upstream_activity(&self.client().await?, now_ms, window_ms).await
    }

    async fn upstream_holds(&self, now_ms: i64) -> Result<Vec<UpstreamHold>> {
        admin::upstream_holds(&self.client().await?, now_ms).await
    }

    async fn overview(&self, now_ms: i64) -> Result<Overview> {
        admin::overview(&self.client().await?, now_ms).await
    }

    async fn submit_job(&self, job: NewJob) -> Result<SubmitOutcome> {
        let change = store::JobChange { account_id: job.account_id, job_id: job.id };
        let outcome = self.submitter.submit(job).await?;
        if matches!(outcome, SubmitOutcome::Created { .. }) {
            // After the commit, as every announcement (see `wakeups`).
            self.announcer.announce(Work::Jobs);
            self.announcer.job_changed([change]);
        }
        Ok(outcome)
    }

    async fn cancel_job(&self, account_id: AccountId, id: JobId) -> Result<CancelOutcome> {
        let outcome = jobs::cancel_job(&mut self.client().await?, account_id, id, self.clock.now_ms()).await?;
        if let CancelOutcome::Cancelled(_) = &outcome {
            self.announcer.job_changed([store::JobChange { account_id, job_id: id }]);
        }
        Ok(outcome)
    }

    async fn get_job(&self, account_id: AccountId, id: JobId) -> Result<Option<Arc<JobRecord>>> {
        Ok(jobs::get_job(&self.client().await?, account_id, id).await?.map(Arc::new))
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>> {
        jobs::list_jobs(&self.client().await?, query).await
    }

    async fn job_models(&self, account_id: AccountId, api_key_id: Option<ApiKeyId>) -> Result<Vec<String>> {
        jobs::job_models(&self.client().await?, account_id, api_key_id).await
    }

    async fn jobs_changed_since(
        &self,
        account_id: AccountId,
        api_key_id: Option<ApiKeyId>,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        jobs::jobs_changed_since(&self.client().await?, account_id, api_key_id, since_ms, limit).await
    }

    fn job_changes(&self) -> tokio::sync::broadcast::Receiver<store::JobChange> {
        self.changes.subscribe()
    }

    async fn claim_jobs(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let claimed = engine::claim_jobs(&mut self.client().await?, &request, self.clock.now_ms()).await?;
        self.announcer.job_changed(claimed.iter().map(|c| change_of(&c.job.record)));
        Ok(claimed)
    }

    async fn reserve_upstream_call(
        &self,
        upstream: &str,
        job_id: JobId,
        create_rpm: u32,
        window_ms: i64,
    ) -> Result<CallReservation> {
        let mut client = self.client().await?;
        engine::reserve_upstream_call(&mut client, upstream, job_id, create_rpm, window_ms, &self.clock).await
    }

    async fn transition(&self, transition: Transition) -> Result<Option<EngineJob>> {
        let moved =
            engine::transition(&mut self.client().await?, &transition, self.clock.now_ms(), &self.announcer).await?;
        if let Some(job) = &moved {
            self.announcer.job_changed([change_of(&job.record)]);
        }
        Ok(moved)
    }

    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<EngineJob>> {
        engine::due_jobs(&self.client().await?, now_ms, limit).await
    }

    async fn next_due_at(&self) -> Result<Option<i64>> {
        engine::next_due_at(&self.client().await?).await
    }

    async fn engine_job(&self, id: JobId) -> Result<Option<EngineJob>> {
        engine::engine_job(&self.client().await?, id).await
    }

    async fn queue_depth(&self) -> Result<QueueDepth> {
        engine::queue_depth(&self.client().await?).await
    }

    async fn results_to_expire(&self, before_ms: i64, limit: usize) -> Result<Vec<JobId>> {
        engine::results_to_expire(&self.client().await?, before_ms, limit).await
    }

    async fn mark_expired(&self, id: JobId) -> Result<()> {
        if let Some(account_id) = engine::mark_expired(&self.client().await?, id, self.clock.now_ms()).await? {
            self.announcer.job_changed([store::JobChange { account_id, job_id: id }]);
        }
        Ok(())
    }

    async fn claim_webhooks(&self, limit: usize, lease_ms: i64) -> Result<Vec<WebhookDelivery>> {
        webhooks::claim(&self.client().await?, limit, lease_ms, self.clock.now_ms()).await
    }

    async fn defer_webhooks(&self, event_ids: Vec<String>, until_ms: i64) -> Result<()> {
        webhooks::defer(&self.client().await?, &event_ids, until_ms, self.clock.now_ms()).await
    }

    async fn record_webhook_attempt(&self, attempt: WebhookAttempt) -> Result<()> {
        if let Some(change) = webhooks::record_attempt(&self.client().await?, &attempt, self.clock.now_ms()).await? {
            self.announcer.job_changed([change]);
        }
        Ok(())
    }

    async fn webhook_events(&self, job_id: JobId) -> Result<Vec<WebhookEventRecord>> {
        webhooks::events(&self.client().await?, job_id).await
    }

    async fn replay_webhooks(&self, job_id: JobId) -> Result<usize> {
        webhooks::replay(&self.client().await?, job_id, self.clock.now_ms(), &self.announcer).await
    }

    async fn purge_idempotency_keys(&self, before_ms: i64) -> Result<u64> {
        jobs::purge_idempotency_keys(&self.client().await?, before_ms).await
    }

    async fn create_upload(&self, upload: store::UploadRecord) -> Result<store::UploadOutcome> {
        uploads::create(&self.client().await?, &upload).await
    }

    async fn get_upload(&self, id: domain::UploadId) -> Result<Option<store::UploadRecord>> {
        uploads::get(&self.client().await?, id).await
    }

    async fn uploads_to_reap(&self, before_ms: i64, limit: usize) -> Result<Vec<domain::UploadId>> {
        uploads::to_reap(&self.client().await?, before_ms, limit).await
    }

    async fn delete_upload(&self, id: domain::UploadId) -> Result<()> {
        uploads::delete(&self.client().await?, id).await
    }

    async fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> Result<Vec<u8>> {
        let client = self.client().await?;
        let inserted = client
            .query_opt(
                "insert into server_secret (name, secret, created_at) values ($1, $2, $3)
                 on conflict (name) do nothing returning secret",
                &[&name, &candidate, &self.clock.now_ms()],
            )
            .await
            .map_err(db_err)?;
        if let Some(row) = inserted {
            return Ok(row.get(0));
        }
        // Another node stored it first. A statement of its own, so its snapshot sees that
        // node's commit even when the insert above waited for it.
        let row =
            client.query_one("select secret from server_secret where name = $1", &[&name]).await.map_err(db_err)?;
        Ok(row.get(0))
    }

    async fn ping(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        // The ping asks whether the database answers, so it does not queue for a pooled
        // connection: with every one of them busy (a burst of submissions and refunds all
        // updating one account row), a pooled ping waited past the readiness monitor's
        // timeout and the node refused every new job and stopped its engine for a second
        // at a time, although the database was fine. The connection is taken out while
        // in use and put back only after a good answer, so one that failed or hung (its
        // future dropped by the timeout) is never reused.
        let cached = self.probe.lock().unwrap_or_else(PoisonError::into_inner).take();
        let probe = async {
            let client = match cached.filter(|c| !c.is_closed()) {
                Some(client) => client,
                None => {
                    let (client, connection) = self.config.connect(NoTls).await.map_err(connect_err)?;
                    // Ends when the client is dropped.
                    tokio::spawn(connection);
                    client
                }
            };
            client.simple_query("select 1").await.map_err(db_err)?;
            Ok(client)
        };
        match tokio::time::timeout(POOL_TIMEOUT, probe).await {
            Ok(Ok(client)) => {
                // `close` may have run meanwhile: then drop the connection instead.
                if !*self.closed.borrow() {
                    *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {POOL_TIMEOUT:?}"))),
        }
    }

    async fn close(&self) {
        // Every write is acknowledged only after its commit. Submissions still queued for
        // the collector are answered `Unavailable` (it stops, dropping their replies); a
        // batch being written finishes or fails as the pool closes under it. Closing the
        // pool refuses new work, and connections close as they come back.
        self.closed.send_replace(true);
        self.pool.close();
        self.probe.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Transaction-scoped advisory locks: the cluster-wide mutexes of this backend.
///
/// A lock is named by a namespace (what it guards) and a name within it, hashed
/// together with the current schema, so stores in different schemas of one database do
/// not contend. Each is released when its transaction ends, commit or rollback, so a
/// crashed node never leaves one behind. A hash collision only makes two unrelated
/// things take turns.
mod locks {
    use deadpool_postgres::GenericClient;
    use store::Result;

    use crate::db_err;

    /// Applying migrations.
    pub(crate) const MIGRATIONS: i32 = 0x7267_0001;
    /// Claiming queued jobs (see `engine`).
    pub(crate) const CLAIMS: i32 = 0x7267_0002;
    /// Reserving create calls on one upstream account; the name is the upstream's.
    pub(crate) const UPSTREAM_CALLS: i32 = 0x7267_0003;
    /// Held by a process for its lifetime (see `session_lock`); the name says what for.
    pub(crate) const SESSION: i32 = 0x7267_0004;

    /// Waits for the lock `$1` (namespace), `$2` (name).
    pub(crate) const TAKE_SQL: &str =
        "select pg_advisory_xact_lock($1::integer, hashtext(current_schema() || '/' || $2::text))";

    /// Takes a lock for the rest of the transaction `tx`, waiting while another holds it.
    pub(crate) async fn take(tx: &impl GenericClient, namespace: i32, name: &str) -> Result<()> {
        let stmt = tx.prepare_cached(TAKE_SQL).await.map_err(db_err)?;
        tx.execute(&stmt, &[&namespace, &name]).await.map_err(db_err)?;
        Ok(())
    }
}

/// The change announcement for a job just written.
fn change_of(job: &JobRecord) -> store::JobChange {
    store::JobChange { account_id: job.account_id, job_id: job.id }
}
