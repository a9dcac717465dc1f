//! `status [--json]`: one row per configured computation, then one per computation the state
//! holds that config.toml no longer names; read from the state without changing it.

use std::process::ExitCode;

use serde::Serialize;

use super::answer;
use crate::config::{Config, schedule};
use crate::state::{LastRun, LeaseOwner, RunStatus, ShardProgress, Store, holder_gone};

/// One computation in `status --json`; field names are stable.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    pub key: String,
    pub name: String,
    pub kind: String,
    /// Whether config.toml names it: one it no longer names stays in the state, synced no more.
    pub configured: bool,
    pub members: i64,
    pub pending: i64,
    pub failed: i64,
    pub quarantined: i64,
    pub initial_sync_done_at: Option<String>,
    pub last_pass: Option<LastRun>,
    pub next_pass: Option<String>,
    /// The worker running a pass of it now (its live lease): "pid P on HOST".
    pub held_by: Option<String>,
    /// Its delivery in shards, when one runs (PostgreSQL): shards done of all, and the workers
    /// delivering one now.
    pub shards: Option<ShardProgress>,
}

pub async fn rows(config: &Config) -> anyhow::Result<Vec<StatusRow>> {
    let store = Store::open_read_only(&config.state).await?;
    let Some(s) = &store else {
        return Ok(config.computations.iter().map(|c| row(c, None, None, None, None)).collect());
    };
    // Leases read before and after the runs: a pass ending or starting meanwhile is held in
    // one of the two reads, so a pass read as running is never shown stopped for that.
    let before = s.live_leases().await?;
    let (known, shards) = (s.statuses().await?, s.shard_progress().await?);
    let mut last_passes = Vec::new();
    for c in &config.computations {
        last_passes.push(s.last_run(&c.key).await?);
    }
    let mut leases = s.live_leases().await?;
    leases.extend(before);
    // A killed holder's lease lives on until it expires or the next pass takes it over.
    let this = LeaseOwner::this_process();
    leases.retain(|l| !holder_gone(l, &this));
    let rows = config.computations.iter().zip(last_passes).map(|(c, last_pass)| {
        let state = known.iter().find(|s| s.key == c.key);
        let held_by =
            leases.iter().find(|l| l.computation_key == c.key).map(|l| format!("pid {} on {}", l.pid, l.host));
        row(c, state, last_pass, held_by, shards.iter().find(|s| s.keys.contains(&c.key)).cloned())
    });
    let mut rows: Vec<StatusRow> = rows.collect();
    for state in known.iter().filter(|s| !config.names(&s.key)) {
        rows.push(unconfigured(state, s.last_run(&state.key).await?));
    }
    Ok(rows)
}

/// The row of a computation in the state that config.toml no longer names.
fn unconfigured(state: &crate::state::ComputationStatus, last_pass: Option<LastRun>) -> StatusRow {
    StatusRow {
        key: state.key.clone(),
        name: state.name.clone(),
        kind: state.kind.clone(),
        configured: false,
        members: state.members,
        pending: state.pending,
        failed: state.failed,
        quarantined: state.quarantined,
        initial_sync_done_at: state.initial_sync_done_at.clone(),
        last_pass,
        next_pass: None,
        held_by: None,
        shards: None,
    }
}

/// One computation's row from what the state says of it.
fn row(
    c: &crate::config::Computation,
    state: Option<&crate::state::ComputationStatus>,
    last_pass: Option<LastRun>,
    held_by: Option<String>,
    shards: Option<ShardProgress>,
) -> StatusRow {
    let now = chrono::Utc::now();
    StatusRow {
        key: c.key.clone(),
        name: c.name.clone(),
        kind: c.kind.as_str().into(),
        configured: true,
        members: state.map_or(0, |s| s.members),
        pending: state.map_or(0, |s| s.pending),
        failed: state.map_or(0, |s| s.failed),
        quarantined: state.map_or(0, |s| s.quarantined),
        initial_sync_done_at: state.and_then(|s| s.initial_sync_done_at.clone()),
        last_pass,
        next_pass: schedule::next_after(&c.cron, now).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        held_by,
        shards,
    }
}

/// The HELD BY cell: the pass's holder and, during a delivery in shards, how far it is and who
/// delivers it.
fn held_by(r: &StatusRow) -> String {
    let shards =
        r.shards.as_ref().map(|s| format!("shards {}/{} done, delivering: {}", s.done, s.total, s.workers.join(", ")));
    [r.held_by.clone(), shards].into_iter().flatten().collect::<Vec<_>>().join("; ")
}

/// A pass recorded as running that no live process holds: killed, or its machine gone.
fn orphaned(p: &LastRun, r: &StatusRow) -> bool {
    p.status == RunStatus::Running && r.held_by.is_none()
}

fn shown_status(p: &LastRun, r: &StatusRow) -> String {
    match orphaned(p, r) {
        true => "stopped".into(),
        false => p.status.to_string(),
    }
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let rows = rows(config).await?;
    if json {
        answer(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<[String; 9]> = rows.iter().map(cells).collect();
    let header = ["KEY", "KIND", "MEMBERS", "PENDING", "FAILED", "QUARANTINED", "LAST PASS", "NEXT PASS", "HELD BY"]
        .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&table) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    answer(&text);
    Ok(ExitCode::SUCCESS)
}

/// The cells of `r`'s row in the table `status` prints.
fn cells(r: &StatusRow) -> [String; 9] {
    let last = match &r.last_pass {
        Some(p) => format!(
            "{} {} {} (+{} -{} ~{}, {} delivered, {} failed){}",
            p.mode,
            shown_status(p, r),
            p.finished_at.as_deref().unwrap_or(&p.started_at),
            p.entered,
            p.exited,
            p.changed,
            p.delivered,
            p.failed,
            if orphaned(p, r) { "; no process holds it: the next pass resumes it" } else { "" }
        ),
        None => "never".into(),
    };
    [
        r.key.clone(),
        r.kind.clone(),
        r.members.to_string(),
        r.pending.to_string(),
        r.failed.to_string(),
        r.quarantined.to_string(),
        last,
        match r.configured {
            true => r.next_pass.clone().unwrap_or_default(),
            false => "none: not in config.toml".into(),
        },
        held_by(r),
    ]
}
