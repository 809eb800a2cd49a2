//! Per-key rate limits and the counters behind `GET /sandbox/stats`.
//!
//! The create limit is a sliding 60 s window over *admitted* create requests, as MiniMax's RPM
//! (minimax.md §6): a request refused with 1002 does not enter the window. The window's largest
//! size ever seen is kept per key, which lets a test prove that a client stayed within its budget.
//! Queries and retrieves have their own, optional window (MiniMax does not document one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Length of the sliding window, in ms.
const WINDOW_MS: u64 = 60_000;

/// Counters of one API key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    /// Create requests that passed authentication (admitted or not).
    pub creates_total: u64,
    /// Create requests refused with 1002 "rate limit".
    pub creates_rate_limited: u64,
    /// Largest number of admitted creates inside any 60 s window.
    pub max_creates_in_window: u64,
    /// Creates that produced a task.
    pub tasks_created: u64,
    /// Query requests that passed authentication.
    pub queries_total: u64,
    /// Retrieve requests that passed authentication.
    pub retrieves_total: u64,
    /// Queries and retrieves refused with 1002 by the optional query limit.
    pub queries_rate_limited: u64,
}

/// Everything `GET /sandbox/stats` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    /// Sum of `creates_total` over keys.
    pub creates_total: u64,
    /// Sum of `creates_rate_limited` over keys.
    pub creates_rate_limited: u64,
    /// Largest `max_creates_in_window` of any key.
    pub max_creates_in_window: u64,
    /// Tasks created.
    pub tasks_created: u64,
    /// Query requests (authenticated).
    pub queries_total: u64,
    /// Retrieve requests (authenticated).
    pub retrieves_total: u64,
    /// Download requests on the signed links (primary and backup), whatever their outcome.
    pub downloads_total: u64,
    /// Videos actually rendered (cache misses).
    pub renders: u64,
    /// Challenge requests sent to callback URLs.
    pub callback_handshakes: u64,
    /// Status pushes delivered to callback URLs (any 2xx answer).
    pub callback_pushes: u64,
    /// Status pushes that failed (error, timeout or non-2xx answer); they are not retried.
    pub callback_push_failures: u64,
    /// The same counters per API key (sandbox keys are test fixtures, not secrets).
    pub keys: BTreeMap<String, KeyStats>,
}

impl SandboxStats {
    /// The counters of one key, zero if the key was never seen.
    pub fn key(&self, key: &str) -> KeyStats {
        self.keys.get(key).cloned().unwrap_or_default()
    }
}

#[derive(Default)]
struct KeyState {
    creates: VecDeque<u64>,
    queries: VecDeque<u64>,
    stats: KeyStats,
}

/// Admits or refuses requests per key and counts them.
pub struct Limiter {
    rpm: u32,
    query_rpm: Option<u32>,
    keys: Mutex<HashMap<String, KeyState>>,
    /// Process-wide counters that belong to no key.
    pub downloads: AtomicU64,
    pub renders: AtomicU64,
    pub callback_handshakes: AtomicU64,
    pub callback_pushes: AtomicU64,
    pub callback_push_failures: AtomicU64,
}

/// Drops timestamps that left the window ending at `now` and reports whether one more fits.
fn slide(window: &mut VecDeque<u64>, now: u64, limit: u32) -> bool {
    while window.front().is_some_and(|&t| now.saturating_sub(t) >= WINDOW_MS) {
        window.pop_front();
    }
    limit == 0 || window.len() < limit as usize
}

impl Limiter {
    pub fn new(rpm: u32, query_rpm: Option<u32>) -> Self {
        Limiter {
            rpm,
            query_rpm,
            keys: Mutex::new(HashMap::new()),
            downloads: AtomicU64::new(0),
            renders: AtomicU64::new(0),
            callback_handshakes: AtomicU64::new(0),
            callback_pushes: AtomicU64::new(0),
            callback_push_failures: AtomicU64::new(0),
        }
    }

    fn with_key<T>(&self, key: &str, f: impl FnOnce(&mut KeyState) -> T) -> T {
        let mut keys = self.keys.lock().expect("limiter lock poisoned only by a panic inside it");
        if let Some(state) = keys.get_mut(key) {
            return f(state);
        }
        f(keys.entry(key.to_owned()).or_default())
    }

    /// Counts a create and admits it unless the key's window is full (then: answer 1002).
    pub fn admit_create(&self, key: &str, now_ms: u64) -> bool {
        let rpm = self.rpm;
        self.with_key(key, |k| {
            k.stats.creates_total += 1;
            // With no limit the window is still kept (up to one minute of timestamps) for the stats.
            if slide(&mut k.creates, now_ms, rpm) {
                k.creates.push_back(now_ms);
                k.stats.max_creates_in_window = k.stats.max_creates_in_window.max(k.creates.len() as u64);
                true
            } else {
                k.stats.creates_rate_limited += 1;
                false
            }
        })
    }

    /// Counts a task created for the key.
    pub fn task_created(&self, key: &str) {
        self.with_key(key, |k| k.stats.tasks_created += 1);
    }

    /// Counts a query (`retrieve: false`) or retrieve and applies the optional query limit.
    pub fn admit_query(&self, key: &str, now_ms: u64, retrieve: bool) -> bool {
        let limit = self.query_rpm;
        self.with_key(key, |k| {
            if retrieve {
                k.stats.retrieves_total += 1;
            } else {
                k.stats.queries_total += 1;
            }
            let Some(limit) = limit else { return true };
            if slide(&mut k.queries, now_ms, limit) {
                k.queries.push_back(now_ms);
                true
            } else {
                k.stats.queries_rate_limited += 1;
                false
            }
        })
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> SandboxStats {
        let keys = self.keys.lock().expect("limiter lock poisoned only by a panic inside it");
        let mut out = SandboxStats {
            downloads_total: self.downloads.load(Ordering::Relaxed),
            renders: self.renders.load(Ordering::Relaxed),
            callback_handshakes: self.callback_handshakes.load(Ordering::Relaxed),
            callback_pushes: self.callback_pushes.load(Ordering::Relaxed),
            callback_push_failures: self.callback_push_failures.load(Ordering::Relaxed),
            ..SandboxStats::default()
        };
        for (key, state) in keys.iter() {
            let s = &state.stats;
            out.creates_total += s.creates_total;
            out.creates_rate_limited += s.creates_rate_limited;
            out.max_creates_in_window = out.max_creates_in_window.max(s.max_creates_in_window);
            out.tasks_created += s.tasks_created;
            out.queries_total += s.queries_total;
            out.retrieves_total += s.retrieves_total;
            out.keys.insert(key.clone(), s.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_admits_again_after_a_minute() {
        let l = Limiter::new(3, None);
        assert!(l.admit_create("k", 0));
        assert!(l.admit_create("k", 10_000));
        assert!(l.admit_create("k", 20_000));
        assert!(!l.admit_create("k", 59_999));
        // The first admit leaves the window at 60 s; refusals never entered it.
        assert!(l.admit_create("k", 60_000));
        assert!(!l.admit_create("k", 60_001));
        assert!(l.admit_create("other", 60_001));
        let s = l.stats();
        assert_eq!(s.key("k").creates_total, 6);
        assert_eq!(s.key("k").creates_rate_limited, 2);
        assert_eq!(s.key("k").max_creates_in_window, 3);
        assert_eq!(s.creates_total, 7);
    }

    #[test]
    fn unlimited_still_measures_the_window() {
        let l = Limiter::new(0, None);
        for t in 0..10 {
            assert!(l.admit_create("k", t * 1000));
        }
        assert!(l.admit_create("k", 65_000));
        assert_eq!(l.stats().key("k").max_creates_in_window, 10);
    }

    #[test]
    fn query_limit_is_off_by_default() {
        let l = Limiter::new(1, None);
        for t in 0..100 {
            assert!(l.admit_query("k", t, false));
        }
        let l = Limiter::new(1, Some(2));
        assert!(l.admit_query("k", 0, false));
        assert!(l.admit_query("k", 1, true));
        assert!(!l.admit_query("k", 2, false));
        assert_eq!(l.stats().key("k").queries_rate_limited, 1);
    }
}
