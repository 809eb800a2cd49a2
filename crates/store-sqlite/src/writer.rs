//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync: measured
//! on the target machine, about 4.5k single-row commits per second but about 37k
//! rows per second when ~100 rows share a commit. So every write in the process goes
//! through one dedicated thread that takes whatever requests have queued up, runs them
//! one after another in a single transaction, commits once (`synchronous = FULL`), and
//! only then answers each caller. Nothing is acknowledged before the commit that makes
//! it durable has returned.
//!
//! Submissions, the hot write, join the same transaction: the submissions waiting when
//! a batch starts are decided together, by the decider the store hands to
//! [`Writer::start`], against that transaction's own view, so every balance and key it
//! reads is the one the commit will hold. (The decider is passed in rather than named
//! here so that this module depends on no store logic.)
//!
//! One failing operation must not take its batch-mates down with it. Wrapping each in a
//! SAVEPOINT would allow rolling back just that one, but measured here savepoints more
//! than doubled the pages written per job. Failures are rare (a missing account, a bug),
//! so the batch runs optimistically instead: if any operation fails, the whole
//! transaction is rolled back and the batch is replayed one transaction per operation.
//! That is why operations are `Fn`, not `FnOnce`: a replay calls them again, and a
//! rolled-back run left no trace for the second one to trip over.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use store::{NewJob, Result, StoreError, SubmitOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::db::{map_err, wall_clock_ms};

/// Upper bound on operations (a batch's submissions count one each) sharing one commit;
/// keeps a single batch's latency bounded.
const MAX_BATCH: usize = 512;
/// Operations waiting for the writer. When full, callers wait (backpressure) instead of
/// queueing without bound in memory.
const QUEUE_CAPACITY: usize = 8192;

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

/// The writer's time and operation numbers.
#[derive(Default)]
struct Clock {
    last_ms: AtomicI64,
    versions: AtomicU64,
}

impl Clock {
    /// Unix ms, never smaller than any returned before.
    fn now_ms(&self) -> i64 {
        let wall = wall_clock_ms();
        self.last_ms.fetch_max(wall, Ordering::AcqRel).max(wall)
    }

    /// A number larger than any handed out before. The writer runs a job's operations
    /// in commit order, so for one job these numbers follow commit order: the job cache
    /// uses them to keep the newest version of a row when two callers put theirs out of
    /// order.
    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// Decides a batch's submissions and writes the accepted ones inside the writer's
/// transaction: one outcome per job, in order. `Err` means the transaction must be
/// rolled back.
pub(crate) type Decide = fn(&WriteCtx<'_>, &[Arc<NewJob>]) -> Result<Vec<Result<SubmitOutcome>>>;

/// A submission's outcome with the batch time (its `created_at`) and the writer's
/// operation number for the job cache.
pub(crate) type Submitted = (SubmitOutcome, i64, u64);

/// An operation waiting in the queue: runs (possibly twice, see the module comment) and
/// then answers its caller(s) once with the committed outcome.
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

/// The submissions of one batch, decided together as one operation.
struct Submissions {
    decide: Decide,
    jobs: Vec<Arc<NewJob>>,
    replies: Vec<oneshot::Sender<Result<Submitted>>>,
    /// The last run's outcomes, or its error.
    outcome: Option<Result<Decided>>,
}

/// A batch's submission outcomes, in order, with the batch time and version.
type Decided = (Vec<Result<SubmitOutcome>>, i64, u64);

impl PendingOp for Submissions {
    fn run(&mut self, ctx: &WriteCtx<'_>) -> bool {
        let outcome = (self.decide)(ctx, &self.jobs).map(|o| (o, ctx.now_ms, ctx.next_version()));
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let outcomes = match (commit, self.outcome) {
            (Err(e), _) | (Ok(()), Some(Err(e))) => {
                for reply in self.replies {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
            (Ok(()), Some(Ok(outcomes))) => outcomes,
            (Ok(()), None) => (Vec::new(), 0, 0),
        };
        let (mut outcomes, at, version) = (outcomes.0.into_iter(), outcomes.1, outcomes.2);
        for reply in self.replies {
            let answer = match outcomes.next() {
                Some(outcome) => outcome.map(|o| (o, at, version)),
                None => Err(StoreError::Internal("a submission was never decided".into())),
            };
            // The caller may have gone away; its job stands regardless.
            let _ = reply.send(answer);
        }
    }
}

type BoxedOp = Box<dyn PendingOp>;

enum Command {
    Write(BoxedOp),
    Submit(Arc<NewJob>, oneshot::Sender<Result<Submitted>>),
    /// Finish everything queued before, then stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer on `conn`; `decide` decides each batch's submissions.
    pub(crate) fn start(conn: Connection, decide: Decide) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&conn, rx, decide))
            .expect("spawning the writer thread only fails when the OS is out of threads");
        Self { tx, thread: Mutex::new(Some(thread)) }
    }

    /// Decides a submission in the next batch; resolves once that batch has committed.
    pub(crate) async fn submit(&self, job: Arc<NewJob>) -> Result<Submitted> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Submit(job, reply)).await.map_err(|_| closed())?;
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
        self.tx.send(Command::Write(op)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Whether the writer thread has stopped taking writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Finishes every queued write, then stops the thread.
    pub(crate) async fn close(&self) {
        let (done, stopped) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            let _ = stopped.await;
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

fn run(conn: &Connection, mut rx: mpsc::Receiver<Command>, decide: Decide) {
    let clock = Clock::default();
    let mut ops: Vec<BoxedOp> = Vec::with_capacity(MAX_BATCH);
    let mut closing: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut submissions = Submissions { decide, jobs: Vec::new(), replies: Vec::new(), outcome: None };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(command) = next.take() {
            taken += 1;
            match command {
                Command::Write(op) => ops.push(op),
                Command::Submit(job, reply) => {
                    submissions.jobs.push(job);
                    submissions.replies.push(reply);
                }
                Command::Close(done) => closing = Some(done),
            }
            if closing.is_none() && taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !submissions.jobs.is_empty() {
            ops.push(Box::new(submissions));
        }
        if !ops.is_empty() {
            let ctx = WriteCtx { conn, now_ms: clock.now_ms(), clock: &clock };
            commit_batch(&ctx, &mut ops);
        }
        if closing.is_some() {
            break;
        }
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs the batch's operations in one transaction and answers them.
fn commit_batch(ctx: &WriteCtx<'_>, batch: &mut Vec<BoxedOp>) {
    let size = batch.len();
    match run_in_transaction(ctx, batch) {
        Ok(true) => {
            for op in batch.drain(..) {
                op.finish(Ok(()));
            }
        }
        Ok(false) => {
            tracing::debug!(batch.size = size, "an operation failed; replaying the batch one by one");
            for mut op in batch.drain(..) {
                let single = std::slice::from_mut(&mut op);
                let commit = run_in_transaction(ctx, single).map(|_| ());
                op.finish(commit);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch.size = size, "group commit failed; the whole batch is rolled back");
            for op in batch.drain(..) {
                op.finish(Err(e.clone()));
            }
        }
    }
}

/// Runs `ops` in one transaction. `Ok(true)`: all succeeded and are committed.
/// `Ok(false)`: one failed and everything was rolled back (for a single op, its own
/// error is kept in its outcome). `Err`: the transaction itself could not begin or commit.
fn run_in_transaction(ctx: &WriteCtx<'_>, ops: &mut [BoxedOp]) -> Result<bool> {
    // `immediate` takes the write lock at once: another process writing (the admin CLI)
    // makes this wait up to the busy timeout rather than fail midway on upgrade.
    ctx.conn.execute_batch("begin immediate").map_err(map_err)?;
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
    Ok(true)
}
