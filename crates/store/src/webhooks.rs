//! What the webhook worker and the API ask of a store: claiming due events from the
//! outbox, recording attempts, and reading a job's delivery history.

use domain::{JobId, WebhookEvent, WebhookStatus};

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
