//! A Modbus TCP PLC simulator (tokio-modbus) and a reader for it.
//!
//! Holding registers 0..16 hold `1000 + address` (or another base); register 100 counts the reads
//! it has answered, so a poller can tell that every request reached the PLC once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone)]
struct Plc(Arc<AtomicU16>, u16);

impl tokio_modbus::server::Service for Plc {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<std::result::Result<Response, ExceptionCode>>;
    fn call(&self, req: Request<'static>) -> Self::Future {
        std::future::ready(match req {
            Request::ReadHoldingRegisters(100, 1) => Ok(Response::ReadHoldingRegisters(vec![
                self.0.fetch_add(1, Ordering::Relaxed),
            ])),
            Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= 16 => Ok(
                Response::ReadHoldingRegisters((a..a + n).map(|x| self.1 + x).collect()),
            ),
            _ => Err(ExceptionCode::IllegalDataAddress),
        })
    }
}

/// Serves the simulator on `addr` until the task is dropped (run it on the
/// runtime of the namespace the PLC lives in).
pub async fn serve(addr: SocketAddr) -> Result<()> {
    serve_with_base(addr, 1000).await
}

/// Like [`serve`], with registers 0..16 holding `base + address`: tells two
/// PLCs at the same address apart.
pub async fn serve_with_base(addr: SocketAddr, base: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let plc = Plc(Arc::new(AtomicU16::new(0)), base);
    let server = Server::new(listener);
    let on_connected = |stream, peer| {
        let plc = plc.clone();
        async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(plc.clone()))) }
    };
    server.serve(&on_connected, |_e| {}).await?;
    Ok(())
}

/// Reads holding registers 0..4 at `addr` (5 s for each step).
pub async fn read_registers(addr: SocketAddr) -> Result<Vec<u16>> {
    let mut ctx = tokio::time::timeout(Duration::from_secs(5), tcp::connect(addr)).await??;
    let regs =
        tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 4)).await???;
    Ok(regs)
}

/// Like [`read_registers`], through a SOCKS5 proxy (`drawbridge connect --socks5`)
/// that dials `plc`.
pub async fn read_registers_via_socks5(proxy: SocketAddr, plc: SocketAddr) -> Result<Vec<u16>> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_socks::tcp::Socks5Stream::connect(proxy, plc),
    )
    .await??;
    let mut ctx = tcp::attach(stream);
    let regs =
        tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 4)).await???;
    Ok(regs)
}

/// What a correct read of registers 0..4 returns.
pub const EXPECTED: [u16; 4] = [1000, 1001, 1002, 1003];
