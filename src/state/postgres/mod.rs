//! The PostgreSQL state (issue 17): the same tables and views as SQLite's
//! (`migrations/postgres`), shared by several workers. Every PostgreSQL concern lives here, and
//! all of its SQL.
//!
//! Async methods go through a pool on the caller's runtime. The blocking writers and readers
//! (the diff's, a first sync's queue, delivery's pages and answers, the diff's scan) each hold a
//! connection of their own on a small runtime of their own (`blocking::Blocking`), so that a
//! blocking thread never waits on the pool's runtime. Leases are kept on the database's clock
//! (`DB_NOW`), whatever the workers' clocks say.

mod blocking;
mod computations;
mod delivery;
mod destination;
mod leases;
mod memberships;
mod shards;
mod status;
mod writers;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::config::Secret;
use crate::redact::{redact_url, scrub, url_secrets};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// SQL: now on the database's clock, as the state's RFC 3339 text.
const DB_NOW: &str = "state_time((extract(epoch FROM clock_timestamp()) * 1000)::bigint)";

/// How long one try for a lock lasts on the pool's sessions; `patiently` tries again.
const LOCK_TRY: Duration = Duration::from_secs(1);

/// How long a blocking writer's or reader's statement waits for a lock: SQLite's busy timeout.
const BULK_LOCK_WAIT: Duration = Duration::from_secs(300);

/// How long opening the state waits for the database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The state in a PostgreSQL database, opened with its migrations applied.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// For the blocking writers' and readers' own connections.
    options: PgConnectOptions,
    /// The database as an operator may be shown it (credentials hidden).
    shown: String,
    /// The leases a pass through this handle must still hold when it writes (see `leases`).
    claim: Option<leases::Claim>,
    /// The delivery shard a worker delivers through this handle (see `shards`).
    shard: Option<shards::Delivering>,
    /// Days `delivery_history` keeps every delivery answered; none: not kept.
    keep_history_days: Option<u32>,
}

impl Store {
    /// Connects and applies the migrations. sqlx's migrator holds an advisory lock while it
    /// migrates, so workers started at once on an empty database set it up once, in turn.
    pub async fn open(url: &Secret, lease_ttl: Duration) -> anyhow::Result<Store> {
        let store = Self::connect(url, Some(lease_ttl)).await?;
        MIGRATOR.run(&store.pool).await.with_context(|| format!("cannot migrate the state in {}", store.shown))?;
        Ok(store)
    }

    /// Connects without migrating; `None` when the database holds no state yet.
    pub async fn open_read_only(url: &Secret) -> anyhow::Result<Option<Store>> {
        let store = Self::connect(url, None).await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('computations') IS NOT NULL")
            .fetch_one(&store.pool)
            .await
            .with_context(|| format!("cannot read the state in {}", store.shown))?;
        Ok(exists.then_some(store))
    }

    /// Connects; the pool's sessions wait for a lock a second at a time (see `patiently`) and,
    /// with `idle_ttl`, have the server end a transaction left idle that long (a stalled worker's
    /// row locks would hold every other worker off).
    async fn connect(url: &Secret, idle_ttl: Option<Duration>) -> anyhow::Result<Store> {
        let shown = redact_url(url.expose());
        // The parser's own message may quote the URL: it is not shown.
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|_| anyhow::anyhow!("the state's PostgreSQL URL {shown} cannot be parsed"))?;
        let mut sessions = vec![("lock_timeout", LOCK_TRY.as_millis())];
        if let Some(ttl) = idle_ttl {
            sessions.push(("idle_in_transaction_session_timeout", ttl.as_millis().max(1)));
        }
        // One connection first, whose error says what went wrong (refused, no such database,
        // authentication): the pool retries those until its timeout, then says only that.
        let first = options.connect().await.map_err(|e| anyhow::anyhow!(scrub(&e.to_string(), &secrets_of(url))));
        first.with_context(|| format!("cannot connect to the state in {shown}"))?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone().options(sessions))
            .await
            .map_err(|e| anyhow::anyhow!(scrub(&e.to_string(), &secrets_of(url))))
            .with_context(|| format!("cannot connect to the state in {shown}"))?;
        Ok(Store { pool, options, shown, claim: None, shard: None, keep_history_days: None })
    }

    /// Fails, saying what to do, when the database's schema is older than this version's.
    pub async fn require_current_schema(&self) -> anyhow::Result<()> {
        let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(None);
        let current = MIGRATOR.iter().map(|m| m.version).max();
        if applied < current {
            anyhow::bail!(
                "the state in {} was written by an older version of audience-sync; run `audience-sync sync` \
                 (or `run`) once to upgrade it (a dry run changes nothing, so it cannot)",
                self.shown
            );
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A connection of its own for a blocking thread. Under a claim, a transaction left idle
    /// longer than the lease lasts (its worker stalled, or stopped) is ended by the server: its
    /// locks on the lease rows would otherwise hold off the worker taking the lease over.
    fn blocking(&self) -> anyhow::Result<blocking::Blocking> {
        // A lock wait inside one transaction cannot be tried again: it lasts as long as
        // SQLite's busy timeout at most (a stop ends it with the pass, after the grace period).
        let mut sessions = vec![("lock_timeout", BULK_LOCK_WAIT.as_millis())];
        if let Some(claim) = &self.claim {
            sessions.push(("idle_in_transaction_session_timeout", claim.ttl().as_millis().max(1)));
        }
        let options = self.options.clone().options(sessions);
        blocking::Blocking::connect(&options).with_context(|| format!("cannot connect to the state in {}", self.shown))
    }

    /// The same state, recording every delivery answered and keeping it `days` (none: off).
    pub fn keeping_history(self, days: Option<u32>) -> Store {
        Store { keep_history_days: days, ..self }
    }
}

/// What of `url` must never be shown: its password and user, in every form a server may echo.
fn secrets_of(url: &Secret) -> Vec<String> {
    let mut secrets = url::Url::parse(url.expose()).map(|u| url_secrets(&u)).unwrap_or_default();
    secrets.push(url.expose().to_string());
    secrets
}

/// Runs `work` until it does not fail on a lock wait (a try ends after `LOCK_TRY`), for as long
/// as SQLite would wait for its lock: an operator's open transaction holds a pass up, a stopping
/// process a second more at most (DESIGN §9.9). Nothing is written by a try that failed.
pub(super) async fn patiently<T, F: Future<Output = anyhow::Result<T>>>(
    mut work: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let began = std::time::Instant::now();
    loop {
        match work().await {
            Err(e) if leases::lock_timed_out(&e) => {
                if !super::sqlite::may_wait_longer(began.elapsed()) {
                    return Err(e.context("stopped waiting for a lock on the state, held by another connection"));
                }
            }
            done => return done,
        }
    }
}
