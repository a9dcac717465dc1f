//! Delivery's reads and writes in PostgreSQL: pending pages in user order, and answers
//! recorded in one transaction per batch, on connections of their own (see `blocking`).

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{AssertSqlSafe, PgConnection};

use super::Store;
use super::blocking::Blocking;
use super::leases::{Hold, LeaseCheck, hold};
use crate::change::{Outcome, PendingRow, PendingValue};
use crate::config::Kind;
use crate::http::answer::refusal_status;
use crate::state::times::{Times, millis};
use crate::state::{AnswerRecords, AnswerWriter, LeaseLost, PendingPages, PendingReader, now};

/// A page of pending rows after a user; `{shard}` narrows it to a delivery shard's users.
fn page_sql(shard: Option<(i32, i32)>) -> String {
    let in_shard = match shard {
        Some((shard, shards)) => format!("AND {}", super::shards::in_shard(&shard.to_string(), &shards.to_string())),
        None => String::new(),
    };
    format!(
        "SELECT m.user_id, c.key, m.desired, m.updated_at, c.kind \
         FROM member_rows m JOIN computations c ON c.id = m.computation_id \
         WHERE m.desired IS DISTINCT FROM m.synced AND m.quarantined_at IS NULL AND m.user_id > $1 \
         AND m.computation_id = ANY($2) {in_shard} ORDER BY m.user_id, m.computation_id LIMIT $3"
    )
}
const ONE_USER: &str = "SELECT m.user_id, c.key, m.desired, m.updated_at, c.kind \
     FROM member_rows m JOIN computations c ON c.id = m.computation_id \
     WHERE m.desired IS DISTINCT FROM m.synced AND m.quarantined_at IS NULL AND m.user_id = $1 \
     AND m.computation_id = ANY($2)";

struct Pages {
    db: Blocking,
    ids: Vec<i32>,
    times: Times,
    page: String,
}

impl Store {
    /// A reader of the pending rows of the computations `keys`. Blocking.
    pub fn pending_reader(&self, keys: &[String]) -> anyhow::Result<PendingReader> {
        let mut db = self.blocking()?;
        let ids = computation_ids(&mut db)?.into_iter().filter(|(k, _)| keys.contains(k)).map(|(_, id)| id).collect();
        let page = page_sql(self.shard_filter());
        Ok(PendingReader::new(Box::new(Pages { db, ids, times: Times::default(), page })))
    }

    /// Opens a writer of answers (see the SQLite backend's). Blocking, never on an async thread.
    pub fn answer_writer(
        &self,
        keys: &[String],
        quarantine_after: u32,
        first_sync: &[String],
    ) -> anyhow::Result<AnswerWriter> {
        let mut db = self.blocking()?;
        let ids = computation_ids(&mut db)?;
        let how = Recording {
            ids,
            lease: self.lease_check(keys),
            quarantine_after,
            first_sync: first_sync.iter().cloned().collect(),
            runs: BTreeMap::new(),
            history: self.keep_history_days.is_some(),
        };
        Ok(AnswerWriter::new(Box::new(Answers { db, how })))
    }
}

/// Every computation's number, by key.
fn computation_ids(db: &mut Blocking) -> anyhow::Result<HashMap<String, i32>> {
    db.run(async |conn| {
        let ids: Vec<(String, i32)> = sqlx::query_as("SELECT key, id FROM computations").fetch_all(&mut *conn).await?;
        Ok(ids.into_iter().collect())
    })
}

impl PendingPages for Pages {
    fn page(&mut self, after: &str, limit: usize) -> anyhow::Result<Vec<PendingRow>> {
        let rows = self.query(Sql::Page, after, Some(limit))?;
        crate::state::delivery::whole_users(rows, limit, |last| self.query(Sql::OneUser, last, None))
    }
}

impl Pages {
    fn query(&mut self, sql: Sql, user: &str, limit: Option<usize>) -> anyhow::Result<Vec<PendingRow>> {
        let (ids, page) = (&self.ids, &self.page);
        let sql = match sql {
            Sql::Page => AssertSqlSafe(page.as_str()),
            Sql::OneUser => AssertSqlSafe(ONE_USER),
        };
        let rows: Vec<(String, String, String, i64, String)> = self.db.run(async |conn| {
            let query = sqlx::query_as(sql).bind(user).bind(ids);
            let query = match limit {
                Some(limit) => query.bind(limit as i64),
                None => query,
            };
            Ok(query.fetch_all(&mut *conn).await?)
        })?;
        rows.into_iter()
            .map(|(user_id, key, value, updated_at, kind)| {
                let kind = match kind.as_str() {
                    "audience" => Kind::Audience,
                    "computed_trait" => Kind::ComputedTrait,
                    other => anyhow::bail!("unknown computation kind {other:?} in the state"),
                };
                let changed_at = self.times.text(updated_at);
                Ok(PendingRow { user_id, value: PendingValue { key, value, kind, changed_at } })
            })
            .collect()
    }
}

/// Which of a reader's two queries.
enum Sql {
    Page,
    OneUser,
}

struct Answers {
    db: Blocking,
    how: Recording,
}

/// What recording an answer needs besides the connection.
struct Recording {
    ids: HashMap<String, i32>,
    lease: Option<LeaseCheck>,
    quarantine_after: u32,
    /// Computations on their first sync: their rows are written with their first answer.
    first_sync: HashSet<String>,
    runs: BTreeMap<String, i64>,
    /// Whether `delivery_history` is kept.
    history: bool,
}

impl AnswerRecords for Answers {
    fn count_on(&mut self, runs: BTreeMap<String, i64>) -> anyhow::Result<()> {
        self.how.runs = runs;
        Ok(())
    }

    /// PostgreSQL commits durably by default: the note survives a power loss.
    fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
        let (lease, at) = (self.how.lease.as_ref(), now());
        self.db.run(async |conn| {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            hold(&mut tx, lease, Hold::Share).await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO sending_windows (computation_key, after_user, last_user, noted_at) \
                 SELECT k, $2, $3, $4 FROM UNNEST($1::text[]) WITH ORDINALITY AS t (k, n) ORDER BY n RETURNING id",
            )
            .bind(keys)
            .bind(after)
            .bind(last)
            .bind(&at)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ids)
        })
    }

    fn record(&mut self, calls: &[Vec<Outcome>], answered: &[i64]) -> anyhow::Result<Vec<String>> {
        let at = now();
        let at_ms = millis(&at)?;
        let Answers { db, how } = self;
        let recorded = db.run(async |conn| {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // First, the fence: a takeover waits for this transaction; once another worker
            // holds the lease, the error is the lost lease, before any write.
            hold(&mut tx, how.lease.as_ref(), Hold::Share).await?;
            let mut quarantined = Vec::new();
            for call in calls {
                quarantined.extend(how.record_call(&mut tx, call, at_ms).await?);
            }
            how.count(&mut tx, calls).await?;
            if how.history {
                how.keep_history(&mut tx, calls, &at).await?;
            }
            sqlx::query("DELETE FROM sending_windows WHERE id = ANY($1)").bind(answered).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(quarantined)
        });
        recorded.map_err(|e| lost_lease_or(db, how.lease.as_ref(), e))
    }
}

/// A write that failed for another reason (its connection cut, say) while the lease lapsed:
/// the lost lease is the error, so that the pass stops as one that lost its lease.
fn lost_lease_or(db: &mut Blocking, lease: Option<&LeaseCheck>, e: anyhow::Error) -> anyhow::Error {
    if e.is::<LeaseLost>() {
        return e;
    }
    match db.run(async |conn| hold(conn, lease, Hold::Look).await) {
        Err(lost) if lost.is::<LeaseLost>() => lost,
        _ => e,
    }
}

/// Acknowledged rows of a first sync: inserted synced with the value sent. The arrays are
/// unnested in the select list, which streams the rows; `FROM UNNEST(...)` stores them all in
/// a tuplestore first (a tenth of the server's work on a first sync, docs/performance.md).
const INSERT_SYNCED: &str = "INSERT INTO member_rows (computation_id, user_id, desired, synced, updated_at, synced_at) \
     SELECT unnest($2::int[]), unnest($3::text[]), unnest($4::text[]), unnest($4::text[]), unnest($5::bigint[]), $1";

/// Acknowledged rows: synced with exactly the value sent (a row whose `desired` changed
/// meanwhile stays pending).
const ACKED: &str = "UPDATE member_rows m SET synced = t.v, synced_at = $1, attempts = 0, last_error = NULL, \
     quarantined_at = NULL, first_sent_at = NULL \
     FROM UNNEST($2::int[], $3::text[], $4::text[]) AS t (i, u, v) WHERE m.computation_id = t.i AND m.user_id = t.u";

/// A failed row keeps its pending value, counts the attempt, and may have landed.
const FAILED: &str = "UPDATE member_rows SET attempts = attempts + 1, last_error = $4, \
     first_sent_at = coalesce(first_sent_at, $6), quarantined_at = CASE WHEN attempts + 1 >= $5 THEN $6 END \
     WHERE computation_id = $1 AND user_id = $2 AND desired = $3 RETURNING quarantined_at IS NOT NULL";

/// A failed row of a first sync: pending, its first attempt counted.
const FIRST_FAILED: &str = "INSERT INTO member_rows \
     (computation_id, user_id, desired, updated_at, attempts, last_error, first_sent_at, quarantined_at) \
     VALUES ($1, $2, $3, $4, 1, $5, $6, CASE WHEN $7 <= 1 THEN $6 END)";

impl Recording {
    fn id(&self, key: &str) -> anyhow::Result<i32> {
        self.ids.get(key).copied().ok_or_else(|| anyhow::anyhow!("computation {key} is not in the state"))
    }

    /// Records one call's answers; returns the key of each row quarantined.
    async fn record_call(&self, tx: &mut PgConnection, call: &[Outcome], at_ms: i64) -> anyhow::Result<Vec<String>> {
        let (mut ids, mut users, mut values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut first_ids, mut first_users, mut first_values, mut first_changed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut quarantined = Vec::new();
        for o in call {
            let (id, first) = (self.id(o.key())?, self.first_sync.contains(o.key()));
            match (&o.error, first) {
                (None, true) => {
                    first_ids.push(id);
                    first_users.push(o.user_id());
                    first_values.push(o.sent());
                    first_changed.push(millis(o.changed_at())?);
                }
                (None, false) => {
                    ids.push(id);
                    users.push(o.user_id());
                    values.push(o.sent());
                }
                (Some(error), true) => {
                    sqlx::query(FIRST_FAILED)
                        .bind(id)
                        .bind(o.user_id())
                        .bind(o.sent())
                        .bind(millis(o.changed_at())?)
                        .bind(error)
                        .bind(at_ms)
                        .bind(self.quarantine_after as i64)
                        .execute(&mut *tx)
                        .await?;
                    if self.quarantine_after <= 1 {
                        quarantined.push(o.key().to_string());
                    }
                }
                (Some(error), false) => {
                    let now_quarantined: Option<bool> = sqlx::query_scalar(FAILED)
                        .bind(id)
                        .bind(o.user_id())
                        .bind(o.sent())
                        .bind(error)
                        .bind(self.quarantine_after as i64)
                        .bind(at_ms)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if now_quarantined == Some(true) {
                        quarantined.push(o.key().to_string());
                    }
                }
            }
        }
        if !first_ids.is_empty() {
            sqlx::query(INSERT_SYNCED)
                .bind(at_ms)
                .bind(&first_ids)
                .bind(&first_users)
                .bind(&first_values)
                .bind(&first_changed)
                .execute(&mut *tx)
                .await?;
        }
        if !ids.is_empty() {
            sqlx::query(ACKED).bind(at_ms).bind(&ids).bind(&users).bind(&values).execute(&mut *tx).await?;
        }
        Ok(quarantined)
    }

    /// Adds the answers of `calls` to their computations' running `sync_runs` rows.
    async fn count(&self, tx: &mut PgConnection, calls: &[Vec<Outcome>]) -> anyhow::Result<()> {
        let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for o in calls.iter().flatten() {
            let (delivered, failed) = counts.entry(o.key()).or_default();
            *(if o.error.is_none() { delivered } else { failed }) += 1;
        }
        for (key, (delivered, failed)) in counts {
            if let Some(id) = self.runs.get(key) {
                sqlx::query(
                    "UPDATE sync_runs SET delivered = delivered + $2, failed = failed + $3 WHERE id = $1 AND status = 'running'",
                )
                .bind(id)
                .bind(delivered)
                .bind(failed)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }

    /// One `delivery_history` row per answer of `calls`, recorded at `at`.
    async fn keep_history(&self, tx: &mut PgConnection, calls: &[Vec<Outcome>], at: &str) -> anyhow::Result<()> {
        let answers: Vec<&Outcome> = calls.iter().flatten().collect();
        let runs: Vec<Option<i64>> = answers.iter().map(|o| self.runs.get(o.key()).copied()).collect();
        let keys: Vec<&str> = answers.iter().map(|o| o.key()).collect();
        let users: Vec<&str> = answers.iter().map(|o| o.user_id()).collect();
        let values: Vec<&str> = answers.iter().map(|o| o.sent()).collect();
        let statuses: Vec<Option<i32>> =
            answers.iter().map(|o| o.error.as_deref().and_then(refusal_status).map(i32::from)).collect();
        let errors: Vec<Option<&str>> = answers.iter().map(|o| o.error.as_deref()).collect();
        sqlx::query(
            "INSERT INTO delivery_history (run_id, computation_key, user_id, value, answered_at, http_status, error) \
             SELECT r, k, u, v, $1, s, e FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[]) \
             WITH ORDINALITY AS t (r, k, u, v, s, e, n) ORDER BY n",
        )
        .bind(at)
        .bind(&runs)
        .bind(&keys)
        .bind(&users)
        .bind(&values)
        .bind(&statuses)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
