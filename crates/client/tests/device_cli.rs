//! End-to-end: `drawbridge device disable|enable|replace|archive` with the real
//! binaries on loopback.

mod common;

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
