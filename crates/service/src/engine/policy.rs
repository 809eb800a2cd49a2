//! What the engine does about an upstream error: a pure function from MiniMax's answer
//! (already classified by the adapter into [`UpstreamError`]) and the step that got it
//! to an [`Action`].
//!
//! It owns the decision only. Timing stays symbolic ([`Delay`]), because the back-off
//! carries jitter and the engine's clock; the steps turn a decision into a transition,
//! and log and count it. The policy follows `reference/minimax.md`: rate limits keep
//! the job and wait, account problems (auth, balance) bench the account and give the
//! job to another, refusals fail the job with a refund, and anything transient is tried
//! again until the configured number of attempts is spent.

use super::minimax::UpstreamError;

/// The step an upstream error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A create call; `attempts` counts this one.
    Submit {
        /// Create calls made for the job, this one included.
        attempts: u32,
        /// `engine.max_submit_attempts`.
        max_attempts: u32,
    },
    /// A query call about a running task.
    Poll {
        /// `engine.poll_interval_ms`.
        interval_ms: i64,
    },
    /// MiniMax's own verdict on a task (a query answer or a callback saying `Fail`).
    Task,
}

/// When a job is taken up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// At once.
    Now,
    /// After the engine's exponential back-off for retry `attempt` (1-based, with jitter),
    /// but not before `at_least_ms`.
    Backoff {
        /// Which retry this is.
        attempt: u32,
        /// The shortest wait, in milliseconds.
        at_least_ms: i64,
    },
}

/// What happens to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Back to the queue, to be submitted again (to any account in rotation).
    Requeue {
        /// When.
        after: Delay,
        /// Why, for the log.
        why: &'static str,
    },
    /// Keep the task and ask MiniMax about it again.
    RetryAt {
        /// When.
        after: Delay,
    },
    /// Fail the job (with its refund).
    Fail {
        /// The reason the client sees.
        message: String,
        /// The `reason` label of `jobs_failed_total`.
        reason: String,
    },
}

/// The policy's answer: whether the account leaves rotation, and what becomes of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Take the account out of rotation for `engine.account_cooloff_ms`.
    pub bench: bool,
    /// What becomes of the job.
    pub action: Action,
}

/// MiniMax counts rate limits per minute: a create call refused for rate is not tried
/// again before its window has moved on noticeably.
const RATE_LIMIT_MIN_WAIT_MS: i64 = 10_000;

/// Decides what to do about `err`, met in `step`.
pub fn decide(step: Step, err: &UpstreamError) -> Decision {
    let fail = |reason: String| Action::Fail { message: err.client_message(), reason };
    // MiniMax's verdict on one task says nothing about the account that ran it.
    let bench = matches!(err, UpstreamError::Account { .. }) && step != Step::Task;
    let action = match step {
        Step::Task => fail(format!("task_{}", err.code_label())),
        Step::Submit { attempts, max_attempts } => match err {
            UpstreamError::RateLimited { .. } => Action::Requeue {
                after: Delay::Backoff { attempt: attempts, at_least_ms: RATE_LIMIT_MIN_WAIT_MS },
                why: "rate limited",
            },
            // Another account may take the job at once.
            UpstreamError::Account { .. } => {
                Action::Requeue { after: Delay::Now, why: "upstream account out of rotation" }
            }
            UpstreamError::Rejected { .. } => fail(format!("rejected_{}", err.code_label())),
            UpstreamError::Transient { .. } | UpstreamError::Ambiguous { .. } => {
                if attempts >= max_attempts {
                    fail("upstream_unavailable".into())
                } else {
                    Action::Requeue {
                        after: Delay::Backoff { attempt: attempts, at_least_ms: 0 },
                        why: "transient error",
                    }
                }
            }
        },
        Step::Poll { interval_ms } => match err {
            UpstreamError::Rejected { .. } => fail("query_rejected".into()),
            // A task cannot move to another account: whatever else went wrong, ask again
            // later, no sooner than two poll intervals.
            _ => Action::RetryAt { after: Delay::Backoff { attempt: 1, at_least_ms: interval_ms * 2 } },
        },
    };
    Decision { bench, action }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate() -> UpstreamError {
        UpstreamError::RateLimited { code: 1002, message: "rpm".into() }
    }
    fn transient() -> UpstreamError {
        UpstreamError::Transient { code: Some(1013), message: "internal".into() }
    }
    fn network() -> UpstreamError {
        UpstreamError::Transient { code: None, message: "reset".into() }
    }
    fn account() -> UpstreamError {
        UpstreamError::Account { code: 1008, message: "balance".into() }
    }
    fn rejected() -> UpstreamError {
        UpstreamError::Rejected { code: 1026, message: "sensitive".into() }
    }
    fn ambiguous() -> UpstreamError {
        UpstreamError::Ambiguous { message: "timeout after sending".into() }
    }

    fn requeue(after: Delay, why: &'static str) -> Action {
        Action::Requeue { after, why }
    }
    fn fail(err: &UpstreamError, reason: &str) -> Action {
        Action::Fail { message: err.client_message(), reason: reason.into() }
    }
    fn backoff(attempt: u32, at_least_ms: i64) -> Delay {
        Delay::Backoff { attempt, at_least_ms }
    }

    #[test]
    fn every_upstream_error_maps_to_its_action() {
        let submit = |attempts| Step::Submit { attempts, max_attempts: 3 };
        let poll = Step::Poll { interval_ms: 5_000 };
        let cases: Vec<(Step, UpstreamError, bool, Action)> = vec![
            // Create calls.
            (submit(1), rate(), false, requeue(backoff(1, 10_000), "rate limited")),
            (submit(3), rate(), false, requeue(backoff(3, 10_000), "rate limited")),
            (submit(1), account(), true, requeue(Delay::Now, "upstream account out of rotation")),
            (submit(1), rejected(), false, fail(&rejected(), "rejected_1026")),
            (submit(1), transient(), false, requeue(backoff(1, 0), "transient error")),
            (submit(2), network(), false, requeue(backoff(2, 0), "transient error")),
            (submit(2), ambiguous(), false, requeue(backoff(2, 0), "transient error")),
            (submit(3), transient(), false, fail(&transient(), "upstream_unavailable")),
            (submit(4), ambiguous(), false, fail(&ambiguous(), "upstream_unavailable")),
            // Queries about a running task.
            (poll, rate(), false, Action::RetryAt { after: backoff(1, 10_000) }),
            (poll, transient(), false, Action::RetryAt { after: backoff(1, 10_000) }),
            (poll, network(), false, Action::RetryAt { after: backoff(1, 10_000) }),
            (poll, account(), true, Action::RetryAt { after: backoff(1, 10_000) }),
            (poll, rejected(), false, fail(&rejected(), "query_rejected")),
            // MiniMax's verdict on the task.
            (Step::Task, rejected(), false, fail(&rejected(), "task_1026")),
            (Step::Task, transient(), false, fail(&transient(), "task_1013")),
            (Step::Task, network(), false, fail(&network(), "task_network")),
            (Step::Task, account(), false, fail(&account(), "task_1008")),
        ];
        for (step, err, bench, action) in cases {
            assert_eq!(decide(step, &err), Decision { bench, action }, "{step:?} {err:?}");
        }
    }
}
