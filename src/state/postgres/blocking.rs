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

impl Blocking {
    pub fn connect(options: &PgConnectOptions) -> anyhow::Result<Blocking> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let conn = runtime.block_on(options.connect())?;
        Ok(Blocking { runtime: Some(runtime), conn: Some(conn) })
    }

    /// Runs `work` on the connection, blocking until it is done.
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

/// The server ends a transaction left idle longer than the lease (see `Store::blocking`): say
/// what that means for the worker.
fn explain_stall(e: anyhow::Error) -> anyhow::Error {
    let idle = e
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|e| e.code().as_deref() == Some("25P03"));
    match idle {
        true => e.context(
            "this worker stalled longer than its lease lasts (lease_ttl_secs) and the database ended its \
             transaction; it stops, and another worker takes its computations over",
        ),
        false => e,
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
