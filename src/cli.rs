//! The command line (DESIGN §6).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::destination::Destination;
use crate::pass;
use crate::state::{RunStatus, Store};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One pass now: load, diff and deliver the selected computations (all by default),
    /// first delivering whatever an earlier pass left pending.
    Sync {
        /// The key of a computation to sync (repeatable); all when absent.
        #[arg(long = "audience", value_name = "KEY")]
        audiences: Vec<String>,
    },
}

/// Runs the command; the exit code is 0 when everything selected was delivered.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Sync { audiences } => sync(&config, &audiences).await,
    }
}

async fn sync(config: &Config, keys: &[String]) -> anyhow::Result<ExitCode> {
    let selected = config.select(keys)?;
    let store = Store::open(&config.state_path).await?;
    let destination = Destination::from_config(&config.destination)?;
    let reports = pass::run(config, &store, &destination, &selected, "manual").await?;
    for r in &reports {
        println!("{}", r.summary());
    }
    let unfinished: Vec<String> = reports
        .iter()
        .filter(|r| r.status != RunStatus::Ok)
        .map(|r| match r.status {
            RunStatus::Failed => format!("{} (snapshot failed)", r.key),
            _ => format!("{} ({} pending)", r.key, r.pending),
        })
        .collect();
    if unfinished.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("audience-sync: not everything was delivered: {}", unfinished.join(", "));
    Ok(ExitCode::FAILURE)
}
