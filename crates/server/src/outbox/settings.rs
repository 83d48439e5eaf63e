//! An account's notification settings: extra e-mail recipients per event kind and
//! after how long offline a device is reported.

use super::EventKind;
use crate::db::Tx;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::BTreeMap;

/// Most addresses in one kind's list.
pub const MAX_RECIPIENTS_PER_KIND: usize = 50;
/// Longest address (RFC 5321's path limit).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest `device_offline_minutes` (30 days).
pub const MAX_OFFLINE_MINUTES: u32 = 30 * 24 * 60;

/// An account's notification settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Extra e-mail recipients per event kind (at most 50 each), told besides the
    /// kind's default group (admins for `user_lockout`, `activity_report` and
    /// `webhook_disabled`; admins and session admins for `approval_waiting`, except
    /// whoever started the session) — those are the users with an e-mail address.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Vec<String>>, example = json!({"alarm_raised": ["shift@example.com"]}))]
    pub recipients: BTreeMap<EventKind, Vec<String>>,
    /// A device offline longer than this many minutes is reported once per offline
    /// period (`device_offline`); 0 turns it off. At most 43200 (30 days).
    #[serde(default)]
    pub device_offline_minutes: u32,
}

impl NotificationSettings {
    /// Parses every address (lettre's RFC 5322 address type), drops repeats
    /// (ignoring case) and checks the bounds.
    pub fn checked(mut self) -> Result<NotificationSettings, String> {
        if self.device_offline_minutes > MAX_OFFLINE_MINUTES {
            return Err(format!(
                "device_offline_minutes must be 0 (off) to {MAX_OFFLINE_MINUTES}"
            ));
        }
        for (kind, list) in self.recipients.iter_mut() {
            if list.len() > MAX_RECIPIENTS_PER_KIND {
                return Err(format!(
                    "{kind}: at most {MAX_RECIPIENTS_PER_KIND} recipients, not {}",
                    list.len()
                ));
            }
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::with_capacity(list.len());
            for a in list.iter() {
                let a = parse_address(a).map_err(|e| format!("{kind}: {e}"))?;
                if seen.insert(a.to_ascii_lowercase()) {
                    out.push(a);
                }
            }
            *list = out;
        }
        self.recipients.retain(|_, l| !l.is_empty());
        Ok(self)
    }
}

/// One e-mail address (`name@domain`, no display name), as stored.
pub fn parse_address(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > MAX_ADDRESS_LEN {
        return Err(format!(
            "an e-mail address has 3 to {MAX_ADDRESS_LEN} characters"
        ));
    }
    let a: lettre::Address = t
        .parse()
        .map_err(|_| format!("{:?} is not an e-mail address", clip_for_message(t)))?;
    Ok(a.to_string())
}

fn clip_for_message(s: &str) -> String {
    s.chars().take(60).collect()
}

/// The account's settings (defaults when never set).
pub async fn load(tx: &mut Tx<'_>, account_id: &str) -> Result<NotificationSettings, sqlx::Error> {
    load_conn(tx, account_id).await
}

pub async fn load_conn(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
) -> Result<NotificationSettings, sqlx::Error> {
    let row = sqlx::query(
        "SELECT recipients, device_offline_minutes FROM notification_settings WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else {
        return Ok(NotificationSettings::default());
    };
    let recipients: String = r.try_get(0)?;
    let minutes: i64 = r.try_get(1)?;
    Ok(NotificationSettings {
        // Written by `save` only; an unreadable value tells nobody rather than failing the change.
        recipients: serde_json::from_str(&recipients).unwrap_or_default(),
        device_offline_minutes: u32::try_from(minutes).unwrap_or(0),
    })
}

/// Stores checked settings.
pub async fn save(
    tx: &mut Tx<'_>,
    account_id: &str,
    s: &NotificationSettings,
    now: i64,
) -> Result<(), sqlx::Error> {
    let recipients = serde_json::to_string(&s.recipients).unwrap_or_else(|_| "{}".into());
    sqlx::query(
        "INSERT INTO notification_settings (account_id, recipients, device_offline_minutes, updated_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id) DO UPDATE SET recipients = $2, device_offline_minutes = $3, updated_at = $4",
    )
    .bind(account_id)
    .bind(recipients)
    .bind(i64::from(s.device_offline_minutes))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(kind: EventKind, list: Vec<String>) -> NotificationSettings {
        NotificationSettings {
            recipients: [(kind, list)].into_iter().collect(),
            device_offline_minutes: 0,
        }
    }

    #[test]
    fn addresses_are_parsed_deduplicated_and_bounded() {
        let s = with(
            EventKind::AlarmRaised,
            vec![
                " ops@example.com ".into(),
                "OPS@example.com".into(),
                "b@example.org".into(),
            ],
        )
        .checked()
        .unwrap();
        assert_eq!(
            s.recipients[&EventKind::AlarmRaised],
            ["ops@example.com", "b@example.org"]
        );
        for bad in [
            "",
            "nobody",
            "a@",
            "@b",
            "Name <a@b.c>",
            "a@b.c\r\nBcc: x@y.z",
            "a b@c.d",
        ] {
            assert!(
                with(EventKind::AlarmRaised, vec![bad.into()])
                    .checked()
                    .is_err(),
                "{bad:?}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(with(EventKind::UserLockout, vec![long]).checked().is_err());
        let many = (0..51).map(|i| format!("u{i}@example.com")).collect();
        assert!(with(EventKind::UserLockout, many).checked().is_err());
        let fifty = (0..50).map(|i| format!("u{i}@example.com")).collect();
        assert!(with(EventKind::UserLockout, fifty).checked().is_ok());
        let s = NotificationSettings {
            device_offline_minutes: MAX_OFFLINE_MINUTES + 1,
            ..Default::default()
        };
        assert!(s.checked().is_err());
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        assert!(
            serde_json::from_str::<NotificationSettings>(r#"{"recipients":{"alarm":["a@b.c"]}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<NotificationSettings>(r#"{"extra":1}"#).is_err());
    }
}
