//! The engine's two claim loops: the dispatcher, which claims queued jobs within every
//! account's budget and starts their submission, and the poller, which starts the step
//! of every job whose due time has come. Neither makes an upstream call itself: each
//! claimed job runs as its own task under a concurrency slot, so a slow MiniMax never
//! holds up a loop.

use std::sync::Arc;
use std::time::Duration;

use domain::Stage;
use store::{ClaimRequest, EngineJob, Transition, UpstreamBudget};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Engine;

/// How often the dispatcher looks for work when nothing wakes it.
const DISPATCH_TICK: Duration = Duration::from_millis(500);
/// The shortest pause between two dispatch rounds.
const DISPATCH_MIN_GAP: Duration = Duration::from_millis(20);
/// The poller's longest sleep.
const POLL_TICK: Duration = Duration::from_millis(1000);
/// Due jobs fetched per poller round.
const POLL_BATCH: usize = 256;

impl Engine {
    /// Runs dispatch rounds when woken or every tick, until `stop`.
    pub(super) async fn dispatch_loop(self: Arc<Self>, stop: CancellationToken, tasks: TaskTracker) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(DISPATCH_TICK) => {}
            }
            if let Err(e) = self.dispatch_once(&stop, &tasks).await {
                tracing::warn!(error = %e, "dispatch round failed; retrying shortly");
            }
            // Under a burst of submissions every request wakes the dispatcher; rounds a
            // few milliseconds apart serve them just as well and keep claims from
            // crowding the writer that the submissions themselves need.
            tokio::time::sleep(DISPATCH_MIN_GAP).await;
        }
    }

    /// Claims as many queued jobs as there are free submit slots and budget, and starts
    /// their submission; repeats until nothing more can be claimed.
    async fn dispatch_once(self: &Arc<Self>, stop: &CancellationToken, tasks: &TaskTracker) -> store::Result<()> {
        self.holds.refresh(self.store.as_ref()).await;
        loop {
            let free = self.submits.available_permits();
            let upstreams: Vec<UpstreamBudget> = self
                .upstreams
                .iter()
                .filter(|u| self.in_rotation(u))
                .map(|u| UpstreamBudget {
                    claimable_now: u.creates.lock().unwrap_or_else(|p| p.into_inner()).available(),
                    ..u.budget.clone()
                })
                .filter(|b| b.claimable_now > 0)
                .collect();
            if free == 0 || upstreams.is_empty() || stop.is_cancelled() || !self.readiness.is_ready() {
                return Ok(());
            }
            let after_account = *self.last_served.lock().unwrap_or_else(|p| p.into_inner());
            // Long enough for both image fetches and the create call, with room to record
            // the outcome; only a dead or hung process lets it run out.
            let lease_ms =
                (self.config.submit_timeout_ms + 2 * self.image_timeout().as_millis() as u64 + 30_000) as i64;
            let claimed =
                self.store.claim_jobs(ClaimRequest { upstreams, max_jobs: free, lease_ms, after_account }).await?;
            if claimed.is_empty() {
                return Ok(());
            }
            if let Some(last) = claimed.last() {
                *self.last_served.lock().unwrap_or_else(|p| p.into_inner()) = Some(last.job.record.account_id);
            }
            for upstream in &self.upstreams {
                let taken = claimed.iter().filter(|c| c.upstream == upstream.budget.name).count() as u32;
                upstream.creates.lock().unwrap_or_else(|p| p.into_inner()).spend(taken);
            }
            for job in claimed {
                let Ok(permit) = self.submits.clone().try_acquire_owned() else {
                    // Cannot happen (we claimed at most `free`), but never run unbounded.
                    tracing::warn!(job.id = %job.job.record.id, "no submit slot; the job's lease will return it");
                    continue;
                };
                self.mark_busy(job.job.record.id);
                let engine = self.clone();
                tasks.spawn(async move {
                    let id = job.job.record.id;
                    engine.submit(job).await;
                    engine.unmark_busy(id);
                    drop(permit);
                });
            }
        }
    }

    /// Runs poller rounds, sleeping until the next due time (or a wake-up), until `stop`.
    pub(super) async fn poll_loop(self: Arc<Self>, stop: CancellationToken, tasks: TaskTracker) {
        loop {
            let sleep = match self.poll_once(&tasks).await {
                Ok(sleep) => sleep,
                Err(e) => {
                    tracing::warn!(error = %e, "poll round failed; retrying shortly");
                    POLL_TICK
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.poll_wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Starts a step for every due job not already being worked on; returns how long
    /// to sleep before the next round.
    async fn poll_once(self: &Arc<Self>, tasks: &TaskTracker) -> store::Result<Duration> {
        if !self.readiness.is_ready() {
            return Ok(POLL_TICK);
        }
        let now = Self::now_ms();
        let due = self.store.due_jobs(now, POLL_BATCH).await?;
        let mut started = 0;
        for job in due {
            if !self.mark_busy(job.record.id) {
                continue;
            }
            let semaphore = match job.stage {
                Stage::Downloading => &self.downloads,
                Stage::Submitting => &self.submits,
                _ => &self.polls,
            };
            let permit = match semaphore.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.unmark_busy(job.record.id);
                    continue;
                }
            };
            started += 1;
            let engine = self.clone();
            tasks.spawn(async move {
                let id = job.record.id;
                engine.step(job).await;
                engine.unmark_busy(id);
                drop(permit);
                // A slot is free: due work waiting for one starts now, not at the next tick.
                engine.poll_wake.notify_one();
            });
        }
        if started > 0 {
            return Ok(Duration::from_millis(10));
        }
        let next = self.store.next_due_at().await?;
        Ok(match next {
            Some(at) if at > now => Duration::from_millis((at - now) as u64).min(POLL_TICK),
            // Due but all busy or out of permits: look again soon.
            Some(_) => Duration::from_millis(50),
            None => POLL_TICK,
        })
    }

    /// Runs the step a due job's stage calls for.
    async fn step(self: &Arc<Self>, job: EngineJob) {
        match job.stage {
            Stage::Submitting => self.recover_submit(job).await,
            Stage::Running => self.poll(job).await,
            Stage::Downloading => {
                let lease = Self::now_ms() + self.download_lease_ms();
                let t = Transition::new(job.record.id, Stage::Downloading, Stage::Downloading)
                    .if_due_at(job.due_at_ms)
                    .due_at(lease);
                if let Ok(Some(job)) = self.apply(t).await {
                    self.mirror(job, lease).await;
                }
            }
            _ => {}
        }
    }
}
