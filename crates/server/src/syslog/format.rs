//! One audit entry as an RFC 5424 syslog message (formatted by the
//! `syslog_fmt` crate), framed by octet counting (RFC 6587 §3.4.1) for TCP and
//! TLS (RFC 5425). Facility authpriv (10); severity notice for `ok`,
//! warning for `denied` and `failed`. The structured data `drawbridge@32473`
//! carries account, sequence number, actor, action, object, result and
//! source, so a SIEM can see gaps in an account's sequence.

use drawbridge_proto::api::AuditEntry;
use syslog_fmt::Severity;
use syslog_fmt::v5424::{Config, Formatter, Timestamp};

/// The SD-ID of our structured data (32473 is the private enterprise number
/// RFC 5612 reserves for documentation; a deployment may map it).
pub const SD_ID: &str = "drawbridge@32473";
/// Largest message sent; longer details are cut (the audit log keeps them whole).
pub const MAX_MESSAGE: usize = 8 * 1024;

/// The formatter of this server (`hostname`: the public URL's host).
pub fn formatter(hostname: &str) -> Formatter {
    // HOSTNAME is printable ASCII without spaces, at most 255 characters.
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    Config {
        // `log audit` (13); syslog_fmt names the common facilities only, so the
        // closest named one is used: security/authorization messages (authpriv).
        facility: syslog_fmt::Facility::Authpriv,
        hostname: Some(if host.is_empty() { "-" } else { &host }),
        app_name: Some("drawbridge"),
        proc_id: None,
    }
    .into_formatter()
}

/// A MSGID: printable ASCII without spaces, at most 32 characters.
fn msg_id(action: &str) -> String {
    let id: String = action
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    if id.is_empty() { "-".into() } else { id }
}

/// The framed message (`LEN SP MSG`) of one entry.
pub fn frame(f: &Formatter, e: &AuditEntry) -> Vec<u8> {
    let severity = if e.result == "ok" {
        Severity::Notice
    } else {
        Severity::Warning
    };
    let time = e
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let seq = e.seq.to_string();
    let params = [
        ("account", e.account_id.as_str()),
        ("seq", seq.as_str()),
        ("actor", e.actor.as_str()),
        ("action", e.action.as_str()),
        ("object", e.object.as_str()),
        ("result", e.result.as_str()),
        ("source", e.source.as_str()),
    ];
    let mut details = e.details.to_string();
    if details.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        details.truncate(cut);
        details.push('…');
    }
    let text = format!(
        "{} {} {}: {} {}",
        e.action, e.object, e.result, e.actor, details
    );
    let mut msg = Vec::with_capacity(256 + text.len());
    // Writing into a Vec cannot fail.
    let _ = f.write_with_data(
        &mut msg,
        severity,
        Timestamp::PreformattedString(time),
        text,
        Some(&msg_id(&e.action)),
        [(SD_ID, params)],
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(details: serde_json::Value) -> AuditEntry {
        AuditEntry {
            account_id: "acct-1".into(),
            seq: 42,
            time: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            actor: "user:u1".into(),
            action: "session.start".into(),
            object: "session:s1".into(),
            result: "ok".into(),
            source: "192.0.2.7".into(),
            details,
            hash: "h".into(),
            repeated: None,
        }
    }

    #[test]
    fn an_entry_is_one_octet_counted_rfc5424_message_with_escaped_structured_data() {
        let f = formatter("remote.example.com");
        let framed = frame(
            &f,
            &entry(serde_json::json!({"username": "a\"b]c\\d", "note": "line\nbreak"})),
        );
        let text = String::from_utf8(framed).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "octet count");
        // PRI: authpriv (10) * 8 + notice (5).
        assert!(
            msg.starts_with("<85>1 2027-01-15T08:00:00Z remote.example.com drawbridge - session.start [drawbridge@32473 account=\"acct-1\" seq=\"42\""),
            "{msg}"
        );
        assert!(
            msg.contains(" result=\"ok\" source=\"192.0.2.7\"]"),
            "{msg}"
        );
        // The message body is JSON (a line break in a value stays escaped).
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn a_refusal_is_a_warning_and_huge_details_are_cut() {
        let f = formatter("h");
        let mut e = entry(serde_json::json!({"x": "y".repeat(20_000)}));
        e.result = "denied".into();
        let text = String::from_utf8(frame(&f, &e)).unwrap();
        let (_, msg) = text.split_once(' ').unwrap();
        assert!(msg.starts_with("<84>1 "), "{msg}");
        assert!(msg.len() < MAX_MESSAGE + 1024);
    }
}
