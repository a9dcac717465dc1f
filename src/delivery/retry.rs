//! Retrying within a pass: exponential backoff with full jitter, at least as long as the
//! destination's `Retry-After`, bounded by `max_retries` and the pass's time budget.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::destination::{DeliveryError, Destination, Failure, PendingValue, UserUpdate};
use crate::state::Outcome;

/// The wait before retry number `attempt` (0-based): a random share of
/// `min(max_delay, base_delay * 2^attempt)`, but never less than `retry_after`.
pub fn backoff(policy: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = policy.base_delay.saturating_mul(1u32 << attempt.min(20)).min(policy.max_delay);
    ceiling.mul_f64(fastrand::f64()).max(retry_after.unwrap_or_default())
}

/// Sends one call, re-sending the rows whose failure is transient. Returns an outcome per row
/// and the computation key of each row re-sent (once per retry).
pub async fn send_with_retries(
    destination: &Destination,
    policy: &RetryConfig,
    deadline: Instant,
    stop: &CancellationToken,
    call: Vec<UserUpdate>,
) -> (Vec<Outcome>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut retried = Vec::new();
    let mut todo = call;
    let mut attempt = 0;
    loop {
        let mut results = destination.send(&todo).await.into_iter();
        let mut again: Vec<(String, PendingValue, DeliveryError)> = Vec::new();
        for update in todo {
            for value in update.values {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err(DeliveryError::permanent("the destination gave no answer for this row")));
                match result {
                    Ok(()) => outcomes.push(outcome(&update.user_id, value, None)),
                    Err(e) if e.failure == Failure::Permanent => {
                        outcomes.push(outcome(&update.user_id, value, Some(e.message)))
                    }
                    Err(e) => again.push((update.user_id.clone(), value, e)),
                }
            }
        }
        if again.is_empty() {
            break;
        }
        let retry_after = again.iter().filter_map(|(_, _, e)| e.retry_after).max();
        let delay = backoff(policy, attempt, retry_after);
        if attempt >= policy.max_retries || Instant::now() + delay > deadline || stop.is_cancelled() {
            let why = if stop.is_cancelled() {
                "shutting down"
            } else if attempt >= policy.max_retries {
                "retries exhausted"
            } else {
                "retry budget of the pass spent"
            };
            for (user, value, e) in again {
                outcomes.push(outcome(&user, value, Some(format!("{} ({why} after {attempt} retries)", e.message))));
            }
            break;
        }
        tracing::debug!(rows = again.len(), delay_ms = delay.as_millis() as u64, attempt, "retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
        retried.extend(again.iter().map(|(_, v, _)| v.key.clone()));
        todo = regroup(again);
    }
    (outcomes, retried)
}

fn outcome(user_id: &str, value: PendingValue, error: Option<String>) -> Outcome {
    Outcome {
        computation_key: value.key,
        user_id: user_id.to_string(),
        sent: value.value,
        changed_at: value.changed_at,
        error,
    }
}

/// Rows to retry, back into one update per user (they arrive grouped by user).
fn regroup(rows: Vec<(String, PendingValue, DeliveryError)>) -> Vec<UserUpdate> {
    let mut updates: Vec<UserUpdate> = Vec::new();
    for (user_id, value, _) in rows {
        match updates.last_mut() {
            Some(u) if u.user_id == user_id => u.values.push(value),
            _ => updates.push(UserUpdate { user_id, values: vec![value] }),
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            budget: Duration::from_secs(60),
            quarantine_after: 10,
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_ceiling() {
        let p = policy();
        for attempt in 0..10 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
            for _ in 0..100 {
                assert!(backoff(&p, attempt, None) <= ceiling);
            }
        }
        // Full jitter spreads retries: some land early in the window.
        assert!((0..100).any(|_| backoff(&p, 4, None) < Duration::from_millis(800)));
    }

    #[test]
    fn backoff_honours_retry_after() {
        let p = policy();
        for _ in 0..100 {
            assert!(backoff(&p, 0, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        }
    }
}
