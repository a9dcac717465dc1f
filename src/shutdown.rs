//! The signals that ask the process to stop, for the commands and the daemon alike.

/// Resolves on SIGTERM or SIGINT, having told waits for the state's locks to give up.
pub async fn shutdown_signal() {
    // From here on a signal also ends a lock wait that holds the runtime's thread.
    crate::state::listen_for_signals();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    crate::state::stop_waiting_for_locks();
}
