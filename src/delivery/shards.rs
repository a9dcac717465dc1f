//! Delivery in shards (issue 17): on PostgreSQL, the pending rows of a big delivery are split by
//! a stable hash of `user_id` into shards (`delivery_shards`), and every worker watching the pass
//! claims shards and delivers them, so that several workers share one first sync when the
//! destination, not the CPU, is the limit. A user's rows of every computation of the delivery are
//! in the same shard: Contentstack still gets one request per user.
//!
//! The worker holding the pass opens the shards after its diff committed, delivers shards
//! itself, and closes its runs once all are done, summing what each shard's worker recorded. A
//! claim lapses unless renewed, so the shard of a worker that died is claimed again; a worker
//! whose claim lapsed, or whose pass was taken over, stops at its next write (`LeaseLost`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DeliveryReport, KeyReport, Work, deliver};
use crate::config::RetryConfig;
use crate::destination::Destination;
use crate::metrics::Metrics;
use crate::progress::Stage;
use crate::state::{LeaseLost, ShardClaim, ShardsOf, Store, Tenure};
use crate::tenure::Renewal;

/// At most this many shards: each worker's reader skips the other shards' rows.
const MAX_SHARDS: u64 = 64;
/// How often the pass's holder looks whether the shards other workers claimed are done.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// How many shards a delivery of `rows` rows is cut into, for shards of about `per_shard` rows
/// (`[sync] delivery_shard_rows`: small enough that the last shards, delivered while other
/// workers have none left, take little longer than the rest).
pub fn shards_for(rows: u64, per_shard: u64) -> i32 {
    rows.div_ceil(per_shard.max(1)).clamp(1, MAX_SHARDS) as i32
}

/// What delivering shards needs, on the pass's holder or a worker helping it.
pub struct Sharding<'a> {
    /// Claimed by this worker (`Store::claimed_by`).
    pub store: &'a Store,
    pub destination: &'a Destination,
    pub policy: &'a RetryConfig,
    pub deadline: Instant,
    pub stop: &'a CancellationToken,
    pub progress: &'a Stage,
    pub metrics: &'a Metrics,
    /// How long a claim lasts unrenewed (the lease's length).
    pub ttl: Duration,
    /// Rows per shard, about.
    pub shard_rows: u64,
    /// The destination as workers compare it (`config::Destination::identity`): shards go
    /// only to workers whose config names the same.
    pub destination_id: String,
}

/// The pass's holder: opens the shards of `work`'s `rows` pending rows and delivers them with
/// whichever workers claim them. Returns what all of them did once every shard is done, or, on a
/// stop, what was done by then.
pub async fn deliver_in_shards(s: &Sharding<'_>, work: Work, rows: u64) -> anyhow::Result<DeliveryReport> {
    let Some(&round) = work.runs.values().min() else { return Ok(DeliveryReport::default()) };
    let shards = shards_for(rows, s.shard_rows);
    s.store.open_shards(round, shards, &work.runs, &s.destination_id).await?;
    tracing::info!(pass_id = round, shards, rows, "delivering in shards: other workers may claim them");
    deliver_all(s, ShardsOf::Round(round), true).await?;
    let mut report = summed(&s.store.shard_reports(round).await?)?;
    // The runs count every answer recorded, a shard given back half done included.
    for (key, run) in &work.runs {
        if let Some((delivered, failed)) = s.store.run_answers(*run).await? {
            let r = report.key(key);
            (r.delivered, r.failed) = (delivered, failed);
        }
    }
    Ok(report)
}

/// A worker taking over the passes of `keys` from one that died while other workers delivered
/// shards of it: lets them finish, and delivers the shards left (the dead worker's, once its
/// claim lapses), before its own pass begins. Its pass's start then closes the dead worker's
/// run; were it closed first, every worker delivering a shard would stop at its next write, and
/// re-send what it had in flight.
pub async fn finish_deliveries_left(s: &Sharding<'_>, keys: &[String]) -> anyhow::Result<()> {
    for key in keys {
        if s.store.shards_left(ShardsOf::Computation(key), &s.destination_id).await? > 0 {
            tracing::info!(computation = %key, "finishing the shards of a pass taken over");
            deliver_all(s, ShardsOf::Computation(key), false).await?;
        }
    }
    Ok(())
}

/// Delivers every shard of `of` this worker can claim until every one is done (by whichever
/// worker) or a stop; `holds_pass`: this worker holds the leases of all of their computations.
async fn deliver_all(s: &Sharding<'_>, of: ShardsOf<'_>, holds_pass: bool) -> anyhow::Result<()> {
    while !s.stop.is_cancelled() {
        if let Some(claim) = s.store.claim_shard(of, &s.destination_id).await? {
            deliver_shard(s, &claim, holds_pass).await?;
            continue;
        }
        if s.store.shards_left(of, &s.destination_id).await? == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(WAIT_POLL) => {}
            _ = s.stop.cancelled() => {}
        }
    }
    Ok(())
}

/// A worker helping others: delivers the shards it can claim of any delivery whose computations
/// it knows (`known`: its config's) and in which no pass of its own takes part (`busy`). Returns
/// how many it delivered.
pub async fn help_any(s: &Sharding<'_>, known: &[String], busy: impl Fn(&str) -> bool) -> anyhow::Result<u64> {
    let (mut skipped, mut delivered) = (Vec::new(), 0);
    while !s.stop.is_cancelled() {
        let Some(claim) = s.store.claim_shard(ShardsOf::Any { except: &skipped }, &s.destination_id).await? else {
            break;
        };
        if claim.runs.keys().any(|k| !known.contains(k) || busy(k)) {
            s.store.release_shard(&claim).await?;
            skipped.push(claim.round);
            continue;
        }
        tracing::info!(pass_id = claim.round, shard = claim.shard, shards = claim.shards, "delivering a shard");
        deliver_shard(s, &claim, false).await?;
        delivered += 1;
    }
    Ok(delivered)
}

/// Delivers the users of one claimed shard, renewing the claim meanwhile, and marks it done;
/// on a stop gives it back undone, for another worker to claim at once.
async fn deliver_shard(s: &Sharding<'_>, claim: &ShardClaim, holds_pass: bool) -> anyhow::Result<()> {
    // Renewed once first: its tenure then counts from a renewal this process saw.
    let asked = std::time::Instant::now();
    if let Err(e) = s.store.renew_shard(claim).await {
        let _ = s.store.release_shard(claim).await;
        return Err(e);
    }
    // Past its tenure, a sender renews the claim there and then (on a blocking thread, while
    // this runtime's own thread drives the connection).
    let renewal: Renewal = {
        let (store, claim, runtime) = (s.store.clone(), claim.clone(), tokio::runtime::Handle::current());
        crate::state::renewal(move || runtime.block_on(store.renew_shard(&claim)))
    };
    let tenure = Tenure::renewable(asked, s.ttl, Some(renewal));
    let store = s.store.delivering_shard(claim, holds_pass, &tenure);
    let stop = s.stop.child_token();
    let heartbeat = tokio::spawn(renew(store.clone(), claim.clone(), (s.ttl, tenure), stop.clone()));
    let work = Work {
        keys: claim.runs.keys().cloned().collect(),
        runs: claim.runs.clone(),
        beside_other_passes: true,
        counters: claim.runs.keys().map(|k| (k.clone(), s.metrics.delivery(k))).collect(),
        ..Default::default()
    };
    let delivered = deliver(&store, s.destination, work, s.policy, s.deadline, &stop, s.progress).await;
    heartbeat.abort();
    match delivered {
        Ok(report) if !stop.is_cancelled() => store.finish_shard(claim, &serde_json::to_string(&report.per_key)?).await,
        Ok(_) if !s.stop.is_cancelled() => Err(LeaseLost { keys: format!("delivery shard {}", claim.shard) }.into()),
        Ok(_) => store.release_shard(claim).await,
        Err(e) => {
            let _ = store.release_shard(claim).await;
            Err(e)
        }
    }
}

/// Renews the claim of `shard` every third of `ttl`, extending `tenure`; cancels `lost` when
/// it is gone.
async fn renew(store: Store, shard: ShardClaim, (ttl, tenure): (Duration, Tenure), lost: CancellationToken) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let asked = std::time::Instant::now();
        match store.renew_shard(&shard).await {
            Ok(()) => tenure.renewed(asked, ttl),
            Err(e) if e.is::<LeaseLost>() => {
                tracing::error!(error = %e, "delivery shard lost: stopping its delivery");
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot renew the claim of a delivery shard"),
        }
    }
}

/// The shards' reports (JSON, per computation) added up.
fn summed(reports: &[String]) -> anyhow::Result<DeliveryReport> {
    let mut total = DeliveryReport::default();
    for report in reports {
        let per_key: BTreeMap<String, KeyReport> = serde_json::from_str(report)?;
        for (key, r) in per_key {
            let t = total.key(&key);
            t.delivered += r.delivered;
            t.failed += r.failed;
            t.retried += r.retried;
            t.quarantined += r.quarantined;
            t.last_error = r.last_error.or(t.last_error.take());
            t.stopped = r.stopped.or(t.stopped.take());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_cut_into_shards_of_about_the_rows_set_up_to_sixty_four() {
        assert_eq!(shards_for(0, 10_000), 1);
        assert_eq!(shards_for(10_000, 10_000), 1);
        assert_eq!(shards_for(300_000, 10_000), 30);
        assert_eq!(shards_for(10_000_000, 10_000), 64);
        assert_eq!(shards_for(400, 50), 8);
    }

    #[test]
    fn shard_reports_add_up_per_computation() {
        let one = r#"{"a":{"delivered":3,"failed":1,"retried":2,"quarantined":0,"last_error":"503","stopped":null}}"#;
        let two = r#"{"a":{"delivered":4,"failed":0,"retried":0,"quarantined":1,"last_error":null,"stopped":null},
                      "b":{"delivered":5,"failed":0,"retried":0,"quarantined":0,"last_error":null,"stopped":null}}"#;
        let total = summed(&[one.into(), two.into()]).unwrap();
        let a = &total.per_key["a"];
        assert_eq!((a.delivered, a.failed, a.retried, a.quarantined), (7, 1, 2, 1));
        assert_eq!(a.last_error.as_deref(), Some("503"));
        assert_eq!(total.per_key["b"].delivered, 5);
    }
}
