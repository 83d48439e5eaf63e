//! Page handlers, one module per area.

pub mod access;
pub mod account;
pub mod audit;
pub mod dashboard;
pub mod data;
pub mod desktops;
pub mod devices;
pub mod login;
pub mod me;
pub mod notifications;
pub mod sessions;
pub mod sso;
pub mod sso_settings;
pub mod updates;
pub mod users;
pub mod wireguard;

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
    // A single host is written without its /32 or /128.
    let addr = if t.address.prefix_len() == t.address.max_prefix_len() {
        t.address.addr().to_string()
    } else {
        t.address.to_string()
    };
    let mut s = format!("{}:{addr}", t.protocol.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_the_form_text() {
        let ts = parse_targets(
            "tcp:192.168.1.10:502\n udp:10.0.0.0/24:1000-2000, icmp:192.168.1.10\n\n",
        )
        .unwrap();
        assert_eq!(ts.len(), 3);
        assert_eq!(
            targets_text(&ts),
            "tcp:192.168.1.10:502\nudp:10.0.0.0/24:1000-2000\nicmp:192.168.1.10"
        );
        assert_eq!(parse_targets(&targets_text(&ts)).unwrap(), ts);
        let e = parse_targets("tcp:192.168.1.10:0").unwrap_err();
        assert!(e.contains("tcp:192.168.1.10:0"), "{e}");
        assert!(parse_targets("").unwrap().is_empty());
    }

    #[test]
    fn the_policy_is_described_from_its_own_numbers() {
        let p = PasswordPolicy {
            min_length: 12,
            min_classes: 3,
            expiry_days: 90,
            history: 4,
            deny_common: true,
        };
        let d = describe_policy(&p);
        for part in [
            "At least 12 characters",
            "at least 3 of",
            "last 4 passwords",
            "90 days",
            "commonly used",
        ] {
            assert!(d.contains(part), "{d}");
        }
    }
}
