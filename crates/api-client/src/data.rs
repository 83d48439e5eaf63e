//! The data services' calls (DESIGN §7): a device's tags, its historian points
//! and status, the account's mailbox (sync and delete), live KPIs (one read,
//! or the server-sent-event stream through [`KpiStream`]) and alarms.

use crate::client::{Client, erased, seg};
use crate::error::{Error, Result};
use crate::sse::{SseEvent, SseParser};
use drawbridge_proto::data::TagSpec;
use drawbridge_proto::mailbox::*;
use reqwest::Method;
use std::collections::VecDeque;
use std::time::Duration;

/// How long one KPI stream request may last before the client opens a new
/// one (the client's usual request timeout would cut it after two minutes).
pub const KPI_STREAM_MAX: Duration = Duration::from_secs(24 * 3600);

impl Client {
    // ------------------------------------------------------------ tags

    pub async fn tags(&self, device: &str) -> Result<Vec<TagSpec>> {
        self.get(&format!("/devices/{}/tags", seg(device))).await
    }
    /// Creates or replaces a tag by its name (admins); true when it was created.
    pub async fn put_tag(&self, device: &str, tag: &TagSpec) -> Result<bool> {
        let path = format!("/devices/{}/tags", seg(device));
        let (status, _) = self
            .send(Method::PUT, &path, &[], Some(&erased::Body(tag)))
            .await?;
        Ok(status == reqwest::StatusCode::CREATED)
    }
    pub async fn delete_tag(&self, device: &str, name: &str) -> Result<()> {
        self.delete(&format!("/devices/{}/tags/{}", seg(device), seg(name)))
            .await
    }

    // ------------------------------------------------------------ historian

    /// One tag's points with `from_ms <= time_ms < to_ms`, oldest first, at
    /// most `limit` (1-10000) of them.
    pub async fn data_range(
        &self,
        device: &str,
        tag: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DataPoint>> {
        let mut q: Vec<(&str, String)> =
            vec![("tag", tag.to_string()), ("limit", limit.to_string())];
        if let Some(f) = from_ms {
            q.push(("from_ms", f.to_string()));
        }
        if let Some(t) = to_ms {
            q.push(("to_ms", t.to_string()));
        }
        self.json(
            Method::GET,
            &format!("/devices/{}/data", seg(device)),
            &q,
            None,
        )
        .await
    }
    pub async fn data_status(&self, device: &str) -> Result<DataStatus> {
        self.get(&format!("/devices/{}/data/status", seg(device)))
            .await
    }
    /// The mailbox page after `after` (None: from the oldest point kept).
    pub async fn data_sync(&self, after: Option<&str>, limit: u32) -> Result<SyncPage> {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        self.json(Method::GET, "/data/sync", &q, None).await
    }
    /// Forgets the account's points up to and including a cursor (admins).
    pub async fn data_delete(&self, up_to: &str) -> Result<Deleted> {
        self.post(
            "/data/delete",
            &DeleteData {
                up_to: up_to.to_string(),
            },
        )
        .await
    }

    // ------------------------------------------------------------ KPIs

    /// The device's KPI tags and latest values (the read also watches them for a few seconds).
    pub async fn kpis(&self, device: &str) -> Result<Vec<Kpi>> {
        self.get(&format!("/devices/{}/kpis", seg(device))).await
    }
    /// Opens the live KPI stream of one device (or of every device with KPI tags).
    pub async fn kpi_stream(&self, device: Option<&str>) -> Result<KpiStream> {
        let q: Vec<(&str, String)> = device
            .map(|d| vec![("device", d.to_string())])
            .unwrap_or_default();
        let resp = self.open_stream("/kpis/stream", &q, KPI_STREAM_MAX).await?;
        Ok(KpiStream {
            client: self.clone(),
            resp,
            parser: SseParser::new(),
            ready: VecDeque::new(),
        })
    }

    // ------------------------------------------------------------ alarms

    /// Alarms of every device the caller may see, newest first (`all`: ended ones too).
    pub async fn alarms(&self, all: bool) -> Result<Vec<Alarm>> {
        self.json(Method::GET, "/alarms", &alarm_query(all), None)
            .await
    }
    pub async fn device_alarms(&self, device: &str, all: bool) -> Result<Vec<Alarm>> {
        let path = format!("/devices/{}/alarms", seg(device));
        self.json(Method::GET, &path, &alarm_query(all), None).await
    }
    pub async fn alarm_history(&self, device: &str) -> Result<Vec<AlarmEvent>> {
        self.get(&format!("/devices/{}/alarms/history", seg(device)))
            .await
    }
    pub async fn ack_alarm(&self, id: &str, comment: &str) -> Result<Alarm> {
        let body = AckAlarm {
            comment: comment.to_string(),
        };
        self.post(&format!("/alarms/{}/ack", seg(id)), &body).await
    }
}

fn alarm_query(all: bool) -> Vec<(&'static str, String)> {
    if all {
        vec![("all", "true".into())]
    } else {
        Vec::new()
    }
}

/// What the KPI stream says next.
#[derive(Debug, Clone, PartialEq)]
pub enum KpiUpdate {
    /// A KPI's value (every KPI once at the start, then those that changed).
    Value(Kpi),
    /// The server ended the stream: the caller's access ended (its reason).
    End(String),
}

/// An open `GET /api/v1/kpis/stream`.
pub struct KpiStream {
    client: Client,
    resp: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
}

impl KpiStream {
    /// The next update; None when the connection closed (open a new stream to go on).
    /// Events of other kinds are skipped; a `kpi` event that does not parse is an error.
    pub async fn next(&mut self) -> Result<Option<KpiUpdate>> {
        loop {
            while let Some(ev) = self.ready.pop_front() {
                match ev.event.as_str() {
                    "kpi" => {
                        let k: Kpi =
                            serde_json::from_str(&ev.data).map_err(|e| Error::Unexpected {
                                status: 200,
                                detail: format!("a KPI event does not parse: {e}"),
                            })?;
                        return Ok(Some(KpiUpdate::Value(k)));
                    }
                    "end" => return Ok(Some(KpiUpdate::End(ev.data))),
                    _ => {}
                }
            }
            let Some(bytes) = self.client.chunk(&mut self.resp).await? else {
                return Ok(None);
            };
            let events = self.parser.push(&bytes).map_err(|e| Error::Unexpected {
                status: 200,
                detail: e.to_string(),
            })?;
            self.ready.extend(events);
        }
    }
}
