//! What the data services' end-to-end tests share: a PLC whose register
//! counts its reads (every sample a new value, so a point lost or stored twice
//! shows), a mailbox client syncing in a loop, and the edge's buffer and status
//! as its files hold them.

use super::Api;
use drawbridge_edge::data::buffer::{Buffer, BufferConfig};
use drawbridge_proto::data::RecordBody;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A PLC whose holding register 0 counts the reads it has answered: every
/// sample is a new value, so a point lost or stored twice shows.
pub fn counting_plc() -> std::net::SocketAddr {
    use std::sync::atomic::AtomicU16;
    use tokio_modbus::prelude::*;
    use tokio_modbus::server::tcp::{Server as ModbusServer, accept_tcp_connection};
    #[derive(Clone)]
    struct Plc(Arc<AtomicU16>);
    impl tokio_modbus::server::Service for Plc {
        type Request = Request<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Response, ExceptionCode>>;
        fn call(&self, req: Request<'static>) -> Self::Future {
            std::future::ready(match req {
                Request::ReadHoldingRegisters(0, 1) => Ok(Response::ReadHoldingRegisters(vec![
                    self.0.fetch_add(1, Ordering::Relaxed),
                ])),
                _ => Err(ExceptionCode::IllegalDataAddress),
            })
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.71:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(l).unwrap();
            let plc = Plc(Arc::new(AtomicU16::new(0)));
            let on_connected = |stream, peer| {
                let plc = plc.clone();
                async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(plc.clone()))) }
            };
            let _ = ModbusServer::new(listener)
                .serve(&on_connected, |_e| {})
                .await;
        });
    });
    addr
}

/// A GET that tolerates the server being away (None then).
pub fn try_get(api: &Api, path: &str) -> Option<Value> {
    let res = api
        .http
        .get(format!("{}/api/v1{path}", api.base))
        .bearer_auth(&api.token)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().ok()
}

/// The mailbox client: loops over `/data/sync` until told to stop, keeping
/// every good point it was handed (time, value) and counting the bad ones (a
/// read that timed out on a loaded machine: the PLC counted it, nobody logged
/// its value).
pub struct Syncer {
    pub points: Arc<Mutex<Vec<(i64, f64)>>>,
    pub bad: Arc<std::sync::atomic::AtomicUsize>,
    pub caught_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub fn start(api: Api) -> Syncer {
        let points: Arc<Mutex<Vec<(i64, f64)>>> = Default::default();
        let caught_up = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let bad: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (p, c, s, b) = (points.clone(), caught_up.clone(), stop.clone(), bad.clone());
        let thread = std::thread::spawn(move || {
            let mut cursor: Option<String> = None;
            while !s.load(Ordering::Relaxed) {
                let path = match &cursor {
                    Some(c) => format!("/data/sync?limit=50&after={c}"),
                    None => "/data/sync?limit=50".to_string(),
                };
                let Some(page) = try_get(&api, &path) else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                for pt in page["points"].as_array().unwrap() {
                    match pt["value"].as_f64() {
                        Some(v) => p.lock().unwrap().push((pt["time_ms"].as_i64().unwrap(), v)),
                        None => {
                            b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                cursor = Some(page["cursor"].as_str().unwrap().to_string());
                let more = page["more_data_available"].as_bool().unwrap();
                c.store(!more, Ordering::Relaxed);
                if !more {
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        });
        Syncer {
            points,
            bad,
            caught_up,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.points.lock().unwrap().len()
    }

    pub fn finish(mut self) -> Vec<(i64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.points.lock().unwrap().clone()
    }
}

/// The values the edge's buffer holds (the edge is dead: nothing else opens it).
pub fn buffered_values(state: &std::path::Path) -> Vec<f64> {
    let b = Buffer::open(&state.join("historian"), BufferConfig::default()).unwrap();
    b.pending(usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::Point { value, .. } => value,
            _ => None,
        })
        .collect()
}

pub fn edge_status(state: &std::path::Path) -> Value {
    std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

pub fn wait_long(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}
