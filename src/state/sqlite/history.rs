//! `delivery_history` (migration 0012), kept only with `[state] keep_history_days`: one row per
//! delivery answered, written by the transaction that records the answer, deleted once older
//! than the days kept. Without the key nothing here reads or writes.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::stored::Bound;
use super::{Batched, Param, Store};
use crate::change::Outcome;
use crate::http::answer::refusal_status;

impl Store {
    /// The same state, recording every delivery answered and keeping it `days` (none: off).
    pub fn keeping_history(self, days: Option<u32>) -> Store {
        Store { keep_history_days: days, ..self }
    }

    /// Deletes the history older than the days kept. It looks first, without the write lock
    /// (another pass's diff may hold it for minutes): there is seldom anything to delete.
    pub async fn prune_history(&self) -> anyhow::Result<()> {
        let Some((days, cutoff)) = crate::state::history_cutoff(self.keep_history_days) else { return Ok(()) };
        let old: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM delivery_history WHERE answered_at < ?1)")
            .bind(&cutoff)
            .fetch_one(&self.pool)
            .await?;
        if old {
            let gone = sqlx::query("DELETE FROM delivery_history WHERE answered_at < ?1")
                .bind(&cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
            tracing::debug!(rows = gone, days, "delivery history pruned");
        }
        Ok(())
    }

    /// The recorder of the answer writers, when history is kept.
    pub(super) fn history_recorder(&self) -> Option<HistoryRecorder> {
        self.keep_history_days.map(|_| HistoryRecorder {
            insert_acknowledged: Batched::new(ACKNOWLEDGED_COLUMNS, insert_acknowledged_sql),
        })
    }
}

/// Writes the history rows of answers, in the transaction that records them.
pub(super) struct HistoryRecorder {
    /// Shared: computation, pass, time; per row: user, value sent.
    insert_acknowledged: Batched<3, 2>,
}

impl HistoryRecorder {
    /// One row per answer of `calls`, recorded at `at` by the passes `runs` (per computation).
    /// Acknowledgements, nearly all of them, go in multi-row inserts; failures one by one, with
    /// their error and, for a refusal, its HTTP status.
    pub fn record(
        &self,
        tx: &Connection,
        runs: &BTreeMap<String, i64>,
        calls: &[Vec<Outcome>],
        at: &str,
    ) -> rusqlite::Result<()> {
        let mut acknowledged: BTreeMap<(&str, i64), Vec<[Bound<'_>; 2]>> = BTreeMap::new();
        for o in calls.iter().flatten() {
            let run = runs.get(o.key());
            match (&o.error, run) {
                (None, Some(run)) => acknowledged
                    .entry((o.key(), *run))
                    .or_default()
                    .push([Bound::Text(o.user_id()), Bound::Text(o.sent())]),
                (error, run) => {
                    let status = error.as_deref().and_then(refusal_status);
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO delivery_history (run_id, computation_key, user_id, value, answered_at, http_status, error) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    insert.execute(params![run, o.key(), o.user_id(), o.sent(), at, status, error])?;
                }
            }
        }
        for ((key, run), rows) in &acknowledged {
            self.insert_acknowledged.execute(tx, [Bound::Text(key), Bound::Int(*run), Bound::Text(at)], rows)?;
        }
        Ok(())
    }
}

/// Acknowledged answers, `values`: no status, no error.
fn insert_acknowledged_sql(values: &str) -> String {
    format!("INSERT INTO delivery_history (computation_key, run_id, answered_at, user_id, value) VALUES {values}")
}

const ACKNOWLEDGED_COLUMNS: &[Param] =
    &[Param::Shared(1), Param::Shared(2), Param::Shared(3), Param::Own(1), Param::Own(2)];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::answers::tests::answer;
    use crate::state::testing::store_with_audience;
    use crate::state::{Mode, Trigger};

    type Row = (Option<i64>, String, String, Option<i64>, Option<String>, bool);

    fn history(db: &Connection) -> Vec<Row> {
        let mut q = db
            .prepare("SELECT run_id, user_id, value, http_status, error, acknowledged FROM delivery_history ORDER BY user_id")
            .unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A first sync's call: two whole statements of acknowledgements and one more, a refusal and a
    /// failure without an answer.
    fn call() -> Vec<Outcome> {
        let mut call: Vec<Outcome> = (0..2 * ROWS + 3)
            .map(|i| answer("a", &format!("u{i:03}"), "true", &crate::state::testing::second(1), None))
            .collect();
        call[1].error = Some("HTTP 400: no such user (retries exhausted after 0 retries)".into());
        call[2].error = Some("request timed out (http://127.0.0.1/): operation timed out".into());
        call
    }
    const ROWS: usize = super::super::ROWS_PER_STATEMENT;

    #[tokio::test]
    async fn every_answer_is_recorded_with_its_pass_value_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let store = store.keeping_history(Some(7));
        let run = store.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap();
        let writer = store.answer_writer(&[], 3, &["a".into()]).unwrap();
        writer.counting_on(BTreeMap::from([("a".to_string(), run)])).unwrap().record(&[call()], &[]).unwrap();

        let rows = history(&db);
        assert_eq!(rows.len(), 2 * ROWS + 3, "one row per answer");
        for (i, row) in rows.iter().enumerate() {
            let (status, error, acknowledged) = match i {
                1 => (Some(400), Some("HTTP 400: no such user (retries exhausted after 0 retries)"), false),
                2 => (None, Some("request timed out (http://127.0.0.1/): operation timed out"), false),
                _ => (None, None, true),
            };
            let expected =
                (Some(run), format!("u{i:03}"), "true".into(), status, error.map(String::from), acknowledged);
            assert_eq!(row, &expected);
        }
    }

    #[tokio::test]
    async fn nothing_is_recorded_unless_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let run = store.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap();
        let writer = store.answer_writer(&[], 3, &["a".into()]).unwrap();
        writer.counting_on(BTreeMap::from([("a".to_string(), run)])).unwrap().record(&[call()], &[]).unwrap();
        assert_eq!(history(&db), [], "off by default");
    }
}
