//! Client webhook events: which events a job's transition raises, whether the client
//! subscribed to them, and the exact payload bytes, as Apiframe's docs define them.
//!
//! The payload is built once, when the event is written to the outbox, and every
//! delivery attempt sends those same bytes: signatures are over the exact body, and a
//! retry must be byte-identical to the first try.

use serde_json::{json, Value};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::{JobId, JobStatus, WebhookEvent};

const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Unix milliseconds as an RFC 3339 UTC timestamp with millisecond precision, the form
/// every timestamp on our wire takes.
pub fn timestamp(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(RFC3339_MILLIS).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

/// Whether a client that sent `subscribed` (the request's `webhookEvents`, `None` when
/// absent) wants `event`. Without a list, `completed` and `failed` are sent.
pub fn wants(subscribed: Option<&[WebhookEvent]>, event: WebhookEvent) -> bool {
    match subscribed {
        Some(list) => list.contains(&event),
        None => event != WebhookEvent::Progress,
    }
}

/// Parses the stored comma-separated `webhookEvents` list; unknown names are ignored.
pub fn parse_events(stored: Option<&str>) -> Option<Vec<WebhookEvent>> {
    stored.map(|s| s.split(',').filter_map(WebhookEvent::parse).collect())
}

/// What a payload is built from: the job right after the transition.
pub struct EventJob<'a> {
    /// Id.
    pub id: JobId,
    /// Public status after the transition.
    pub status: JobStatus,
    /// Model id.
    pub model: &'a str,
    /// Progress after the transition.
    pub progress: i64,
    /// Result object, for `completed`.
    pub result: Option<&'a Value>,
    /// Failure reason, for `failed`.
    pub error: Option<&'a str>,
    /// Credits charged (0 after a refund).
    pub credit_cost: i64,
    /// Terminal time.
    pub completed_at_ms: Option<i64>,
}

/// The JSON body of `event` for `job`.
pub fn payload(event: WebhookEvent, job: &EventJob<'_>) -> String {
    let id = job.id.to_string();
    let body = match event {
        WebhookEvent::Completed => json!({
            "event": "completed",
            "jobId": id,
            "status": "COMPLETED",
            "progress": 100,
            "result": job.result,
            "model": job.model,
            "creditCost": job.credit_cost,
            "completedAt": job.completed_at_ms.map(timestamp),
        }),
        WebhookEvent::Failed => json!({
            "event": "failed",
            "jobId": id,
            "status": "FAILED",
            "error": job.error,
            "model": job.model,
        }),
        WebhookEvent::Progress => json!({
            "event": "progress",
            "jobId": id,
            "status": job.status.as_str(),
            "progress": job.progress,
            "model": job.model,
        }),
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_subscription_is_completed_and_failed() {
        assert!(wants(None, WebhookEvent::Completed));
        assert!(wants(None, WebhookEvent::Failed));
        assert!(!wants(None, WebhookEvent::Progress));
        let only = [WebhookEvent::Progress];
        assert!(wants(Some(&only), WebhookEvent::Progress));
        assert!(!wants(Some(&only), WebhookEvent::Completed));
        assert_eq!(parse_events(Some("progress,failed")), Some(vec![WebhookEvent::Progress, WebhookEvent::Failed]));
        assert_eq!(parse_events(None), None);
    }

    #[test]
    fn payloads_have_the_documented_shapes() {
        let result = json!({"videoUrl": "https://x/v.mp4"});
        let job = EventJob {
            id: JobId::new(),
            status: JobStatus::Completed,
            model: "hailuo-2.3",
            progress: 100,
            result: Some(&result),
            error: None,
            credit_cost: 5,
            completed_at_ms: Some(0),
        };
        let v: Value = serde_json::from_str(&payload(WebhookEvent::Completed, &job)).unwrap();
        assert_eq!(v["event"], "completed");
        assert_eq!(v["status"], "COMPLETED");
        assert_eq!(v["progress"], 100);
        assert_eq!(v["result"]["videoUrl"], "https://x/v.mp4");
        assert_eq!(v["creditCost"], 5);
        assert_eq!(v["completedAt"], "1970-01-01T00:00:00.000Z");
        let failed = EventJob { status: JobStatus::Failed, error: Some("no"), result: None, ..job };
        let v: Value = serde_json::from_str(&payload(WebhookEvent::Failed, &failed)).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["error"].as_str(), v.as_object().unwrap().len()),
            (Some("failed"), Some("no"), 5)
        );
        let running = EventJob { status: JobStatus::Processing, progress: 25, ..failed };
        let v: Value = serde_json::from_str(&payload(WebhookEvent::Progress, &running)).unwrap();
        assert_eq!((v["status"].as_str(), v["progress"].as_i64()), (Some("PROCESSING"), Some(25)));
    }
}
