//! Background loops and the tasks they spawn, stopped together at shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stop signal for some loops and the tracker of everything they spawned.
pub struct Background {
    /// Cancelled at shutdown: loops stop taking new work.
    pub stop: CancellationToken,
    /// Every task the loops spawned.
    pub tasks: TaskTracker,
    /// What the tasks are, for the shutdown log line.
    what: &'static str,
}

impl Background {
    /// A fresh set of `what` (e.g. "engine steps").
    pub fn new(what: &'static str) -> Self {
        Self { stop: CancellationToken::new(), tasks: TaskTracker::new(), what }
    }

    /// Stops the loops and waits up to `grace` for the tasks in flight. Work cut short
    /// holds a lease in the database, so it is taken up again after a restart.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                "{} still running at shutdown; their leases will expire and they resume on restart",
                self.what
            );
        }
    }
}
