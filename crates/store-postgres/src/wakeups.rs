//! Wake-ups across nodes with PostgreSQL's LISTEN/NOTIFY.
//!
//! Writes that create work announce it on the channel [`WAKEUP_CHANNEL`] once they have
//! committed, so a listener that wakes up finds the work. The payload is
//! `<schema>/<kind>`:
//! - kind `jobs`: a job was submitted, or put back in the queue for a retry;
//! - kind `webhooks`: a transition raised a webhook event, or events were replayed;
//! - kind `changed/<node>/<account>:<job>,...`: jobs changed (for the event streams, see
//!   [`store::Store::job_changes`]); `<node>` names the announcing store, whose own
//!   listener skips them (it announced them in-process already), and one notification
//!   carries at most [`CHANGES_PER_NOTIFICATION`] jobs, well inside PostgreSQL's
//!   8,000-byte payload limit.
//!
//! Channels are per database, not per schema, so the schema in the payload keeps
//! deployments (or test runs) that share a database in separate schemas from waking
//! each other.
//!
//! **Why announcements are sent after the commit, by one task, and not by `pg_notify`
//! inside the writing transaction.** PostgreSQL serialises the commits of all
//! transactions that notify (each holds a database-wide lock from queueing its
//! notification until its commit is durable), which defeats group commit: measured
//! here, 32 concurrent submissions ran at about 290 per second with `pg_notify` in the
//! submit statement and at about 3,100 per second without it. So a write only raises a
//! flag in this process's [`Announcer`]; its task sends one `NOTIFY` per kind for all
//! the flags raised while the previous one was in flight, in a transaction of its own
//! that writes nothing (no WAL flush). Under load that is a few notifications per
//! commit latency, however many jobs arrive.
//!
//! [`Wakeups`] holds one dedicated connection in `LISTEN` and turns each notification
//! into a [`Notify`] permit, so the dispatcher and the webhook worker of every node react
//! within milliseconds instead of at their next poll. It is an optimisation only:
//! notifications are not stored, so one sent while a listener was reconnecting, or not
//! sent because a node crashed right after a commit, is lost. The engine must keep
//! polling as its fallback; after each (re)connection the listener fires both wake-ups
//! once to cover what it may have missed.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::Pool;
use domain::{AccountId, JobId};
use store::JobChange;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel every node's work announcements go to.
pub const WAKEUP_CHANNEL: &str = "reelgate_work";

/// Jobs named in one change notification: each takes 74 bytes (two UUIDs, `:` and `,`).
const CHANGES_PER_NOTIFICATION: usize = 96;

/// The kinds of work a node announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// Queued jobs for the dispatchers.
    Jobs,
    /// Due webhook events for the delivery workers.
    Webhooks,
}

/// This process's side of the announcements: coalesces them and sends them from one task.
pub(crate) struct Announcer {
    pending: Arc<Pending>,
    task: JoinHandle<()>,
    /// This process's job-change feed, which [`Announcer::job_changed`] feeds at once.
    changes: broadcast::Sender<JobChange>,
}

/// Announcements raised but not sent yet.
#[derive(Default)]
struct Pending {
    jobs: AtomicBool,
    webhooks: AtomicBool,
    /// Job changes not yet announced to other nodes.
    changed: Mutex<Vec<JobChange>>,
    raised: Notify,
}

impl Announcer {
    /// Starts the sending task; it stops when `closed` turns true or the store is dropped.
    pub(crate) fn start(
        pool: Pool,
        closed: watch::Receiver<bool>,
        node: uuid::Uuid,
        changes: broadcast::Sender<JobChange>,
    ) -> Self {
        let pending = Arc::new(Pending::default());
        let task = tokio::spawn(announce_loop(pool, pending.clone(), closed, node));
        Self { pending, task, changes }
    }

    /// Announces committed changes to jobs: in this process at once, to other nodes soon.
    /// Call only after the write has committed.
    pub(crate) fn job_changed(&self, changes: impl IntoIterator<Item = JobChange>) {
        let mut pending = self.pending.changed.lock().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            // No receiver is not an error: nobody in this process streams events.
            let _ = self.changes.send(change);
            pending.push(change);
        }
        drop(pending);
        self.pending.raised.notify_one();
    }

    /// Announces `work` to every node soon. Call only after the write has committed.
    pub(crate) fn announce(&self, work: Work) {
        let flag = match work {
            Work::Jobs => &self.pending.jobs,
            Work::Webhooks => &self.pending.webhooks,
        };
        flag.store(true, Ordering::Release);
        self.pending.raised.notify_one();
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn announce_loop(pool: Pool, pending: Arc<Pending>, mut closed: watch::Receiver<bool>, node: uuid::Uuid) {
    // One NOTIFY per kind; `current_schema()` is the store's schema, as the connections
    // share its options.
    const NOTIFY: &str = "select pg_notify($1, current_schema() || '/' || kind) from unnest($2::text[]) kind";
    loop {
        tokio::select! {
            _ = pending.raised.notified() => {}
            _ = closed.changed() => return,
        }
        let mut kinds: Vec<String> = Vec::with_capacity(2);
        if pending.jobs.swap(false, Ordering::AcqRel) {
            kinds.push("jobs".into());
        }
        if pending.webhooks.swap(false, Ordering::AcqRel) {
            kinds.push("webhooks".into());
        }
        let changed = std::mem::take(&mut *pending.changed.lock().unwrap_or_else(PoisonError::into_inner));
        kinds.extend(change_payloads(node, changed));
        if kinds.is_empty() {
            continue;
        }
        let sent = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let stmt = client.prepare_cached(NOTIFY).await.map_err(|e| e.to_string())?;
            client.execute(&stmt, &[&WAKEUP_CHANNEL, &kinds]).await.map_err(|e| e.to_string())
        };
        if let Err(e) = sent.await {
            // Polling covers a lost announcement (event streams re-read now and then too);
            // a closed store stops the loop above.
            tracing::debug!(error = %e, "could not announce new work");
        }
    }
}

/// The `changed/...` kinds announcing `changes`, each job once.
fn change_payloads(node: uuid::Uuid, mut changes: Vec<JobChange>) -> Vec<String> {
    changes.sort_by_key(|c| c.job_id.0);
    changes.dedup_by_key(|c| c.job_id);
    changes
        .chunks(CHANGES_PER_NOTIFICATION)
        .map(|chunk| {
            let pairs: Vec<String> = chunk.iter().map(|c| format!("{}:{}", c.account_id.0, c.job_id.0)).collect();
            format!("changed/{node}/{}", pairs.join(","))
        })
        .collect()
}

/// The changes a `changed/<node>/...` kind names, unless `<node>` is `own` (or the text
/// is not such a kind).
fn parse_changes(kind: &str, own: uuid::Uuid) -> Vec<JobChange> {
    let Some(rest) = kind.strip_prefix("changed/") else { return Vec::new() };
    let Some((node, pairs)) = rest.split_once('/') else { return Vec::new() };
    if node.parse::<uuid::Uuid>().ok() == Some(own) {
        return Vec::new();
    }
    pairs
        .split(',')
        .filter_map(|pair| {
            let (account, job) = pair.split_once(':')?;
            Some(JobChange { account_id: AccountId(account.parse().ok()?), job_id: JobId(job.parse().ok()?) })
        })
        .collect()
}

/// Waits between attempts to re-establish a lost listening connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A live subscription to work announcements; dropping it stops listening.
///
/// Each `Notify` keeps one permit when nobody is waiting, so a wake-up arriving while
/// its consumer is busy is not lost: the consumer's next `notified().await` returns at
/// once. One consumer per `Notify` is intended (the dispatcher on [`Wakeups::jobs`], the
/// webhook worker on [`Wakeups::webhooks`]).
pub struct Wakeups {
    jobs: Arc<Notify>,
    webhooks: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Wakeups {
    /// Listens; other nodes' job changes go into `changes` (this store's feed), and those
    /// announced by `node` (this store) are skipped.
    pub(crate) fn start(
        config: tokio_postgres::Config,
        closed: watch::Receiver<bool>,
        node: uuid::Uuid,
        changes: broadcast::Sender<JobChange>,
    ) -> Self {
        let jobs = Arc::new(Notify::new());
        let webhooks = Arc::new(Notify::new());
        let peers = Peers { jobs: jobs.clone(), webhooks: webhooks.clone(), node, changes };
        let task = tokio::spawn(listen(config, closed, peers));
        Self { jobs, webhooks, task }
    }

    /// Fired when jobs were queued (new, or back for a retry) on any node.
    pub fn jobs(&self) -> &Arc<Notify> {
        &self.jobs
    }

    /// Fired when webhook events became due on any node (raised or replayed).
    pub fn webhooks(&self) -> &Arc<Notify> {
        &self.webhooks
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a listener passes what it hears.
struct Peers {
    jobs: Arc<Notify>,
    webhooks: Arc<Notify>,
    node: uuid::Uuid,
    changes: broadcast::Sender<JobChange>,
}

async fn listen(config: tokio_postgres::Config, mut closed: watch::Receiver<bool>, peers: Peers) {
    while !*closed.borrow() {
        tokio::select! {
            outcome = listen_once(&config, &peers) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "wake-up listener lost its connection; polling covers until it is back");
                }
            }
            _ = closed.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = closed.changed() => return,
        }
    }
}

/// Runs one listening connection until it fails.
async fn listen_once(config: &tokio_postgres::Config, peers: &Peers) -> Result<(), tokio_postgres::Error> {
    let (jobs, webhooks) = (&peers.jobs, &peers.webhooks);
    let (client, mut connection) = config.connect(NoTls).await?;
    // The connection must be driven while the setup queries run, and afterwards to
    // receive the notifications: `poll_message` does both.
    let subscribe = async {
        // The same connection options as the store's, so the same schema.
        let schema: String = client.query_one("select current_schema()::text", &[]).await?.try_get(0)?;
        client.batch_execute(&format!("listen {WAKEUP_CHANNEL}")).await?;
        Ok::<_, tokio_postgres::Error>(schema)
    };
    tokio::pin!(subscribe);
    let mut topics: Option<(String, String, String)> = None;
    loop {
        tokio::select! {
            outcome = &mut subscribe, if topics.is_none() => {
                let schema = outcome?;
                topics = Some((format!("{schema}/jobs"), format!("{schema}/webhooks"), format!("{schema}/")));
                // Anything announced before this point was missed: look once.
                jobs.notify_one();
                webhooks.notify_one();
            }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some((jobs_topic, webhooks_topic, schema_prefix)) = &topics {
                        if n.payload() == jobs_topic {
                            jobs.notify_one();
                        } else if n.payload() == webhooks_topic {
                            webhooks.notify_one();
                        } else if let Some(kind) = n.payload().strip_prefix(schema_prefix.as_str()) {
                            for change in parse_changes(kind, peers.node) {
                                let _ = peers.changes.send(change);
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                // The server closed the connection.
                None => return Ok(()),
            },
        }
    }
}
