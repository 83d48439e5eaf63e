//! The binaries' stop signal: Ctrl-C (SIGINT) or, on Unix, SIGTERM (`kill`, systemd,
//! container runtimes), so every stop takes the same clean path.

/// Resolves at the first Ctrl-C or SIGTERM. Create it once, before the work starts,
/// and keep polling the same future: a signal that arrives between two polls is not lost.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
