//! The data services' API types (DESIGN §7): historian points and the mailbox
//! sync, per-device status, alarms and their acknowledgement, live KPI values.

use crate::data::Quality;
use crate::text::TagName;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most points one sync page or range query returns.
pub const MAX_PAGE: u32 = 10_000;
/// Points per page when the caller names no limit.
pub const DEFAULT_PAGE: u32 = 1000;
/// Longest acknowledgement comment.
pub const MAX_ACK_COMMENT: usize = 1000;

/// One stored historian point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DataPoint {
    /// The point's transaction id (what the sync cursor counts).
    pub txid: i64,
    pub device_id: String,
    pub device: String,
    #[schema(value_type = String)]
    pub tag: TagName,
    /// Unix milliseconds when the edge sampled it.
    pub time_ms: i64,
    /// Absent when the quality is bad.
    pub value: Option<f64>,
    pub quality: Quality,
}

/// `GET /api/v1/data/sync`: the points after `after`, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// The `cursor` of the previous page; absent: from the oldest point kept.
    #[serde(default)]
    pub after: Option<String>,
    /// 1-10000, default 1000.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// A page of the mailbox. Loop with `after = cursor` while
/// `more_data_available`: every point arrives once, across restarts and replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SyncPage {
    pub points: Vec<DataPoint>,
    /// Opaque; pass it as `after` next time (also when `points` is empty).
    pub cursor: String,
    pub more_data_available: bool,
}

/// `GET /api/v1/devices/{id}/data`: one tag's points in a time range, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    #[param(value_type = String)]
    pub tag: TagName,
    /// Unix milliseconds, inclusive; default: the oldest point.
    #[serde(default)]
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive; default: now and later.
    #[serde(default)]
    pub to_ms: Option<i64>,
    /// 1-10000, default 1000.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// `POST /api/v1/data/delete`: forget the account's points up to a cursor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteData {
    /// A `cursor` from a sync page: every point up to it is deleted.
    pub up_to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

/// Points kept for one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TagDataStatus {
    pub tag: String,
    pub points: i64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// `GET /api/v1/devices/{id}/data/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DataStatus {
    pub device_id: String,
    pub points: i64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub tags: Vec<TagDataStatus>,
    /// Records the edge's buffer holds that the server has not stored yet (as last reported).
    pub edge_pending: i64,
    /// Records the edge's bounded buffer had to drop (oldest first), as last reported.
    pub edge_dropped: i64,
}

/// Where an alarm stands (Ewon's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Raised, nobody acknowledged it yet.
    Alarm,
    /// Acknowledged, the condition still holds.
    Acknowledged,
    /// Back to normal, not acknowledged yet.
    Returned,
    /// Back to normal and acknowledged: closed.
    Ended,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alarm => "alarm",
            Self::Acknowledged => "acknowledged",
            Self::Returned => "returned",
            Self::Ended => "ended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alarm" => Self::Alarm,
            "acknowledged" => Self::Acknowledged,
            "returned" => Self::Returned,
            "ended" => Self::Ended,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alarm {
    pub id: String,
    pub device_id: String,
    pub device: String,
    pub tag: String,
    pub state: AlarmState,
    /// Unix milliseconds, the edge's time.
    pub raised_ms: i64,
    pub raised_value: Option<f64>,
    pub returned_ms: Option<i64>,
    pub returned_value: Option<f64>,
    /// Unix seconds.
    pub acked_at: Option<i64>,
    pub acked_by: Option<String>,
    pub ack_comment: Option<String>,
}

/// One step of an alarm's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlarmEvent {
    pub alarm_id: String,
    pub tag: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// `raised`, `acknowledged`, `returned`, `ended` (`ended` alone: the tag was deleted).
    pub event: String,
    pub value: Option<f64>,
    pub user: Option<String>,
    pub comment: Option<String>,
}

/// `POST /api/v1/alarms/{id}/ack`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckAlarm {
    /// Up to 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub comment: String,
}

/// `GET /api/v1/alarms` and `/devices/{id}/alarms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlarmQuery {
    /// Also ended alarms (default: only those not ended).
    #[serde(default)]
    pub all: bool,
    /// 1-1000, default 200.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A KPI tag's latest value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Kpi {
    pub device_id: String,
    pub device: String,
    pub tag: String,
    pub description: String,
    pub unit: String,
    /// Unix milliseconds of the sample; absent until the edge has sent one.
    pub time_ms: Option<i64>,
    pub value: Option<f64>,
    pub quality: Option<Quality>,
}

/// `GET /api/v1/kpis/stream`: which devices to watch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KpiStreamQuery {
    /// One device; absent: every device the caller may see that has KPI tags (at most 100).
    #[serde(default)]
    pub device: Option<String>,
}
