//! One pacer per destination: every request of every task waits its turn here.
//!
//! It enforces `max_requests_per_second`, and reacts to throttling as TCP reacts to loss: once
//! per congestion event, not once per answer. A 429 pauses the whole destination for its
//! `Retry-After` and halves the rate; the 429s of requests sent before that slow-down (they were
//! in flight when it happened) say nothing new, so they neither halve it again nor restart the
//! pause. Each request carries a `Ticket` saying which slow-down it was sent after.
//!
//! Recovery: acknowledgements of requests sent since the slow-down bring the rate quickly back
//! to where it was throttled (the "ceiling"; a few requests, so that throttles at random do not
//! grind it down), then it probes above it slowly, by a tenth of the ceiling a second, so that a
//! destination enforcing a rate limit throttles rarely. Halving once per answer, with 5 % of
//! answers 429 at random, sank the rate to one request a second.
//!
//! That recovery is wrong against a limit that throttles every few requests above it (a token
//! bucket holding a few tokens): the destination then spends most of its time paused. When
//! throttles keep coming before the pauses between them are over, a `LimitSearch` takes over
//! the rate: it looks for a rate below the limit and holds it (see `search`).
//!
//! Every wait here ends at once on `Patience::stop`, and a pause that would outlast the pass's
//! retry budget is refused rather than waited out (DESIGN §9.9).

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answer::{Failure, HttpError};
use crate::tenure::Tenure;

#[cfg(test)]
mod against_stand_ins;
mod search;

use search::{LimitSearch, Step};

/// Never slow below this many requests a second.
const MIN_RATE: f64 = 1.0;
/// Pause after a 429 without `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// Rate growth per acknowledged request while below the ceiling: about seven to double.
const CATCH_UP: f64 = 1.1;
/// The share of the ceiling a slow-down keeps when it comes before the rate got back to it.
const CEILING_KEPT: f64 = 0.9;
/// Growth above the ceiling, as a share of the ceiling per second.
const PROBE_PER_SECOND: f64 = 0.1;
/// An unlimited destination is unpaced again once its rate reaches this multiple of what it
/// sent before its first slow-down.
const UNPACED_AFTER: f64 = 2.0;
/// The shortest window the sending rate is measured over.
const MEASURE_MIN: Duration = Duration::from_millis(50);

/// Which slow-down a request was sent after: handed back with its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slowdowns: u64,
}

/// How long a request may wait for its turn: until `stop`, and never for a pause that ends
/// after `deadline` (the end of the pass's retry budget).
#[derive(Clone, Copy)]
pub struct Patience<'a> {
    pub deadline: Instant,
    pub stop: &'a CancellationToken,
    /// Nothing goes once the sender's leases may have lapsed.
    pub tenure: &'a Tenure,
}

impl Patience<'_> {
    /// Refused (an `Unsent` error) when the sender's leases may have lapsed and a renewal did
    /// not say they are still its own: checked last thing before a request goes.
    pub async fn may_send(&self) -> Result<(), HttpError> {
        if self.tenure.lapsed().is_none() {
            return Ok(());
        }
        let tenure = self.tenure.clone();
        let refused = tokio::task::spawn_blocking(move || tenure.confirm()).await;
        match refused {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(unsent(why)),
            Err(e) => Err(unsent(format!("cannot renew the leases: {e}"))),
        }
    }
}

/// Why delivery ends when the destination asks to pause for `asked` with `left` of the budget.
pub fn beyond_budget(asked: Duration, left: Duration) -> String {
    format!("Retry-After {} s exceeds the {} s left of retry_budget_secs", asked.as_secs(), left.as_secs())
}

/// A request refused its turn, and why.
fn unsent(why: String) -> HttpError {
    HttpError { message: why, failure: Failure::Unsent, retry_after: None, status: None }
}

pub struct Pacer {
    max_rate: Option<f64>,
    /// Where the current rate is shown (`audience_sync_destination_rate_limit`; 0: unpaced).
    shown: Gauge<f64, AtomicU64>,
    state: Mutex<State>,
    /// Wakes the requests waiting for their turn when a slow-down moved it.
    changed: Notify,
}

struct State {
    /// Requests a second allowed now; `None` is unlimited.
    rate: Option<f64>,
    /// The rate at the last slow-down: recovery is quick below it, slow above it.
    ceiling: f64,
    /// When the rate got back to the ceiling after the last slow-down.
    probing_since: Option<Instant>,
    /// Where an unlimited destination stops being paced again after a slow-down.
    unpaced_at: Option<f64>,
    next_slot: Instant,
    /// When the last request went.
    last_sent: Instant,
    paused_until: Instant,
    /// The `Retry-After` that set `paused_until`.
    pause: Duration,
    /// Slow-downs so far: a ticket's congestion epoch. A request given its turn before a
    /// slow-down takes a new one (the pause and the slower rate apply to it too).
    slowdowns: u64,
    /// Requests sent since `window_start`, measuring the sending rate.
    window_start: Instant,
    window_sent: u32,
    /// The rate measured over the last full second.
    last_measure: Option<f64>,
    /// Sets the rate instead while it looks for a limit that throttles every few requests.
    search: LimitSearch,
}

/// A request's turn: now, or at an instant given after `slowdowns` slow-downs.
enum Turn {
    Now(Ticket),
    At(Instant, u64),
}

impl Pacer {
    pub fn new(max_requests_per_second: Option<u32>) -> Pacer {
        let now = Instant::now();
        let max_rate = max_requests_per_second.map(f64::from);
        Pacer {
            max_rate,
            shown: Gauge::default(),
            state: Mutex::new(State {
                rate: max_rate,
                ceiling: 0.0,
                probing_since: None,
                unpaced_at: None,
                next_slot: now,
                last_sent: now,
                paused_until: now,
                pause: Duration::ZERO,
                slowdowns: 0,
                window_start: now,
                window_sent: 0,
                last_measure: None,
                search: LimitSearch::new(now),
            }),
            changed: Notify::new(),
        }
    }

    /// The same pacer, showing its current rate in `gauge`.
    pub fn reporting_to(self, gauge: Gauge<f64, AtomicU64>) -> Pacer {
        gauge.set(self.max_rate.unwrap_or(0.0));
        Pacer { shown: gauge, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until this request may go; the ticket goes back with its answer. Refused (an
    /// `Unsent` error) on `patience.stop`, or when the destination is paused past the deadline.
    pub async fn acquire(&self, patience: &Patience<'_>) -> Result<Ticket, HttpError> {
        loop {
            // Listening before taking a turn: a throttle between the two still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (at, slowdowns) = match self.turn(patience.deadline)? {
                Turn::Now(ticket) => return Ok(ticket),
                Turn::At(at, slowdowns) => (at, slowdowns),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    if let Some(ticket) = self.take_turn(slowdowns) {
                        return Ok(ticket);
                    }
                }
                _ = &mut changed => {}
                _ = patience.stop.cancelled() => {
                    return Err(unsent("delivery stopped".to_string()));
                }
            }
        }
    }

    /// The next turn: now (the request goes), or a slot to wait for. Only a real wait goes
    /// through the timer: a sleep already due still waits for the timer's next millisecond
    /// tick, which at a few milliseconds a request is a lot.
    fn turn(&self, deadline: Instant) -> Result<Turn, HttpError> {
        let mut s = self.lock();
        let now = Instant::now();
        if s.paused_until > now && s.paused_until > deadline {
            return Err(unsent(beyond_budget(s.pause, deadline.saturating_duration_since(now))));
        }
        let mut at = now.max(s.paused_until);
        if let Some(rate) = s.rate {
            at = at.max(s.next_slot);
            s.next_slot = at + Duration::from_secs_f64(1.0 / rate);
        }
        Ok(if at <= now { Turn::Now(s.sent(now)) } else { Turn::At(at, s.slowdowns) })
    }

    /// The turn given after `slowdowns` slow-downs, unless another has moved it since.
    fn take_turn(&self, slowdowns: u64) -> Option<Ticket> {
        let mut s = self.lock();
        (s.slowdowns == slowdowns).then(|| s.sent(Instant::now()))
    }

    /// A 429 for the request sent with `ticket`. The first of a congestion event pauses everyone
    /// for `retry_after` and halves the rate; one for a request sent before that slow-down was
    /// in flight when it happened and changes nothing.
    pub fn throttled(&self, ticket: Ticket, retry_after: Option<Duration>) {
        let mut s = self.lock();
        if ticket.slowdowns != s.slowdowns {
            return;
        }
        let now = Instant::now();
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE);
        let current = s.current_rate(now);
        match s.search.throttled(now, current, pause) {
            None => s.slow_down(current, self.max_rate),
            Some(step) => s.take(step, self.max_rate),
        }
        self.shown.set(s.rate.unwrap_or(0.0));
        (s.paused_until, s.pause) = (now + pause, pause);
        // The new epoch queued the requests at the new rate; none goes before the pause ends.
        s.next_slot = s.next_slot.max(s.paused_until);
        (s.window_start, s.window_sent) = (s.paused_until, 0);
        tracing::warn!(
            requests_per_second = s.rate.unwrap_or_default(),
            pause_ms = pause.as_millis() as u64,
            "destination throttled; slowing down"
        );
        drop(s);
        self.changed.notify_waiters();
    }

    /// An acknowledged request: one sent since the last slow-down lets the rate recover.
    pub fn succeeded(&self, ticket: Ticket) {
        let mut s = self.lock();
        // Never slowed down, the rate is the limit; an old answer says nothing of the new rate.
        if s.slowdowns == 0 {
            return;
        }
        let current = ticket.slowdowns == s.slowdowns;
        if let Some(step) = s.search.acked(Instant::now(), current) {
            s.take(step, self.max_rate);
            self.shown.set(s.rate.unwrap_or(0.0));
            drop(s);
            self.changed.notify_waiters();
            return;
        }
        if !current || s.search.holds() {
            return;
        }
        let Some(rate) = s.rate else { return };
        let grown = if rate < s.ceiling {
            (rate * CATCH_UP).min(s.ceiling)
        } else {
            let since = *s.probing_since.get_or_insert_with(Instant::now);
            s.ceiling * (1.0 + PROBE_PER_SECOND * since.elapsed().as_secs_f64())
        };
        s.rate = match (self.max_rate, s.unpaced_at) {
            (Some(max), _) => Some(grown.min(max)),
            (None, Some(unpaced)) if grown >= unpaced => {
                s.unpaced_at = None;
                None
            }
            (None, _) => Some(grown),
        };
        self.shown.set(s.rate.unwrap_or(0.0));
    }

    /// The current rate limit (for tests and logs); `None` is unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }
}

impl State {
    /// A request goes now: counted in the measure, ticketed with the current epoch.
    fn sent(&mut self, now: Instant) -> Ticket {
        let window = now.saturating_duration_since(self.window_start);
        if window >= Duration::from_secs(1) {
            self.last_measure = Some(f64::from(self.window_sent) / window.as_secs_f64());
            (self.window_start, self.window_sent) = (now, 0);
        }
        self.window_sent += 1;
        self.last_sent = now;
        Ticket { slowdowns: self.slowdowns }
    }

    /// The rate requests go at: a paced destination's pace, an unpaced one's measured rate. A
    /// paced one is not measured: requests waiting out retry backoffs send below the pace, and
    /// halving that would grind the pace down.
    fn current_rate(&self, now: Instant) -> f64 {
        let window = now.saturating_duration_since(self.window_start);
        let measured = if window >= MEASURE_MIN {
            Some(f64::from(self.window_sent) / window.as_secs_f64())
        } else {
            self.last_measure
        };
        match (self.rate, measured) {
            (Some(rate), _) => rate,
            (None, Some(m)) => m,
            (None, None) => f64::from(self.window_sent) / MEASURE_MIN.as_secs_f64(),
        }
        .max(MIN_RATE)
    }

    /// Halves the rate the destination went at (`current`), starting an epoch.
    fn slow_down(&mut self, current: f64, max_rate: Option<f64>) {
        if self.rate.is_none() && max_rate.is_none() {
            self.unpaced_at = Some(current * UNPACED_AFTER);
        }
        // Throttles that come before the rate got back let the ceiling sink slowly, not halve it
        // each time: 429s at random would otherwise grind the rate down to nothing.
        self.ceiling = current.max(self.ceiling * CEILING_KEPT);
        self.rate = Some((current / 2.0).max(MIN_RATE));
        self.new_epoch();
    }

    /// A new rate, a new epoch: probing starts over, and the requests waiting for their turn
    /// give their slots up and queue again at the new rate, the first one interval after the
    /// last request went. Left where it was, the queue went on at the old rate (a second for
    /// each search step at a low rate), or, after a 429 asking no pause, restarted at once (every
    /// 429 let the next request go).
    fn new_epoch(&mut self) {
        self.probing_since = None;
        self.slowdowns += 1;
        if let Some(rate) = self.rate {
            self.next_slot = self.last_sent + Duration::from_secs_f64(1.0 / rate);
        }
    }

    /// What the limit search says, starting an epoch: a rate to hold, or back to recovering
    /// (from half the ceiling, as after a slow-down).
    fn take(&mut self, step: Step, max_rate: Option<f64>) {
        let rate = match step {
            Step::Hold(rate) => rate,
            Step::Free => self.ceiling / 2.0,
        };
        let rate = max_rate.map_or(rate, |max| rate.min(max)).max(MIN_RATE);
        tracing::debug!(requests_per_second = rate, ?step, "destination rate limit search");
        self.rate = Some(rate);
        self.new_epoch();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Patience that never runs out, for tests that are not about it.
    fn forever(stop: &CancellationToken) -> Patience<'_> {
        Patience { deadline: Instant::now() + Duration::from_secs(86_400), stop, tenure: &crate::tenure::UNBOUNDED }
    }

    #[tokio::test(start_paused = true)]
    async fn max_rate_spaces_requests() {
        let (pacer, stop) = (Pacer::new(Some(10)), CancellationToken::new());
        let start = Instant::now();
        for _ in 0..11 {
            pacer.acquire(&forever(&stop)).await.unwrap();
        }
        // 11 requests at 10/s: the 11th goes one second after the first.
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_before_the_rate_got_back_keeps_most_of_the_ceiling() {
        let (pacer, stop) = (Pacer::new(Some(100)), CancellationToken::new());
        let first = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(first, None); // ceiling 100, rate 50
        let second = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(second, None); // at 50: ceiling 90, not 50
        assert_eq!(pacer.rate(), Some(25.0));
        for _ in 0..20 {
            let t = pacer.acquire(&forever(&stop)).await.unwrap();
            pacer.succeeded(t);
        }
        let rate = pacer.rate().unwrap();
        assert!(rate >= 90.0 - 1e-9, "recovered only to {rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn successes_without_a_throttle_keep_the_limit() {
        let (pacer, stop) = (Pacer::new(Some(10)), CancellationToken::new());
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.succeeded(ticket);
        assert_eq!(pacer.rate(), Some(10.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_task_and_halves_the_rate() {
        let pacer = Arc::new(Pacer::new(Some(100)));
        let stop = CancellationToken::new();
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        let start = Instant::now();
        pacer.throttled(ticket, Some(Duration::from_secs(3)));
        assert_eq!(pacer.rate(), Some(50.0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (p, stop) = (pacer.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                p.acquire(&forever(&stop)).await.unwrap();
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
    async fn throttles_of_requests_sent_before_a_slow_down_slow_it_once() {
        let (pacer, stop) = (Pacer::new(Some(100)), CancellationToken::new());
        let mut in_flight = Vec::new();
        for _ in 0..20 {
            in_flight.push(pacer.acquire(&forever(&stop)).await.unwrap());
        }
        let first_429 = Instant::now();
        pacer.throttled(in_flight[0], Some(Duration::from_secs(1)));
        assert_eq!(pacer.rate(), Some(50.0));
        // The other 19 were in flight: their 429s come later and change nothing.
        tokio::time::advance(Duration::from_millis(100)).await;
        for ticket in &in_flight[1..] {
            pacer.throttled(*ticket, Some(Duration::from_secs(1)));
            pacer.succeeded(*ticket);
        }
        assert_eq!(pacer.rate(), Some(50.0), "halved once, and not recovered by old answers");
        pacer.acquire(&forever(&stop)).await.unwrap();
        assert_eq!(Instant::now() - first_429, Duration::from_secs(1), "the pause was not restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_of_a_request_sent_after_the_slow_down_slows_it_again() {
        let (pacer, stop) = (Pacer::new(Some(100)), CancellationToken::new());
        let before = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(before, None);
        let after = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(after, None);
        assert_eq!(pacer.rate(), Some(25.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_slot_waits_for_a_pause_begun_meanwhile() {
        let pacer = Arc::new(Pacer::new(Some(1)));
        let stop = CancellationToken::new();
        let start = Instant::now();
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        let (p, s) = (pacer.clone(), stop.clone());
        let waiting = tokio::spawn(async move { p.acquire(&forever(&s)).await.map(|_| Instant::now()) });
        tokio::time::advance(Duration::from_millis(500)).await;
        pacer.throttled(ticket, Some(Duration::from_secs(5)));
        let went = waiting.await.unwrap().unwrap();
        assert_eq!(went - start, Duration::from_millis(5500));
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_asking_no_pause_still_slow_the_destination_down() {
        // Review finding: `Retry-After: 0` made each 429 restart the queue at once, and a
        // destination answering every request so got about 22 a second, every one a 429.
        let pacer = Arc::new(Pacer::new(None));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (pacer, sent) = (pacer.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let stop = CancellationToken::new();
                while Instant::now() - start < Duration::from_secs(10) {
                    let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
                    sent.lock().unwrap().push(Instant::now() - start);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    pacer.throttled(ticket, Some(Duration::ZERO));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let late = sent.lock().unwrap().iter().filter(|t| **t >= Duration::from_secs(5)).count();
        // Halved down to the slowest rate, a request a second (a search's trial a few).
        assert!(late <= 25, "{late} requests in the last 5 s, every one answered 429");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_past_the_deadline_is_refused_at_once() {
        let (pacer, stop) = (Pacer::new(None), CancellationToken::new());
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, Some(Duration::from_secs(3600)));
        let start = Instant::now();
        let patience =
            Patience { deadline: start + Duration::from_secs(60), stop: &stop, tenure: &crate::tenure::UNBOUNDED };
        let refused = pacer.acquire(&patience).await.unwrap_err();
        assert_eq!(refused.failure, Failure::Unsent);
        assert_eq!(refused.message, "Retry-After 3600 s exceeds the 60 s left of retry_budget_secs");
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_out_a_pause_gives_up_when_stopped() {
        let pacer = Arc::new(Pacer::new(None));
        let stop = CancellationToken::new();
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, Some(Duration::from_secs(3600)));
        let start = Instant::now();
        let (p, s) = (pacer.clone(), stop.clone());
        let waiting = tokio::spawn(async move { p.acquire(&forever(&s)).await });
        tokio::task::yield_now().await;
        stop.cancel();
        assert_eq!(waiting.await.unwrap().unwrap_err().failure, Failure::Unsent);
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_recovers_quickly_to_where_it_was_throttled_then_slowly_up_to_the_limit() {
        let (pacer, stop) = (Pacer::new(Some(100)), CancellationToken::new());
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, None);
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.succeeded(ticket);
        let after_one = pacer.rate().unwrap();
        assert!(after_one > 50.0 && after_one < 56.0, "{after_one}");
        for _ in 0..200 {
            pacer.succeeded(ticket);
        }
        assert_eq!(pacer.rate(), Some(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_rate_it_was_throttled_at_the_rate_grows_by_a_tenth_of_it_a_second() {
        let (pacer, stop) = (Pacer::new(Some(1000)), CancellationToken::new());
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, None);
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        for _ in 0..20 {
            pacer.succeeded(ticket);
        }
        assert_eq!(pacer.rate(), Some(1000.0), "the cap: nothing to probe above it");
        let (pacer, stop) = (Pacer::new(None), stop);
        for _ in 0..100 {
            pacer.acquire(&forever(&stop)).await.unwrap();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, None); // 101 requests in 100 ms: about 1,010 a second
        let ceiling = pacer.rate().unwrap() * 2.0;
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        for _ in 0..20 {
            pacer.succeeded(ticket);
        }
        assert_eq!(pacer.rate(), Some(ceiling));
        tokio::time::advance(Duration::from_secs(2)).await;
        pacer.succeeded(ticket);
        let probed = pacer.rate().unwrap() / ceiling;
        assert!((probed - 1.2).abs() < 1e-9, "{probed}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_destination_returns_to_unlimited() {
        let (pacer, stop) = (Pacer::new(None), CancellationToken::new());
        assert_eq!(pacer.rate(), None);
        let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
        pacer.throttled(ticket, None);
        assert!(pacer.rate().is_some());
        // Paced while it recovers, for seconds without a throttle; then not at all.
        let start = Instant::now();
        while pacer.rate().is_some() {
            let ticket = pacer.acquire(&forever(&stop)).await.unwrap();
            pacer.succeeded(ticket);
        }
        let took = Instant::now() - start;
        assert!(took > Duration::from_secs(5) && took < Duration::from_secs(15), "{took:?}");
    }
}
