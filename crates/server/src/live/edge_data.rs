//! The data services on an edge's channel: the tag list (sent after the
//! sessions and again whenever it changes), historian records in and their
//! acknowledgements out, live KPI values in while someone watches, and the
//! `watch` renewals that tell the edge to send them.
//!
//! A device with no tags hears nothing of this (older edges keep working).

use crate::data;
use crate::error::AppResult;
use crate::state::AppState;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use drawbridge_proto::data::TagSpec;

/// One connected edge's view of its data services.
#[derive(Default)]
pub struct DataLink {
    /// The tag list last sent (None: never sent).
    sent: Option<Vec<TagSpec>>,
    /// Names of its KPI tags.
    kpis: Vec<String>,
    /// Whether the edge was last told someone watches.
    watching: bool,
    /// When the last live values were stored: an edge sends them about once a
    /// second; more often is dropped, so a hostile edge cannot turn its channel
    /// into a stream of database writes.
    last_live: Option<std::time::Instant>,
}

/// Live values stored at most this often per edge.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(400);

impl DataLink {
    /// Messages after the tag list or the watchers may have changed: the tag
    /// list when it differs from what the edge has, and a `watch` when needed.
    pub async fn refresh(
        &mut self,
        state: &AppState,
        device_id: &str,
    ) -> AppResult<Vec<ServerToEdge>> {
        let mut conn = state.store.pool.acquire().await?;
        let tags = data::tags::list(&mut conn, device_id).await?;
        let changed = match &self.sent {
            Some(s) => *s != tags,
            // An edge whose tags were all deleted may still hold records: it
            // pushes them once it hears a tag list, even an empty one.
            None => {
                !tags.is_empty()
                    || sqlx::query_scalar::<_, i64>(
                        "SELECT data_configured + (SELECT COUNT(*) FROM data_streams WHERE device_id = $1)
                         FROM devices WHERE id = $1",
                    )
                    .bind(device_id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .unwrap_or(0)
                        != 0
            }
        };
        drop(conn);
        let mut out = Vec::new();
        if changed {
            self.kpis = tags
                .iter()
                .filter(|t| t.kpi)
                .map(|t| t.name.as_str().to_string())
                .collect();
            out.push(ServerToEdge::Tags { tags: tags.clone() });
            self.sent = Some(tags);
        }
        out.extend(self.watch(state, device_id).await?);
        Ok(out)
    }

    /// Whether [`Self::watch`] has anything to do: the edge has KPI tags or
    /// was told someone watches. Most edges have none, and their channel's
    /// task then has no timer to wake up for.
    pub fn wants_watch(&self) -> bool {
        !self.kpis.is_empty() || self.watching
    }

    /// Every couple of seconds: renew or end the edge's `watch`.
    pub async fn watch(
        &mut self,
        state: &AppState,
        device_id: &str,
    ) -> AppResult<Option<ServerToEdge>> {
        if !self.wants_watch() {
            return Ok(None);
        }
        let watched = !self.kpis.is_empty() && data::live::watched(state, device_id).await?;
        if watched {
            self.watching = true;
            return Ok(Some(ServerToEdge::Watch {
                for_ms: data::live::EDGE_WATCH_MS,
            }));
        }
        if std::mem::take(&mut self.watching) {
            return Ok(Some(ServerToEdge::Watch { for_ms: 0 }));
        }
        Ok(None)
    }

    /// Handles a data message; the answer to send, if any. Other messages are
    /// handed back.
    pub async fn handle(
        &mut self,
        state: &AppState,
        account_id: &str,
        device_id: &str,
        msg: EdgeToServer,
    ) -> Result<AppResult<Option<ServerToEdge>>, EdgeToServer> {
        Ok(match msg {
            EdgeToServer::Records { buffer, records } => {
                data::ingest::records(state, account_id, device_id, buffer, records)
                    .await
                    .map(|i| Some(i.ack))
            }
            EdgeToServer::Live { values } => {
                let now = std::time::Instant::now();
                if self.last_live.is_some_and(|t| now - t < LIVE_EVERY) {
                    return Ok(Ok(None));
                }
                self.last_live = Some(now);
                data::live::store(state, device_id, &self.kpis, &values)
                    .await
                    .map(|()| None)
            }
            other => return Err(other),
        })
    }
}
