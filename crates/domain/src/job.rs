//! Job states and webhook vocabularies as they appear on the Apiframe wire.
//!
//! The engine (a later issue) adds internal states behind these public ones; the
//! public set is fixed by the spec's `Job.status` enum.

/// Public job status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Accepted and charged, waiting for an upstream slot.
    Queued,
    /// Submitted upstream and generating.
    Processing,
    /// Finished; `result` holds the video.
    Completed,
    /// Finished without a video; credits refunded.
    Failed,
    /// Stopped before it ran; credits refunded.
    Cancelled,
}

impl JobStatus {
    /// All statuses in lifecycle order.
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Processing, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

    /// The wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Events a client can subscribe to with `webhookEvents`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookEvent {
    /// Progress changed.
    Progress,
    /// The job completed.
    Completed,
    /// The job failed.
    Failed,
}

impl WebhookEvent {
    /// Every event.
    pub const ALL: [WebhookEvent; 3] = [WebhookEvent::Progress, WebhookEvent::Completed, WebhookEvent::Failed];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Delivery state of a job's webhook, as the spec spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookStatus {
    /// Not yet delivered.
    Pending,
    /// A delivery was acknowledged with 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

impl WebhookStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_know_terminality() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Processing.is_terminal());
        assert!(JobStatus::Completed.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
        assert!(JobStatus::Cancelled.is_terminal());
        assert_eq!(JobStatus::parse("queued"), None);
    }
}
