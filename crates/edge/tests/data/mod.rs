//! Shared by the data-services tests: a third-party Modbus TCP PLC simulator
//! (PyPI's `pymodbus`, run by `python3`) on loopback with known register
//! contents, and tag specs as JSON.
#![allow(dead_code)]

use drawbridge_proto::data::TagSpec;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The simulator: one device context; every unit id reads the same tables.
/// Addresses outside a table answer exception 2 (illegal data address).
const PLC_PY: &str = r#"
import asyncio, json, logging, sys
logging.disable(logging.CRITICAL)
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
# A sequential block at 1 serves protocol addresses 0 onwards.
device = ModbusDeviceContext(
    hr=ModbusSequentialDataBlock(1, spec["hr"]),
    ir=ModbusSequentialDataBlock(1, spec["ir"]),
    co=ModbusSequentialDataBlock(1, spec["co"]),
    di=ModbusSequentialDataBlock(1, spec["di"]),
)
context = ModbusServerContext(devices=device, single=True)

async def main():
    await ModbusTcpServer(context, address=(host, port)).serve_forever()

asyncio.run(main())
"#;

/// Register and bit contents of the simulated PLC.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tables {
    pub hr: Vec<u16>,
    pub ir: Vec<u16>,
    pub co: Vec<bool>,
    pub di: Vec<bool>,
}

/// Whether pymodbus can be used; otherwise a visible SKIPPED line (or a
/// failure where `DRAWBRIDGE_REQUIRE_PYMODBUS=1`, which scripts/test sets).
pub fn pymodbus(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("DRAWBRIDGE_REQUIRE_PYMODBUS").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: python3 with pymodbus is required (python3 -m pip install 'pymodbus>=3.9,<4')"
            );
        }
        eprintln!(
            "SKIPPED {test}: python3 with pymodbus not found (python3 -m pip install 'pymodbus>=3.9,<4'; scripts/test installs it)"
        );
    }
    ok
}

/// A running simulator, killed (by its own handle) when dropped.
pub struct Plc {
    pub child: Child,
    pub addr: SocketAddr,
    pub tables: Tables,
}

impl Plc {
    /// Starts the simulator on `ip` (a free port when `port` is 0) and waits until it listens.
    pub fn start(ip: [u8; 4], port: u16, tables: Tables) -> Plc {
        let port = if port == 0 { free_port(ip) } else { port };
        let addr = SocketAddr::from((ip, port));
        let child = Command::new("python3")
            .args([
                "-c",
                PLC_PY,
                &addr.ip().to_string(),
                &port.to_string(),
                &serde_json::to_string(&tables).unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let plc = Plc {
            child,
            addr,
            tables,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the simulator did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        plc
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Plc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tag as an admin writes it.
pub fn tag(
    name: &str,
    addr: SocketAddr,
    function: &str,
    address: u16,
    ty: &str,
    extra: &str,
) -> TagSpec {
    serde_json::from_str(&format!(
        r#"{{"name":"{name}","source":{{"host":"{}","port":{},"function":"{function}","address":{address}}},"value_type":"{ty}"{extra}}}"#,
        addr.ip(),
        addr.port()
    ))
    .unwrap()
}

/// The two registers of a 32-bit pattern, high word first or low word first.
pub fn words(x: u32, high_first: bool) -> [u16; 2] {
    let (hi, lo) = ((x >> 16) as u16, x as u16);
    if high_first { [hi, lo] } else { [lo, hi] }
}
