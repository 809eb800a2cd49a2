//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync: measured
//! on the target machine, about 4.5k single-row commits per second but about 37k
//! rows per second when ~100 rows share a commit. So every write in the process goes
//! through one dedicated thread that takes whatever requests have queued up, runs them
//! one after another in a single transaction, commits once, and only then answers each
//! caller. Nothing is acknowledged before the commit that makes it durable has returned.
//!
//! One failing operation must not take its batch-mates down with it. Wrapping each in a
//! SAVEPOINT would allow rolling back just that one, but measured here savepoints more
//! than doubled the pages written per job. Failures are rare (a missing account, a bug),
//! so the batch runs optimistically instead: if any operation fails, the whole
//! transaction is rolled back and the batch is replayed one transaction per operation.
//! That is why operations are `Fn`, not `FnOnce`: a replay calls them again, and a
//! rolled-back run left no trace for the second one to trip over.
//!
//! Submissions, the hot write, take a shorter path ([`crate::journal`],
//! [`crate::accepted`]): the writer decides each one and hands the accepted ones'
//! records to the journal thread, which syncs them and answers, while the writer goes on
//! with the next batch. The accepted jobs are written into SQLite later, many per
//! transaction, and always before any other operation runs, so every other write sees
//! them. Only the process that owns the journal takes submissions.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use store::{NewJob, Result, StoreError, SubmitOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::accepted::Accepted;
use crate::map_err;

/// Upper bound on operations sharing one commit; keeps a single batch's latency bounded.
const MAX_BATCH: usize = 512;
/// Operations waiting for the writer. When full, callers wait (backpressure) instead of
/// queueing without bound in memory.
const QUEUE_CAPACITY: usize = 8192;
/// How long the queue must stay empty before accepted jobs are written to SQLite. Under
/// load the next requests arrive well within it, so the jobs keep gathering (up to
/// [`crate::accepted::WRITE_AT`]); when traffic pauses they reach SQLite at once.
const IDLE_BEFORE_WRITING: Duration = Duration::from_millis(1);
/// After a failed attempt to write accepted jobs (the database busy for longer than its
/// timeout, say), the pause before the next.
const RETRY_WRITING_AFTER: Duration = Duration::from_millis(100);

/// What an operation sees: the connection inside the batch's transaction and the
/// batch's timestamp.
pub(crate) struct WriteCtx<'a> {
    pub conn: &'a Connection,
    /// Unix ms for this batch; never smaller than any earlier batch's, so rows created
    /// later always sort later even if the wall clock steps back.
    pub now_ms: i64,
    /// The writer's operation counter, see [`WriteCtx::next_version`].
    versions: &'a Cell<u64>,
}

impl WriteCtx<'_> {
    /// A number larger than any handed out before. Operations run one at a time on
    /// this thread, so these numbers follow commit order: the job cache uses them to
    /// keep the newest version of a row when two callers put theirs out of order.
    pub fn next_version(&self) -> u64 {
        let v = self.versions.get() + 1;
        self.versions.set(v);
        v
    }
}

/// An operation waiting in the queue: runs (possibly twice, see the module comment) and
/// then answers its caller once with the committed outcome.
trait PendingOp: Send {
    /// Runs the operation; `false` when it failed and its transaction must be rolled back.
    fn run(&mut self, ctx: &WriteCtx<'_>) -> bool;
    /// Answers the caller: the last run's outcome if `commit` succeeded, else the commit error.
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct Op<T, F> {
    f: F,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> PendingOp for Op<T, F>
where
    T: Send,
    F: Fn(&WriteCtx<'_>) -> Result<T> + Send,
{
    fn run(&mut self, ctx: &WriteCtx<'_>) -> bool {
        let outcome = (self.f)(ctx);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let answer = match (commit, self.outcome) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(StoreError::Internal("operation never ran".into())),
        };
        // The caller may have gone away (client disconnected); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

type BoxedOp = Box<dyn PendingOp>;

/// A submission's outcome with the batch time (its `created_at`) and the writer's
/// operation number for the job cache.
pub(crate) type Submitted = (SubmitOutcome, i64, u64);

enum Command {
    Write(BoxedOp),
    /// A submission to decide on the journal path.
    Submit(Arc<NewJob>, oneshot::Sender<Result<Submitted>>),
    /// Write the accepted jobs into SQLite, then answer.
    Settle(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<()>),
    /// Stop at once, leaving accepted jobs in the journal only: what a crash leaves.
    Abandon(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Whether submissions go through the acceptance journal.
    journaled: bool,
    /// Accepted jobs not yet in SQLite; readers settle only when it is non-zero.
    backlog: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer on `conn`; with `accepted`, submissions take the journal path.
    pub(crate) fn start(conn: Connection, accepted: Option<Accepted>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let backlog = Arc::new(AtomicUsize::new(0));
        let journaled = accepted.is_some();
        let shared = backlog.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, accepted, shared))
            .expect("spawning the writer thread only fails when the OS is out of threads");
        Self { tx, thread: std::sync::Mutex::new(Some(thread)), journaled, backlog }
    }

    /// Whether [`submit`](Self::submit) may be used.
    pub(crate) fn journaled(&self) -> bool {
        self.journaled
    }

    /// Decides a submission on the journal path; resolves once it is durable.
    pub(crate) async fn submit(&self, job: Arc<NewJob>) -> Result<Submitted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit(job, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Returns once every submission acknowledged before the call is in SQLite, so a
    /// read that follows sees it. Free while nothing is waiting.
    pub(crate) async fn settle(&self) -> Result<()> {
        if self.backlog.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Settle(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Runs `f` in the next batch and resolves once that batch has committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op: BoxedOp = Box::new(Op { f, outcome: None, reply });
        self.tx.send(Command::Write(op)).await.map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Stops the thread without writing the accepted jobs into SQLite, as a crash
    /// would; for tests of the journal's replay.
    pub(crate) async fn abandon(&self) {
        self.stop(Command::Abandon).await;
    }

    /// Whether the writer thread has stopped taking writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Finishes every queued write, then stops the thread.
    pub(crate) async fn close(&self) {
        self.stop(Command::Close).await;
    }

    /// Sends `command` (a way of stopping) and waits for the thread to end.
    async fn stop(&self, command: fn(oneshot::Sender<()>) -> Command) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(command(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().expect("writer handle lock poisoned").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Command>, mut accepted: Option<Accepted>, backlog: Arc<AtomicUsize>) {
    // Only for waiting on the queue with a timeout while accepted jobs gather.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer-only runtime needs no resources that can run out");
    let mut last_ms = 0i64;
    let versions = Cell::new(0u64);
    let mut ops: Vec<BoxedOp> = Vec::with_capacity(MAX_BATCH);
    let mut submissions: Vec<(Arc<NewJob>, oneshot::Sender<Result<Submitted>>)> = Vec::new();
    let mut settles: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut abandoned: Option<oneshot::Sender<()>> = None;
    let mut write_failed = false;
    loop {
        let waiting = accepted.as_ref().is_some_and(|a| !a.is_empty());
        let first = if waiting {
            let pause = if write_failed { RETRY_WRITING_AFTER } else { IDLE_BEFORE_WRITING };
            match timer.block_on(async { tokio::time::timeout(pause, rx.recv()).await }) {
                Ok(command) => command,
                Err(_idle) => {
                    last_ms = last_ms.max(wall_clock_ms());
                    let ctx = WriteCtx { conn: &conn, now_ms: last_ms, versions: &versions };
                    write_failed = write_accepted(&ctx, accepted.as_mut(), &backlog).is_err();
                    continue;
                }
            }
        } else {
            rx.blocking_recv()
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next.take() {
            taken += 1;
            match command {
                Command::Write(op) => ops.push(op),
                Command::Submit(job, reply) => submissions.push((job, reply)),
                Command::Settle(reply) => settles.push(reply),
                Command::Close(done) => closing = Some(done),
                Command::Abandon(done) => abandoned = Some(done),
            }
            if abandoned.is_some() {
                break;
            }
            if closing.is_none() && taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if abandoned.is_some() {
            break;
        }
        last_ms = last_ms.max(wall_clock_ms());
        let ctx = WriteCtx { conn: &conn, now_ms: last_ms, versions: &versions };
        if let Some(accepted) = accepted.as_mut() {
            decide_submissions(&ctx, accepted, &mut submissions, &backlog);
        } else {
            // `SqliteStore` refuses submissions itself when it does not own the journal.
            for (_, reply) in submissions.drain(..) {
                let _ = reply.send(Err(StoreError::Internal("submission sent to a writer without a journal".into())));
            }
        }
        let write_now =
            !ops.is_empty() || !settles.is_empty() || closing.is_some() || accepted.as_ref().is_some_and(Accepted::due);
        if write_now {
            commit_batch(&ctx, &mut ops, accepted.as_mut());
            // Writes what a failed operation rolled back with it, and updates the backlog
            // either way.
            let _ = write_accepted(&ctx, accepted.as_mut(), &backlog);
            let written = accepted.as_ref().is_none_or(Accepted::is_empty);
            write_failed = !written;
            for reply in settles.drain(..) {
                let _ = reply.send(if written {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable("accepted jobs could not be written to the database yet".into()))
                });
            }
        }
        if closing.is_some() {
            break;
        }
    }
    if closing.is_none() && abandoned.is_none() {
        // The handle was dropped without `close`: still move what was accepted.
        last_ms = last_ms.max(wall_clock_ms());
        let ctx = WriteCtx { conn: &conn, now_ms: last_ms, versions: &versions };
        let _ = write_accepted(&ctx, accepted.as_mut(), &backlog);
    }
    drop(accepted);
    drop(conn);
    for done in closing.into_iter().chain(abandoned) {
        let _ = done.send(());
    }
}

/// Decides the batch's submissions and hands them to the journal thread, which answers
/// them once their records are on disk.
fn decide_submissions(
    ctx: &WriteCtx<'_>,
    accepted: &mut Accepted,
    submissions: &mut Vec<(Arc<NewJob>, oneshot::Sender<Result<Submitted>>)>,
    backlog: &AtomicUsize,
) {
    if submissions.is_empty() {
        return;
    }
    // One read transaction for the whole batch: each statement outside one would take
    // and release SQLite's shared-memory read lock (two `fcntl` calls) on its own.
    let in_read = ctx.conn.execute_batch("begin").is_ok();
    let decided: Vec<_> = submissions
        .drain(..)
        .map(|(job, reply)| {
            let outcome = accepted.decide(ctx, &job).map(|o| (o, ctx.now_ms, ctx.next_version()));
            (outcome, reply)
        })
        .collect();
    if in_read {
        let _ = ctx.conn.execute_batch("commit");
    }
    // Counted before anyone is answered, so a read after an answer knows to settle.
    backlog.store(accepted.len(), Ordering::Release);
    accepted.answer_after_sync(Box::new(move |failed| {
        for (outcome, reply) in decided {
            let answer = match (failed, outcome) {
                (Some(e), Ok((SubmitOutcome::Created { .. }, ..))) => Err(StoreError::Unavailable(e.to_string())),
                (_, outcome) => outcome,
            };
            // The caller may have gone away; the job stands regardless.
            let _ = reply.send(answer);
        }
    }));
}

/// Writes the accepted jobs still waiting (if any) into SQLite in a transaction of
/// their own, and publishes how many are left for readers to settle on.
fn write_accepted(ctx: &WriteCtx<'_>, accepted: Option<&mut Accepted>, backlog: &AtomicUsize) -> Result<()> {
    let Some(accepted) = accepted else { return Ok(()) };
    if accepted.is_empty() {
        // Possibly written by the operations' transaction just before.
        backlog.store(0, Ordering::Release);
        return Ok(());
    }
    match run_in_transaction(ctx, &mut [], Some(&mut *accepted)) {
        Ok(_) => {
            backlog.store(accepted.len(), Ordering::Release);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = accepted.len(), "could not write accepted jobs to the database; will retry");
            Err(e)
        }
    }
}

/// Runs the batch's operations in one transaction, after writing the accepted jobs.
fn commit_batch(ctx: &WriteCtx<'_>, batch: &mut Vec<BoxedOp>, mut accepted: Option<&mut Accepted>) {
    let size = batch.len();
    match run_in_transaction(ctx, batch, accepted.as_deref_mut()) {
        Ok(true) => {
            for op in batch.drain(..) {
                op.finish(Ok(()));
            }
        }
        Ok(false) => {
            tracing::debug!(batch.size = size, "an operation failed; replaying the batch one by one");
            for mut op in batch.drain(..) {
                let single = std::slice::from_mut(&mut op);
                let commit = run_in_transaction(ctx, single, accepted.as_deref_mut()).map(|_| ());
                op.finish(commit);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch.size = size, "group commit failed; the whole batch is rolled back");
            for op in batch.drain(..) {
                op.finish(Err(StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

/// Runs `ops` in one transaction. `Ok(true)`: all succeeded and are committed.
/// `Ok(false)`: one failed and everything was rolled back (for a single op, its own
/// error is kept in its outcome). `Err`: the transaction itself could not begin or commit.
///
/// Accepted jobs are written first, so the operations see them; they are forgotten (and
/// the journal emptied) only once the commit holding them has returned.
fn run_in_transaction(ctx: &WriteCtx<'_>, ops: &mut [BoxedOp], accepted: Option<&mut Accepted>) -> Result<bool> {
    ctx.conn.execute_batch("begin immediate").map_err(map_err)?;
    let accepted = accepted.filter(|a| !a.is_empty());
    if let Some(accepted) = &accepted {
        if let Err(e) = accepted.write_into(ctx.conn, ctx.now_ms) {
            let _ = ctx.conn.execute_batch("rollback");
            return Err(e);
        }
    }
    for op in ops.iter_mut() {
        if !op.run(ctx) {
            ctx.conn.execute_batch("rollback").map_err(map_err)?;
            // A single failed op is answered with its own error: report "committed" so
            // `finish` passes that error through.
            return if ops.len() == 1 { Ok(true) } else { Ok(false) };
        }
    }
    if let Err(e) = ctx.conn.execute_batch("commit") {
        let _ = ctx.conn.execute_batch("rollback");
        return Err(map_err(e));
    }
    if let Some(accepted) = accepted {
        accepted.written();
    }
    Ok(true)
}

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
