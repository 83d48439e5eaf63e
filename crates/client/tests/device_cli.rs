//! End-to-end: `drawbridge device disable|enable|replace|archive` with the real
//! binaries on loopback.

use crate::common;

use common::{ADMIN_PASSWORD, Server};

#[test]
fn devices_are_disabled_enabled_replaced_and_archived_by_name() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin.ok(&[
        "device",
        "create",
        "press",
        "--allow",
        "tcp:192.168.1.0/24:502",
    ]);

    let out = admin.ok(&["device", "disable", "press"]);
    assert!(out.contains("is disabled"), "{out}");
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["status"]["disabled"], true);
    assert!(admin.ok(&["devices"]).contains("disabled"));
    let err = admin
        .run(&["device", "disable", "press"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("disabled already"), "{err}");
    admin.ok(&["device", "enable", "press"]);
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["status"]["disabled"], false);

    let key = admin
        .run(&["device", "replace", "press", "--json"], None)
        .json();
    assert!(key["key"].as_str().unwrap().starts_with("dba_"), "{key}");
    let out = admin.ok(&["device", "replace", "press"]);
    assert!(out.contains("replacement gateway"), "{out}");

    // Used in a session: delete says to archive; archived, it leaves the list
    // but can still be named.
    admin.ok(&[
        "session", "prepare", "fix", "--device", "press", "--for", "1h",
    ]);
    let err = admin
        .run(&["device", "delete", "press"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("archive"), "{err}");
    admin.ok(&["device", "archive", "press"]);
    let list = admin.run(&["devices", "--json"], None).json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(admin.ok(&["device", "archived"]).contains("press"));
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["status"]["archived"], true);
}

#[test]
fn a_device_marks_its_web_uis_on_released_ports_only() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin.ok(&[
        "device",
        "create",
        "hmi",
        "--allow",
        "tcp:192.168.1.10:80",
        "--allow",
        "tcp:192.168.1.11:443",
    ]);
    admin.ok(&[
        "device",
        "update",
        "hmi",
        "--web",
        "http://192.168.1.10:80/start",
        "--web",
        "https://192.168.1.11:443",
    ]);
    let d = admin.run(&["device", "show", "hmi", "--json"], None).json();
    let web = d["web_services"].as_array().unwrap();
    assert_eq!(web.len(), 2, "{d}");
    assert_eq!(web[0]["path"], "/start");
    assert_eq!(web[1]["scheme"], "https");
    // A port the firewall does not release, a bad URL, a path with a space: refused.
    for bad in [
        "http://192.168.1.10:8080/",
        "ftp://192.168.1.10:80/",
        "http://192.168.1.10/",
        "http://192.168.1.10:80/a b",
    ] {
        admin
            .run(&["device", "update", "hmi", "--web", bad], None)
            .expect_err();
    }
    let d = admin.run(&["device", "show", "hmi", "--json"], None).json();
    assert_eq!(
        d["web_services"].as_array().unwrap().len(),
        2,
        "nothing changed"
    );
    admin.ok(&["device", "update", "hmi", "--clear-web"]);
    let d = admin.run(&["device", "show", "hmi", "--json"], None).json();
    assert_eq!(d["web_services"].as_array().unwrap().len(), 0);
}

#[test]
fn a_device_gets_a_region_for_its_relay_and_loses_it_again() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin.ok(&[
        "device",
        "create",
        "press",
        "--allow",
        "tcp:192.168.1.10:502",
    ]);
    let shown = admin.ok(&["device", "update", "press", "--region", "eu-central"]);
    assert!(shown.contains("eu-central"), "{shown}");
    // Not a region: refused before anything is sent, nothing changes.
    admin
        .run(
            &["device", "update", "press", "--region", "EU Central"],
            None,
        )
        .expect_err();
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["region"], "eu-central");
    // Changing something else keeps it; --clear-region forgets it.
    admin.ok(&["device", "update", "press", "--serial", "SN-1"]);
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["region"], "eu-central");
    admin.ok(&["device", "update", "press", "--clear-region"]);
    let d = admin
        .run(&["device", "show", "press", "--json"], None)
        .json();
    assert_eq!(d["region"], serde_json::Value::Null);
}
