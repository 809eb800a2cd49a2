//! Wire shapes shared by several resources: the Job object and timestamps.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use store::JobRecord;

pub use domain::webhook::timestamp;

/// The spec's Job object, serialized straight from the stored record: a typed view that
/// borrows, so a poll does not copy the job into a tree of `Value`s first.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView<'a> {
    id: uuid::Uuid,
    status: &'static str,
    model: &'a str,
    progress: Option<i64>,
    result: Option<Cow<'a, Value>>,
    error: Option<&'a str>,
    credit_cost: i64,
    webhook_status: Option<&'static str>,
    created_at: String,
    completed_at: Option<String>,
    expired: bool,
    /// The submitted request; single-job reads only (list pages leave it out, as the
    /// spec's list item does, to stay small).
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a RawValue>,
}

impl<'a> JobView<'a> {
    /// A view of `job`, with the request as submitted when `with_input`.
    pub fn new(job: &'a JobRecord, with_input: bool) -> Self {
        Self {
            id: job.id.0,
            status: job.status.as_str(),
            model: &job.model,
            progress: job.progress,
            result: job.result.as_ref().map(Cow::Borrowed),
            error: job.error.as_deref(),
            credit_cost: job.credit_cost,
            webhook_status: job.webhook_status.map(|w| w.as_str()),
            created_at: timestamp(job.created_at_ms),
            completed_at: job.completed_at_ms.map(timestamp),
            expired: job.expired,
            input: with_input.then_some(&*job.input),
        }
    }

    /// The same view showing `result` instead of the stored result object.
    pub fn with_result(mut self, result: Value) -> Self {
        self.result = Some(Cow::Owned(result));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
