//! Retrying within a pass: exponential backoff with full jitter, at least as long as the
//! destination's `Retry-After`, bounded by `max_retries` and the pass's time budget.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::change::{Outcome, PendingRow};
use crate::config::RetryConfig;
use crate::destination::{DeliveryError, Destination, Failure, Patience, RowResults, UserUpdate};
use crate::http::{Backoff, beyond_budget};
use crate::tenure::Tenure;

/// Ends a delivery early, saying why: once the destination is paused past the pass's retry
/// budget, nothing more can be sent in this pass. A child of the shutdown token, so that
/// shutdown ends it too, without a reason (shutting down is not the pass's failure).
pub struct Halt {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Halt {
    pub fn new(stop: &CancellationToken) -> Halt {
        Halt { token: stop.child_token(), reason: Mutex::new(None) }
    }

    /// Cancelled on shutdown or once delivery is halted.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Halts delivery because of `reason`, unless it has stopped already.
    fn halt(&self, reason: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if !self.token.is_cancelled() {
            *r = Some(reason.to_string());
            self.token.cancel();
        }
    }

    /// Why delivery was halted, unless it was not (or only by shutdown).
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why a row is not retried once the token is cancelled.
    fn why_stopped(&self) -> String {
        match self.reason() {
            Some(reason) => format!("delivery stopped: {reason}"),
            None => "shutting down".to_string(),
        }
    }
}

/// A row to retry, and the error it got.
type Again = (PendingRow, DeliveryError);

/// Sends one call, re-sending the rows whose failure is transient. Returns an outcome per row
/// sent and the computation key of each row re-sent (once per retry); a row never sent (delivery
/// halted before its first turn) has no outcome and stays pending as it was.
/// Every wait, the pacer's and the retries', ends at once when `halt` is cancelled; nothing is
/// sent once `tenure` has lapsed.
pub async fn send_with_retries(
    destination: &Destination,
    policy: &RetryConfig,
    deadline: Instant,
    halt: &Halt,
    tenure: &Tenure,
    call: Vec<UserUpdate>,
) -> (Vec<Outcome>, Vec<String>) {
    let patience = Patience { deadline, stop: halt.token(), tenure };
    let mut outcomes = Vec::new();
    let mut retried = Vec::new();
    let mut todo = call;
    let mut attempt = 0;
    let mut last_errors = LastErrors::new();
    loop {
        let results = destination.send(&todo, &patience).await;
        let again = sort_answers(todo, results, &last_errors, halt, &mut outcomes);
        if again.is_empty() {
            break;
        }
        let retry_after = again.iter().filter_map(|(_, e)| e.retry_after).max();
        let delay = Backoff::full_jitter(policy.base_delay, policy.max_delay).delay(attempt, retry_after);
        let why_not = why_not_retry(policy, attempt, delay, &again, deadline, halt);
        let why_not = match why_not {
            None if waited(delay, halt).await => None,
            None => Some(halt.why_stopped()),
            why => why,
        };
        if let Some(why) = why_not {
            for (row, e) in again {
                outcomes.push(row.answered(Some(format!("{} ({why} after {attempt} retries)", e.message))));
            }
            break;
        }
        tracing::debug!(rows = again.len(), delay_ms = delay.as_millis() as u64, attempt, "retrying");
        attempt += 1;
        retried.extend(again.iter().map(|(row, _)| row.value.key.clone()));
        last_errors =
            again.iter().map(|(row, e)| (row_id(row), format!("{} (retry {attempt} not sent", e.message))).collect();
        todo = super::group_by_user(again.into_iter().map(|(row, _)| row));
    }
    (outcomes, retried)
}

/// The rows of a retry, by (user, computation), and the error their last attempt got, worded
/// for a retry that never went out.
type LastErrors = std::collections::HashMap<(String, String), String>;

fn row_id(row: &PendingRow) -> (String, String) {
    (row.user_id.clone(), row.value.key.clone())
}

/// Answers of `todo` into `outcomes` (acknowledged or permanent), the rows to retry (returned),
/// and the rows the pacer refused, after halting delivery with its reason. A refused retry (a
/// row of `last_errors`) is a failed outcome with its last error: that attempt may have landed,
/// and the state must know the row was sent. A row refused on its first attempt was never sent
/// and gets none: it stays pending as it was.
fn sort_answers(
    todo: Vec<UserUpdate>,
    results: RowResults,
    last_errors: &LastErrors,
    halt: &Halt,
    outcomes: &mut Vec<Outcome>,
) -> Vec<Again> {
    let mut results = results.into_iter();
    let mut again = Vec::new();
    for update in todo {
        for value in update.values {
            let result = results
                .next()
                .unwrap_or_else(|| Err(DeliveryError::permanent("the destination gave no answer for this row")));
            let row = PendingRow { user_id: update.user_id.clone(), value };
            match result {
                Ok(()) => outcomes.push(row.answered(None)),
                Err(e) if e.failure == Failure::Permanent => outcomes.push(row.answered(Some(e.message))),
                Err(e) if e.failure == Failure::Unsent => {
                    halt.halt(&e.message);
                    if let Some(last) = last_errors.get(&row_id(&row)) {
                        outcomes.push(row.answered(Some(format!("{last}: {})", e.message))));
                    }
                }
                Err(e) => again.push((row, e)),
            }
        }
    }
    again
}

/// Why the rows of `again` are not retried after waiting `delay`, if they are not. A 429 whose
/// `Retry-After` outlasts the budget has paused the whole destination past it: delivery halts.
fn why_not_retry(
    policy: &RetryConfig,
    attempt: u32,
    delay: Duration,
    again: &[Again],
    deadline: Instant,
    halt: &Halt,
) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let throttled_for =
        again.iter().filter(|(_, e)| e.failure == Failure::Throttled).filter_map(|(_, e)| e.retry_after).max();
    if halt.token().is_cancelled() {
        return Some(halt.why_stopped());
    }
    if let Some(asked) = throttled_for.filter(|asked| *asked > left) {
        let why = beyond_budget(asked, left);
        halt.halt(&why);
        return Some(why);
    }
    if attempt >= policy.max_retries {
        return Some("retries exhausted".to_string());
    }
    (delay > left).then(|| "retry budget of the pass spent".to_string())
}

/// Waits `delay`, or less if `halt` is cancelled meanwhile: whether it waited it all.
async fn waited(delay: Duration, halt: &Halt) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = halt.token().cancelled() => false,
    }
}
