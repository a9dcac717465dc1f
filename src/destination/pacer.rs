//! One pacer per destination: every request of every task waits its turn here.
//!
//! It enforces `max_requests_per_second`, and reacts to throttling: a 429 pauses the whole
//! destination for its `Retry-After` and halves the request rate, which then recovers by a few
//! percent per acknowledged request (additive-increase would take too long at high rates).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Never slow below this many requests a second.
const MIN_RATE: f64 = 1.0;
/// Pause after a 429 without `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// Rate growth per acknowledged request while recovering.
const RECOVERY: f64 = 1.02;

pub struct Pacer {
    max_rate: Option<f64>,
    state: Mutex<State>,
}

struct State {
    /// Requests a second allowed now; `None` is unlimited.
    rate: Option<f64>,
    /// Where an unlimited destination stops being paced again after a slow-down.
    recover_to: Option<f64>,
    next_slot: Instant,
    paused_until: Instant,
    window_start: Instant,
    window_count: u32,
    observed_rate: f64,
}

impl Pacer {
    pub fn new(max_requests_per_second: Option<u32>) -> Pacer {
        let now = Instant::now();
        let max_rate = max_requests_per_second.map(f64::from);
        Pacer {
            max_rate,
            state: Mutex::new(State {
                rate: max_rate,
                recover_to: None,
                next_slot: now,
                paused_until: now,
                window_start: now,
                window_count: 0,
                observed_rate: 0.0,
            }),
        }
    }

    /// Waits until this request may go.
    pub async fn acquire(&self) {
        let at = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let window = now - s.window_start;
            if window >= Duration::from_secs(1) {
                s.observed_rate = f64::from(s.window_count) / window.as_secs_f64();
                s.window_start = now;
                s.window_count = 0;
            }
            s.window_count += 1;
            let mut at = now.max(s.paused_until);
            if let Some(rate) = s.rate {
                at = at.max(s.next_slot);
                s.next_slot = at + Duration::from_secs_f64(1.0 / rate);
            }
            at
        };
        // Only a real wait goes through the timer: a sleep already due still waits for the
        // timer's next millisecond tick, which at a few milliseconds a request is a lot.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }

    /// A 429: pause everyone for `retry_after` and halve the rate.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.paused_until = s.paused_until.max(now + retry_after.unwrap_or(DEFAULT_PAUSE));
        let current = s.rate.unwrap_or_else(|| s.observed_rate.max(MIN_RATE));
        if s.rate.is_none() && self.max_rate.is_none() {
            s.recover_to = Some(current);
        }
        let slowed = (current / 2.0).max(MIN_RATE);
        s.rate = Some(slowed);
        s.next_slot = s.paused_until;
        tracing::warn!(
            requests_per_second = slowed,
            pause_ms = (s.paused_until - now).as_millis() as u64,
            "destination throttled; slowing down"
        );
    }

    /// An acknowledged request: let the rate recover towards its limit.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rate) = s.rate else { return };
        let grown = rate * RECOVERY;
        s.rate = match (self.max_rate, s.recover_to) {
            (Some(max), _) => Some(grown.min(max)),
            (None, Some(target)) if grown >= target => {
                s.recover_to = None;
                None
            }
            (None, _) => Some(grown),
        };
    }

    /// The current rate limit (for tests and logs); `None` is unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn max_rate_spaces_requests() {
        let pacer = Pacer::new(Some(10));
        let start = Instant::now();
        for _ in 0..11 {
            pacer.acquire().await;
        }
        // 11 requests at 10/s: the 11th goes one second after the first.
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_task_and_halves_the_rate() {
        let pacer = Arc::new(Pacer::new(Some(100)));
        pacer.acquire().await;
        let start = Instant::now();
        pacer.throttled(Some(Duration::from_secs(3)));
        assert_eq!(pacer.rate(), Some(50.0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let p = pacer.clone();
            tasks.push(tokio::spawn(async move {
                p.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // Nobody goes before the pause ends; then one every 1/50 s.
        assert_eq!(times[0], Duration::from_secs(3));
        assert_eq!(times[3], Duration::from_secs(3) + Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_recovers_gradually_up_to_the_limit() {
        let pacer = Pacer::new(Some(100));
        pacer.throttled(None);
        pacer.succeeded();
        let after_one = pacer.rate().unwrap();
        assert!(after_one > 50.0 && after_one < 52.0, "{after_one}");
        for _ in 0..200 {
            pacer.succeeded();
        }
        assert_eq!(pacer.rate(), Some(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_destination_returns_to_unlimited() {
        let pacer = Pacer::new(None);
        assert_eq!(pacer.rate(), None);
        pacer.throttled(None);
        assert_eq!(pacer.rate(), Some(MIN_RATE));
        for _ in 0..10 {
            pacer.succeeded();
        }
        assert_eq!(pacer.rate(), None);
    }
}
