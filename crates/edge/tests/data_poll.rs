//! The edge's data services against Modbus TCP PLCs on loopback: values of
//! every type and word order from a third-party simulator (pymodbus), the bad
//! qualities (exception, timeout, refused), reconnection after the PLC
//! restarts, reads of exactly the configured tags and nothing else, and the
//! historian buffer under SIGKILL.

use crate::data;

use data::{Plc, Tables, pymodbus, tag, words};
use drawbridge_edge::data::Data;
use drawbridge_edge::data::buffer::{Buffer, BufferConfig};
use drawbridge_proto::data::{BadReason, Quality, RecordBody, TagSpec};
use std::time::Duration;

fn allow_loopback() {
    // The edge never polls its own loopback, except in tests (as `run` with
    // DRAWBRIDGE_EDGE_LOOPBACK_LAN=1).
    drawbridge_netstack::policy::allow_loopback_lan();
}

/// Waits until `tag` has a sample that `ok` accepts; returns it.
async fn wait_for(
    data: &Data,
    tag: &str,
    what: &str,
    ok: impl Fn(Option<f64>, Quality) -> bool,
) -> (Option<f64>, Quality) {
    let t0 = std::time::Instant::now();
    loop {
        if let Some((_, v, q)) = data.latest(tag)
            && ok(v, q)
        {
            return (v, q);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{tag}: no {what} within 30 s, last {:?}",
            data.latest(tag)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_type_and_word_order_reads_its_known_value_from_pymodbus() {
    if !pymodbus("every_value_type_and_word_order_reads_its_known_value_from_pymodbus") {
        return;
    }
    allow_loopback();
    let f = (-273.15f32).to_bits();
    let mut hr = vec![54321, (-1234i16) as u16];
    hr.extend(words(4_000_000_000, true)); // 2
    hr.extend(words(4_000_000_000, false)); // 4
    hr.extend(words((-123_456i32) as u32, true)); // 6
    hr.extend(words((-123_456i32) as u32, false)); // 8
    hr.extend(words(f, true)); // 10
    hr.extend(words(f, false)); // 12
    hr.extend(words(f32::NAN.to_bits(), true)); // 14
    hr.push(7); // 16: a non-zero register as bool
    let plc = Plc::start(
        [127, 0, 0, 61],
        0,
        Tables {
            hr,
            ir: vec![1000, 0xFFFF],
            co: vec![true, false],
            di: vec![false, true],
        },
    );
    let a = plc.addr;
    let fast = r#","poll_ms":100"#;
    let tags: Vec<TagSpec> = vec![
        tag("u16", a, "holding_registers", 0, "u16", fast),
        tag("i16", a, "holding_registers", 1, "i16", fast),
        tag("u32.hi", a, "holding_registers", 2, "u32", fast),
        tag(
            "u32.lo",
            a,
            "holding_registers",
            4,
            "u32",
            &format!(r#"{fast},"word_order":"low_first""#),
        ),
        tag("i32.hi", a, "holding_registers", 6, "i32", fast),
        tag(
            "i32.lo",
            a,
            "holding_registers",
            8,
            "i32",
            &format!(r#"{fast},"word_order":"low_first""#),
        ),
        tag("f32.hi", a, "holding_registers", 10, "f32", fast),
        tag(
            "f32.lo",
            a,
            "holding_registers",
            12,
            "f32",
            &format!(r#"{fast},"word_order":"low_first""#),
        ),
        tag(
            "f32.swapped",
            a,
            "holding_registers",
            10,
            "f32",
            &format!(r#"{fast},"word_order":"low_first""#),
        ),
        tag("f32.nan", a, "holding_registers", 14, "f32", fast),
        tag("bool.reg", a, "holding_registers", 16, "bool", fast),
        tag(
            "scaled",
            a,
            "input_registers",
            0,
            "u16",
            &format!(r#"{fast},"scale":0.1,"offset":-40"#),
        ),
        tag("ir.i16", a, "input_registers", 1, "i16", fast),
        tag("coil.on", a, "coils", 0, "bool", fast),
        tag("coil.off", a, "coils", 1, "bool", fast),
        tag("di.off", a, "discrete_inputs", 0, "bool", fast),
        tag("di.on", a, "discrete_inputs", 1, "bool", fast),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = Data::start(dir.path(), BufferConfig::default()).unwrap();
    data.set_tags(tags);
    let good = |want: f64| {
        move |v: Option<f64>, q| q == Quality::Good && v.is_some_and(|v| close(v, want))
    };
    let minus_273 = f64::from(-273.15f32);
    for (name, want) in [
        ("u16", 54321.0),
        ("i16", -1234.0),
        ("u32.hi", 4e9),
        ("u32.lo", 4e9),
        ("i32.hi", -123_456.0),
        ("i32.lo", -123_456.0),
        ("f32.hi", minus_273),
        ("f32.lo", minus_273),
        ("bool.reg", 1.0),
        ("scaled", 60.0),
        ("ir.i16", -1.0),
        ("coil.on", 1.0),
        ("coil.off", 0.0),
        ("di.off", 0.0),
        ("di.on", 1.0),
    ] {
        let (v, _) = wait_for(&data, name, "good value", |v, q| {
            q == Quality::Good && v.is_some()
        })
        .await;
        assert!(good(want)(v, Quality::Good), "{name}: {v:?}, want {want}");
    }
    // The right registers in the wrong order are another number.
    let (v, _) = wait_for(&data, "f32.swapped", "good value", |v, q| {
        q == Quality::Good && v.is_some()
    })
    .await;
    assert!(!close(v.unwrap(), minus_273), "{v:?}");
    // NaN in the PLC is no value: bad quality io.
    wait_for(&data, "f32.nan", "io quality", |v, q| {
        v.is_none()
            && q == Quality::Bad {
                reason: BadReason::Io,
            }
    })
    .await;
    let st = data.status();
    assert_eq!(st.tags, 17);
    assert_eq!(st.polled, 17);
    assert_eq!(st.quality.get("good"), Some(&16), "{st:?}");
    assert_eq!(st.quality.get("io"), Some(&1), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_address_reads_bad_with_exception_2_and_the_connection_goes_on() {
    if !pymodbus("an_illegal_address_reads_bad_with_exception_2_and_the_connection_goes_on") {
        return;
    }
    allow_loopback();
    let plc = Plc::start(
        [127, 0, 0, 62],
        0,
        Tables {
            hr: vec![11, 22, 33],
            ir: vec![0],
            co: vec![false],
            di: vec![false],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let data = Data::start(dir.path(), BufferConfig::default()).unwrap();
    data.set_tags(vec![
        tag(
            "missing",
            plc.addr,
            "holding_registers",
            500,
            "u16",
            r#","poll_ms":100"#,
        ),
        tag(
            "there",
            plc.addr,
            "holding_registers",
            2,
            "u16",
            r#","poll_ms":100,"log":{"mode":"on_change"}"#,
        ),
    ]);
    wait_for(&data, "missing", "exception 2", |v, q| {
        v.is_none()
            && q == Quality::Bad {
                reason: BadReason::Exception { code: 2 },
            }
    })
    .await;
    wait_for(&data, "there", "33", |v, q| {
        q == Quality::Good && v == Some(33.0)
    })
    .await;
    assert_eq!(
        Quality::Bad {
            reason: BadReason::Exception { code: 2 }
        }
        .code(),
        "exception:2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_that_never_answers_reads_timeout_and_a_closed_port_reads_refused() {
    allow_loopback();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.63:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    // Nothing listens there.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 64], data::free_port([127, 0, 0, 64])));
    let dir = tempfile::tempdir().unwrap();
    let data = Data::start(dir.path(), BufferConfig::default()).unwrap();
    data.set_tags(vec![
        tag(
            "silent",
            silent_addr,
            "holding_registers",
            0,
            "u16",
            r#","poll_ms":300,"log":{"mode":"on_change"}"#,
        ),
        tag(
            "closed",
            closed,
            "input_registers",
            0,
            "u16",
            r#","poll_ms":200"#,
        ),
    ]);
    let t0 = std::time::Instant::now();
    wait_for(&data, "silent", "timeout", |v, q| {
        v.is_none()
            && q == Quality::Bad {
                reason: BadReason::Timeout,
            }
    })
    .await;
    // The poll period (300 ms) bounds the wait, not the 5 s cap.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    wait_for(&data, "closed", "refused", |v, q| {
        v.is_none()
            && q == Quality::Bad {
                reason: BadReason::Refused,
            }
    })
    .await;
    // The bad quality is logged (on change: once).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, recs) = data.pending(100).await.unwrap();
    let silent_points: Vec<_> = recs.iter().filter(|r| r.tag.as_str() == "silent").collect();
    assert_eq!(silent_points.len(), 1, "{recs:?}");
    assert_eq!(
        silent_points[0].body,
        RecordBody::Point {
            value: None,
            quality: Quality::Bad {
                reason: BadReason::Timeout
            }
        }
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_recovers_after_the_plc_restarts() {
    if !pymodbus("polling_recovers_after_the_plc_restarts") {
        return;
    }
    allow_loopback();
    let tables = Tables {
        hr: vec![4242],
        ir: vec![0],
        co: vec![false],
        di: vec![false],
    };
    let mut plc = Plc::start([127, 0, 0, 65], 0, tables.clone());
    let addr = plc.addr;
    let dir = tempfile::tempdir().unwrap();
    let data = Data::start(dir.path(), BufferConfig::default()).unwrap();
    data.set_tags(vec![tag(
        "v",
        addr,
        "holding_registers",
        0,
        "u16",
        r#","poll_ms":100,"log":{"mode":"on_change"}"#,
    )]);
    wait_for(&data, "v", "4242", |v, _| v == Some(4242.0)).await;
    plc.stop();
    wait_for(&data, "v", "bad quality", |v, q| {
        v.is_none() && q != Quality::Good
    })
    .await;
    let mut tables2 = tables;
    tables2.hr = vec![4343];
    let _plc = Plc::start([127, 0, 0, 65], addr.port(), tables2);
    wait_for(&data, "v", "4343 after the restart", |v, q| {
        q == Quality::Good && v == Some(4343.0)
    })
    .await;
    // The historian saw good, then bad, then good.
    let (_, recs) = data.pending(1000).await.unwrap();
    let q: Vec<bool> = recs
        .iter()
        .filter_map(|r| match r.body {
            RecordBody::Point { quality, .. } => Some(quality == Quality::Good),
            _ => None,
        })
        .collect();
    assert_eq!(q.first(), Some(&true));
    assert_eq!(q.last(), Some(&true));
    assert!(q.contains(&false), "{recs:?}");
}

/// A PLC (tokio-modbus) that answers every read with zeros and records each request.
fn recording_plc(
    ip: [u8; 4],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio_modbus::prelude::*;
    use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
    type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    #[derive(Clone)]
    struct Rec(Log);
    impl tokio_modbus::server::Service for Rec {
        type Request = SlaveRequest<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Response, ExceptionCode>>;
        fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
            self.0
                .lock()
                .unwrap()
                .push(format!("unit {} {:?}", req.slave, req.request));
            std::future::ready(match req.request {
                Request::ReadCoils(_, n) => Ok(Response::ReadCoils(vec![false; n.into()])),
                Request::ReadDiscreteInputs(_, n) => {
                    Ok(Response::ReadDiscreteInputs(vec![false; n.into()]))
                }
                Request::ReadHoldingRegisters(_, n) => {
                    Ok(Response::ReadHoldingRegisters(vec![0; n.into()]))
                }
                Request::ReadInputRegisters(_, n) => {
                    Ok(Response::ReadInputRegisters(vec![0; n.into()]))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            })
        }
    }
    let log: Log = Default::default();
    let std_listener = std::net::TcpListener::bind(std::net::SocketAddr::from((ip, 0))).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let rec = Rec(log.clone());
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let server = Server::new(listener);
        let on_connected = |stream, peer| {
            let rec = rec.clone();
            async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(rec.clone()))) }
        };
        let _ = server.serve(&on_connected, |_e| {}).await;
    });
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_sends_only_reads_of_the_configured_tags() {
    allow_loopback();
    let (addr, log) = recording_plc([127, 0, 0, 66]);
    let dir = tempfile::tempdir().unwrap();
    let data = Data::start(dir.path(), BufferConfig::default()).unwrap();
    let mut unit7 = tag("d", addr, "discrete_inputs", 9, "bool", r#","poll_ms":100"#);
    unit7.source.unit_id = 7;
    data.set_tags(vec![
        tag(
            "a",
            addr,
            "holding_registers",
            3,
            "f32",
            r#","poll_ms":100"#,
        ),
        tag("b", addr, "input_registers", 40, "u16", r#","poll_ms":100"#),
        tag("c", addr, "coils", 5, "bool", r#","poll_ms":100"#),
        unit7,
    ]);
    for t in ["a", "b", "c", "d"] {
        wait_for(&data, t, "good", |_, q| q == Quality::Good).await;
    }
    data.set_tags(vec![]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen: std::collections::BTreeSet<String> = log.lock().unwrap().iter().cloned().collect();
    let want: std::collections::BTreeSet<String> = [
        "unit 1 ReadHoldingRegisters(3, 2)",
        "unit 1 ReadInputRegisters(40, 1)",
        "unit 1 ReadCoils(5, 1)",
        "unit 7 ReadDiscreteInputs(9, 1)",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(seen, want);
    // With no tags left, nothing more is read.
    let n = log.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(log.lock().unwrap().len(), n);
}

/// The child side of the SIGKILL test: appends batches until killed,
/// printing the last seq of each append once it returned (and each ack).
#[test]
fn buffer_child_appends_until_killed() {
    let Ok(dir) = std::env::var("DATA_POLL_BUFFER_CHILD") else {
        return; // only as the child of the_historian_loses_no_reported_record_to_sigkill
    };
    let mut b = Buffer::open(
        std::path::Path::new(&dir),
        BufferConfig {
            max_records: 1_000_000,
            segment_records: 97,
        },
    )
    .unwrap();
    let stream = b.stream().to_string();
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for round in 0u64.. {
        let next = b.next_seq();
        let items = (0..13)
            .map(|i| {
                (
                    i as i64,
                    drawbridge_proto::TagName::try_from("k").unwrap(),
                    RecordBody::Point {
                        value: Some((next + i) as f64),
                        quality: Quality::Good,
                    },
                )
            })
            .collect();
        let last = b.append(items).unwrap().unwrap();
        writeln!(out, "appended {last}").unwrap();
        if round % 7 == 3 {
            let upto = last - 20;
            b.ack(&stream, upto).unwrap();
            writeln!(out, "acked {upto}").unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn the_historian_loses_no_reported_record_to_sigkill() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut reported = 0u64;
    let mut acked = 0u64;
    // The child is this test binary running only that test, named by its
    // path inside the binary (`data_poll::…`: the crate's name is not part of it).
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let child_test = format!("{module}::buffer_child_appends_until_killed");
    for kill in 0..4 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                child_test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DATA_POLL_BUFFER_CHILD", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut appends = 0;
        // Kill at a different moment each time.
        let stop_after = 40 + kill * 37;
        while appends < stop_after {
            let line = lines.next().expect("the child died").unwrap();
            if let Some(n) = line.strip_prefix("appended ") {
                let n: u64 = n.parse().unwrap();
                assert!(n > reported, "seq {n} after {reported}: reused");
                reported = n;
                appends += 1;
            } else if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-append most likely
        child.wait().unwrap();
        // Whatever else the child printed before it died was reported too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("appended ") {
                reported = n.parse().unwrap();
            } else if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
        }
        let b = Buffer::open(
            dir.path(),
            BufferConfig {
                max_records: 1_000_000,
                segment_records: 97,
            },
        )
        .unwrap();
        let recs = b.pending(usize::MAX).unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        let first = seqs.first().copied().unwrap_or(reported + 1);
        assert!(
            first > acked,
            "an acknowledged record came back: {first} ≤ {acked}"
        );
        assert!(
            first <= acked + 1,
            "records after the ack point are missing: first {first}, acked {acked}"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a gap or a duplicate"
        );
        let last = seqs.last().copied().unwrap_or(acked);
        assert!(
            last >= reported,
            "kill {kill}: reported {reported}, only {last} kept"
        );
        for r in &recs {
            assert_eq!(
                r.body,
                RecordBody::Point {
                    value: Some(r.seq as f64),
                    quality: Quality::Good
                },
                "record {} damaged",
                r.seq
            );
        }
        assert_eq!(b.next_seq(), last + 1);
        // Records past the reported ones (written, not yet confirmed) may be
        // kept; they are the next reported ones' predecessors, never reused.
        reported = last;
    }
}
