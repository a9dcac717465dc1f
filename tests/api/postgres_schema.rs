//! The PostgreSQL state's schema (issue 17, "one schema, two backends"): the same tables and
//! views, with the same columns, as SQLite's after all its migrations; and the operator's views
//! show the same rows in the same formats when both hold the same facts, each in its own
//! encoding (SQLite keeps true/false as 1/0, PostgreSQL as JSON text).

use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, Executor, PgPool, Row, SqlitePool};

const VIEWS: [&str; 4] = ["memberships", "pending", "quarantined", "computation_status"];

/// Every table and view (name, "table" or "view") and its columns in order, by name.
type Objects = Vec<(String, String, Vec<String>)>;

async fn sqlite_objects(db: &SqlitePool) -> Objects {
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut objects = Vec::new();
    for (name, kind) in names {
        // table_xinfo: generated columns too (delivery_history.acknowledged)
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_xinfo(?1) ORDER BY cid")
            .bind(&name)
            .fetch_all(db)
            .await
            .unwrap();
        objects.push((name, kind, columns));
    }
    objects
}

async fn postgres_objects(db: &PgPool) -> Objects {
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END \
         FROM information_schema.tables WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%' \
         ORDER BY table_name COLLATE \"C\"",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut objects = Vec::new();
    for (name, kind) in names {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&name)
        .fetch_all(db)
        .await
        .unwrap();
        objects.push((name, kind, columns));
    }
    objects
}

/// The same facts in both: two computations, members in every state a row can be in, a first
/// sync's queue, a run, and two delivery records. `{t}` and `{f}` are how each stores true and
/// false in `member_rows`.
fn fixture(t: &str, f: &str) -> String {
    format!(
        "INSERT INTO computations (key, name, kind, created_at) VALUES \
           ('a', 'A', 'audience', '2026-12-01T00:00:00.000Z'), ('t', 'T', 'computed_trait', '2026-12-01T00:00:00.000Z');
         INSERT INTO member_rows (computation_id, user_id, desired, synced, updated_at, synced_at, attempts, last_error, quarantined_at, first_sent_at) VALUES
           (1, 'u1', {t}, {t}, 1764979200123, 1764979201456, 0, NULL, NULL, NULL),
           (1, 'u2', {t}, NULL, 1764979200123, NULL, 2, 'HTTP 500', NULL, 1764979202000),
           (1, 'u3', {f}, {t}, 1764979200999, 1764979100000, 0, NULL, NULL, NULL),
           (1, 'u4', {t}, NULL, 1764979200000, NULL, 5, 'HTTP 400: bad', 1764979300001, NULL),
           (2, 'u1', '420.5', NULL, 1764979200123, NULL, 0, NULL, NULL, NULL),
           (2, 'u2', '\"gold\"', '\"silver\"', 1764979200123, 1764979000000, 1, 'timeout', NULL, NULL),
           (2, 'u3', 'null', '\"gold\"', 1764979200123, 1764979000000, 0, NULL, NULL, NULL),
           (2, 'u5', '1', '1', 1764979200123, 1764979000000, 0, NULL, NULL, NULL);
         INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) VALUES
           ('a', 'u4', 'u9', 3, '[[\"u1\",\"true\"],[\"u8\",\"true\"],[\"u9\",\"true\"]]', '2026-12-06T00:00:00.000Z');
         INSERT INTO sync_runs (computation_key, trigger, mode, status, started_at, finished_at, snapshot_rows, entered, delivered, error) VALUES
           ('a', 'manual', 'initial', 'ok', '2026-12-05T00:00:00.000Z', '2026-12-05T00:01:00.000Z', 4, 4, 4, NULL),
           ('a', 'schedule', 'delta', 'incomplete', '2026-12-06T00:00:00.000Z', '2026-12-06T00:02:00.000Z', 3, 1, 1, 'rows pending');
         INSERT INTO delivery_history (run_id, computation_key, user_id, value, answered_at, http_status, error) VALUES
           (1, 'a', 'u1', 'true', '2026-12-05T00:00:30.000Z', NULL, NULL),
           (2, 'a', 'u2', 'true', '2026-12-06T00:00:30.000Z', 500, 'HTTP 500');"
    )
}

/// Every row of `object`, each column as text, sorted.
fn select_as_text(object: &str, columns: &[String]) -> String {
    let list: Vec<String> = columns.iter().map(|c| format!("CAST(\"{c}\" AS TEXT)")).collect();
    format!("SELECT {} FROM {object}", list.join(", "))
}

fn sorted_rows<R: Row>(rows: Vec<R>, width: usize) -> Vec<Vec<Option<String>>>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let mut out: Vec<Vec<Option<String>>> =
        rows.iter().map(|r| (0..width).map(|i| r.try_get::<Option<String>, _>(i).unwrap()).collect()).collect();
    out.sort();
    out
}

/// A database of its own on the test server, dropped by the next run of this test.
async fn fresh_postgres(url: &str) -> PgPool {
    let admin = PgPool::connect(url).await.unwrap();
    let name = "audience_sync_schema_test";
    admin.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await.unwrap();
    admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    let mut options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    options = options.database(name);
    PgPool::connect_with(options).await.unwrap()
}

#[tokio::test]
#[ignore = "needs a Postgres server: set AUDIENCE_SYNC_TEST_POSTGRES_URL (see README, Development)"]
async fn postgres_state_has_sqlites_tables_views_columns_and_value_formats() {
    let url = std::env::var("AUDIENCE_SYNC_TEST_POSTGRES_URL").expect("AUDIENCE_SYNC_TEST_POSTGRES_URL");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pg = fresh_postgres(&url).await;
    Migrator::new(root.join("migrations/postgres")).await.unwrap().run(&pg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite =
        SqlitePool::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("state.db").display())).await.unwrap();
    Migrator::new(root.join("migrations")).await.unwrap().run(&lite).await.unwrap();

    let (lite_objects, pg_objects) = (sqlite_objects(&lite).await, postgres_objects(&pg).await);
    assert_eq!(pg_objects, lite_objects, "tables, views and their columns");

    sqlx::raw_sql(AssertSqlSafe(fixture("1", "0"))).execute(&lite).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(fixture("'true'", "'false'"))).execute(&pg).await.unwrap();
    for view in VIEWS {
        let columns = &lite_objects.iter().find(|o| o.0 == view).unwrap().2;
        let sql = select_as_text(view, columns);
        let lite_rows =
            sorted_rows(sqlx::query(AssertSqlSafe(sql.clone())).fetch_all(&lite).await.unwrap(), columns.len());
        let pg_rows = sorted_rows(sqlx::query(AssertSqlSafe(sql)).fetch_all(&pg).await.unwrap(), columns.len());
        assert!(!lite_rows.is_empty(), "{view}: the fixture shows nothing");
        assert_eq!(pg_rows, lite_rows, "{view}");
    }
}
