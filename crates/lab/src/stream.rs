//! A numbered stream through the tunnel: a writer sends records `n` and a
//! reader checks that the echo returns every one, once, in order. Nothing lost
//! or duplicated at the application, whatever the path did underneath.

use crate::netns::NsRuntime;
use crate::procs::wait;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECORD: usize = 16;
/// One record every 5 ms: light, but a gap of a few hundred ms shows.
const INTERVAL: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    verified: AtomicU64,
    stop: AtomicBool,
    error: Mutex<Option<String>>,
}

pub struct Stream {
    shared: Arc<Shared>,
}

fn record(n: u64) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8..].copy_from_slice(&(!n).to_be_bytes());
    b
}

impl Stream {
    /// Connects to the echo service at `addr` from the runtime's namespace.
    pub fn start(rt: &NsRuntime, addr: SocketAddr) -> Result<Stream, String> {
        let tcp = rt
            .run(async move {
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await
            })
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let shared = Arc::new(Shared::default());
        let (mut r, mut w) = tcp.into_split();
        let s = shared.clone();
        rt.spawn(async move {
            let mut n = 0u64;
            while !s.stop.load(Ordering::Relaxed) {
                if w.write_all(&record(n)).await.is_err() {
                    *s.error.lock().expect("lock") = Some(format!("write of record {n} failed"));
                    return;
                }
                n += 1;
                s.sent.store(n, Ordering::Relaxed);
                tokio::time::sleep(INTERVAL).await;
            }
        });
        let s = shared.clone();
        rt.spawn(async move {
            let mut expect = 0u64;
            let mut buf = [0u8; RECORD];
            loop {
                if let Err(e) = r.read_exact(&mut buf).await {
                    if !s.stop.load(Ordering::Relaxed) {
                        *s.error.lock().expect("lock") =
                            Some(format!("reading after record {expect}: {e}"));
                    }
                    return;
                }
                if buf != record(expect) {
                    *s.error.lock().expect("lock") =
                        Some(format!("record {expect} arrived as {buf:?}"));
                    return;
                }
                expect += 1;
                s.verified.store(expect, Ordering::Relaxed);
            }
        });
        Ok(Stream { shared })
    }

    pub fn verified(&self) -> u64 {
        self.shared.verified.load(Ordering::Relaxed)
    }

    fn check(&self) {
        if let Some(e) = self.shared.error.lock().expect("lock").clone() {
            panic!("numbered stream broken: {e}");
        }
    }

    /// Waits until `more` further records have come back intact.
    pub fn advances(&self, more: u64, what: &str) {
        let target = self.verified() + more;
        wait(what, || {
            self.check();
            self.verified() >= target
        });
    }

    /// Stops the writer and checks every record sent came back, once, in order.
    pub fn finish(self) -> u64 {
        self.shared.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(INTERVAL * 4);
        let sent = self.shared.sent.load(Ordering::Relaxed);
        wait("every record sent has come back", || {
            self.check();
            self.verified() >= sent
        });
        assert_eq!(self.verified(), sent, "nothing lost, nothing duplicated");
        sent
    }
}
