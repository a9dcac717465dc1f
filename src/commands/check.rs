//! `check`: the configuration is already valid once loaded; this reads every source whole and
//! says what it found, without opening the state or sending anything.

use std::process::ExitCode;

use tracing::Level;

use super::answer_line;
use crate::config::{Config, Destination, Source, StateLocation};
use crate::redact::redact_url;
use crate::say::say;
use crate::source;

pub async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    answer_line!("config {}: ok", config.path.display());
    match &config.state {
        StateLocation::File(path) => {
            let exists = if path.exists() { "exists" } else { "will be created on first sync" };
            answer_line!("state {}: {exists}", path.display());
        }
        StateLocation::Postgres { env, .. } => {
            answer_line!("state {} (PostgreSQL, from {env}): not opened by check", config.state.describe());
            warn_of_local_files(config);
        }
    }
    match &config.destination {
        Destination::Contentstack(c) => {
            let attributes = if c.attributes.is_some() { ", creates missing attributes" } else { "" };
            answer_line!(
                "destination contentstack: {} (project {}){attributes}",
                redact_url(c.edge_api_base_url.as_str()),
                c.project_uid
            );
        }
        Destination::Segment(s) => {
            answer_line!("destination segment: {} ({:?} events)", redact_url(s.endpoint.as_str()), s.events)
        }
        Destination::File { path } => answer_line!("destination file: {}", path.display()),
    }
    let mut broken = Vec::new();
    for c in &config.computations {
        let (c2, buffer) = (c.clone(), config.sort_buffer_bytes);
        let counted = tokio::task::spawn_blocking(move || source::count_users(&c2, buffer)).await?;
        match counted {
            Ok(n) => answer_line!("{} {:?} ({}): ok, {n} users, schedule {:?}", c.kind.as_str(), c.name, c.key, c.cron),
            Err(e) => {
                answer_line!("{} {:?} ({}): {e}", c.kind.as_str(), c.name, c.key);
                broken.push(c.key.clone());
            }
        }
    }
    if broken.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    say(Level::ERROR, &format!("audience-sync: sources that do not load: {}", broken.join(", ")));
    Ok(ExitCode::FAILURE)
}

/// Several workers share a PostgreSQL state, and any of them may run a computation's pass: a
/// file snapshot must be on storage every worker sees, or the workers diff different files.
fn warn_of_local_files(config: &Config) {
    for c in &config.computations {
        if let Source::File { path, .. } = &c.source {
            let message = format!(
                "warning: {} {:?} reads the file {} while the state is in PostgreSQL: every worker must see the \
                 same file (shared storage), or use an http or sql source",
                c.kind.as_str(),
                c.name,
                path.display()
            );
            say(Level::WARN, &message);
        }
    }
}
