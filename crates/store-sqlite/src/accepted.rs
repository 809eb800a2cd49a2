//! Submissions accepted ahead of SQLite: decided and journaled by the writer, answered,
//! and written into SQLite in larger transactions a little later.
//!
//! The writer decides a submission as one-at-a-time submissions would, against what
//! SQLite holds plus the jobs accepted but not yet written there ([`Accepted`]): an
//! idempotency key held by such a job replays it, and their costs count against the
//! balance. Only the writer changes balances downwards, so
//! "SQLite's balance minus what is accepted and not yet written" is exactly what
//! one-at-a-time submissions would have seen; a grant from another process only raises
//! SQLite's side. An accepted job is journaled ([`crate::journal`]), and once the batch's
//! journal sync returns, its caller is answered.
//!
//! The accepted jobs move into SQLite ([`Accepted::write_into`]) inside the next writer
//! transaction: before any other write (so every other operation sees them), when the
//! writer has been idle for a moment, when enough have gathered, or when the oldest has
//! waited long enough. Readers that need them ask the writer to do so first
//! ([`crate::writer::Writer::settle`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use domain::{AccountId, JobId, JobStatus};
use rusqlite::{params, Connection, OptionalExtension};
use store::{LedgerKind, NewJob, Result, StoreError, SubmitOutcome};

use crate::journal::{encode_record, Answer, Journal, Record, Syncer};
use crate::map_err;
use crate::writer::WriteCtx;

/// Accepted jobs gathered before they are written to SQLite even while the writer is
/// busy. A larger batch shares more index pages per commit but holds the writer (and
/// so every submission behind it) for longer: at roughly 10 µs a job, 512 is a few ms.
pub(crate) const WRITE_AT: usize = 192;
/// The longest an accepted job waits for SQLite under steady load.
pub(crate) const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The jobs accepted and journaled but not yet in SQLite, in acceptance order.
pub(crate) struct Accepted {
    syncer: Syncer,
    /// The journal generation new records are written in.
    generation: u64,
    /// Records of jobs decided since the last batch went to the syncer.
    unsent: Vec<u8>,
    jobs: Vec<(Arc<NewJob>, i64)>,
    /// Per account, the summed cost of `jobs`.
    debits: HashMap<AccountId, i64>,
    /// Idempotency keys taken by `jobs`: `(account, key)` to the job, its body's
    /// fingerprint and when it was accepted.
    keys: HashMap<(AccountId, String), (JobId, [u8; 32], i64)>,
    /// When the oldest of `jobs` was accepted.
    since: Option<Instant>,
}

impl Accepted {
    pub(crate) fn new(journal: Journal) -> Self {
        let generation = journal.generation();
        Self {
            syncer: Syncer::start(journal),
            generation,
            unsent: Vec::new(),
            jobs: Vec::new(),
            debits: HashMap::new(),
            keys: HashMap::new(),
            since: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether the accepted jobs should go to SQLite now, even though the writer is busy.
    pub(crate) fn due(&self) -> bool {
        self.jobs.len() >= WRITE_AT || self.since.is_some_and(|t| t.elapsed() >= MAX_WAIT)
    }

    /// Decides one submission (see the module comment). A created job's record goes to
    /// the journal with the batch ([`answer_after_sync`](Self::answer_after_sync)).
    pub(crate) fn decide(&mut self, ctx: &WriteCtx<'_>, job: &Arc<NewJob>) -> Result<SubmitOutcome> {
        let conn = ctx.conn;
        if let Some(claim) = &job.idempotency {
            match self.keys.get(&(job.account_id, claim.key.clone())) {
                Some((holder, fingerprint, accepted_at)) if *accepted_at >= claim.not_before_ms => {
                    return Ok(if *fingerprint == claim.fingerprint {
                        // Not in SQLite yet, so no engine operation has touched it.
                        SubmitOutcome::Replayed { job_id: *holder, status: JobStatus::Queued }
                    } else {
                        SubmitOutcome::IdempotencyMismatch
                    });
                }
                // Past its window: this job takes the key over.
                Some(_) => {}
                None => {
                    if let Some(outcome) = stored_key_outcome(conn, job, claim)? {
                        return Ok(outcome);
                    }
                }
            }
        }
        // The account pays; the API key must exist, which the job's foreign key would
        // otherwise only check once the job reaches SQLite, too late to refuse it.
        let (credits, key_exists): (i64, bool) = conn
            .prepare_cached(
                "select credits, exists (select 1 from api_key where api_key_id = ?2) from account where account_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![job.account_id.to_string(), job.api_key_id.to_string()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("account {}", job.account_id)))?;
        if !key_exists {
            return Err(StoreError::Conflict(format!("API key {} does not exist", job.api_key_id)));
        }
        let pending = self.debits.get(&job.account_id).copied().unwrap_or(0);
        let available = credits - pending;
        if available < job.cost {
            return Ok(SubmitOutcome::InsufficientCredits { required: job.cost, available: available.max(0) });
        }
        encode_record(job, ctx.now_ms, self.generation, &mut self.unsent);
        *self.debits.entry(job.account_id).or_insert(0) += job.cost;
        if let Some(claim) = &job.idempotency {
            self.keys.insert((job.account_id, claim.key.clone()), (job.id, claim.fingerprint, ctx.now_ms));
        }
        self.jobs.push((job.clone(), ctx.now_ms));
        self.since.get_or_insert_with(Instant::now);
        Ok(SubmitOutcome::Created { job_id: job.id, status: JobStatus::Queued })
    }

    /// Hands the records of the jobs decided since the last call to the journal thread,
    /// which calls `answer` once they are on disk. Every decision goes this way, also a
    /// refusal or a replay: a replay may name a job whose record is still on its way.
    pub(crate) fn answer_after_sync(&mut self, answer: Answer) {
        self.syncer.write(std::mem::take(&mut self.unsent), answer);
    }

    /// Writes every accepted job into SQLite, inside the caller's transaction. Nothing
    /// here changes until [`written`](Self::written) is called after the commit: if the
    /// transaction rolls back, the jobs are still accepted and written by the next one.
    pub(crate) fn write_into(&self, conn: &Connection, now_ms: i64) -> Result<()> {
        // One debit per account for all of its jobs.
        for (account, total) in &self.debits {
            debit(conn, *account, *total, now_ms)?;
        }
        for (job, created_at_ms) in &self.jobs {
            insert_rows(conn, job, *created_at_ms)?;
        }
        Ok(())
    }

    /// The transaction holding [`write_into`](Self::write_into)'s rows has committed:
    /// forget the jobs and empty the journal.
    pub(crate) fn written(&mut self) {
        self.jobs.clear();
        self.debits.clear();
        self.keys.clear();
        self.since = None;
        self.generation += 1;
        self.syncer.empty(self.generation);
    }
}

/// Writes the submissions a previous process accepted but did not get into SQLite
/// before it stopped, in one transaction: each job with its charge, key and debit,
/// skipping any job already there (records may outlive their job's write, see
/// [`crate::journal`]).
pub(crate) fn replay(conn: &Connection, records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    conn.execute_batch("begin immediate").map_err(map_err)?;
    let mut replayed = 0;
    let mut write = || -> Result<()> {
        for Record { job, created_at_ms } in records {
            let exists = conn
                .prepare_cached("select 1 from job where job_id = ?1")
                .and_then(|mut s| s.query_row([job.id.to_string()], |_| Ok(())).optional())
                .map_err(map_err)?;
            if exists.is_none() {
                debit(conn, job.account_id, job.cost, *created_at_ms)?;
                insert_rows(conn, job, *created_at_ms)?;
                replayed += 1;
            }
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = conn.execute_batch("rollback");
        return Err(e);
    }
    conn.execute_batch("commit").map_err(map_err)?;
    tracing::info!(
        records = records.len(),
        replayed,
        "wrote accepted submissions left in the journal into the database"
    );
    Ok(())
}

/// Takes `amount` from the account's balance; the decision made sure it is there.
fn debit(conn: &Connection, account: AccountId, amount: i64, now_ms: i64) -> Result<()> {
    let debited = conn
        .prepare_cached(
            "update account set credits = credits - ?1, updated_at = ?2 where account_id = ?3 and credits >= ?1",
        )
        .and_then(|mut s| s.execute(params![amount, now_ms, account.to_string()]))
        .map_err(map_err)?;
    if debited != 1 {
        // The decision saw enough credits and only the writer lowers balances.
        return Err(StoreError::Internal(format!("account {account} cannot pay {amount} credits for accepted jobs")));
    }
    Ok(())
}

/// The job row, its charge and its idempotency key.
fn insert_rows(conn: &Connection, job: &NewJob, created_at_ms: i64) -> Result<()> {
    insert_job_row(conn, job, created_at_ms).map_err(map_err)?;
    crate::insert_ledger_at(conn, job.account_id, LedgerKind::Charge, -job.cost, Some(job.id), None, created_at_ms)
        .map_err(map_err)?;
    if let Some(claim) = &job.idempotency {
        // A key still stored here was past its replay window when the job was decided.
        conn.prepare_cached(
            "insert into idempotency_key (account_id, idempotency_key, fingerprint, job_id, created_at)
             values (?1, ?2, ?3, ?4, ?5)
             on conflict (account_id, idempotency_key) do update
                 set fingerprint = excluded.fingerprint, job_id = excluded.job_id, created_at = excluded.created_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                job.account_id.to_string(),
                claim.key,
                &claim.fingerprint[..],
                job.id.to_string(),
                created_at_ms
            ])
        })
        .map_err(map_err)?;
    }
    Ok(())
}

/// What a stored idempotency key means for `job`: a replay of its job (or a mismatch)
/// while it is within its window; `None` when there is no such key or it has expired
/// (the new job then takes it over).
fn stored_key_outcome(
    conn: &Connection,
    job: &NewJob,
    claim: &store::IdempotencyClaim,
) -> Result<Option<SubmitOutcome>> {
    let existing: Option<(Vec<u8>, String, i64)> = conn
        .prepare_cached(
            "select fingerprint, job_id, created_at from idempotency_key where account_id = ?1 and idempotency_key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![job.account_id.to_string(), claim.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(map_err)?;
    let Some((fingerprint, job_id, created_at)) = existing else {
        return Ok(None);
    };
    if created_at < claim.not_before_ms {
        return Ok(None);
    }
    if fingerprint != claim.fingerprint {
        return Ok(Some(SubmitOutcome::IdempotencyMismatch));
    }
    let status: String = conn
        .prepare_cached("select status from job where job_id = ?1")
        .and_then(|mut s| s.query_row([&job_id], |r| r.get(0)))
        .map_err(map_err)?;
    Ok(Some(SubmitOutcome::Replayed {
        job_id: job_id.parse().map_err(|_| StoreError::Internal("bad job id".into()))?,
        status: JobStatus::parse(&status).ok_or_else(|| StoreError::Internal("bad status".into()))?,
    }))
}

/// Inserts a new job's row, QUEUED, created at `created_at_ms`.
fn insert_job_row(conn: &Connection, job: &NewJob, created_at_ms: i64) -> rusqlite::Result<()> {
    let events = job.webhook_events.as_ref().map(|e| e.join(","));
    let webhook_status = job.webhook_url.as_ref().map(|_| "pending");
    conn.prepare_cached(
        "insert into job (job_id, account_id, api_key_id, model, status, progress, credit_cost, webhook_url,
                          webhook_events, webhook_status, input, created_at, updated_at)
         values (?1, ?2, ?3, ?4, 'QUEUED', 0, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
    )?
    .execute(params![
        job.id.to_string(),
        job.account_id.to_string(),
        job.api_key_id.to_string(),
        job.model.as_str(),
        job.cost,
        job.webhook_url,
        events,
        webhook_status,
        job.input_json,
        created_at_ms
    ])?;
    Ok(())
}
