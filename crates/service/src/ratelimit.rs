//! Per-key request rates: one token bucket per API key for generates and one for every
//! other authenticated request, decided right after authentication.
//!
//! The check runs inside the [`Caller`](crate::api::extract::Caller) extractor, so it
//! happens before the body is read and before anything is written: a refused request
//! has charged nothing. That matters because Apiframe's SDK retries a 429 on every
//! method, generate included, after exactly `Retry-After`; a 429 that followed a charge
//! would charge twice. A replayed idempotent generate is still a generate and counts.
//!
//! The buckets live in this process (`governor`'s GCRA, keyed by the key's id), so with
//! several nodes each node allows the configured rate. Only keys that passed
//! authentication get a bucket, so the map is bounded by the number of API keys in the
//! database, not by what clients send; buckets back at full are dropped periodically.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use domain::ApiKeyId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimitConfig;

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateClass {
    /// `POST /v2/videos/generate`, replays included.
    Generate,
    /// Every other authenticated request (job reads and lists, cancels, `/v2/me`).
    Read,
}

/// Checks between two sweeps of full buckets. A sweep walks every bucket, so it is
/// spread out; between sweeps the map grows only by keys that made a request.
const SWEEP_EVERY: u64 = 10_000;

/// The limiters of this process.
pub struct RateLimits {
    generate: Option<DefaultKeyedRateLimiter<ApiKeyId>>,
    read: Option<DefaultKeyedRateLimiter<ApiKeyId>>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl RateLimits {
    /// Limiters for `config`; a rate of 0 turns that class's limit off.
    pub fn new(config: &RateLimitConfig) -> Self {
        let limiter = |per_sec: u32, burst: u32| {
            let per_sec = NonZeroU32::new(per_sec)?;
            // Validation keeps a configured burst at 1 or more.
            let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
            Some(DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)))
        };
        Self {
            generate: limiter(config.generate_per_sec, config.generate_burst),
            read: limiter(config.read_per_sec, config.read_burst),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket for `class`, or says how many whole seconds
    /// (rounded up, at least 1) to wait before the next request would be allowed.
    pub fn check(&self, class: RateClass, key: ApiKeyId) -> Result<(), u64> {
        let limiter = match class {
            RateClass::Generate => &self.generate,
            RateClass::Read => &self.read,
        };
        let Some(limiter) = limiter else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        limiter.check_key(&key).map_err(|not_until| retry_after_secs(not_until.wait_time_from(self.clock.now())))
    }

    /// Drops the buckets that are full again (indistinguishable from a new one).
    fn sweep(&self) {
        for limiter in [&self.generate, &self.read].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `Retry-After` is whole seconds: round up, so a client waiting exactly that long
/// (as Apiframe's SDK does) finds a token, and never answer 0.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(generate_per_sec: u32, generate_burst: u32, read_per_sec: u32) -> RateLimitConfig {
        RateLimitConfig { generate_per_sec, generate_burst, read_per_sec, read_burst: 1 }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        for (wait_ms, secs) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (2500, 3)] {
            assert_eq!(retry_after_secs(Duration::from_millis(wait_ms)), secs, "{wait_ms} ms");
        }
    }

    #[test]
    fn a_burst_passes_then_the_key_waits_while_other_keys_and_classes_do_not() {
        let limits = RateLimits::new(&config(1, 3, 1));
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        for _ in 0..3 {
            assert_eq!(limits.check(RateClass::Generate, a), Ok(()));
        }
        assert_eq!(limits.check(RateClass::Generate, a), Err(1), "one token a second");
        assert_eq!(limits.check(RateClass::Generate, b), Ok(()), "another key has its own bucket");
        assert_eq!(limits.check(RateClass::Read, a), Ok(()), "reads have their own bucket");
        assert_eq!(limits.check(RateClass::Read, a), Err(1));
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        let limits = RateLimits::new(&config(0, 0, 1));
        let a = ApiKeyId::new();
        for _ in 0..1000 {
            assert_eq!(limits.check(RateClass::Generate, a), Ok(()));
        }
    }

    #[test]
    fn sweeps_drop_full_buckets_and_keep_the_others() {
        let limits = RateLimits::new(&RateLimitConfig {
            generate_per_sec: 1,
            generate_burst: 1,
            read_per_sec: 1_000_000,
            read_burst: 1,
        });
        let (busy, idle) = (ApiKeyId::new(), ApiKeyId::new());
        assert!(limits.check(RateClass::Generate, busy).is_ok());
        assert!(limits.check(RateClass::Read, idle).is_ok());
        // A million a second: the read bucket is full again within microseconds.
        std::thread::sleep(Duration::from_millis(5));
        limits.sweep();
        assert_eq!(limits.generate.as_ref().unwrap().len(), 1, "the emptied bucket is kept");
        assert_eq!(limits.read.as_ref().unwrap().len(), 0, "the full bucket is dropped");
        assert!(limits.check(RateClass::Generate, busy).is_err(), "the kept bucket still limits");
    }
}
