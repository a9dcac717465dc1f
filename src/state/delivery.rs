//! What delivery reads and writes, whatever the backend: pages of pending rows, and the
//! answers recorded as they come. Each backend opens its own connection for them (their
//! callers are blocking threads, or the sending thread between polls).

use std::collections::BTreeMap;

use crate::change::{Outcome, PendingRow};

/// A backend's reads of pending pages of a fixed set of computations. Blocking.
pub trait PendingPages: Send {
    /// Up to about `limit` pending rows for users after `after`, in user order; a page never
    /// splits a user (the rows of its last user are all there), and a user's rows come in
    /// computation key order.
    fn page(&mut self, after: &str, limit: usize) -> anyhow::Result<Vec<PendingRow>>;
}

/// Delivery's reader of pending pages.
pub struct PendingReader(Box<dyn PendingPages>);

impl PendingReader {
    pub fn new(pages: Box<dyn PendingPages>) -> PendingReader {
        PendingReader(pages)
    }

    /// See `PendingPages::page`.
    pub fn page(&mut self, after: &str, limit: usize) -> anyhow::Result<Vec<PendingRow>> {
        self.0.page(after, limit)
    }
}

/// What a backend read for a page (up to `limit` rows after a user), made a page of whole
/// users: when the limit was reached, the last user's rows may go on past it, so they are left
/// to the next page, or, when one user filled it all, read whole by `one_user`. A user's rows
/// come in computation key order.
pub(crate) fn whole_users(
    mut rows: Vec<PendingRow>,
    limit: usize,
    one_user: impl FnOnce(&str) -> anyhow::Result<Vec<PendingRow>>,
) -> anyhow::Result<Vec<PendingRow>> {
    if rows.len() == limit
        && let Some(last) = rows.last().map(|r| r.user_id.clone())
    {
        let first_of_last = rows.iter().position(|r| r.user_id == last).unwrap_or(0);
        if first_of_last > 0 {
            rows.truncate(first_of_last);
        } else {
            rows = one_user(&last)?;
        }
    }
    for user in rows.chunk_by_mut(|a, b| a.user_id == b.user_id) {
        user.sort_by(|a, b| a.value.key.cmp(&b.value.key));
    }
    Ok(rows)
}

/// A backend's recording of answers; used from one thread at a time. Every transaction checks
/// that the leases of the computations written for are still this pass's.
pub trait AnswerRecords: Send {
    /// Counts the answers of each computation on its running `sync_runs` row (`runs`). A backend
    /// may also read there how to record them (SQLite: a delta's acknowledgements apart, those of
    /// an initial pass or a resync in place).
    fn count_on(&mut self, runs: BTreeMap<String, i64>) -> anyhow::Result<()>;
    /// Notes, durably and before they are sent, that users in (`after`, `last`] of the
    /// computations `keys` may reach the destination (one `sending_windows` row each); returns
    /// the rows, for `record` to drop once answered.
    fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>>;
    /// Records the answers of `calls` in one transaction, and drops the `sending_windows` rows
    /// `answered`. An acknowledged row is marked synced with exactly the value sent (if
    /// `desired` changed meanwhile, the row stays pending); a failed one keeps its pending
    /// value, counts the attempt and is marked `first_sent_at`. Returns the computation key of
    /// each row quarantined now.
    fn record(&mut self, calls: &[Vec<Outcome>], answered: &[i64]) -> anyhow::Result<Vec<String>>;
    /// Every member of the first syncs written for in (`after`, `through`] has its row now
    /// (answered): their queue runs are no longer needed to find them, and may give back their
    /// space while the sync goes on. A transaction of its own.
    fn answered_through(&mut self, _after: &str, _through: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// Housekeeping between transactions (SQLite's log); never an error worth stopping for.
    fn catch_up(&self) {}
}

/// Delivery's writer of answers.
pub struct AnswerWriter(Box<dyn AnswerRecords>);

impl AnswerWriter {
    pub fn new(records: Box<dyn AnswerRecords>) -> AnswerWriter {
        AnswerWriter(records)
    }

    /// Counts the answers recorded for each computation on its running `sync_runs` row, in the
    /// transaction that records them: however the pass ends (a failure, a kill), its row says
    /// what it delivered.
    pub fn counting_on(mut self, runs: BTreeMap<String, i64>) -> anyhow::Result<AnswerWriter> {
        self.0.count_on(runs)?;
        Ok(self)
    }

    /// See `AnswerRecords::note_window`.
    pub fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
        self.0.note_window(keys, after, last)
    }

    /// See `AnswerRecords::record`.
    pub fn record(&mut self, calls: &[Vec<Outcome>], answered: &[i64]) -> anyhow::Result<Vec<String>> {
        self.0.record(calls, answered)
    }

    /// See `AnswerRecords::answered_through`.
    pub fn answered_through(&mut self, after: &str, through: &str) -> anyhow::Result<()> {
        self.0.answered_through(after, through)
    }

    /// See `AnswerRecords::catch_up`.
    pub fn catch_up(&self) {
        self.0.catch_up()
    }
}
