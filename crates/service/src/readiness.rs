//! Whether this node can do its work: a monitor that pings the store every second and
//! a flag the front door, the engine and `/readyz` read.
//!
//! A node that cannot reach its database must say so quickly instead of letting every
//! request wait out a connection timeout: while the flag is down, `/readyz` answers 503,
//! `POST /v2/videos/generate` is refused with 503 and `Retry-After` before anything is
//! written, and the engine and the webhook worker stop claiming work. Nothing needs to be
//! restarted: the first successful ping raises the flag again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store::Store;
use tokio_util::sync::CancellationToken;

/// How often the store is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping that takes longer than this counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared flag.
#[derive(Clone, Debug)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self { ready: Arc::new(AtomicBool::new(true)) }
    }
}

impl Readiness {
    /// Whether the store answered its latest ping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Pings `store` until `stop` is cancelled, logging each change of state once.
    pub fn monitor(&self, store: Arc<dyn Store>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let ready = self.ready.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let outcome = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
                };
                let was_ready = ready.swap(outcome.is_ok(), Ordering::Relaxed);
                match (was_ready, outcome) {
                    (true, Err(why)) => tracing::error!(
                        error = %why,
                        "the database is unreachable: not ready, refusing new jobs and claiming no work"
                    ),
                    (false, Ok(())) => tracing::info!("the database answers again: ready"),
                    _ => {}
                }
            }
        })
    }
}
