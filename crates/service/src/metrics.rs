//! The service's counters (engine, webhooks, callbacks), served in Prometheus' text format at `/metrics`.
//!
//! A handful of counters updated a few times per job: a mutex around a sorted map is
//! plenty, and keeps the output stable for diffing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use store::QueueDepth;

/// Counters by name and label set.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Metrics {
    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *counters.entry((name, labels)).or_default() += 1;
    }

    /// The current value of `name{labels}` (labels as rendered, e.g. `code="1002"`).
    pub fn get(&self, name: &'static str, labels: &str) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.get(&(name, labels.to_string())).copied().unwrap_or(0)
    }

    /// Everything, plus the queue gauges, as Prometheus text.
    pub fn render(&self, depth: Option<QueueDepth>) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = "";
        for ((name, labels), value) in counters.iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE reelgate_{name} counter");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "reelgate_{name} {value}");
            } else {
                let _ = writeln!(out, "reelgate_{name}{{{labels}}} {value}");
            }
        }
        if let Some(depth) = depth {
            let _ = writeln!(out, "# TYPE reelgate_jobs_queued gauge\nreelgate_jobs_queued {}", depth.queued);
            let _ = writeln!(out, "# TYPE reelgate_jobs_active gauge\nreelgate_jobs_active {}", depth.active);
        }
        out
    }
}
