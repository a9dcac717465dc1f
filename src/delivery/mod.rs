//! Delivery: sends every pending row of the selected computations, user by user, retrying what
//! is worth retrying, and records each answer.
//!
//! Pending rows are read in pages in user order (merged with the entries of first syncs, which
//! are not in the state yet: see `rows`), grouped into one update per user (all of that user's
//! pending keys), and handed to the destination in calls, at most `concurrency` in flight.
//! Answers go to one committer that records them in group transactions (see `commit`); a call's
//! slot is freed only once its answers are committed, so after a kill only the calls in flight are
//! unrecorded, and only those can be sent twice (DESIGN §9.5).

mod attributes;
mod commit;
mod lanes;
mod retry;
mod rows;
pub mod shards;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::change::{Outcome, PendingRow};
use crate::config::RetryConfig;
use crate::destination::{Destination, UserUpdate};
use crate::metrics::DeliveryCounters;
use crate::progress::Stage;
use crate::state::Store;
use crate::tenure::Tenure;
use crate::weigh::Weigh;

pub use attributes::ensure_attributes;
pub use rows::FirstSync;
use rows::{PageSize, Rows};

/// Pending rows read per page, at least (a page holds at least one window of users), unless
/// they weigh `PAGE_BYTES` first.
const PAGE_ROWS: usize = 5000;
const PAGE_BYTES: usize = 8 << 20;
/// What the calls in flight may weigh together, about: a call is cut at its share of this (but
/// not under `CALL_BYTES_AT_LEAST`) as well as at the destination's users per call, and holds
/// one user at least. A trait's values may be 32 KB each: the file's calls of 4,096 users held
/// 128 MB each (review finding).
const IN_FLIGHT_BYTES: usize = 4 << 20;
const CALL_BYTES_AT_LEAST: usize = 256 << 10;
/// How often a long delivery logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What delivery did for one computation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyReport {
    pub delivered: u64,
    /// Rows not acknowledged this pass (permanent errors, or retries exhausted).
    pub failed: u64,
    /// Re-sends within the pass (each retry of a row counts once).
    pub retried: u64,
    /// Rows set aside by this pass after `quarantine_after` failed passes.
    pub quarantined: u64,
    /// The last error a destination gave for this computation's rows.
    pub last_error: Option<String>,
    /// Why delivery stopped before every row had its turn (the destination paused past the
    /// pass's retry budget); not set by a shutdown.
    pub stopped: Option<String>,
}

/// What delivery did, per computation key.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    pub per_key: BTreeMap<String, KeyReport>,
}

impl DeliveryReport {
    fn add(&mut self, call: &CallResult) {
        for o in &call.outcomes {
            let r = self.key(o.key());
            match &o.error {
                None => r.delivered += 1,
                Some(e) => {
                    r.failed += 1;
                    r.last_error = Some(e.clone());
                }
            }
        }
        for key in &call.retried {
            self.key(key).retried += 1;
        }
    }

    /// The report of computation `key` (looked up without allocating, once it exists).
    fn key(&mut self, key: &str) -> &mut KeyReport {
        if !self.per_key.contains_key(key) {
            self.per_key.insert(key.to_string(), KeyReport::default());
        }
        self.per_key.get_mut(key).expect("inserted above")
    }

    fn totals(&self) -> (u64, u64) {
        self.per_key.values().fold((0, 0), |(d, f), r| (d + r.delivered, f + r.failed))
    }
}

/// The answers of one call, once recorded.
struct CallResult {
    outcomes: Vec<Outcome>,
    /// The computation key of each row re-sent (once per retry).
    retried: Vec<String>,
}

/// What one delivery sends: the pending rows of `keys`, and the entries of the first syncs
/// `first`; `runs` gives each computation's running `sync_runs` row, where its answers are counted.
#[derive(Default)]
pub struct Work {
    pub keys: Vec<String>,
    pub first: Vec<FirstSync>,
    pub runs: BTreeMap<String, i64>,
    /// Other passes run in this process (the daemon): answers are never recorded on the
    /// runtime's thread, where a wait for the write lock held by another pass's transaction
    /// would stop that pass from ever finishing it.
    pub beside_other_passes: bool,
    /// Where each computation's answers and retries are counted (`crate::metrics`).
    pub counters: BTreeMap<String, DeliveryCounters>,
}

/// How calls are sent: where, with which retries, until when.
struct Sending<'a> {
    destination: &'a Destination,
    policy: &'a RetryConfig,
    deadline: Instant,
    halt: &'a retry::Halt,
    /// The leases' tenure: nothing is sent past it.
    tenure: &'a Tenure,
    counters: &'a BTreeMap<String, DeliveryCounters>,
}

/// Delivers every pending, unquarantined row of `work`, and every entry of its first syncs,
/// once, retrying within the pass until `deadline`; rows still failing stay pending for the
/// next pass. Errors only when the state cannot be read or written.
/// Once `stop` is cancelled (shutdown), no new call starts and no wait goes on (the pacer's,
/// the retries'); the requests in flight finish and are recorded. The same when the destination
/// pauses past the retry budget (a `Retry-After` longer than what is left of it): the rows not
/// sent stay pending, and each computation's report says why delivery stopped.
pub async fn deliver(
    store: &Store,
    destination: &Destination,
    work: Work,
    policy: &RetryConfig,
    deadline: Instant,
    stop: &CancellationToken,
    progress: &Stage,
) -> anyhow::Result<DeliveryReport> {
    let Work { keys, first, runs, beside_other_passes, counters } = work;
    if keys.is_empty() && first.is_empty() {
        return Ok(DeliveryReport::default());
    }
    let concurrency = destination.concurrency();
    let per_call = destination.updates_per_call();
    let (write_tx, write_rx) = mpsc::channel::<commit::Write>(concurrency + 1);
    let first_keys: Vec<String> = first.iter().map(|f| f.key.clone()).collect();
    let all_keys: Vec<String> = keys.iter().chain(&first_keys).cloned().collect();
    let committer =
        commit::commit_loop(store.clone(), all_keys.clone(), first_keys, runs, write_rx, policy.quarantine_after);
    let inline = per_call == 1 && !beside_other_passes && store.records_inline();
    let committed = run_committer(committer, inline);
    let halt = retry::Halt::new(stop);
    let tenure = store.tenure();
    let sending = Sending { destination, policy, deadline, halt: &halt, tenure: &tenure, counters: &counters };
    // A window is read and noted while the one before it goes out, so that requests never
    // wait for the state between windows, and no sooner (see `produce`).
    let (window_tx, window_rx) = mpsc::channel::<Window>(1);
    let notes = write_tx.clone();
    let shape = Shape::of(concurrency, per_call);
    let windows = async move { produce(rows(store, keys, first).await?, shape, window_tx, notes).await };
    let done = write_tx.clone();
    let sent = send(&sending, window_rx, write_tx, concurrency, progress);
    let sent_whole = async move {
        let (produced, sent) = tokio::join!(windows, sent);
        if produced.is_ok() && sent.is_ok() {
            let _ = done.send(commit::Write::Done).await;
        }
        (produced, sent)
    };
    let (committed, (produced, sent)) = tokio::join!(committed, sent_whole);
    // The committer's own error explains a failed send better than the closed channel it causes.
    let quarantined = committed?;
    produced?;
    let mut report = sent?;
    for (key, n) in quarantined {
        report.per_key.entry(key).or_default().quarantined += n;
    }
    if let Some(why) = halt.reason() {
        tracing::warn!(reason = %why, "delivery stopped; the rows not sent stay pending");
        for key in all_keys {
            report.per_key.entry(key).or_default().stopped = Some(why.clone());
        }
    }
    Ok(report)
}

/// Runs the committer `inline`, on this thread, or on a thread of its own. With one user per
/// call (Contentstack), a slot's time is the latency plus the wait for its answer to be
/// recorded, and a record is a small transaction: done on this thread, between polls, it saves
/// two thread wake-ups a call. Calls of many users make transactions that are better run beside
/// the sending (docs/performance.md). Inline, a record waiting for another process's write lock
/// holds up this thread too; the calls it would free wait for that lock either way.
async fn run_committer<F, T>(committer: F, inline: bool) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if inline {
        committer.await
    } else {
        tokio::task::spawn_blocking(move || futures::executor::block_on(committer)).await?
    }
}

/// What delivery sends: the state's pending rows of `keys` (if any) and the first syncs'
/// entries, merged.
async fn rows(store: &Store, keys: Vec<String>, first: Vec<FirstSync>) -> anyhow::Result<Rows> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let pending = if keys.is_empty() { None } else { Some(store.pending_reader(&keys)?) };
        Rows::new(pending, first)
    })
    .await?
}

/// Reads `rows` as windows of the calls `shape` cuts, notes each window and hands it to the
/// sending side. A window is noted only once the sending side took the one before it: a kill
/// leaves at most one window noted that has not begun to go out.
async fn produce(
    rows: Rows,
    shape: Shape,
    windows: mpsc::Sender<Window>,
    writes: mpsc::Sender<commit::Write>,
) -> anyhow::Result<()> {
    let produced = windows_of_updates(rows, shape);
    futures::pin_mut!(produced);
    while let Some((window, note)) = produced.try_next().await? {
        let Ok(handing_over) = windows.reserve().await else {
            break; // the sending side stopped (shutdown, or an error it reports)
        };
        note_window(&writes, note).await?;
        handing_over.send(window);
    }
    Ok(())
}

/// Sends the calls of each window as it comes, `concurrency` at a time, and has each call's
/// answers recorded before its slot is free again. Ends when the windows do, or on `halt`.
async fn send(
    sending: &Sending<'_>,
    mut windows: mpsc::Receiver<Window>,
    writes: mpsc::Sender<commit::Write>,
    concurrency: usize,
    progress: &Stage,
) -> anyhow::Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    stream::poll_fn(move |cx| windows.poll_recv(cx))
        .flat_map(|window| stream::iter(window.calls.into_iter().map(move |call| (window.id, call))))
        .take_until(sending.halt.token().cancelled())
        .map(|(window, call)| send_and_record(sending, &writes, window, call))
        .buffer_unordered(concurrency)
        .try_for_each(|call| {
            report.add(&call);
            count(&call, sending.counters);
            progress.inc(call.outcomes.len() as u64);
            if last_progress.elapsed() >= PROGRESS_EVERY {
                let (delivered, failed) = report.totals();
                let elapsed_s = started.elapsed().as_secs();
                tracing::info!(delivered, failed, elapsed_s, "delivery in progress");
                last_progress = Instant::now();
            }
            futures::future::ready(Ok(()))
        })
        .await?;
    Ok(report)
}

/// Sends one call of window `window` (retrying what is worth it) and waits for its answers to
/// be recorded.
async fn send_and_record(
    sending: &Sending<'_>,
    writes: &mpsc::Sender<commit::Write>,
    window: u64,
    call: Vec<UserUpdate>,
) -> anyhow::Result<CallResult> {
    let Sending { destination, policy, deadline, halt, tenure, .. } = *sending;
    let (outcomes, retried) = retry::send_with_retries(destination, policy, deadline, halt, tenure, call).await;
    let (committed, done) = oneshot::channel();
    let answers = commit::Write::Answers(commit::CallAnswers { window, outcomes, committed });
    writes.send(answers).await.map_err(|_| stopped_recording())?;
    let outcomes = done.await.map_err(|_| stopped_recording())?;
    Ok(CallResult { outcomes, retried })
}

/// Counts a call's answers and retries in their computations' series.
fn count(call: &CallResult, counters: &BTreeMap<String, DeliveryCounters>) {
    for o in &call.outcomes {
        if let Some(c) = counters.get(o.key()) {
            c.answered(o.error.is_none());
        }
    }
    for key in &call.retried {
        if let Some(c) = counters.get(key.as_str()) {
            c.retried();
        }
    }
}

fn stopped_recording() -> anyhow::Error {
    anyhow::anyhow!("the state stopped recording answers")
}

/// A window of users, split into calls; noted in `sending_windows` before it is handed out.
struct Window {
    id: u64,
    calls: Vec<Vec<UserUpdate>>,
}

/// What noting a window writes: users in (`after`, `last`], in `calls` calls. (A first sync's
/// users in it are found in its queue, `state::QueueWriter`.)
struct WindowNote {
    window: u64,
    calls: usize,
    after: String,
    last: String,
}

/// How updates are cut into calls, and calls into windows.
#[derive(Debug, Clone, Copy)]
struct Shape {
    calls_per_window: usize,
    users_per_call: usize,
    call_bytes: usize,
}

impl Shape {
    /// Windows of `concurrency` calls of `per_call` users, within `IN_FLIGHT_BYTES`.
    fn of(concurrency: usize, per_call: usize) -> Shape {
        let call_bytes = (IN_FLIGHT_BYTES / concurrency.max(1)).max(CALL_BYTES_AT_LEAST);
        Shape { calls_per_window: concurrency, users_per_call: per_call, call_bytes }
    }

    /// A page: a window of users at least, by count, unless they weigh `PAGE_BYTES` first.
    fn page(&self) -> PageSize {
        PageSize { rows: PAGE_ROWS.max(self.calls_per_window * self.users_per_call), bytes: PAGE_BYTES }
    }

    /// A page's updates as windows of calls, in order.
    fn windows(&self, updates: Vec<UserUpdate>) -> VecDeque<Vec<Vec<UserUpdate>>> {
        let mut windows: VecDeque<Vec<Vec<UserUpdate>>> = VecDeque::new();
        let mut call_weight = 0;
        for user in updates {
            let weight = user.weight();
            let fits = windows
                .back()
                .and_then(|calls| calls.last())
                .is_some_and(|call| call.len() < self.users_per_call && call_weight + weight <= self.call_bytes);
            if !fits {
                match windows.back_mut() {
                    Some(calls) if calls.len() < self.calls_per_window => calls.push(Vec::new()),
                    _ => windows.push_back(vec![Vec::new()]),
                }
                call_weight = 0;
            }
            call_weight += weight;
            windows.back_mut().and_then(|calls| calls.last_mut()).expect("a call is open").push(user);
        }
        windows
    }
}

/// Rows as one update per user, in user order, a window of calls at a time (cut by `shape`),
/// each with what noting it writes.
fn windows_of_updates(rows: Rows, shape: Shape) -> impl futures::Stream<Item = anyhow::Result<(Window, WindowNote)>> {
    let state = (String::new(), VecDeque::new(), rows, 0u64);
    stream::try_unfold(state, move |(after, mut queued, mut rows, id)| async move {
        if queued.is_empty() {
            let (page, back) = tokio::task::spawn_blocking(move || {
                let page = rows.page(shape.page());
                (page, rows)
            })
            .await?;
            rows = back;
            queued = shape.windows(group_by_user(page?));
        }
        let Some(calls) = queued.pop_front() else { return anyhow::Ok(None) };
        let last = calls.last().and_then(|call| call.last()).map(|u| u.user_id.clone()).unwrap_or_default();
        let note = WindowNote { window: id, calls: calls.len(), after, last: last.clone() };
        Ok(Some(((Window { id, calls }, note), (last, queued, rows, id + 1))))
    })
}

/// Notes a window as being sent (`AnswerWriter::note_window`), durably, and waits for it.
async fn note_window(writes: &mpsc::Sender<commit::Write>, note: WindowNote) -> anyhow::Result<()> {
    let (noted, done) = oneshot::channel();
    writes.send(commit::Write::Sending { note, noted }).await.map_err(|_| stopped_recording())?;
    done.await.map_err(|_| stopped_recording())?
}

/// Consecutive rows of one user become one update: pages of pending rows, and the rows of a
/// call that are sent again.
fn group_by_user(rows: impl IntoIterator<Item = PendingRow>) -> Vec<UserUpdate> {
    let mut updates: Vec<UserUpdate> = Vec::new();
    for PendingRow { user_id, value } in rows {
        match updates.last_mut() {
            Some(u) if u.user_id == user_id => u.values.push(value),
            _ => updates.push(UserUpdate { user_id, values: vec![value] }),
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::PendingValue;
    use crate::config::Kind;

    fn row(user: &str, key: &str) -> PendingRow {
        let value =
            PendingValue { key: key.into(), value: "true".into(), kind: Kind::Audience, changed_at: "t".into() };
        PendingRow { user_id: user.into(), value }
    }

    #[test]
    fn rows_of_one_user_become_one_update() {
        let updates = group_by_user(vec![row("a", "k1"), row("a", "k2"), row("b", "k1")]);
        assert_eq!(updates.len(), 2);
        let keys: Vec<&str> = updates[0].values.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(updates[1].user_id, "b");
    }

    fn update(user: &str, bytes: usize) -> UserUpdate {
        let value = PendingValue {
            key: "k".into(),
            value: "n".repeat(bytes),
            kind: Kind::ComputedTrait,
            changed_at: "t".into(),
        };
        UserUpdate { user_id: user.into(), values: vec![value] }
    }

    /// The calls of each window, as their users.
    fn users(windows: &VecDeque<Vec<Vec<UserUpdate>>>) -> Vec<Vec<Vec<&str>>> {
        windows.iter().map(|w| w.iter().map(|c| c.iter().map(|u| u.user_id.as_str()).collect()).collect()).collect()
    }

    #[test]
    fn calls_are_cut_at_the_destinations_users_per_call_and_windows_at_its_concurrency() {
        let shape = Shape::of(2, 2);
        let windows = shape.windows(["a", "b", "c", "d", "e"].map(|u| update(u, 1)).into());
        assert_eq!(users(&windows), [vec![vec!["a", "b"], vec!["c", "d"]], vec![vec!["e"]]]);
    }

    /// Review finding: 30 KB trait values made the file's calls of 4,096 users 128 MB each.
    #[test]
    fn a_call_is_cut_by_what_its_values_weigh_and_holds_one_user_at_least() {
        let shape = Shape::of(4, 4096);
        let big = shape.call_bytes / 2;
        let updates = vec![update("a", big), update("b", big), update("c", 3 * big), update("d", 1)];
        let windows = shape.windows(updates);
        assert_eq!(users(&windows), [vec![vec!["a"], vec!["b"], vec!["c"], vec!["d"]]]);
        let huge = shape.windows(vec![update("a", 10 * IN_FLIGHT_BYTES)]);
        assert_eq!(users(&huge), [vec![vec!["a"]]]);
    }
}
