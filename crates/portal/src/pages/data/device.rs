//! The "Data" section of a device's page: KPI tiles (live), the tags (and
//! for admins their forms), open alarms (acknowledge for those allowed),
//! alarm history, what the historian holds, and the export form.

use super::alarms::{AlarmRow, EventRow};
use super::export::MAX_EXPORT;
use super::tags::{TagForm, TagRow};
use super::{Rights, Tile, when_ms_opt};
use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::Viewer;
use drawbridge_proto::Action;
use drawbridge_proto::data::{MAX_KPIS_PER_DEVICE, MAX_TAGS_PER_DEVICE, TagSpec};
use drawbridge_proto::mailbox::{Alarm, AlarmEvent, DataStatus, MAX_ACK_COMMENT};

/// Alarm history steps the page shows.
const HISTORY_SHOWN: u32 = 50;

/// What the historian holds, for reading.
pub struct StatusView {
    pub points: i64,
    pub first: String,
    pub last: String,
    pub edge_pending: i64,
    pub edge_dropped: i64,
    /// (tag, points, first, last)
    pub tags: Vec<(String, i64, String, String)>,
}

impl StatusView {
    fn of(s: &DataStatus) -> StatusView {
        StatusView {
            points: s.points,
            first: when_ms_opt(s.first_ms),
            last: when_ms_opt(s.last_ms),
            edge_pending: s.edge_pending,
            edge_dropped: s.edge_dropped,
            tags: s
                .tags
                .iter()
                .map(|t| {
                    (
                        t.tag.clone(),
                        t.points,
                        when_ms_opt(t.first_ms),
                        when_ms_opt(t.last_ms),
                    )
                })
                .collect(),
        }
    }
}

/// Everything the section shows.
pub struct DataSection {
    pub tiles: Vec<Tile>,
    pub live_url: String,
    pub tags: Vec<TagRow>,
    pub new_tag: TagForm,
    /// The tag whose edit form is open (`?edit=NAME`), if it exists.
    pub editing: Option<TagForm>,
    /// Admins: the tag forms.
    pub can_edit: bool,
    pub alarms: Vec<AlarmRow>,
    pub history: Vec<EventRow>,
    pub status: Option<StatusView>,
    /// Tags the export form offers (configured ones and those with stored points).
    pub export_tags: Vec<String>,
    /// Where an acknowledgement returns.
    pub back: String,
    /// What could not be loaded, if anything.
    pub errors: Vec<String>,
    pub max_comment: usize,
    pub max_export: usize,
    pub max_tags: usize,
    pub max_kpis: usize,
}

impl DataSection {
    /// The section of device `id`, read as the viewer, with the edit form of
    /// tag `edit` open (admins). A part the API does not give is left out with
    /// its message; the rest of the page stands.
    pub async fn load(v: &Viewer, id: &str, edit: Option<&str>) -> DataSection {
        let base = format!("/api/v1/devices/{}", enc(id));
        let mut errors = Vec::new();
        let mut keep = |what: &str, e: drawbridge_proto::ApiError| {
            errors.push(format!("{what}: {}", e.message));
        };
        let specs: Vec<TagSpec> = v
            .api
            .get(&format!("{base}/tags"))
            .await
            .unwrap_or_else(|e| {
                keep("Tags", e);
                Vec::new()
            });
        let tiles = if specs.iter().any(|t| t.kpi) {
            super::kpis::tiles_of(&v.api, id).await.unwrap_or_else(|e| {
                keep("KPIs", e);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let alarms: Vec<Alarm> = v
            .api
            .get(&format!("{base}/alarms"))
            .await
            .unwrap_or_else(|e| {
                keep("Alarms", e);
                Vec::new()
            });
        let history: Vec<AlarmEvent> = v
            .api
            .get(&format!("{base}/alarms/history?limit={HISTORY_SHOWN}"))
            .await
            .unwrap_or_else(|e| {
                keep("Alarm history", e);
                Vec::new()
            });
        let status: Option<DataStatus> = match v.api.get(&format!("{base}/data/status")).await {
            Ok(s) => Some(s),
            Err(e) => {
                keep("Data status", e);
                None
            }
        };
        let mut rights = Rights::default();
        let alarms = super::alarms::rows(&v.api, &mut rights, &alarms).await;
        let mut export_tags: Vec<String> = specs.iter().map(|t| t.name.to_string()).collect();
        for t in status.iter().flat_map(|s| &s.tags) {
            if !export_tags.contains(&t.tag) {
                export_tags.push(t.tag.clone());
            }
        }
        export_tags.sort();
        DataSection {
            tiles,
            live_url: super::kpis::live_url(&[id]),
            tags: specs.iter().map(TagRow::of).collect(),
            new_tag: TagForm::new_tag(),
            editing: edit
                .filter(|_| v.can(Action::ManageDevices))
                .and_then(|name| specs.iter().find(|t| t.name.as_str() == name))
                .map(TagForm::of),
            can_edit: v.can(Action::ManageDevices),
            alarms,
            history: history.iter().map(EventRow::of).collect(),
            status: status.as_ref().map(StatusView::of),
            export_tags,
            back: format!("{PREFIX}/devices/{}#data-alarms", enc(id)),
            errors,
            max_comment: MAX_ACK_COMMENT,
            max_export: MAX_EXPORT,
            max_tags: MAX_TAGS_PER_DEVICE,
            max_kpis: MAX_KPIS_PER_DEVICE,
        }
    }
}
