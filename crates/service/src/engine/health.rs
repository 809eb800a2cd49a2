//! What this node's engine knows of each MiniMax account's health: whether the engine
//! took it out of rotation after an account problem (until when, and why), which
//! accounts an operator holds out of rotation (read from the store, so every node obeys
//! a hold made on any of them), and the errors each account answered over the last hour,
//! for the admin view.
//!
//! The engine's own benches stay in memory: they follow what this node saw, and a
//! restart that forgets one costs at most one more refused call. Operator holds are
//! decisions, so they are stored and survive restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use store::{Store, UpstreamHold};

/// How far back the error counts reach.
const ERROR_WINDOW: Duration = Duration::from_secs(3600);
/// Errors remembered per account at most; beyond it the oldest are dropped, so a storm
/// of errors costs bounded memory (the counts then read low, never high).
const MAX_ERRORS_KEPT: usize = 10_000;
/// How long a read of the operator holds is trusted before the store is asked again.
const HOLDS_TTL: Duration = Duration::from_secs(1);

/// One account's health as the engine tracks it.
#[derive(Default)]
pub struct Health {
    bench: Mutex<Option<Bench>>,
    errors: Mutex<VecDeque<(Instant, String)>>,
}

struct Bench {
    until: Instant,
    until_ms: i64,
    reason: String,
}

/// Why and until when an account is out of rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfRotation {
    /// Until this time (unix ms).
    pub until_ms: i64,
    /// Why.
    pub reason: String,
}

impl Health {
    /// Takes the account out of rotation for `cooloff`.
    pub fn bench(&self, cooloff: Duration, reason: &str) {
        let bench = Bench {
            until: Instant::now() + cooloff,
            until_ms: crate::now_ms() + cooloff.as_millis() as i64,
            reason: reason.to_owned(),
        };
        *self.bench.lock().unwrap_or_else(|p| p.into_inner()) = Some(bench);
    }

    /// The engine's bench of the account called `name`, if it still runs; an expired one
    /// is forgotten here.
    pub fn benched(&self, name: &str) -> Option<OutOfRotation> {
        let mut bench = self.bench.lock().unwrap_or_else(|p| p.into_inner());
        match &*bench {
            Some(b) if b.until > Instant::now() => {
                Some(OutOfRotation { until_ms: b.until_ms, reason: b.reason.clone() })
            }
            Some(_) => {
                *bench = None;
                tracing::info!(upstream = %name, "MiniMax account back in rotation");
                None
            }
            None => None,
        }
    }

    /// Counts an error answered by the account.
    pub fn record_error(&self, code: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        trim(&mut errors, now);
        if errors.len() >= MAX_ERRORS_KEPT {
            errors.pop_front();
        }
        errors.push_back((now, code.to_owned()));
    }

    /// Errors over the last hour, by code.
    pub fn errors_last_hour(&self) -> BTreeMap<String, u64> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        trim(&mut errors, Instant::now());
        let mut counts = BTreeMap::new();
        for (_, code) in errors.iter() {
            *counts.entry(code.clone()).or_insert(0) += 1;
        }
        counts
    }
}

fn trim(errors: &mut VecDeque<(Instant, String)>, now: Instant) {
    while errors.front().is_some_and(|(at, _)| now.duration_since(*at) > ERROR_WINDOW) {
        errors.pop_front();
    }
}

/// The operator holds, as last read from the store.
#[derive(Default)]
pub struct Holds {
    read: Mutex<(Option<Instant>, HashMap<String, UpstreamHold>)>,
}

impl Holds {
    /// Reads the holds again if the last read is older than a second (or was forgotten).
    /// A failed read keeps the previous holds: the store being down is no reason to
    /// send work to an account an operator held back.
    pub async fn refresh(&self, store: &dyn Store) {
        let fresh = {
            let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            read.0.is_some_and(|at| at.elapsed() < HOLDS_TTL)
        };
        if fresh {
            return;
        }
        match store.upstream_holds(crate::now_ms()).await {
            Ok(holds) => {
                let by_name = holds.into_iter().map(|h| (h.name.clone(), h)).collect();
                *self.read.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), by_name);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the upstream holds; keeping the last ones"),
        }
    }

    /// Makes the next [`Holds::refresh`] read the store (after this node changed a hold).
    pub fn forget(&self) {
        self.read.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }

    /// The hold on `name`, if one lasts beyond now.
    pub fn on(&self, name: &str) -> Option<UpstreamHold> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.1.get(name).filter(|h| h.until_ms > crate::now_ms()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_tells_why_and_ends_by_itself() {
        let health = Health::default();
        assert_eq!(health.benched("a"), None);
        health.bench(Duration::from_secs(60), "insufficient balance (1008)");
        let out = health.benched("a").expect("benched");
        assert_eq!(out.reason, "insufficient balance (1008)");
        assert!(out.until_ms > crate::now_ms() + 50_000);
        health.bench(Duration::ZERO, "gone at once");
        assert_eq!(health.benched("a"), None);
    }

    #[test]
    fn errors_are_counted_by_code_and_bounded() {
        let health = Health::default();
        for _ in 0..3 {
            health.record_error("1002");
        }
        health.record_error("timeout");
        let counts = health.errors_last_hour();
        assert_eq!(counts.get("1002"), Some(&3));
        assert_eq!(counts.get("timeout"), Some(&1));
        for _ in 0..MAX_ERRORS_KEPT + 5 {
            health.record_error("1002");
        }
        assert_eq!(health.errors_last_hour().values().sum::<u64>(), MAX_ERRORS_KEPT as u64);
    }
}
