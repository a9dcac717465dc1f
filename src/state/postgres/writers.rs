//! PostgreSQL's side of the diff's writes and of a first sync's queue (the threaded fronts are
//! `state::DiffWriter` and `state::QueueWriter`), and the diff's scan of the state rows. Each
//! holds a connection of its own and one transaction, begun at its first write.

use sqlx::PgConnection;

use super::Store;
use super::blocking::Blocking;
use super::leases::{Hold, LeaseCheck, hold};
use crate::diff::StateRow;
use crate::record::json_text;
use crate::source::fingerprint::Fingerprint;
use crate::state::times::millis;
use crate::state::{DiffRows, DiffWrite, DiffWriter, QueueRows, QueueRun, QueueWriter, RunCounts, now};

/// State rows handed from the scan's thread to the diff at a time.
const SCAN_ROWS: usize = 4096;

/// A new desired value is a new delivery (attempts and error start afresh); a row whose last
/// value may have landed unacknowledged no longer knows what the destination holds (see the
/// SQLite backend's `upsert_sql`).
const UPSERT: &str = "INSERT INTO member_rows (computation_id, user_id, desired, updated_at) \
     SELECT $1, u, d, $2 FROM UNNEST($3::text[], $4::text[]) AS t (u, d) \
     ON CONFLICT (computation_id, user_id) DO UPDATE SET desired = excluded.desired, \
     updated_at = excluded.updated_at, attempts = 0, last_error = NULL, quarantined_at = NULL, \
     synced = CASE WHEN member_rows.first_sent_at IS NULL THEN member_rows.synced END";

/// One transaction on a connection of its own, begun at the first write; dropped before its
/// commit, it rolls back.
struct Transaction {
    db: Blocking,
    begun: bool,
    committed: bool,
}

impl Transaction {
    fn new(db: Blocking) -> Transaction {
        Transaction { db, begun: false, committed: false }
    }

    /// Runs `work` in the transaction, beginning it first if need be; `work` is told whether
    /// this is the transaction's first work.
    fn run(&mut self, work: impl AsyncFnOnce(&mut PgConnection, bool) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let begin = !self.begun;
        self.begun = true;
        self.db.run(async |conn| {
            if begin {
                sqlx::query("BEGIN").execute(&mut *conn).await?;
            }
            work(conn, begin).await
        })
    }

    /// Runs `work`, then checks and renews `lease` and commits.
    fn commit(
        &mut self,
        lease: Option<&LeaseCheck>,
        work: impl AsyncFnOnce(&mut PgConnection, bool) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.run(async |conn, first| {
            work(&mut *conn, first).await?;
            hold(&mut *conn, lease, Hold::Renew).await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.begun && !self.committed {
            self.db.roll_back();
        }
    }
}

struct DiffTransaction {
    tx: Transaction,
    lease: Option<LeaseCheck>,
    key: String,
    id: i32,
    now_ms: i64,
    /// Rows written or deleted so far.
    written: usize,
}

/// A diff that wrote more rows than this, and more than a tenth of its snapshot's, has the
/// planner's statistics of `member_rows` refreshed after it commits (see `analyze`).
const ANALYZE_AFTER_ROWS: usize = 100_000;

/// Refreshes the planner's statistics of `member_rows` (a sample: about a second for ten million
/// rows). Until autovacuum gets to it, a table that just grew by millions of rows is planned as
/// the small table it was: delivery's pages and updates then scan it whole, and a 10M delta's
/// delivery took 41 s instead of 4 (docs/performance.md).
pub(super) async fn analyze(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("ANALYZE member_rows").execute(&mut *conn).await?;
    Ok(())
}

impl Store {
    /// Opens the writer of `key`'s diff. Blocking.
    pub fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        let mut db = self.blocking()?;
        let id = computation_id(&mut db, key)?;
        let rows = DiffTransaction {
            tx: Transaction::new(db),
            lease: self.lease_check(&[key.to_string()]),
            key: key.to_string(),
            id,
            now_ms: millis(&now())?,
            written: 0,
        };
        DiffWriter::start(Box::new(rows))
    }

    /// Opens the queue of `key`'s first sync, whose values were decided at `changed_at`. Blocking.
    pub fn first_sync_queue(&self, key: &str, changed_at: &str) -> anyhow::Result<QueueWriter> {
        let rows = QueueTransaction {
            tx: Transaction::new(self.blocking()?),
            lease: self.lease_check(&[key.to_string()]),
            key: key.to_string(),
            changed_at: changed_at.to_string(),
            runs: QueueBatch::default(),
        };
        QueueWriter::start(Box::new(rows))
    }

    /// Hands `read` the state rows of computation `key` in user order, from one snapshot of
    /// the state. Blocking. The rows are read on a thread of their own as one query whose rows
    /// stream in while `read` goes through the last ones: the server's work, the decoding and
    /// the diff overlap (a cursor fetched a page at a time left each waiting for the other).
    pub fn with_state_rows<T>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<StateRow>>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut db = self.blocking()?;
        let id = computation_id(&mut db, key)?;
        let (chunks_tx, chunks) = std::sync::mpsc::sync_channel::<anyhow::Result<Vec<StateRow>>>(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Err(e) = db.run(async |conn| stream_rows(conn, id, &chunks_tx).await) {
                    let _ = chunks_tx.send(Err(e));
                }
            });
            let mut chunk = Vec::new().into_iter();
            let mut rows = std::iter::from_fn(|| {
                loop {
                    if let Some(row) = chunk.next() {
                        return Some(Ok(row));
                    }
                    match chunks.recv() {
                        Ok(Ok(next)) => chunk = next.into_iter(),
                        Ok(Err(e)) => return Some(Err(e)),
                        Err(_) => return None,
                    }
                }
            });
            let read = read(&mut rows);
            // The reading thread stops at its next chunk once no one takes it.
            drop(chunks);
            read
        })
    }
}

/// Sends the state rows of computation `id`, in user order, to `chunks` a chunk at a time;
/// stops early once `chunks` is closed.
async fn stream_rows(
    conn: &mut PgConnection,
    id: i32,
    chunks: &std::sync::mpsc::SyncSender<anyhow::Result<Vec<StateRow>>>,
) -> anyhow::Result<()> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *conn).await?;
    let mut rows = sqlx::query_as::<_, (String, String, bool)>(
        "SELECT user_id, desired, synced IS NOT NULL OR synced_at IS NOT NULL OR first_sent_at IS NOT NULL \
         FROM member_rows WHERE computation_id = $1 ORDER BY user_id",
    )
    .bind(id)
    .fetch(&mut *conn);
    let mut chunk = Vec::with_capacity(SCAN_ROWS);
    while let Some((user_id, desired, told)) = futures::TryStreamExt::try_next(&mut rows).await? {
        chunk.push(StateRow { user_id, desired: json_text(&desired), told });
        if chunk.len() == SCAN_ROWS
            && chunks.send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(SCAN_ROWS)))).is_err()
        {
            return Ok(());
        }
    }
    let _ = chunks.send(Ok(chunk));
    Ok(())
}

/// The number of computation `key`.
fn computation_id(db: &mut Blocking, key: &str) -> anyhow::Result<i32> {
    db.run(async |conn| {
        let id: i32 =
            sqlx::query_scalar("SELECT id FROM computations WHERE key = $1").bind(key).fetch_one(&mut *conn).await?;
        Ok(id)
    })
}

impl DiffRows for DiffTransaction {
    fn write(&mut self, batch: Vec<DiffWrite>) -> anyhow::Result<()> {
        let (mut users, mut values, mut forgotten) = (Vec::new(), Vec::new(), Vec::new());
        for write in batch {
            match write {
                DiffWrite::Set { user_id, desired } => {
                    users.push(user_id);
                    values.push(desired);
                }
                DiffWrite::Forget { user_id } => forgotten.push(user_id),
            }
        }
        self.written += users.len() + forgotten.len();
        let (id, now_ms) = (self.id, self.now_ms);
        self.tx.run(async |conn, _| {
            if !users.is_empty() {
                sqlx::query(UPSERT).bind(id).bind(now_ms).bind(&users).bind(&values).execute(&mut *conn).await?;
            }
            if !forgotten.is_empty() {
                sqlx::query("DELETE FROM member_rows WHERE computation_id = $1 AND user_id = ANY($2)")
                    .bind(id)
                    .bind(&forgotten)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn commit(&mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        let key = self.key.clone();
        let snapshot =
            snapshot.map(|(fp, rows)| (fp.size as i64, fp.modified_at.clone(), fp.sha256.clone(), rows as i64));
        self.tx.commit(self.lease.as_ref(), async |conn, _| {
            match &snapshot {
                Some((size, modified_at, sha256, rows)) => sqlx::query(
                    "UPDATE computations SET snapshot_size = $2, snapshot_modified_at = $3, snapshot_sha256 = $4, \
                     snapshot_rows = $5 WHERE key = $1",
                )
                .bind(&key)
                .bind(size)
                .bind(modified_at)
                .bind(sha256)
                .bind(rows),
                None => sqlx::query("UPDATE computations SET snapshot_sha256 = NULL WHERE key = $1").bind(&key),
            }
            .execute(&mut *conn)
            .await?;
            // The state now holds the snapshot: what an earlier first sync still owed is
            // pending rows, or no longer owed.
            sqlx::query("DELETE FROM first_sync_queue WHERE computation_key = $1")
                .bind(&key)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })?;
        // As autovacuum's own rule: a tenth of the rows changed (of the snapshot's, when known).
        let changed_much = snapshot.as_ref().is_none_or(|(.., rows)| self.written as i64 * 10 > *rows);
        if self.written > ANALYZE_AFTER_ROWS && changed_much {
            self.tx.db.run(async |conn| analyze(conn).await)?;
        }
        Ok(())
    }
}

struct QueueTransaction {
    tx: Transaction,
    lease: Option<LeaseCheck>,
    key: String,
    changed_at: String,
    /// Runs not yet sent, sent `QUEUE_RUNS` to a statement.
    runs: QueueBatch,
}

/// Runs of a first sync's queue sent in one statement: one round trip and one statement each
/// took about a second of a 10M first sync's diff (docs/performance.md).
const QUEUE_RUNS: usize = 64;

/// The columns of the queue runs waiting to be inserted.
#[derive(Default)]
struct QueueBatch {
    after: Vec<String>,
    last: Vec<String>,
    entries: Vec<i64>,
    users: Vec<String>,
}

/// In a queue's transaction, before its first run: what an earlier first sync left goes.
async fn replace_earlier(conn: &mut PgConnection, key: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM first_sync_queue WHERE computation_key = $1").bind(key).execute(conn).await?;
    Ok(())
}

impl QueueTransaction {
    /// Inserts the runs waiting, if any; the first write of the transaction replaces what an
    /// earlier first sync left.
    fn flush(&mut self) -> anyhow::Result<()> {
        let runs = std::mem::take(&mut self.runs);
        let (key, changed_at) = (self.key.clone(), self.changed_at.clone());
        self.tx.run(async |conn, first| {
            if first {
                replace_earlier(&mut *conn, &key).await?;
            }
            if runs.after.is_empty() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) \
                 SELECT $1, unnest($2::text[]), unnest($3::text[]), unnest($4::bigint[]), unnest($5::text[]), $6",
            )
            .bind(&key)
            .bind(&runs.after)
            .bind(&runs.last)
            .bind(&runs.entries)
            .bind(&runs.users)
            .bind(&changed_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }
}

impl QueueRows for QueueTransaction {
    fn insert(&mut self, run: &QueueRun) -> anyhow::Result<()> {
        self.runs.users.push(std::str::from_utf8(&run.users)?.to_string());
        self.runs.after.push(run.after.clone());
        self.runs.last.push(run.last.clone());
        self.runs.entries.push(run.entries as i64);
        if self.runs.after.len() >= QUEUE_RUNS {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(&mut self, run: i64, counts: &RunCounts) -> anyhow::Result<()> {
        self.flush()?;
        self.tx.commit(self.lease.as_ref(), async |conn, _| super::computations::note_diff(conn, run, counts).await)
    }
}
