//! Data services (DESIGN §7): PLC tags an edge polls, the values it logs to its
//! historian and pushes to the server, live KPI values, and alarms.
//!
//! A tag is parsed whole ([`TagSpec`] deserialises through [`RawTagSpec`] and
//! its checks), so the server and the edge only ever hold tags that can be
//! polled: a known function, an address range that fits, a poll period of at
//! least [`MIN_POLL_MS`], finite scale and offset, bounded texts.

use crate::text::TagName;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// Most tags one device may have.
pub const MAX_TAGS_PER_DEVICE: usize = 500;
/// Most KPI tags one device may have.
pub const MAX_KPIS_PER_DEVICE: usize = 16;
/// Shortest poll period.
pub const MIN_POLL_MS: u32 = 100;
/// Longest poll period (one hour).
pub const MAX_POLL_MS: u32 = 3_600_000;
/// Most records in one `records` message.
pub const MAX_RECORDS_PER_MESSAGE: usize = 1000;
/// Longest description of a tag.
pub const MAX_TAG_DESCRIPTION: usize = 256;
/// Longest unit of a tag (`°C`, `rpm`, `bar`).
pub const MAX_TAG_UNIT: usize = 16;

/// Which Modbus table a tag reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModbusFunction {
    /// Function 1.
    Coils,
    /// Function 2.
    DiscreteInputs,
    /// Function 3.
    HoldingRegisters,
    /// Function 4.
    InputRegisters,
}

impl ModbusFunction {
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coils | Self::DiscreteInputs)
    }
}

/// How the raw value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

impl ValueType {
    /// Registers (or bits) one value occupies.
    pub fn width(self) -> u16 {
        match self {
            Self::U32 | Self::I32 | Self::F32 => 2,
            _ => 1,
        }
    }
}

/// Order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// The first register holds the high word (Modicon convention).
    #[default]
    HighFirst,
    /// The first register holds the low word.
    LowFirst,
}

/// Where a tag's value comes from: one Modbus TCP read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    /// The PLC's LAN address; must be one of the device's released LAN addresses.
    #[schema(value_type = String, example = "192.168.1.10")]
    pub host: Ipv4Addr,
    #[serde(default = "modbus_port")]
    pub port: u16,
    #[serde(default = "unit_id")]
    pub unit_id: u8,
    pub function: ModbusFunction,
    /// The first register or bit (0-based protocol address).
    pub address: u16,
}

fn modbus_port() -> u16 {
    502
}
fn unit_id() -> u8 {
    1
}

/// When a polled value is written to the historian.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum LogMode {
    /// Not logged.
    Off,
    /// When the value moves by more than `deadband` from the last logged value,
    /// or its quality changes.
    OnChange {
        #[serde(default)]
        deadband: f64,
    },
    /// Every `period_ms` (a multiple of the poll period is sensible).
    Every { period_ms: u32 },
}

/// An alarm rule, evaluated on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlarmRule {
    /// In alarm above `high` or below `low` for at least `min_duration_ms`;
    /// back to normal once inside the limits by more than `deadband`.
    Limits {
        #[serde(default)]
        high: Option<f64>,
        #[serde(default)]
        low: Option<f64>,
        #[serde(default)]
        deadband: f64,
        #[serde(default)]
        min_duration_ms: u32,
    },
    /// In alarm while the (boolean) value equals `alarm_when` for at least
    /// `min_duration_ms`.
    State {
        alarm_when: bool,
        #[serde(default)]
        min_duration_ms: u32,
    },
}

/// A tag as written by an admin (the API body) and as sent to the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "RawTagSpec")]
pub struct TagSpec {
    pub name: TagName,
    pub description: String,
    pub source: ModbusSource,
    pub value_type: ValueType,
    pub word_order: WordOrder,
    /// value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    pub poll_ms: u32,
    pub log: LogMode,
    /// Shown live (at most [`MAX_KPIS_PER_DEVICE`] per device).
    pub kpi: bool,
    pub alarm: Option<AlarmRule>,
}

/// [`TagSpec`] before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTagSpec {
    name: TagName,
    #[serde(default)]
    description: String,
    source: ModbusSource,
    value_type: ValueType,
    #[serde(default)]
    word_order: WordOrder,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
    #[serde(default)]
    unit: String,
    #[serde(default = "default_poll")]
    poll_ms: u32,
    #[serde(default = "log_off")]
    log: LogMode,
    #[serde(default)]
    kpi: bool,
    #[serde(default)]
    alarm: Option<AlarmRule>,
}

fn one() -> f64 {
    1.0
}
fn default_poll() -> u32 {
    1000
}
fn log_off() -> LogMode {
    LogMode::Off
}

/// Why a tag is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("poll_ms must be between {MIN_POLL_MS} and {MAX_POLL_MS}")]
    PollPeriod,
    #[error("scale, offset, deadbands and limits must be finite numbers, deadbands not negative")]
    NotFinite,
    #[error("scale must not be 0")]
    ZeroScale,
    #[error(
        "description is at most {MAX_TAG_DESCRIPTION} characters, unit at most {MAX_TAG_UNIT}, neither with control characters"
    )]
    Text,
    #[error("coils and discrete inputs hold bool values only")]
    BitsAreBool,
    #[error("the value does not fit below register address 65535")]
    AddressRange,
    #[error("log period must be between {MIN_POLL_MS} and 86400000 ms")]
    LogPeriod,
    #[error("a limits alarm needs high or low, with low below high")]
    Limits,
    #[error("a state alarm needs a bool tag, a limits alarm a numeric one")]
    AlarmKind,
}

fn finite(x: f64) -> bool {
    x.is_finite()
}

impl TryFrom<RawTagSpec> for TagSpec {
    type Error = TagError;
    fn try_from(r: RawTagSpec) -> Result<Self, TagError> {
        if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&r.poll_ms) {
            return Err(TagError::PollPeriod);
        }
        if !finite(r.scale) || !finite(r.offset) {
            return Err(TagError::NotFinite);
        }
        if r.scale == 0.0 {
            return Err(TagError::ZeroScale);
        }
        let text_ok =
            |s: &str, max: usize| s.chars().count() <= max && !s.chars().any(char::is_control);
        if !text_ok(&r.description, MAX_TAG_DESCRIPTION) || !text_ok(&r.unit, MAX_TAG_UNIT) {
            return Err(TagError::Text);
        }
        if r.source.function.is_bits() && r.value_type != ValueType::Bool {
            return Err(TagError::BitsAreBool);
        }
        if u32::from(r.source.address) + u32::from(r.value_type.width()) > 65_536 {
            return Err(TagError::AddressRange);
        }
        match r.log {
            LogMode::OnChange { deadband } if !finite(deadband) || deadband < 0.0 => {
                return Err(TagError::NotFinite);
            }
            LogMode::Every { period_ms } if !(MIN_POLL_MS..=86_400_000).contains(&period_ms) => {
                return Err(TagError::LogPeriod);
            }
            _ => {}
        }
        match r.alarm {
            Some(AlarmRule::Limits {
                high,
                low,
                deadband,
                ..
            }) => {
                if r.value_type == ValueType::Bool {
                    return Err(TagError::AlarmKind);
                }
                if !finite(deadband) || deadband < 0.0 {
                    return Err(TagError::NotFinite);
                }
                if high.is_some_and(|h| !finite(h)) || low.is_some_and(|l| !finite(l)) {
                    return Err(TagError::NotFinite);
                }
                match (low, high) {
                    (None, None) => return Err(TagError::Limits),
                    (Some(l), Some(h)) if l >= h => return Err(TagError::Limits),
                    _ => {}
                }
            }
            Some(AlarmRule::State { .. }) if r.value_type != ValueType::Bool => {
                return Err(TagError::AlarmKind);
            }
            _ => {}
        }
        Ok(TagSpec {
            name: r.name,
            description: r.description,
            source: r.source,
            value_type: r.value_type,
            word_order: r.word_order,
            scale: r.scale,
            offset: r.offset,
            unit: r.unit,
            poll_ms: r.poll_ms,
            log: r.log,
            kpi: r.kpi,
            alarm: r.alarm,
        })
    }
}

/// Why a read gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum BadReason {
    /// No answer within the poll period (at most 5 s).
    Timeout,
    /// The PLC answered with a Modbus exception (its code, e.g. 2 = illegal address).
    Exception { code: u8 },
    /// The TCP connection was refused.
    Refused,
    /// Another connection or protocol failure.
    Io,
}

/// A value's quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "quality", rename_all = "snake_case")]
pub enum Quality {
    Good,
    Bad {
        #[serde(flatten)]
        reason: BadReason,
    },
}

impl Quality {
    /// `good`, `timeout`, `exception:2`, `refused`, `io`: how the store keeps it.
    pub fn code(&self) -> String {
        match self {
            Quality::Good => "good".into(),
            Quality::Bad {
                reason: BadReason::Timeout,
            } => "timeout".into(),
            Quality::Bad {
                reason: BadReason::Exception { code },
            } => format!("exception:{code}"),
            Quality::Bad {
                reason: BadReason::Refused,
            } => "refused".into(),
            Quality::Bad {
                reason: BadReason::Io,
            } => "io".into(),
        }
    }

    /// The inverse of [`Quality::code`].
    pub fn from_code(s: &str) -> Option<Quality> {
        let reason = match s {
            "good" => return Some(Quality::Good),
            "timeout" => BadReason::Timeout,
            "refused" => BadReason::Refused,
            "io" => BadReason::Io,
            _ => BadReason::Exception {
                code: s.strip_prefix("exception:")?.parse().ok()?,
            },
        };
        Some(Quality::Bad { reason })
    }
}

/// What an alarm did at one moment, as the edge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmTransition {
    /// The condition held for the minimum duration.
    Raised,
    /// Back inside the limits (past the deadband).
    Returned,
}

/// One entry of an edge's historian, pushed to the server in order of `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Per device and historian stream, strictly increasing.
    pub seq: u64,
    /// Unix milliseconds when it was sampled (or the alarm changed).
    pub time_ms: i64,
    pub tag: TagName,
    #[serde(flatten)]
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    /// A logged sample; `value` is absent when the quality is bad.
    Point {
        value: Option<f64>,
        quality: Quality,
    },
    /// An alarm raised or returned to normal, with the value that did it.
    Alarm {
        transition: AlarmTransition,
        value: Option<f64>,
    },
}

/// The latest value of a KPI tag, sent while someone watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveValue {
    #[schema(value_type = String)]
    pub tag: TagName,
    pub time_ms: i64,
    pub value: Option<f64>,
    pub quality: Quality,
}

/// How the edge's historian buffer stands, sent with every push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferStatus {
    /// Identifies the historian's sequence space: a new buffer (a replaced
    /// gateway, a wiped disk) starts a new stream whose `seq` starts again at 1.
    pub stream: String,
    /// Records waiting for the server's acknowledgement.
    pub pending: u64,
    /// Records the bound made the edge drop (oldest first), since the stream began.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(extra: &str) -> String {
        format!(
            r#"{{"name":"t","source":{{"host":"127.0.0.2","function":"holding_registers","address":10}},"value_type":"f32"{extra}}}"#
        )
    }

    #[test]
    fn a_tag_gets_its_defaults() {
        let t: TagSpec = serde_json::from_str(&tag("")).unwrap();
        assert_eq!(t.source.port, 502);
        assert_eq!(t.source.unit_id, 1);
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.poll_ms, 1000);
        assert_eq!(t.log, LogMode::Off);
        assert_eq!(t.word_order, WordOrder::HighFirst);
        let back: TagSpec = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn tags_that_cannot_be_polled_are_refused() {
        for bad in [
            r#","poll_ms":99"#,
            r#","poll_ms":3600001"#,
            r#","scale":0"#,
            r#","scale":1e999"#,
            r#","unit":"aaaaaaaaaaaaaaaaa""#,
            r#","description":"a\nb""#,
            r#","log":{"mode":"on_change","deadband":-1}"#,
            r#","log":{"mode":"every","period_ms":5}"#,
            r#","alarm":{"kind":"limits"}"#,
            r#","alarm":{"kind":"limits","low":5,"high":5}"#,
            r#","alarm":{"kind":"state","alarm_when":true}"#,
            r#","surprise":1"#,
        ] {
            assert!(serde_json::from_str::<TagSpec>(&tag(bad)).is_err(), "{bad}");
        }
        let coil_f32 = tag("").replace("holding_registers", "coils");
        assert!(serde_json::from_str::<TagSpec>(&coil_f32).is_err());
        let past_end = tag("").replace("\"address\":10", "\"address\":65535");
        assert!(serde_json::from_str::<TagSpec>(&past_end).is_err());
        let not_an_ip = tag("").replace("127.0.0.2", "plc.local");
        assert!(serde_json::from_str::<TagSpec>(&not_an_ip).is_err());
        assert!(
            serde_json::from_str::<TagSpec>(&tag(
                r#","alarm":{"kind":"limits","high":80,"deadband":2,"min_duration_ms":500}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn qualities_round_trip_through_their_store_code() {
        for q in [
            Quality::Good,
            Quality::Bad {
                reason: BadReason::Timeout,
            },
            Quality::Bad {
                reason: BadReason::Exception { code: 2 },
            },
            Quality::Bad {
                reason: BadReason::Refused,
            },
            Quality::Bad {
                reason: BadReason::Io,
            },
        ] {
            assert_eq!(Quality::from_code(&q.code()), Some(q));
            let json = serde_json::to_string(&q).unwrap();
            assert_eq!(serde_json::from_str::<Quality>(&json).unwrap(), q);
        }
        assert_eq!(Quality::from_code("exception:x"), None);
        assert_eq!(Quality::from_code("nonsense"), None);
    }

    #[test]
    fn records_travel_flat() {
        let r = Record {
            seq: 7,
            time_ms: 1_700_000_000_000,
            tag: TagName::try_from("t").unwrap(),
            body: RecordBody::Point {
                value: Some(1.5),
                quality: Quality::Good,
            },
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"seq":7,"time_ms":1700000000000,"tag":"t","kind":"point","value":1.5,"quality":{"quality":"good"}}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }
}
