//! How long to wait before trying a request again, for sources and destinations alike:
//! exponential, jittered, never sooner than the server's `Retry-After`.

use std::time::Duration;

/// Retry number `attempt` (0-based) waits a random share of `min(max, base * 2^attempt)`, at
/// least `least_share` of it, and never less than `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// 0 is full jitter (many requests' retries spread over the whole window).
    pub least_share: f64,
}

impl Backoff {
    /// Full jitter from `base` up to `max`.
    pub fn full_jitter(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, least_share: 0.0 }
    }

    /// The wait before retry number `attempt`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let share = self.least_share + (1.0 - self.least_share) * fastrand::f64();
        ceiling.mul_f64(share).max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff::full_jitter(Duration::from_millis(100), Duration::from_secs(2))
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_ceiling() {
        let p = policy();
        for attempt in 0..10 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
            for _ in 0..100 {
                assert!(p.delay(attempt, None) <= ceiling);
            }
        }
        // Full jitter spreads retries: some land early in the window.
        assert!((0..100).any(|_| p.delay(4, None) < Duration::from_millis(800)));
    }

    #[test]
    fn backoff_honours_retry_after() {
        let p = policy();
        for _ in 0..100 {
            assert!(p.delay(0, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        }
    }

    #[test]
    fn a_least_share_keeps_the_wait_in_the_top_of_the_window() {
        let p = Backoff { least_share: 0.5, ..policy() };
        for _ in 0..100 {
            let d = p.delay(3, None);
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800), "{d:?}");
        }
    }
}
