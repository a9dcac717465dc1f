//! SQLite's side of the diff's writes (`state::DiffWriter` runs it on its writing thread):
//! its own connection (rusqlite, on the same bundled SQLite as sqlx) and one IMMEDIATE
//! transaction, begun at the first op.

use rusqlite::{Connection, params};

use std::sync::LazyLock;

use super::stored::{Bound, FOLD_ACKNOWLEDGED};
use super::{Batched, Param, ROWS_PER_STATEMENT, Store, now, stored};
use crate::source::fingerprint::Fingerprint;
use crate::state::diff_writer::{DiffRows, DiffWrite, DiffWriter};

/// The writing thread's side: the connection and its transaction.
struct Writer {
    db: Connection,
    /// The state, whose checkpointer copies the diff's pages back once it commits.
    store: Store,
    lease: Option<super::leases::LeaseCheck>,
    key: String,
    /// The computation's number, and the time of the diff, as stored.
    id: i64,
    now: i64,
    begun: bool,
    /// Sets not yet written: (user, desired).
    sets: Vec<(String, String)>,
    /// The last user whose acknowledgements are folded in (`fold`); '' before the first.
    folded_through: String,
    /// Shared: the computation and the time; per row: user, desired.
    upsert: Batched<2, 2>,
}

impl Store {
    /// Opens the writer of `key`'s diff. Blocking: call it from a blocking thread.
    pub fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        let db = self.bulk_writer()?;
        // Before the merge's read of the state begins, which would hold the log's frames.
        self.start_log_over(&db)?;
        let id: i64 = db.query_row("SELECT id FROM computations WHERE key = ?1", [key], |r| r.get(0))?;
        let writer = Writer {
            db,
            store: self.clone(),
            lease: self.lease_check(&[key.to_string()])?,
            key: key.to_string(),
            id,
            now: stored::millis(&now())?,
            begun: false,
            sets: Vec::with_capacity(ROWS_PER_STATEMENT),
            folded_through: String::new(),
            upsert: Batched::new(&[Param::Shared(1), Param::Own(1), Param::Own(2), Param::Shared(2)], upsert_sql),
        };
        DiffWriter::start(Box::new(writer))
    }
}

impl DiffRows for Writer {
    fn write(&mut self, batch: Vec<DiffWrite>) -> anyhow::Result<()> {
        self.begin()?;
        for write in batch {
            match write {
                DiffWrite::Set { user_id, desired } => {
                    self.sets.push((user_id, desired));
                    if self.sets.len() == ROWS_PER_STATEMENT {
                        self.flush()?;
                    }
                }
                DiffWrite::Forget { user_id } => {
                    let mut forget =
                        self.db.prepare_cached("DELETE FROM member_rows WHERE computation_id = ?1 AND user_id = ?2")?;
                    forget.execute(params![self.id, user_id])?;
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        self.flush()?;
        self.begin()?;
        self.fold(None)?;
        self.db.execute("DELETE FROM acknowledged WHERE computation_id = ?1", [self.id])?;
        match snapshot {
            Some((fp, rows)) => self.db.execute(
                "UPDATE computations SET snapshot_size = ?2, snapshot_modified_at = ?3, snapshot_sha256 = ?4, snapshot_rows = ?5 \
                 WHERE key = ?1",
                params![self.key, fp.size as i64, fp.modified_at, fp.sha256, rows as i64],
            )?,
            None => self.db.execute("UPDATE computations SET snapshot_sha256 = NULL WHERE key = ?1", params![self.key])?,
        };
        // The state now holds the snapshot: what an earlier first sync still owed is pending
        // rows, or no longer owed.
        self.db.execute("DELETE FROM first_sync_queue WHERE computation_key = ?1", params![self.key])?;
        // A diff may hold the write lock longer than a lease lasts: the lease is checked, and
        // renewed, in the transaction that commits it.
        super::leases::hold(&self.db, self.lease.as_ref(), true)?;
        self.db.execute_batch("COMMIT")?;
        // Copied back beside the next diff, rather than in this one's time; but copied back
        // before the diffs of a pass over many computations pile up in the log, where every
        // page read after them searches it (docs/performance.md).
        self.store.checkpoint_beside();
        Ok(())
    }
}

impl Writer {
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.begun {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            self.begun = true;
        }
        Ok(())
    }

    /// Writes the buffered sets, after the acknowledgements of the users up to the last of them.
    fn flush(&mut self) -> rusqlite::Result<()> {
        let Some(last) = self.sets.last().map(|(user, _)| user.clone()) else { return Ok(()) };
        self.fold(Some(&last))?;
        let rows: Vec<[Bound<'_>; 2]> =
            self.sets.iter().map(|(user, desired)| [Bound::Text(user), Bound::value(desired)]).collect();
        self.upsert.execute(&self.db, [Bound::Int(self.id), Bound::Int(self.now)], &rows)?;
        self.sets.clear();
        Ok(())
    }

    /// Folds the acknowledgements recorded since the last diff (`acknowledged`) of the users after
    /// `folded_through` and up to `through` (all: `None`) into their rows. The diff writes the
    /// rows of a range right after its acknowledgements, so that a page both touch is written
    /// to the log once.
    fn fold(&mut self, through: Option<&str>) -> rusqlite::Result<()> {
        let sql = match through {
            Some(_) => &FOLD_THROUGH,
            None => &FOLD_REST,
        };
        self.db.prepare_cached(sql)?.execute(params![self.id, self.folded_through, through])?;
        if let Some(through) = through {
            self.folded_through = through.to_string();
        }
        Ok(())
    }
}

static FOLD_THROUGH: LazyLock<String> = LazyLock::new(|| fold_of_users("AND user_id <= ?3"));
static FOLD_REST: LazyLock<String> = LazyLock::new(|| fold_of_users("AND ?3 IS NULL"));

/// The fold of the computation `?1`'s acknowledgements of users after `?2` and within `bound`.
fn fold_of_users(bound: &str) -> String {
    format!(
        "{FOLD_ACKNOWLEDGED} computation_id = ?1 AND user_id IN \
         (SELECT user_id FROM acknowledged WHERE computation_id = ?1 AND user_id > ?2 {bound})"
    )
}

/// An upsert of the rows `values`. A new desired value is a new delivery: its attempts and error
/// start afresh. A row whose last value may have landed unacknowledged (`first_sent_at`) no
/// longer knows what the destination holds: `synced` goes, so the row is pending even when the
/// new value is the one last acknowledged (a user back after an exit that may have landed).
fn upsert_sql(values: &str) -> String {
    format!(
        "INSERT INTO member_rows (computation_id, user_id, desired, updated_at) VALUES {values} \
         ON CONFLICT (computation_id, user_id) DO UPDATE SET desired = excluded.desired, \
         updated_at = excluded.updated_at, attempts = 0, last_error = NULL, quarantined_at = NULL, \
         synced = CASE WHEN member_rows.first_sent_at IS NULL THEN member_rows.synced END"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{Change, Op, OpSink};
    use crate::state::testing::store_with_audience;

    #[tokio::test]
    async fn sets_in_whole_batches_and_the_rest_all_land_and_forgets_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let set = |i: usize, desired: &str| Op::Set {
            user_id: format!("u{i:04}"),
            desired: desired.into(),
            change: Change::Entered,
        };
        // Two whole batches and a remainder; then, in a second diff, changes and forgets.
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..(2 * ROWS_PER_STATEMENT + 5) {
            writer.apply(set(i, "true")).unwrap();
        }
        writer.commit(None).unwrap();
        let mut writer = store.diff_writer("a").unwrap();
        writer.apply(Op::Forget { user_id: "u0000".into() }).unwrap();
        for i in 1..(ROWS_PER_STATEMENT + 2) {
            writer.apply(set(i, "false")).unwrap();
        }
        writer.apply(Op::Forget { user_id: format!("u{:04}", 2 * ROWS_PER_STATEMENT + 4) }).unwrap();
        writer.commit(None).unwrap();

        let count = |desired: &str| -> usize {
            let n: i64 =
                db.query_row("SELECT count(*) FROM memberships WHERE desired = ?1", [desired], |r| r.get(0)).unwrap();
            n as usize
        };
        assert_eq!(count("false"), ROWS_PER_STATEMENT + 1);
        assert_eq!(count("true"), 2 * ROWS_PER_STATEMENT + 5 - 2 - (ROWS_PER_STATEMENT + 1));
    }

    /// Acknowledgements recorded apart (`acknowledged`) are folded into their rows by the next
    /// diff, across its batches and past its last change, and the views read the same before
    /// and after: the fold changes where the facts are kept, not what they say.
    #[tokio::test]
    async fn the_next_diff_folds_the_acknowledgements_in_and_the_views_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let users = 3 * ROWS_PER_STATEMENT;
        let user = |i: usize| format!("u{i:04}");
        let set =
            |i: usize, desired: &str| Op::Set { user_id: user(i), desired: desired.into(), change: Change::Entered };
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..users {
            writer.apply(set(i, "true")).unwrap();
        }
        writer.commit(None).unwrap();
        // Every third user acknowledged, the last of them after every change of the next diff.
        for i in (0..users).step_by(3) {
            db.execute("INSERT INTO acknowledged VALUES (1, ?1, 1, 1767225600000)", [user(i)]).unwrap();
        }
        let views = |db: &rusqlite::Connection| -> Vec<String> {
            let mut rows = db
                .prepare(
                    "SELECT json_array(user_id, desired, synced, synced_at, attempts, first_sent_at) FROM memberships \
                     UNION ALL SELECT json_array(user_id, desired, synced) FROM pending \
                     UNION ALL SELECT json_array(members, pending, failed) FROM computation_status",
                )
                .unwrap();
            rows.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
        };
        let before = views(&db);
        assert!(before.contains(&r#"["u0000","true","true","2026-01-01T00:00:00.000Z",0,null]"#.to_string()));
        assert!(before.contains(&r#"["u0001","true",null,null,0,null]"#.to_string()));

        // The next diff changes users spread over the first two batches only.
        let mut writer = store.diff_writer("a").unwrap();
        for i in (1..2 * ROWS_PER_STATEMENT).step_by(7) {
            writer.apply(set(i, "false")).unwrap();
        }
        writer.commit(None).unwrap();

        let acknowledged: i64 = db.query_row("SELECT count(*) FROM acknowledged", [], |r| r.get(0)).unwrap();
        assert_eq!(acknowledged, 0);
        let folded: i64 = db
            .query_row("SELECT count(*) FROM member_rows WHERE synced = 1 AND synced_at = 1767225600000", [], |r| {
                r.get(0)
            })
            .unwrap();
        // Every acknowledgement, those of users the diff changed too (their rows now pending `false`).
        assert_eq!(folded, users.div_ceil(3) as i64);
        let changed =
            |row: &String| (1..2 * ROWS_PER_STATEMENT).step_by(7).any(|i| row.contains(&format!("\"{}\"", user(i))));
        let unchanged =
            |rows: Vec<String>| rows.into_iter().filter(|r| !changed(r) && r.contains("\"u")).collect::<Vec<_>>();
        assert_eq!(unchanged(views(&db)), unchanged(before));
    }

    #[tokio::test]
    async fn a_diff_dropped_before_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..(3 * ROWS_PER_STATEMENT) {
            let op = Op::Set { user_id: format!("u{i:04}"), desired: "true".into(), change: Change::Entered };
            writer.apply(op).unwrap();
        }
        drop(writer); // a guard held the snapshot back, or the load failed
        let rows: i64 = db.query_row("SELECT count(*) FROM memberships", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }
}
