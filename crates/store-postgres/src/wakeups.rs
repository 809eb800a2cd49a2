//! Wake-ups across nodes with PostgreSQL's LISTEN/NOTIFY.
//!
//! The writes that create work announce it on the channel [`WAKEUP_CHANNEL`], inside
//! their own statement or transaction, so the notification is delivered exactly when
//! the work becomes visible (PostgreSQL sends it at commit, and drops it on rollback).
//! The payload is `<schema>/<kind>`:
//! - kind `jobs`: a job was submitted, or put back in the queue for a retry;
//! - kind `webhooks`: a transition raised a webhook event, or events were replayed.
//!
//! Channels are per database, not per schema, so the schema in the payload keeps
//! deployments (or test runs) that share a database in separate schemas from waking
//! each other.
//!
//! [`Wakeups`] holds one dedicated connection in `LISTEN` and turns each notification
//! into a [`Notify`] permit, so the dispatcher and the webhook worker of every node react
//! within milliseconds instead of at their next poll. It is an optimisation only:
//! notifications are not stored, so one sent while a listener was reconnecting is lost.
//! The engine must keep polling as its fallback; after each (re)connection the listener
//! fires both wake-ups once to cover what it may have missed.
//!
//! Cost: PostgreSQL folds identical notifications of one transaction into one, and
//! listeners' connections are idle between them. A commit that notifies takes a
//! cluster-wide lock on the notification queue for a moment, which is why only work
//! creation notifies, never reads or routine rescheduling.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel every node's work announcements go to.
pub const WAKEUP_CHANNEL: &str = "reelgate_work";

/// The SQL expression announcing work of one kind, for use inside statements (a macro so
/// it can be `concat!`-ed into static statement text). Keep the channel name in sync
/// with [`WAKEUP_CHANNEL`]; a test checks it.
macro_rules! notify_sql {
    (jobs) => {
        "pg_notify('reelgate_work', current_schema() || '/jobs')"
    };
    (webhooks) => {
        "pg_notify('reelgate_work', current_schema() || '/webhooks')"
    };
}
pub(crate) use notify_sql;

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
    pub(crate) fn start(config: tokio_postgres::Config, closed: watch::Receiver<bool>) -> Self {
        let jobs = Arc::new(Notify::new());
        let webhooks = Arc::new(Notify::new());
        let task = tokio::spawn(listen(config, closed, jobs.clone(), webhooks.clone()));
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

async fn listen(
    config: tokio_postgres::Config,
    mut closed: watch::Receiver<bool>,
    jobs: Arc<Notify>,
    webhooks: Arc<Notify>,
) {
    while !*closed.borrow() {
        tokio::select! {
            outcome = listen_once(&config, &jobs, &webhooks) => {
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
async fn listen_once(
    config: &tokio_postgres::Config,
    jobs: &Notify,
    webhooks: &Notify,
) -> Result<(), tokio_postgres::Error> {
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
    let mut topics: Option<(String, String)> = None;
    loop {
        tokio::select! {
            outcome = &mut subscribe, if topics.is_none() => {
                let schema = outcome?;
                topics = Some((format!("{schema}/jobs"), format!("{schema}/webhooks")));
                // Anything announced before this point was missed: look once.
                jobs.notify_one();
                webhooks.notify_one();
            }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some((jobs_topic, webhooks_topic)) = &topics {
                        if n.payload() == jobs_topic {
                            jobs.notify_one();
                        } else if n.payload() == webhooks_topic {
                            webhooks.notify_one();
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_notify_statements_use_the_public_channel() {
        assert!(notify_sql!(jobs).contains(&format!("'{}'", super::WAKEUP_CHANNEL)));
        assert!(notify_sql!(webhooks).contains(&format!("'{}'", super::WAKEUP_CHANNEL)));
    }
}
