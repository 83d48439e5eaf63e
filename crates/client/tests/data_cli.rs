//! End-to-end: the data services from the command line, with the real
//! binaries on loopback — `drawbridge-server`, `drawbridge-edge` polling a
//! counting Modbus PLC, and `drawbridge`: tags set, listed and deleted (a host
//! outside the device's LAN refused), the mailbox synced into a file with a
//! cursor file (a second run gets only new points, a run after a crash between
//! the two writes repeats nothing), range reads as CSV, deletion up to a
//! cursor, alarms acknowledged, KPIs read and watched.

use crate::common;

use common::edge::{Edge, counting_plc, wait_for};
use common::{ADMIN_PASSWORD, Cli, Server, USER_PASSWORD};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn admin(server: &Server) -> Cli {
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin
}

/// The `tag set` options of a tag reading the counting PLC every 100 ms.
fn count_tag(plc: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "tag",
        "set",
        "press",
        "count",
        "--host",
        &plc.ip().to_string(),
        "--port",
        &plc.port().to_string(),
        "--function",
        "holding",
        "--address",
        "0",
        "--type",
        "u16",
        "--poll-ms",
        "100",
        "--log",
        "change",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The points of a `data sync` file: (txid, value) per line (no value: a
/// read that timed out on a loaded machine).
fn points_in(path: &std::path::Path) -> Vec<(i64, Option<f64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["txid"].as_i64().unwrap(), v["value"].as_f64())
        })
        .collect()
}

#[track_caller]
fn assert_each_once_in_order(points: &[(i64, Option<f64>)]) {
    for w in points.windows(2) {
        assert!(w[0].0 < w[1].0, "txids not strictly increasing: {w:?}");
    }
    // The PLC counts its reads and every change is logged: values only grow.
    let values: Vec<f64> = points.iter().filter_map(|p| p.1).collect();
    for w in values.windows(2) {
        assert!(w[0] < w[1], "a value repeated or out of order: {w:?}");
    }
}

fn status_points(admin: &Cli) -> i64 {
    admin
        .run(&["data", "status", "press", "--json"], None)
        .json()["points"]
        .as_i64()
        .unwrap()
}

#[test]
fn tags_are_set_listed_and_deleted_and_a_host_outside_the_lan_is_refused() {
    let server = Server::start();
    let admin = admin(&server);
    admin.ok(&["device", "create", "press", "--lan", "192.168.1.0/24"]);
    let out = admin.ok(&[
        "tag",
        "set",
        "press",
        "oven.temp",
        "--host",
        "192.168.1.10",
        "--function",
        "holding",
        "--address",
        "100",
        "--type",
        "f32",
        "--word-order",
        "low-first",
        "--unit-label",
        "°C",
        "--log",
        "change:0.5",
        "--kpi",
        "--alarm-high",
        "240",
        "--alarm-deadband",
        "2",
        "--alarm-min-ms",
        "5000",
        "--description",
        "Oven zone 1",
    ]);
    assert!(out.contains("Created tag oven.temp on press"), "{out}");
    let list = admin.ok(&["tag", "list", "press"]);
    assert!(list.contains("oven.temp"), "{list}");
    assert!(
        list.contains("holding 100 @ 192.168.1.10:502 unit 1"),
        "{list}"
    );
    assert!(list.contains("f32 low-first"), "{list}");
    assert!(list.contains("change ±0.5"), "{list}");
    assert!(list.contains("> 240 ±2 for 5000 ms"), "{list}");
    let tags = admin.run(&["tag", "list", "press", "--json"], None).json();
    assert_eq!(tags[0]["source"]["function"], "holding_registers");
    assert_eq!(tags[0]["unit"], "°C");
    assert_eq!(tags[0]["alarm"]["high"], 240.0);

    // The same name again replaces the tag whole; a JSON file does too.
    let out = admin.ok(&[
        "tag",
        "set",
        "press",
        "oven.temp",
        "--host",
        "192.168.1.11",
        "--function",
        "input",
        "--address",
        "7",
        "--type",
        "i16",
    ]);
    assert!(out.contains("Replaced tag oven.temp"), "{out}");
    let file = server.dir.path().join("tag.json");
    std::fs::write(
        &file,
        r#"{"name":"door","source":{"host":"192.168.1.12","function":"coils","address":3},"value_type":"bool","alarm":{"kind":"state","alarm_when":true}}"#,
    )
    .unwrap();
    admin.ok(&["tag", "set", "press", "--from-json", file.to_str().unwrap()]);
    let tags = admin.run(&["tag", "list", "press", "--json"], None).json();
    assert_eq!(tags.as_array().unwrap().len(), 2, "{tags}");

    // A PLC outside the device's LAN: refused by the server, said in words, exit 1, nothing changed.
    let r = admin.run(
        &[
            "tag",
            "set",
            "press",
            "sneaky",
            "--host",
            "10.9.9.9",
            "--function",
            "holding",
            "--address",
            "0",
            "--type",
            "u16",
        ],
        None,
    );
    let err = r.expect_err();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(err.starts_with("error: the tag was refused"), "{err}");
    assert!(
        err.contains("10.9.9.9 is not in the device's LAN subnets"),
        "{err}"
    );
    assert!(
        err.contains("press's LAN subnets are 192.168.1.0/24"),
        "{err}"
    );
    assert!(!err.contains("invalid") && !err.contains("422"), "{err}");
    let tags = admin.run(&["tag", "list", "press", "--json"], None).json();
    assert_eq!(tags.as_array().unwrap().len(), 2, "{tags}");
    // A tag that cannot be polled never reaches the server: usage stays the user's to fix.
    let err = admin
        .run(
            &[
                "tag",
                "set",
                "press",
                "fast",
                "--host",
                "192.168.1.10",
                "--function",
                "holding",
                "--address",
                "0",
                "--type",
                "u16",
                "--poll-ms",
                "10",
            ],
            None,
        )
        .expect_err()
        .to_string();
    assert!(err.contains("poll_ms must be between 100"), "{err}");

    let out = admin.run(&["tag", "delete", "press", "oven.temp"], None);
    assert!(out.expect_ok().is_empty());
    assert!(
        out.stderr.contains("Deleted tag oven.temp of press"),
        "{out:?}"
    );
    let err = admin
        .run(&["tag", "delete", "press", "oven.temp"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("press has no tag \"oven.temp\""), "{err}");
    admin.ok(&["tag", "delete", "press", "door"]);
    let r = admin.run(&["tag", "list", "press"], None);
    assert!(r.expect_ok().is_empty());
    assert!(r.stderr.contains("Device press has no tags."), "{r:?}");
}

#[test]
fn a_sync_into_a_file_continues_after_the_last_page_written_and_repeats_no_point() {
    let server = Server::start();
    let admin = admin(&server);
    let _edge = Edge::for_new_device(&server, &admin, "press");
    let plc = counting_plc("127.0.0.72");
    admin.ok(&args(&count_tag(plc, &[])));
    wait_for("the edge has logged 20 points", 60, || {
        status_points(&admin) >= 20
    });

    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let out = dir.path().join("points.jsonl");
    let sync = |extra: &[&str]| {
        let mut a = vec![
            "data",
            "sync",
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--page-size",
            "7",
        ];
        a.extend_from_slice(extra);
        admin.run(&a, None)
    };
    let r = sync(&[]);
    r.expect_ok();
    assert!(r.stderr.contains("Synced"), "{r:?}");
    let first = points_in(&out);
    assert!(first.len() >= 20, "{}", first.len());
    assert_each_once_in_order(&first);
    let c1 = std::fs::read_to_string(&cursor).unwrap();
    assert_eq!(c1, format!("t{}\n", first.last().unwrap().0));

    // More points; the second run appends only those.
    let had = status_points(&admin);
    wait_for("10 more points", 60, || status_points(&admin) >= had + 10);
    let r = sync(&["--json"]);
    let summary = r.json();
    let second = points_in(&out);
    assert_eq!(
        summary["points"].as_u64().unwrap() as usize,
        second.len() - first.len()
    );
    assert!(second.len() >= first.len() + 10);
    assert_eq!(second[..first.len()], first[..]);
    assert_each_once_in_order(&second);

    // A run that stopped between writing its points and its cursor: the next
    // run is handed those points again and skips them (the file's last txid).
    std::fs::write(&cursor, &c1).unwrap();
    let r = sync(&[]);
    r.expect_ok();
    assert!(r.stderr.contains("already in the file skipped"), "{r:?}");
    let third = points_in(&out);
    assert_eq!(third[..second.len()], second[..]);
    assert_each_once_in_order(&third);

    // A run that stopped while writing a line: the torn line is cut.
    let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    std::io::Write::write_all(&mut f, b"{\"txid\":999999,\"dev").unwrap();
    drop(f);
    let r = sync(&[]);
    assert!(r.stderr.contains("cut an unfinished last line"), "{r:?}");
    let fourth = points_in(&out);
    assert_each_once_in_order(&fourth);

    // Without a cursor file, from a cursor: JSON lines on standard output.
    let r = admin.run(&["data", "sync", "--after", c1.trim()], None);
    let after: Vec<i64> = r
        .expect_ok()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["txid"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(after.len() >= third.len() - first.len(), "{after:?}");
    assert!(after[0] > first.last().unwrap().0);
    // A cursor file is used by one run at a time.
    let lock = std::fs::File::create(dir.path().join("cursor.lock")).unwrap();
    lock.lock().unwrap();
    let err = sync(&[]).expect_err().to_string();
    assert!(err.contains("another `drawbridge data sync`"), "{err}");
    drop(lock);

    // One tag's points in a range, as CSV, the first 5.
    let csv = admin.ok(&["data", "get", "press", "count", "--csv", "--limit", "5"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "time,tag,value,quality");
    assert_eq!(lines.len(), 6, "{csv}");
    assert!(lines[1].contains(",count,"), "{csv}");
    // Every point of the tag.
    let all = admin
        .run(&["data", "get", "press", "count", "--json"], None)
        .json();
    assert!(all.as_array().unwrap().len() >= fourth.len());
    let table = admin.ok(&["data", "status", "press"]);
    assert!(table.contains("count"), "{table}");

    // Deleting up to the kept cursor removes exactly the points synced so far
    // (the file holds each of them once).
    let kept = std::fs::read_to_string(&cursor).unwrap();
    let synced = points_in(&out).len();
    let d = admin
        .run(&["data", "delete", "--up-to", kept.trim(), "--json"], None)
        .json();
    assert_eq!(d["deleted"].as_u64().unwrap() as usize, synced, "{d}");
    let err = admin
        .run(&["data", "delete", "--up-to", "yesterday"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("not a cursor this server handed out"), "{err}");
}

#[test]
fn an_alarm_raised_on_the_edge_is_acknowledged_and_kpis_are_read_and_watched() {
    let server = Server::start();
    let admin = admin(&server);
    let _edge = Edge::for_new_device(&server, &admin, "press");
    let plc = counting_plc("127.0.0.73");
    admin.ok(&args(&count_tag(
        plc,
        &["--kpi", "--alarm-high", "5", "--unit-label", "reads"],
    )));

    // The counter passes 5: the edge raises the alarm, the server has it.
    let mut id = String::new();
    wait_for("the alarm is raised", 60, || {
        let list = admin.run(&["alarm", "list", "--json"], None).json();
        match list.as_array().and_then(|a| a.first()) {
            Some(a) if a["state"] == "alarm" => {
                id = a["id"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    let table = admin.ok(&["alarm", "list", "--device", "press"]);
    assert!(
        table.contains(&id) && table.contains("count") && table.contains("alarm"),
        "{table}"
    );

    // A monitor-level user sees the alarm but may not acknowledge it.
    admin
        .run(
            &[
                "user",
                "create",
                "mona",
                "--role",
                "user",
                "--password-stdin",
            ],
            Some(&format!("{USER_PASSWORD}\n")),
        )
        .expect_ok();
    admin.ok(&["group", "create", "watchers"]);
    admin.ok(&["group", "add-member", "watchers", "mona"]);
    admin.ok(&["pool", "create", "line"]);
    admin.ok(&["pool", "add-device", "line", "press"]);
    admin.ok(&[
        "grant", "create", "--group", "watchers", "--pool", "line", "--level", "monitor",
    ]);
    let mona = server.cli();
    mona.login("mona", USER_PASSWORD, &[]).expect_ok();
    assert!(mona.ok(&["alarm", "list"]).contains(&id));
    let r = mona.run(&["alarm", "ack", &id], None);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        "error: your role or grants do not allow this"
    );

    let out = admin.ok(&["alarm", "ack", &id, "--comment", "seen; counter is fine"]);
    assert!(
        out.contains("Acknowledged the alarm of count on press: the condition still holds."),
        "{out}"
    );
    let err = admin
        .run(&["alarm", "ack", &id], None)
        .expect_err()
        .to_string();
    assert_eq!(err.trim(), "error: the alarm is already acknowledged");
    let err = admin
        .run(&["alarm", "ack", "no-such-alarm"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("no alarm \"no-such-alarm\""), "{err}");
    let history = admin.ok(&["alarm", "history", "press"]);
    assert!(history.contains("raised"), "{history}");
    assert!(
        history.contains("acknowledged")
            && history.contains("root")
            && history.contains("seen; counter is fine"),
        "{history}"
    );

    // One read (which also asks the edge for values for a few seconds).
    wait_for("a live KPI value", 60, || {
        let k = admin.run(&["kpi", "press", "--json"], None).json();
        k[0]["tag"] == "count" && k[0]["value"].as_f64().is_some()
    });
    let table = admin.ok(&["kpi", "press"]);
    assert!(
        table.contains("count") && table.contains("reads") && table.contains("good"),
        "{table}"
    );

    // Watching: one line per change until SIGTERM, which ends it cleanly.
    let mut watch = Watch(
        admin
            .command()
            .args(["kpi", "press", "--watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = watch.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut values = Vec::new();
    while values.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a value line within a minute");
        let cols: Vec<&str> = line.split("  ").collect();
        assert_eq!(cols.len(), 4, "{line}");
        assert_eq!(cols[1], "count", "{line}");
        let v: f64 = cols[2].trim_end_matches(" reads").parse().unwrap();
        values.push(v);
    }
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &watch.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = watch.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "kpi --watch did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The watching `drawbridge`, killed by its own handle if the test fails first.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
