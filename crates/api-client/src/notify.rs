//! Notifications by e-mail and webhook (admins): the account's recipients per
//! event kind and offline threshold, users' e-mail addresses, webhooks.
//!
//! The server keeps these types in its outbox (not in `drawbridge-proto`), so
//! their JSON shapes are written out here; event kinds travel as their names
//! (`alarm_raised`, …) and the server's own list of them comes with
//! [`NotificationsView::kinds`].

use crate::client::{Client, seg};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// An account's notification settings, as `PUT /account/notifications` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSettings {
    /// Extra e-mail recipients per event kind (besides the kind's default group).
    #[serde(default)]
    pub recipients: BTreeMap<String, Vec<String>>,
    /// A device offline longer than this is reported; 0: never.
    #[serde(default)]
    pub device_offline_minutes: u32,
}

/// `GET /account/notifications`: the settings, whether the server sends
/// e-mail at all, and every event kind there is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsView {
    #[serde(flatten)]
    pub settings: NotificationSettings,
    pub email_configured: bool,
    pub kinds: Vec<String>,
}

/// A user's e-mail address (None: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEmail {
    pub email: Option<String>,
}

/// A webhook endpoint (its secret is shown once, when it is created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// False once disabled (by an admin, or after failing for too long).
    pub enabled: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A new webhook and its signing secret (`whsec_…`), shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateWebhook {
    pub url: String,
    pub events: Vec<String>,
}

/// What to change; absent fields stay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateWebhook {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl Client {
    pub async fn notification_settings(&self) -> Result<NotificationsView> {
        self.get("/account/notifications").await
    }
    /// Replaces the account's notification settings.
    pub async fn put_notification_settings(
        &self,
        settings: &NotificationSettings,
    ) -> Result<NotificationsView> {
        self.json(
            reqwest::Method::PUT,
            "/account/notifications",
            &[],
            Some(&crate::client::erased::Body(settings)),
        )
        .await
    }
    pub async fn user_email(&self, user: &str) -> Result<UserEmail> {
        self.get(&format!("/users/{}/email", seg(user))).await
    }
    pub async fn put_user_email(&self, user: &str, email: Option<&str>) -> Result<UserEmail> {
        let body = UserEmail {
            email: email.map(str::to_string),
        };
        self.json(
            reqwest::Method::PUT,
            &format!("/users/{}/email", seg(user)),
            &[],
            Some(&crate::client::erased::Body(&body)),
        )
        .await
    }
    pub async fn webhooks(&self) -> Result<Vec<Webhook>> {
        self.get("/account/webhooks").await
    }
    pub async fn create_webhook(&self, req: &CreateWebhook) -> Result<CreatedWebhook> {
        self.post("/account/webhooks", req).await
    }
    pub async fn update_webhook(&self, id: &str, req: &UpdateWebhook) -> Result<Webhook> {
        self.patch(&format!("/account/webhooks/{}", seg(id)), req)
            .await
    }
    pub async fn delete_webhook(&self, id: &str) -> Result<()> {
        self.delete(&format!("/account/webhooks/{}", seg(id))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_shapes_parse() {
        let v: NotificationsView = serde_json::from_str(
            r#"{"recipients":{"alarm_raised":["a@example.com"]},"device_offline_minutes":30,
                "email_configured":false,"kinds":["alarm_raised","user_lockout"]}"#,
        )
        .unwrap();
        assert_eq!(v.settings.device_offline_minutes, 30);
        assert_eq!(v.settings.recipients["alarm_raised"], ["a@example.com"]);
        // What goes back is exactly what PUT takes (the server denies unknown fields).
        let put = serde_json::to_value(&v.settings).unwrap();
        assert_eq!(
            put,
            serde_json::json!({"recipients":{"alarm_raised":["a@example.com"]},"device_offline_minutes":30})
        );
        let w: Webhook = serde_json::from_str(
            r#"{"id":"w1","url":"https://h.example/x","events":["alarm_raised"],"enabled":true,
                "failing_since":null,"last_success_at":"2026-01-02T03:04:05Z","last_error":null,
                "disabled_at":null,"disabled_reason":null,"created_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(w.last_success_at.is_some());
        let u = serde_json::to_value(UpdateWebhook {
            enabled: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(u, serde_json::json!({"enabled": false}));
    }
}
