//! The pacer against simulated destinations, in virtual time (tokio's paused clock): what a
//! delivery of many requests achieves against a token bucket and against 429s at random. The
//! same shapes run against the real binary in `examples/bench_throttle.rs`; these pin the
//! behaviour, deterministically.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Pacer, Patience};

/// What a stand-in answers a request at an instant.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// 429, `Retry-After: 1`.
    Throttled,
    /// 500: tried again, says nothing of the rate.
    Failed,
}

trait StandIn: Send {
    fn answer(&mut self, now: Instant) -> Answer;
}

/// `limit` tokens a second, at most `burst` held; 429 when empty. Each of `then`, in order, sets
/// a new limit and burst from its instant on.
struct Bucket {
    limit: f64,
    burst: f64,
    tokens: f64,
    filled: Instant,
    then: Vec<(Instant, f64, f64)>,
}

impl Bucket {
    fn new(limit: f64, burst: f64) -> Bucket {
        Bucket { limit, burst, tokens: burst, filled: Instant::now(), then: Vec::new() }
    }

    /// The same, whose limit becomes `limit` after `after` (the burst stays).
    fn changing(self, after: Duration, limit: f64) -> Bucket {
        let burst = self.then.last().map_or(self.burst, |t| t.2);
        self.changing_burst(after, limit, burst)
    }

    /// The same, whose limit and burst become `limit` and `burst` after `after`.
    fn changing_burst(mut self, after: Duration, limit: f64, burst: f64) -> Bucket {
        self.then.push((Instant::now() + after, limit, burst));
        self
    }
}

impl StandIn for Bucket {
    fn answer(&mut self, now: Instant) -> Answer {
        while let Some(&(_, limit, burst)) = self.then.first().filter(|t| now >= t.0) {
            (self.limit, self.burst) = (limit, burst);
            self.tokens = self.tokens.min(burst);
            self.then.remove(0);
        }
        let refill = now.saturating_duration_since(self.filled).as_secs_f64() * self.limit;
        (self.tokens, self.filled) = ((self.tokens + refill).min(self.burst), now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Answer::Ok
        } else {
            Answer::Throttled
        }
    }
}

/// xorshift64: deterministic, and enough for a share of answers.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 5 % of requests 429 and 15 % 500, at (seeded) random, whatever the rate.
struct AtRandom(Xorshift);

impl StandIn for AtRandom {
    fn answer(&mut self, _: Instant) -> Answer {
        match self.0.next() % 100 {
            0..5 => Answer::Throttled,
            5..20 => Answer::Failed,
            _ => Answer::Ok,
        }
    }
}

/// What a delivery saw.
#[derive(Default)]
struct Seen {
    acknowledged: u32,
    /// When each acknowledgement came.
    acks: Vec<Instant>,
    throttled: u32,
    /// When each 429 came.
    throttles: Vec<Instant>,
    requests: u32,
    /// Time covered by [answer, answer + 1 s] over every 429: what the pauses alone cost.
    pause_cost: Duration,
    paused_until: Option<Instant>,
}

const PAUSE: Duration = Duration::from_secs(1);

/// Delivers `wanted` acknowledgements through `concurrency` tasks against `stand_in`, each
/// answer taking a millisecond; the time it took, and what was seen.
async fn deliver(stand_in: impl StandIn + 'static, wanted: u32, concurrency: usize) -> (Duration, Seen) {
    let pacer = Arc::new(Pacer::new(None));
    let shared = Arc::new(Mutex::new((stand_in, Seen::default())));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pacer, shared) = (pacer.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let stop = CancellationToken::new();
            let patience = Patience {
                deadline: Instant::now() + Duration::from_secs(86_400),
                stop: &stop,
                tenure: &crate::tenure::UNBOUNDED,
            };
            loop {
                let ticket = pacer.acquire(&patience).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                let now = Instant::now();
                let answer = {
                    let (stand_in, seen) = &mut *shared.lock().unwrap();
                    if seen.acknowledged >= wanted {
                        return;
                    }
                    let answer = stand_in.answer(now);
                    seen.count(answer, now);
                    answer
                };
                match answer {
                    Answer::Ok => pacer.succeeded(ticket),
                    Answer::Throttled => pacer.throttled(ticket, Some(PAUSE)),
                    Answer::Failed => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = Instant::now() - start;
    let seen = Arc::try_unwrap(shared).ok().unwrap().into_inner().unwrap().1;
    (took, seen)
}

impl Seen {
    fn count(&mut self, answer: Answer, now: Instant) {
        self.requests += 1;
        match answer {
            Answer::Ok => {
                self.acknowledged += 1;
                self.acks.push(now);
            }
            Answer::Throttled => {
                self.throttled += 1;
                self.throttles.push(now);
                let from = self.paused_until.map_or(now, |until| until.max(now));
                self.pause_cost += (now + PAUSE).saturating_duration_since(from);
                self.paused_until = Some(now + PAUSE);
            }
            Answer::Failed => {}
        }
    }

    fn throttled_share(&self) -> f64 {
        f64::from(self.throttled) / f64::from(self.requests)
    }
}

/// Acknowledgements a second over `took`, as a share of `limit`.
fn goodput(seen: &Seen, took: Duration, limit: f64) -> f64 {
    f64::from(seen.acknowledged) / took.as_secs_f64() / limit
}

#[tokio::test(start_paused = true)]
async fn a_bucket_holding_a_few_requests_is_served_near_its_limit() {
    // Issue 13.8: recovering straight to the rate throttled emptied the bucket again within a
    // few requests, a second's pause each time: about a tenth of the limit.
    for burst in [1.0, 5.0, 20.0] {
        let (took, seen) = deliver(Bucket::new(100.0, burst), 20_000, 16).await;
        let share = goodput(&seen, took, 100.0);
        eprintln!("burst {burst}: {:.1} % in {took:?}, {:.1} % 429s", share * 100.0, seen.throttled_share() * 100.0);
        assert!(share >= 0.9, "burst {burst}: {:.0} % of the limit", share * 100.0);
        assert!(seen.throttled_share() <= 0.05, "burst {burst}: {:.1} % 429s", seen.throttled_share() * 100.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_bucket_holding_a_seconds_worth_is_served_at_its_limit() {
    let (took, seen) = deliver(Bucket::new(200.0, 200.0), 6_000, 16).await;
    let share = goodput(&seen, took, 200.0);
    assert!(share >= 0.95, "{:.0} % of the limit", share * 100.0);
    assert!(seen.throttled_share() <= 0.05, "{:.1} % 429s", seen.throttled_share() * 100.0);
}

#[tokio::test(start_paused = true)]
async fn throttles_at_random_cost_about_their_pauses() {
    // A search for a limit must not take 429s at random for one: a lower rate serves less. Over
    // many seeds, because a search fooled by luck (a couple of seconds at a low rate without a
    // 429) once held 13 requests a second for a minute.
    let mut extras: Vec<Duration> = Vec::new();
    for seed in 1..=100u64 {
        let (took, seen) = deliver(AtRandom(Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))), 500, 16).await;
        extras.push(took.saturating_sub(seen.pause_cost));
    }
    extras.sort();
    let (median, worst) = (extras[50], extras[99]);
    assert!(median < Duration::from_secs(6) && worst < Duration::from_secs(30), "median {median:?}, worst {worst:?}");
}

/// Acknowledgements a second between `from` and `to` after `start`.
fn acks_between(seen: &Seen, start: Instant, from: u64, to: u64) -> f64 {
    let (from, to) = (start + Duration::from_secs(from), start + Duration::from_secs(to));
    seen.acks.iter().filter(|&&t| t >= from && t < to).count() as f64 / (to - from).as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn a_limit_that_drops_mid_delivery_is_followed_down() {
    // Review finding: held rates and the rates passed before the drop all throttled, the search
    // gave up, and the pacer sent at twice the new limit, paused most of the time.
    let start = Instant::now();
    let (_, seen) = deliver(Bucket::new(200.0, 5.0).changing(Duration::from_secs(60), 50.0), 12_000 + 3_000, 16).await;
    let after = acks_between(&seen, start, 80, 120);
    eprintln!("after the drop: {after:.1}/s");
    assert!(after >= 0.8 * 50.0, "{after:.1}/s against a limit of 50/s");
}

#[tokio::test(start_paused = true)]
async fn a_limit_that_rises_mid_delivery_is_followed_up() {
    // Review finding: a held rate tried 5 % higher every 30 s: minutes to find a limit four
    // times higher.
    let start = Instant::now();
    let (_, seen) = deliver(Bucket::new(50.0, 5.0).changing(Duration::from_secs(60), 200.0), 3_000 + 30_000, 16).await;
    // The first try higher comes when the held rate's wait is over (30 s at least), then they
    // double: the second minute after the rise goes near the new limit.
    let after = acks_between(&seen, start, 120, 180);
    eprintln!("the second minute after the rise: {after:.1}/s");
    assert!(after >= 0.6 * 200.0, "{after:.1}/s against a limit of 200/s");
}

#[tokio::test(start_paused = true)]
async fn a_limit_that_dropped_and_rose_again_is_followed_up_within_a_minute() {
    // Review finding: a try higher that failed against the lowered limit doubled the wait
    // before the next, and the held rate stayed at 40/s for 90 s after the limit rose to 150/s.
    let start = Instant::now();
    let secs = Duration::from_secs;
    let bucket = Bucket::new(100.0, 5.0).changing(secs(30), 40.0).changing(secs(60), 150.0);
    let (_, seen) = deliver(bucket, 3_000 + 1_200 + 150 * 90, 16).await;
    let after = acks_between(&seen, start, 120, 150);
    eprintln!("the second half-minute after the rise: {after:.1}/s");
    assert!(after >= 0.6 * 150.0, "{after:.1}/s against a limit of 150/s");
}

/// The share of answers between `from` and `to` seconds after `start` that were 429s.
fn throttled_between(seen: &Seen, start: Instant, from: u64, to: u64) -> f64 {
    let (from, to) = (start + Duration::from_secs(from), start + Duration::from_secs(to));
    let within = |times: &[Instant]| times.iter().filter(|&&t| t >= from && t < to).count() as f64;
    let throttled = within(&seen.throttles);
    throttled / (throttled + within(&seen.acks)).max(1.0)
}

#[tokio::test(start_paused = true)]
async fn a_limit_with_no_burst_that_drops_is_followed_within_seconds() {
    // Review finding: 100/s with a burst of one dropping to 20/s got 4-8 requests a second for a
    // long while. The search found 20/s in seconds, but each of its steps left the requests
    // waiting for their turn queued at the old rate: a second of nothing per step.
    let start = Instant::now();
    let bucket = Bucket::new(100.0, 1.0).changing(Duration::from_secs(15), 20.0);
    let (_, seen) = deliver(bucket, 1_500 + 20 * 50, 16).await;
    let (soon, later) = (acks_between(&seen, start, 20, 30), acks_between(&seen, start, 30, 60));
    eprintln!("5-15 s after the drop: {soon:.1}/s; 15-45 s after: {later:.1}/s");
    assert!(soon >= 0.5 * 20.0 && later >= 0.9 * 20.0, "{soon:.1}/s, then {later:.1}/s against 20/s");
}

#[tokio::test(start_paused = true)]
async fn a_bucket_holding_a_seconds_worth_whose_limit_drops_is_not_flooded() {
    // Review finding: 200/s with a second's burst dropping to 50/s was served at 50/s, but by
    // emptying the bucket after every pause: an eighth of the requests were answered 429.
    let start = Instant::now();
    let bucket = Bucket::new(200.0, 200.0).changing_burst(Duration::from_secs(20), 50.0, 50.0);
    let (_, seen) = deliver(bucket, 4_000 + 50 * 45, 16).await;
    let (served, refused) = (acks_between(&seen, start, 20, 60), throttled_between(&seen, start, 20, 60));
    eprintln!("after the drop: {served:.1}/s, {:.1} % 429s", refused * 100.0);
    assert!(served >= 0.9 * 50.0 && refused <= 0.05, "{served:.1}/s, {:.1} % 429s", refused * 100.0);
}
