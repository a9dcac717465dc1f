//! The command line (DESIGN §6).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::commands::sync::{PassKind, PassRequest};
use crate::config::Config;
pub use crate::say::{LogFormat, say, say_as};

#[derive(Debug, Parser)]
#[command(
    name = "audience-sync",
    version,
    about = "Keeps audiences and computed traits in sync with a personalization destination"
)]
pub struct Cli {
    /// The configuration file; relative paths in it are relative to its directory.
    #[arg(long, global = true, default_value = "config.toml", value_name = "PATH")]
    pub config: PathBuf,
    /// Log lines as human-readable text or as JSON objects (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: passes on the cron schedule until SIGTERM or SIGINT.
    Run,
    /// One pass now for all computations or the named ones, first delivering whatever an
    /// earlier pass left pending.
    Sync {
        /// The key of a computation to sync (repeatable); all when absent.
        #[arg(long = "audience", value_name = "KEY")]
        audiences: Vec<String>,
        /// Print the plan (entries, exits, changes) and send nothing, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// If another process is syncing a selected computation, wait up to SECS for it.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
        /// Let through, this once, snapshots that would remove more than max_exit_ratio of the members.
        #[arg(long)]
        allow_mass_exit: bool,
    },
    /// Full resync: re-send the current value of every selected row, then a pass.
    Resync {
        /// The key of a computation to resync (repeatable); all when absent.
        #[arg(long = "audience", value_name = "KEY")]
        audiences: Vec<String>,
        /// Only this user's rows.
        #[arg(long = "user", value_name = "ID")]
        user: Option<String>,
        /// If another process is syncing a selected computation, wait up to SECS for it.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Per computation: members, pending, failed, quarantined, last pass, next pass.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate config.toml and the sources it can reach; sends nothing, changes nothing.
    Check,
    /// Where one user stands in each computation: member or not, values desired and
    /// acknowledged, failures, quarantine, a first sync's queue, recent deliveries.
    Explain {
        /// The user to explain.
        #[arg(long = "user", value_name = "ID")]
        user: String,
        /// The key of a computation to explain (repeatable); all when absent.
        #[arg(long = "audience", value_name = "KEY")]
        audiences: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command; the exit code is 0 when everything selected was delivered.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Run => commands::run::run(config).await,
        Command::Sync { audiences, dry_run: true, .. } => commands::sync::dry_run(&config, &audiences).await,
        Command::Sync { audiences, wait, allow_mass_exit, .. } => {
            pass(&config, &audiences, wait, PassKind::Sync { allow_mass_exit }).await
        }
        Command::Resync { audiences, user, wait } => pass(&config, &audiences, wait, PassKind::Resync { user }).await,
        Command::Status { json } => commands::status::status(&config, json).await,
        Command::Check => commands::check::check(&config).await,
        Command::Explain { user, audiences, json } => {
            commands::explain::explain(&config, &user, &audiences, json).await
        }
    }
}

/// `sync` or `resync` of the computations `audiences`, waiting up to `wait` seconds for leases.
async fn pass(config: &Config, audiences: &[String], wait: u64, kind: PassKind) -> anyhow::Result<ExitCode> {
    commands::sync::sync(config, PassRequest::new(config, audiences, Duration::from_secs(wait), kind)?).await
}
