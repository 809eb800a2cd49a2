//! Wire shapes shared by several resources: the Job object and timestamps.

use serde_json::{json, Map, Value};
use store::JobRecord;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Unix milliseconds as an RFC 3339 UTC timestamp with millisecond precision.
pub fn timestamp(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(RFC3339_MILLIS).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

/// The spec's Job object. `with_input` adds the submitted request (single-job reads only:
/// list pages leave it out, as the spec's list item does, to stay small).
pub fn job_json(job: &JobRecord, with_input: bool) -> Value {
    let mut m = Map::with_capacity(12);
    m.insert("id".into(), json!(job.id.to_string()));
    m.insert("status".into(), json!(job.status.as_str()));
    m.insert("model".into(), json!(job.model));
    m.insert("progress".into(), json!(job.progress));
    m.insert("result".into(), job.result.clone().unwrap_or(Value::Null));
    m.insert("error".into(), json!(job.error));
    m.insert("creditCost".into(), json!(job.credit_cost));
    m.insert("webhookStatus".into(), json!(job.webhook_status.map(|w| w.as_str())));
    m.insert("createdAt".into(), json!(timestamp(job.created_at_ms)));
    m.insert("completedAt".into(), json!(job.completed_at_ms.map(timestamp)));
    m.insert("expired".into(), json!(job.expired));
    if with_input {
        m.insert("input".into(), job.input.clone());
    }
    Value::Object(m)
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
