//! Job events: fans the store's committed job changes out to the event streams of
//! `api/events.rs` (`GET /v2/jobs/{id}/events`, `GET /v2/jobs/events`).
//!
//! The store announces every committed change to a job, this node's and, on PostgreSQL,
//! other nodes' (LISTEN/NOTIFY), as ids only ([`store::JobChange`]). The hub reads a
//! changed job once, and only when a stream watches it or its account, then hands that one
//! record to every such stream, where the first stream to send it renders it for all:
//! - a watched job's latest version sits in a `watch` channel: a slow stream skips
//!   versions but never falls behind the latest;
//! - an account's changes go through a bounded `broadcast`: a stream that falls behind
//!   learns so and re-reads what changed since its cursor.
//!
//! Reads of one job are serialised: a change announced while its job is being read marks
//! it dirty, and the job is read again afterwards, so the version delivered last is never
//! older than the change announced last. Announcements can still be lost (a node that
//! crashes between its commit and its NOTIFY, a listener reconnecting), so streams also
//! re-read on their own now and then (see `api/events.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use domain::{AccountId, JobId};
use store::{JobChange, JobRecord, Store};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Changes an account stream may fall behind by before it must re-read.
const ACCOUNT_BACKLOG: usize = 1024;

/// A version of a job as the hub hands it to every stream that shows it; the first stream
/// to send it renders it, and the others send the same text (a change watched by many
/// streams is serialised once, not once per stream).
#[derive(Debug)]
pub struct SharedJob {
    /// The job.
    pub record: Arc<JobRecord>,
    rendered: tokio::sync::OnceCell<Arc<str>>,
}

impl SharedJob {
    /// Wraps a version read by one stream for itself.
    pub fn new(record: Arc<JobRecord>) -> Arc<Self> {
        Arc::new(Self { record, rendered: tokio::sync::OnceCell::new() })
    }

    /// The rendered job: rendered by `render` the first time, then shared.
    pub async fn rendered<F, Fut>(&self, render: F) -> Arc<str>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        self.rendered.get_or_init(|| async { Arc::from(render().await) }).await.clone()
    }
}

/// What an account's streams hear.
#[derive(Clone, Debug)]
pub enum AccountEvent {
    /// A job of the account changed: its new version.
    Changed(Arc<SharedJob>),
    /// Changes may have been missed: re-read what changed since the stream's cursor.
    Resync,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct JobEvents {
    hub: Arc<Hub>,
}

struct Hub {
    store: Arc<dyn Store>,
    /// Ends every stream when the server shuts down.
    stop: CancellationToken,
    state: Mutex<Subscriptions>,
}

#[derive(Default)]
struct Subscriptions {
    jobs: HashMap<JobId, watch::Sender<Option<Arc<SharedJob>>>>,
    accounts: HashMap<AccountId, broadcast::Sender<AccountEvent>>,
    /// Jobs being read now, and whether another change came in meanwhile.
    reading: HashMap<JobId, bool>,
}

/// A stream's hold on one job's versions; dropping it lets the hub forget the job.
pub struct JobSubscription {
    /// The latest version the hub read (`None` until the first change after subscribing).
    pub versions: watch::Receiver<Option<Arc<SharedJob>>>,
    job_id: JobId,
    hub: Arc<Hub>,
}

/// A stream's hold on one account's changes; dropping it lets the hub forget the account.
pub struct AccountSubscription {
    /// The account's changes.
    pub changes: broadcast::Receiver<AccountEvent>,
    account_id: AccountId,
    hub: Arc<Hub>,
}

impl JobEvents {
    /// Starts the hub on `store`'s change feed; it runs until `stop`, which also tells
    /// every stream to end.
    pub fn start(store: Arc<dyn Store>, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let changes = store.job_changes();
        let hub = Arc::new(Hub { store, stop, state: Mutex::new(Subscriptions::default()) });
        let task = tokio::spawn(follow(hub.clone(), changes));
        (Self { hub }, task)
    }

    /// Cancelled when the server shuts down: streams end then.
    pub fn stopping(&self) -> &CancellationToken {
        &self.hub.stop
    }

    /// Watches one job. Subscribe before reading the job's current state, so that no
    /// change between the read and the subscription is missed.
    pub fn watch_job(&self, job_id: JobId) -> JobSubscription {
        let mut state = self.hub.lock();
        let versions = state.jobs.entry(job_id).or_insert_with(|| watch::channel(None).0).subscribe();
        JobSubscription { versions, job_id, hub: self.hub.clone() }
    }

    /// Watches every job of one account (streams filter by key themselves).
    pub fn watch_account(&self, account_id: AccountId) -> AccountSubscription {
        let mut state = self.hub.lock();
        let changes =
            state.accounts.entry(account_id).or_insert_with(|| broadcast::channel(ACCOUNT_BACKLOG).0).subscribe();
        AccountSubscription { changes, account_id, hub: self.hub.clone() }
    }

    /// How many jobs and accounts are watched now (for tests and metrics).
    pub fn watched(&self) -> (usize, usize) {
        let state = self.hub.lock();
        (state.jobs.len(), state.accounts.len())
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change was announced: read the job, unless nobody watches it or a read of it is
    /// under way (which then reads again when it ends).
    fn changed(self: &Arc<Self>, change: JobChange) {
        {
            let mut state = self.lock();
            if !state.jobs.contains_key(&change.job_id) && !state.accounts.contains_key(&change.account_id) {
                return;
            }
            if let Some(dirty) = state.reading.get_mut(&change.job_id) {
                *dirty = true;
                return;
            }
            state.reading.insert(change.job_id, false);
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.read_until_clean(change).await });
    }

    async fn read_until_clean(self: Arc<Self>, change: JobChange) {
        loop {
            match self.store.get_job(change.account_id, change.job_id).await {
                Ok(Some(job)) => self.deliver(job),
                Ok(None) => {}
                // The streams' own re-reads cover a failed read.
                Err(e) => tracing::debug!(job.id = %change.job_id, error = %e, "could not read a changed job"),
            }
            let mut state = self.lock();
            match state.reading.get_mut(&change.job_id) {
                Some(dirty) if *dirty => *dirty = false,
                _ => {
                    state.reading.remove(&change.job_id);
                    return;
                }
            }
        }
    }

    fn deliver(&self, record: Arc<JobRecord>) {
        let job = SharedJob::new(record);
        let state = self.lock();
        if let Some(versions) = state.jobs.get(&job.record.id) {
            versions.send_if_modified(|current| {
                let changed = current
                    .as_ref()
                    .is_none_or(|c| !JobVersion::of(&c.record).shows_the_same(&JobVersion::of(&job.record)));
                if changed {
                    *current = Some(job.clone());
                }
                changed
            });
        }
        if let Some(changes) = state.accounts.get(&job.record.account_id) {
            // No receiver left is not an error: the last stream is ending.
            let _ = changes.send(AccountEvent::Changed(job));
        }
    }

    /// The feed skipped changes: read every watched job again and tell account streams.
    fn lost_changes(self: &Arc<Self>) {
        let (jobs, accounts): (Vec<JobChange>, Vec<broadcast::Sender<AccountEvent>>) = {
            let state = self.lock();
            let jobs = state
                .jobs
                .iter()
                .filter_map(|(id, versions)| {
                    let account_id = versions.borrow().as_ref().map(|j| j.record.account_id)?;
                    Some(JobChange { account_id, job_id: *id })
                })
                .collect();
            (jobs, state.accounts.values().cloned().collect())
        };
        for change in jobs {
            self.changed(change);
        }
        for account in accounts {
            let _ = account.send(AccountEvent::Resync);
        }
    }
}

async fn follow(hub: Arc<Hub>, mut changes: broadcast::Receiver<JobChange>) {
    loop {
        tokio::select! {
            _ = hub.stop.cancelled() => return,
            change = changes.recv() => match change {
                Ok(change) => hub.changed(change),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "the job event hub fell behind the store's changes; re-reading");
                    hub.lost_changes();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

impl Drop for JobSubscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        // Our receiver is still counted while this runs.
        if state.jobs.get(&self.job_id).is_some_and(|v| v.receiver_count() <= 1) {
            state.jobs.remove(&self.job_id);
        }
    }
}

impl Drop for AccountSubscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if state.accounts.get(&self.account_id).is_some_and(|c| c.receiver_count() <= 1) {
            state.accounts.remove(&self.account_id);
        }
    }
}

/// What a client can see of a job, compactly: two versions that [show the
/// same](JobVersion::shows_the_same) render the same event (bar a presigned URL's
/// signature), so streams skip the second; engine bookkeeping moves `updated_at` without
/// a visible change. Also the per-job stream's event id, so a client resuming with
/// `Last-Event-ID` is sent the job again only if it changed.
#[derive(Clone, Copy, Debug)]
pub struct JobVersion {
    updated_at_ms: i64,
    fingerprint: u32,
}

impl JobVersion {
    /// The version of `job`.
    pub fn of(job: &JobRecord) -> Self {
        // FNV-1a over the fields a client sees change; not a security measure.
        let mut hash: u32 = 0x811c_9dc5;
        let mut add = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
            }
        };
        add(job.status.as_str().as_bytes());
        add(&job.progress.unwrap_or(-1).to_le_bytes());
        add(&job.credit_cost.to_le_bytes());
        add(job.webhook_status.map_or("", |w| w.as_str()).as_bytes());
        add(&[u8::from(job.expired), u8::from(job.result.is_some()), u8::from(job.error.is_some())]);
        add(&job.completed_at_ms.unwrap_or(-1).to_le_bytes());
        Self { updated_at_ms: job.updated_at_ms, fingerprint: hash }
    }

    /// Whether a client sees the same job in both.
    pub fn shows_the_same(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// The time of the change this version records.
    pub fn updated_at_ms(&self) -> i64 {
        self.updated_at_ms
    }

    /// Reads an event id written by `Display`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, fingerprint) = raw.split_once('-')?;
        Some(Self { updated_at_ms: at.parse().ok()?, fingerprint: u32::from_str_radix(fingerprint, 16).ok()? })
    }
}

impl std::fmt::Display for JobVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{:08x}", self.updated_at_ms, self.fingerprint)
    }
}
