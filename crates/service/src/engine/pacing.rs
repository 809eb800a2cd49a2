//! Pacing of calls to one MiniMax account: a token bucket for create calls and a pacer
//! for query and retrieve calls.
//!
//! Both read tokio's clock (`tokio::time::Instant`), which is the system's monotonic
//! clock in production and a paused, hand-advanced one in the tests below. Neither
//! knows about jobs or the store: the dispatcher asks the bucket how many jobs it may
//! claim, and every query waits its turn at the pacer.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Create calls over time: a bucket of `capacity` tokens refilled at the account's
/// per-minute rate. MiniMax documents a "rate growth limit" (2045) against sudden
/// spikes, so a budget of 20 a minute becomes a burst of a few and then one every three
/// seconds, not twenty at once followed by a minute of silence.
pub(super) struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for a budget of `rpm` create calls a minute.
    pub(super) fn for_rpm(rpm: u32) -> Self {
        // A tenth of a minute's budget may go at once, at least one call.
        let capacity = (f64::from(rpm) / 6.0).max(1.0);
        Self { tokens: capacity, capacity, per_ms: f64::from(rpm) / 60_000.0, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = now;
    }

    /// Whole tokens available now.
    pub(super) fn available(&mut self) -> u32 {
        self.refill();
        self.tokens.floor().max(0.0) as u32
    }

    /// Spends `n` tokens (never more than are available).
    pub(super) fn spend(&mut self, n: u32) {
        self.refill();
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }
}

/// Spaces calls evenly: one every `interval`, without bursts.
pub(super) struct Pacer {
    next: Mutex<Instant>,
    interval: Duration,
}

impl Pacer {
    /// A pacer for `rpm` calls a minute (at least one).
    pub(super) fn per_minute(rpm: u32) -> Self {
        Self { next: Mutex::new(Instant::now()), interval: Duration::from_secs(60) / rpm.max(1) }
    }

    /// Waits for this caller's turn; callers are served in the order they arrive.
    pub(super) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_starts_with_a_tenth_of_the_minute_and_at_least_one() {
        for (rpm, burst) in [(0, 1), (1, 1), (6, 1), (20, 3), (60, 10), (600, 100)] {
            assert_eq!(TokenBucket::for_rpm(rpm).available(), burst, "rpm {rpm}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_bucket_refills_at_the_per_minute_rate() {
        // 60 a minute: a burst of 10, then one a second.
        let mut bucket = TokenBucket::for_rpm(60);
        bucket.spend(10);
        assert_eq!(bucket.available(), 0);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(bucket.available(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(bucket.available(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(bucket.available(), 3);
        // Never more than the capacity, however long it rests.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(bucket.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_of_twenty_goes_three_at_once_then_one_every_three_seconds() {
        let mut bucket = TokenBucket::for_rpm(20);
        assert_eq!(bucket.available(), 3);
        bucket.spend(3);
        // A third of a token is left over from the burst of 3.33.
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(bucket.available(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(bucket.available(), 1);
        bucket.spend(1);
        tokio::time::advance(Duration::from_millis(2_999)).await;
        assert_eq!(bucket.available(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(bucket.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn spending_more_than_there_is_empties_the_bucket_without_debt() {
        let mut bucket = TokenBucket::for_rpm(60);
        bucket.spend(50);
        assert_eq!(bucket.available(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(bucket.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_spaces_calls_evenly() {
        let pacer = Pacer::per_minute(120);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..4 {
            pacer.wait().await;
            at.push(start.elapsed());
        }
        let expected: Vec<Duration> = (0..4).map(|n| Duration::from_millis(500 * n)).collect();
        assert_eq!(at, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_lets_the_next_call_go_at_once() {
        let pacer = Pacer::per_minute(60);
        pacer.wait().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let before = Instant::now();
        pacer.wait().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_of_zero_is_one_a_minute() {
        let pacer = Pacer::per_minute(0);
        let start = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
