//! A PostgreSQL connection for a blocking thread: the diff's writer, a first sync's queue,
//! delivery's pages and answers. sqlx is async; each of these holds a one-thread runtime of its
//! own with its connection, and blocks on it, so that it never waits on (nor stalls) the
//! runtime of the pass, whose one thread sends the requests.

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};

pub(super) struct Blocking {
    runtime: Option<tokio::runtime::Runtime>,
    conn: Option<PgConnection>,
}

/// How often a blocking statement looks whether the process is stopping.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Blocking {
    pub fn connect(options: &PgConnectOptions) -> anyhow::Result<Blocking> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut conn = runtime.block_on(options.connect())?;
        let backend = runtime.block_on(sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn))?;
        // Runs whenever the runtime does: while `run` blocks on a statement.
        runtime.spawn(cancel_lock_waits_on_stop(options.clone(), backend));
        Ok(Blocking { runtime: Some(runtime), conn: Some(conn) })
    }

    /// Runs `work` on the connection, blocking until it is done. A wait for a lock inside it
    /// ends about a second after the process began to stop, as every lock wait does (DESIGN
    /// §9.9): the statement is cancelled; one that is working, not waiting, goes on.
    pub fn run<T>(&mut self, work: impl AsyncFnOnce(&mut PgConnection) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let (Some(runtime), Some(conn)) = (&self.runtime, &mut self.conn) else {
            anyhow::bail!("the state's connection is closed")
        };
        runtime.block_on(work(conn)).map_err(explain_stall)
    }

    /// Ends a transaction left open (a writer dropped before it committed), then closes.
    pub fn roll_back(&mut self) {
        let _ = self.run(async |conn| {
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            Ok(())
        });
    }
}

/// Once the process has been stopping for a second, cancels the statement `backend` has waiting
/// for a lock (through a connection of its own), and again while it waits.
async fn cancel_lock_waits_on_stop(options: PgConnectOptions, backend: i32) {
    loop {
        tokio::time::sleep(STOP_POLL).await;
        if crate::state::sqlite::may_wait_longer(std::time::Duration::ZERO) {
            continue;
        }
        if let Ok(mut other) = options.connect().await {
            let cancel =
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'";
            let _ = sqlx::query(cancel).bind(backend).execute(&mut other).await;
            let _ = sqlx::Connection::close(other).await;
        }
    }
}

/// The server ended a transaction left idle longer than the lease (see `Store::blocking`), or
/// a stop cancelled a lock wait: say what that means for the worker.
fn explain_stall(e: anyhow::Error) -> anyhow::Error {
    let code = e.downcast_ref::<sqlx::Error>().and_then(|e| e.as_database_error()).and_then(|e| e.code());
    match code.as_deref() {
        // Cancelled by `cancel_lock_waits_on_stop`.
        Some("57014") => {
            e.context("shutting down: stopped waiting for a lock on the state, held by another connection")
        }
        Some("25P03") => e.context(
            "this worker stalled longer than its lease lasts (lease_ttl_secs) and the database ended its \
             transaction; it stops, and another worker takes its computations over",
        ),
        _ => e,
    }
}

impl Drop for Blocking {
    /// Without waiting: a blocking value may be dropped on the pass's async thread. The server
    /// rolls back whatever the closed connection left open.
    fn drop(&mut self) {
        drop(self.conn.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
