//! The acceptor thread: decides submissions and hands the accepted ones' records to
//! the journal thread, which makes them durable and answers, while the writer thread
//! writes earlier ones into SQLite.
//!
//! Deciding a submission needs a snapshot of SQLite (balances, stored idempotency keys)
//! and the jobs accepted but not yet written ([`Accepted`]); it never writes SQLite. On
//! the writer's thread, every decision waited behind the writer's transactions, and
//! measured here the writer spent over 40% of its time in those writing accepted jobs
//! (about 4 ms per few hundred), which stalled every submission behind it. So decisions
//! run here, on a read connection of this thread's own, in rounds: whatever submissions
//! queued up share one read transaction and one journal write.
//!
//! The journal's I/O runs on a thread of its own ([`journal_loop`]), so the next round
//! is decided while the disk syncs the last. Doing both on one thread was measured
//! slower here (about 0.7x the submissions per second): each round then also waited for
//! the previous round's sync. Every journal write goes through that one thread, in the
//! order rounds took their [`JournalWork`] under the [`Accepted`] lock, which is what
//! keeps a segment's emptying ahead of the records of its next generation.
//!
//! Each round holds the [`Accepted`] lock from its snapshot to its last decision (see
//! [`crate::accepted`] for why that makes the decisions exact).

use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use store::{NewJob, Result, StoreError, SubmitOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::accepted::{self, lock, Accepted, JournalWork, WRITE_AT};
use crate::journal::{Journal, SEGMENTS};
use crate::writer::{stop_thread, Clock, Command, Submitted};

/// Upper bound on submissions sharing one snapshot and one journal sync.
const MAX_BATCH: usize = 512;
/// Submissions waiting to be decided; when full, callers wait (backpressure).
const QUEUE_CAPACITY: usize = 8192;

enum Request {
    Submit(Arc<NewJob>, oneshot::Sender<Result<Submitted>>),
    /// From the writer: a segment's jobs are in SQLite, empty it.
    Written,
    /// Decide everything queued before, then stop.
    Stop(oneshot::Sender<()>),
    /// Stop at once, as a crash would.
    Abandon(oneshot::Sender<()>),
}

/// Handle to the acceptor thread.
pub(crate) struct Acceptor {
    tx: mpsc::Sender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Acceptor {
    /// Starts the thread, deciding on the read connection `conn` and journaling into
    /// `journal`. It tells the writer (through `writer`) when accepted jobs start to
    /// gather and when enough have.
    pub(crate) fn start(
        conn: Connection,
        journal: Journal,
        accepted: Arc<Mutex<Accepted>>,
        clock: Arc<Clock>,
        writer: mpsc::Sender<Command>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("sqlite-acceptor".into())
            .spawn(move || run(&conn, journal, rx, &accepted, &clock, &writer))
            .expect("spawning the acceptor thread only fails when the OS is out of threads");
        Self { tx, thread: Mutex::new(Some(thread)) }
    }

    /// How the writer tells this thread that a segment can be emptied. It does not keep
    /// the thread alive: once the store's handle is gone, the thread ends.
    pub(crate) fn written_signal(&self) -> WrittenSignal {
        WrittenSignal(self.tx.downgrade())
    }

    /// Decides a submission; resolves once it is durable.
    pub(crate) async fn submit(&self, job: Arc<NewJob>) -> Result<Submitted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Submit(job, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("the store stopped taking submissions".into()))?
    }

    /// Decides every submission queued so far, then stops the thread.
    pub(crate) async fn stop(&self) {
        self.stop_with(Request::Stop).await;
    }

    /// Stops the thread without deciding what is queued, as a crash would.
    pub(crate) async fn abandon(&self) {
        self.stop_with(Request::Abandon).await;
    }

    async fn stop_with(&self, request: fn(oneshot::Sender<()>) -> Request) {
        stop_thread(&self.tx, request, &self.thread).await;
    }
}

/// See [`Acceptor::written_signal`].
pub(crate) struct WrittenSignal(mpsc::WeakSender<Request>);

impl WrittenSignal {
    /// Wakes the acceptor to empty the segments whose jobs are now in SQLite. When its
    /// queue is full it is busy, and empties them with its next round anyway.
    pub(crate) fn send(&self) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.try_send(Request::Written);
        }
    }
}

/// Decided submissions waiting for their records' sync, with their outcomes.
type Decided = Vec<(Result<Submitted>, oneshot::Sender<Result<Submitted>>)>;

fn run(
    conn: &Connection,
    journal: Journal,
    mut rx: mpsc::Receiver<Request>,
    accepted: &Mutex<Accepted>,
    clock: &Clock,
    writer: &mpsc::Sender<Command>,
) {
    let (to_journal, journal_queue) = std_mpsc::channel();
    let fallback = writer.clone();
    let journal_thread = std::thread::Builder::new()
        .name("sqlite-journal".into())
        .spawn(move || journal_loop(journal, &journal_queue, &fallback))
        .expect("spawning the journal thread only fails when the OS is out of threads");
    let mut submissions = Vec::with_capacity(MAX_BATCH);
    let mut stopped: Option<oneshot::Sender<()>> = None;
    let mut abandoned: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Submit(job, reply) => submissions.push((job, reply)),
                Request::Written => {}
                Request::Stop(done) => stopped = Some(done),
                Request::Abandon(done) => abandoned = Some(done),
            }
            if abandoned.is_some() {
                break;
            }
            if stopped.is_none() && submissions.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if abandoned.is_some() {
            // Queued callers see the store go, as they would a crash.
            submissions.clear();
            break;
        }
        let (work, decided) = round(conn, accepted, clock, writer, &mut submissions);
        let _ = to_journal.send((work, decided));
        if stopped.is_some() {
            break;
        }
    }
    // The journal thread finishes what it was sent, answering those callers.
    drop(to_journal);
    let journal = journal_thread.join();
    match (abandoned, journal) {
        (Some(done), _) => {
            // The journal closes as in a crash, with its records.
            let _ = done.send(());
        }
        (None, Ok(journal)) => {
            // Segments written from now on are emptied by whoever writes them.
            lock(accepted).park_journal(journal);
            if let Some(done) = stopped {
                let _ = done.send(());
            }
        }
        (None, Err(_)) => tracing::error!("the journal thread panicked"),
    }
}

/// The journal thread: writes each round's work in order, syncs once for everything
/// that queued up meanwhile, then answers those rounds' callers. Returns the journal
/// when the acceptor stops.
///
/// When the journal cannot be written, the accepted jobs are already in [`Accepted`]
/// and the writer will write them into SQLite regardless; answering 503 would tell a
/// client its job failed while it runs. So this thread asks the writer to write them
/// now (through `writer`) and answers as decided once that has committed; only if that
/// fails too are the created jobs answered 503.
fn journal_loop(
    mut journal: Journal,
    queue: &std_mpsc::Receiver<(JournalWork, Decided)>,
    writer: &mpsc::Sender<Command>,
) -> Journal {
    let mut answers: Vec<Decided> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut touched = [false; SEGMENTS];
        let mut outcome = Ok(());
        let mut next = Some(first);
        while let Some((work, decided)) = next.take() {
            if outcome.is_ok() {
                outcome = work.write(&mut journal, &mut touched);
            }
            answers.push(decided);
            next = queue.try_recv().ok();
        }
        if outcome.is_ok() {
            outcome = accepted::sync_touched(&mut journal, &touched);
        }
        let created = |(result, _): &(Result<Submitted>, _)| matches!(result, Ok((SubmitOutcome::Created { .. }, ..)));
        let durable = match &outcome {
            Ok(()) => Ok(()),
            Err(e) if answers.iter().flatten().any(created) => {
                tracing::error!(error = %e, "the acceptance journal could not be written; writing the submissions waiting on it into the database instead");
                write_into_sqlite_now(writer)
                    .map_err(|fallback| StoreError::Unavailable(format!("{e}; and then: {fallback}")))
            }
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        for (result, reply) in answers.drain(..).flatten() {
            let answer = match (&durable, result) {
                (Err(e), Ok((SubmitOutcome::Created { .. }, ..))) => Err(StoreError::Unavailable(e.to_string())),
                (_, result) => result,
            };
            // The caller may have gone away; the job stands regardless.
            let _ = reply.send(answer);
        }
    }
    journal
}

/// Has the writer write every accepted job into SQLite (a settle) and waits for it.
fn write_into_sqlite_now(writer: &mpsc::Sender<Command>) -> Result<()> {
    let stopped = || StoreError::Unavailable("the writer stopped".into());
    let (reply, answer) = oneshot::channel();
    writer.blocking_send(Command::Settle(reply)).map_err(|_| stopped())?;
    answer.blocking_recv().map_err(|_| stopped())?
}

/// One round: decides `submissions` in one snapshot and takes the journal work that
/// makes them durable (with any segment emptying the writer asked for).
fn round(
    conn: &Connection,
    accepted: &Mutex<Accepted>,
    clock: &Clock,
    writer: &mpsc::Sender<Command>,
    submissions: &mut Vec<(Arc<NewJob>, oneshot::Sender<Result<Submitted>>)>,
) -> (JournalWork, Decided) {
    let mut state = lock(accepted);
    let gathered_before = state.untaken();
    let decided: Decided = if submissions.is_empty() {
        Vec::new()
    } else {
        let now_ms = clock.now_ms();
        // One read transaction: the sequence number and the balances from one snapshot.
        let in_read = conn.execute_batch("begin").is_ok();
        let snapshot = accepted::written_seq(conn);
        let decided = submissions
            .drain(..)
            .map(|(job, reply)| {
                let outcome = match &snapshot {
                    Ok(seq) => state.decide(conn, *seq, now_ms, &job).map(|o| (o, now_ms, clock.next_version())),
                    Err(e) => Err(StoreError::Unavailable(format!("cannot read the database: {e}"))),
                };
                (outcome, reply)
            })
            .collect();
        if in_read {
            let _ = conn.execute_batch("commit");
        }
        decided
    };
    let gathered = state.untaken();
    let work = state.journal_work();
    drop(state);
    // The writer sleeps while nothing is accepted: wake it to start the clock on these
    // jobs, and again once enough have gathered. When its queue is full it is busy and
    // looks at the accepted jobs after its current batch anyway.
    if (gathered_before == 0 && gathered > 0) || (gathered_before < WRITE_AT && gathered >= WRITE_AT) {
        let _ = writer.try_send(Command::Accepted);
    }
    (work, decided)
}
