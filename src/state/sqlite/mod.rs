//! The SQLite state, the default backend of the state's interface: every SQLite concern
//! lives here (the pool and its pragmas, WAL checkpoints, lock waits, the bulk writers and the
//! read-ahead scans), and all of its SQL. Write transactions begin IMMEDIATE: a deferred
//! transaction that reads and then writes can fail with SQLITE_BUSY that no busy timeout can wait
//! out.

mod answers;
mod attributes;
mod busy;
mod checkpoint;
mod computations;
mod destination;
mod diff_writer;
mod explain;
mod first_sync_queue;
mod history;
mod leases;
mod memberships;
mod observed;
mod pending;
mod runs;
mod scan;
mod status;
mod stored;
#[cfg(test)]
mod upgrade_tests;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use crate::sqlite_memory::configure_sqlite;
use crate::state::now;

pub use busy::{
    ended_by_stop, explain_lock_wait, listen_for_signals, may_wait_longer, signalled, stop_waiting_for_locks,
};
use checkpoint::Checkpointer;
use stored::Bound;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How long a statement waits for another writer's lock before failing. The diff of a big
/// snapshot holds the write lock for its whole length (it must commit whole), and the daemon
/// runs passes side by side: another pass's acknowledgements wait for it rather than fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(300);

/// The state file, opened with its migrations applied.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The state file, for the bulk scan that reads it without sqlx (see `scan`).
    path: std::path::PathBuf,
    /// The leases a pass through this handle must still hold when it writes (see `leases`).
    claim: Option<leases::Claim>,
    /// Days `delivery_history` keeps every delivery answered; none: not kept (see `history`).
    keep_history_days: Option<u32>,
    /// Copies the log back beside the diffs (`Store::checkpoint_beside`), once one asks.
    checkpoints: std::sync::Arc<std::sync::OnceLock<Checkpointer>>,
}

impl Store {
    /// Opens (creating it and its directory on first use) the state file and migrates it.
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        }
        configure_sqlite();
        // Processes started together on a new state file would each run the migrations, and all
        // but one fail half-way ("duplicate column"): one sets the file up while the others wait
        // for its lock, taken on the file's directory. Never on the file itself: closing any
        // handle to it drops every SQLite lock this process holds there, and an operator's
        // `sqlite3` closing next then deletes the log under the daemon.
        let setting_up = lock_for_set_up(path).await?;
        let fresh = !path.exists();
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if fresh {
            // Only in a new file (an older one would need a VACUUM), by one connection before
            // any other: as an option of every connection the pragma takes the write lock, and
            // a command started while an operator held a write transaction hung there, deaf to
            // SIGTERM. A first sync's queue holds every member once more until the sync ends;
            // the file gives those pages back then instead of keeping them free for good.
            let first = options.clone().auto_vacuum(SqliteAutoVacuum::Incremental).connect().await;
            first.with_context(|| format!("cannot create the state file {}", path.display()))?.close().await?;
        }
        // A diff writes while delivery reads pages and the committer writes answers, and the
        // daemon may run a few passes side by side.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(BUSY_TIMEOUT)
            .after_connect(|conn, _| Box::pin(wait_for_locks_async(conn)))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the state file {}", path.display()))?;
        MIGRATOR.run(&pool).await.with_context(|| format!("cannot migrate the state file {}", path.display()))?;
        drop(setting_up);
        Ok(Store::over(pool, path))
    }

    /// Opens an existing state file read-only, without migrating it (dry runs and status must
    /// not change anything); `None` when there is no state file yet.
    pub async fn open_read_only(path: &Path) -> anyhow::Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        configure_sqlite();
        let options =
            SqliteConnectOptions::from_str("sqlite://")?.filename(path).read_only(true).busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .after_connect(|conn, _| Box::pin(wait_for_locks_async(conn)))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the state file {}", path.display()))?;
        Ok(Some(Store::over(pool, path)))
    }

    /// A handle on the state file at `path` through `pool`, holding no lease.
    fn over(pool: SqlitePool, path: &Path) -> Store {
        Store { pool, path: path.to_path_buf(), claim: None, keep_history_days: None, checkpoints: Default::default() }
    }

    /// Fails, saying what to do, when the state file was written by an older version and not
    /// upgraded yet: a read-only open does not migrate it, and what it reads may not exist.
    pub async fn require_current_schema(&self) -> anyhow::Result<()> {
        let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None);
        let current = MIGRATOR.iter().map(|m| m.version).max();
        if applied < current {
            anyhow::bail!(
                "the state file {} was written by an older version of audience-sync; run `audience-sync sync` \
                 (or `run`) once to upgrade it (a dry run changes nothing, so it cannot)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Closes every connection; the last one to close checkpoints the WAL into the database
    /// file, so that a state file left by a finished command is whole on its own.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A connection of its own for a blocking thread that writes many rows (a diff, or
    /// delivery's answers), through rusqlite on the same bundled SQLite as sqlx. It never
    /// checkpoints: a `Checkpointer` does, beside it.
    fn bulk_writer(&self) -> rusqlite::Result<rusqlite::Connection> {
        let db = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        wait_for_locks(&db)?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(db)
    }

    async fn begin_immediate(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The directory of the state file at `path`, exclusively locked (`flock`) until dropped.
async fn lock_for_set_up(path: &Path) -> anyhow::Result<std::fs::File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    tokio::task::spawn_blocking(move || {
        let handle = std::fs::File::open(&dir)
            .with_context(|| format!("cannot open the state's directory {}", dir.display()))?;
        handle.lock().with_context(|| format!("cannot lock the state's directory {}", dir.display()))?;
        Ok(handle)
    })
    .await?
}

/// Has a rusqlite connection wait for locks through `busy::try_again`.
fn wait_for_locks(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    db.busy_handler(Some(busy::try_again))
}

/// Has a connection of sqlx's pool wait for locks through `busy::try_again` (in place of the
/// busy timeout it was opened with).
async fn wait_for_locks_async(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is locked (sqlx's worker makes no call on it meanwhile); sqlx and
    // rusqlite link the same libsqlite3-sys; the callback is a plain function using no data.
    unsafe {
        rusqlite::ffi::sqlite3_busy_handler(
            handle.as_raw_handle().as_ptr(),
            Some(busy::busy_callback),
            std::ptr::null_mut(),
        );
    }
    Ok(())
}

/// Rows written by one statement of the bulk writers.
const ROWS_PER_STATEMENT: usize = 64;

/// A statement over many rows: `S` parameters shared by every row (`?1`..`?S`, bound once per
/// statement), then `N` of each row's own (its SQL for a whole batch of `ROWS_PER_STATEMENT`
/// rows, and for one row), built once per writer. Binding was about a quarter of a row's insert
/// (SQLite copies each text bound; callgrind), so what rows share is bound once.
struct Batched<const S: usize, const N: usize> {
    whole: String,
    single: String,
}

impl<const S: usize, const N: usize> Batched<S, N> {
    /// The statement `sql(values)`, where `values` is a `VALUES` list of rows of `columns`.
    fn new(columns: &[Param], sql: impl Fn(&str) -> String) -> Self {
        debug_assert!(
            columns.iter().all(|c| matches!(*c, Param::Shared(i) if i <= S) || matches!(*c, Param::Own(i) if i <= N))
        );
        Batched {
            whole: sql(&values_list(ROWS_PER_STATEMENT, S, N, columns)),
            single: sql(&values_list(1, S, N, columns)),
        }
    }

    /// Runs the statement over all of `rows`: whole batches through one cached statement (a
    /// statement's set-up costs about as much as a row's insert), the rest one row a statement.
    fn execute(
        &self,
        db: &rusqlite::Connection,
        shared: [Bound<'_>; S],
        rows: &[[Bound<'_>; N]],
    ) -> rusqlite::Result<()> {
        let mut batches = rows.chunks_exact(ROWS_PER_STATEMENT);
        let run = |sql: &str, batch: &[[Bound<'_>; N]]| -> rusqlite::Result<()> {
            let mut statement = db.prepare_cached(sql)?;
            for (i, value) in shared.iter().chain(batch.iter().flatten()).enumerate() {
                statement.raw_bind_parameter(i + 1, value)?;
            }
            statement.raw_execute().map(drop)
        };
        for batch in batches.by_ref() {
            run(&self.whole, batch)?;
        }
        batches.remainder().chunks(1).try_for_each(|row| run(&self.single, row))
    }
}

/// Where a column of a `VALUES` row takes its value from, for `values_list`: the `i`-th
/// (from 1) parameter shared by all rows, or the `i`-th of the row's own.
#[derive(Clone, Copy)]
enum Param {
    Shared(usize),
    Own(usize),
}

/// The placeholders of a multi-row `VALUES` list of `rows` rows, each with the columns
/// `columns`, after `shared` parameters common to all rows, each row with `own` of its own.
fn values_list(rows: usize, shared: usize, own: usize, columns: &[Param]) -> String {
    let row = |r: usize| {
        let params: Vec<String> = columns
            .iter()
            .map(|c| match c {
                Param::Shared(i) => format!("?{i}"),
                Param::Own(i) => format!("?{}", shared + r * own + i),
            })
            .collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// For the state's own tests: a real state file with one audience.
#[cfg(test)]
pub(crate) mod testing {
    use super::Store;

    /// A time in the state's format: `s` seconds into 2026.
    pub fn second(s: u32) -> String {
        format!("2026-01-01T00:00:{s:02}.000Z")
    }

    /// A state file in `dir` with the audience `a`, and a plain connection to it.
    pub async fn store_with_audience(dir: &std::path::Path) -> (Store, rusqlite::Connection) {
        let path = dir.join("state.db");
        let store = Store::open(&path).await.unwrap();
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute("INSERT INTO computations (key, name, kind, created_at) VALUES ('a', 'A', 'audience', 't0')", [])
            .unwrap();
        (store, db)
    }
}
