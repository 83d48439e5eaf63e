//! The data services on the edge channel: the tag list in, historian records
//! and live KPI values out.
//!
//! - Records are pushed once the server has sent `tags` on this connection (a
//!   server that speaks data services), one batch in flight: the next batch
//!   goes when the server acknowledges this one; a batch without an
//!   acknowledgement after [`RESEND_AFTER`], or a new connection, re-sends
//!   from the oldest record not acknowledged (the server stores each once).
//! - Live values go while a `watch` lasts (capped at [`MAX_WATCH`] per
//!   renewal): when a KPI tag has a new value, at most about once per second,
//!   each tag's value only when it is newer than the one sent last.

use super::channel::{Channel, ChannelError, send};
use crate::data::Data;
use drawbridge_proto::TagName;
use drawbridge_proto::channel::EdgeToServer;
use drawbridge_proto::data::{MAX_RECORDS_PER_MESSAGE, TagSpec};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A batch not acknowledged within this is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(30);
/// Longest watch one `watch` message starts (the server renews every ~2 s).
pub const MAX_WATCH: Duration = Duration::from_secs(60);
/// Least time between two `live` messages.
const LIVE_EVERY: Duration = Duration::from_millis(900);

pub(super) struct Push {
    pub(super) data: Data,
    /// The server sent `tags` on this connection.
    ready: bool,
    /// The last seq of the batch waiting for its acknowledgement, and when it went.
    in_flight: Option<(u64, Instant)>,
    watch_until: Option<Instant>,
    live_sent: Option<Instant>,
    /// Per tag, the time of the value sent last during this watch.
    live_times: HashMap<TagName, i64>,
}

impl Push {
    pub(super) fn new(data: Data) -> Push {
        Push {
            data,
            ready: false,
            in_flight: None,
            watch_until: None,
            live_sent: None,
            live_times: HashMap::new(),
        }
    }

    /// A new connection: nothing is in flight, nobody watches yet.
    pub(super) fn reset(&mut self) {
        self.ready = false;
        self.in_flight = None;
        self.watch_until = None;
        self.live_times.clear();
    }

    pub(super) fn on_tags(&mut self, tags: Vec<TagSpec>) {
        tracing::info!(tags = tags.len(), "tag list from the control plane");
        self.data.set_tags(tags);
        self.ready = true;
    }

    pub(super) async fn on_ack(&mut self, stream: String, seq: u64) {
        if let Err(e) = self.data.ack(stream.clone(), seq).await {
            tracing::warn!(error = %e, "historian: recording an acknowledgement failed");
        }
        if stream == self.data.buffer_status().stream
            && self.in_flight.is_some_and(|(last, _)| seq >= last)
        {
            self.in_flight = None;
        }
    }

    pub(super) fn on_watch(&mut self, for_ms: u32) {
        if for_ms == 0 {
            self.watch_until = None;
            return;
        }
        if self.watch_until.is_none() {
            self.live_times.clear(); // a new watch starts with every value
        }
        let d = Duration::from_millis(u64::from(for_ms)).min(MAX_WATCH);
        self.watch_until = Some(Instant::now() + d);
    }

    /// Sends the next batch of records when it is due.
    pub(super) async fn records(&mut self, ws: &mut Channel) -> Result<(), ChannelError> {
        if !self.ready {
            return Ok(());
        }
        if let Some((_, sent)) = self.in_flight {
            if sent.elapsed() < RESEND_AFTER {
                return Ok(());
            }
            tracing::info!("historian: no acknowledgement, sending again from the oldest record");
        }
        let (buffer, records) = match self.data.pending(MAX_RECORDS_PER_MESSAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "historian: reading the buffer failed");
                return Ok(());
            }
        };
        let Some(last) = records.last().map(|r| r.seq) else {
            self.in_flight = None;
            return Ok(());
        };
        self.in_flight = Some((last, Instant::now()));
        send(ws, &EdgeToServer::Records { buffer, records }).await
    }

    /// Sends the KPI values that are new since the last `live`, while watched.
    pub(super) async fn live(&mut self, ws: &mut Channel) -> Result<(), ChannelError> {
        match self.watch_until {
            Some(until) if Instant::now() < until => {}
            Some(_) => {
                self.watch_until = None;
                return Ok(());
            }
            None => return Ok(()),
        }
        if self.live_sent.is_some_and(|t| t.elapsed() < LIVE_EVERY) {
            return Ok(());
        }
        let values: Vec<_> = self
            .data
            .live()
            .into_iter()
            .filter(|v| self.live_times.get(&v.tag).is_none_or(|t| v.time_ms > *t))
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        for v in &values {
            self.live_times.insert(v.tag.clone(), v.time_ms);
        }
        self.live_sent = Some(Instant::now());
        send(ws, &EdgeToServer::Live { values }).await
    }
}
