//! The committer: the one writer of delivery's state. It notes each window of users as about to
//! be sent, records answers as they come, as many per transaction as have arrived, and drops a
//! window's note with its last answer; with its own connection (see `state::AnswerWriter`),
//! on the sending thread or a thread of its own (`deliver` says which, and why).
//!
//! Both kinds of write go through this one writer on purpose: two connections writing in turn
//! meet SQLite's busy handler, which sleeps a millisecond or more whenever the other holds the
//! lock, and every request slot waits out that sleep.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot};

use super::WindowNote;
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
/// and `runs` gives each one's running `sync_runs` row) until the channel closes; returns how many rows each computation had quarantined.
/// Between writes it waits without blocking; each write blocks the thread for its transaction
/// (tens of microseconds for a few answers).
pub async fn commit_loop(
    store: Store,
    keys: Vec<String>,
    first_sync: Vec<String>,
    runs: BTreeMap<String, i64>,
    mut writes: mpsc::Receiver<Write>,
    quarantine_after: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut committer = Committer {
        writer: store.answer_writer(&keys, quarantine_after, &first_sync)?.counting_on(runs),
        keys,
        windows: HashMap::new(),
        quarantined: BTreeMap::new(),
        queue: (!first_sync.is_empty()).then(QueueRelease::default),
    };
    let mut next = writes.recv().await;
    while let Some(write) = next.take() {
        next = match write {
            Write::Sending { note, noted } => {
                let _ = noted.send(committer.note(note));
                None
            }
            Write::Answers(answers) => committer.record_arrived(answers, &mut writes)?,
            Write::Done => {
                committer.forget_unsent()?;
                None
            }
        };
        if next.is_none() {
            next = writes.recv().await;
        }
    }
    Ok(committer.quarantined)
}

/// The answers of one call of window `window`, and where to hand them back once recorded.
pub struct CallAnswers {
    pub window: u64,
    pub outcomes: Vec<Outcome>,
    pub committed: oneshot::Sender<Vec<Outcome>>,
}

/// A window noted and not yet wholly answered: its calls still out, its `sending_windows` rows,
/// the users it covers, (`after`, `last`].
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
    writer: AnswerWriter,
    keys: Vec<String>,
    windows: HashMap<u64, NotedWindow>,
    quarantined: BTreeMap<String, u64>,
    /// With first syncs among the computations.
    queue: Option<QueueRelease>,
}

impl Committer {
    /// Drops the notes of the windows not wholly answered: after a clean end of sending, the
    /// rest of their users never went out, and the next pass must not treat them as told.
    fn forget_unsent(&mut self) -> anyhow::Result<()> {
        let ids: Vec<i64> = self.windows.drain().flat_map(|(_, noted)| noted.ids).collect();
        if !ids.is_empty() {
            self.writer.record(&[], &ids)?;
        }
        Ok(())
    }

    fn note(&mut self, note: WindowNote) -> anyhow::Result<()> {
        let ids = self.writer.note_window(&self.keys, &note.after, &note.last)?;
        self.windows.insert(note.window, NotedWindow { calls_left: note.calls, ids, after: note.after });
        if let Some(queue) = &mut self.queue {
            queue.last_noted = note.last;
        }
        Ok(())
    }

    /// Lets the first syncs' queues give back the space of runs whose members were all
    /// answered, every `RELEASE_EVERY` answers: the rows written meanwhile reuse it, instead of
    /// the state file growing by the whole queue and shrinking back when the sync ends.
    fn release_queue(&mut self, answers: usize) -> anyhow::Result<()> {
        let Some(queue) = &mut self.queue else { return Ok(()) };
        queue.answers += answers;
        if queue.answers < RELEASE_EVERY {
            return Ok(());
        }
        let through = answered_through(&self.windows, &queue.last_noted);
        if through <= queue.through {
            return Ok(());
        }
        self.writer.answered_through(&queue.through, &through)?;
        (queue.through, queue.answers) = (through, 0);
        Ok(())
    }

    /// Records `first` and every answer that has already arrived behind it, in one
    /// transaction, then hands each call its answers back. Returns the first other write it met.
    fn record_arrived(
        &mut self,
        first: CallAnswers,
        writes: &mut mpsc::Receiver<Write>,
    ) -> anyhow::Result<Option<Write>> {
        let (mut calls, mut waiting, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rows, mut other) = (0, None);
        let mut next = Some(first);
        while let Some(CallAnswers { window, outcomes, committed }) = next.take() {
            rows += outcomes.len();
            calls.push(outcomes);
            waiting.push(committed);
            if let Some(noted) = self.windows.get_mut(&window) {
                noted.calls_left -= 1;
                if noted.calls_left == 0 {
                    answered.append(&mut noted.ids);
                    self.windows.remove(&window);
                }
            }
            if rows < MAX_ACK_BATCH {
                match writes.try_recv() {
                    Ok(Write::Answers(answers)) => next = Some(answers),
                    Ok(write) => other = Some(write),
                    Err(_) => {}
                }
            }
        }
        for key in self.writer.record(&calls, &answered)? {
            *self.quarantined.entry(key).or_default() += 1;
        }
        for (committed, outcomes) in waiting.into_iter().zip(calls) {
            let _ = committed.send(outcomes);
        }
        self.release_queue(rows)?;
        self.writer.catch_up();
        Ok(other)
    }
}

/// Every user up to the first window still out (windows go out in user order), or up to the
/// last one noted when none is, has been answered and has a row.
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
        let (noted, done) = oneshot::channel();
        let note = WindowNote { window, calls: 1, after, last };
        writes.send(Write::Sending { note, noted }).await.unwrap();
        done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_first_syncs_queue_runs_give_back_their_space_once_every_member_in_them_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (sqlite, db) = store_with_audience(dir.path()).await;
        let store = Store::Sqlite(sqlite);
        // Runs of the queue hold 1,000 members; a release waits for RELEASE_EVERY answers.
        let half = 20_000;
        assert!(half >= RELEASE_EVERY);
        let queue_store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut queue = queue_store.first_sync_queue("a", CHANGED_AT)?;
            (0..2 * half).try_for_each(|i| queue.push(&user(i), "true"))?;
            queue.commit()
        })
        .await
        .unwrap()
        .unwrap();

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
}
