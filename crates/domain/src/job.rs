//! Job states: the public statuses of the Apiframe wire, the engine's internal stages
//! behind them and the transitions allowed between stages, plus the webhook
//! vocabularies.

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

/// Where the engine is with a job. Several stages show as one public status: a client
/// sees PROCESSING from the moment the engine takes a job until its video is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Waiting for an upstream slot (possibly after a back-off).
    Queued,
    /// Taken by the engine; the create call is being prepared or is in flight.
    Submitting,
    /// The upstream task exists; the engine polls it or waits for its callback.
    Running,
    /// The upstream finished; the video is being copied into reelgate's storage.
    Downloading,
    /// The video is stored and served by reelgate.
    Completed,
    /// Ended without a video; refunded.
    Failed,
    /// Cancelled before it reached the upstream; refunded.
    Cancelled,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 7] = [
        Stage::Queued,
        Stage::Submitting,
        Stage::Running,
        Stage::Downloading,
        Stage::Completed,
        Stage::Failed,
        Stage::Cancelled,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitting => "submitting",
            Self::Running => "running",
            Self::Downloading => "downloading",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The status a client sees.
    pub fn public_status(self) -> JobStatus {
        match self {
            Self::Queued => JobStatus::Queued,
            Self::Submitting | Self::Running | Self::Downloading => JobStatus::Processing,
            Self::Completed => JobStatus::Completed,
            Self::Failed => JobStatus::Failed,
            Self::Cancelled => JobStatus::Cancelled,
        }
    }

    /// Whether the job is out of the queue and not finished: it counts against the
    /// account's `maxConcurrentJobs`.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Submitting | Self::Running | Self::Downloading)
    }

    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        self.public_status().is_terminal()
    }

    /// Whether reaching this stage gives the job's cost back.
    pub fn refunds(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }

    /// Whether the engine may move a job from `self` to `to`. Staying in the same
    /// active stage is allowed: it reschedules the job (a new poll time or lease).
    pub fn can_move_to(self, to: Stage) -> bool {
        use Stage::*;
        match (self, to) {
            // Claimed by the engine, or cancelled by its owner.
            (Queued, Submitting | Cancelled | Failed) => true,
            // The create call succeeded, was refused for good, or must be retried later.
            (Submitting, Running | Failed | Queued | Submitting) => true,
            // The upstream finished (or its callback said so), failed, or is still busy.
            (Running, Downloading | Failed | Running) => true,
            // The copy succeeded or gave up; a retry keeps the stage.
            (Downloading, Completed | Failed | Downloading) => true,
            _ => false,
        }
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
    fn every_stage_edge_is_as_designed() {
        use Stage::*;
        // (from, allowed targets); everything not listed is refused.
        let allowed: [(Stage, &[Stage]); 7] = [
            (Queued, &[Submitting, Cancelled, Failed]),
            (Submitting, &[Running, Failed, Queued, Submitting]),
            (Running, &[Downloading, Failed, Running]),
            (Downloading, &[Completed, Failed, Downloading]),
            (Completed, &[]),
            (Failed, &[]),
            (Cancelled, &[]),
        ];
        for (from, targets) in allowed {
            for to in Stage::ALL {
                assert_eq!(from.can_move_to(to), targets.contains(&to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn stages_round_trip_and_map_to_public_statuses() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            assert_eq!(s.is_terminal(), s.public_status().is_terminal());
        }
        assert_eq!(Stage::Downloading.public_status(), JobStatus::Processing);
        assert!(Stage::Failed.refunds() && Stage::Cancelled.refunds() && !Stage::Completed.refunds());
        assert!(Stage::Submitting.is_active() && !Stage::Queued.is_active() && !Stage::Completed.is_active());
    }

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
