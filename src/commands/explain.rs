//! `explain --user ID [--audience KEY]... [--json]`: where one user stands in each selected
//! computation, read from the state without changing it (it works while the daemon runs).

use std::process::ExitCode;

use serde::Serialize;

use super::answer;
use crate::config::{Computation, Config, Kind};
use crate::state::{Delivery, DiffPass, Queued, Store, UserState};

/// Deliveries of the user shown per computation, newest first.
const HISTORY_SHOWN: u32 = 10;

/// `explain --json`; field names are stable.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub user_id: String,
    pub state_file: String,
    /// False when there is no state file yet (nothing was ever synced).
    pub state_exists: bool,
    /// `[state] keep_history_days`: null when deliveries are not recorded.
    pub keep_history_days: Option<u32>,
    pub computations: Vec<InComputation>,
}

/// The user in one computation. Values are JSON text, as in the state.
#[derive(Debug, Serialize)]
pub struct InComputation {
    pub key: String,
    pub name: String,
    pub kind: &'static str,
    /// A member (a trait: holds a value other than null) as of the last diff.
    pub member: bool,
    /// synced | pending | quarantined | queued (a first sync still has it to send) | none.
    pub delivery: &'static str,
    pub last_diff: Option<DiffPass>,
    pub desired: Option<String>,
    pub updated_at: Option<String>,
    pub synced: Option<String>,
    pub synced_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub quarantined_at: Option<String>,
    pub first_sent_at: Option<String>,
    pub first_sync_queued: Option<Queued>,
    /// Newest first, at most ten.
    pub history: Vec<Delivery>,
}

impl InComputation {
    fn new(c: &Computation, state: UserState) -> InComputation {
        let UserState { last_diff, row, queued: first_sync_queued, history } = state;
        let value = row.as_ref().map(|r| &r.desired).or(first_sync_queued.as_ref().map(|q| &q.value));
        let member = value.is_some_and(|v| match c.kind {
            Kind::Audience => v == "true",
            Kind::ComputedTrait => v != "null",
        });
        let delivery = match (&row, &first_sync_queued) {
            (Some(r), _) if r.synced.as_ref() == Some(&r.desired) => "synced",
            (Some(r), _) if r.quarantined_at.is_some() => "quarantined",
            (Some(_), _) => "pending",
            (None, Some(_)) => "queued",
            (None, None) => "none",
        };
        let r = row.as_ref();
        InComputation {
            key: c.key.clone(),
            name: c.name.clone(),
            kind: c.kind.as_str(),
            member,
            delivery,
            last_diff,
            desired: r.map(|r| r.desired.clone()),
            updated_at: r.map(|r| r.updated_at.clone()),
            synced: r.and_then(|r| r.synced.clone()),
            synced_at: r.and_then(|r| r.synced_at.clone()),
            attempts: r.map_or(0, |r| r.attempts),
            last_error: r.and_then(|r| r.last_error.clone()),
            quarantined_at: r.and_then(|r| r.quarantined_at.clone()),
            first_sent_at: r.and_then(|r| r.first_sent_at.clone()),
            first_sync_queued,
            history,
        }
    }
}

pub async fn explanation(config: &Config, user: &str, audiences: &[String]) -> anyhow::Result<Explanation> {
    let selected = config.select(audiences)?;
    let keys: Vec<String> = selected.iter().map(|c| c.key.clone()).collect();
    let store = Store::open_read_only(&config.state).await?;
    let state_exists = store.is_some();
    let states = match &store {
        Some(s) => s.explain(user, &keys, HISTORY_SHOWN).await?,
        None => vec![UserState::default(); keys.len()],
    };
    if let Some(s) = store {
        s.close().await;
    }
    Ok(Explanation {
        user_id: user.to_string(),
        state_file: config.state.describe(),
        state_exists,
        keep_history_days: config.keep_history_days,
        computations: selected.iter().zip(states).map(|(c, s)| InComputation::new(c, s)).collect(),
    })
}

pub async fn explain(config: &Config, user: &str, audiences: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let e = explanation(config, user, audiences).await?;
    if json {
        answer(&format!("{}\n", serde_json::to_string_pretty(&e)?));
    } else {
        answer(&text(&e));
    }
    Ok(ExitCode::SUCCESS)
}

/// The explanation for people.
fn text(e: &Explanation) -> String {
    let mut out = format!("user {:?}\n", e.user_id);
    if !e.state_exists {
        out +=
            &format!("no state file at {} yet: nothing was synced, so the user is in no computation\n", e.state_file);
        return out;
    }
    for c in &e.computations {
        out += &format!("\n{} ({} {:?}): {}\n", c.key, c.kind.replace('_', " "), c.name, headline(c));
        let line = |label: &str, what: String| format!("  {label:<13} {what}\n");
        out += &line(
            "last diff",
            match &c.last_diff {
                Some(DiffPass { run_id, run }) => format!(
                    "pass {run_id} ({}, {}), started {}{}",
                    run.mode,
                    run.status,
                    run.started_at,
                    run.finished_at.as_ref().map(|f| format!(", finished {f}")).unwrap_or_default()
                ),
                None => "none recorded yet".into(),
            },
        );
        if let (Some(desired), Some(at)) = (&c.desired, &c.updated_at) {
            out += &line("desired", format!("{desired}, since {at}"));
            out += &line(
                "acknowledged",
                match (&c.synced, &c.synced_at) {
                    (Some(v), Some(at)) => format!("{v}, at {at}"),
                    (Some(v), None) => v.clone(),
                    (None, _) => "nothing yet".into(),
                },
            );
        }
        if c.attempts > 0 || c.last_error.is_some() {
            let error = c.last_error.as_deref().unwrap_or("-");
            out += &line("attempts", format!("{} failed, last error: {error}", c.attempts));
        }
        if let Some(at) = &c.quarantined_at {
            out += &line("quarantined", format!("since {at}: not sent again until its value changes or a resync"));
        }
        if let Some(at) = &c.first_sent_at {
            out += &line("first sent", format!("{at} (may have reached the destination unacknowledged)"));
        }
        if let Some(q) = &c.first_sync_queued {
            out += &line("first sync", format!("still to send {} (queued {})", q.value, q.queued_at));
        }
        out += &history(c, e.keep_history_days);
    }
    out
}

/// What the state says of the user, in a few words.
fn headline(c: &InComputation) -> String {
    let member = match (c.kind, c.member) {
        ("audience", true) => "member".to_string(),
        ("audience", false) => "not a member".to_string(),
        (_, true) => format!(
            "value {}",
            c.desired.as_ref().or(c.first_sync_queued.as_ref().map(|q| &q.value)).map_or("?", |v| v)
        ),
        (_, false) => "no value".to_string(),
    };
    let delivery = match c.delivery {
        "synced" => "acknowledged by the destination",
        "pending" if c.attempts > 0 => "pending after failures",
        "pending" => "pending",
        "quarantined" => "quarantined",
        "queued" => "still to send in a first sync",
        _ => "not in the state (never a member, or left before anything was sent)",
    };
    format!("{member}; {delivery}")
}

fn history(c: &InComputation, keep_history_days: Option<u32>) -> String {
    if c.history.is_empty() {
        let none = match keep_history_days {
            Some(days) => format!("no delivery recorded in the last {days} days"),
            None => "not kept (set [state] keep_history_days)".into(),
        };
        return format!("  {:<13} {none}\n", "history");
    }
    let mut out = format!("  history (newest first, at most {HISTORY_SHOWN}):\n");
    for d in &c.history {
        let run = d.run_id.map(|id| format!("pass {id}")).unwrap_or_else(|| "pass ?".into());
        let answer = match &d.error {
            None => "acknowledged".to_string(),
            Some(e) => format!("failed: {e}"),
        };
        out += &format!("    {}  {run}  sent {}  {answer}\n", d.answered_at, d.value);
    }
    out
}
