//! The committer: the one writer of delivery's state. It notes each window of users as about to
//! be sent, records answers as they come, as many per transaction as have arrived, and drops a
//! window's note once its last answer is committed; with its own connections (see `lanes`),
//! on the sending thread or a thread of its own (`deliver` says which, and why).
//!
//! Both kinds of write go through this one writer on purpose: two connections writing in turn
//! meet SQLite's busy handler, which sleeps a millisecond or more whenever the other holds the
//! lock, and every request slot waits out that sleep. On PostgreSQL its transactions run on
//! several connections at once (`lanes`); what must come after what is kept here: a window's
//! note is dropped only with or after the commit of its last answers, and a first sync's queue
//! runs are let go only of users whose answers all committed.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot};

use super::WindowNote;
use super::lanes::{Batch, Done, Finished, Job, Lanes};
use crate::change::Outcome;
use crate::state::{AnswerWriter, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;

/// A write asked of the committer.
pub enum Write {
    /// The answers of one call.
    Answers(CallAnswers),
    /// A window is about to be sent; say when that is noted.
    Sending { note: WindowNote, noted: oneshot::Sender<anyhow::Result<()>> },
    /// Sending ended of itself (not abandoned): every call that went out has its answers
    /// recorded, so the windows still noted hold only users never sent, whose notes go.
    Done,
}

/// Serves writes for the computations `keys` (of which `first_sync` are on their first sync,
/// and `runs` gives each one's running `sync_runs` row) until the channel closes; returns how
/// many rows each computation had quarantined. Between writes it waits without blocking; on
/// SQLite each write blocks the thread for its transaction (tens of microseconds for a few
/// answers), on PostgreSQL it runs on a thread of its own (`lanes`).
pub async fn commit_loop(
    store: Store,
    keys: Vec<String>,
    first_sync: Vec<String>,
    runs: BTreeMap<String, i64>,
    writes: mpsc::Receiver<Write>,
    quarantine_after: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let writers = (0..store.answer_lanes())
        .map(|_| store.answer_writer(&keys, quarantine_after, &first_sync)?.counting_on(runs.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    serve(writers, keys, !first_sync.is_empty(), writes).await
}

/// `commit_loop` on `writers` (one per lane), with first syncs among the computations or not.
async fn serve(
    writers: Vec<AnswerWriter>,
    keys: Vec<String>,
    first_syncs: bool,
    mut writes: mpsc::Receiver<Write>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut committer = Committer {
        lanes: Lanes::new(writers, keys),
        windows: HashMap::new(),
        answered: Vec::new(),
        quarantined: BTreeMap::new(),
        queue: first_syncs.then(QueueRelease::default),
    };
    let mut next = None;
    loop {
        let write = match next.take() {
            Some(write) => write,
            None => tokio::select! {
                biased;
                done = committer.lanes.next_finished(), if committer.lanes.busy() => {
                    committer.finish(done)?;
                    continue;
                }
                write = writes.recv() => match write {
                    Some(write) => write,
                    None => break,
                },
            },
        };
        next = committer.take(write, &mut writes).await?;
    }
    committer.settle().await?;
    Ok(committer.quarantined)
}

/// The answers of one call of window `window`, and where to hand them back once recorded.
pub struct CallAnswers {
    pub window: u64,
    pub outcomes: Vec<Outcome>,
    pub committed: oneshot::Sender<Vec<Outcome>>,
}

/// A window noted whose answers have not all committed: its calls not committed yet, its
/// `sending_windows` rows (empty once dropped), the users it covers, (`after`, `last`].
struct NotedWindow {
    calls_left: usize,
    ids: Vec<i64>,
    after: String,
}

/// Answers between two releases of first syncs' queue runs, at least: a release is a
/// transaction of its own.
const RELEASE_EVERY: usize = 16_384;

/// How far first syncs' queues were released (`AnswerWriter::answered_through`): their members
/// through `through` all have their rows.
#[derive(Default)]
struct QueueRelease {
    through: String,
    /// The last user of the last window noted.
    last_noted: String,
    answers: usize,
}

struct Committer {
    lanes: Lanes,
    windows: HashMap<u64, NotedWindow>,
    /// Notes of windows whose answers all committed, their last ones beside another batch
    /// still out that held some: dropped with the next batch.
    answered: Vec<i64>,
    quarantined: BTreeMap<String, u64>,
    /// With first syncs among the computations.
    queue: Option<QueueRelease>,
}

impl Committer {
    /// Serves `write`; returns the first other write met while gathering answers.
    async fn take(&mut self, write: Write, writes: &mut mpsc::Receiver<Write>) -> anyhow::Result<Option<Write>> {
        self.idle_lane().await?;
        match write {
            Write::Sending { note, noted } => self.lanes.start(Job::Note { note, noted }),
            Write::Answers(answers) => return self.record_arrived(answers, writes),
            Write::Done => self.forget_unsent().await?,
        }
        Ok(None)
    }

    /// Waits, taking what ends meanwhile, until a lane is free.
    async fn idle_lane(&mut self) -> anyhow::Result<()> {
        self.take_finished_until(Lanes::has_idle).await
    }

    /// Waits for every job out to end, taking each.
    async fn drain(&mut self) -> anyhow::Result<()> {
        self.take_finished_until(|lanes| !lanes.busy()).await
    }

    async fn take_finished_until(&mut self, enough: impl Fn(&Lanes) -> bool) -> anyhow::Result<()> {
        while !enough(&self.lanes) {
            let done = self.lanes.next_finished().await;
            self.finish(done)?;
        }
        Ok(())
    }

    /// At the end: everything out committed, and the notes of windows wholly answered dropped.
    async fn settle(&mut self) -> anyhow::Result<()> {
        self.drain().await?;
        if !self.answered.is_empty() {
            self.start_record(Vec::new(), Vec::new(), Vec::new());
            self.drain().await?;
        }
        Ok(())
    }

    /// Drops the notes of the windows not wholly answered: after a clean end of sending, the
    /// rest of their users never went out, and the next pass must not treat them as told. Only
    /// once every answer out has committed: a note dropped before its answers are in the state
    /// would let a kill lose that those users may have been told.
    async fn forget_unsent(&mut self) -> anyhow::Result<()> {
        self.drain().await?;
        let unsent: Vec<i64> = self.windows.drain().flat_map(|(_, noted)| noted.ids).collect();
        self.answered.extend(unsent);
        self.settle().await
    }

    /// Takes what a lane did.
    fn finish(&mut self, done: Done) -> anyhow::Result<()> {
        match done? {
            Finished::Recorded { batch, quarantined } => {
                self.recorded(batch, quarantined);
                self.release_queue();
            }
            Finished::Noted { note, noted, ids } => {
                let ids = ids.map(|ids| self.noted(note, ids));
                let _ = noted.send(ids);
            }
            Finished::Released => {}
        }
        Ok(())
    }

    fn noted(&mut self, note: WindowNote, ids: Vec<i64>) {
        self.windows.insert(note.window, NotedWindow { calls_left: note.calls, ids, after: note.after });
        if let Some(queue) = &mut self.queue {
            queue.last_noted = note.last;
        }
    }

    /// A batch committed: its calls get their answers back, and windows whose answers have now
    /// all committed are done with (their notes dropped with the next batch, if not with this).
    fn recorded(&mut self, batch: Batch, quarantined: Vec<String>) {
        for key in quarantined {
            *self.quarantined.entry(key).or_default() += 1;
        }
        let rows = batch.calls.iter().map(Vec::len).sum::<usize>();
        for (committed, outcomes) in batch.waiting.into_iter().zip(batch.calls) {
            let _ = committed.send(outcomes);
        }
        for (window, calls) in batch.windows {
            if let Some(noted) = self.windows.get_mut(&window) {
                noted.calls_left -= calls;
                if noted.calls_left == 0 {
                    self.answered.append(&mut noted.ids);
                    self.windows.remove(&window);
                }
            }
        }
        if let Some(queue) = &mut self.queue {
            queue.answers += rows;
        }
    }

    /// Lets the first syncs' queues give back the space of runs whose members were all
    /// answered, every `RELEASE_EVERY` answers: the rows written meanwhile reuse it, instead of
    /// the state file growing by the whole queue and shrinking back when the sync ends.
    fn release_queue(&mut self) {
        let Some(queue) = &mut self.queue else { return };
        if queue.answers < RELEASE_EVERY || !self.lanes.has_idle() {
            return;
        }
        let through = answered_through(&self.windows, &queue.last_noted);
        if through <= queue.through {
            return;
        }
        let after = std::mem::replace(&mut queue.through, through.clone());
        queue.answers = 0;
        self.lanes.start(Job::Release { after, through });
    }

    /// Records `first` and every answer that has already arrived behind it, in one
    /// transaction; each call gets its answers back once it committed. Returns the first
    /// other write it met.
    fn record_arrived(
        &mut self,
        first: CallAnswers,
        writes: &mut mpsc::Receiver<Write>,
    ) -> anyhow::Result<Option<Write>> {
        let (mut calls, mut waiting, mut windows) = (Vec::new(), Vec::new(), Vec::<(u64, usize)>::new());
        let (mut rows, mut other) = (0, None);
        let mut next = Some(first);
        while let Some(CallAnswers { window, outcomes, committed }) = next.take() {
            rows += outcomes.len();
            calls.push(outcomes);
            waiting.push(committed);
            match windows.iter_mut().find(|(w, _)| *w == window) {
                Some((_, n)) => *n += 1,
                None => windows.push((window, 1)),
            }
            if rows < MAX_ACK_BATCH {
                match writes.try_recv() {
                    Ok(Write::Answers(answers)) => next = Some(answers),
                    Ok(write) => other = Some(write),
                    Err(_) => {}
                }
            }
        }
        self.start_record(calls, waiting, windows);
        Ok(other)
    }

    /// Starts a batch on an idle lane. A window whose every answer not yet committed is in it
    /// has its note dropped in the same transaction.
    fn start_record(
        &mut self,
        calls: Vec<Vec<Outcome>>,
        waiting: Vec<oneshot::Sender<Vec<Outcome>>>,
        windows: Vec<(u64, usize)>,
    ) {
        let mut answered = std::mem::take(&mut self.answered);
        for (window, calls) in &windows {
            if let Some(noted) = self.windows.get_mut(window)
                && noted.calls_left == *calls
            {
                answered.append(&mut noted.ids);
            }
        }
        self.lanes.start(Job::Record(Batch { calls, waiting, windows, answered }));
    }
}

/// Every user up to the first window whose answers have not all committed (windows go out in
/// user order), or up to the last one noted when there is none, has been answered and has a row.
fn answered_through(windows: &HashMap<u64, NotedWindow>, last_noted: &str) -> String {
    match windows.iter().min_by_key(|(id, _)| **id) {
        Some((_, oldest)) => oldest.after.clone(),
        None => last_noted.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{PendingRow, PendingValue};
    use crate::config::Kind;
    use crate::state::testing::store_with_audience;

    const CHANGED_AT: &str = "2026-01-01T00:00:00.000Z";

    fn user(i: usize) -> String {
        format!("u{i:05}")
    }

    fn acked(user: String) -> Outcome {
        let value =
            PendingValue { key: "a".into(), value: "true".into(), kind: Kind::Audience, changed_at: CHANGED_AT.into() };
        PendingRow { user_id: user, value }.answered(None)
    }

    async fn note(writes: &mpsc::Sender<Write>, window: u64, after: String, last: String) {
        note_calls(writes, window, 1, after, last).await
    }

    async fn note_calls(writes: &mpsc::Sender<Write>, window: u64, calls: usize, after: String, last: String) {
        let (noted, done) = oneshot::channel();
        let note = WindowNote { window, calls, after, last };
        writes.send(Write::Sending { note, noted }).await.unwrap();
        done.await.unwrap().unwrap();
    }

    /// A state in `dir` whose audience "a" has `members` users queued for its first sync, more
    /// than a release of the queue waits for.
    async fn first_sync_queued(dir: &std::path::Path, members: usize) -> (Store, rusqlite::Connection) {
        assert!(members / 2 >= RELEASE_EVERY);
        let (sqlite, db) = store_with_audience(dir).await;
        let store = Store::Sqlite(sqlite);
        let queue_store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut queue = queue_store.first_sync_queue("a", CHANGED_AT)?;
            (0..members).try_for_each(|i| queue.push(&user(i), "true"))?;
            // No pass runs here: the counts are noted on no row.
            queue.commit(0, crate::state::RunCounts::default())
        })
        .await
        .unwrap()
        .unwrap();
        (store, db)
    }

    #[tokio::test]
    async fn a_first_syncs_queue_runs_give_back_their_space_once_every_member_in_them_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        // Runs of the queue hold 1,000 members; a release waits for RELEASE_EVERY answers.
        let half = 20_000;
        let (store, db) = first_sync_queued(dir.path(), 2 * half).await;

        let (writes, received) = mpsc::channel(4);
        let keys = vec!["a".to_string()];
        let committer = tokio::spawn(commit_loop(store, keys.clone(), keys, BTreeMap::new(), received, 3));
        // As delivery does: the next window is noted before the answers of the one before come.
        note(&writes, 0, String::new(), user(half - 1)).await;
        note(&writes, 1, user(half - 1), user(2 * half - 1)).await;
        let (committed, answered) = oneshot::channel();
        let outcomes = (0..half).map(|i| acked(user(i))).collect();
        writes.send(Write::Answers(CallAnswers { window: 0, outcomes, committed })).await.unwrap();
        answered.await.unwrap();
        drop(writes);
        committer.await.unwrap().unwrap();

        let emptied: Vec<String> = db
            .prepare("SELECT last_user FROM first_sync_queue WHERE users = '[]' ORDER BY last_user")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(emptied.len(), half / 1000, "the runs of the answered window, and no other");
        assert_eq!(emptied.last(), Some(&user(half - 1)));
        // What operators see is unchanged: the members not answered are still pending.
        let (pending, first): (i64, String) =
            db.query_row("SELECT count(*), min(user_id) FROM pending", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((pending, first), (half as i64, user(half)));
        let status: i64 = db.query_row("SELECT pending FROM computation_status", [], |r| r.get(0)).unwrap();
        assert_eq!(status, half as i64);
    }

    /// Both lanes' records, counted; the one numbered `hold` waits until the test lets it go
    /// (and says it is waiting), so that the other lane's batch commits first.
    struct Gate {
        records: usize,
        hold: usize,
        waiting: std::sync::mpsc::Sender<()>,
        go: Option<std::sync::mpsc::Receiver<()>>,
    }

    /// A real writer, behind the gate.
    struct Held {
        writer: AnswerWriter,
        gate: std::sync::Arc<std::sync::Mutex<Gate>>,
    }

    impl crate::state::AnswerRecords for Held {
        fn count_on(&mut self, _runs: BTreeMap<String, i64>) -> anyhow::Result<()> {
            Ok(())
        }

        fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
            self.writer.note_window(keys, after, last)
        }

        fn record(&mut self, calls: &[Vec<Outcome>], answered: &[i64]) -> anyhow::Result<Vec<String>> {
            let held = {
                let mut gate = self.gate.lock().unwrap();
                gate.records += 1;
                (gate.records - 1 == gate.hold).then(|| (gate.waiting.clone(), gate.go.take()))
            };
            if let Some((waiting, Some(go))) = held {
                waiting.send(()).unwrap();
                go.recv().unwrap();
            }
            self.writer.record(calls, answered)
        }

        fn answered_through(&mut self, after: &str, through: &str) -> anyhow::Result<()> {
            self.writer.answered_through(after, through)
        }
    }

    async fn answer(writes: &mpsc::Sender<Write>, window: u64, user: String) -> oneshot::Receiver<Vec<Outcome>> {
        let (committed, answered) = oneshot::channel();
        writes.send(Write::Answers(CallAnswers { window, outcomes: vec![acked(user)], committed })).await.unwrap();
        answered
    }

    fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A committer of audience "a"'s first sync on two lanes whose record numbered `held`
    /// waits: the test hears when it does, and lets it go.
    fn two_lanes(store: &Store, held: usize) -> TwoLanes {
        let keys = vec!["a".to_string()];
        let (waiting, is_waiting) = std::sync::mpsc::channel();
        let (go, gate) = std::sync::mpsc::channel();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(Gate { records: 0, hold: held, waiting, go: Some(gate) }));
        let writers = (0..2)
            .map(|_| {
                let writer = store.answer_writer(&keys, 3, &keys).unwrap();
                AnswerWriter::new(Box::new(Held { writer, gate: gate.clone() }))
            })
            .collect();
        let (writes, received) = mpsc::channel(4);
        TwoLanes { writes, committer: tokio::spawn(serve(writers, keys, true, received)), is_waiting, go }
    }

    struct TwoLanes {
        writes: mpsc::Sender<Write>,
        committer: tokio::task::JoinHandle<anyhow::Result<BTreeMap<String, u64>>>,
        is_waiting: std::sync::mpsc::Receiver<()>,
        go: std::sync::mpsc::Sender<()>,
    }

    /// A window of two calls, each recorded on its own lane; the call `held` (0 or 1) is
    /// recorded last, after the other's batch committed.
    async fn two_lanes_one_window(held: usize) {
        let dir = tempfile::tempdir().unwrap();
        let (sqlite, db) = store_with_audience(dir.path()).await;
        let store = Store::Sqlite(sqlite);
        let TwoLanes { writes, committer, is_waiting, go } = two_lanes(&store, held);
        note_calls(&writes, 0, 2, String::new(), user(1)).await;

        let first = answer(&writes, 0, user(0)).await;
        let held_call = if held == 0 {
            tokio::task::spawn_blocking(move || is_waiting.recv().unwrap()).await.unwrap();
            answer(&writes, 0, user(1)).await.await.unwrap();
            first
        } else {
            first.await.unwrap();
            let second = answer(&writes, 0, user(1)).await;
            tokio::task::spawn_blocking(move || is_waiting.recv().unwrap()).await.unwrap();
            second
        };
        assert_eq!(count(&db, "SELECT count(*) FROM member_rows"), 1);
        assert_eq!(
            count(&db, "SELECT count(*) FROM sending_windows"),
            1,
            "the note stays while an answer of its window has not committed: a kill now must still know \
             that user may have been told"
        );

        go.send(()).unwrap();
        held_call.await.unwrap();
        drop(writes);
        committer.await.unwrap().unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM member_rows"), 2);
        assert_eq!(count(&db, "SELECT count(*) FROM sending_windows"), 0, "dropped once both committed");
    }

    #[tokio::test]
    async fn a_windows_note_stays_until_its_first_calls_answers_commit_after_its_last_calls() {
        two_lanes_one_window(0).await;
    }

    #[tokio::test]
    async fn a_windows_note_stays_until_its_last_calls_answers_commit_after_its_first_calls() {
        two_lanes_one_window(1).await;
    }

    #[tokio::test]
    async fn a_first_syncs_queue_keeps_the_users_of_a_window_whose_answers_have_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let window = 20_000;
        let (store, db) = first_sync_queued(dir.path(), 2 * window).await;
        let TwoLanes { writes, committer, is_waiting, go } = two_lanes(&store, 0);
        note(&writes, 0, String::new(), user(window - 1)).await;
        note(&writes, 1, user(window - 1), user(2 * window - 1)).await;
        let call = |from: usize| {
            let (committed, answered) = oneshot::channel();
            let outcomes = (from..from + window).map(|i| acked(user(i))).collect();
            (Write::Answers(CallAnswers { window: (from / window) as u64, outcomes, committed }), answered)
        };

        // The first window's answers wait on one lane while the second's commit on the other,
        // past the answers a release waits for.
        let (first, first_committed) = call(0);
        writes.send(first).await.unwrap();
        tokio::task::spawn_blocking(move || is_waiting.recv().unwrap()).await.unwrap();
        let (second, second_committed) = call(window);
        writes.send(second).await.unwrap();
        second_committed.await.unwrap();
        // A release started by the second window's answers would have run by the time the
        // committer takes its next write (the note below): one lane is free for it.
        note(&writes, 2, user(2 * window - 1), user(2 * window - 1)).await;
        let pending = count(&db, "SELECT count(*) FROM pending");
        assert_eq!(pending, window as i64, "the first window's members are still found in the queue");
        assert_eq!(count(&db, "SELECT count(*) FROM first_sync_queue WHERE users = '[]'"), 0);

        go.send(()).unwrap();
        first_committed.await.unwrap();
        drop(writes);
        committer.await.unwrap().unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM member_rows"), 2 * window as i64);
        assert_eq!(count(&db, "SELECT count(*) FROM pending"), 0);
    }
}
