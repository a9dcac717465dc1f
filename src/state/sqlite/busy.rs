//! Waiting for another writer's lock as SQLite's busy timeout does, but ended by a shutdown
//! (DESIGN §9.9): an operator's open transaction or another process's long diff holds a pass
//! for up to `BUSY_TIMEOUT`, a stopping process for about a second more at most, time for the
//! answers in flight to be recorded.
//!
//! Every connection to the state, sqlx's and the bulk writers' alike, waits through
//! `try_again`.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::BUSY_TIMEOUT;

/// When the process began to stop (milliseconds since the epoch); 0 while it runs.
static STOPPING_SINCE: AtomicU64 = AtomicU64::new(0);

/// How long lock waits go on once the process is stopping.
const AFTER_STOP: Duration = Duration::from_secs(1);

/// Set once a lock wait ended because the process was stopping: SQLite then says only
/// "database is locked", which `explain_lock_wait` completes.
static GAVE_UP_ON_STOP: AtomicBool = AtomicBool::new(false);

/// Set by SIGTERM or SIGINT themselves (a signal handler, not a task): a lock wait on the
/// runtime's one thread keeps the signal's task from ever running.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Whether SIGTERM or SIGINT came since `listen_for_signals`: one that came before tokio's
/// handlers were installed reached only this process's own.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::Acquire)
}

/// Ends every lock wait of this process about a second from now, and refuses new ones then.
pub fn stop_waiting_for_locks() {
    let _ = STOPPING_SINCE.compare_exchange(0, epoch_ms(), Ordering::AcqRel, Ordering::Acquire);
}

/// Has SIGTERM and SIGINT end lock waits (`stop_waiting_for_locks`) even while the runtime's
/// thread is the one waiting. Beside tokio's own handlers, which still run.
pub fn listen_for_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // SAFETY: the action only stores to an atomic, which is async-signal-safe.
            let registered =
                unsafe { signal_hook::low_level::register(signal, || SIGNALLED.store(true, Ordering::Release)) };
            if let Err(e) = registered {
                tracing::warn!(error = %e, "cannot listen for signals during lock waits");
            }
        }
    });
}

/// `e`, said with why its lock wait ended when a shutdown ended it: "database is locked" alone
/// reads as a broken state, not as a stop while another connection (an operator's open
/// transaction, another process's diff) held the write lock.
pub fn explain_lock_wait(e: anyhow::Error) -> anyhow::Error {
    if ended_by_stop(&e) {
        e.context("shutting down: stopped waiting for the state's write lock, held by another connection")
    } else {
        e
    }
}

/// Whether `e` is a lock wait that a shutdown ended.
pub fn ended_by_stop(e: &anyhow::Error) -> bool {
    let locked = e.chain().any(|cause| cause.to_string().contains("database is locked"));
    locked && GAVE_UP_ON_STOP.load(Ordering::Acquire)
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1).max(1)
}

/// SQLite's busy handler: whether to try for the lock again after `count` tries, having slept
/// before the next as SQLite's own busy timeout would.
pub fn try_again(count: i32) -> bool {
    if gave_up_on_stop() {
        return false;
    }
    let (delay, waited) = schedule(count.max(0) as u32);
    if waited + delay > BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(delay);
    true
}

/// Whether a wait for another connection's lock that has lasted `waited` goes on: not past
/// `BUSY_TIMEOUT`, nor past a second after the process began to stop. For waits made of
/// bounded tries (PostgreSQL's `lock_timeout`), as SQLite's busy handler decides its own.
pub fn may_wait_longer(waited: Duration) -> bool {
    !gave_up_on_stop() && waited < BUSY_TIMEOUT
}

/// Whether the process began to stop at least `AFTER_STOP` ago, when lock waits end (noted
/// for the error to say why).
fn gave_up_on_stop() -> bool {
    if SIGNALLED.load(Ordering::Acquire) {
        stop_waiting_for_locks();
    }
    let since = STOPPING_SINCE.load(Ordering::Acquire);
    let gave_up = since != 0 && epoch_ms().saturating_sub(since) >= AFTER_STOP.as_millis() as u64;
    if gave_up {
        GAVE_UP_ON_STOP.store(true, Ordering::Release);
    }
    gave_up
}

/// The sleep before try `count + 1`, and the time slept before it: SQLite's own schedule.
fn schedule(count: u32) -> (Duration, Duration) {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    let i = count as usize;
    let waited: u64 = DELAYS.iter().take(i).sum::<u64>() + i.saturating_sub(DELAYS.len()) as u64 * 100;
    let delay = DELAYS.get(i).copied().unwrap_or(100);
    (Duration::from_millis(delay), Duration::from_millis(waited))
}

/// `try_again` as SQLite calls it, for a connection opened by sqlx.
pub extern "C" fn busy_callback(_: *mut c_void, count: c_int) -> c_int {
    try_again(count) as c_int
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_sqlites_and_reaches_the_timeout() {
        assert_eq!(schedule(0), (Duration::from_millis(1), Duration::ZERO));
        assert_eq!(schedule(3), (Duration::from_millis(10), Duration::from_millis(8)));
        assert_eq!(schedule(12), (Duration::from_millis(100), Duration::from_millis(328)));
        assert_eq!(schedule(14), (Duration::from_millis(100), Duration::from_millis(528)));
        let last = (0..).find(|&c| schedule(c).1 + schedule(c).0 > BUSY_TIMEOUT).unwrap();
        assert!(schedule(last).1 >= BUSY_TIMEOUT - Duration::from_millis(100));
    }
}
