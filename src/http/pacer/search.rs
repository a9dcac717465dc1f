//! Finding a destination's rate limit when it throttles every few requests.
//!
//! The pacer alone slows down once per congestion event and recovers quickly to where it was
//! throttled, so that 429s at random cost only their pauses. But against a token bucket holding
//! a few requests' worth, that recovery empties the bucket again within a few requests, and every
//! throttle pauses the whole destination for its `Retry-After`: the destination spends most of its
//! time paused. From 429s alone the two look alike at any rate above the limit (a few requests
//! pass after each pause); only a rate *below* the limit tells them apart: a limit stops
//! throttling there, 429s at random do not.
//!
//! So when throttles keep coming before the pause before them is even over again (twice in a
//! row), the search tries lower rates, halving, each for a couple of seconds, and keeps one only
//! if it served clearly more than the pauses let through before (throttles at random never do:
//! their pauses cost the same at any rate, so a lower rate only serves less). From a rate kept,
//! it narrows between the highest rate sustained and the lowest refused, and holds there,
//! trying a little higher now and then. A search that found nothing is not tried again for a
//! while (longer each time).

use std::time::Duration;

use tokio::time::Instant;

/// How long a trial rate must go without a throttle to count as sustained: longer down, where
/// it must also show it serves more than before.
const TRIAL_DOWN: Duration = Duration::from_secs(2);
const TRIAL_UP: Duration = Duration::from_secs(1);
/// And a trial down must see this many acknowledgements: 429s at random let a couple of
/// seconds at a low rate through often enough (a few dozen requests) to pass for a limit.
const TRIAL_DOWN_ACKS: u32 = 50;
/// How much more than before a lower rate must serve to be kept.
const BETTER: f64 = 1.25;
/// What the rate served before is measured over.
const WINDOW: Duration = Duration::from_secs(3);
/// How long a rate is held before trying a little higher; a held rate throttled after holding
/// this long means the limit moved (sooner, that its trial passed on a burst).
const HOLD: Duration = Duration::from_secs(30);
/// The longest wait between tries a little higher: `HOLD` after one that failed, doubled by each
/// further failure in a row. The first failure waits only `HOLD`: a limit that dropped and rose
/// again is tried within a minute, not after minutes of holding the lowered rate.
const MAX_REPROBE: Duration = Duration::from_secs(300);
/// After a try higher that passed, the next comes once the rate tried held this long, twice as
/// far above: a limit that rose is followed within a minute, and a try that passed on a
/// bucket's burst throttles before it (and waits `HOLD` again).
const REPROBE_SOON: Duration = Duration::from_secs(5);
/// How far above the held rate the first try higher goes (a share of it).
const FIRST_STEP: f64 = NARROW - 1.0;
/// Close enough: the search stops narrowing when the refused rate is within this factor.
const NARROW: f64 = 1.05;
/// A held rate throttled (the limit moved) is lowered to this share of it.
const LOWERED: f64 = 0.9;
/// Throttles of held rates within `HOLD` after which the search gives up (not a limit).
const STRIKES: usize = 3;
/// The first wait before searching again after a search found nothing; doubled each time. A
/// search among 429s at random costs a few seconds of slow trials: once a minute at most.
const BACKOFF: Duration = Duration::from_secs(60);
/// Searching needs a measure of what was served before: not in the first second.
const WARM_UP: Duration = Duration::from_secs(1);

/// What the pacer does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Its own congestion control, as if no search had run.
    Free,
    /// This many requests a second, no more and no less, until the search says otherwise.
    Hold(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    /// Looking for a rate the destination sustains, halving.
    Down,
    /// Trying a rate between the one sustained and the one refused.
    Up,
}

/// A rate tried for a while.
#[derive(Debug, Clone, Copy)]
struct Trial {
    rate: f64,
    direction: Direction,
    start: Instant,
    acks: u32,
    /// What was served a second before it (for a trial up, the rate held).
    served_before: f64,
    /// The lowest rate throttled so far.
    refused: f64,
    /// A try higher than a rate held close to the one refused (not a bisection step).
    reprobe: bool,
}

impl Trial {
    fn long_enough(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.start);
        match self.direction {
            Direction::Down => elapsed >= TRIAL_DOWN && self.acks >= TRIAL_DOWN_ACKS,
            Direction::Up => elapsed >= TRIAL_UP,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Free,
    Trial(Trial),
    Held { rate: f64, refused: f64, since: Instant },
}

/// Acknowledgements a second over the last `WINDOW`, counted in tenths of it: a bounded
/// count, however fast acknowledgements come.
#[derive(Debug)]
struct Served {
    slots: [u32; 10],
    slot: usize,
    slot_start: Instant,
    created: Instant,
}

impl Served {
    const SLOT: Duration = Duration::from_millis(WINDOW.as_millis() as u64 / 10);

    fn new(now: Instant) -> Served {
        Served { slots: [0; 10], slot: 0, slot_start: now, created: now }
    }

    fn add(&mut self, now: Instant) {
        self.roll(now);
        self.slots[self.slot] += 1;
    }

    /// Per second, over the window (or the time since the first request, at least half a
    /// second).
    fn per_second(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let span = now.saturating_duration_since(self.created).min(WINDOW).max(Duration::from_millis(500));
        f64::from(self.slots.iter().sum::<u32>()) / span.as_secs_f64()
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.slot_start) >= WINDOW {
            (self.slots, self.slot_start) = ([0; 10], now);
        }
        while now.saturating_duration_since(self.slot_start) >= Self::SLOT {
            self.slot = (self.slot + 1) % self.slots.len();
            self.slots[self.slot] = 0;
            self.slot_start += Self::SLOT;
        }
    }
}

#[derive(Debug)]
pub struct LimitSearch {
    phase: Phase,
    created: Instant,
    served: Served,
    /// When the current sending stretch began (the end of the last pause).
    stretch_start: Instant,
    /// Throttles in a row that came before their stretch lasted as long as its pause.
    short_stretches: u32,
    next_search: Instant,
    backoff: Duration,
    /// Rates that went a whole trial without a throttle, all below the lowest refused: where a
    /// held rate that throttles soon goes back to (its own trial passed on a bucket's burst).
    passed: Vec<f64>,
    /// Throttles of held rates with no rate passed below them to go back to.
    strikes: Vec<Instant>,
    /// What was served a second when the search began: a search whose held rates serve less
    /// found no limit to hold under (429s at random throttle every rate).
    baseline: f64,
    /// How long a rate close to the one refused is held before trying a little higher, and how
    /// much higher (a share of it).
    reprobe_after: Duration,
    reprobe_step: f64,
    /// Tries higher that failed in a row.
    reprobes_failed: u32,
    /// Held rates throttled in a row with no trial passed between them: at two, the rates
    /// passed before no longer hold (the limit dropped), and the search starts again lower.
    fallbacks: u32,
}

impl LimitSearch {
    pub fn new(now: Instant) -> LimitSearch {
        LimitSearch {
            phase: Phase::Free,
            created: now,
            served: Served::new(now),
            stretch_start: now,
            short_stretches: 0,
            next_search: now,
            backoff: BACKOFF,
            passed: Vec::new(),
            strikes: Vec::new(),
            baseline: 0.0,
            reprobe_after: HOLD,
            reprobe_step: FIRST_STEP,
            reprobes_failed: 0,
            fallbacks: 0,
        }
    }

    /// Whether the search sets the rate now (else the pacer's own control does).
    pub fn holds(&self) -> bool {
        !matches!(self.phase, Phase::Free)
    }

    /// A request acknowledged; `current` if it was sent at the rate now set.
    pub fn acked(&mut self, now: Instant, current: bool) -> Option<Step> {
        self.served.add(now);
        if !current {
            return None;
        }
        match self.phase {
            Phase::Free => None,
            Phase::Trial(ref mut trial) => {
                trial.acks += 1;
                let trial = *trial;
                trial.long_enough(now).then(|| self.trial_sustained(now, trial))
            }
            Phase::Held { rate, refused, since } => self.held_ack(now, rate, refused, since),
        }
    }

    /// A throttle (the first of a congestion event) of a request sent at `current` requests a
    /// second, asking to pause for `pause`; the next stretch begins when that pause ends.
    pub fn throttled(&mut self, now: Instant, current: f64, pause: Duration) -> Option<Step> {
        let short = now.saturating_duration_since(self.stretch_start) < pause;
        self.stretch_start = now + pause;
        match self.phase {
            Phase::Free => self.free_throttled(now, current, short),
            Phase::Trial(Trial { direction: Direction::Up, .. }) | Phase::Held { .. }
                if self.served.per_second(now) < self.baseline =>
            {
                Some(self.give_up(now))
            }
            Phase::Trial(trial) => Some(self.trial_refused(now, trial)),
            Phase::Held { rate, since, .. } => Some(self.held_throttled(now, rate, since)),
        }
    }

    fn free_throttled(&mut self, now: Instant, current: f64, short: bool) -> Option<Step> {
        self.short_stretches = if short { self.short_stretches + 1 } else { 0 };
        let ready = now >= self.next_search && now.saturating_duration_since(self.created) >= WARM_UP;
        if self.short_stretches < 2 || !ready {
            return None;
        }
        let served_before = self.served.per_second(now);
        let rate = current / 2.0;
        if served_before == 0.0 {
            return None;
        }
        self.baseline = served_before;
        (rate > BETTER * served_before).then(|| self.trial(now, rate, Direction::Down, served_before, current))
    }

    /// A trial from now, or from the end of the pause under way.
    fn trial(&mut self, now: Instant, rate: f64, direction: Direction, served_before: f64, refused: f64) -> Step {
        let start = self.stretch_start.max(now);
        let reprobe = direction == Direction::Up && refused / served_before <= NARROW;
        self.phase = Phase::Trial(Trial { rate, direction, start, acks: 0, served_before, refused, reprobe });
        Step::Hold(rate)
    }

    fn hold(&mut self, now: Instant, rate: f64, refused: f64) -> Step {
        self.phase = Phase::Held { rate, refused, since: now.max(self.stretch_start) };
        Step::Hold(rate)
    }

    fn give_up(&mut self, now: Instant) -> Step {
        (self.phase, self.short_stretches) = (Phase::Free, 0);
        self.forget_reprobes();
        self.fallbacks = 0;
        self.passed.clear();
        self.strikes.clear();
        self.next_search = now + self.backoff;
        self.backoff *= 2;
        Step::Free
    }

    /// A trial rate went long enough without a throttle.
    fn trial_sustained(&mut self, now: Instant, trial: Trial) -> Step {
        let Trial { rate, direction, start, acks, served_before, refused, reprobe } = trial;
        if direction == Direction::Down {
            let served = f64::from(acks) / now.saturating_duration_since(start).as_secs_f64();
            if served <= BETTER * served_before {
                return self.give_up(now);
            }
            (self.backoff, self.passed) = (BACKOFF, Vec::new());
        }
        if reprobe {
            (self.reprobe_after, self.reprobe_step) = (REPROBE_SOON, (self.reprobe_step * 2.0).min(1.0));
        }
        self.fallbacks = 0;
        self.passed.push(rate);
        self.hold(now, rate, refused)
    }

    /// The trial rate was throttled.
    fn trial_refused(&mut self, now: Instant, trial: Trial) -> Step {
        let Trial { rate, direction, served_before, .. } = trial;
        match direction {
            // A search begun again after the limit dropped has nothing served to beat: it stops
            // halving at the slowest rate the pacer goes (else, against a destination throttling
            // every rate, it halved for ever at that rate and never gave up).
            Direction::Down if rate / 2.0 > BETTER * served_before && rate / 2.0 >= super::MIN_RATE => {
                self.trial(now, rate / 2.0, Direction::Down, served_before, rate)
            }
            Direction::Down => self.give_up(now),
            Direction::Up => {
                if trial.reprobe {
                    self.reprobe_failed();
                }
                self.passed.retain(|&p| p < rate);
                let back = self.highest_passed().unwrap_or(served_before);
                self.hold(now, back, rate)
            }
        }
    }

    /// A try higher than a rate held failed: wait longer before the next (each costs a pause),
    /// and go only a little higher then.
    fn reprobe_failed(&mut self) {
        self.reprobes_failed += 1;
        self.reprobe_after = (HOLD * 2u32.pow(self.reprobes_failed.min(8) - 1)).min(MAX_REPROBE);
        self.reprobe_step = FIRST_STEP;
    }

    /// A new limit to find (the search gave up, or the limit dropped): tries higher start over.
    fn forget_reprobes(&mut self) {
        (self.reprobe_after, self.reprobe_step, self.reprobes_failed) = (HOLD, FIRST_STEP, 0);
    }

    fn held_ack(&mut self, now: Instant, rate: f64, refused: f64, since: Instant) -> Option<Step> {
        let held = now.saturating_duration_since(since);
        if held < self.reprobe_after && refused / rate <= NARROW {
            return None;
        }
        if self.reprobe_after == REPROBE_SOON {
            // The rate a try higher passed at held until the next try: that try did not fail.
            // (One that passed its trial on a bucket's burst throttles before, and counts as
            // failed: else every such try would wait only `HOLD`.)
            self.reprobes_failed = 0;
        }
        let higher = if refused / rate > NARROW { (rate * refused).sqrt() } else { rate * (1.0 + self.reprobe_step) };
        Some(self.trial(now, higher, Direction::Up, rate, refused))
    }

    fn highest_passed(&self) -> Option<f64> {
        self.passed.iter().copied().reduce(f64::max)
    }

    /// A held rate was throttled. Soon after it was set: its trial passed on a bucket's burst,
    /// back to the highest rate passed below it. After holding long: the limit moved, a little
    /// lower. With nothing passed below it, again and again: no limit at all (give up).
    fn held_throttled(&mut self, now: Instant, rate: f64, since: Instant) -> Step {
        self.passed.retain(|&p| p < rate);
        self.fallbacks += 1;
        if self.fallbacks >= 2 {
            // What was served before the drop says nothing of what can be now.
            (self.fallbacks, self.passed, self.baseline) = (0, Vec::new(), 0.0);
            self.forget_reprobes();
            return self.trial(now, rate / 2.0, Direction::Down, 0.0, rate);
        }
        if now.saturating_duration_since(since) >= HOLD {
            return self.hold(now, rate * LOWERED, rate);
        }
        if let Some(back) = self.highest_passed() {
            if rate / back <= 1.0 + self.reprobe_step + 1e-9 {
                self.reprobe_failed();
            }
            return self.hold(now, back, rate);
        }
        self.strikes.retain(|&t| now.saturating_duration_since(t) < HOLD);
        self.strikes.push(now);
        if self.strikes.len() >= STRIKES {
            return self.give_up(now);
        }
        self.hold(now, rate * LOWERED, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LimitSearch {
        /// The rate held and the rate refused, when holding one.
        fn phase_rate(&self) -> Option<(f64, f64)> {
            match self.phase {
                Phase::Held { rate, refused, .. } => Some((rate, refused)),
                _ => None,
            }
        }
    }

    const PAUSE: Duration = Duration::from_secs(1);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// Acknowledgements at `per_second` from `from_ms` for `for_ms`, until the search says a
    /// step.
    fn acks(s: &mut LimitSearch, start: Instant, from_ms: u64, for_ms: u64, per_second: u64) -> Option<Step> {
        (0..for_ms * per_second / 1000).find_map(|i| s.acked(at(start, from_ms + i * 1000 / per_second), true))
    }

    /// A search begun by two throttles at 400/s that each came before their stretch lasted a
    /// pause, with 8 requests a second served before: its first trial, at half the rate.
    fn begun(start: Instant) -> LimitSearch {
        let mut s = LimitSearch::new(start);
        acks(&mut s, start, 0, 400, 20);
        assert_eq!(s.throttled(at(start, 400), 400.0, PAUSE), None, "one short stretch is not enough");
        let first = s.throttled(at(start, 1_500), 400.0, PAUSE);
        assert_eq!(first, Some(Step::Hold(200.0)));
        s
    }

    #[test]
    fn a_lower_rate_that_serves_more_is_held_then_narrowed_toward_the_rate_refused() {
        let start = Instant::now();
        let mut s = begun(start);
        // The trial begins when the pause ends (2.5 s) and passes 2 s later.
        assert_eq!(acks(&mut s, start, 2_500, 1_990, 200), None);
        assert_eq!(acks(&mut s, start, 4_500, 10, 200), Some(Step::Hold(200.0)), "held");
        assert_eq!(s.phase_rate(), Some((200.0, 400.0)), "held at 200, 400 refused");
        let up = s.acked(at(start, 4_600), true).unwrap();
        let Step::Hold(higher) = up else { panic!("{up:?}") };
        assert!((higher - (200.0f64 * 400.0).sqrt()).abs() < 1e-9, "between 200 and 400: {higher}");
    }

    #[test]
    fn throttles_that_come_at_any_rate_end_the_search_for_a_while() {
        let start = Instant::now();
        let mut s = begun(start);
        // Trial at 200 refused after 20 requests, at 100 too, and 50 ... until a lower rate
        // could not serve 1.25 times the 8/s served before: back to the pacer's own control.
        let mut now = 2_500;
        let mut said = None;
        for _ in 0..10 {
            acks(&mut s, start, now, 100, 200);
            now += 100;
            said = s.throttled(at(start, now), 0.0, PAUSE);
            now += 1_000;
            if said == Some(Step::Free) {
                break;
            }
        }
        assert_eq!(said, Some(Step::Free));
        assert!(!s.holds());
        // Throttles as short again do not begin another search before the backoff is over.
        acks(&mut s, start, now, 200, 20);
        assert_eq!(s.throttled(at(start, now + 200), 400.0, PAUSE), None);
        assert_eq!(s.throttled(at(start, now + 1_300), 400.0, PAUSE), None);
    }

    #[test]
    fn a_search_begun_again_with_nothing_served_to_beat_gives_up_at_the_slowest_rate() {
        let start = Instant::now();
        let mut s = LimitSearch::new(start);
        let trial = |rate| Trial {
            rate,
            direction: Direction::Down,
            start,
            acks: 0,
            served_before: 0.0,
            refused: 2.0 * rate,
            reprobe: false,
        };
        assert_eq!(s.trial_refused(at(start, 1_000), trial(4.0)), Step::Hold(2.0));
        assert_eq!(s.trial_refused(at(start, 2_000), trial(1.5)), Step::Free);
    }

    #[test]
    fn a_rate_held_after_a_trial_up_and_throttled_soon_goes_back_to_the_rate_held_before() {
        let start = Instant::now();
        let mut s = begun(start);
        assert_eq!(acks(&mut s, start, 2_500, 2_010, 200), Some(Step::Hold(200.0)));
        let Some(Step::Hold(higher)) = s.acked(at(start, 4_600), true) else { panic!() };
        // The trial up passes (a bucket's burst can carry it), is held, and throttled soon.
        assert_eq!(acks(&mut s, start, 4_600, 1_010, 200), Some(Step::Hold(higher)));
        assert_eq!(s.throttled(at(start, 8_000), higher, PAUSE), Some(Step::Hold(200.0)));
    }
}
