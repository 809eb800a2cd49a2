//! The service's metrics (engine, webhooks, callbacks, HTTP), served in the OpenMetrics
//! text format at `/metrics` by `prometheus-client`.
//!
//! Every family is registered once, in [`Metrics::new`], so a scrape of a fresh server
//! already lists each one, and the counters whose label values are known up front
//! (configured upstreams, failure reasons, webhook outcomes) show a sample at zero: a
//! `rate()` over a counter that appears only on its first increment misses that first
//! increment. This module knows metric names and label sets, never jobs or requests.
//!
//! Callers name a metric by a `&'static str` (`inc("refunds_total", &[])`) so the
//! engine's steps each record with one line; an unknown name is a bug, caught by the
//! `debug_assert!`s and the tests, and ignored in release builds rather than crashing.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use store::QueueDepth;

/// A label set, in the order the caller gave it (which is the order rendered).
type Labels = Vec<(String, String)>;
/// A histogram family; each family's buckets come from its constructor.
type Histograms = Family<Labels, Histogram, Buckets>;
/// Makes an empty histogram with a family's buckets.
type Buckets = fn() -> Histogram;

/// Counters without labels: `(name, help)`. Names keep the `_total` they had before
/// `prometheus-client`, which adds `_total` itself, so registration strips it.
const PLAIN_COUNTERS: &[(&str, &str)] = &[
    ("jobs_completed_total", "Jobs that completed with their video stored."),
    ("refunds_total", "Failed jobs whose credits were refunded."),
    ("callbacks_total", "Task callbacks received from MiniMax."),
    ("download_failures_total", "Failed attempts to copy a result video."),
];

/// Counters with labels: `(name, help)`; callers give the label set.
const LABELED_COUNTERS: &[(&str, &str)] = &[
    ("jobs_failed_total", "Jobs that failed, by reason."),
    ("submissions_total", "Create calls MiniMax accepted, by upstream account."),
    ("upstream_errors_total", "Errors from MiniMax, by upstream account and code."),
    ("upstream_accounts_benched_total", "Times an upstream account was taken out of rotation."),
    ("webhook_attempts_total", "Webhook delivery attempts, by outcome."),
];

/// `jobs_failed_total` reasons that do not depend on an upstream code (see `Engine::fail`).
const FIXED_FAILURE_REASONS: &[&str] =
    &["deadline", "download", "input", "query_rejected", "upstream_removed", "upstream_unavailable"];
/// `webhook_attempts_total` outcomes (see `webhooks::deliver`).
const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "retry", "gave_up"];

/// Buckets for a job's whole life: the sandbox's seconds to real generations' minutes.
fn job_duration() -> Histogram {
    Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0])
}

/// Buckets for one outbound call (MiniMax, a webhook receiver): tens of ms to the timeouts.
fn outbound_call() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// Buckets for our own HTTP answers: mostly a few ms, uploads and downloads longer.
fn http_request() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Histograms: `(name, help, buckets)`.
const HISTOGRAMS: &[(&str, &str, Buckets)] = &[
    ("job_duration_seconds", "Time from a job's acceptance to its end, by model and outcome.", job_duration),
    ("upstream_request_duration_seconds", "MiniMax call latency, by call and outcome.", outbound_call),
    ("http_request_duration_seconds", "HTTP request duration, by route template and status class.", http_request),
    ("webhook_delivery_duration_seconds", "Webhook delivery attempt latency, by outcome.", outbound_call),
];

/// Gauges with labels: `(name, help)`.
const GAUGES: &[(&str, &str)] = &[
    ("jobs_queued", "Jobs waiting in the queue."),
    ("jobs_active", "Jobs the engine is working on."),
    ("oldest_queued_job_age_seconds", "Whole seconds the oldest queued job has waited; 0 when none waits."),
    ("upstream_creates_left", "Create calls each upstream account may make now within its per-minute budget."),
    ("build_info", "Always 1; the labels say which build is running."),
];

/// Every metric of the service, in one registry.
pub struct Metrics {
    registry: Registry,
    plain: HashMap<&'static str, Counter>,
    counters: HashMap<&'static str, Family<Labels, Counter>>,
    histograms: HashMap<&'static str, Histograms>,
    gauges: HashMap<&'static str, Family<Labels, Gauge>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, with the counters whose labels are known at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reelgate");
        let mut plain = HashMap::new();
        for (name, help) in PLAIN_COUNTERS {
            let counter = Counter::default();
            registry.register(strip_total(name), *help, counter.clone());
            plain.insert(*name, counter);
        }
        let mut counters = HashMap::new();
        for (name, help) in LABELED_COUNTERS {
            let family = Family::<Labels, Counter>::default();
            registry.register(strip_total(name), *help, family.clone());
            counters.insert(*name, family);
        }
        let mut histograms = HashMap::new();
        for (name, help, buckets) in HISTOGRAMS {
            let family: Histograms = Family::new_with_constructor(*buckets);
            registry.register(*name, *help, family.clone());
            histograms.insert(*name, family);
        }
        let mut gauges = HashMap::new();
        for (name, help) in GAUGES {
            let family = Family::<Labels, Gauge>::default();
            registry.register(*name, *help, family.clone());
            gauges.insert(*name, family);
        }
        let metrics = Self { registry, plain, counters, histograms, gauges };
        for reason in FIXED_FAILURE_REASONS {
            metrics.touch("jobs_failed_total", &[("reason", reason)]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            metrics.touch("webhook_attempts_total", &[("outcome", outcome)]);
        }
        metrics.set_gauge("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        metrics
    }

    /// Shows the per-upstream counters of `upstream` at zero before its first event.
    pub fn add_upstream(&self, upstream: &str) {
        self.touch("submissions_total", &[("upstream", upstream)]);
        self.touch("upstream_accounts_benched_total", &[("upstream", upstream)]);
        // MiniMax's numeric codes are only known once one comes back; these two are
        // ours (see `UpstreamError::code_label`), so they can be listed up front.
        for code in ["network", "unknown_outcome"] {
            self.touch("upstream_errors_total", &[("upstream", upstream), ("code", code)]);
        }
    }

    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        if let Some(counter) = self.plain.get(name) {
            counter.inc();
        } else if let Some(family) = self.counters.get(name) {
            family.get_or_create(&owned(labels)).inc();
        } else {
            debug_assert!(false, "no counter named {name}");
        }
    }

    /// Records `took` in the histogram `name{labels}`.
    pub fn observe(&self, name: &'static str, labels: &[(&str, &str)], took: Duration) {
        match self.histograms.get(name) {
            Some(family) => family.get_or_create(&owned(labels)).observe(took.as_secs_f64()),
            None => debug_assert!(false, "no histogram named {name}"),
        }
    }

    /// Sets the gauge `name{labels}`.
    pub fn set_gauge(&self, name: &'static str, labels: &[(&str, &str)], value: i64) {
        match self.gauges.get(name) {
            Some(family) => {
                family.get_or_create(&owned(labels)).set(value);
            }
            None => debug_assert!(false, "no gauge named {name}"),
        }
    }

    /// Everything as OpenMetrics text, after setting the gauges read at scrape time:
    /// the queue (left as last seen when the store did not answer) and each upstream's
    /// create calls left.
    pub fn render(&self, depth: Option<QueueDepth>, creates_left: &[(String, u32)]) -> String {
        if let Some(depth) = depth {
            self.set_gauge("jobs_queued", &[], depth.queued as i64);
            self.set_gauge("jobs_active", &[], depth.active as i64);
            let waited_ms = depth.oldest_queued_at_ms.map_or(0, |at| (crate::now_ms() - at).max(0));
            self.set_gauge("oldest_queued_job_age_seconds", &[], waited_ms / 1000);
        }
        for (upstream, left) in creates_left {
            self.set_gauge("upstream_creates_left", &[("upstream", upstream)], i64::from(*left));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Makes `name{labels}` appear at zero.
    fn touch(&self, name: &'static str, labels: &[(&str, &str)]) {
        if let Some(family) = self.counters.get(name) {
            drop(family.get_or_create(&owned(labels)));
        }
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn strip_total(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_names_and_labels_and_start_at_zero() {
        let m = Metrics::new();
        m.add_upstream("broke");
        let text = m.render(None, &[]);
        assert!(text.contains("reelgate_refunds_total 0\n"), "{text}");
        assert!(text.contains("reelgate_upstream_accounts_benched_total{upstream=\"broke\"} 0\n"), "{text}");
        m.inc("refunds_total", &[]);
        m.inc("upstream_errors_total", &[("upstream", "a"), ("code", "1002")]);
        let text = m.render(None, &[]);
        assert!(text.contains("reelgate_refunds_total 1\n"), "{text}");
        assert!(text.contains("reelgate_upstream_errors_total{upstream=\"a\",code=\"1002\"} 1\n"), "{text}");
    }

    #[test]
    fn gauges_and_histograms_render() {
        let m = Metrics::new();
        m.observe("job_duration_seconds", &[("model", "m"), ("outcome", "completed")], Duration::from_secs(3));
        let oldest = crate::now_ms() - 90_500;
        let depth = QueueDepth { queued: 4, active: 2, oldest_queued_at_ms: Some(oldest) };
        let text = m.render(Some(depth), &[("sandbox".into(), 7)]);
        assert!(text.contains("reelgate_jobs_queued 4\n"), "{text}");
        assert!(text.contains("reelgate_oldest_queued_job_age_seconds 90\n"), "{text}");
        assert!(text.contains("reelgate_upstream_creates_left{upstream=\"sandbox\"} 7\n"), "{text}");
        assert!(text.contains("reelgate_job_duration_seconds_count{model=\"m\",outcome=\"completed\"} 1\n"), "{text}");
        assert!(text.contains("reelgate_build_info{version=\""), "{text}");
    }
}
