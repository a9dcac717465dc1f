//! Delivery shards (issue 17): on PostgreSQL a big delivery's pending rows are split by a
//! stable hash of `user_id`, and every worker watching the pass claims shards and delivers
//! them (delivery's `shards` module). What a worker holds of them, in no driver's types.

use std::collections::BTreeMap;

/// A shard of a delivery that this worker claimed: until its claim lapses (renewed by
/// `Store::renew_shard`), only this worker sends that shard's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardClaim {
    /// The delivery's name: the first of its runs.
    pub round: i64,
    pub shard: i32,
    pub shards: i32,
    /// The computations delivered, each with the running `sync_runs` row its answers count on.
    pub runs: BTreeMap<String, i64>,
}

/// Which open shards a worker looks for.
#[derive(Debug, Clone, Copy)]
pub enum ShardsOf<'a> {
    /// Those of the delivery this worker's pass opened.
    Round(i64),
    /// Those of any delivery of this computation (a pass another worker holds).
    Computation(&'a str),
    /// Those of any delivery but the rounds `except` (an idle worker's).
    Any { except: &'a [i64] },
}

/// A delivery in shards still running, for `status`: how far, and which workers deliver it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardProgress {
    /// The computations it delivers.
    #[serde(skip)]
    pub keys: Vec<String>,
    pub done: i64,
    pub total: i64,
    /// "pid P on HOST" of each worker holding a live claim.
    pub workers: Vec<String>,
}
