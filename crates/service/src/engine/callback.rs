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

/// What a callback body says.
enum CallbackBody {
    /// The handshake: echo the challenge back.
    Challenge(Value),
    /// A status push.
    Report(TaskReport),
}

/// Reads a callback body; the error is the message for a 400. Kept apart from the
/// handler so the property tests can feed it anything.
fn parse_callback(body: &[u8]) -> Result<CallbackBody, &'static str> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Err("Body is not JSON");
    };
    if let Some(challenge) = value.get("challenge") {
        return Ok(CallbackBody::Challenge(challenge.clone()));
    }
    serde_json::from_value::<TaskReport>(value).map(CallbackBody::Report).map_err(|_| "Not a task report")
}

/// Handles one callback request for `job_id` carrying `token`.
pub async fn handle(engine: &Arc<Engine>, job_id: &str, token: &str, body: &[u8]) -> CallbackReply {
    if !engine.links.signer().verify(Purpose::Callback, job_id, token) {
        return CallbackReply::Forbidden;
    }
    let report = match parse_callback(body) {
        // The handshake arrives while the create call is still in flight: answer at once,
        // whatever the job's state (MiniMax gives us 3 seconds).
        Ok(CallbackBody::Challenge(challenge)) => return CallbackReply::Challenge(challenge),
        Ok(CallbackBody::Report(report)) => report,
        Err(message) => return CallbackReply::BadRequest(message.into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn handshakes_and_reports_are_told_apart() {
        assert!(matches!(parse_callback(br#"{"challenge":"abc"}"#), Ok(CallbackBody::Challenge(c)) if c == "abc"));
        assert!(matches!(
            parse_callback(br#"{"task_id":"1","status":"success","file_id":2}"#),
            Ok(CallbackBody::Report(_))
        ));
        assert_eq!(parse_callback(b"nope").err(), Some("Body is not JSON"));
        assert_eq!(parse_callback(br#"{"status":3}"#).err(), Some("Not a task report"));
    }

    /// Property test: any body gets an answer (challenge, report or a 400), never a panic.
    fn callback_body() -> impl Strategy<Value = Vec<u8>> {
        let scalar = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(serde_json::Value::String),
            prop_oneof![Just("success"), Just("failed"), Just("processing")].prop_map(|s| json!(s)),
        ];
        prop_oneof![
            (proptest::option::of(scalar.clone()), scalar.clone(), scalar.clone(), scalar.clone(), scalar).prop_map(
                |(challenge, task_id, status, file_id, code)| {
                    let mut body = json!({"task_id": task_id, "status": status, "file_id": file_id,
                                          "base_resp": {"status_code": code, "status_msg": "m"}});
                    if let Some(c) = challenge {
                        body["challenge"] = c;
                    }
                    body.to_string().into_bytes()
                }
            ),
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,64}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_callback_body_is_answered(body in callback_body()) {
            if let Ok(CallbackBody::Report(report)) = parse_callback(&body) {
                // Reading the state is what the handler does next.
                let _ = report.state();
            }
        }
    }
}
