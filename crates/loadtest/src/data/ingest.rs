//! The pushing edges of `--data`: one task per enrolled device, holding an
//! edge channel as `drawbridge-edge run` does (the agent's own `connect` and
//! `authenticate`, a status with the switch on) and pushing historian records
//! as the agent does — one `records` message of up to 1000 in flight, the next
//! as soon as its `records_ack` is back — as fast as the server acknowledges.
//! Records come from the [`Plan`]; what the server acknowledged is counted.

use super::plan::Plan;
use crate::edges::Device;
use drawbridge_edge::agent::{self, Channel};
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use drawbridge_proto::data::{BufferStatus, MAX_RECORDS_PER_MESSAGE};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for one acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// What every pushing edge adds to.
#[derive(Default)]
pub struct Counters {
    /// Edges with their channel up.
    pub connected: AtomicUsize,
    /// Records acknowledged (each edge's acknowledged seq, summed).
    pub acked: AtomicU64,
    pub batches: AtomicU64,
    /// Acknowledgement round trips (records sent → acknowledgement read), ms.
    pub round_trips: Mutex<Vec<f32>>,
    /// Round trips are kept only while this is set (the measured window).
    pub measuring: AtomicBool,
    pub errors: Mutex<Vec<String>>,
}

/// Where the edges connect and what they push.
pub struct Push {
    pub server: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub plan: Arc<Plan>,
    /// Per-run prefix of the edges' historian stream names.
    pub stream_prefix: String,
    /// Records per message (at most 1000).
    pub batch: usize,
    /// Stop pushing once set (the batch in flight is still acknowledged).
    pub stop: Arc<AtomicBool>,
}

async fn open(p: &Push, d: &Device) -> anyhow::Result<Channel> {
    let mut ws = agent::connect(&p.server, p.tls.clone(), None, None).await?;
    agent::authenticate(&mut ws, &d.device_id, &d.key).await?;
    agent::send(&mut ws, &crate::edges::status()).await?;
    Ok(ws)
}

/// Waits for the acknowledgement of `stream`; other messages (the session
/// list, pings) pass.
async fn ack(ws: &mut Channel, stream: &str) -> anyhow::Result<u64> {
    loop {
        let m = tokio::time::timeout(ACK_TIMEOUT, agent::recv(ws))
            .await
            .map_err(|_| anyhow::anyhow!("no acknowledgement within {ACK_TIMEOUT:?}"))??;
        match m {
            None => anyhow::bail!("the server closed the channel"),
            Some(ServerToEdge::RecordsAck { stream: s, seq }) if s == stream => return Ok(seq),
            Some(ServerToEdge::Error { code, message }) => {
                anyhow::bail!("the server refused the records: {code}: {message}")
            }
            Some(_) => {}
        }
    }
}

/// One edge: pushes until `stop`; returns its last acknowledged seq.
pub async fn edge(p: Arc<Push>, d: Device, c: Arc<Counters>) -> u64 {
    match run(&p, &d, &c).await {
        Ok(seq) => seq,
        Err((seq, e)) => {
            if let Ok(mut v) = c.errors.lock() {
                v.push(format!("edge {}: {e:#}", d.index));
            }
            seq
        }
    }
}

async fn run(p: &Push, d: &Device, c: &Counters) -> Result<u64, (u64, anyhow::Error)> {
    let mut ws = open(p, d).await.map_err(|e| (0, e))?;
    c.connected.fetch_add(1, Ordering::Relaxed);
    let stream = format!("{}-{}", p.stream_prefix, d.index);
    let batch = p.batch.clamp(1, MAX_RECORDS_PER_MESSAGE) as u64;
    let mut acked = 0u64;
    while !p.stop.load(Ordering::Relaxed) {
        let records: Vec<_> = (acked + 1..=acked + batch)
            .map(|seq| p.plan.record(d.index, seq))
            .collect();
        let m = EdgeToServer::Records {
            buffer: BufferStatus {
                stream: stream.clone(),
                pending: batch,
                dropped: 0,
            },
            records,
        };
        let t = Instant::now();
        agent::send(&mut ws, &m)
            .await
            .map_err(|e| (acked, e.into()))?;
        let seq = ack(&mut ws, &stream).await.map_err(|e| (acked, e))?;
        if seq != acked + batch {
            return Err((
                acked,
                anyhow::anyhow!("acknowledged up to {seq}, sent up to {}", acked + batch),
            ));
        }
        if c.measuring.load(Ordering::Relaxed)
            && let Ok(mut v) = c.round_trips.lock()
        {
            v.push(t.elapsed().as_secs_f32() * 1e3);
        }
        c.acked.fetch_add(seq - acked, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        acked = seq;
    }
    let _ = futures_util::SinkExt::close(&mut ws).await;
    Ok(acked)
}
