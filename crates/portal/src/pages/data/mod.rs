//! The data services in the portal (DESIGN §7): a device's KPI tiles, tags,
//! alarms, alarm history, data status and export ([`device`], [`tags`],
//! [`export`]); the KPI overview with its live route ([`kpis`]) and the
//! alarms page with acknowledgement ([`alarms`]).
//!
//! As everywhere in the portal, the API decides: a control is left out when
//! the API's `GET /devices/{id}/access` says the viewer could not use it, and
//! a forged form is refused by the API anyway.

pub mod alarms;
pub mod device;
pub mod export;
pub mod kpis;
pub mod tags;

use crate::apiclient::{Api, enc};
use drawbridge_proto::api::DeviceAccess;
use drawbridge_proto::data::{BadReason, Quality};
use drawbridge_proto::mailbox::Kpi;
use serde::Serialize;
use std::collections::HashMap;

/// A KPI value older than this is shown as stale.
const STALE_MS: i64 = 10_000;

/// One KPI tile, as the page renders it and the live route sends it (texts
/// only: the page's script puts them in place as text).
#[derive(Debug, Clone, Serialize)]
pub struct Tile {
    /// `device-id/tag`, what the page's `data-kpi` attribute holds.
    pub key: String,
    pub device_id: String,
    pub device: String,
    pub tag: String,
    pub description: String,
    pub value: String,
    pub unit: String,
    pub quality: String,
    /// The quality is bad (or there is no value yet).
    pub bad: bool,
    /// `3 s ago`, or `no value yet`.
    pub age: String,
    pub stale: bool,
}

impl Tile {
    pub fn of(k: &Kpi, now_ms: i64) -> Tile {
        let bad = !matches!(k.quality, Some(Quality::Good)) || k.value.is_none();
        let age_ms = k.time_ms.map(|t| now_ms.saturating_sub(t).max(0));
        Tile {
            key: format!("{}/{}", k.device_id, k.tag),
            device_id: k.device_id.clone(),
            device: k.device.clone(),
            tag: k.tag.clone(),
            description: k.description.clone(),
            value: k.value.map(value_text).unwrap_or_else(|| "—".into()),
            unit: k.unit.clone(),
            quality: k
                .quality
                .as_ref()
                .map(quality_text)
                .unwrap_or_else(|| "no value yet".into()),
            bad,
            age: age_ms
                .map(|a| format!("{} ago", age_text(a)))
                .unwrap_or_else(|| "waiting for the edge".into()),
            stale: age_ms.is_none_or(|a| a > STALE_MS),
        }
    }
}

/// A value for reading: about five significant digits, no exponent.
pub fn value_text(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (4 - magnitude).clamp(0, 9) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// A quality in words.
pub fn quality_text(q: &Quality) -> String {
    match q {
        Quality::Good => "good".into(),
        Quality::Bad { reason } => match reason {
            BadReason::Timeout => "bad: timeout".into(),
            BadReason::Exception { code } => format!("bad: Modbus exception {code}"),
            BadReason::Refused => "bad: connection refused".into(),
            BadReason::Io => "bad: connection error".into(),
        },
    }
}

/// `0.4 s`, `12 s`, `5 min`, `3 h`, `2 d`.
pub fn age_text(ms: i64) -> String {
    let s = ms / 1000;
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else if s < 2 * 86_400 {
        format!("{} h", s / 3600)
    } else {
        format!("{} d", s / 86_400)
    }
}

/// Unix milliseconds as `2026-12-06 10:30:05 UTC`.
pub fn when_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "—".into(),
    }
}

pub fn when_ms_opt(ms: Option<i64>) -> String {
    ms.map(when_ms).unwrap_or_else(|| "—".into())
}

/// The wall clock in Unix milliseconds (the ages of live values).
pub fn now_ms() -> i64 {
    let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// The viewer's rights on the devices a page shows, asked of the API once per
/// device. A device the API will not say anything about gets no controls.
#[derive(Default)]
pub struct Rights(HashMap<String, Option<DeviceAccess>>);

impl Rights {
    pub async fn of(&mut self, api: &Api, device: &str) -> Option<&DeviceAccess> {
        if !self.0.contains_key(device) {
            let a = api
                .get::<DeviceAccess>(&format!("/api/v1/devices/{}/access", enc(device)))
                .await
                .ok();
            self.0.insert(device.to_string(), a);
        }
        self.0.get(device).and_then(Option::as_ref)
    }

    /// May the viewer acknowledge the device's alarms (a full or restricted grant, or an admin)?
    pub async fn can_ack(&mut self, api: &Api, device: &str) -> bool {
        self.of(api, device).await.is_some_and(|a| a.can_tunnel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_with_about_five_significant_digits() {
        assert_eq!(value_text(1500.0), "1500");
        assert_eq!(value_text(-3.0), "-3");
        assert_eq!(value_text(21.533333), "21.533");
        assert_eq!(value_text(0.012345678), "0.012346");
        assert_eq!(value_text(1234.56789), "1234.6");
        assert_eq!(value_text(-0.00001), "-0.00001");
        assert_eq!(value_text(-0.0000000001), "0");
        assert_eq!(value_text(2.5e20), "250000000000000000000");
        assert_eq!(value_text(f64::NAN), "—");
    }

    #[test]
    fn ages_and_times_are_short() {
        assert_eq!(age_text(400), "0.4 s");
        assert_eq!(age_text(12_000), "12 s");
        assert_eq!(age_text(300_000), "5 min");
        assert_eq!(age_text(3 * 3_600_000), "3 h");
        assert_eq!(age_text(3 * 86_400_000), "3 d");
        assert_eq!(when_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when_ms(1_800_000_000_123), "2027-01-15 08:00:00 UTC");
    }

    #[test]
    fn a_tile_says_how_old_and_how_good_its_value_is() {
        let k = Kpi {
            device_id: "d1".into(),
            device: "Press".into(),
            tag: "speed".into(),
            description: String::new(),
            unit: "rpm".into(),
            time_ms: Some(1000),
            value: Some(1480.0),
            quality: Some(Quality::Good),
        };
        let t = Tile::of(&k, 3000);
        assert_eq!(
            (
                t.key.as_str(),
                t.value.as_str(),
                t.age.as_str(),
                t.bad,
                t.stale
            ),
            ("d1/speed", "1480", "2.0 s ago", false, false)
        );
        let t = Tile::of(&k, 60_000);
        assert!(t.stale);
        let bad = Kpi {
            value: None,
            quality: Some(Quality::Bad {
                reason: BadReason::Exception { code: 2 },
            }),
            ..k.clone()
        };
        let t = Tile::of(&bad, 3000);
        assert!(t.bad);
        assert_eq!(t.quality, "bad: Modbus exception 2");
        let none = Kpi {
            time_ms: None,
            value: None,
            quality: None,
            ..k
        };
        let t = Tile::of(&none, 3000);
        assert_eq!(
            (t.value.as_str(), t.age.as_str()),
            ("—", "waiting for the edge")
        );
        assert!(t.stale && t.bad);
    }
}
