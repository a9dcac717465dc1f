//! A lease's tenure as this process's own clock tells it: what lets a stalled process know,
//! on waking, that it must not send before it has renewed its leases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Until when, by this process's own clock, its leases are surely still its own: the expiry it
/// last wrote counts from after the instant taken before writing it, so this ends no later.
/// A process stalled past it (stopped, swapped out, its VM paused) may have lost its leases to
/// another without knowing yet; it sends nothing more until a renewal says they are still its
/// own, lest a stale update land after the new holder's (§9.6). Shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Tenure(Option<Arc<TenureClock>>);

/// The tenure of a sender that holds no lease (also `Tenure::default()`).
pub static UNBOUNDED: Tenure = Tenure(None);

/// A blocking renewal of the leases behind a tenure: `Err` when they are no longer ours.
pub type Renewal = Arc<dyn Fn() -> anyhow::Result<()> + Send + Sync>;

struct TenureClock {
    base: Instant,
    /// Microseconds after `base`.
    until: AtomicU64,
    ttl: Duration,
    /// How to ask whether the leases are still ours once the tenure has passed.
    renewal: Option<Renewal>,
    /// Held while one sender asks: the others woken with it past the tenure wait for its answer
    /// instead of each asking the state at once (a pass has `concurrency` requests in flight; on
    /// PostgreSQL each renewal is a connection of its own).
    confirming: Mutex<()>,
}

impl std::fmt::Debug for TenureClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenureClock").field("until", &self.until).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Tenure {
    /// Leases written at `asked` or later, to last `ttl`. Past it, nothing is sent unless
    /// `renewal` (where there is one) says the leases are still ours: a renewal late behind a
    /// busy writer (SQLite's lock is not fair) is no reason to stop.
    pub fn renewable(asked: Instant, ttl: Duration, renewal: Option<Renewal>) -> Tenure {
        let clock = TenureClock { base: asked, until: AtomicU64::new(0), ttl, renewal, confirming: Mutex::new(()) };
        let tenure = Tenure(Some(Arc::new(clock)));
        tenure.renewed(asked, ttl);
        tenure
    }

    /// The leases renewed, their expiry written at `asked` or later, to last `ttl`.
    pub fn renewed(&self, asked: Instant, ttl: Duration) {
        if let Some(clock) = &self.0 {
            let until = asked.saturating_duration_since(clock.base) + ttl;
            clock.until.fetch_max(until.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Whether less than `part` of the tenure is left (never, unbounded): a writer that holds
    /// the leases anyway may as well renew them.
    pub fn running_out(&self, part: Duration) -> bool {
        self.0.as_ref().is_some_and(|clock| {
            let until = clock.base + Duration::from_micros(clock.until.load(Ordering::Relaxed));
            until.saturating_duration_since(Instant::now()) < part
        })
    }

    /// Blocking. Why nothing may be sent now, if the leases may have lapsed and a renewal (where
    /// there is one) did not say they are still ours.
    pub fn confirm(&self) -> Option<String> {
        let why = self.lapsed()?;
        let clock = self.0.as_ref()?;
        let Some(renewal) = &clock.renewal else { return Some(why) };
        let _turn = clock.confirming.lock().unwrap_or_else(PoisonError::into_inner);
        // Renewed while this one waited its turn: nothing to ask.
        let why = self.lapsed()?;
        let asked = Instant::now();
        match renewal() {
            Ok(()) => {
                self.renewed(asked, clock.ttl);
                None
            }
            Err(e) => Some(format!("{why}: {e:#}")),
        }
    }

    /// Why nothing may be sent now, if the leases may have lapsed.
    pub fn lapsed(&self) -> Option<String> {
        let clock = self.0.as_ref()?;
        let until = clock.base + Duration::from_micros(clock.until.load(Ordering::Relaxed));
        let late = Instant::now().checked_duration_since(until)?;
        Some(format!(
            "this process went {} ms past its lease without renewing it (stalled?); sending nothing more",
            late.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_tenure_lapses_a_ttl_after_the_last_renewal_was_asked_and_never_without_leases() {
        let long_ago = Instant::now() - 2 * TTL;
        let tenure = Tenure::renewable(long_ago, TTL, None);
        assert!(tenure.lapsed().is_some(), "acquired two ttls ago, never renewed");
        tenure.clone().renewed(Instant::now(), TTL);
        assert!(tenure.lapsed().is_none(), "a renewal seen through a clone extends it");
        tenure.renewed(long_ago, TTL);
        assert!(tenure.lapsed().is_none(), "a renewal asked earlier does not shorten it");
        assert!(UNBOUNDED.lapsed().is_none() && !UNBOUNDED.running_out(TTL));
    }

    #[test]
    fn past_its_tenure_a_sender_goes_on_only_once_a_renewal_says_the_leases_are_still_its_own() {
        let long_ago = Instant::now() - 2 * TTL;
        let renewed = Tenure::renewable(long_ago, TTL, Some(Arc::new(|| Ok(()))));
        assert!(renewed.lapsed().is_some());
        assert_eq!(renewed.confirm(), None);
        assert!(renewed.lapsed().is_none(), "the renewal extends the tenure");
        let lost = Tenure::renewable(long_ago, TTL, Some(Arc::new(|| anyhow::bail!("lost the lease of a"))));
        let why = lost.confirm().expect("refused");
        assert!(why.contains("past its lease") && why.contains("lost the lease of a"), "{why}");
        assert!(Tenure::renewable(long_ago, TTL, None).confirm().is_some(), "no renewal to ask");
    }

    /// Noticed in review: each sender woken past the tenure asked for a renewal of its own, all
    /// at once. Eight of them now get their answer from one renewal.
    #[test]
    fn senders_woken_together_past_the_tenure_ask_for_one_renewal() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Renewals in flight now and at most; each waits a while for a second one to overlap it.
        let overlap = Arc::new((Mutex::new((0, 0)), std::sync::Condvar::new()));
        let renewal: Renewal = {
            let (calls, overlap) = (calls.clone(), overlap.clone());
            Arc::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let (lock, arrived) = &*overlap;
                let mut seen = lock.lock().unwrap();
                (seen.0, seen.1) = (seen.0 + 1, seen.1.max(seen.0 + 1));
                arrived.notify_all();
                let wait = Duration::from_millis(200);
                let (mut seen, _) = arrived.wait_timeout_while(seen, wait, |seen| seen.0 < 2).unwrap();
                seen.0 -= 1;
                Ok(())
            })
        };
        let tenure = Tenure::renewable(Instant::now() - 2 * TTL, TTL, Some(renewal));
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let tenure = tenure.clone();
                std::thread::spawn(move || tenure.confirm())
            })
            .collect();
        for sender in senders {
            assert_eq!(sender.join().unwrap(), None, "every sender may go on");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "renewals asked");
        assert_eq!(overlap.0.lock().unwrap().1, 1, "renewals at once");
    }

    #[test]
    fn a_tenure_runs_out_as_its_end_nears() {
        let tenure = Tenure::renewable(Instant::now() - TTL / 2, TTL, None);
        assert!(tenure.running_out(TTL * 2 / 3));
        assert!(!tenure.running_out(TTL / 3));
    }
}
