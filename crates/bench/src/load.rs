//! The load model shared by the HTTP bench and the database baseline: a run's plan, a
//! measurement, and the window in which requests count.

use std::time::{Duration, Instant};

use crate::client::ClientKind;

/// How hard and how long to drive each endpoint.
pub(crate) struct LoadPlan {
    pub(crate) concurrency: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) client: ClientKind,
}

/// One endpoint's figures.
pub(crate) struct Measurement {
    pub(crate) endpoint: &'static str,
    pub(crate) requests: usize,
    pub(crate) rps: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<(u16, String)>,
}

/// The measured part of a run: requests sent at or after `from` and answered by `until`.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) from: Instant,
    pub(crate) until: Instant,
}

/// The nearest-rank percentile `p` (0..=1) of sorted microsecond latencies, in ms.
pub(crate) fn percentile_ms(sorted_us: &[u32], p: f64) -> Option<f64> {
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len().max(1));
    sorted_us.get(rank - 1).map(|&us| f64::from(us) / 1000.0)
}
