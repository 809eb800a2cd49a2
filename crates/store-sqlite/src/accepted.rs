//! Submissions accepted ahead of SQLite: decided and journaled by the acceptor thread
//! ([`crate::acceptor`]), answered, and written into SQLite by the writer thread a
//! little later, many per transaction.
//!
//! The acceptor decides a submission as one-at-a-time submissions would, against what
//! SQLite holds plus the jobs accepted but not yet written there ([`Accepted`]): an
//! idempotency key held by such a job replays it, and their costs count against the
//! balance. Only accepted jobs lower balances, so "SQLite's balance minus what is
//! accepted and not yet written" is exactly what one-at-a-time submissions would have
//! seen; a grant from another process only raises SQLite's side.
//!
//! The acceptor reads SQLite on a connection of its own while the writer writes, so
//! "not yet written" must be judged against the snapshot the acceptor reads. Each
//! transaction that writes accepted jobs also stores its sequence number in the
//! `accepted_write` row; the acceptor reads that number in the same snapshot as the
//! balances, and counts the jobs of a transaction as written exactly when the snapshot
//! holds its number. Whoever changes this state holds its lock, and the acceptor holds
//! it from its snapshot to its last decision, so jobs never vanish from the pending
//! side between the two.
//!
//! The writer takes the accepted jobs ([`Accepted::take`]): all of them, at once, which
//! seals the journal segment their records went to, so that later records go to the
//! other segment. Once the transaction holding them has committed
//! ([`Accepted::written`]), they are forgotten and their segment is emptied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use domain::{AccountId, JobId, JobStatus};
use rusqlite::{params, Connection, OptionalExtension};
use store::{LedgerKind, NewJob, Result, StoreError, SubmitOutcome};

use crate::acceptor::WrittenSignal;
use crate::journal::{encode_record, Journal, Record, SEGMENTS};
use crate::map_err;

/// Accepted jobs gathered before the writer writes them into SQLite. Decisions do not
/// wait for these writes, so fewer, larger transactions cost nothing on the submission
/// path; but other writes (and reads that settle) wait behind one, at roughly 15 µs a
/// job here, so 1024 is about 15 ms. Measured here, writing every 20 ms or 256 jobs
/// instead gave about 0.8x the submissions per second.
pub(crate) const WRITE_AT: usize = 1024;
/// The longest an accepted job waits for SQLite when nobody asks for it sooner (a read
/// or any other write makes the writer write the accepted jobs first).
pub(crate) const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The most the accepted jobs not yet in SQLite may hold, counted as the size of their
/// journal records (which is about what they take in memory, too). Normally they hold
/// [`WRITE_AT`] jobs or [`MAX_WAIT`]'s worth at most, a few hundred KiB of typical
/// requests; this is reached only when the writer cannot write them (another process
/// holding the database's write lock past its busy timeout, a full disk). Past it,
/// submissions are refused as unavailable (503 with Retry-After) until the writer
/// catches up, instead of gathering in memory and in the journal without bound. 32 MiB
/// is about 80k typical jobs, or 32 that carry a 1 MiB inline image each.
pub(crate) const MAX_UNWRITTEN_BYTES: usize = 32 << 20;

/// An accepted job and when it was accepted (its `created_at`).
type AcceptedJob = (Arc<NewJob>, i64);

/// The jobs accepted and journaled but not yet known to be in SQLite, in acceptance
/// order, shared by the acceptor and the writer behind a lock.
pub(crate) struct Accepted {
    /// Per segment, the generation its records are written in.
    generations: [u64; SEGMENTS],
    /// Segments whose jobs are all in SQLite, to be emptied before their next record.
    to_empty: [bool; SEGMENTS],
    /// The journal once the acceptor has stopped (it owns it before): emptied here.
    parked: Option<Journal>,
    /// Wakes the acceptor to empty segments while it owns the journal.
    signal: Option<WrittenSignal>,
    /// The segment new records go to.
    segment: usize,
    /// Records of jobs decided since the acceptor last took them.
    unsent: Vec<u8>,
    jobs: Vec<AcceptedJob>,
    /// The summed size of `jobs`' journal records (see [`MAX_UNWRITTEN_BYTES`]).
    bytes: usize,
    /// Per account, the summed cost of `jobs`.
    debits: HashMap<AccountId, i64>,
    /// Idempotency keys taken by `jobs`: `(account, key)` to the job, its body's
    /// fingerprint and when it was accepted.
    keys: HashMap<(AccountId, String), (JobId, [u8; 32], i64)>,
    /// When the oldest job not yet taken by the writer was accepted.
    since: Option<Instant>,
    /// The jobs the writer took and is writing, a prefix of `jobs`.
    taken: Option<Taken>,
    /// The sequence number of the next transaction that writes accepted jobs.
    next_seq: u64,
    /// How many jobs are accepted and not yet written; readers settle only when it is
    /// non-zero.
    backlog: Arc<AtomicUsize>,
}

/// Jobs the writer took, and what they owe per account.
struct Taken {
    seq: u64,
    count: usize,
    segment: usize,
    bytes: usize,
    debits: HashMap<AccountId, i64>,
}

/// What the writer writes in one transaction ([`write_batch`]).
pub(crate) struct Batch {
    seq: u64,
    jobs: Vec<AcceptedJob>,
    debits: Vec<(AccountId, i64)>,
}

impl Accepted {
    /// The state for a journal just emptied, when SQLite's `accepted_write` holds
    /// `written_seq`.
    pub(crate) fn new(journal: &Journal, written_seq: u64, backlog: Arc<AtomicUsize>) -> Self {
        let generations = std::array::from_fn(|segment| journal.generation(segment));
        Self {
            generations,
            to_empty: [false; SEGMENTS],
            parked: None,
            signal: None,
            segment: 0,
            unsent: Vec::new(),
            jobs: Vec::new(),
            bytes: 0,
            debits: HashMap::new(),
            keys: HashMap::new(),
            since: None,
            taken: None,
            next_seq: written_seq + 1,
            backlog,
        }
    }

    /// Jobs accepted and not yet taken by the writer.
    pub(crate) fn untaken(&self) -> usize {
        self.jobs.len() - self.taken.as_ref().map_or(0, |t| t.count)
    }

    /// Whether nothing waits to be written (nor is being written).
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether the writer took jobs it has not written yet: between its take and its
    /// commit, or after a transaction that failed.
    pub(crate) fn has_taken(&self) -> bool {
        self.taken.is_some()
    }

    /// When the writer should write the untaken jobs even if nobody asks: `None` while
    /// there are none, else after [`MAX_WAIT`] (zero once [`WRITE_AT`] have gathered).
    pub(crate) fn write_in(&self) -> Option<std::time::Duration> {
        let since = self.since?;
        if self.untaken() >= WRITE_AT {
            return Some(std::time::Duration::ZERO);
        }
        Some(MAX_WAIT.saturating_sub(since.elapsed()))
    }

    /// Decides one submission (see the module comment) on `conn`, inside a read
    /// transaction in which `accepted_write` held `snapshot_seq`. A created job's record
    /// goes to the journal with the batch ([`journal_work`](Self::journal_work)).
    pub(crate) fn decide(
        &mut self,
        conn: &Connection,
        snapshot_seq: u64,
        now_ms: i64,
        job: &Arc<NewJob>,
    ) -> Result<SubmitOutcome> {
        if let Some(claim) = &job.idempotency {
            // A taken batch this snapshot already holds may have been touched by the
            // operations that shared its transaction (an engine claim): SQLite's row,
            // not the accepted copy, has the job's current status.
            if self.taken_written_in(snapshot_seq).is_some() {
                if let Some(outcome) = stored_key_outcome(conn, job, claim)? {
                    return Ok(outcome);
                }
            }
            match self.keys.get(&(job.account_id, claim.key.clone())) {
                Some((holder, fingerprint, accepted_at)) if *accepted_at >= claim.not_before_ms => {
                    return Ok(if *fingerprint == claim.fingerprint {
                        // Not in SQLite in this snapshot, so nothing has touched it yet.
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
        // Checked after the replays above: a client retrying an accepted job still
        // learns its id while new work is refused.
        if self.bytes >= MAX_UNWRITTEN_BYTES {
            return Err(StoreError::Unavailable(format!(
                "{} accepted submissions are waiting to be written into the database; retry shortly",
                self.jobs.len()
            )));
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
        let available = credits - self.pending_debit(job.account_id, snapshot_seq);
        if available < job.cost {
            return Ok(SubmitOutcome::InsufficientCredits { required: job.cost, available: available.max(0) });
        }
        let unsent_before = self.unsent.len();
        encode_record(job, now_ms, self.generations[self.segment], &mut self.unsent);
        self.bytes += self.unsent.len() - unsent_before;
        *self.debits.entry(job.account_id).or_insert(0) += job.cost;
        if let Some(claim) = &job.idempotency {
            self.keys.insert((job.account_id, claim.key.clone()), (job.id, claim.fingerprint, now_ms));
        }
        self.jobs.push((job.clone(), now_ms));
        self.since.get_or_insert_with(Instant::now);
        Ok(SubmitOutcome::Created { job_id: job.id, status: JobStatus::Queued })
    }

    /// The taken batch, if a snapshot in which `accepted_write` held `snapshot_seq`
    /// already holds the transaction that wrote it (the rule of the module comment).
    fn taken_written_in(&self, snapshot_seq: u64) -> Option<&Taken> {
        self.taken.as_ref().filter(|taken| taken.seq <= snapshot_seq)
    }

    /// What the account's accepted jobs owe beyond the balance a snapshot holding
    /// `snapshot_seq` shows: a taken batch whose transaction the snapshot already holds
    /// is paid for there.
    fn pending_debit(&self, account: AccountId, snapshot_seq: u64) -> i64 {
        let all = self.debits.get(&account).copied().unwrap_or(0);
        let written = self.taken_written_in(snapshot_seq).and_then(|taken| taken.debits.get(&account).copied());
        all - written.unwrap_or(0)
    }

    /// What the acceptor must write to the journal now, in this order: the segments to
    /// empty, then the records decided since the last call, for `segment`. Taken under
    /// this state's lock, so a segment is always emptied before records of its new
    /// generation are written.
    pub(crate) fn journal_work(&mut self) -> JournalWork {
        let empty = (0..SEGMENTS).filter(|s| std::mem::take(&mut self.to_empty[*s])).map(|s| (s, self.generations[s]));
        let empty = empty.collect();
        // Counted before anyone is answered, so a read after an answer knows to settle.
        self.backlog.store(self.jobs.len(), Ordering::Release);
        JournalWork { empty, segment: self.segment, records: std::mem::take(&mut self.unsent) }
    }

    /// Where [`written`](Self::written) tells the acceptor to empty a segment.
    pub(crate) fn signal_written_to(&mut self, signal: WrittenSignal) {
        self.signal = Some(signal);
    }

    /// The acceptor stopped: from now on, segments are emptied here, as soon as their
    /// jobs are written.
    pub(crate) fn park_journal(&mut self, mut journal: Journal) {
        let work = self.journal_work();
        if let Err(e) = work.apply(&mut journal) {
            tracing::warn!(error = %e, "could not empty the acceptance journal; its records replay at the next start");
        }
        self.parked = Some(journal);
    }

    /// The jobs for the writer's next transaction: the batch it took before if that one
    /// has not committed yet, else every job not taken, which seals their journal
    /// segment. `None` when there is nothing to write.
    pub(crate) fn take(&mut self) -> Option<Batch> {
        if self.taken.is_none() {
            if self.jobs.is_empty() {
                return None;
            }
            // Every job is taken, so the batch owes (and weighs) what all of them do.
            let debits = self.debits.clone();
            let (seq, count, segment, bytes) = (self.next_seq, self.jobs.len(), self.segment, self.bytes);
            self.taken = Some(Taken { seq, count, segment, bytes, debits });
            // Later records go to the other segment, which the last `written` emptied.
            self.segment = (self.segment + 1) % SEGMENTS;
            self.since = None;
        }
        let taken = self.taken.as_ref().expect("set above");
        Some(Batch {
            seq: taken.seq,
            jobs: self.jobs[..taken.count].to_vec(),
            debits: taken.debits.iter().map(|(account, total)| (*account, *total)).collect(),
        })
    }

    /// The transaction holding the taken batch has committed: forget its jobs and empty
    /// their segment.
    pub(crate) fn written(&mut self) {
        let Some(taken) = self.taken.take() else { return };
        self.bytes -= taken.bytes;
        for (account, paid) in &taken.debits {
            if let Some(debit) = self.debits.get_mut(account) {
                *debit -= paid;
                if *debit == 0 {
                    self.debits.remove(account);
                }
            }
        }
        for (job, _) in self.jobs.drain(..taken.count) {
            if let Some(claim) = &job.idempotency {
                let slot = (job.account_id, claim.key.clone());
                if self.keys.get(&slot).is_some_and(|(holder, ..)| *holder == job.id) {
                    self.keys.remove(&slot);
                }
            }
        }
        self.next_seq = taken.seq + 1;
        self.generations[taken.segment] += 1;
        self.to_empty[taken.segment] = true;
        self.backlog.store(self.jobs.len(), Ordering::Release);
        match (self.parked.take(), &self.signal) {
            (Some(journal), _) => self.park_journal(journal),
            (None, Some(signal)) => signal.send(),
            (None, None) => {}
        }
    }
}

/// Locks the shared state, for the acceptor and the writer alike. Only a panic (a bug)
/// poisons the lock; the other thread carries on rather than refusing every submission
/// and write from then on.
pub(crate) fn lock(accepted: &Mutex<Accepted>) -> MutexGuard<'_, Accepted> {
    accepted.lock().unwrap_or_else(|p| p.into_inner())
}

/// Journal writes the acceptor owes ([`Accepted::journal_work`]).
pub(crate) struct JournalWork {
    empty: Vec<(usize, u64)>,
    segment: usize,
    records: Vec<u8>,
}

impl JournalWork {
    /// Empties and writes, noting in `touched` the segments to sync.
    pub(crate) fn write(self, journal: &mut Journal, touched: &mut [bool; SEGMENTS]) -> std::io::Result<()> {
        for (segment, generation) in self.empty {
            journal.empty(segment, generation)?;
            touched[segment] = true;
        }
        if !self.records.is_empty() {
            journal.append(self.segment, &self.records)?;
            touched[self.segment] = true;
        }
        Ok(())
    }

    /// Empties, writes and syncs; returns once all of it is on disk.
    pub(crate) fn apply(self, journal: &mut Journal) -> std::io::Result<()> {
        let mut touched = [false; SEGMENTS];
        self.write(journal, &mut touched)?;
        sync_touched(journal, &touched)
    }
}

/// Syncs the segments written since their last sync.
pub(crate) fn sync_touched(journal: &mut Journal, touched: &[bool; SEGMENTS]) -> std::io::Result<()> {
    for segment in (0..SEGMENTS).filter(|s| touched[*s]) {
        journal.sync(segment)?;
    }
    Ok(())
}

/// The sequence number of the last transaction that wrote accepted jobs, as the
/// connection's current snapshot (or transaction) sees it.
pub(crate) fn written_seq(conn: &Connection) -> Result<u64> {
    conn.prepare_cached("select seq from accepted_write")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|seq| seq as u64)
        .map_err(map_err)
}

/// Writes `batch` inside the caller's transaction: one debit per account, each job
/// with its charge and key, and the batch's sequence number.
pub(crate) fn write_batch(conn: &Connection, batch: &Batch, now_ms: i64) -> Result<()> {
    for (account, total) in &batch.debits {
        debit(conn, *account, *total, now_ms)?;
    }
    for (job, created_at_ms) in &batch.jobs {
        insert_rows(conn, job, *created_at_ms)?;
    }
    conn.prepare_cached("update accepted_write set seq = ?1")
        .and_then(|mut s| s.execute([batch.seq as i64]))
        .map_err(map_err)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use store::Store;
    use store_contract::support;

    use super::*;
    use crate::{journal, open_connection, SqliteStore};

    /// Both directions of the sequence-number rule, stepped by hand: a snapshot taken
    /// before the writer's transaction commits must still count the taken batch as
    /// owed (or a balance could be spent twice), and one taken after must not count it
    /// again (or affordable submissions would be refused), even before the writer has
    /// called `written`.
    #[tokio::test]
    async fn a_taken_batch_is_owed_exactly_until_the_snapshot_holds_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).unwrap();
        let key = support::account(&store, 100, 1).await;
        store.close().await;
        drop(store);

        let writer = open_connection(&path, false).unwrap();
        let reader = open_connection(&path, true).unwrap();
        let (journal, _) = journal::Journal::open(&journal::path_for(&path)).unwrap().expect("the journal is free");
        let mut accepted = Accepted::new(&journal, written_seq(&writer).unwrap(), Arc::new(AtomicUsize::new(0)));
        let decide = |accepted: &mut Accepted, seq: u64, cost: i64| {
            accepted.decide(&reader, seq, 1, &Arc::new(support::job(&key, cost))).unwrap()
        };
        let created = |outcome: &SubmitOutcome| matches!(outcome, SubmitOutcome::Created { .. });
        let refused_with = |available| SubmitOutcome::InsufficientCredits { required: 30, available };

        reader.execute_batch("begin").unwrap();
        let seq = written_seq(&reader).unwrap();
        assert!(created(&decide(&mut accepted, seq, 30)) && created(&decide(&mut accepted, seq, 30)));
        reader.execute_batch("commit").unwrap();
        let batch = accepted.take().expect("two jobs to write");

        // A snapshot from before the writer's commit: balance 100, the batch's 60 owed.
        reader.execute_batch("begin").unwrap();
        let before = written_seq(&reader).unwrap();
        writer.execute_batch("begin immediate").unwrap();
        write_batch(&writer, &batch, 2).unwrap();
        writer.execute_batch("commit").unwrap();
        assert!(created(&decide(&mut accepted, before, 30)), "100 - 60 leaves 40");
        assert_eq!(decide(&mut accepted, before, 30), refused_with(10), "the taken batch still counts");
        reader.execute_batch("commit").unwrap();

        // A snapshot holding the commit (`written` not called yet): balance 40, and only
        // the job accepted since the take is owed.
        reader.execute_batch("begin").unwrap();
        let after = written_seq(&reader).unwrap();
        assert_eq!((before, after), (seq, seq + 1));
        assert_eq!(decide(&mut accepted, after, 30), refused_with(10), "40 - 30 leaves 10, not less");
        let ten = SubmitOutcome::InsufficientCredits { required: 11, available: 10 };
        assert_eq!(decide(&mut accepted, after, 11), ten);
        assert!(created(&decide(&mut accepted, after, 10)), "the last 10 credits can be spent");
        reader.execute_batch("commit").unwrap();

        accepted.written();
        let last = SubmitOutcome::InsufficientCredits { required: 1, available: 0 };
        assert_eq!(decide(&mut accepted, after, 1), last, "every credit is spent exactly once");
    }
}
