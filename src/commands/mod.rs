//! What each command does, on top of the pass and the state.

pub mod check;
pub mod explain;
pub mod run;
pub mod status;
pub mod sync;

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::pass::ComputationReport;
use crate::say::say;
use crate::shutdown::shutdown_signal;

/// Prints the summaries; exit 0 only when everything selected was delivered.
fn conclude(selected: &[String], reports: &[ComputationReport]) -> ExitCode {
    for r in reports {
        answer_line!("{}", r.summary());
    }
    let unfinished = reports.iter().filter_map(ComputationReport::unfinished);
    // A shutdown before a computation's turn leaves it without a report: not delivered either.
    let not_started = selected
        .iter()
        .filter(|k| !reports.iter().any(|r| &r.key == *k))
        .map(|k| format!("{k} (not started: shutting down)"));
    let unfinished: Vec<String> = unfinished.chain(not_started).collect();
    if unfinished.is_empty() {
        return ExitCode::SUCCESS;
    }
    say(Level::ERROR, &format!("audience-sync: not everything was delivered: {}", unfinished.join(", ")));
    ExitCode::FAILURE
}

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::warn!("shutdown requested: finishing the requests in flight");
        token.cancel();
    });
    stop
}

/// Writes `text` to standard output, a command's answer (`status`, `explain`, a pass's
/// summaries): a reader that closed the pipe early (`status | head`) has what it wanted, and
/// the rest is dropped quietly where `println!` would panic; another failure is said on
/// standard error.
pub(crate) fn answer(text: &str) {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            say(Level::ERROR, &format!("audience-sync: cannot write to standard output: {e}"));
        }
        _ => {}
    }
}

/// `println!` for a command's answer, through `answer`.
macro_rules! answer_line {
    ($($arg:tt)*) => {
        $crate::commands::answer(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use answer_line;
