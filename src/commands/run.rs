//! `run`: the daemon.

use std::process::ExitCode;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    crate::daemon::run(config).await?;
    Ok(ExitCode::SUCCESS)
}
