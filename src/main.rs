use std::io::IsTerminal;
use std::process::ExitCode;

use audience_sync::cli::LogFormat;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Snapshots of ten million members are ten million small strings to sort and merge; mimalloc
/// frees and reuses them at about half the cost of the system allocator (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sqlx logs every connection parameter it does not know with its value (`sslpassword=...`, at
/// warn level): whatever `RUST_LOG` says, that target logs errors only, so that no secret of a
/// database URL reaches the log (DESIGN §9.8).
const QUIET_SECRETS: &str = "sqlx_postgres::options=error";

/// Colour in logs only for a person at a terminal: escape codes in a file or a pipe are noise
/// to every tool that reads them, and `NO_COLOR` (no-color.org) turns them off everywhere.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = audience_sync::cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::query=error"));
    let filter = filter.add_directive(QUIET_SECRETS.parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // One thread for all async work (requests, their connections, timers): the heavy work runs
    // on blocking threads of its own (sort, diff, checkpoints, the committer of batch
    // destinations), and with the HTTP
    // connections on the thread that sends and answers, a request costs no hand-offs between
    // threads (Contentstack at concurrency 64: 85-87 % -> 87-88 % of the bound; 10M first sync
    // 15.6-17.2 s -> 13.7-14.5 s).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("audience-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(audience_sync::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("audience-sync: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A load abandoned on SIGTERM may still hold a blocking thread (a source that does not
    // answer): the process does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
