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
//!
//! An edge runs at most [`MAX_THREADS`] of them: sessions beyond that run on
//! the main runtime, as in kernel mode, so however many sessions the control
//! plane gives an edge, its threads stay bounded.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Session threads an edge runs at most.
pub const MAX_THREADS: usize = 64;
/// Session threads running now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A thread running a single-threaded tokio runtime for one session's data path.
pub struct DataThread {
    handle: Handle,
    /// Dropped (or sent) to stop the runtime.
    _stop: oneshot::Sender<()>,
    /// The count this thread holds a place in.
    running: &'static AtomicUsize,
}

impl Drop for DataThread {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DataThread {
    /// Starts a session's thread, unless [`MAX_THREADS`] run already (`None`:
    /// the session runs on the caller's runtime). `name` shows in `top -H`
    /// and in stack traces.
    pub fn start(name: &str) -> std::io::Result<Option<DataThread>> {
        Self::start_within(name, &RUNNING, MAX_THREADS)
    }

    fn start_within(
        name: &str,
        running: &'static AtomicUsize,
        max: usize,
    ) -> std::io::Result<Option<DataThread>> {
        if running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Ok(None);
        }
        let started = Self::spawn_thread(name);
        if started.is_err() {
            running.fetch_sub(1, Ordering::SeqCst);
        }
        started.map(|(handle, stop)| {
            Some(DataThread {
                handle,
                _stop: stop,
                running,
            })
        })
    }

    fn spawn_thread(name: &str) -> std::io::Result<(Handle, oneshot::Sender<()>)> {
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
        Ok((handle, stop))
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
        let t = DataThread::start("db-test").unwrap().unwrap();
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
        let t = DataThread::start("db-test").unwrap().unwrap();
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

    #[tokio::test]
    async fn threads_beyond_the_limit_are_not_started_and_a_dropped_one_frees_its_place() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let a = DataThread::start_within("db-a", &COUNT, 2)
            .unwrap()
            .unwrap();
        let b = DataThread::start_within("db-b", &COUNT, 2)
            .unwrap()
            .unwrap();
        assert!(
            DataThread::start_within("db-c", &COUNT, 2)
                .unwrap()
                .is_none()
        );
        assert_eq!(COUNT.load(Ordering::SeqCst), 2);
        drop(a);
        let c = DataThread::start_within("db-c", &COUNT, 2)
            .unwrap()
            .unwrap();
        assert_eq!(c.spawn(async { 7 }).await.unwrap(), 7);
        drop((b, c));
        assert_eq!(COUNT.load(Ordering::SeqCst), 0);
    }
}
