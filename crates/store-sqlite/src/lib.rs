//! The embedded SQLite backend: one group-committing writer thread ([`writer`]), an
//! acceptor thread for submissions ([`acceptor`]) and a small pool of read connections.
//!
//! Reads run inline on the calling task. They are indexed point reads or short keyset
//! scans that take microseconds in WAL mode (readers never wait for the writer), so
//! handing them to a blocking thread pool would cost more than the read itself. Writes
//! go through the writer thread, which acknowledges only after a durable commit
//! (`synchronous = FULL`). Submissions are acknowledged once their record is durable
//! in the acceptance journal ([`journal`]), and the writer writes them into SQLite
//! shortly after ([`accepted`]). Reads first wait for those ([`Writer::settle`]), so an
//! acknowledged job is always visible.

#![forbid(unsafe_code)]

mod accepted;
mod acceptor;
mod cache;
mod checkpoint;
mod engine;
mod journal;
mod migrate;
mod rows;
mod uploads;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::{AccountId, ApiKeyId, ApiKeyStatus, JobId, JobStatus, KeyDigest};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use store::{
    Account, ApiKeyRecord, CallReservation, CancelOutcome, ClaimRequest, ClaimedJob, EngineJob, JobQuery, JobRecord,
    LedgerEntry, LedgerKind, NewApiKey, NewJob, QueueDepth, Result, StoreError, SubmitOutcome, Transition,
    WebhookAttempt, WebhookDelivery, WebhookEventRecord,
};

use crate::cache::JobCache;
use crate::rows::{account_columns, account_from_row, job_columns, job_from_row, key_columns, key_from_row};
use crate::writer::{WriteCtx, Writer};

/// The window a claim uses to count an upstream account's recent create calls. The
/// authoritative check is [`store::Store::reserve_upstream_call`], made right before
/// each call; the claim only avoids taking jobs that could not be sent.
const UPSTREAM_WINDOW_MS: i64 = 60_000;

/// Idle read connections kept open; more are opened on demand under load.
const MAX_IDLE_READERS: usize = 8;

/// How long a store that does not own the acceptance journal waits, before a read, for
/// the owner to write its accepted jobs into SQLite (it does so within milliseconds of
/// a pause in traffic).
const OTHER_OWNER_WAIT: Duration = Duration::from_millis(500);
/// How long the serving process waits for the acceptance journal at start.
const JOURNAL_WAIT: Duration = Duration::from_secs(5);

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    /// The acceptance journal beside the database (owned by this store if
    /// `writer.journaled()`, else by another process, or by nobody).
    journal_path: PathBuf,
    writer: Writer,
    /// The owner's WAL checkpoints, off the writer thread.
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
    readers: Mutex<Vec<Connection>>,
    jobs: JobCache,
    /// Announces every committed job change (see [`store::Store::job_changes`]); on
    /// SQLite this process is the only writer of job rows, so its own changes are all.
    changes: tokio::sync::broadcast::Sender<store::JobChange>,
    /// Set by `close`: reads refuse too, as the trait promises, instead of opening a
    /// fresh connection or answering from the cache.
    closed: AtomicBool,
    /// Makes the owned journal's writes fail (see [`SqliteStore::fail_journal_writes`]).
    journal_failure: Option<Arc<AtomicBool>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// The first store to open a database takes its acceptance journal, writes any
    /// submissions a crash left there into SQLite, and from then on accepts submissions
    /// through it. A store opened while another process holds the journal (the admin CLI
    /// beside a running server) reads and writes everything else but refuses
    /// submissions: only one process may lower balances, or two could spend one credit.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Duration::ZERO)
    }

    /// [`open`](Self::open) for the process that serves the API: waits up to
    /// `JOURNAL_WAIT` for the journal (an admin command may hold it for a moment) and
    /// fails if another process keeps it.
    pub fn open_serving(path: &Path) -> Result<Self> {
        let store = Self::open_with(path, JOURNAL_WAIT)?;
        if !store.writer.journaled() {
            return Err(StoreError::Unavailable(format!(
                "another process is serving {} (it holds {})",
                path.display(),
                store.journal_path.display()
            )));
        }
        Ok(store)
    }

    fn open_with(path: &Path, wait_for_journal: Duration) -> Result<Self> {
        let mut conn = open_connection(path, false)?;
        migrate::apply(&mut conn)?;
        let journal_path = journal::path_for(path);
        let cannot =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot open {}: {e}", journal_path.display()));
        let deadline = Instant::now() + wait_for_journal;
        let owned = loop {
            match journal::Journal::open(&journal_path).map_err(cannot)? {
                Some(owned) => break Some(owned),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => break None,
            }
        };
        let backlog = Arc::new(AtomicUsize::new(0));
        let journal_failure = owned.as_ref().map(|(journal, _)| journal.failure_switch());
        let journaled = match owned {
            Some((mut journal, records)) => {
                accepted::replay(&conn, &records)?;
                journal.reset().map_err(cannot)?;
                let written_seq = accepted::written_seq(&conn)?;
                Some(writer::Journaled {
                    accepted: accepted::Accepted::new(&journal, written_seq, backlog.clone()),
                    journal,
                    acceptor_conn: open_connection(path, true)?,
                })
            }
            None => None,
        };
        // The process that takes submissions checkpoints on a thread of its own; others
        // (short-lived admin commands) leave it to SQLite.
        let checkpointer = match &journaled {
            Some(_) => {
                conn.pragma_update(None, "wal_autocheckpoint", checkpoint::WRITER_AUTOCHECKPOINT_PAGES)
                    .map_err(map_err)?;
                Some(checkpoint::Checkpointer::start(path)?)
            }
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            journal_path,
            writer: Writer::start(conn, journaled, backlog),
            checkpointer: Mutex::new(checkpointer),
            readers: Mutex::new(Vec::new()),
            jobs: JobCache::new(),
            changes: tokio::sync::broadcast::channel(store::JOB_CHANGES_CAPACITY).0,
            closed: AtomicBool::new(false),
            journal_failure,
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

    /// Waits until every submission acknowledged so far is in SQLite: this store's
    /// accepted jobs, or (briefly) those of the process that owns the journal.
    async fn settle(&self) -> Result<()> {
        self.ensure_open()?;
        if self.writer.journaled() {
            self.writer.settle().await
        } else {
            journal::wait_until_drained(&self.journal_path, OTHER_OWNER_WAIT).await;
            Ok(())
        }
    }

    /// Runs `f` on a pooled read connection once every acknowledged submission is in
    /// SQLite.
    async fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.settle().await?;
        self.read_now(f)
    }

    /// Runs `f` on a pooled read connection as SQLite is now.
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

    /// Stops this store as a crash would: accepted submissions stay in the journal, not
    /// written into SQLite, for the next store opened on the database to replay. For tests.
    #[doc(hidden)]
    pub async fn simulate_crash(&self) {
        self.closed.store(true, Ordering::Release);
        self.writer.abandon().await;
    }

    /// Makes every later write to the acceptance journal fail, as a failing disk would
    /// (a real failure does the same, until the next start); `false` lets it be written
    /// again. For tests.
    #[doc(hidden)]
    pub fn fail_journal_writes(&self, failing: bool) {
        if let Some(switch) = &self.journal_failure {
            switch.store(failing, Ordering::Release);
        }
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

fn poisoned() -> StoreError {
    StoreError::Internal("read pool lock poisoned".into())
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(map_err)?;
    // WAL lets readers run beside the writer; FULL makes each commit survive power loss,
    // which "nothing acknowledged is lost" needs. Group commit pays for the fsync.
    let pragmas = if read_only {
        "pragma foreign_keys = on;"
    } else {
        "pragma journal_mode = wal; pragma synchronous = full; pragma foreign_keys = on;"
    };
    conn.execute_batch(pragmas).map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Maps rusqlite errors onto what a caller can act on.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable(e.to_string()),
            ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::SystemIoFailure => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        },
        _ => StoreError::Internal(e.to_string()),
    }
}

pub(crate) fn insert_ledger(
    ctx: &WriteCtx<'_>,
    account: AccountId,
    kind: LedgerKind,
    amount: i64,
    job: Option<JobId>,
    note: Option<&str>,
) -> rusqlite::Result<()> {
    insert_ledger_at(ctx.conn, account, kind, amount, job, note, ctx.now_ms)
}

/// [`insert_ledger`] with an explicit time: an accepted job's charge carries the time
/// it was accepted, not the time it reached SQLite.
pub(crate) fn insert_ledger_at(
    conn: &Connection,
    account: AccountId,
    kind: LedgerKind,
    amount: i64,
    job: Option<JobId>,
    note: Option<&str>,
    at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "insert into ledger_entry (account_id, kind, amount, job_id, note, created_at) values (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![account.to_string(), kind.as_str(), amount, job.map(|j| j.to_string()), note, at_ms])?;
    Ok(())
}

fn load_account(conn: &Connection, id: AccountId) -> rusqlite::Result<Option<Account>> {
    conn.prepare_cached(concat!("select ", account_columns!(), " from account where account_id = ?1"))?
        .query_row([id.to_string()], account_from_row)
        .optional()
}

fn load_key(conn: &Connection, id: ApiKeyId) -> rusqlite::Result<Option<ApiKeyRecord>> {
    conn.prepare_cached(concat!("select ", key_columns!(), " from api_key where api_key_id = ?1"))?
        .query_row([id.to_string()], key_from_row)
        .optional()
}

#[async_trait]
impl store::Store for SqliteStore {
    async fn create_api_key(&self, new: NewApiKey) -> Result<(Account, ApiKeyRecord)> {
        self.writer
            .write(move |ctx| {
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
            })
            .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.read(|c| {
            let mut s =
                c.prepare_cached(concat!("select ", key_columns!(), " from api_key order by created_at, api_key_id"))?;
            let rows = s.query_map([], key_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn set_api_key_status(&self, id: ApiKeyId, status: ApiKeyStatus) -> Result<ApiKeyRecord> {
        self.writer
            .write(move |ctx| {
                let key = load_key(ctx.conn, id)
                    .map_err(map_err)?
                    .ok_or_else(|| StoreError::NotFound(format!("API key {id}")))?;
                if key.status == ApiKeyStatus::Revoked && status != ApiKeyStatus::Revoked {
                    return Err(StoreError::Conflict(format!("API key {id} is revoked for good")));
                }
                ctx.conn
                    .prepare_cached("update api_key set status = ?1, updated_at = ?2 where api_key_id = ?3")
                    .and_then(|mut s| s.execute(params![status.as_str(), ctx.now_ms, id.to_string()]))
                    .map_err(map_err)?;
                Ok(ApiKeyRecord { status, ..key })
            })
            .await
    }

    async fn find_api_key(&self, digest: &KeyDigest) -> Result<Option<ApiKeyRecord>> {
        let digest = *digest;
        self.read(|c| {
            c.prepare_cached(concat!("select ", key_columns!(), " from api_key where key_digest = ?1"))?
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
            let mut s = c.prepare_cached(
                "select ledger_entry_id, account_id, kind, amount, job_id, note, created_at
                 from ledger_entry where account_id = ?1 order by ledger_entry_id",
            )?;
            let rows = s.query_map([id.to_string()], rows::ledger_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn submit_job(&self, job: NewJob) -> Result<SubmitOutcome> {
        if !self.writer.journaled() {
            return Err(StoreError::Unavailable(format!(
                "submissions to {} are taken by the process that holds {}",
                self.path.display(),
                self.journal_path.display()
            )));
        }
        let job = Arc::new(job);
        let (outcome, created_at_ms, version) = self.writer.submit(job.clone()).await?;
        if let SubmitOutcome::Created { .. } = outcome {
            // Durable (journaled): this is now the job's current version.
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
        let (claimed, version) = self
            .writer
            .write(move |ctx| engine::claim_in_tx(ctx, &request, UPSTREAM_WINDOW_MS).map(|c| (c, ctx.next_version())))
            .await?;
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
        self.read(engine::queue_depth).await.map(|(queued, active)| QueueDepth { queued, active })
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
    if cost > 0 {
        conn.prepare_cached("update account set credits = credits + ?1, updated_at = ?2 where account_id = ?3")
            .and_then(|mut s| s.execute(params![cost, ctx.now_ms, account]))
            .map_err(map_err)?;
        // The unique index on refunds per job makes a second refund a constraint error.
        insert_ledger(ctx, account_id, LedgerKind::Refund, cost, Some(id), Some("cancelled")).map_err(map_err)?;
    }
    let job = conn
        .prepare_cached(concat!("select ", job_columns!(), " from job where job_id = ?1"))
        .and_then(|mut s| s.query_row([&job_id], job_from_row))
        .map_err(map_err)?;
    Ok(CancelOutcome::Cancelled(Arc::new(job)))
}

/// The row an accepted job becomes, as a record; `None` only if the input is not JSON,
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
    insert_ledger(ctx, id, LedgerKind::Grant, amount, None, note).map_err(map_err)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
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

    /// The acceptor decides against snapshots while the writer commits accepted jobs
    /// beside it (here forced often by reads that settle): a job the snapshot already
    /// holds must not count twice, nor one it does not hold zero times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_stay_exact_while_the_writer_writes_accepted_jobs_beside_them() {
        const AFFORDABLE: usize = 1000;
        let (dir, store, key) = store_with_account(AFFORDABLE as i64).await;
        let store = std::sync::Arc::new(store);
        let submitting = std::sync::Arc::new(AtomicUsize::new(40));
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
    async fn when_the_journal_cannot_be_written_submissions_become_durable_in_sqlite_instead() {
        let (dir, store, key) = store_with_account(100).await;
        store.fail_journal_writes(true);
        let SubmitOutcome::Created { job_id, .. } = store.submit_job(job(&key, 5, None)).await.unwrap() else {
            panic!("the job is accepted although the journal failed");
        };
        let refused = store.submit_job(job(&key, 1000, None)).await.unwrap();
        assert!(matches!(refused, SubmitOutcome::InsufficientCredits { .. }), "{refused:?}");
        // What a crash leaves: the journal holds nothing, so the job must be in SQLite.
        store.simulate_crash().await;
        let path = dir.path().join("t.db");
        assert!(!journal::holds_records(&journal::path_for(&path)), "the failed journal holds no record");
        let raw = Connection::open(&path).unwrap();
        let jobs: i64 =
            raw.query_row("select count(*) from job where job_id = ?1", [job_id.to_string()], |r| r.get(0)).unwrap();
        assert_eq!(jobs, 1);
        let credits: i64 = raw
            .query_row("select credits from account where account_id = ?1", [key.account_id.to_string()], |r| r.get(0))
            .unwrap();
        let ledger: i64 = raw
            .query_row(
                "select sum(amount) from ledger_entry where account_id = ?1",
                [key.account_id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((credits, ledger), (95, 95), "charged once");
    }

    #[tokio::test]
    async fn accepted_jobs_the_writer_cannot_write_are_bounded_and_new_ones_refused_past_the_bound() {
        let (dir, store, key) = store_with_account(10_000).await;
        let path = dir.path().join("t.db");
        // Another process holds the database's write lock, as a `sqlite3` shell with an
        // open transaction would: the writer cannot write what the acceptor accepts.
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("begin immediate").unwrap();
        const MIB: usize = 1 << 20;
        let heavy = |n: usize| {
            let mut heavy = job(&key, 1, Some((&format!("k{n}"), 0)));
            heavy.input_json = json!({"prompt": "x".repeat(MIB)}).to_string();
            heavy
        };
        let mut accepted = Vec::new();
        let refusal = loop {
            match store.submit_job(heavy(accepted.len())).await {
                Ok(SubmitOutcome::Created { job_id, .. }) => accepted.push(job_id),
                Ok(other) => panic!("only acceptances or a refusal expected, got {other:?}"),
                Err(e) => break e,
            }
            assert!(accepted.len() <= 2 * accepted::MAX_UNWRITTEN_BYTES / MIB, "no bound on unwritten jobs");
        };
        assert!(matches!(refusal, StoreError::Unavailable(_)), "{refusal:?}");
        let bound = accepted::MAX_UNWRITTEN_BYTES / MIB;
        assert!(
            (bound - 1..=bound + 1).contains(&accepted.len()),
            "{} accepted for a bound of {bound} MiB",
            accepted.len()
        );
        // A retry of an accepted job still learns its id while new work is refused.
        let replay = store.submit_job(heavy(0)).await.unwrap();
        assert!(matches!(replay, SubmitOutcome::Replayed { job_id, .. } if job_id == accepted[0]), "{replay:?}");

        blocker.execute_batch("rollback").unwrap();
        store.settle().await.unwrap();
        let SubmitOutcome::Created { .. } = store.submit_job(job(&key, 1, None)).await.unwrap() else {
            panic!("accepted again once the writer caught up")
        };
        store.settle().await.unwrap();
        let jobs: i64 = blocker.query_row("select count(*) from job", [], |r| r.get(0)).unwrap();
        assert_eq!(jobs as usize, accepted.len() + 1, "every accepted job reached SQLite, the refused one did not");
        let spent = accepted.len() as i64 + 1;
        assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 10_000 - spent);
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 10_000 - spent);
    }

    #[tokio::test]
    async fn acknowledged_submissions_survive_a_crash_through_the_journal() {
        let (dir, store, key) = store_with_account(100).await;
        let path = dir.path().join("t.db");
        // Accepted and acknowledged, then the process "dies" before writing them into SQLite.
        let mut ids = Vec::new();
        for i in 0..7 {
            let idem = (i == 3).then_some(("once", 0));
            let SubmitOutcome::Created { job_id, .. } = store.submit_job(job(&key, 5, idem)).await.unwrap() else {
                panic!("accepted")
            };
            ids.push(job_id);
        }
        store.simulate_crash().await;
        assert!(journal::holds_records(&journal::path_for(&path)), "the crash left records to replay");
        {
            // What SQLite holds before any replay: none of them.
            let conn = Connection::open(&path).unwrap();
            let jobs: i64 = conn.query_row("select count(*) from job", [], |r| r.get(0)).unwrap();
            assert_eq!(jobs, 0, "the journal, not SQLite, held the accepted jobs");
        }
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        for id in &ids {
            let job = store.get_job(key.account_id, *id).await.unwrap().expect("replayed");
            assert_eq!(job.status, JobStatus::Queued);
            assert_eq!(job.credit_cost, 5);
        }
        assert_eq!(store.get_account(key.account_id).await.unwrap().unwrap().credits, 100 - 35);
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 65);
        // The replayed key still replays its job.
        let again = store.submit_job(job(&key, 5, Some(("once", 0)))).await.unwrap();
        assert_eq!(again, SubmitOutcome::Replayed { job_id: ids[3], status: JobStatus::Queued });
        store.close().await;

        // Replaying twice changes nothing: a clean close emptied the journal, and a
        // record whose job exists is skipped.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.ledger_sum(key.account_id).await.unwrap(), 65);
        assert_eq!(store.ledger(key.account_id).await.unwrap().len(), 8, "one grant and seven charges");
        store.close().await;
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_database_sees_what_the_first_acknowledged() {
        let (dir, store, key) = store_with_account(50).await;
        // The first store owns the journal; the second writes straight into SQLite.
        let other = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        assert!(store.writer.journaled() && !other.writer.journaled());
        for _ in 0..4 {
            assert!(matches!(store.submit_job(job(&key, 5, None)).await.unwrap(), SubmitOutcome::Created { .. }));
        }
        // Read at once from the other handle: it waits for the owner to write them.
        assert_eq!(other.get_account(key.account_id).await.unwrap().unwrap().credits, 30);
        assert_eq!(other.ledger_sum(key.account_id).await.unwrap(), 30);
        // Only the owner lowers balances: the other handle refuses submissions, but its
        // grants count for the owner's next decision.
        assert!(matches!(other.submit_job(job(&key, 5, None)).await, Err(StoreError::Unavailable(_))));
        other.grant_credits(key.account_id, 10, None).await.unwrap();
        let mut created = 0;
        for _ in 0..10 {
            if matches!(store.submit_job(job(&key, 5, None)).await.unwrap(), SubmitOutcome::Created { .. }) {
                created += 1;
            }
        }
        assert_eq!(created, 8, "30 left plus 10 granted pay for eight");
        assert_eq!(other.get_account(key.account_id).await.unwrap().unwrap().credits, 0);
        assert_eq!(other.ledger_sum(key.account_id).await.unwrap(), 0);
        // A server cannot start beside the owner.
        assert!(matches!(
            SqliteStore::open_with(&dir.path().join("t.db"), Duration::from_millis(50)).map(|s| s.writer.journaled()),
            Ok(false)
        ));
        other.close().await;
        store.close().await;
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
