//! Recording what the destination answered.
//!
//! Every acknowledged update waits for its answer to be recorded before its slot is reused
//! (that bounds what a kill can make us re-send), so the time a record takes is time each
//! request holds a slot. Through sqlx, a transaction costs three round trips to the driver's
//! worker thread; here one writer holds its own SQLite connection and runs cached statements
//! directly, on the thread that calls it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, params};
// Looked up once or more for every answer: SipHash was a fifth of the committer's time in a
// first sync's profile (docs/performance.md).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::history::HistoryRecorder;
use super::stored::{Bound, computation_id, millis, stored_value};
use super::{Batched, Checkpointer, Param, Store, now};
use crate::change::Outcome;
use crate::state::delivery::{AnswerRecords, AnswerWriter};

/// A connection that records answers; used from one thread at a time.
struct Answers {
    db: Connection,
    quarantine_after: u32,
    /// The leases of the computations written for, checked in every transaction.
    lease: Option<super::leases::LeaseCheck>,
    /// Computations on their first sync: their rows are written with their first answer.
    first_sync: HashSet<String>,
    /// Shared: the computation's number and the time; per row: user, value sent, when it was
    /// decided (as stored).
    insert_synced: Batched<2, 3>,
    /// Shared: the computation's number and the time; per row: user, value acknowledged.
    acknowledge: Batched<2, 2>,
    /// Computations whose answers are recorded in `member_rows` itself, not apart in
    /// `acknowledged`: those of an initial pass or a resync, which answers most of their rows,
    /// or of a pass right after one that did not finish (its rows are left to this one).
    /// Apart, a delta's few answers wait for the next diff, which writes the pages they touch
    /// anyway; so many would be written twice, and held twice meanwhile.
    in_place: HashSet<String>,
    /// The number of each computation written for.
    ids: HashMap<String, i64>,
    /// The running `sync_runs` row of each computation, whose counts each record adds to.
    runs: BTreeMap<String, i64>,
    /// Writes `delivery_history`, when it is kept.
    history: Option<HistoryRecorder>,
    checkpointer: Checkpointer,
    /// Transactions and answers recorded since the last checkpoint asked for.
    commits: u32,
    answers: usize,
}

/// Whether the pass of the `sync_runs` row `?1` answers most rows of its computation: an initial
/// pass or a resync, or the pass right after one that did not finish.
const ANSWERS_MOST_ROWS: &str = "SELECT r.mode != 'delta' OR coalesce((SELECT p.mode != 'delta' AND p.status != 'ok' \
     FROM sync_runs p WHERE p.computation_key = r.computation_key AND p.id < r.id ORDER BY p.id DESC LIMIT 1), 0) \
     FROM sync_runs r WHERE r.id = ?1";

/// Transactions, or answers, between two checkpoints asked of the checkpointer, whichever
/// comes first. Each ends with the writer catching up (two fsyncs and the frames written
/// meanwhile, see `Checkpointer`): often enough to keep the log to a few MB, seldom enough that
/// catching up stays a small share of the writer's time (docs/performance.md).
const COMMITS_PER_CHECKPOINT: u32 = 1000;
const ANSWERS_PER_CHECKPOINT: usize = 65_536;

impl Store {
    /// Opens a writer of answers; a row failing on its `quarantine_after`-th pass is quarantined.
    /// The computations `first_sync` have no rows yet (see `diff::spool`): an answer about one
    /// of theirs writes the row.
    /// Every transaction checks that the leases of `keys` are still this pass's.
    pub fn answer_writer(
        &self,
        keys: &[String],
        quarantine_after: u32,
        first_sync: &[String],
    ) -> anyhow::Result<AnswerWriter> {
        let db = self.bulk_writer()?;
        let first_sync = first_sync.iter().cloned().collect();
        let ids = computation_ids(&db)?;
        Ok(AnswerWriter::new(Box::new(Answers {
            ids,
            db,
            lease: self.lease_check(keys)?,
            quarantine_after,
            first_sync,
            insert_synced: Batched::new(INSERT_SYNCED_COLUMNS, insert_synced_sql),
            acknowledge: Batched::new(ACKNOWLEDGE_COLUMNS, acknowledge_sql),
            in_place: HashSet::default(),
            runs: BTreeMap::new(),
            history: self.history_recorder(),
            checkpointer: self.checkpointer(),
            commits: 0,
            answers: 0,
        })))
    }
}

impl AnswerRecords for Answers {
    fn count_on(&mut self, runs: BTreeMap<String, i64>) -> anyhow::Result<()> {
        let mut many = self.db.prepare(ANSWERS_MOST_ROWS)?;
        for (key, run) in &runs {
            if many.query_row([run], |r| r.get(0)).optional()? == Some(true) {
                self.in_place.insert(key.clone());
            }
        }
        drop(many);
        self.runs = runs;
        Ok(())
    }

    /// Notes, before they are sent, that users in (`after`, `last`] of the computations `keys`
    /// may reach the destination: one row per computation in `sending_windows`, committed
    /// before the requests go, so that a kill during them cannot make the diff forget a user
    /// the destination may hold. (A computation on its first sync has no rows to find there:
    /// its users are in its `first_sync_queue`.) Returns the rows, for `record` to drop once
    /// answered.
    fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
        // The note must survive a power loss (without it, a user the destination holds could
        // be forgotten): this transaction alone is synced to disk; answers may stay NORMAL, as
        // losing one means only a re-send.
        self.db.pragma_update(None, "synchronous", "FULL")?;
        let ids = self.insert_window(keys, after, last);
        self.db.pragma_update(None, "synchronous", "NORMAL")?;
        ids
    }

    /// Records the answers of `calls` in one IMMEDIATE transaction, and drops the
    /// `sending_windows` rows `answered` whose every call is now answered. An acknowledged row
    /// is recorded with exactly the value sent, in `acknowledged` for a delta, in its row for an
    /// initial pass or a resync (`in_place`); if `desired` changed meanwhile, the row stays
    /// pending. A failed one keeps its pending value, counts the attempt and is marked
    /// `first_sent_at` (a request that timed out may still have landed). Returns the
    /// computation key of each row quarantined now.
    fn record(&mut self, calls: &[Vec<Outcome>], answered: &[i64]) -> anyhow::Result<Vec<String>> {
        let at = now();
        let at_ms = millis(&at)?;
        let tx = rusqlite::Transaction::new(&mut self.db, rusqlite::TransactionBehavior::Immediate)?;
        // First: once another process holds the lease, its rows may clash with these writes,
        // and the error must be the lost lease.
        let due = self.lease.as_ref().is_some_and(super::leases::LeaseCheck::due);
        super::leases::hold(&tx, self.lease.as_ref(), due)?;
        let mut quarantined = Vec::new();
        let mut acked: BTreeMap<&str, Vec<[Bound<'_>; 2]>> = BTreeMap::new();
        for call in calls {
            let (new, known): (Vec<&Outcome>, Vec<&Outcome>) =
                call.iter().partition(|o| self.first_sync.contains(o.key()));
            let first = FirstAnswers { insert_synced: &self.insert_synced, ids: &self.ids, at_ms };
            quarantined.extend(first.insert(&tx, &new, self.quarantine_after)?);
            let (in_place, apart): (Vec<&Outcome>, Vec<&Outcome>) =
                known.into_iter().partition(|o| self.in_place.contains(o.key()));
            quarantined.extend(record_in_place(&tx, &in_place, at_ms, self.quarantine_after)?);
            for o in apart {
                match &o.error {
                    None => acked.entry(o.key()).or_default().push([Bound::Text(o.user_id()), Bound::value(o.sent())]),
                    Some(error) => {
                        if record_failure(&tx, o, error, at_ms, self.quarantine_after)? {
                            quarantined.push(o.key().to_string());
                        }
                    }
                }
            }
        }
        for (key, rows) in &acked {
            let id = self.ids.get(*key).ok_or_else(|| anyhow::anyhow!("computation {key} is not in the state"))?;
            self.acknowledge.execute(&tx, [Bound::Int(*id), Bound::Int(at_ms)], rows)?;
        }
        count_answers(&tx, &self.runs, calls)?;
        if let Some(history) = &self.history {
            history.record(&tx, &self.runs, calls, &at)?;
        }
        {
            let mut drop_window = tx.prepare_cached("DELETE FROM sending_windows WHERE id = ?1")?;
            for id in answered {
                drop_window.execute([id])?;
            }
        }
        tx.commit()?;
        self.commits += 1;
        self.answers += calls.iter().map(Vec::len).sum::<usize>();
        if self.commits >= COMMITS_PER_CHECKPOINT || self.answers >= ANSWERS_PER_CHECKPOINT {
            self.checkpointer.nudge();
            (self.commits, self.answers) = (0, 0);
        }
        Ok(quarantined)
    }

    /// Empties the first syncs' queue runs that end in (`after`, `through`]: their overflow
    /// pages go to the free list, where the rows the sync writes next find them (the state
    /// file would otherwise hold every member twice until the end, then take seconds to give
    /// the queue's pages back). The run rows stay, with their counts, for `computation_status`.
    fn answered_through(&mut self, after: &str, through: &str) -> anyhow::Result<()> {
        if self.first_sync.is_empty() {
            return Ok(());
        }
        let tx = rusqlite::Transaction::new(&mut self.db, rusqlite::TransactionBehavior::Immediate)?;
        super::leases::hold(&tx, self.lease.as_ref(), false)?;
        {
            let mut empty = tx.prepare_cached(
                "UPDATE OR FAIL first_sync_queue SET users = '[]' \
                 WHERE computation_key = ?1 AND last_user > ?2 AND last_user <= ?3",
            )?;
            for key in &self.first_sync {
                empty.execute(params![key, after, through])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps the log short once a checkpoint is done (see `Checkpointer::catch_up`). Call it
    /// between transactions, once the callers waiting for the last one were answered: the
    /// answers are recorded, and a log that stays long is no reason to stop delivering.
    fn catch_up(&self) {
        if let Err(e) = self.checkpointer.catch_up(&self.db) {
            tracing::warn!(error = %e, "checkpoint failed; the next one will retry");
        }
    }
}

impl Answers {
    fn insert_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
        let at = now();
        let tx = rusqlite::Transaction::new(&mut self.db, rusqlite::TransactionBehavior::Immediate)?;
        super::leases::hold(&tx, self.lease.as_ref(), false)?;
        let mut ids = Vec::with_capacity(keys.len());
        {
            let mut note = tx.prepare_cached(
                "INSERT INTO sending_windows (computation_key, after_user, last_user, noted_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for key in keys {
                note.execute(params![key, after, last, at])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(ids)
    }
}

/// Adds the answers of `calls` to the delivered and failed counts of their computations' running
/// `sync_runs` rows.
fn count_answers(tx: &Connection, runs: &BTreeMap<String, i64>, calls: &[Vec<Outcome>]) -> rusqlite::Result<()> {
    let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for o in calls.iter().flatten() {
        let (delivered, failed) = counts.entry(o.key()).or_default();
        *(if o.error.is_none() { delivered } else { failed }) += 1;
    }
    let mut add = tx.prepare_cached(
        "UPDATE sync_runs SET delivered = delivered + ?2, failed = failed + ?3 WHERE id = ?1 AND status = 'running'",
    )?;
    for (key, (delivered, failed)) in counts {
        if let Some(id) = runs.get(key) {
            add.execute(params![id, delivered, failed])?;
        }
    }
    Ok(())
}

/// The number of each computation.
fn computation_ids(db: &Connection) -> anyhow::Result<HashMap<String, i64>> {
    let mut ids = db.prepare("SELECT key, id FROM computations")?;
    let rows = ids.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Acknowledged rows of a first sync, `values`: `synced` is the value sent, as is `desired`.
fn insert_synced_sql(values: &str) -> String {
    // OR FAIL: a statement of many rows that may abort keeps a journal of its own, to undo
    // its earlier rows (copies of every page it changes, spilled to temp files); a failure
    // here rolls the whole transaction back anyway.
    format!(
        "INSERT OR FAIL INTO member_rows (computation_id, user_id, desired, synced, updated_at, synced_at) VALUES {values}"
    )
}

/// Its values: the computation and the time shared; the user, the value sent (twice), and when
/// it was decided.
const INSERT_SYNCED_COLUMNS: &[Param] =
    &[Param::Shared(1), Param::Own(1), Param::Own(2), Param::Own(2), Param::Own(3), Param::Shared(2)];

/// Acknowledged rows, `values`: recorded apart from `member_rows`, which the computation's next
/// diff writes anyway (migration 0017).
fn acknowledge_sql(values: &str) -> String {
    format!(
        "INSERT INTO acknowledged (computation_id, user_id, synced, synced_at) VALUES {values} \
         ON CONFLICT (computation_id, user_id) DO UPDATE SET synced = excluded.synced, synced_at = excluded.synced_at"
    )
}

/// Its values: the computation and the time shared; the user and the value acknowledged.
const ACKNOWLEDGE_COLUMNS: &[Param] = &[Param::Shared(1), Param::Own(1), Param::Own(2), Param::Shared(2)];

static ACKED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE member_rows SET synced = {}, synced_at = ?4, attempts = 0, last_error = NULL, quarantined_at = NULL, \
         first_sent_at = NULL WHERE computation_id = {} AND user_id = ?2",
        stored_value("?3"),
        computation_id("?1")
    )
});

static FAILED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE member_rows SET attempts = attempts + 1, last_error = ?4, first_sent_at = coalesce(first_sent_at, ?6), \
         quarantined_at = CASE WHEN attempts + 1 >= ?5 THEN ?6 END \
         WHERE computation_id = {} AND user_id = ?2 AND desired = {} RETURNING quarantined_at IS NOT NULL",
        computation_id("?1"),
        stored_value("?3")
    )
});

static FIRST_FAILED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO member_rows (computation_id, user_id, desired, updated_at, attempts, last_error, first_sent_at, quarantined_at) \
         VALUES ({}, ?2, {}, ?4, 1, ?5, ?6, CASE WHEN ?7 <= 1 THEN ?6 END)",
        computation_id("?1"),
        stored_value("?3")
    )
});

/// Through the pending index: by the primary key, a range between a call's first and last user
/// walks every row of the computation between them, synced or not (at 2 % churn, fifty times
/// the rows acknowledged, and most of a delta's delivery).
static ACK_RANGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE member_rows INDEXED BY member_rows_pending \
         SET synced = desired, synced_at = ?4, attempts = 0, last_error = NULL, first_sent_at = NULL \
         WHERE computation_id = {} AND user_id >= ?2 AND user_id <= ?3 \
         AND desired IS NOT synced AND quarantined_at IS NULL AND updated_at <= ?5",
        computation_id("?1")
    )
});

/// Calls with fewer rows are recorded row by row.
const RANGE_ACK_MIN_ROWS: usize = 8;

/// Records the answers of one call in `member_rows` itself: an acknowledged row is marked synced
/// there. Returns the key of each row quarantined.
fn record_in_place(
    tx: &Connection,
    call: &[&Outcome],
    at_ms: i64,
    quarantine_after: u32,
) -> anyhow::Result<Vec<String>> {
    let all_acked = call.iter().all(|o| o.error.is_none());
    if all_acked && call.len() >= RANGE_ACK_MIN_ROWS && ack_range(tx, call, at_ms)? {
        return Ok(Vec::new());
    }
    let mut quarantined = Vec::new();
    for o in call {
        let Some(error) = &o.error else {
            tx.prepare_cached(&ACKED)?.execute(params![o.key(), o.user_id(), o.sent(), at_ms])?;
            continue;
        };
        if record_failure(tx, o, error, at_ms, quarantine_after)? {
            quarantined.push(o.key().to_string());
        }
    }
    Ok(quarantined)
}

/// Records one failed answer; true when it quarantined the row.
fn record_failure(
    tx: &Connection,
    o: &Outcome,
    error: &str,
    at_ms: i64,
    quarantine_after: u32,
) -> rusqlite::Result<bool> {
    let mut failed = tx.prepare_cached(&FAILED)?;
    let mut rows = failed.query(params![o.key(), o.user_id(), o.sent(), error, quarantine_after, at_ms])?;
    match rows.next()? {
        Some(row) => row.get(0),
        None => Ok(false),
    }
}

/// What writing a first sync's answers needs: they are not in the state yet.
struct FirstAnswers<'a> {
    insert_synced: &'a Batched<2, 3>,
    ids: &'a HashMap<String, i64>,
    at_ms: i64,
}

impl FirstAnswers<'_> {
    /// Writes the rows of `answers`: acknowledged, a row is synced with the value sent; failed,
    /// it is pending with its first attempt counted and `first_sent_at` (the request may have
    /// landed). Returns the key of each row quarantined.
    fn insert(&self, tx: &Connection, answers: &[&Outcome], quarantine_after: u32) -> anyhow::Result<Vec<String>> {
        // When each was decided, as stored: a call's rows nearly all share one time.
        let mut times: HashMap<&str, i64> = HashMap::default();
        for o in answers {
            if !times.contains_key(o.changed_at()) {
                times.insert(o.changed_at(), millis(o.changed_at())?);
            }
        }
        // Per computation, in the order they came (user order within a call).
        let mut acked: BTreeMap<&str, Vec<[Bound<'_>; 3]>> = BTreeMap::new();
        for o in answers.iter().filter(|o| o.error.is_none()) {
            let row = [Bound::Text(o.user_id()), Bound::value(o.sent()), Bound::Int(times[o.changed_at()])];
            acked.entry(o.key()).or_default().push(row);
        }
        for (key, rows) in &acked {
            let id = self.ids.get(*key).ok_or_else(|| anyhow::anyhow!("computation {key} is not in the state"))?;
            self.insert_synced.execute(tx, [Bound::Int(*id), Bound::Int(self.at_ms)], rows)?;
        }
        let mut quarantined = Vec::new();
        for o in answers {
            let Some(error) = &o.error else { continue };
            let mut failed = tx.prepare_cached(&FIRST_FAILED)?;
            let changed_at = times[o.changed_at()];
            failed.execute(params![o.key(), o.user_id(), o.sent(), changed_at, error, self.at_ms, quarantine_after])?;
            if quarantine_after <= 1 {
                quarantined.push(o.key().to_string());
            }
        }
        Ok(quarantined)
    }
}

/// Marks a call's acknowledged rows synced in `member_rows`, one update of each computation's
/// range; false, with nothing written, when a range holds other pending rows too.
fn ack_range(tx: &Connection, call: &[&Outcome], at_ms: i64) -> anyhow::Result<bool> {
    // Per computation: first and last user, latest change sent, rows. The update walks the
    // primary key over the range: through the pending index instead, a delta acknowledges a
    // little sooner but an initial pass takes longer (docs/performance.md).
    let mut ranges: BTreeMap<&str, (&str, &str, &str, usize)> = BTreeMap::new();
    for o in call {
        let r = ranges.entry(o.key()).or_insert((o.user_id(), o.user_id(), o.changed_at(), 0));
        r.0 = r.0.min(o.user_id());
        r.1 = r.1.max(o.user_id());
        r.2 = r.2.max(o.changed_at());
        r.3 += 1;
    }
    tx.execute_batch("SAVEPOINT range_ack")?;
    let mut ack = tx.prepare_cached(&ACK_RANGE)?;
    for (key, (first, last, changed_at, rows)) in &ranges {
        if ack.execute(params![key, first, last, at_ms, millis(changed_at)?])? != *rows {
            tx.execute_batch("ROLLBACK TO range_ack; RELEASE range_ack")?;
            return Ok(false);
        }
    }
    tx.execute_batch("RELEASE range_ack")?;
    Ok(true)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::change::{PendingRow, PendingValue};
    use crate::config::Kind;
    use crate::state::testing::{second, store_with_audience};
    use crate::state::{Mode, Trigger};

    /// A state file with `users` pending `true` in computation `a`, read for sending at second 1.
    async fn state_with_pending(dir: &std::path::Path, users: &[String]) -> Store {
        let (store, db) = store_with_audience(dir).await;
        for u in users {
            db.execute(
                "INSERT INTO member_rows (computation_id, user_id, desired, updated_at) \
                 VALUES ((SELECT id FROM computations WHERE key = 'a'), ?1, 1, ?2)",
                params![u, millis(&second(1)).unwrap()],
            )
            .unwrap();
        }
        store
    }

    pub(in crate::state::sqlite) fn answer(
        key: &str,
        user: &str,
        sent: &str,
        changed_at: &str,
        error: Option<&str>,
    ) -> Outcome {
        let value =
            PendingValue { key: key.into(), value: sent.into(), kind: Kind::Audience, changed_at: changed_at.into() };
        PendingRow { user_id: user.into(), value }.answered(error.map(str::to_string))
    }

    fn acked(user: &str) -> Outcome {
        answer("a", user, "true", &second(1), None)
    }

    fn rows(store: &Store) -> Vec<(String, String, Option<String>)> {
        let db = Connection::open(&store.path).unwrap();
        let mut q = db.prepare("SELECT user_id, desired, synced FROM memberships ORDER BY user_id").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    fn users(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i:02}")).collect()
    }

    #[tokio::test]
    async fn a_whole_call_acknowledges_exactly_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let all = users(12);
        let store = state_with_pending(dir.path(), &all).await;
        let call: Vec<Outcome> = all[..10].iter().map(|u| acked(u)).collect();
        store.answer_writer(&[], 3, &[]).unwrap().record(&[call], &[]).unwrap();
        let synced: Vec<String> =
            rows(&store).into_iter().filter(|r| r.2.as_deref() == Some("true")).map(|r| r.0).collect();
        assert_eq!(synced, all[..10], "the two users after the call stay pending");
    }

    #[tokio::test]
    async fn a_row_changed_after_it_was_read_keeps_its_new_value_pending() {
        let dir = tempfile::tempdir().unwrap();
        let all = users(10);
        let store = state_with_pending(dir.path(), &all).await;
        // u04 left while its `true` was on the way: the range must not mark `false` as synced.
        Connection::open(&store.path)
            .unwrap()
            .execute(
                "UPDATE member_rows SET desired = 0, updated_at = ?1 WHERE user_id = 'u04'",
                [millis(&second(2)).unwrap()],
            )
            .unwrap();
        let call: Vec<Outcome> = all.iter().map(|u| acked(u)).collect();
        store.answer_writer(&[], 3, &[]).unwrap().record(&[call], &[]).unwrap();
        for (user, desired, synced) in rows(&store) {
            if user == "u04" {
                assert_eq!((desired.as_str(), synced.as_deref()), ("false", Some("true")), "u04 is still pending");
            } else {
                assert_eq!(synced.as_deref(), Some("true"), "{user}");
            }
        }
    }

    #[tokio::test]
    async fn a_first_syncs_answers_write_its_rows_synced_or_pending_with_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        // Two whole statements of rows and a remainder, acknowledged; one row refused.
        let all = users(2 * super::super::ROWS_PER_STATEMENT + 3);
        let mut call: Vec<Outcome> = all.iter().map(|u| acked(u)).collect();
        call[5].error = Some("HTTP 400".into());
        let quarantined = store.answer_writer(&[], 1, &["a".into()]).unwrap().record(&[call], &[]).unwrap();
        assert_eq!(quarantined, ["a"], "failing on the first of quarantine_after = 1 passes");

        let written = rows(&store);
        assert_eq!(written.len(), all.len(), "every answer wrote its row");
        for (user, desired, synced) in &written {
            let expected = if user == &all[5] { None } else { Some("true") };
            assert_eq!((desired.as_str(), synced.as_deref()), ("true", expected), "{user}");
        }
        let failed: (i64, String, bool, bool, String) = db
            .query_row(
                "SELECT attempts, last_error, first_sent_at IS NOT NULL, quarantined_at IS NOT NULL, updated_at \
                 FROM memberships WHERE user_id = ?1",
                [&all[5]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(failed, (1, "HTTP 400".to_string(), true, true, second(1)));
    }

    #[tokio::test]
    async fn a_call_of_two_first_syncs_writes_each_row_under_its_own_computation() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        db.execute("INSERT INTO computations (key, name, kind, created_at) VALUES ('b', 'B', 'audience', 't0')", [])
            .unwrap();
        // Each user in both computations, with a value of its own: more than a whole statement
        // of rows per computation, interleaved as a call holds them (user by user).
        let all = users(super::super::ROWS_PER_STATEMENT + 5);
        let call: Vec<Outcome> = all
            .iter()
            .flat_map(|u| {
                [("a", 1), ("b", 2)].map(|(key, s)| answer(key, u, &format!("\"{key}-{u}\""), &second(s), None))
            })
            .collect();
        store.answer_writer(&[], 3, &["a".into(), "b".into()]).unwrap().record(&[call], &[]).unwrap();

        let mut q = db
            .prepare("SELECT computation_key, user_id, desired, synced, updated_at FROM memberships ORDER BY 1, 2")
            .unwrap();
        let written: Vec<(String, String, String, String, String)> = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(written.len(), 2 * all.len());
        for (key, user, desired, synced, updated_at) in written {
            assert_eq!(desired, format!("\"{key}-{user}\""));
            assert_eq!(synced, desired, "{key} {user}");
            assert_eq!(updated_at, second(if key == "a" { 1 } else { 2 }));
        }
    }

    #[tokio::test]
    async fn answers_are_counted_on_running_runs_only() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let interrupted = store.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap();
        let running = store.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap(); // closes the first as interrupted
        let outcome = |user: &str, error: Option<&str>| answer("a", user, "true", &second(1), error);
        for (runs, user) in [(interrupted, "x"), (running, "y")] {
            let (u1, u2, u3) = (format!("{user}1"), format!("{user}2"), format!("{user}3"));
            let calls = [vec![outcome(&u1, None), outcome(&u2, Some("500"))], vec![outcome(&u3, None)]];
            let writer = store.answer_writer(&[], 3, &["a".into()]).unwrap();
            writer.counting_on(BTreeMap::from([("a".to_string(), runs)])).unwrap().record(&calls, &[]).unwrap();
        }
        let counts = |id: i64| -> (i64, i64) {
            db.query_row("SELECT delivered, failed FROM sync_runs WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
        };
        assert_eq!(counts(interrupted), (0, 0), "an interrupted run keeps its counts");
        assert_eq!(counts(running), (2, 1));
    }
}
