//! What the webhook worker and the API ask of a store: claiming due events from the
//! outbox, recording attempts, and reading a job's delivery history.

use domain::webhook::{self, EventJob};
use domain::{JobId, Stage, WebhookEvent, WebhookStatus};

use crate::EngineJob;

/// An event a transition raised for the job's client, ready for the outbox.
#[derive(Clone, Debug)]
pub struct RaisedEvent {
    /// A new event id (`msg_` and a UUID v7); the Standard Webhooks `webhook-id`.
    pub event_id: String,
    /// Which event.
    pub event: WebhookEvent,
    /// The exact body every attempt sends.
    pub payload: String,
}

/// The event a transition that left `job` as it is now raises for a client subscribed
/// with `events` (the stored comma-separated list; none stored means completed and
/// failed), if any. `old_progress` is the job's progress before the transition. Every
/// backend writes the result in the transition's own transaction, so a crash cannot
/// separate a job's change from its client's event.
pub fn raised_event(job: &EngineJob, events: Option<&str>, old_progress: i64) -> Option<RaisedEvent> {
    let progress = job.record.progress.unwrap_or(0);
    let raised = match job.stage {
        Stage::Completed => Some(WebhookEvent::Completed),
        Stage::Failed => Some(WebhookEvent::Failed),
        s if s.is_active() && progress > old_progress => Some(WebhookEvent::Progress),
        _ => None,
    };
    let event = raised.filter(|e| webhook::wants(webhook::parse_events(events).as_deref(), *e))?;
    let r = &job.record;
    let payload = webhook::payload(
        event,
        &EventJob {
            id: r.id,
            status: r.status,
            model: &r.model,
            progress,
            result: r.result.as_ref(),
            error: r.error.as_deref(),
            credit_cost: r.credit_cost,
            completed_at_ms: r.completed_at_ms,
        },
    );
    Some(RaisedEvent { event_id: format!("msg_{}", uuid::Uuid::now_v7().simple()), event, payload })
}

/// An event claimed for one delivery attempt, with everything needed to send it.
#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    /// The event's id; the Standard Webhooks `webhook-id`.
    pub event_id: String,
    /// The job that raised it.
    pub job_id: JobId,
    /// Which event.
    pub event: WebhookEvent,
    /// Destination.
    pub url: String,
    /// The exact body to send.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The signing secret: the SHA-256 digest of the API key that created the job.
    pub secret: [u8; 32],
}

/// What an attempt leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx: done.
    Delivered,
    /// Failed; try again at this time (unix ms).
    RetryAt(i64),
    /// Failed for the last time.
    GaveUp,
}

/// One attempt, as the worker reports it.
#[derive(Clone, Debug)]
pub struct WebhookAttempt {
    /// The event.
    pub event_id: String,
    /// When it started (unix ms).
    pub attempted_at_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// How long it took.
    pub duration_ms: i64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The first KiB of the answer.
    pub response_body: Option<String>,
    /// What happens next.
    pub outcome: AttemptOutcome,
}

/// A recorded attempt, as `GET /v2/jobs/{id}/webhooks` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it started (unix ms).
    pub attempted_at_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// How long it took.
    pub duration_ms: i64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The first KiB of the answer.
    pub response_body: Option<String>,
}

/// One event of a job with its attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEventRecord {
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// Which event.
    pub event: WebhookEvent,
    /// Destination.
    pub url: String,
    /// Delivery state.
    pub status: WebhookStatus,
    /// When the next attempt is due, while pending.
    pub next_attempt_at_ms: Option<i64>,
    /// When the event was raised.
    pub created_at_ms: i64,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
}
