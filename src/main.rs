use std::io::IsTerminal;
use std::process::ExitCode;

use audience_sync::cli::{LogFormat, say};
use clap::Parser;
use tracing::Level;
use tracing_subscriber::EnvFilter;

/// A snapshot is millions of small strings to sort and merge: mimalloc frees and reuses them
/// more cheaply than the system allocator (figures in docs/performance.md).
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
    audience_sync::cli::say_as(cli.log_format);
    // PostgreSQL's notices ("relation ... already exists, skipping" at every start) are not news.
    let default = "info,sqlx::query=error,sqlx::postgres::notice=warn";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let filter = filter.add_directive(QUIET_SECRETS.parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Each event's fields at the top level of its object, beside `timestamp`, `level` and
        // `target`: the names README's "Logs" promises.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // One thread for all async work (requests, their connections, timers): the heavy work runs
    // on blocking threads of its own, so a request costs no hand-offs between threads (figures
    // in docs/performance.md).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(Level::ERROR, &format!("audience-sync: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(audience_sync::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let e = audience_sync::state::explain_lock_wait(e);
            say(Level::ERROR, &format!("audience-sync: {e:#}"));
            ExitCode::FAILURE
        }
    };
    // A load abandoned on SIGTERM may still hold a blocking thread (a source that does not
    // answer): the process does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
