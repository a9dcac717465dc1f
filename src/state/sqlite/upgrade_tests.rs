//! A state file written by the schema before `member_rows` (migrations up to 0012), rows and
//! all, upgrades in place: every view an operator reads says exactly what it said before.

use rusqlite::types::Value;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use super::{MIGRATOR, Store};

/// Every row of `query`, every column as SQLite gives it (type and all).
fn rows(db: &rusqlite::Connection, query: &str) -> Vec<Vec<Value>> {
    let mut statement = db.prepare(query).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |r| (0..columns).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const VIEWS: [&str; 4] = [
    "SELECT * FROM memberships ORDER BY computation_key, user_id",
    "SELECT * FROM pending ORDER BY computation_key, user_id",
    "SELECT * FROM quarantined ORDER BY computation_key, user_id",
    "SELECT * FROM computation_status ORDER BY key",
];

/// Rows as the version before wrote them: every kind of value and every column filled or not.
const OLD_ROWS: &str = "
INSERT INTO computations (key, name, kind, created_at) VALUES
  ('gold', 'Gold', 'audience', '2026-11-01T10:00:00.000Z'),
  ('ltv', 'LTV', 'computed_trait', '2026-11-01T10:00:00.001Z');
INSERT INTO memberships (computation_key, user_id, desired, synced, updated_at, synced_at, attempts, last_error,
                         quarantined_at, first_sent_at) VALUES
  ('gold', 'u1', 'true', 'true', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:01.999Z', 0, NULL, NULL, NULL),
  ('gold', 'u2', 'false', 'true', '2026-11-03T12:34:56.789Z', '2026-11-02T00:00:01.000Z', 2, 'HTTP 500: oops', NULL,
   '2026-11-03T12:35:00.001Z'),
  ('gold', 'u3', 'true', NULL, '2026-11-03T12:34:56.789Z', NULL, 3, 'HTTP 400: bad', '2026-11-04T00:00:00.000Z',
   '2026-11-03T12:35:00.001Z'),
  ('gold', 'u4', 'false', 'false', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:02.000Z', 0, NULL, NULL, NULL),
  ('ltv', 'u1', '420.5', '\"gold\"', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:03.000Z', 0, NULL, NULL, NULL),
  ('ltv', 'u2', 'null', '1', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:03.000Z', 1, 'timed out', NULL, NULL),
  ('ltv', 'u3', '1', NULL, '2026-11-02T00:00:00.000Z', NULL, 0, NULL, NULL, NULL),
  ('ltv', 'u4', '\"true\"', 'true', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:03.000Z', 0, NULL, NULL, NULL),
  ('ltv', 'u5', '0', '0', '2026-11-02T00:00:00.000Z', '2026-11-02T00:00:03.000Z', 0, NULL, NULL, NULL);
INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) VALUES
  ('ltv', 'u5', 'u7', 2, '[[\"u6\",\"7\"],[\"u7\",\"true\"]]', '2026-11-05T00:00:00.000Z');
INSERT INTO sync_runs (computation_key, trigger, mode, status, started_at) VALUES
  ('gold', 'manual', 'initial', 'ok', '2026-11-02T00:00:00.000Z');
";

#[tokio::test]
async fn a_state_written_before_member_rows_upgrades_with_every_view_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let before_member_rows = MIGRATOR.iter().filter(|m| m.version < 13).cloned().collect();
    Migrator::with_migrations(before_member_rows).run(&pool).await.unwrap();
    pool.close().await;
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(OLD_ROWS).unwrap();
    let before: Vec<_> = VIEWS.iter().map(|q| rows(&db, q)).collect();
    assert_eq!(before[0].len(), 9, "the rows were written");
    drop(db);

    let store = Store::open(&path).await.unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    for (query, before) in VIEWS.iter().zip(&before) {
        assert_eq!(&rows(&db, query), before, "{query}");
    }
    let stored: i64 = db.query_row("SELECT count(*) FROM member_rows", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 9);
    // And the program reads what it wrote before: the diff's scan of a computation.
    let gold = store
        .with_state_rows("gold", |rows| {
            rows.map(|r| r.map(|r| (r.user_id, r.desired.to_string()))).collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert_eq!(gold.len(), 4);
}
