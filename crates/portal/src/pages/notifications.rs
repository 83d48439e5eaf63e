//! Notifications (admins): extra e-mail recipients per event kind, the
//! device-offline threshold, users' e-mail addresses, and webhooks (a new
//! webhook's secret is shown once, on the page that answers its form).

use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, error_page, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::Action;
use drawbridge_proto::api::User;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Form fields holding a kind's recipients are `recipients_KIND`.
const RECIPIENTS: &str = "recipients_";

/// The API's notification settings (`GET /api/v1/account/notifications`).
#[derive(Deserialize)]
struct Settings {
    #[serde(default)]
    recipients: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    device_offline_minutes: u32,
    #[serde(default)]
    email_configured: bool,
    #[serde(default)]
    kinds: Vec<String>,
}

#[derive(Deserialize)]
struct UserEmail {
    email: Option<String>,
}

/// A webhook as the API lists it (no secret).
#[derive(Deserialize)]
struct Webhook {
    id: String,
    url: String,
    events: Vec<String>,
    enabled: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    failing_since: Option<OffsetDateTime>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    disabled_reason: Option<String>,
}

#[derive(Deserialize)]
struct CreatedWebhook {
    webhook: Webhook,
    secret: String,
}

pub struct KindRow {
    pub kind: String,
    pub label: &'static str,
    pub text: String,
}

pub struct EmailRow {
    pub id: String,
    pub username: String,
    pub role: String,
    pub email: String,
}

pub struct HookRow {
    pub id: String,
    pub url: String,
    pub events: String,
    pub enabled: bool,
    pub failing_since: Option<String>,
    pub last_error: Option<String>,
    pub disabled_reason: Option<String>,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct Page {
    l: Layout,
    email_configured: bool,
    kinds: Vec<KindRow>,
    offline_minutes: u32,
    users: Vec<EmailRow>,
    hooks: Vec<HookRow>,
    /// A webhook just made: its URL and secret, shown this once.
    created: Option<(String, String)>,
}

/// What a kind is, in words.
fn label(kind: &str) -> &'static str {
    match kind {
        "alarm_raised" => "Alarm raised",
        "alarm_returned" => "Alarm returned to normal",
        "user_lockout" => "User locked out (admins are told too)",
        "approval_waiting" => "Session waits for approval (admins and session admins are told too)",
        "device_offline" => "Device offline too long",
        "device_online" => "Device back online (after it was reported offline)",
        "activity_report" => "Monthly activity report (admins are told too)",
        "webhook_disabled" => "Webhook disabled after failing (admins are told too)",
        "session_started" => "Session started",
        "session_ended" => "Session ended",
        "tunnel_up" => "Tunnel up (a client reached a device)",
        "tunnel_down" => "Tunnel down",
        "switch_changed" => "Site switch turned on or off",
        "desktop_opened" => "Desktop opened in a browser",
        "desktop_ended" => "Desktop in a browser ended (with its recording's hash)",
        _ => "",
    }
}

fn back() -> String {
    format!("{PREFIX}/notifications")
}

pub async fn page(v: Viewer) -> Response {
    render_page(&v, None).await
}

async fn render_page(v: &Viewer, created: Option<(String, String)>) -> Response {
    if !v.can(Action::ManageUsers) {
        return v.fail(&drawbridge_proto::ApiError::new(
            drawbridge_proto::ErrorCode::Forbidden,
            "notifications are for the account's admins",
        ));
    }
    let s: Settings = match v.api.get("/api/v1/account/notifications").await {
        Ok(s) => s,
        Err(e) => return v.fail(&e),
    };
    let hooks: Vec<Webhook> = match v.api.get("/api/v1/account/webhooks").await {
        Ok(h) => h,
        Err(e) => return v.fail(&e),
    };
    let users: Vec<User> = match v.api.get("/api/v1/users").await {
        Ok(u) => u,
        Err(e) => return v.fail(&e),
    };
    let mut emails = Vec::with_capacity(users.len());
    for u in users {
        let e: UserEmail = match v
            .api
            .get(&format!("/api/v1/users/{}/email", enc(&u.id)))
            .await
        {
            Ok(e) => e,
            Err(e) => return v.fail(&e),
        };
        emails.push(EmailRow {
            id: u.id,
            username: u.username.to_string(),
            role: u.role.as_str().to_string(),
            email: e.email.unwrap_or_default(),
        });
    }
    let page = Page {
        l: v.layout("Notifications"),
        email_configured: s.email_configured,
        kinds: s
            .kinds
            .iter()
            .map(|k| KindRow {
                kind: k.clone(),
                label: label(k),
                text: s
                    .recipients
                    .get(k)
                    .map(|l| l.join("\n"))
                    .unwrap_or_default(),
            })
            .collect(),
        offline_minutes: s.device_offline_minutes,
        users: emails,
        hooks: hooks
            .into_iter()
            .map(|h| HookRow {
                id: h.id,
                url: h.url,
                events: h.events.join(", "),
                enabled: h.enabled,
                failing_since: h.failing_since.as_ref().map(super::when),
                last_error: h.last_error,
                disabled_reason: h.disabled_reason,
            })
            .collect(),
        created,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

/// The recipients of every kind the form names, one address per line (or
/// comma separated), empty lines dropped; the API checks each address.
fn recipients(p: &Posted) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (k, v) in &p.form.0 {
        if let Some(kind) = k.strip_prefix(RECIPIENTS) {
            let list: Vec<String> = v
                .split(['\n', ','])
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            out.insert(kind.to_string(), list);
        }
    }
    out
}

pub async fn update(p: Posted) -> Response {
    let Ok(minutes) = p.form.get("device_offline_minutes").trim().parse::<u32>() else {
        return Flash::error("Device offline after: enter a whole number of minutes (0: off).")
            .redirect(&back());
    };
    let body = json!({ "recipients": recipients(&p), "device_offline_minutes": minutes });
    let r = p
        .api
        .call::<serde::de::IgnoredAny>(Method::PUT, "/api/v1/account/notifications", Some(body))
        .await;
    after(
        r,
        &p.headers,
        &back(),
        "The notification settings were saved.",
    )
}

pub async fn set_email(Path(id): Path<String>, p: Posted) -> Response {
    let email = p.form.opt("email");
    let r = p
        .api
        .call::<UserEmail>(
            Method::PUT,
            &format!("/api/v1/users/{}/email", enc(&id)),
            Some(json!({ "email": email })),
        )
        .await;
    let msg = match email {
        Some(e) => format!("The e-mail address is now {e}."),
        None => "The e-mail address was removed.".to_string(),
    };
    after(r, &p.headers, &back(), &msg)
}

/// A new webhook; the page that answers shows its secret, this once.
pub async fn create_webhook(State(portal): State<Portal>, p: Posted) -> Response {
    let events = p.form.all("events");
    let r = p
        .api
        .post::<CreatedWebhook>(
            "/api/v1/account/webhooks",
            &json!({ "url": p.form.get("url").trim(), "events": events }),
        )
        .await;
    match r {
        Ok(c) => match p.viewer(&portal).await {
            Ok(v) => render_page(&v, Some((c.webhook.url, c.secret))).await,
            Err(r) => r,
        },
        Err(e) => after::<()>(Err(e), &p.headers, &back(), ""),
    }
}

pub async fn update_webhook(Path(id): Path<String>, p: Posted) -> Response {
    let (enabled, msg) = match p.form.get("action") {
        "enable" => (true, "The webhook was enabled."),
        "disable" => (false, "The webhook was disabled."),
        _ => return error_page(StatusCode::BAD_REQUEST, "Unknown action."),
    };
    let r = p
        .api
        .patch::<serde::de::IgnoredAny>(
            &format!("/api/v1/account/webhooks/{}", enc(&id)),
            &json!({ "enabled": enabled }),
        )
        .await;
    after(r, &p.headers, &back(), msg)
}

pub async fn delete_webhook(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/account/webhooks/{}", enc(&id)),
        )
        .await;
    after(r, &p.headers, &back(), "The webhook was deleted.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_has_words() {
        for k in [
            "alarm_raised",
            "alarm_returned",
            "user_lockout",
            "approval_waiting",
            "device_offline",
            "device_online",
            "activity_report",
            "webhook_disabled",
            "session_started",
            "session_ended",
            "tunnel_up",
            "tunnel_down",
            "switch_changed",
            "desktop_opened",
            "desktop_ended",
        ] {
            assert!(!label(k).is_empty(), "{k}");
        }
    }
}
