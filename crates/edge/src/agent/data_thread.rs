//! One thread per session for its data path: the tunnel's driver, its relay
//! connections and the userspace stack with its LAN sockets run on a
//! single-threaded runtime of their own. (The kernel path keeps the session on the
//! main runtime, beside the TUN reader that all sessions share.)
//!
//! Why: every packet crosses from the driver to the LAN path and back. On the
//! shared multi-threaded runtime each of those hand-overs woke another worker
//! thread (a futex wake-up and two context switches per batch, 19 % of the edge's
//! CPU in the profile of one stream), and the two tasks kept trading cores. On one
//! thread the hand-over is a queue push and the next task runs at once: one
//! stream went from ~2.8 to ~3.2 Gbit/s (`-L`: ~2.8 to ~3.5) in the lab
//! (BENCHMARKS.md). Sessions still run in parallel, one thread each.
//!
//! The runtime lives as long as its [`DataThread`]: dropping it ends the thread
//! and every task still on it (the session's tunnel, relays, flows).

use std::future::Future;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A thread running a single-threaded tokio runtime for one session's data path.
pub struct DataThread {
    handle: Handle,
    /// Dropped (or sent) to stop the runtime.
    _stop: oneshot::Sender<()>,
}

impl DataThread {
    /// Starts the thread; `name` shows in `top -H` and in stack traces.
    pub fn start(name: &str) -> std::io::Result<DataThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                // Runs the tasks until the owner is gone; dropping the runtime here,
                // on its own thread, cancels what is left.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(DataThread {
            handle,
            _stop: stop,
        })
    }

    /// Spawns `task` on the thread.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_and_sockets_run_on_the_sessions_own_thread() {
        let t = DataThread::start("db-test").unwrap();
        let main = std::thread::current().id();
        let (thread, echoed) = t
            .spawn(async move {
                // A socket registered with the thread's runtime works there.
                let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                a.send_to(b"ping", b.local_addr().unwrap()).await.unwrap();
                let mut buf = [0u8; 8];
                let (n, _) = b.recv_from(&mut buf).await.unwrap();
                (std::thread::current().id(), buf[..n].to_vec())
            })
            .await
            .unwrap();
        assert_ne!(thread, main);
        assert_eq!(echoed, b"ping");
        // What a task there spawns lands on the same thread.
        let spawned = t
            .spawn(async { tokio::spawn(async { std::thread::current().id() }).await })
            .await
            .unwrap();
        assert_eq!(spawned.unwrap(), thread);
    }

    #[tokio::test]
    async fn dropping_the_thread_ends_its_tasks() {
        let t = DataThread::start("db-test").unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = t.spawn(async move {
            // Holds `tx` until cancelled.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(t);
        // The runtime dropped the task (and `tx` with it): the receiver sees it.
        assert!(rx.await.is_err());
        assert!(task.await.unwrap_err().is_cancelled());
    }
}
