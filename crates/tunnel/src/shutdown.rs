//! The binaries' stop signal: Ctrl-C (SIGINT) or, on Unix, SIGTERM (`kill`, systemd,
//! container runtimes), so every stop takes the same clean path.

use std::future::Future;

/// Resolves at the first Ctrl-C or SIGTERM after this call. The handlers are
/// installed here, not at the first poll: create it before the work starts (and
/// before telling anyone the process is ready) and keep polling the same
/// future, so that no signal in between takes the default path and kills the
/// process without its clean-up.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! { _ = wait(int) => {}, _ = wait(term) => {} }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
