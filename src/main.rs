use std::process::ExitCode;

use audience_sync::cli::LogFormat;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Snapshots of ten million members are ten million small strings to sort and merge; mimalloc
/// frees and reuses them at about half the cost of the system allocator (see the README's
/// Performance section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = audience_sync::cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::query=error"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("audience-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(audience_sync::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("audience-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}
