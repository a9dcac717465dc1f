//! The state's handle, over either backend: every method says what a pass, a command or the
//! daemon needs, and the backend in `sqlite/` or `postgres/` does it with its own SQL.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::{
    AnswerWriter, ComputationStatus, DiffWriter, HeldLease, LastRun, LeaseOwner, Mode, ObservedComputation,
    OtherDestination, PendingReader, QueueWriter, RunCounts, RunEnd, ShardClaim, ShardProgress, ShardsOf, Tenure,
    Trigger, UserState, postgres, sqlite,
};
use crate::config::{Computation, StateLocation};
use crate::diff::StateRow;
use crate::source::fingerprint::Fingerprint;

/// The state, opened.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::Store),
    Postgres(Box<postgres::Store>),
}

/// `$body` with `$s` bound to the backend's store, whichever it is.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

/// As `each!`, for an async `$call` returning a `Result`: on PostgreSQL, tried again while it
/// fails on a lock wait (`postgres::patiently`).
macro_rules! each_async {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => postgres::patiently(|| $call).await,
        }
    };
}

/// As `each!`, for methods that return a `Store` of the same backend.
macro_rules! same_backend {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Store::Sqlite($s) => Store::Sqlite($body),
            Store::Postgres($s) => Store::Postgres(Box::new($body)),
        }
    };
}

impl Store {
    /// Opens the state (creating a SQLite file on first use) and applies its migrations.
    /// A PostgreSQL transaction left idle longer than `lease_ttl` is ended by the server.
    pub async fn open(location: &StateLocation, lease_ttl: Duration) -> anyhow::Result<Store> {
        match location {
            StateLocation::File(path) => Ok(Store::Sqlite(sqlite::Store::open(path).await?)),
            StateLocation::Postgres { url, .. } => {
                Ok(Store::Postgres(Box::new(postgres::Store::open(url, lease_ttl).await?)))
            }
        }
    }

    /// Opens the state read-only, without migrating it (dry runs and status change nothing);
    /// `None` when there is no state yet.
    pub async fn open_read_only(location: &StateLocation) -> anyhow::Result<Option<Store>> {
        match location {
            StateLocation::File(path) => Ok(sqlite::Store::open_read_only(path).await?.map(Store::Sqlite)),
            StateLocation::Postgres { url, .. } => {
                Ok(postgres::Store::open_read_only(url).await?.map(|s| Store::Postgres(Box::new(s))))
            }
        }
    }

    /// Whether the sending thread may record answers itself between polls (a backend that
    /// blocks there on a connection of its own), rather than on a thread of their own.
    pub fn records_inline(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// How many connections delivery records answers on at once: SQLite takes one writer at a
    /// time; PostgreSQL's server inserts beside itself, and one connection left a 10M first
    /// sync waiting on one server process (docs/performance.md).
    pub fn answer_lanes(&self) -> usize {
        match self {
            Store::Sqlite(_) => 1,
            Store::Postgres(_) => 2,
        }
    }

    /// Takes the destination named `identity` (`config::Destination::identity`) as this
    /// state's where none is recorded; another already recorded fails with `OtherDestination`.
    /// Only a state without one is written to. (A resync moves it: `mark_for_resync`.)
    pub async fn claim_destination(&self, identity: &str) -> anyhow::Result<()> {
        let mut recorded = each_async!(self, s => s.recorded_destination())?;
        if recorded.is_none() {
            recorded = each_async!(self, s => s.record_destination(identity))?;
        }
        OtherDestination::unless_same(&self.shown(), recorded, identity)
    }

    /// As `claim_destination`, changing nothing (a dry run).
    pub async fn check_destination(&self, identity: &str) -> anyhow::Result<()> {
        let recorded = each_async!(self, s => s.recorded_destination())?;
        OtherDestination::unless_same(&self.shown(), recorded, identity)
    }

    /// The state's name as an operator knows it: its file, or its database without credentials.
    pub fn shown(&self) -> String {
        each!(self, s => s.shown())
    }

    pub async fn require_current_schema(&self) -> anyhow::Result<()> {
        each_async!(self, s => s.require_current_schema())
    }

    pub async fn close(&self) {
        each!(self, s => s.close().await)
    }

    /// This store, its pass's writes checked against the leases `owner` holds, and its sending
    /// bounded by their `tenure`.
    pub fn claimed_by(&self, owner: &LeaseOwner, ttl: Duration, tenure: &Tenure) -> Store {
        same_backend!(self, s => s.claimed_by(owner, ttl, tenure))
    }

    /// Until when a pass through this store may send: what its leases (or its delivery shard's
    /// claim) last said, by this process's clock.
    pub fn tenure(&self) -> Tenure {
        each!(self, s => s.tenure())
    }

    /// Whether a big delivery is split into shards for every worker to claim (delivery's `shards`):
    /// on PostgreSQL, in a pass that holds its leases (other workers can read its rows and see
    /// its claims). A SQLite state is one process's.
    pub fn delivers_in_shards(&self) -> bool {
        matches!(self, Store::Postgres(s) if s.is_claimed())
    }

    /// This store, its delivery reading and recording only the users of the shard `claim`;
    /// `holds_pass`: this worker holds the computations' leases too.
    pub fn delivering_shard(&self, claim: &ShardClaim, holds_pass: bool, tenure: &Tenure) -> Store {
        match self {
            Store::Postgres(s) => Store::Postgres(Box::new(s.delivering_shard(claim, holds_pass, tenure))),
            Store::Sqlite(_) => self.clone(),
        }
    }

    /// Opens `shards` shards of the delivery `round` of `runs`, to `destination`.
    pub async fn open_shards(
        &self,
        round: i64,
        shards: i32,
        runs: &BTreeMap<String, i64>,
        destination: &str,
    ) -> anyhow::Result<()> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.open_shards(round, shards, runs, destination)).await,
            Store::Sqlite(_) => anyhow::bail!("a SQLite state delivers in one process"),
        }
    }

    /// Claims an open shard of a delivery to `destination`, if there is one.
    pub async fn claim_shard(&self, of: ShardsOf<'_>, destination: &str) -> anyhow::Result<Option<ShardClaim>> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.claim_shard(of, destination)).await,
            Store::Sqlite(_) => Ok(None),
        }
    }

    pub async fn renew_shard(&self, shard: &ShardClaim) -> anyhow::Result<()> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.renew_shard(shard)).await,
            Store::Sqlite(_) => Ok(()),
        }
    }

    /// Marks `shard` delivered, with its report (JSON).
    pub async fn finish_shard(&self, shard: &ShardClaim, report: &str) -> anyhow::Result<()> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.finish_shard(shard, report)).await,
            Store::Sqlite(_) => Ok(()),
        }
    }

    /// Gives `shard` back undone.
    pub async fn release_shard(&self, shard: &ShardClaim) -> anyhow::Result<()> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.release_shard(shard)).await,
            Store::Sqlite(_) => Ok(()),
        }
    }

    /// How many shards of `of` are not done yet, of deliveries to `destination` still running.
    pub async fn shards_left(&self, of: ShardsOf<'_>, destination: &str) -> anyhow::Result<u64> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.shards_left(of, destination)).await,
            Store::Sqlite(_) => Ok(0),
        }
    }

    /// The deliveries in shards still running (none on SQLite).
    pub async fn shard_progress(&self) -> anyhow::Result<Vec<ShardProgress>> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.shard_progress()).await,
            Store::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// The answers recorded on the run `run` (delivered, failed), by every worker that
    /// delivered shards of it; none on SQLite (one process, its own report).
    pub async fn run_answers(&self, run: i64) -> anyhow::Result<Option<(u64, u64)>> {
        match self {
            Store::Postgres(s) => {
                let counts = postgres::patiently(|| s.run_answers(run)).await?;
                Ok(counts.map(|(d, f)| (d as u64, f as u64)))
            }
            Store::Sqlite(_) => Ok(None),
        }
    }

    /// The reports (JSON) of the done shards of `round`.
    pub async fn shard_reports(&self, round: i64) -> anyhow::Result<Vec<String>> {
        match self {
            Store::Postgres(s) => postgres::patiently(|| s.shard_reports(round)).await,
            Store::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// The same state, recording every delivery answered and keeping it `days` (none: off).
    pub fn keeping_history(self, days: Option<u32>) -> Store {
        same_backend!(self, s => s.keeping_history(days))
    }

    pub async fn register(&self, computation: &Computation) -> anyhow::Result<bool> {
        each_async!(self, s => s.register(computation))
    }

    pub async fn snapshot_fingerprint(&self, key: &str) -> anyhow::Result<Option<(Fingerprint, u64)>> {
        each_async!(self, s => s.snapshot_fingerprint(key))
    }

    pub async fn forget_snapshot_content(&self, key: &str) -> anyhow::Result<()> {
        each_async!(self, s => s.forget_snapshot_content(key))
    }

    /// The key of every computation the state knows.
    pub async fn computation_keys(&self) -> anyhow::Result<Vec<String>> {
        each_async!(self, s => s.computation_keys())
    }

    pub async fn knows(&self, key: &str) -> anyhow::Result<bool> {
        each_async!(self, s => s.knows(key))
    }

    pub async fn mark_initial_sync_done(&self, key: &str) -> anyhow::Result<()> {
        each_async!(self, s => s.mark_initial_sync_done(key))
    }

    pub async fn start_run(&self, key: &str, trigger: Trigger, mode: Mode) -> anyhow::Result<i64> {
        each_async!(self, s => s.start_run(key, trigger, mode))
    }

    pub async fn note_diff(&self, id: i64, counts: &RunCounts) -> anyhow::Result<()> {
        each_async!(self, s => s.note_diff(id, counts))
    }

    pub async fn fail_run(&self, id: i64, error: &str) -> anyhow::Result<()> {
        each_async!(self, s => s.fail_run(id, error))
    }

    pub async fn interrupt_runs(&self, keys: &[String], why: &str) -> anyhow::Result<()> {
        each_async!(self, s => s.interrupt_runs(keys, why))
    }

    /// Closes the runs of `ends` whose computation's lease is still this store's claim's;
    /// returns the computations whose lease was lost (their runs are the new holder's).
    pub async fn finish_runs(&self, ends: &[RunEnd]) -> anyhow::Result<Vec<String>> {
        each_async!(self, s => s.finish_runs(ends))
    }

    pub async fn known_attributes(&self) -> anyhow::Result<HashSet<String>> {
        each_async!(self, s => s.known_attributes())
    }

    pub async fn remember_attribute(&self, key: &str, created_by_us: bool) -> anyhow::Result<()> {
        each_async!(self, s => s.remember_attribute(key, created_by_us))
    }

    pub async fn statuses(&self) -> anyhow::Result<Vec<ComputationStatus>> {
        each_async!(self, s => s.statuses())
    }

    pub async fn last_run(&self, key: &str) -> anyhow::Result<Option<LastRun>> {
        each_async!(self, s => s.last_run(key))
    }

    pub async fn observe(&self, owner: &str) -> anyhow::Result<Vec<ObservedComputation>> {
        each_async!(self, s => s.observe(owner))
    }

    pub async fn check_readable(&self) -> anyhow::Result<()> {
        each_async!(self, s => s.check_readable())
    }

    pub async fn acquire_lease(
        &self,
        key: &str,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> anyhow::Result<Result<(), HeldLease>> {
        each_async!(self, s => s.acquire_lease(key, owner, ttl))
    }

    /// `acquire_lease` for each of `keys`, in their order.
    pub async fn acquire_leases(
        &self,
        keys: &[String],
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> anyhow::Result<Vec<Result<(), HeldLease>>> {
        match self {
            Store::Sqlite(s) => s.acquire_leases(keys, owner, ttl).await,
            Store::Postgres(_) => {
                let mut answers = Vec::with_capacity(keys.len());
                for key in keys {
                    answers.push(self.acquire_lease(key, owner, ttl).await?);
                }
                Ok(answers)
            }
        }
    }

    /// Blocking.
    pub fn renew_leases(
        &self,
        owner: &LeaseOwner,
        keys: &[String],
        ttl: Duration,
        wait: Duration,
    ) -> anyhow::Result<()> {
        each!(self, s => s.renew_leases(owner, keys, ttl, wait))
    }

    pub async fn live_leases(&self) -> anyhow::Result<Vec<HeldLease>> {
        each_async!(self, s => s.live_leases())
    }

    pub async fn release_leases(&self, owner: &LeaseOwner, keys: &[String]) -> anyhow::Result<()> {
        each_async!(self, s => s.release_leases(owner, keys))
    }

    pub async fn settle_sending_windows(&self, key: &str) -> anyhow::Result<u64> {
        each_async!(self, s => s.settle_sending_windows(key))
    }

    /// Folds what was acknowledged of `key` since its last diff into its rows (SQLite: see
    /// migration 0017; PostgreSQL records answers in its rows directly).
    pub async fn fold_acknowledged(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => s.fold_acknowledged(key).await,
            Store::Postgres(_) => Ok(()),
        }
    }

    pub async fn has_rows(&self, key: &str) -> anyhow::Result<bool> {
        each_async!(self, s => s.has_rows(key))
    }

    /// Marks the rows of `keys` (only `user`'s when given) to be sent again; `moving_to`, in the
    /// same transaction, records the destination the state moves to.
    pub async fn mark_for_resync(
        &self,
        keys: &[String],
        user: Option<&str>,
        moving_to: Option<&str>,
    ) -> anyhow::Result<u64> {
        each_async!(self, s => s.mark_for_resync(keys, user, moving_to))
    }

    pub async fn pending_counts(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
        each_async!(self, s => s.pending_counts(keys))
    }

    pub async fn pending_count(&self, key: &str) -> anyhow::Result<u64> {
        each_async!(self, s => s.pending_count(key))
    }

    pub async fn prune_history(&self) -> anyhow::Result<()> {
        each_async!(self, s => s.prune_history())
    }

    pub async fn explain(&self, user: &str, keys: &[String], history: u32) -> anyhow::Result<Vec<UserState>> {
        each_async!(self, s => s.explain(user, keys, history))
    }

    pub async fn drop_first_sync_queue(&self, key: &str) -> anyhow::Result<()> {
        each_async!(self, s => s.drop_first_sync_queue(key))
    }

    pub async fn give_back_free_pages(&self) -> anyhow::Result<()> {
        each_async!(self, s => s.give_back_free_pages())
    }

    /// Blocking.
    pub fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        each!(self, s => s.diff_writer(key))
    }

    /// Blocking.
    pub fn first_sync_queue(&self, key: &str, changed_at: &str) -> anyhow::Result<QueueWriter> {
        each!(self, s => s.first_sync_queue(key, changed_at))
    }

    /// Blocking.
    pub fn pending_reader(&self, keys: &[String]) -> anyhow::Result<PendingReader> {
        each!(self, s => s.pending_reader(keys))
    }

    /// Blocking (or on the sending thread between polls, where `records_inline`).
    pub fn answer_writer(
        &self,
        keys: &[String],
        quarantine_after: u32,
        first_sync: &[String],
    ) -> anyhow::Result<AnswerWriter> {
        each!(self, s => s.answer_writer(keys, quarantine_after, first_sync))
    }

    /// Hands `read` the state rows of computation `key` in user order. Blocking.
    pub fn with_state_rows<T>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<StateRow>>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        each!(self, s => s.with_state_rows(key, read))
    }

    /// As `with_state_rows`, but the rows are read on a thread of their own, a chunk at a time
    /// ahead of `read`: decoding ten million rows then overlaps the merge of the snapshot's
    /// sorted runs instead of following it on the same core. Blocking.
    pub fn with_state_rows_read_ahead<T>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<StateRow>>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            let mut rows =
                crate::read_ahead::spawn(scope, |ahead| self.with_state_rows(key, |rows| ahead.send_all(rows)));
            // Returning drops `rows`, which stops a scan still running after an error.
            read(&mut rows)
        })
    }
}
