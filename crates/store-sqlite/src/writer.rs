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
//! Submissions, the hot write, take a shorter path ([`crate::acceptor`],
//! [`crate::journal`], [`crate::accepted`]): the acceptor thread decides them, makes the
//! accepted ones durable in the journal and answers. This thread writes the
//! accepted jobs into SQLite later, many per transaction, and always before any other
//! operation runs, so every other write sees them. Only the process that owns the
//! journal takes submissions.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use store::{NewJob, Result, StoreError, SubmitOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::accepted::{self, lock, Accepted};
use crate::acceptor::Acceptor;
use crate::journal::Journal;
use crate::map_err;

/// Upper bound on operations sharing one commit; keeps a single batch's latency bounded.
const MAX_BATCH: usize = 512;
/// Operations waiting for the writer. When full, callers wait (backpressure) instead of
/// queueing without bound in memory.
const QUEUE_CAPACITY: usize = 8192;
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
    clock: &'a Clock,
}

impl WriteCtx<'_> {
    /// See [`Clock::next_version`].
    pub fn next_version(&self) -> u64 {
        self.clock.next_version()
    }
}

/// Time and operation numbers shared by the writer and the acceptor.
#[derive(Default)]
pub(crate) struct Clock {
    last_ms: AtomicI64,
    versions: AtomicU64,
}

impl Clock {
    /// Unix ms, never smaller than any returned before, so rows created later always
    /// sort later even if the wall clock steps back.
    pub(crate) fn now_ms(&self) -> i64 {
        let wall = wall_clock_ms();
        self.last_ms.fetch_max(wall, Ordering::AcqRel).max(wall)
    }

    /// A number larger than any handed out before. A job's operations reach the store
    /// one after another (its submission is decided before anything can touch it, and
    /// the writer runs the rest in commit order), so for one job these numbers follow
    /// commit order: the job cache uses them to keep the newest version of a row when
    /// two callers put theirs out of order.
    pub(crate) fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// An operation waiting in the queue: runs (possibly twice, see the module comment) and
/// then answers its caller once with the committed outcome.
pub(crate) trait PendingOp: Send {
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

pub(crate) enum Command {
    Write(BoxedOp),
    /// From the acceptor: jobs have been accepted (see [`Accepted::write_in`]).
    Accepted,
    /// Write the accepted jobs into SQLite, then answer.
    Settle(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<()>),
    /// Stop at once, leaving accepted jobs in the journal only: what a crash leaves.
    Abandon(oneshot::Sender<()>),
}

/// What the owner of the acceptance journal runs besides the writer.
pub(crate) struct Journaled {
    pub journal: Journal,
    pub accepted: Accepted,
    /// A read connection for the acceptor.
    pub acceptor_conn: Connection,
}

/// Handle to the writer thread (and, when submissions are taken, the acceptor thread).
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Present when submissions go through the acceptance journal.
    acceptor: Option<Acceptor>,
    /// Accepted jobs not yet in SQLite; readers settle only when it is non-zero.
    backlog: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer on `conn`; with `journaled`, the acceptor too, and submissions
    /// take the journal path.
    pub(crate) fn start(conn: Connection, journaled: Option<Journaled>, backlog: Arc<AtomicUsize>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let clock = Arc::new(Clock::default());
        let (accepted, acceptor) = match journaled {
            Some(Journaled { journal, accepted, acceptor_conn }) => {
                let accepted = Arc::new(Mutex::new(accepted));
                let acceptor = Acceptor::start(acceptor_conn, journal, accepted.clone(), clock.clone(), tx.clone());
                lock(&accepted).signal_written_to(acceptor.written_signal());
                (Some(accepted), Some(acceptor))
            }
            None => (None, None),
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, accepted, &clock))
            .expect("spawning the writer thread only fails when the OS is out of threads");
        Self { tx, thread: Mutex::new(Some(thread)), acceptor, backlog }
    }

    /// Whether [`submit`](Self::submit) may be used.
    pub(crate) fn journaled(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Decides a submission on the journal path; resolves once it is durable.
    pub(crate) async fn submit(&self, job: Arc<NewJob>) -> Result<Submitted> {
        match &self.acceptor {
            Some(acceptor) => acceptor.submit(job).await,
            None => Err(StoreError::Internal("submission sent to a store without a journal".into())),
        }
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

    /// Stops the threads without writing the accepted jobs into SQLite, as a crash
    /// would; for tests of the journal's replay.
    pub(crate) async fn abandon(&self) {
        if let Some(acceptor) = &self.acceptor {
            acceptor.abandon().await;
        }
        self.stop(Command::Abandon).await;
    }

    /// Whether the writer thread has stopped taking writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Decides every queued submission and finishes every queued write (the accepted
    /// jobs included), then stops the threads.
    pub(crate) async fn close(&self) {
        if let Some(acceptor) = &self.acceptor {
            acceptor.stop().await;
        }
        self.stop(Command::Close).await;
    }

    /// Sends `command` (a way of stopping) and waits for the thread to end.
    async fn stop(&self, command: fn(oneshot::Sender<()>) -> Command) {
        stop_thread(&self.tx, command, &self.thread).await;
    }
}

/// Sends `request` (a way of stopping, answered when the thread has done what it
/// asks) into a thread's queue, waits for the answer, then for the thread to end.
pub(crate) async fn stop_thread<R>(
    queue: &mpsc::Sender<R>,
    request: fn(oneshot::Sender<()>) -> R,
    thread: &Mutex<Option<JoinHandle<()>>>,
) {
    let (tx, rx) = oneshot::channel();
    if queue.send(request(tx)).await.is_ok() {
        let _ = rx.await;
    }
    let handle = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(handle) = handle {
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Command>, accepted: Option<Arc<Mutex<Accepted>>>, clock: &Clock) {
    // Only for waiting on the queue with a timeout while accepted jobs gather.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer-only runtime needs no resources that can run out");
    let accepted = accepted.as_deref();
    let mut ops: Vec<BoxedOp> = Vec::with_capacity(MAX_BATCH);
    let mut settles: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut abandoned: Option<oneshot::Sender<()>> = None;
    let mut write_failed = false;
    loop {
        let write_in = accepted.and_then(|a| lock(a).write_in());
        let pause = if write_failed { Some(RETRY_WRITING_AFTER) } else { write_in };
        let first = match pause {
            Some(pause) => match timer.block_on(async { tokio::time::timeout(pause, rx.recv()).await }) {
                Ok(command) => command,
                Err(_due) => {
                    let ctx = WriteCtx { conn: &conn, now_ms: clock.now_ms(), clock };
                    write_failed = write_accepted(&ctx, accepted).is_err();
                    continue;
                }
            },
            None => rx.blocking_recv(),
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next.take() {
            taken += 1;
            match command {
                Command::Write(op) => ops.push(op),
                Command::Accepted => {}
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
        let ctx = WriteCtx { conn: &conn, now_ms: clock.now_ms(), clock };
        let due = accepted.is_some_and(|a| lock(a).write_in() == Some(Duration::ZERO));
        if !ops.is_empty() || !settles.is_empty() || closing.is_some() || due {
            // Every accepted job acknowledged so far goes into SQLite first: a batch an
            // earlier attempt failed to write in a transaction of its own, the rest in
            // the operations' transaction.
            let retried = match accepted {
                Some(a) if lock(a).has_taken() => write_accepted(&ctx, Some(a)),
                _ => Ok(()),
            };
            match retried {
                Ok(()) => commit_batch(&ctx, &mut ops, accepted),
                Err(e) => {
                    for op in ops.drain(..) {
                        op.finish(Err(StoreError::Unavailable(format!(
                            "accepted submissions could not be written to the database first: {e}"
                        ))));
                    }
                }
            }
            let written = accepted.is_none_or(|a| !lock(a).has_taken());
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
    if abandoned.is_none() {
        // Closing, or the handle was dropped without `close` (the acceptor is gone too,
        // it held a sender of this queue): still move everything accepted.
        let ctx = WriteCtx { conn: &conn, now_ms: clock.now_ms(), clock };
        while accepted.is_some_and(|a| !lock(a).is_empty()) {
            if write_accepted(&ctx, accepted).is_err() {
                break;
            }
        }
    }
    drop(conn);
    for done in closing.into_iter().chain(abandoned) {
        let _ = done.send(());
    }
}

/// Writes the accepted jobs (if any) into SQLite in a transaction of their own.
fn write_accepted(ctx: &WriteCtx<'_>, accepted: Option<&Mutex<Accepted>>) -> Result<()> {
    if accepted.is_none_or(|a| lock(a).is_empty()) {
        return Ok(());
    }
    match run_in_transaction(ctx, &mut [], accepted) {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "could not write accepted jobs to the database; will retry");
            Err(e)
        }
    }
}

/// Runs the batch's operations in one transaction, after writing the accepted jobs.
fn commit_batch(ctx: &WriteCtx<'_>, batch: &mut Vec<BoxedOp>, accepted: Option<&Mutex<Accepted>>) {
    let size = batch.len();
    match run_in_transaction(ctx, batch, accepted) {
        Ok(true) => {
            for op in batch.drain(..) {
                op.finish(Ok(()));
            }
        }
        Ok(false) => {
            tracing::debug!(batch.size = size, "an operation failed; replaying the batch one by one");
            for mut op in batch.drain(..) {
                let single = std::slice::from_mut(&mut op);
                let commit = run_in_transaction(ctx, single, accepted).map(|_| ());
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
/// The accepted jobs the writer takes ([`Accepted::take`]) are written first, so the
/// operations see them; they are forgotten (and their journal segment emptied) only
/// once the commit holding them has returned. The lock on them is not held meanwhile:
/// the acceptor goes on deciding.
fn run_in_transaction(ctx: &WriteCtx<'_>, ops: &mut [BoxedOp], accepted: Option<&Mutex<Accepted>>) -> Result<bool> {
    let batch = accepted.and_then(|a| lock(a).take());
    if ops.is_empty() && batch.is_none() {
        return Ok(true);
    }
    ctx.conn.execute_batch("begin immediate").map_err(map_err)?;
    if let Some(batch) = &batch {
        if let Err(e) = accepted::write_batch(ctx.conn, batch, ctx.now_ms) {
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
    if let (Some(accepted), Some(_)) = (accepted, batch) {
        lock(accepted).written();
    }
    Ok(true)
}

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
