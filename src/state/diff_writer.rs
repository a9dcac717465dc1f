//! The diff's writes: every op of one computation's diff in one IMMEDIATE transaction.
//!
//! An initial pass writes every member, ten million rows for a big audience, so the writer runs
//! on the diff's own blocking thread with its own connection and cached single-row statements
//! (rusqlite, on the same bundled SQLite as sqlx): no op crosses a channel or an async driver.
//! The transaction begins at the first op, after the snapshot has loaded and sorted, so a
//! long load does not hold the state's one write lock.

use rusqlite::{Connection, params};

use super::{Store, now};
use crate::diff::{Op, OpSink};
use crate::source::fingerprint::Fingerprint;

/// The diff's writes for one computation. They count only once `commit` is called; dropping
/// the writer (on any error, or when a guard holds the snapshot back) rolls them all back.
pub struct DiffWriter {
    db: Connection,
    key: String,
    now: String,
    begun: bool,
    /// Sets not yet written: (user, desired).
    sets: Vec<(String, String)>,
}

impl Store {
    /// Opens the writer of `key`'s diff. Blocking: call it from a blocking thread.
    pub fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        let db = self.bulk_writer()?;
        Ok(DiffWriter { db, key: key.to_string(), now: now(), begun: false, sets: Vec::with_capacity(SET_BATCH) })
    }
}

impl DiffWriter {
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.begun {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            self.begun = true;
        }
        Ok(())
    }

    /// Commits the diff, noting the fingerprint of the file snapshot it came from (and its
    /// rows) in the same transaction. Blocking.
    pub fn commit(mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        self.flush()?;
        if let Some((fp, rows)) = snapshot {
            self.begin()?;
            self.db.execute(
                "UPDATE computations SET snapshot_size = ?2, snapshot_modified_at = ?3, snapshot_sha256 = ?4, snapshot_rows = ?5 \
                 WHERE key = ?1",
                params![self.key, fp.size as i64, fp.modified_at, fp.sha256, rows as i64],
            )?;
        }
        if self.begun {
            self.db.execute_batch("COMMIT")?;
        }
        Ok(())
    }
}

impl DiffWriter {
    /// Writes the buffered sets: whole batches through one multi-row statement (a statement's
    /// set-up costs about as much as a row's insert), the rest one by one.
    fn flush(&mut self) -> rusqlite::Result<()> {
        let sets = std::mem::take(&mut self.sets);
        let mut batches = sets.chunks_exact(SET_BATCH);
        for batch in batches.by_ref() {
            let mut upsert = self.db.prepare_cached(&upsert_sql(SET_BATCH))?;
            let mut i = 1;
            for (user_id, desired) in batch {
                for value in [self.key.as_str(), user_id, desired, &self.now] {
                    upsert.raw_bind_parameter(i, value)?;
                    i += 1;
                }
            }
            upsert.raw_execute()?;
        }
        for (user_id, desired) in batches.remainder() {
            let mut upsert = self.db.prepare_cached(&upsert_sql(1))?;
            upsert.execute(params![self.key, user_id, desired, self.now])?;
        }
        self.sets = sets;
        self.sets.clear();
        Ok(())
    }
}

/// Sets written by one statement.
const SET_BATCH: usize = 64;

/// An upsert of `rows` rows. A new desired value is a new delivery: its attempts and error
/// start afresh.
fn upsert_sql(rows: usize) -> String {
    let values: Vec<String> =
        (0..rows).map(|r| format!("(?{}, ?{}, ?{}, ?{})", 4 * r + 1, 4 * r + 2, 4 * r + 3, 4 * r + 4)).collect();
    format!(
        "INSERT INTO memberships (computation_key, user_id, desired, updated_at) VALUES {} \
         ON CONFLICT (computation_key, user_id) DO UPDATE SET desired = excluded.desired, \
         updated_at = excluded.updated_at, attempts = 0, last_error = NULL, quarantined_at = NULL",
        values.join(", ")
    )
}

impl OpSink for DiffWriter {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        self.begin()?;
        match op {
            Op::Set { user_id, desired, .. } => {
                self.sets.push((user_id, desired));
                if self.sets.len() == SET_BATCH {
                    self.flush()?;
                }
            }
            Op::Forget { user_id } => {
                let mut forget =
                    self.db.prepare_cached("DELETE FROM memberships WHERE computation_key = ?1 AND user_id = ?2")?;
                forget.execute(params![self.key, user_id])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Change;
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
        for i in 0..(2 * SET_BATCH + 5) {
            writer.apply(set(i, "true")).unwrap();
        }
        writer.commit(None).unwrap();
        let mut writer = store.diff_writer("a").unwrap();
        writer.apply(Op::Forget { user_id: "u0000".into() }).unwrap();
        for i in 1..(SET_BATCH + 2) {
            writer.apply(set(i, "false")).unwrap();
        }
        writer.apply(Op::Forget { user_id: format!("u{:04}", 2 * SET_BATCH + 4) }).unwrap();
        writer.commit(None).unwrap();

        let count = |desired: &str| -> usize {
            let n: i64 =
                db.query_row("SELECT count(*) FROM memberships WHERE desired = ?1", [desired], |r| r.get(0)).unwrap();
            n as usize
        };
        assert_eq!(count("false"), SET_BATCH + 1);
        assert_eq!(count("true"), 2 * SET_BATCH + 5 - 2 - (SET_BATCH + 1));
    }

    #[tokio::test]
    async fn a_diff_dropped_before_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..(3 * SET_BATCH) {
            let op = Op::Set { user_id: format!("u{i:04}"), desired: "true".into(), change: Change::Entered };
            writer.apply(op).unwrap();
        }
        drop(writer); // a guard held the snapshot back, or the load failed
        let rows: i64 = db.query_row("SELECT count(*) FROM memberships", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }
}
