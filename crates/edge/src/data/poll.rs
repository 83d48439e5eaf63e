//! Modbus TCP polling: one task per connection (PLC address, port, unit id),
//! reading each of its tags on the tag's own period.
//!
//! - Only reads (functions 1–4), only of the configured tags, one request at a
//!   time per connection, one request per tag (no grouping of neighbouring
//!   registers: a PLC may refuse a range that spans a gap, and then every tag
//!   in it would read bad).
//! - Each step (connect, read) times out after min(poll period, 5 s).
//! - Quality per read: `good`; `exception:N` when the PLC answers with an
//!   exception (the connection stays); `timeout`; `refused` when the TCP
//!   connection is refused; `io` for anything else (reset, malformed answer,
//!   a value that is not a finite number). After a timeout or an I/O failure
//!   the connection is closed (a late answer would be taken for the next
//!   request's), and the tags still due in that round get the same quality
//!   without another attempt, so a dead PLC costs one timeout per round.
//! - Reconnecting: at once after a connection that worked; after a failed
//!   connect, not before a backoff of 0.5 s doubling to 30 s (reset by the
//!   next successful read). Tags due meanwhile get the last failure's quality,
//!   so a tag logged every period still has a (bad) point each period.
//! - A tag late by more than its period (a slow PLC) skips the missed reads
//!   rather than catching up in a burst.

use super::decode::{self, Raw};
use drawbridge_proto::data::{BadReason, ModbusFunction, Quality, TagSpec};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::{Error as ModbusError, Slave};

/// Longest wait for one step.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A connection's identity: the tags that share one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub host: Ipv4Addr,
    pub port: u16,
    pub unit: u8,
}

impl ConnKey {
    pub fn of(t: &TagSpec) -> ConnKey {
        ConnKey {
            host: t.source.host,
            port: t.source.port,
            unit: t.source.unit_id,
        }
    }
}

/// One read's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The tag as it was polled (the service drops samples of a tag changed since).
    pub tag: Arc<TagSpec>,
    /// Unix milliseconds when the request was sent.
    pub time_ms: i64,
    pub value: Option<f64>,
    pub quality: Quality,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

const fn bad(reason: BadReason) -> Quality {
    Quality::Bad { reason }
}

/// The step timeout of a tag.
pub fn step_timeout(t: &TagSpec) -> Duration {
    Duration::from_millis(u64::from(t.poll_ms)).min(MAX_TIMEOUT)
}

/// Why a read failed, and whether the connection must go.
enum Failure {
    /// The PLC answered with an exception: the connection is fine.
    Exception(u8),
    /// Timeout or I/O: the connection is closed.
    Broken(Quality),
}

async fn read(ctx: &mut Context, t: &TagSpec) -> Result<Raw, Failure> {
    let (addr, n) = (t.source.address, t.value_type.width());
    let call = async {
        match t.source.function {
            ModbusFunction::Coils => ctx.read_coils(addr, n).await.map(|r| r.map(Raw::Bits)),
            ModbusFunction::DiscreteInputs => ctx
                .read_discrete_inputs(addr, n)
                .await
                .map(|r| r.map(Raw::Bits)),
            ModbusFunction::HoldingRegisters => ctx
                .read_holding_registers(addr, n)
                .await
                .map(|r| r.map(Raw::Words)),
            ModbusFunction::InputRegisters => ctx
                .read_input_registers(addr, n)
                .await
                .map(|r| r.map(Raw::Words)),
        }
    };
    match tokio::time::timeout(step_timeout(t), call).await {
        Err(_) => Err(Failure::Broken(bad(BadReason::Timeout))),
        Ok(Ok(Ok(raw))) => Ok(raw),
        Ok(Ok(Err(code))) => Err(Failure::Exception(code.into())),
        Ok(Err(ModbusError::Transport(_) | ModbusError::Protocol(_))) => {
            Err(Failure::Broken(bad(BadReason::Io)))
        }
    }
}

async fn connect(key: ConnKey, timeout: Duration) -> Result<Context, Quality> {
    let addr = SocketAddr::from((key.host, key.port));
    match tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(key.unit)),
    )
    .await
    {
        Err(_) => Err(bad(BadReason::Timeout)),
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(bad(BadReason::Refused))
        }
        Ok(Err(_)) => Err(bad(BadReason::Io)),
    }
}

/// The connection's state between rounds.
struct Link {
    key: ConnKey,
    ctx: Option<Context>,
    /// Why the last attempt failed, and when the next connect may be tried.
    down: Option<(Quality, Instant)>,
    backoff: Duration,
}

impl Link {
    /// One tag's read, connecting first when needed. `tried` is set once this
    /// round has made a connection attempt that failed.
    async fn sample(&mut self, t: &TagSpec, tried: &mut Option<Quality>) -> (Option<f64>, Quality) {
        if let Some(q) = tried {
            return (None, *q);
        }
        if self.ctx.is_none() {
            if let Some((q, not_before)) = self.down
                && Instant::now() < not_before
            {
                return (None, q);
            }
            match connect(self.key, step_timeout(t)).await {
                Ok(ctx) => self.ctx = Some(ctx),
                Err(q) => {
                    self.down = Some((q, Instant::now() + self.backoff));
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    *tried = Some(q);
                    return (None, q);
                }
            }
        }
        let ctx = self.ctx.as_mut().expect("connected");
        match read(ctx, t).await {
            Ok(raw) => {
                self.ok();
                decode::sample(&raw, t)
            }
            Err(Failure::Exception(code)) => {
                self.ok();
                (None, bad(BadReason::Exception { code }))
            }
            Err(Failure::Broken(q)) => {
                // Reconnect at once next round: the connection had worked.
                self.ctx = None;
                self.down = None;
                *tried = Some(q);
                (None, q)
            }
        }
    }

    fn ok(&mut self) {
        self.down = None;
        self.backoff = BACKOFF_MIN;
    }
}

/// Polls `tags` (all of one connection) until the task is dropped or `out` closes.
pub async fn run(key: ConnKey, tags: Vec<Arc<TagSpec>>, out: mpsc::Sender<Vec<Sample>>) {
    if tags.is_empty() {
        return;
    }
    let mut link = Link {
        key,
        ctx: None,
        down: None,
        backoff: BACKOFF_MIN,
    };
    let start = Instant::now();
    let mut next: Vec<Instant> = vec![start; tags.len()];
    loop {
        let wake = *next.iter().min().expect("tags");
        tokio::time::sleep_until(wake).await;
        let mut round = Vec::new();
        let mut tried = None;
        for (i, t) in tags.iter().enumerate() {
            if next[i] > Instant::now() {
                continue;
            }
            let time_ms = now_ms();
            let (value, quality) = link.sample(t, &mut tried).await;
            round.push(Sample {
                tag: t.clone(),
                time_ms,
                value,
                quality,
            });
            let period = Duration::from_millis(u64::from(t.poll_ms));
            next[i] += period;
            let now = Instant::now();
            if next[i] <= now {
                // Late by a period or more: skip to the next period boundary.
                let behind = (now - next[i]).as_nanos() / period.as_nanos() + 1;
                next[i] += period * behind as u32;
            }
        }
        if !round.is_empty() && out.send(round).await.is_err() {
            return;
        }
    }
}
