//! Formatting of API objects for people: times, targets, key/value blocks.

use drawbridge_proto::api::{Device, User};
use drawbridge_proto::{Protocol, Target};
use time::OffsetDateTime;

/// `2026-11-22 14:05Z`.
pub fn time(t: &OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.to_string())
}

pub fn opt_time(t: &Option<OffsetDateTime>) -> String {
    t.as_ref().map(time).unwrap_or_else(|| "-".into())
}

/// A target in the command line's own syntax, e.g. `tcp:192.168.1.10:502`.
pub fn target(t: &Target) -> String {
    let host_prefix = if t.address.addr().is_ipv4() { 32 } else { 128 };
    let addr = if t.address.prefix_len() == host_prefix {
        t.address.addr().to_string()
    } else {
        t.address.to_string()
    };
    let proto = match t.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    };
    match t.ports {
        Some(p) => format!("{proto}:{addr}:{p}"),
        None => format!("{proto}:{addr}"),
    }
}

pub fn targets(ts: &[Target]) -> String {
    if ts.is_empty() {
        return "-".into();
    }
    ts.iter().map(target).collect::<Vec<_>>().join(", ")
}

pub fn device_state(d: &Device) -> &'static str {
    let s = &d.status;
    if s.archived {
        "archived"
    } else if s.disabled {
        "disabled"
    } else if s.pending_approval {
        "pending approval"
    } else if !s.enrolled {
        "not enrolled"
    } else if s.online {
        "online"
    } else {
        "offline"
    }
}

pub fn switch(d: &Device) -> &'static str {
    if !d.status.enrolled {
        "-"
    } else if d.status.switch_on {
        "on"
    } else {
        "off"
    }
}

pub fn user_state(u: &User) -> String {
    if u.disabled {
        "disabled".into()
    } else if let Some(t) = u.locked_until.filter(|t| *t > OffsetDateTime::now_utc()) {
        format!("locked until {}", time(&t))
    } else {
        "active".into()
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A block of `Key  value` lines; a value with several lines is indented.
#[derive(Default)]
pub struct Fields(Vec<(String, Vec<String>)>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.push((key.into(), vec![clean(&value.into())]));
        self
    }

    pub fn lines(&mut self, key: &str, values: impl IntoIterator<Item = String>) -> &mut Self {
        let mut v: Vec<String> = values.into_iter().map(|s| clean(&s)).collect();
        if v.is_empty() {
            v.push("-".into());
        }
        self.0.push((key.into(), v));
        self
    }

    pub fn render(&self) -> String {
        let w = self
            .0
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, vs) in &self.0 {
            for (i, v) in vs.iter().enumerate() {
                let key = if i == 0 { k.as_str() } else { "" };
                let pad = w - key.chars().count();
                let line = format!("{key}{}  {v}", " ".repeat(pad));
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        out
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_print_in_the_syntax_they_are_typed_in() {
        for s in [
            "tcp:192.168.1.10:502",
            "icmp:10.0.0.0/24",
            "udp:10.0.0.0/8:1000-2000",
            "tcp:fd00::1:502",
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!(target(&t), s);
            assert_eq!(target(&t).parse::<Target>().unwrap(), t);
        }
    }

    #[test]
    fn fields_align() {
        let mut f = Fields::new();
        f.add("ID", "x")
            .lines("Firewall", vec!["a".into(), "b".into()]);
        assert_eq!(f.render(), "ID        x\nFirewall  a\n          b\n");
    }
}
