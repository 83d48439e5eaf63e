//! End-to-end: notifications from the command line with the real binaries on
//! loopback — e-mail recipients per event kind and the offline threshold, a
//! user's address, webhooks created (secret printed once), listed, changed and
//! deleted; what the server refuses said in words, with exit code 1.

use crate::common;

use common::{ADMIN_PASSWORD, Server, USER_PASSWORD};

#[test]
fn recipients_per_kind_and_the_offline_threshold_are_set_and_shown() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();

    let show = admin.ok(&["notify", "show"]);
    assert!(
        show.contains("not sent: the server has no SMTP server"),
        "{show}"
    );
    assert!(
        show.contains("alarm_raised") && show.contains("webhook_disabled"),
        "{show}"
    );
    assert!(show.contains("not reported"), "{show}");

    let out = admin.ok(&[
        "notify",
        "set",
        "alarm_raised",
        "shift@example.com",
        "Boss@Example.com",
    ]);
    assert!(
        out.contains("alarm_raised now goes to 2 addresses"),
        "{out}"
    );
    assert!(out.contains("sends no e-mail"), "{out}");
    admin.ok(&["notify", "set", "device_offline", "noc@example.com"]);
    admin.ok(&["notify", "offline-minutes", "30"]);
    let show = admin.ok(&["notify", "show"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("alarm_raised")
                && l.contains("shift@example.com, Boss@Example.com")),
        "{show}"
    );
    assert!(show.contains("reported after 30 minutes"), "{show}");
    let v = admin.run(&["notify", "show", "--json"], None).json();
    assert_eq!(v["recipients"]["device_offline"][0], "noc@example.com");
    assert_eq!(v["device_offline_minutes"], 30);

    // Clearing one kind leaves the others.
    admin.ok(&["notify", "set", "--clear", "alarm_raised"]);
    let v = admin.run(&["notify", "show", "--json"], None).json();
    assert!(v["recipients"].get("alarm_raised").is_none(), "{v}");
    assert_eq!(v["recipients"]["device_offline"][0], "noc@example.com");

    // Refusals: an unknown kind (ours, with the list), a bad address and a
    // threshold past 30 days (the server's), each one line, exit 1, nothing changed.
    let r = admin.run(&["notify", "set", "alarm_rised", "a@example.com"], None);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("\"alarm_rised\" is no event kind; the kinds are alarm_raised"),
        "{r:?}"
    );
    let r = admin.run(&["notify", "set", "alarm_raised", "not-an-address"], None);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("\"not-an-address\" is not an e-mail address"),
        "{r:?}"
    );
    let r = admin.run(&["notify", "offline-minutes", "50000"], None);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("device_offline_minutes must be 0 (off) to 43200"),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains("invalid") && !r.stderr.contains("400"),
        "{r:?}"
    );
    let v = admin.run(&["notify", "show", "--json"], None).json();
    assert_eq!(v["device_offline_minutes"], 30);
    assert!(v["recipients"].get("alarm_raised").is_none(), "{v}");

    // A user's address: set, shown, cleared; a user who is no admin may not.
    admin
        .run(
            &["user", "create", "anna", "--password-stdin"],
            Some(&format!("{USER_PASSWORD}\n")),
        )
        .expect_ok();
    let out = admin.ok(&["user", "email", "anna", "anna@example.com"]);
    assert!(
        out.contains("anna's e-mail address is now anna@example.com"),
        "{out}"
    );
    assert_eq!(admin.ok(&["user", "email", "anna"]), "anna@example.com\n");
    admin.ok(&["user", "email", "anna", "--clear"]);
    assert!(
        admin
            .ok(&["user", "email", "anna"])
            .contains("anna has no e-mail address")
    );
    let anna = server.cli();
    anna.login("anna", USER_PASSWORD, &[]).expect_ok();
    let r = anna.run(&["notify", "show"], None);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr.trim(),
        "error: your role or grants do not allow this"
    );
}

#[test]
fn webhooks_are_created_with_their_secret_shown_once_listed_changed_and_deleted() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    assert!(
        admin
            .run(&["webhook", "list"], None)
            .stderr
            .contains("No webhooks.")
    );

    // No event of these kinds happens in this test: nothing is ever sent.
    let out = admin.ok(&[
        "webhook",
        "create",
        "https://hooks.example.com/drawbridge",
        "--events",
        "alarm_raised,alarm_returned",
    ]);
    assert!(out.contains("it is not shown again"), "{out}");
    let secret = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("whsec_"))
        .unwrap_or_else(|| panic!("no secret in {out}"))
        .to_string();
    let list = admin.ok(&["webhook", "list"]);
    assert!(
        list.contains("https://hooks.example.com/drawbridge"),
        "{list}"
    );
    assert!(
        list.contains("alarm_raised,alarm_returned") && list.contains("enabled"),
        "{list}"
    );
    assert!(
        !list.contains(&secret),
        "the secret is shown once only: {list}"
    );
    let json = admin.run(&["webhook", "list", "--json"], None);
    assert!(!json.stdout.contains(&secret));
    let id = json.json()[0]["id"].as_str().unwrap().to_string();

    // By URL or by id.
    let out = admin.ok(&[
        "webhook",
        "update",
        "https://hooks.example.com/drawbridge",
        "--events",
        "device_offline",
        "--disable",
    ]);
    assert!(
        out.contains("device_offline") && out.contains("disabled"),
        "{out}"
    );
    let w = admin.run(&["webhook", "list", "--json"], None).json();
    assert_eq!(w[0]["enabled"], false);
    assert_eq!(w[0]["events"], serde_json::json!(["device_offline"]));
    admin.ok(&[
        "webhook",
        "update",
        &id,
        "--enable",
        "--url",
        "https://hooks.example.com/v2",
    ]);
    let w = admin.run(&["webhook", "list", "--json"], None).json();
    assert_eq!(w[0]["enabled"], true);
    assert_eq!(w[0]["url"], "https://hooks.example.com/v2");

    // Refusals, in words: a private address (the server's rule), an unknown
    // kind (with the list), nothing to change; none creates anything.
    let r = admin.run(
        &[
            "webhook",
            "create",
            "https://127.0.0.1/hook",
            "--events",
            "alarm_raised",
        ],
        None,
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("webhooks to loopback or private addresses are refused"),
        "{r:?}"
    );
    let r = admin.run(
        &[
            "webhook",
            "create",
            "https://hooks.example.com/x",
            "--events",
            "alarm_rasied",
        ],
        None,
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("\"alarm_rasied\" is no event kind"),
        "{r:?}"
    );
    let r = admin.run(&["webhook", "update", &id], None);
    assert!(r.expect_err().contains("nothing to change"), "{r:?}");
    let w = admin.run(&["webhook", "list", "--json"], None).json();
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");

    let r = admin.run(&["webhook", "delete", &id], None);
    r.expect_ok();
    assert!(r.stderr.contains("Deleted webhook"), "{r:?}");
    let r = admin.run(&["webhook", "delete", &id], None);
    assert!(r.expect_err().contains("no webhook"), "{r:?}");
    let w = admin.run(&["webhook", "list", "--json"], None).json();
    assert_eq!(w.as_array().unwrap().len(), 0, "{w}");
}
