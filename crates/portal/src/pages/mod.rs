//! Page handlers, one module per area.

pub mod access;
pub mod account;
pub mod audit;
pub mod dashboard;
pub mod devices;
pub mod login;
pub mod me;
pub mod sessions;
pub mod users;

use drawbridge_proto::{PasswordPolicy, Target};
use time::OffsetDateTime;

/// `2026-11-22 03:10 UTC`.
pub fn when(t: &OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

pub fn when_opt(t: &Option<OffsetDateTime>) -> String {
    t.as_ref().map(when).unwrap_or_else(|| "—".into())
}

/// The policy in words, for forms that set a password.
pub fn describe_policy(p: &PasswordPolicy) -> String {
    let mut s = format!("At least {} characters", p.min_length);
    if p.min_classes > 0 {
        s.push_str(&format!(
            ", mixing at least {} of: lower case, upper case, digits, other characters",
            p.min_classes
        ));
    }
    if p.deny_common {
        s.push_str("; not a commonly used password");
    }
    if p.history > 0 {
        s.push_str(&format!(
            "; different from the last {} passwords",
            p.history
        ));
    }
    if p.expiry_days > 0 {
        s.push_str(&format!("; expires after {} days", p.expiry_days));
    }
    s.push('.');
    s
}

/// Targets as the one-per-line text the forms use (`tcp:192.168.1.10:502`).
pub fn targets_text(ts: &[Target]) -> String {
    ts.iter().map(target_str).collect::<Vec<_>>().join("\n")
}

pub fn target_str(t: &Target) -> String {
    let mut s = format!("{}:{}", t.protocol.as_str(), t.address);
    if let Some(p) = t.ports {
        s.push_str(&format!(":{p}"));
    }
    s
}

/// Parses one target per line (or comma separated); the message names the bad line.
pub fn parse_targets(text: &str) -> Result<Vec<Target>, String> {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<Target>()
                .map_err(|e| format!("target {l:?}: {e}"))
        })
        .collect()
}

/// A short id for display.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}
