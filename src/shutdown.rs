//! The signals that ask the process to stop, for the commands and the daemon alike.

/// Resolves on SIGTERM or SIGINT, having told waits for the state's locks to give up.
pub async fn shutdown_signal() {
    // From here on a signal also ends a lock wait that holds the runtime's thread.
    crate::state::listen_for_signals();
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    // A signal that came while the process was starting, before the handlers above, was caught
    // by `listen_for_signals` alone: tokio's would wait for another (review finding: a daemon
    // sent SIGTERM in its first tenth of a second ran on for minutes).
    if !crate::state::signalled() {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    crate::state::stop_waiting_for_locks();
}
