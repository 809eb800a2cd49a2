//! The embedded SQLite backend: one group-committing writer thread ([`writer`]) and a
//! small pool of read connections. A data directory holds the database (`reelgate.db`,
//! with SQLite's own `-wal` and `-shm` files) and nothing else of ours but a lock file,
//! so SQLite's own backup tools copy everything acknowledged.
//!
//! Reads run inline on the calling task. They are indexed point reads or short keyset
//! scans that take microseconds in WAL mode (readers never wait for the writer), so
//! handing them to a blocking thread pool would cost more than the read itself. Writes,
//! submissions included, go through the writer thread, which acknowledges only after a
//! durable commit (`synchronous = FULL`): whatever a caller has been answered is in
//! SQLite, and every read sees it.
//!
//! The rules (the submission decision, the claim plan) live in `domain`; this crate
//! gathers their inputs inside the writer's transaction and writes their outcomes
//! ([`submit`], [`engine`]).

#![forbid(unsafe_code)]

mod admin;
mod cache;
mod checkpoint;
mod db;
mod engine;
mod migrate;
mod rows;
mod submit;
mod uploads;
mod webhooks;
mod writer;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, JobStatus, KeyDigest, Stage};
use rusqlite::{params, Connection, OptionalExtension};
use store::{
    Account, ApiKeyRecord, CallReservation, CancelOutcome, ClaimRequest, ClaimedJob, EngineJob, JobQuery, JobRecord,
    LedgerEntry, LedgerKind, NewApiKey, NewJob, QueueDepth, Result, StoreError, SubmitOutcome, Transition,
    WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};

use crate::cache::JobCache;
use crate::db::{insert_ledger, insert_stage_change, map_err, open_connection};
use crate::rows::{
    account_columns, account_from_row, job_columns, job_from_row, key_columns, key_from_row, key_source, ledger_columns,
};
use crate::writer::{WriteCtx, Writer};

/// Idle read connections kept open; more are opened on demand under load.
const MAX_IDLE_READERS: usize = 8;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    /// The serving process's WAL checkpoints, off the writer thread.
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
    readers: Mutex<Vec<Connection>>,
    jobs: JobCache,
    /// Announces every committed job change (see [`store::Store::job_changes`]): the
    /// changes this process commits, which for a server are all but the admin CLI's
    /// submissions.
    changes: tokio::sync::broadcast::Sender<store::JobChange>,
    /// Set by `close`: reads refuse too, as the trait promises, instead of opening a
    /// fresh connection or answering from the cache.
    closed: AtomicBool,
    /// The serving process's lock on the data directory, held while the store lives.
    _serving: Option<File>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// For tools beside a running server (the admin CLI, tests). Every write, submissions
    /// included, is decided inside a transaction holding SQLite's write lock, so a second
    /// process writing beside the server cannot spend a credit twice.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, None)
    }

    /// [`open`](Self::open) for the process that serves the API: takes the data
    /// directory's lock file (`<database>.lock`), failing if another server holds it,
    /// and checkpoints the WAL on a thread of its own.
    ///
    /// One server per data directory: the job cache and the job change announcements
    /// assume this process makes every change to existing jobs.
    pub fn open_serving(path: &Path) -> Result<Self> {
        let lock_path = lock_path_for(path);
        let cannot = |e: std::io::Error| StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()));
        let lock =
            File::options().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(cannot)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Unavailable(format!(
                    "another process is serving {} (it holds {})",
                    path.display(),
                    lock_path.display()
                )))
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        Self::open_with(path, Some(lock))
    }

    fn open_with(path: &Path, serving: Option<File>) -> Result<Self> {
        let mut conn = open_connection(path, false)?;
        migrate::apply(&mut conn)?;
        // The serving process checkpoints on a thread of its own; others (short-lived
        // admin commands) leave it to SQLite.
        let checkpointer = match &serving {
            Some(_) => {
                conn.pragma_update(None, "wal_autocheckpoint", checkpoint::WRITER_AUTOCHECKPOINT_PAGES)
                    .map_err(map_err)?;
                Some(checkpoint::Checkpointer::start(path)?)
            }
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            writer: Writer::start(conn, submit::decide_in_tx),
            checkpointer: Mutex::new(checkpointer),
            readers: Mutex::new(Vec::new()),
            jobs: JobCache::new(),
            changes: tokio::sync::broadcast::channel(store::JOB_CHANGES_CAPACITY).0,
            closed: AtomicBool::new(false),
            _serving: serving,
        })
    }

    /// A job's new version is durable: it replaces the cached one and is announced.
    fn committed(&self, job: Arc<JobRecord>, version: u64) {
        let change = store::JobChange { account_id: job.account_id, job_id: job.id };
        self.jobs.put(job, version);
        // No receiver is not an error: nobody is streaming events.
        let _ = self.changes.send(change);
    }

    /// Applies pending migrations to the database at `path` without starting a store.
    pub fn migrate(path: &Path) -> Result<Vec<String>> {
        let mut conn = open_connection(path, false)?;
        migrate::apply(&mut conn)
    }

    /// Runs `f` on a pooled read connection.
    async fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.read_now(f)
    }

    /// Runs `f` on a pooled read connection, without an await point (for `ping`).
    fn read_now<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.ensure_open()?;
        let pooled = self.readers.lock().map_err(|_| poisoned())?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let out = f(&conn).map_err(map_err);
        let mut pool = self.readers.lock().map_err(|_| poisoned())?;
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(())
    }

    /// Sum of an account's ledger: what its balance must equal.
    pub async fn ledger_sum(&self, id: AccountId) -> Result<i64> {
        self.read(|c| {
            c.prepare_cached("select coalesce(sum(amount), 0) from ledger_entry where account_id = ?1")?
                .query_row([id.to_string()], |r| r.get(0))
        })
        .await
    }
}

/// The serving process's lock file beside the database at `db_path`.
fn lock_path_for(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn poisoned() -> StoreError {
    StoreError::Internal("read pool lock poisoned".into())
}

fn load_account(conn: &Connection, id: AccountId) -> rusqlite::Result<Option<Account>> {
    conn.prepare_cached(concat!("select ", account_columns!(), " from account where account_id = ?1"))?
        .query_row([id.to_string()], account_from_row)
        .optional()
}

fn load_key(conn: &Connection, id: ApiKeyId) -> rusqlite::Result<Option<ApiKeyRecord>> {
    conn.prepare_cached(concat!("select ", key_columns!(), " from ", key_source!(), " where k.api_key_id = ?1"))?
        .query_row([id.to_string()], key_from_row)
        .optional()
}

/// Creates a key, and its account when `new.account_id` is `None`, inside the writer's
/// transaction (for `create_api_key` and the admin interface alike).
fn create_key_in_tx(ctx: &WriteCtx<'_>, new: &NewApiKey) -> Result<(Account, ApiKeyRecord)> {
    let conn = ctx.conn;
    let account_id = match new.account_id {
        Some(id) => {
            load_account(conn, id).map_err(map_err)?.ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
            id
        }
        None => {
            let id = AccountId::new();
            conn.prepare_cached(
                "insert into account (account_id, name, credits, plan, max_concurrent_jobs, created_at, updated_at)
                 values (?1, ?2, 0, ?3, ?4, ?5, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![id.to_string(), new.name, new.plan, new.max_concurrent_jobs, ctx.now_ms])
            })
            .map_err(map_err)?;
            id
        }
    };
    if new.initial_credits > 0 {
        grant_in_tx(ctx, account_id, new.initial_credits, Some("initial credits"))?;
    }
    let key_id = ApiKeyId::new();
    conn.prepare_cached(
        "insert into api_key (api_key_id, account_id, name, email, prefix, key_digest, status, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            key_id.to_string(),
            account_id.to_string(),
            new.name,
            new.email,
            new.prefix,
            &new.digest.0[..],
            ctx.now_ms
        ])
    })
    .map_err(map_err)?;
    let account = load_account(conn, account_id).map_err(map_err)?.expect("inserted or checked above");
    let key = load_key(conn, key_id).map_err(map_err)?.expect("inserted above");
    Ok((account, key))
}

/// Changes a key's status inside the writer's transaction; returns the key before and
/// after. Revoked keys cannot come back.
fn set_key_status_in_tx(
    ctx: &WriteCtx<'_>,
    id: ApiKeyId,
    status: ApiKeyStatus,
) -> Result<(ApiKeyRecord, ApiKeyRecord)> {
    let key = load_key(ctx.conn, id).map_err(map_err)?.ok_or_else(|| StoreError::NotFound(format!("API key {id}")))?;
    if key.status == ApiKeyStatus::Revoked && status != ApiKeyStatus::Revoked {
        return Err(StoreError::Conflict(format!("API key {id} is revoked for good")));
    }
    ctx.conn
        .prepare_cached("update api_key set status = ?1, updated_at = ?2 where api_key_id = ?3")
        .and_then(|mut s| s.execute(params![status.as_str(), ctx.now_ms, id.to_string()]))
        .map_err(map_err)?;
    Ok((key.clone(), ApiKeyRecord { status, ..key }))
}

#[async_trait]
impl store::Store for SqliteStore {
    async fn create_api_key(&self, new: NewApiKey) -> Result<(Account, ApiKeyRecord)> {
        self.writer.write(move |ctx| create_key_in_tx(ctx, &new)).await
    }

    async fn list_api_keys(&self, account_id: Option<AccountId>) -> Result<Vec<ApiKeyRecord>> {
        self.read(|c| {
            let mut s = c.prepare_cached(concat!(
                "select ",
                key_columns!(),
                " from ",
                key_source!(),
                " where ?1 is null or k.account_id = ?1 order by k.created_at, k.api_key_id"
            ))?;
            let rows = s.query_map([account_id.map(|a| a.to_string())], key_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn set_api_key_status(&self, id: ApiKeyId, status: ApiKeyStatus) -> Result<ApiKeyRecord> {
        self.writer.write(move |ctx| set_key_status_in_tx(ctx, id, status).map(|(_, key)| key)).await
    }

    async fn find_api_key(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>> {
        let digest = *digest;
        self.read(|c| {
            c.prepare_cached(concat!("select ", key_columns!(), " from ", key_source!(), " where k.key_digest = ?1"))?
                .query_row([&digest.0[..]], key_from_row)
                .optional()
        })
        .await
        // The index found the row by digest; confirm in constant time before trusting it.
        .map(|found| found.filter(|k| k.digest.ct_eq(&digest)))
    }

    async fn get_account(&self, id: AccountId) -> Result<Option<Account>> {
        self.read(|c| load_account(c, id)).await
    }

    async fn grant_credits(&self, id: AccountId, amount: i64, note: Option<String>) -> Result<Account> {
        if amount <= 0 {
            return Err(StoreError::Conflict("a grant must be a positive number of credits".into()));
        }
        self.writer
            .write(move |ctx| {
                load_account(ctx.conn, id)
                    .map_err(map_err)?
                    .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
                grant_in_tx(ctx, id, amount, note.as_deref())?;
                Ok(load_account(ctx.conn, id).map_err(map_err)?.expect("checked above"))
            })
            .await
    }

    async fn ledger(&self, id: AccountId) -> Result<Vec<LedgerEntry>> {
        self.read(|c| {
            let mut s = c.prepare_cached(concat!(
                "select ",
                ledger_columns!(),
                " from ledger_entry where account_id = ?1 order by ledger_entry_id"
            ))?;
            let rows = s.query_map([id.to_string()], rows::ledger_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn ledger_page(&self, id: AccountId, before_id: Option<i64>, limit: u32) -> Result<Vec<LedgerEntry>> {
        self.read(|c| admin::ledger_page(c, id, before_id, limit)).await
    }

    async fn admin_write(&self, write: store::AdminWrite, audit: store::AuditContext) -> Result<store::AdminWritten> {
        let (written, version) = self
            .writer
            .write(move |ctx| admin::write_in_tx(ctx, &write, &audit).map(|w| (w, ctx.next_version())))
            .await?;
        if let store::AdminWritten::Cancel(CancelOutcome::Cancelled(job)) = &written {
            // Committed: replace the cached QUEUED version, as `cancel_job` does.
            self.committed(job.clone(), version);
        }
        Ok(written)
    }

    async fn find_admin_token(&self, digest: &KeyDigest) -> Result<Option<store::AdminToken>> {
        let digest = *digest;
        self.read(|c| admin::find_token(c, &digest))
            .await
            // The index found the row by digest; confirm in constant time before trusting it.
            .map(|found| found.filter(|t| t.digest.ct_eq(&digest)))
    }

    async fn list_admin_tokens(&self) -> Result<Vec<store::AdminToken>> {
        self.read(admin::list_tokens).await
    }

    async fn audit_log(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<store::AuditRecord>> {
        self.read(|c| admin::audit_log(c, before_id, limit)).await
    }

    async fn list_accounts(&self, query: &store::AccountQuery) -> Result<Vec<Account>> {
        self.read(|c| admin::list_accounts(c, query)).await
    }

    async fn admin_jobs(&self, query: &store::AdminJobQuery) -> Result<Vec<JobRecord>> {
        self.read(|c| admin::admin_jobs(c, query)).await
    }

    async fn job_timeline(&self, id: JobId) -> Result<Vec<store::StageChange>> {
        self.read(|c| admin::job_timeline(c, id)).await
    }

    async fn usage(&self, query: &store::UsageQuery) -> Result<Vec<store::UsageRow>> {
        self.read(|c| admin::usage(c, query)).await
    }

    async fn upstream_activity(&self, now_ms: i64, window_ms: i64) -> Result<Vec<store::UpstreamActivity>> {
        self.read(|c| admin::upstream_activity(c, now_ms, window_ms)).await
    }

    async fn upstream_holds(&self, now_ms: i64) -> Result<Vec<store::UpstreamHold>> {
        self.read(|c| admin::upstream_holds(c, now_ms)).await
    }

    async fn overview(&self, now_ms: i64) -> Result<store::Overview> {
        self.read(|c| admin::overview(c, now_ms)).await
    }

    async fn submit_job(&self, job: NewJob) -> Result<SubmitOutcome> {
        self.ensure_open()?;
        let job = Arc::new(job);
        let (outcome, created_at_ms, version) = self.writer.submit(job.clone()).await?;
        if let SubmitOutcome::Created { .. } = outcome {
            // Committed: this is now the job's current version.
            match new_job_record(&job, created_at_ms) {
                Some(record) => self.committed(Arc::new(record), version),
                None => {
                    let _ = self.changes.send(store::JobChange { account_id: job.account_id, job_id: job.id });
                }
            }
        }
        Ok(outcome)
    }

    async fn cancel_job(&self, account_id: AccountId, id: JobId) -> Result<CancelOutcome> {
        let (outcome, version) =
            self.writer.write(move |ctx| cancel_in_tx(ctx, account_id, id).map(|o| (o, ctx.next_version()))).await?;
        if let CancelOutcome::Cancelled(job) = &outcome {
            // Committed: replace the cached QUEUED version.
            self.committed(job.clone(), version);
        }
        Ok(outcome)
    }

    async fn get_job(&self, account_id: AccountId, id: JobId) -> Result<Option<Arc<JobRecord>>> {
        self.ensure_open()?;
        let ticket = match self.jobs.get(id) {
            Ok(job) => return Ok((job.account_id == account_id).then_some(job)),
            Err(ticket) => ticket,
        };
        // Read by id alone so the cache learns the row whoever asked; ownership is
        // checked below, exactly as on a hit.
        let found = self
            .read(|c| {
                c.prepare_cached(concat!("select ", job_columns!(), " from job where job_id = ?1"))?
                    .query_row([id.to_string()], job_from_row)
                    .optional()
            })
            .await?;
        Ok(found.map(Arc::new).and_then(|job| {
            self.jobs.fill(job.clone(), ticket);
            (job.account_id == account_id).then_some(job)
        }))
    }

    async fn list_jobs(&self, q: &JobQuery) -> Result<Vec<JobRecord>> {
        // A NULL parameter disables its filter, so two cached plans serve every combination.
        // The keyset condition is a row-value comparison in its own statement: inside an
        // `?6 is null or ...` it would stop SQLite from seeking in the index, and deep
        // pages would rescan every newer job.
        macro_rules! list_sql {
            ($keyset:literal) => {
                concat!(
                    "select ",
                    job_columns!(),
                    " from job
                     where account_id = ?1
                       and (?2 is null or api_key_id = ?2)
                       and (?3 is null or status = ?3)
                       and (?4 is null or model = ?4)
                       and (?5 is null or job_id = ?5) ",
                    $keyset,
                    " order by created_at desc, job_id desc limit ?8"
                )
            };
        }
        const FIRST_PAGE: &str = list_sql!("and ?6 is null and ?7 is null");
        const NEXT_PAGE: &str = list_sql!("and (created_at, job_id) < (?6, ?7)");
        let sql = if q.after.is_some() { NEXT_PAGE } else { FIRST_PAGE };
        self.read(|c| {
            let mut s = c.prepare_cached(sql)?;
            let rows = s.query_map(
                params![
                    q.account_id.to_string(),
                    q.api_key_id.map(|k| k.to_string()),
                    q.status.map(|s| s.as_str()),
                    q.model,
                    q.job_id.map(|j| j.to_string()),
                    q.after.map(|a| a.created_at_ms),
                    q.after.map(|a| a.id.to_string()),
                    i64::from(q.limit) + 1
                ],
                job_from_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn job_models(&self, account_id: AccountId, api_key_id: Option<ApiKeyId>) -> Result<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "select distinct model from job where account_id = ?1 and (?2 is null or api_key_id = ?2) order by model",
            )?;
            let rows = s.query_map(params![account_id.to_string(), api_key_id.map(|k| k.to_string())], |r| r.get(0))?;
            rows.collect()
        }).await
    }

    async fn jobs_changed_since(
        &self,
        account_id: AccountId,
        api_key_id: Option<ApiKeyId>,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        self.read(|c| {
            let mut s = c.prepare_cached(concat!(
                "select ",
                job_columns!(),
                " from job where account_id = ?1 and (?2 is null or api_key_id = ?2) and updated_at >= ?3
                  order by updated_at, job_id limit ?4"
            ))?;
            let rows = s.query_map(
                params![account_id.to_string(), api_key_id.map(|k| k.to_string()), since_ms, i64::from(limit)],
                job_from_row,
            )?;
            rows.collect()
        })
        .await
    }

    fn job_changes(&self) -> tokio::sync::broadcast::Receiver<store::JobChange> {
        self.changes.subscribe()
    }

    async fn claim_jobs(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let (claimed, version) =
            self.writer.write(move |ctx| engine::claim_in_tx(ctx, &request).map(|c| (c, ctx.next_version()))).await?;
        for c in &claimed {
            self.committed(c.job.record.clone(), version);
        }
        Ok(claimed)
    }

    async fn reserve_upstream_call(
        &self,
        upstream: &str,
        job_id: JobId,
        create_rpm: u32,
        window_ms: i64,
    ) -> Result<CallReservation> {
        let upstream = upstream.to_string();
        self.writer.write(move |ctx| engine::reserve_call_in_tx(ctx, &upstream, job_id, create_rpm, window_ms)).await
    }

    async fn transition(&self, transition: Transition) -> Result<Option<EngineJob>> {
        let (moved, version) = self
            .writer
            .write(move |ctx| engine::transition_in_tx(ctx, &transition).map(|j| (j, ctx.next_version())))
            .await?;
        if let Some(job) = &moved {
            self.committed(job.record.clone(), version);
        }
        Ok(moved)
    }

    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<EngineJob>> {
        self.read(|c| engine::due_jobs(c, now_ms, limit)).await
    }

    async fn next_due_at(&self) -> Result<Option<i64>> {
        self.read(engine::next_due_at).await
    }

    async fn engine_job(&self, id: JobId) -> Result<Option<EngineJob>> {
        self.read(|c| engine::load_engine_job(c, id)).await
    }

    async fn queue_depth(&self) -> Result<QueueDepth> {
        self.read(engine::queue_depth).await
    }

    async fn results_to_expire(&self, before_ms: i64, limit: usize) -> Result<Vec<JobId>> {
        let ids = self.read(|c| engine::results_to_expire(c, before_ms, limit)).await?;
        ids.iter().map(|id| id.parse().map_err(|_| StoreError::Internal(format!("bad job id {id}")))).collect()
    }

    async fn mark_expired(&self, id: JobId) -> Result<()> {
        let (job, version) =
            self.writer.write(move |ctx| engine::mark_expired_in_tx(ctx, id).map(|j| (j, ctx.next_version()))).await?;
        if let Some(job) = job {
            self.committed(Arc::new(job), version);
        }
        Ok(())
    }

    async fn claim_webhooks(&self, limit: usize, lease_ms: i64) -> Result<Vec<WebhookDelivery>> {
        self.writer.write(move |ctx| webhooks::claim_in_tx(ctx, limit, lease_ms)).await
    }

    async fn defer_webhooks(&self, event_ids: Vec<String>, until_ms: i64) -> Result<()> {
        self.writer.write(move |ctx| webhooks::defer_in_tx(ctx, &event_ids, until_ms)).await
    }

    async fn record_webhook_attempt(&self, attempt: WebhookAttempt) -> Result<()> {
        let (job, version) = self
            .writer
            .write(move |ctx| webhooks::record_in_tx(ctx, &attempt).map(|j| (j, ctx.next_version())))
            .await?;
        if let Some(job) = job {
            self.committed(Arc::new(job), version);
        }
        Ok(())
    }

    async fn webhook_events(&self, job_id: JobId) -> Result<Vec<WebhookEventRecord>> {
        self.read(|c| webhooks::events(c, job_id)).await
    }

    async fn replay_webhooks(&self, job_id: JobId) -> Result<usize> {
        self.writer.write(move |ctx| webhooks::replay_in_tx(ctx, job_id)).await
    }

    async fn purge_idempotency_keys(&self, before_ms: i64) -> Result<u64> {
        self.writer
            .write(move |ctx| {
                ctx.conn
                    .prepare_cached("delete from idempotency_key where created_at < ?1")
                    .and_then(|mut s| s.execute([before_ms]))
                    .map(|n| n as u64)
                    .map_err(map_err)
            })
            .await
    }

    async fn create_upload(&self, upload: store::UploadRecord) -> Result<store::UploadOutcome> {
        self.writer.write(move |ctx| uploads::create_in_tx(ctx, &upload)).await
    }

    async fn get_upload(&self, id: domain::UploadId) -> Result<Option<store::UploadRecord>> {
        self.read(|c| uploads::get(c, id)).await
    }

    async fn uploads_to_reap(&self, before_ms: i64, limit: usize) -> Result<Vec<domain::UploadId>> {
        self.read(|c| uploads::to_reap(c, before_ms, limit)).await
    }

    async fn delete_upload(&self, id: domain::UploadId) -> Result<()> {
        self.writer.write(move |ctx| uploads::delete_in_tx(ctx, id)).await
    }

    async fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> Result<Vec<u8>> {
        let name = name.to_owned();
        self.writer
            .write(move |ctx| {
                ctx.conn
                    .prepare_cached(
                        "insert into server_secret (name, secret, created_at) values (?1, ?2, ?3)
                         on conflict (name) do nothing",
                    )
                    .and_then(|mut s| s.execute(rusqlite::params![name, candidate, ctx.now_ms]))
                    .map_err(map_err)?;
                ctx.conn
                    .prepare_cached("select secret from server_secret where name = ?1")
                    .and_then(|mut s| s.query_row([&name], |r| r.get(0)))
                    .map_err(map_err)
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.read_now(|c| c.query_row("select 1", [], |r| r.get::<_, i64>(0))).map(|_| ())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.writer.close().await;
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some(checkpointer) = checkpointer {
            // Joining waits for at most one checkpoint.
            let _ = tokio::task::spawn_blocking(move || drop(checkpointer)).await;
        }
        if let Ok(mut pool) = self.readers.lock() {
            pool.clear();
        }
    }
}

/// Cancels and refunds inside the writer's transaction.
fn cancel_in_tx(ctx: &WriteCtx<'_>, account_id: AccountId, id: JobId) -> Result<CancelOutcome> {
    let conn = ctx.conn;
    let (job_id, account) = (id.to_string(), account_id.to_string());
    let current: Option<(String, i64)> = conn
        .prepare_cached("select status, credit_cost from job where job_id = ?1 and account_id = ?2")
        .and_then(|mut s| s.query_row([&job_id, &account], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(map_err)?;
    let Some((status, cost)) = current else {
        return Ok(CancelOutcome::NotFound);
    };
    let status = JobStatus::parse(&status).ok_or_else(|| StoreError::Internal(format!("bad status {status}")))?;
    if status != JobStatus::Queued {
        return Ok(CancelOutcome::NotCancellable(status));
    }
    // QUEUED is only ever shown for stage `queued`, so this job has not reached MiniMax.
    // Compare-and-set: only a job still QUEUED moves, so a racing transition (a second
    // cancel, or the engine claiming it) leaves exactly one winner. No webhook event
    // exists for cancellation, so the job stops waiting for one.
    let moved = conn
        .prepare_cached(
            "update job set status = 'CANCELLED', stage = 'cancelled', credit_cost = 0, completed_at = ?1,
                            updated_at = ?1, webhook_status = null, due_at = null
             where job_id = ?2 and stage = 'queued'",
        )
        .and_then(|mut s| s.execute(params![ctx.now_ms, job_id]))
        .map_err(map_err)?;
    if moved != 1 {
        return Err(StoreError::Conflict(format!("job {id} changed state during cancel")));
    }
    insert_stage_change(conn, &job_id, Stage::Queued, Stage::Cancelled, None, ctx.now_ms).map_err(map_err)?;
    if cost > 0 {
        conn.prepare_cached("update account set credits = credits + ?1, updated_at = ?2 where account_id = ?3")
            .and_then(|mut s| s.execute(params![cost, ctx.now_ms, account]))
            .map_err(map_err)?;
        // The unique index on refunds per job makes a second refund a constraint error.
        insert_ledger(conn, account_id, LedgerKind::Refund, cost, Some(id), Some("cancelled"), ctx.now_ms)
            .map_err(map_err)?;
    }
    let job = conn
        .prepare_cached(concat!("select ", job_columns!(), " from job where job_id = ?1"))
        .and_then(|mut s| s.query_row([&job_id], job_from_row))
        .map_err(map_err)?;
    Ok(CancelOutcome::Cancelled(Arc::new(job)))
}

/// The row a created job becomes, as a record; `None` only if the input is not JSON,
/// which the API layer rules out (the job is then simply not cached).
fn new_job_record(job: &NewJob, created_at_ms: i64) -> Option<JobRecord> {
    Some(JobRecord {
        id: job.id,
        account_id: job.account_id,
        api_key_id: job.api_key_id,
        model: job.model.as_str().to_string(),
        status: JobStatus::Queued,
        progress: Some(0),
        result: None,
        error: None,
        credit_cost: job.cost,
        webhook_status: job.webhook_url.as_ref().map(|_| domain::WebhookStatus::Pending),
        input: serde_json::value::RawValue::from_string(job.input_json.clone()).ok()?,
        created_at_ms,
        completed_at_ms: None,
        expired: false,
        updated_at_ms: created_at_ms,
    })
}

fn grant_in_tx(ctx: &WriteCtx<'_>, id: AccountId, amount: i64, note: Option<&str>) -> Result<()> {
    ctx.conn
        .prepare_cached("update account set credits = credits + ?1, updated_at = ?2 where account_id = ?3")
        .and_then(|mut s| s.execute(params![amount, ctx.now_ms, id.to_string()]))
        .map_err(map_err)?;
    insert_ledger(ctx.conn, id, LedgerKind::Grant, amount, None, note, ctx.now_ms).map_err(map_err)
}

#[cfg(test)]
mod tests {
    use store::Store;
    use store_contract::support;

    use super::*;

    async fn store_with_account(credits: i64) -> (tempfile::TempDir, SqliteStore, ApiKeyRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let key = support::account(&store, credits, 1).await;
        (dir, store, key)
    }

    /// A job costing `cost`, with an idempotency key `(key, not_before_ms)` if given.
    fn job(key: &ApiKeyRecord, cost: i64, idem: Option<(&str, i64)>) -> NewJob {
        let job = support::job(key, cost);
        match idem {
            Some((idempotency_key, not_before_ms)) => support::with_key(job, idempotency_key, 7, not_before_ms),
            None => job,
        }
    }

    #[tokio::test]
    async fn the_ledger_is_append_only_and_balances_cannot_go_negative() {
        let (dir, store, key) = store_with_account(10).await;
        let raw = Connection::open(dir.path().join("t.db")).unwrap();
        assert!(raw.execute("update ledger_entry set amount = 1000", []).is_err());
        assert!(raw.execute("delete from ledger_entry", []).is_err());
        assert!(raw.execute("update account set credits = -1", []).is_err());
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 10);
        store.close().await;
    }

    #[tokio::test]
    async fn one_failing_operation_in_a_batch_does_not_undo_the_others() {
        let (_dir, store, key) = store_with_account(100).await;
        let store = std::sync::Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (store, key) = (store.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    store.submit_job(job(&key, 5, None)).await
                } else {
                    // Not an account: NotFound inside the batch, rolled back to its savepoint.
                    let mut bad = job(&key, 5, None);
                    bad.account_id = AccountId::new();
                    store.submit_job(bad).await
                }
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(SubmitOutcome::Created { .. }) => created += 1,
                Err(StoreError::NotFound(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(created, 10);
        let acct = store.get_account(key.account_id).await.unwrap().unwrap();
        assert_eq!(acct.credits, 50);
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 50);
        store.close().await;
    }

    /// Many submitters on one account while a reader reads: exactly what the balance
    /// affords is accepted, each batch deciding against its own transaction's view.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_stay_exact_under_concurrent_submissions() {
        const AFFORDABLE: usize = 1000;
        let (dir, store, key) = store_with_account(AFFORDABLE as i64).await;
        let store = std::sync::Arc::new(store);
        let submitting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(40));
        let reader = {
            let (store, submitting, account) = (store.clone(), submitting.clone(), key.account_id);
            tokio::spawn(async move {
                let mut reads = 0;
                while submitting.load(Ordering::Acquire) > 0 {
                    let credits = store.get_account(account).await.unwrap().unwrap().credits;
                    assert!(credits >= 0);
                    reads += 1;
                }
                reads
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (store, key, submitting) = (store.clone(), key.clone(), submitting.clone());
            tasks.push(tokio::spawn(async move {
                let (mut created, mut refused) = (0, 0);
                for _ in 0..(AFFORDABLE * 2 / 40) {
                    match store.submit_job(job(&key, 1, None)).await.unwrap() {
                        SubmitOutcome::Created { .. } => created += 1,
                        SubmitOutcome::InsufficientCredits { .. } => refused += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                submitting.fetch_sub(1, Ordering::AcqRel);
                (created, refused)
            }));
        }
        let (mut created, mut refused) = (0, 0);
        for t in tasks {
            let (c, r) = t.await.unwrap();
            created += c;
            refused += r;
        }
        assert!(reader.await.unwrap() > 0, "the reads ran beside the submissions");
        assert_eq!((created, refused), (AFFORDABLE, AFFORDABLE), "exactly what the balance affords is accepted");
        assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 0);
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 0);
        store.close().await;
        let raw = Connection::open(dir.path().join("t.db")).unwrap();
        let jobs: usize = raw.query_row("select count(*) from job", [], |r| r.get(0)).unwrap();
        assert_eq!(jobs, AFFORDABLE);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_database_submits_too_but_a_second_server_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open_serving(&path).unwrap();
        let key = support::account(&store, 50, 1).await;
        // The admin CLI's store: it writes beside the server, submissions included.
        let other = SqliteStore::open(&path).unwrap();
        let mut created = 0;
        for i in 0..12 {
            let by = if i % 2 == 0 { &store } else { &other };
            if matches!(by.submit_job(job(&key, 5, None)).await.unwrap(), SubmitOutcome::Created { .. }) {
                created += 1;
            }
        }
        assert_eq!(created, 10, "50 credits pay for ten, whichever process submits");
        // What one acknowledged, the other reads at once: both read SQLite.
        assert_eq!(other.get_account(key.account_id).await.unwrap().unwrap().credits, 0);
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 0);
        // A key taken through one process replays through the other.
        other.grant_credits(key.account_id, 5, None).await.unwrap();
        let first = other.submit_job(job(&key, 5, Some(("once", 0)))).await.unwrap();
        let SubmitOutcome::Created { job_id, .. } = first else { panic!("{first:?}") };
        let again = store.submit_job(job(&key, 5, Some(("once", 0)))).await.unwrap();
        assert_eq!(again, SubmitOutcome::Replayed { job_id, status: JobStatus::Queued });
        // One server per data directory.
        let refused = SqliteStore::open_serving(&path).map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("another process is serving"), "{refused}");
        other.close().await;
        store.close().await;
        drop(store);
        // The lock goes with the store.
        SqliteStore::open_serving(&path).unwrap().close().await;
    }

    #[tokio::test]
    async fn a_cached_job_reads_exactly_like_its_row() {
        let (dir, store, key) = store_with_account(100).await;
        let mut new = job(&key, 5, None);
        new.webhook_url = Some("https://hooks.example.com/x".into());
        new.webhook_events = Some(vec!["completed".into()]);
        let SubmitOutcome::Created { job_id, .. } = store.submit_job(new).await.unwrap() else { panic!() };
        let cached = store.get_job(key.account_id, job_id).await.unwrap().unwrap();
        // A second store on the same file has an empty cache: it reads the row.
        let fresh = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let from_row = fresh.get_job(key.account_id, job_id).await.unwrap().unwrap();
        assert_eq!(format!("{cached:?}"), format!("{from_row:?}"));
        // Ownership is checked on cache hits too.
        assert!(store.get_job(AccountId::new(), job_id).await.unwrap().is_none());
        fresh.close().await;
        store.close().await;
    }
}
