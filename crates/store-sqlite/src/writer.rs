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

use std::cell::Cell;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use store::{Result, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::map_err;

/// Upper bound on operations sharing one commit; keeps a single batch's latency bounded.
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

enum Command {
    Write(BoxedOp),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the writer thread only fails when the OS is out of threads");
        Self { tx, thread: std::sync::Mutex::new(Some(thread)) }
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

    /// Whether the writer thread has stopped taking writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Finishes every queued write, then stops the thread.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().expect("writer handle lock poisoned").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Command>) {
    let mut last_ms = 0i64;
    let versions = Cell::new(0u64);
    let mut batch: Vec<BoxedOp> = Vec::with_capacity(MAX_BATCH);
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        match rx.blocking_recv() {
            Some(Command::Write(op)) => batch.push(op),
            Some(Command::Close(done)) => closing = Some(done),
            None => break,
        }
        while closing.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Write(op)) => batch.push(op),
                Ok(Command::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        last_ms = last_ms.max(wall_clock_ms());
        commit_batch(&WriteCtx { conn: &conn, now_ms: last_ms, versions: &versions }, &mut batch);
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

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
                op.finish(Err(StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

/// Runs `ops` in one transaction. `Ok(true)`: all succeeded and are committed.
/// `Ok(false)`: one failed and everything was rolled back (for a single op, its own
/// error is kept in its outcome). `Err`: the transaction itself could not begin or commit.
fn run_in_transaction(ctx: &WriteCtx<'_>, ops: &mut [BoxedOp]) -> Result<bool> {
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

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
