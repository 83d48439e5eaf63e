//! The PLC of `--data`'s edge figure: a Modbus TCP server (tokio-modbus) on a
//! loopback address whose values move like a process's, so that tags logged
//! on change are logged at every poll:
//!
//! - holding and input registers 0..200: u16 values on slow sines (each
//!   register its own phase), moving every second;
//! - registers 200..600: 200 f32 values, two registers each, high word first;
//! - coils and discrete inputs 0..200: states that change every few seconds.
//!
//! Anything else is answered with exception 2 (illegal data address). It
//! counts the reads it answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// Registers 0..U16_END hold u16 values.
pub const U16_END: u16 = 200;
/// Registers U16_END..F32_END hold f32 pairs.
pub const F32_END: u16 = 600;
/// Coils and discrete inputs 0..BITS.
pub const BITS: u16 = 200;

#[derive(Clone)]
struct Plc {
    start: Instant,
    reads: Arc<AtomicU64>,
}

fn register(a: u16, t: f64) -> u16 {
    if a < U16_END {
        let v = 5000.0 + 3000.0 * (t / 60.0 + f64::from(a)).sin();
        return v as u16;
    }
    let k = f64::from((a - U16_END) / 2);
    let v = (20.0 + 5.0 * (t / 120.0 + k).sin()) as f32;
    let bits = v.to_bits();
    if (a - U16_END).is_multiple_of(2) {
        (bits >> 16) as u16
    } else {
        bits as u16
    }
}

fn bit(a: u16, t: f64) -> bool {
    ((t / 5.0) as u64 + u64::from(a)).is_multiple_of(3)
}

impl Plc {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let t = self.start.elapsed().as_secs_f64();
        let fits =
            |a: u16, n: u16, end: u16| n >= 1 && u32::from(a) + u32::from(n) <= u32::from(end);
        let words = |a: u16, n: u16| (a..a + n).map(|x| register(x, t)).collect::<Vec<_>>();
        let bits = |a: u16, n: u16| (a..a + n).map(|x| bit(x, t)).collect::<Vec<_>>();
        match req {
            Request::ReadHoldingRegisters(a, n) if fits(a, n, F32_END) => {
                Ok(Response::ReadHoldingRegisters(words(a, n)))
            }
            Request::ReadInputRegisters(a, n) if fits(a, n, F32_END) => {
                Ok(Response::ReadInputRegisters(words(a, n)))
            }
            Request::ReadCoils(a, n) if fits(a, n, BITS) => Ok(Response::ReadCoils(bits(a, n))),
            Request::ReadDiscreteInputs(a, n) if fits(a, n, BITS) => {
                Ok(Response::ReadDiscreteInputs(bits(a, n)))
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        }
    }
}

impl tokio_modbus::server::Service for Plc {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;
    fn call(&self, req: Request<'static>) -> Self::Future {
        let r = self.answer(req);
        if r.is_ok() {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        std::future::ready(r)
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    pub addr: SocketAddr,
    reads: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Listens on `ip`, a free port.
    pub async fn start(ip: std::net::Ipv4Addr) -> anyhow::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let plc = Plc {
            start: Instant::now(),
            reads: Arc::new(AtomicU64::new(0)),
        };
        let reads = plc.reads.clone();
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, peer| {
                let plc = plc.clone();
                async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(plc.clone()))) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        Ok(Simulator { addr, reads, task })
    }

    /// Reads answered so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_pairs_decode_to_plausible_values_and_registers_move() {
        for t in [0.0, 17.5, 3600.0] {
            for k in 0..(F32_END - U16_END) / 2 {
                let a = U16_END + 2 * k;
                let bits = (u32::from(register(a, t)) << 16) | u32::from(register(a + 1, t));
                let v = f32::from_bits(bits);
                assert!((14.9..=25.1).contains(&v), "{v}");
            }
        }
        let moved = (0..U16_END)
            .filter(|&a| register(a, 0.0) != register(a, 1.0))
            .count();
        assert!(moved > 190, "{moved}");
    }

    #[test]
    fn reads_outside_the_tables_are_refused() {
        let p = Plc {
            start: Instant::now(),
            reads: Arc::default(),
        };
        assert!(p.answer(Request::ReadHoldingRegisters(599, 1)).is_ok());
        assert!(p.answer(Request::ReadHoldingRegisters(599, 2)).is_err());
        assert!(p.answer(Request::ReadCoils(200, 1)).is_err());
        assert!(p.answer(Request::ReadHoldingRegisters(0, 0)).is_err());
        assert!(
            p.answer(Request::WriteSingleRegister(0, 1)).is_err(),
            "a simulator that only reads"
        );
    }
}
