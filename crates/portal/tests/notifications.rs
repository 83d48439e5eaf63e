//! The notifications page over real HTTPS, on SQLite and PostgreSQL: e-mail
//! recipients per event kind and the offline threshold (a refused form changes
//! nothing), users' e-mail addresses, webhooks (the secret shown once, disable,
//! delete), and that it is the admins' alone (no link for others, forged forms
//! refused by the API).

use crate::common;

use common::{Browser, PASSWORD, TestServer, between};
use drawbridge_server::outbox::NotifyConfig;

store_tests!(
    recipients_are_saved_and_read_back_and_a_bad_address_changes_nothing,
    a_users_email_address_is_set_and_cleared_and_a_bad_one_refused,
    a_webhook_is_created_with_its_secret_shown_once_then_disabled_and_deleted,
    only_admins_see_the_page_and_forged_forms_change_nothing,
);

const PAGE: &str = "/portal/notifications";

/// The account "Plant" set up, its admin logged in; webhooks may go to loopback.
async fn admin(server: &TestServer) -> Browser {
    server
        .state
        .notify
        .configure(&NotifyConfig {
            webhook_allow_private: true,
            ..NotifyConfig::default()
        })
        .expect("notification settings");
    let mut b = Browser::new(server);
    b.setup(&server.setup_token().await, "Plant").await;
    let dash = b.login("Plant", "admin", PASSWORD).await;
    assert!(
        dash.body.contains("id=\"nav-notifications\""),
        "admins get the link"
    );
    b
}

fn flash(body: &str) -> &str {
    if body.contains("id=\"flash\"") {
        between(body, "id=\"flash\">", "</p>")
    } else {
        ""
    }
}

fn textarea<'a>(body: &'a str, kind: &str) -> &'a str {
    let start = format!("name=\"recipients_{kind}\" id=\"recipients-{kind}\" rows=\"2\">");
    between(body, &start, "</textarea>")
}

/// The form as the page posts it: every kind's textarea.
fn settings_form<'a>(
    csrf: &'a str,
    lists: &[(&'a str, &'a str)],
    minutes: &'a str,
) -> Vec<(String, String)> {
    let mut f = vec![("csrf".to_string(), csrf.to_string())];
    for k in [
        "alarm_raised",
        "alarm_returned",
        "user_lockout",
        "approval_waiting",
        "device_offline",
        "activity_report",
        "webhook_disabled",
    ] {
        let v = lists
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| *v)
            .unwrap_or("");
        f.push((format!("recipients_{k}"), v.to_string()));
    }
    f.push(("device_offline_minutes".into(), minutes.into()));
    f
}

fn pairs(f: &[(String, String)]) -> Vec<(&str, &str)> {
    f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn recipients_are_saved_and_read_back_and_a_bad_address_changes_nothing(server: TestServer) {
    let mut b = admin(&server).await;
    let page = b.get(PAGE).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for kind in [
        "alarm_raised",
        "alarm_returned",
        "user_lockout",
        "approval_waiting",
        "device_offline",
        "activity_report",
        "webhook_disabled",
    ] {
        assert_eq!(textarea(&page.body, kind), "", "{kind} starts empty");
    }
    let csrf = page.csrf();

    let f = settings_form(
        &csrf,
        &[
            (
                "alarm_raised",
                "shift@example.com\r\n\r\n boss@example.com \n",
            ),
            ("user_lockout", "it@example.com"),
        ],
        "30",
    );
    let r = b.post(PAGE, &pairs(&f)).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = b.follow(&r).await;
    assert!(
        flash(&page.body).contains("were saved"),
        "{}",
        flash(&page.body)
    );
    assert_eq!(
        textarea(&page.body, "alarm_raised"),
        "shift@example.com\nboss@example.com"
    );
    assert_eq!(textarea(&page.body, "user_lockout"), "it@example.com");
    assert_eq!(textarea(&page.body, "device_offline"), "");
    assert!(
        page.body
            .contains("id=\"offline-minutes\" min=\"0\" max=\"43200\" value=\"30\"")
    );

    // A bad address: the API's message, and nothing changed (not even the
    // kinds and minutes that were fine).
    let f = settings_form(
        &csrf,
        &[
            ("alarm_raised", "shift@example.com\nnot an address"),
            ("device_offline", "night@example.com"),
        ],
        "45",
    );
    let r = b.post(PAGE, &pairs(&f)).await;
    assert_eq!(r.status, 303);
    let page = b.follow(&r).await;
    let msg = flash(&page.body);
    assert!(page.body.contains("class=\"flash error\""), "{msg}");
    assert!(msg.contains("alarm_raised"), "{msg}");
    assert_eq!(
        textarea(&page.body, "alarm_raised"),
        "shift@example.com\nboss@example.com"
    );
    assert_eq!(textarea(&page.body, "device_offline"), "");
    assert!(page.body.contains("value=\"30\""));

    // Minutes that are not a number, or out of range: refused, nothing changed.
    for minutes in ["soon", "-1", "43201"] {
        let f = settings_form(&csrf, &[("alarm_raised", "x@example.com")], minutes);
        let page = b.post(PAGE, &pairs(&f)).await;
        let page = b.follow(&page).await;
        assert!(
            page.body.contains("class=\"flash error\""),
            "{minutes}: {}",
            flash(&page.body)
        );
        assert_eq!(
            textarea(&page.body, "alarm_raised"),
            "shift@example.com\nboss@example.com",
            "{minutes}"
        );
    }

    // Emptied lists are saved as empty.
    let f = settings_form(&csrf, &[], "0");
    let page = b.post(PAGE, &pairs(&f)).await;
    let page = b.follow(&page).await;
    assert!(flash(&page.body).contains("were saved"));
    assert_eq!(textarea(&page.body, "alarm_raised"), "");
    assert!(page.body.contains("value=\"0\""));
    let actions = server.audit_actions().await;
    let updates = actions
        .iter()
        .filter(|(a, r, _)| a == "notifications.update" && r == "ok")
        .count();
    assert_eq!(updates, 2, "{actions:?}");
}

async fn a_users_email_address_is_set_and_cleared_and_a_bad_one_refused(server: TestServer) {
    let mut b = admin(&server).await;
    let page = b.get(PAGE).await;
    let id = between(
        &page.body,
        "action=\"/portal/notifications/users/",
        "/email\"",
    )
    .to_string();
    let action = format!("/portal/notifications/users/{id}/email");
    let csrf = page.csrf();
    let r = b
        .post(
            &action,
            &[("csrf", &csrf), ("email", " admin@plant.example ")],
        )
        .await;
    assert_eq!(r.status, 303);
    let page = b.follow(&r).await;
    assert!(
        flash(&page.body).contains("admin@plant.example"),
        "{}",
        flash(&page.body)
    );
    assert!(page.body.contains("value=\"admin@plant.example\""));

    let r = b
        .post(&action, &[("csrf", &csrf), ("email", "admin at plant")])
        .await;
    let page = b.follow(&r).await;
    assert!(
        page.body.contains("class=\"flash error\""),
        "{}",
        flash(&page.body)
    );
    assert!(
        page.body.contains("value=\"admin@plant.example\""),
        "unchanged"
    );

    let r = b.post(&action, &[("csrf", &csrf), ("email", "")]).await;
    let page = b.follow(&r).await;
    assert!(
        flash(&page.body).contains("removed"),
        "{}",
        flash(&page.body)
    );
    assert!(!page.body.contains("admin@plant.example"));
}

async fn a_webhook_is_created_with_its_secret_shown_once_then_disabled_and_deleted(
    server: TestServer,
) {
    let mut b = admin(&server).await;
    let page = b.get(PAGE).await;
    assert!(page.body.contains("No webhooks."));
    let csrf = page.csrf();
    let url = "http://127.0.0.1:9/hook";

    // No event: the API's refusal, nothing made.
    let r = b
        .post(
            "/portal/notifications/webhooks",
            &[("csrf", &csrf), ("url", url)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = b.follow(&r).await;
    assert!(page.body.contains("class=\"flash error\""), "{}", page.body);
    assert_eq!(server.count("webhooks").await, 0);

    let made = b
        .post(
            "/portal/notifications/webhooks",
            &[
                ("csrf", &csrf),
                ("url", url),
                ("events", "alarm_raised"),
                ("events", "device_offline"),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let secret = between(&made.body, "<pre id=\"webhook-secret\">", "</pre>").to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 30,
        "{secret}"
    );
    assert!(made.body.contains("not shown again"));
    assert!(made.body.contains(url), "the list shows it at once");
    assert_eq!(server.count("webhooks").await, 1);

    // Shown once: the page's next view lists the webhook without its secret.
    let page = b.get(PAGE).await;
    assert!(!page.body.contains(&secret));
    assert!(!page.body.contains("webhook-secret"));
    let row = between(&page.body, "<table id=\"webhook-table\">", "</table>");
    assert!(row.contains(url), "{row}");
    assert!(row.contains("alarm_raised, device_offline"), "{row}");
    assert!(row.contains("pill on\">enabled"), "{row}");
    let id = between(row, "action=\"/portal/notifications/webhooks/", "\"").to_string();

    let r = b
        .post(
            &format!("/portal/notifications/webhooks/{id}"),
            &[("csrf", &csrf), ("action", "disable")],
        )
        .await;
    assert_eq!(r.status, 303);
    let page = b.follow(&r).await;
    assert!(
        flash(&page.body).contains("disabled"),
        "{}",
        flash(&page.body)
    );
    let row = between(&page.body, "<table id=\"webhook-table\">", "</table>");
    assert!(row.contains("pill off\">disabled"), "{row}");
    assert!(row.contains("value=\"enable\""), "{row}");
    let enabled: i64 = sqlx::query_scalar("SELECT enabled FROM webhooks")
        .fetch_one(&server.state.store.pool)
        .await
        .expect("enabled");
    assert_eq!(enabled, 0);

    let r = b
        .post(
            &format!("/portal/notifications/webhooks/{id}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 303);
    let page = b.follow(&r).await;
    assert!(
        flash(&page.body).contains("deleted"),
        "{}",
        flash(&page.body)
    );
    assert!(page.body.contains("No webhooks."));
    assert_eq!(server.count("webhooks").await, 0);
    let actions = server.audit_actions().await;
    for a in ["webhook.create", "webhook.update", "webhook.delete"] {
        assert!(
            actions.iter().any(|(x, r, _)| x == a && r == "ok"),
            "{a}: {actions:?}"
        );
    }
}

async fn only_admins_see_the_page_and_forged_forms_change_nothing(server: TestServer) {
    let mut admin_b = admin(&server).await;
    let users = admin_b.get("/portal/users").await;
    admin_b.create_user(&users.csrf(), "uma", "user").await;
    admin_b
        .create_user(&users.csrf(), "sam", "session_admin")
        .await;
    let page = admin_b.get(PAGE).await;
    let csrf = page.csrf();
    let f = settings_form(&csrf, &[("alarm_raised", "shift@example.com")], "30");
    admin_b.post(PAGE, &pairs(&f)).await;
    let made = admin_b
        .post(
            "/portal/notifications/webhooks",
            &[
                ("csrf", &csrf),
                ("url", "http://127.0.0.1:9/hook"),
                ("events", "alarm_raised"),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let page = admin_b.get(PAGE).await;
    let hook = between(&page.body, "action=\"/portal/notifications/webhooks/", "\"").to_string();
    let admin_id = between(
        &page.body,
        "action=\"/portal/notifications/users/",
        "/email\"",
    )
    .to_string();

    for name in ["uma", "sam"] {
        let mut b = Browser::new(&server);
        let dash = b.login("Plant", name, PASSWORD).await;
        assert!(!dash.body.contains("nav-notifications"), "{name}: no link");
        let page = b.get(PAGE).await;
        assert_eq!(page.status, 403, "{name}: {}", page.body);
        assert!(!page.body.contains("shift@example.com"));
        assert!(!page.body.contains("127.0.0.1:9"));
        let csrf = dash.csrf();
        let f = settings_form(&csrf, &[("alarm_raised", "evil@example.com")], "1");
        let forged: [(String, Vec<(String, String)>); 5] = [
            (PAGE.into(), f),
            (
                format!("/portal/notifications/users/{admin_id}/email"),
                vec![
                    ("csrf".into(), csrf.clone()),
                    ("email".into(), "evil@example.com".into()),
                ],
            ),
            (
                "/portal/notifications/webhooks".into(),
                vec![
                    ("csrf".into(), csrf.clone()),
                    ("url".into(), "http://127.0.0.1:9/evil".into()),
                    ("events".into(), "alarm_raised".into()),
                ],
            ),
            (
                format!("/portal/notifications/webhooks/{hook}"),
                vec![
                    ("csrf".into(), csrf.clone()),
                    ("action".into(), "disable".into()),
                ],
            ),
            (
                format!("/portal/notifications/webhooks/{hook}/delete"),
                vec![("csrf".into(), csrf.clone())],
            ),
        ];
        for (path, form) in &forged {
            let r = b.post(path, &pairs(form)).await;
            assert_eq!(r.status, 303, "{name} {path}: {}", r.body);
            let shown = b.follow(&r).await;
            assert!(
                shown.body.contains("class=\"flash error\""),
                "{name} {path}: refused with the API's message"
            );
        }
    }
    // Nothing changed.
    assert!(server.find_text("evil@example.com").await.is_empty());
    assert!(server.find_text("127.0.0.1:9/evil").await.is_empty());
    assert_eq!(server.count("webhooks").await, 1);
    let page = admin_b.get(PAGE).await;
    assert_eq!(textarea(&page.body, "alarm_raised"), "shift@example.com");
    let row = between(&page.body, "<table id=\"webhook-table\">", "</table>");
    assert!(row.contains("pill on\">enabled"), "{row}");
    let refused = server
        .audit_actions()
        .await
        .into_iter()
        .filter(|(a, r, _)| {
            r == "denied"
                && matches!(
                    a.as_str(),
                    "notifications.update"
                        | "user.email"
                        | "webhook.create"
                        | "webhook.update"
                        | "webhook.delete"
                )
        })
        .count();
    assert_eq!(refused, 10, "every forged form was the API's refusal");
}
