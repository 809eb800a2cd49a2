//! MiniMax's callbacks: the challenge handshake MiniMax performs inside the create
//! call, and the status pushes that follow.
//!
//! Each job gets its own callback URL carrying a token only reelgate can make, because
//! MiniMax signs nothing: a push for a URL we did not hand out is refused. A push moves
//! the job exactly as a poll with the same answer would, through the same
//! compare-and-set transitions, so a push racing a poll finishes the job once.

use std::sync::Arc;

use domain::{JobId, Stage};
use serde_json::{json, Value};

use super::minimax::{TaskReport, TaskState};
use super::Engine;
use crate::signing::Purpose;

/// What to answer MiniMax.
pub enum CallbackReply {
    /// Echo of the handshake challenge.
    Challenge(Value),
    /// A push was taken (or was stale and ignored).
    Accepted,
    /// Not a URL reelgate handed out.
    Forbidden,
    /// Not a JSON body of either kind.
    BadRequest(String),
}

impl CallbackReply {
    /// The JSON body for the reply.
    pub fn body(&self) -> Value {
        match self {
            Self::Challenge(c) => json!({ "challenge": c }),
            Self::Accepted => json!({ "status": "success" }),
            Self::Forbidden => json!({ "error": "Unknown callback" }),
            Self::BadRequest(m) => json!({ "error": m }),
        }
    }
}

/// Handles one callback request for `job_id` carrying `token`.
pub async fn handle(engine: &Arc<Engine>, job_id: &str, token: &str, body: &[u8]) -> CallbackReply {
    if !engine.signer().verify(Purpose::Callback, job_id, token) {
        return CallbackReply::Forbidden;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return CallbackReply::BadRequest("Body is not JSON".into());
    };
    // The handshake arrives while the create call is still in flight: answer at once,
    // whatever the job's state (MiniMax gives us 3 seconds).
    if let Some(challenge) = value.get("challenge") {
        return CallbackReply::Challenge(challenge.clone());
    }
    let Ok(report) = serde_json::from_value::<TaskReport>(value) else {
        return CallbackReply::BadRequest("Not a task report".into());
    };
    let Ok(id) = job_id.parse::<JobId>() else { return CallbackReply::Forbidden };
    let job = match engine.store.engine_job(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return CallbackReply::Forbidden,
        Err(e) => {
            tracing::warn!(job.id = %id, error = %e, "could not read the job for a MiniMax callback");
            // MiniMax does not document retries; polling will find the same state.
            return CallbackReply::Accepted;
        }
    };
    if job.stage != Stage::Running || report.task_id.is_some() && report.task_id != job.upstream_task_id {
        tracing::debug!(job.id = %id, stage = ?job.stage, "stale MiniMax callback ignored");
        return CallbackReply::Accepted;
    }
    engine.metrics.inc("callbacks_total", &[]);
    match report.state() {
        Some(TaskState::Success { file_id }) => {
            tracing::info!(job.id = %id, upstream.task_id = job.upstream_task_id.as_deref().unwrap_or(""), "MiniMax callback: success");
            // The copy itself runs on the poller, so the callback's answer does not wait for it.
            engine.start_mirror(job, None, file_id).await;
        }
        Some(TaskState::Fail(err)) => engine.fail_running(&job, err).await,
        Some(TaskState::Processing | TaskState::Preparing | TaskState::Queueing) => engine.note_processing(&job).await,
        None => tracing::debug!(job.id = %id, "MiniMax callback with an unknown status ignored"),
    }
    CallbackReply::Accepted
}
