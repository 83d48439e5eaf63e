//! Notifications by e-mail and webhook through a durable outbox.
//!
//! A producer calls [`enqueue`] inside the transaction of the change it reports: the
//! event and one delivery per recipient (an e-mail address, a webhook) commit with
//! that change or not at all. A worker ([`worker`]) on every replica claims due
//! deliveries with a lease, sends them, retries failures with capped exponential
//! backoff and records the outcome. A replica that dies holding a lease leaves its
//! deliveries to be claimed again once the lease runs out: a delivery is sent at
//! least once, and in that case possibly twice (webhooks carry a stable
//! `webhook-id`, e-mails a stable `Message-ID`, so receivers can drop the repeat).
//!
//! Who is told: the account's recipient list for the event's kind ([`settings`]),
//! plus the kind's default group (admins for lockouts, reports and disabled
//! webhooks; approvers for sessions waiting for approval), plus every enabled
//! webhook of the account subscribed to the kind.

pub mod mail;
pub mod producers;
pub mod queue;
pub mod runtime;
pub mod settings;
pub mod ssrf;
pub mod sweeps;
pub mod webhook;
pub mod webhooks;
pub mod worker;

pub use runtime::{Notify, NotifyConfig};

use crate::db::Tx;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// What happened: the kinds of event the outbox tells about.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An alarm of a device's tag was raised.
    AlarmRaised,
    /// An alarm returned to normal.
    AlarmReturned,
    /// A user was locked after too many failed logins (default: the admins).
    UserLockout,
    /// A session waits for approval (default: the approvers).
    ApprovalWaiting,
    /// A device has been offline longer than the account's `device_offline_minutes`.
    DeviceOffline,
    /// A device reported offline (`DeviceOffline`) is back: its edge connected again.
    DeviceOnline,
    /// The monthly activity report (default: the admins; CSV attached).
    ActivityReport,
    /// A webhook endpoint failed for too long and was disabled (default: the admins).
    WebhookDisabled,
    /// A session started (or was started and waits for approval), from the audit record.
    SessionStarted,
    /// A session ended (by whom, or why), from the audit record.
    SessionEnded,
    /// A client's tunnel to a device came up.
    TunnelUp,
    /// A client's tunnel to a device went down.
    TunnelDown,
    /// A site turned its remote-access switch on or off.
    SwitchChanged,
    /// A desktop was opened in a browser.
    DesktopOpened,
    /// A desktop in a browser ended (with its recording's SHA-256).
    DesktopEnded,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        EventKind::AlarmRaised,
        EventKind::AlarmReturned,
        EventKind::UserLockout,
        EventKind::ApprovalWaiting,
        EventKind::DeviceOffline,
        EventKind::DeviceOnline,
        EventKind::ActivityReport,
        EventKind::WebhookDisabled,
        EventKind::SessionStarted,
        EventKind::SessionEnded,
        EventKind::TunnelUp,
        EventKind::TunnelDown,
        EventKind::SwitchChanged,
        EventKind::DesktopOpened,
        EventKind::DesktopEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AlarmRaised => "alarm_raised",
            EventKind::AlarmReturned => "alarm_returned",
            EventKind::UserLockout => "user_lockout",
            EventKind::ApprovalWaiting => "approval_waiting",
            EventKind::DeviceOffline => "device_offline",
            EventKind::DeviceOnline => "device_online",
            EventKind::ActivityReport => "activity_report",
            EventKind::WebhookDisabled => "webhook_disabled",
            EventKind::SessionStarted => "session_started",
            EventKind::SessionEnded => "session_ended",
            EventKind::TunnelUp => "tunnel_up",
            EventKind::TunnelDown => "tunnel_down",
            EventKind::SwitchChanged => "switch_changed",
            EventKind::DesktopOpened => "desktop_opened",
            EventKind::DesktopEnded => "desktop_ended",
        }
    }

    /// The kind an audit record of `action` (with result `ok`) is told as.
    pub fn of_audit(action: &str) -> Option<EventKind> {
        Some(match action {
            "session.start" | "session.adhoc" => EventKind::SessionStarted,
            "session.end" => EventKind::SessionEnded,
            "tunnel.up" => EventKind::TunnelUp,
            "tunnel.down" | "tunnel.cut" => EventKind::TunnelDown,
            "device.switch" => EventKind::SwitchChanged,
            "desktop.open" => EventKind::DesktopOpened,
            "desktop.end" => EventKind::DesktopEnded,
            _ => return None,
        })
    }

    /// The users told by default, besides the account's list for the kind.
    fn default_roles(self) -> &'static [&'static str] {
        match self {
            EventKind::UserLockout | EventKind::ActivityReport | EventKind::WebhookDisabled => {
                &["admin"]
            }
            EventKind::ApprovalWaiting => &["admin", "session_admin"],
            _ => &[],
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// Longest subject kept (characters); longer ones are cut.
pub const MAX_SUBJECT: usize = 200;
/// Longest text kept (bytes); longer texts are cut.
pub const MAX_TEXT: usize = 64 * 1024;
/// Largest `data` kept (bytes of JSON); larger data is replaced by a note.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest attachment (bytes); a larger one is left out, with a note in the text.
pub const MAX_ATTACHMENT: usize = 8 * 1024 * 1024;
/// Most e-mail deliveries of one event (the account's list is bounded too).
pub const MAX_EMAIL_RECIPIENTS: usize = 200;

/// A file sent with an e-mail (webhooks carry the event's data only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What to tell: subject and text for e-mails, `data` for webhooks (and the
/// e-mail's text has it too, as the producer wrote it).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: EventKind,
    pub subject: String,
    pub text: String,
    pub data: serde_json::Value,
    pub attachment: Option<Attachment>,
    /// A user (id) left out of the kind's default recipients (the person who
    /// started a session waiting for approval cannot approve it).
    pub except_user: Option<String>,
}

impl Message {
    pub fn new(kind: EventKind, subject: impl Into<String>, text: impl Into<String>) -> Message {
        Message {
            kind,
            subject: subject.into(),
            text: text.into(),
            data: serde_json::Value::Null,
            attachment: None,
            except_user: None,
        }
    }

    /// Structured details (the webhook payload's `data.details`).
    pub fn data(mut self, data: serde_json::Value) -> Message {
        self.data = data;
        self
    }

    /// A CSV file sent with the e-mails.
    pub fn attach_csv(mut self, name: impl Into<String>, bytes: Vec<u8>) -> Message {
        self.attachment = Some(Attachment {
            name: name.into(),
            content_type: "text/csv".into(),
            bytes,
        });
        self
    }

    /// Leaves a user out of the default recipients.
    pub fn except_user(mut self, user_id: impl Into<String>) -> Message {
        self.except_user = Some(user_id.into());
        self
    }
}

/// Queues `msg` for the account's recipients and webhooks, inside the caller's
/// transaction: it is sent if and only if that transaction commits. Returns the
/// event's id, or `None` when nobody is to be told (no address, no webhook).
/// Oversized parts are cut (see the `MAX_` constants); this never fails on content.
pub async fn enqueue(
    tx: &mut Tx<'_>,
    account_id: &str,
    msg: &Message,
    now: i64,
) -> Result<Option<String>, sqlx::Error> {
    let emails = recipients(tx, account_id, msg).await?;
    let hooks = webhooks::subscribed(tx, account_id, msg.kind).await?;
    if emails.is_empty() && hooks.is_empty() {
        return Ok(None);
    }
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let subject = clip_subject(&msg.subject);
    let mut text = clip(&msg.text, MAX_TEXT).to_string();
    let data = match serde_json::to_string(&msg.data) {
        Ok(s) if s.len() <= MAX_DATA => s,
        _ => serde_json::json!({ "truncated": true }).to_string(),
    };
    let attachment = match &msg.attachment {
        Some(a) if a.bytes.len() <= MAX_ATTACHMENT => Some(a),
        Some(a) => {
            text.push_str(&format!(
                "\n\n({} was too large to attach: {} bytes.)",
                a.name,
                a.bytes.len()
            ));
            None
        }
        None => None,
    };
    use base64::Engine;
    sqlx::query(
        "INSERT INTO outbox_events (id, account_id, kind, subject, body, data, attachment_name, attachment_type, attachment, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(msg.kind.as_str())
    .bind(&subject)
    .bind(&text)
    .bind(&data)
    .bind(attachment.map(|a| clip_name(&a.name)))
    .bind(attachment.map(|a| a.content_type.clone()))
    .bind(attachment.map(|a| base64::engine::general_purpose::STANDARD.encode(&a.bytes)))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    for address in &emails {
        queue::insert_delivery(tx, &id, account_id, queue::Channel::Email, address, now).await?;
    }
    for hook in &hooks {
        queue::insert_delivery(tx, &id, account_id, queue::Channel::Webhook, hook, now).await?;
    }
    Ok(Some(id))
}

/// Like [`enqueue`], but only the first time `once_key` is used for the account
/// (a device's offline period, a month's report): replicas racing each other queue
/// it once. Returns whether this call was the first.
pub async fn enqueue_once(
    tx: &mut Tx<'_>,
    account_id: &str,
    once_key: &str,
    msg: &Message,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO outbox_once (account_id, once_key, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (account_id, once_key) DO NOTHING",
    )
    .bind(account_id)
    .bind(once_key)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    enqueue(tx, account_id, msg, now).await?;
    Ok(true)
}

/// The e-mail addresses told about `msg`: the account's list for its kind and the
/// kind's default group (enabled users with an address), each once (ignoring case).
async fn recipients(
    tx: &mut Tx<'_>,
    account_id: &str,
    msg: &Message,
) -> Result<Vec<String>, sqlx::Error> {
    let mut out: Vec<String> = settings::load(tx, account_id)
        .await?
        .recipients
        .get(&msg.kind)
        .cloned()
        .unwrap_or_default();
    for role in msg.kind.default_roles() {
        let rows = sqlx::query(
            "SELECT id, email FROM users WHERE account_id = $1 AND role = $2 AND disabled = 0 AND email IS NOT NULL ORDER BY username",
        )
        .bind(account_id)
        .bind(role)
        .fetch_all(&mut **tx)
        .await?;
        for r in rows {
            let id: String = r.try_get(0)?;
            if msg.except_user.as_deref() == Some(id.as_str()) {
                continue;
            }
            out.push(r.try_get(1)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(a.to_ascii_lowercase()));
    out.truncate(MAX_EMAIL_RECIPIENTS);
    Ok(out)
}

/// One line, at most [`MAX_SUBJECT`] characters.
fn clip_subject(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_SUBJECT)
        .collect()
}

/// A file name without path or control characters, at most 100 characters.
fn clip_name(s: &str) -> String {
    let name: String = s
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | '"'))
        .take(100)
        .collect();
    if name.is_empty() {
        "attachment".into()
    } else {
        name
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
        assert!("alarm".parse::<EventKind>().is_err());
    }

    #[test]
    fn subjects_names_and_texts_are_cut_safely() {
        assert_eq!(clip_subject("a\r\nBcc: x"), "a  Bcc: x");
        assert_eq!(clip_subject(&"é".repeat(500)).chars().count(), MAX_SUBJECT);
        assert_eq!(clip_name("../../etc/passwd"), "....etcpasswd");
        assert_eq!(clip_name("\u{0}"), "attachment");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("abc", 10), "abc");
    }
}
