//! The timer task that delivers the status pushes [`crate::callback::Pusher`] schedules: it
//! sleeps until the earliest due push, posts it, and queues the task's next one.
//!
//! Kept apart from `callback` because it reads the server's shared state (`api::Shared`),
//! which holds the `Pusher`: in one module, `api` and `callback` would import each other.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::api::Shared;
use crate::callback::Stage;
use crate::tasks::Status;
use crate::wire::{BaseResp, CallbackPush};

/// How long one status push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes in flight at once.
const PUSH_CONCURRENCY: usize = 64;

/// The timer loop: sleeps until the earliest due push, delivers what is due, stops on shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
    loop {
        let now = shared.clock.now_ms();
        match shared.pusher.pop_due(now) {
            Ok((task_id, stage)) => {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = shutdown.changed() => return,
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    deliver(&shared, task_id, stage).await;
                    drop(permit);
                });
            }
            Err(next) => {
                let sleep = async {
                    match next {
                        Some(due) => tokio::time::sleep_until(shared.clock.instant(due)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = shared.pusher.wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Posts one status push, then queues the task's next one.
async fn deliver(shared: &Shared, task_id: u64, stage: Stage) {
    let found = shared.tasks.with_task(task_id, None, |task, _| {
        let status = match stage {
            Stage::Processing => Status::Processing,
            Stage::Terminal => task.terminal(),
        };
        let (file_id, base_resp) = match status {
            Status::Success => (task.file_id.to_string(), BaseResp::ok()),
            Status::Fail(code) => (String::new(), BaseResp::code(code)),
            _ => (String::new(), BaseResp::ok()),
        };
        let push = CallbackPush { task_id: task_id.to_string(), status: status.callback_name(), file_id, base_resp };
        (task.callback_url.clone(), push, task.done_at())
    });
    let Some((Some(url), push, done_at)) = found else { return };
    let result = shared.http.post(&*url).json(&push).timeout(PUSH_TIMEOUT).send().await;
    let delivered = matches!(&result, Ok(r) if r.status().is_success());
    let counter = if delivered { &shared.limiter.callback_pushes } else { &shared.limiter.callback_push_failures };
    counter.fetch_add(1, Ordering::Relaxed);
    if !delivered {
        tracing::debug!(task.id = task_id, status = push.status, "sandbox callback push failed");
    }
    if let (Stage::Processing, Some(done)) = (stage, done_at) {
        shared.pusher.schedule(done, task_id, Stage::Terminal);
    }
}
