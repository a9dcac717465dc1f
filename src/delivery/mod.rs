//! Delivery: sends every pending row of the selected computations, user by user, and records
//! each answer.
//!
//! Pending rows are read in pages in user order, grouped into one update per user (all of that
//! user's pending keys), and sent with at most `concurrency` updates in flight. Answers go to
//! one committer task that records them in group transactions; an update's slot is freed only
//! once its answer is committed, so after a kill at most `concurrency` acknowledged-or-in-flight
//! updates are unrecorded, and only those can be sent twice (DESIGN §9.5).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{TryStreamExt, stream};
use tokio::sync::{mpsc, oneshot};

use crate::destination::{Destination, UserUpdate};
use crate::state::{Outcome, PendingRow, Store};

/// Pending rows read per page.
const PAGE_ROWS: usize = 2000;
/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;
/// How often a long delivery logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What delivery did for one computation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyReport {
    pub delivered: u64,
    pub failed: u64,
    /// The last error a destination gave for this computation's rows.
    pub last_error: Option<String>,
}

/// What delivery did, per computation key.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    pub per_key: BTreeMap<String, KeyReport>,
}

impl DeliveryReport {
    fn add(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            let r = self.per_key.entry(o.computation_key.clone()).or_default();
            match &o.error {
                None => r.delivered += 1,
                Some(e) => {
                    r.failed += 1;
                    r.last_error = Some(e.clone());
                }
            }
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.per_key
            .values()
            .fold((0, 0), |(d, f), r| (d + r.delivered, f + r.failed))
    }
}

/// Answers for one update, and the signal that they are committed.
struct Ack {
    outcomes: Vec<Outcome>,
    committed: oneshot::Sender<()>,
}

/// Delivers every pending row of the computations `keys` once (failed rows are retried on the
/// next pass). Errors only when the state cannot be read or written.
pub async fn deliver(
    store: &Store,
    destination: &Destination,
    keys: &[String],
) -> anyhow::Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    if keys.is_empty() {
        return Ok(report);
    }
    let concurrency = destination.concurrency();
    let (ack_tx, ack_rx) = mpsc::channel::<Ack>(concurrency);
    let committer = tokio::spawn(commit_loop(store.clone(), ack_rx));

    let started = Instant::now();
    let mut last_progress = Instant::now();
    let sent = pending_updates(store, keys)
        .map_ok(|update| send_one(destination, update, ack_tx.clone()))
        .try_buffer_unordered(concurrency)
        .try_for_each(|outcomes| {
            report.add(&outcomes);
            if last_progress.elapsed() >= PROGRESS_EVERY {
                let (delivered, failed) = report.totals();
                tracing::info!(
                    delivered,
                    failed,
                    elapsed_s = started.elapsed().as_secs(),
                    "delivery in progress"
                );
                last_progress = Instant::now();
            }
            futures::future::ready(Ok(()))
        })
        .await;
    drop(ack_tx);
    // The committer's own error explains a failed send better than the closed channel it causes.
    committer.await??;
    sent?;
    Ok(report)
}

/// Pending rows as one update per user, page by page in user order.
fn pending_updates<'a>(
    store: &'a Store,
    keys: &'a [String],
) -> impl futures::Stream<Item = anyhow::Result<UserUpdate>> + 'a {
    stream::try_unfold(String::new(), move |after| async move {
        let rows = store.pending_page(keys, &after, PAGE_ROWS).await?;
        let Some(last) = rows.last().map(|r| r.user_id.clone()) else {
            return anyhow::Ok(None);
        };
        Ok(Some((group_by_user(rows), last)))
    })
    .map_ok(|updates| stream::iter(updates.into_iter().map(Ok)))
    .try_flatten()
}

/// Consecutive rows of one user become one update.
fn group_by_user(rows: Vec<PendingRow>) -> Vec<UserUpdate> {
    let mut updates: Vec<UserUpdate> = Vec::new();
    for row in rows {
        match updates.last_mut() {
            Some(u) if u.user_id == row.user_id => {
                u.values.push((row.computation_key, row.desired))
            }
            _ => updates.push(UserUpdate {
                user_id: row.user_id,
                values: vec![(row.computation_key, row.desired)],
            }),
        }
    }
    updates
}

/// Sends one update and waits until its answer is recorded.
async fn send_one(
    destination: &Destination,
    update: UserUpdate,
    acks: mpsc::Sender<Ack>,
) -> anyhow::Result<Vec<Outcome>> {
    let result = destination.send(&update).await;
    if let Err(e) = &result {
        tracing::debug!(user_id = %update.user_id, error = %e, "delivery failed");
    }
    let error = result.err().map(|e| e.message);
    let outcomes: Vec<Outcome> = update
        .values
        .into_iter()
        .map(|(computation_key, sent)| Outcome {
            computation_key,
            user_id: update.user_id.clone(),
            sent,
            error: error.clone(),
        })
        .collect();
    let (committed, done) = oneshot::channel();
    acks.send(Ack {
        outcomes: outcomes.clone(),
        committed,
    })
    .await
    .map_err(|_| anyhow::anyhow!("the state stopped recording answers"))?;
    done.await
        .map_err(|_| anyhow::anyhow!("the state stopped recording answers"))?;
    Ok(outcomes)
}

/// Records answers as they come, as many per transaction as have arrived meanwhile.
async fn commit_loop(store: Store, mut acks: mpsc::Receiver<Ack>) -> anyhow::Result<()> {
    let mut batch: Vec<Ack> = Vec::new();
    while let Some(first) = acks.recv().await {
        batch.push(first);
        while batch.len() < MAX_ACK_BATCH {
            match acks.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Outcome> = batch
            .iter()
            .flat_map(|a| a.outcomes.iter().cloned())
            .collect();
        store.record_outcomes(&outcomes).await?;
        for a in batch.drain(..) {
            let _ = a.committed.send(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, key: &str) -> PendingRow {
        PendingRow {
            user_id: user.into(),
            computation_key: key.into(),
            desired: "true".into(),
        }
    }

    #[test]
    fn rows_of_one_user_become_one_update() {
        let updates = group_by_user(vec![row("a", "k1"), row("a", "k2"), row("b", "k1")]);
        assert_eq!(updates.len(), 2);
        assert_eq!(
            updates[0].values,
            vec![
                ("k1".to_string(), "true".to_string()),
                ("k2".to_string(), "true".to_string())
            ]
        );
        assert_eq!(updates[1].user_id, "b");
    }
}
