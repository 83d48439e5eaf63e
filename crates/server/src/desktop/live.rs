//! The desktops open on this replica: each one's recording, under the lock
//! that orders what it sends, and the live copy of that stream for watchers.
//!
//! A watcher gets the desktop from its first byte (noVNC needs the whole RFB
//! stream: handshake, pixel format, compression state): the chunks stored so
//! far, then what is pending, then the live stream. Taking the three under the
//! same lock the bridge sends under makes the join exact: nothing twice,
//! nothing missed.

use super::recording::{self, Recording, Stop};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Watchers of one desktop at once.
pub const MAX_WATCHERS: usize = 4;
/// Messages a watcher may fall behind before it is cut off.
const BACKLOG: usize = 1024;

/// The desktops open on this replica, by recording id.
#[derive(Default)]
pub struct Desktops {
    map: Mutex<HashMap<String, Arc<LiveDesktop>>>,
}

impl Desktops {
    pub fn insert(&self, d: Arc<LiveDesktop>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(d.id.clone(), d);
        }
    }
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
    pub fn get(&self, id: &str) -> Option<Arc<LiveDesktop>> {
        self.map.lock().ok().and_then(|m| m.get(id).cloned())
    }
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One open desktop.
pub struct LiveDesktop {
    pub id: String,
    recording: tokio::sync::Mutex<Recording>,
    tx: broadcast::Sender<Bytes>,
    watchers: AtomicUsize,
}

impl LiveDesktop {
    pub fn new(recording: Recording) -> Arc<LiveDesktop> {
        Arc::new(LiveDesktop {
            id: recording.id.clone(),
            recording: tokio::sync::Mutex::new(recording),
            tx: broadcast::channel(BACKLOG).0,
            watchers: AtomicUsize::new(0),
        })
    }

    /// Records and passes on what the browser is sent now. `Err` when the
    /// recording stopped (the caller decides whether the desktop goes on).
    pub async fn sent(&self, state: &AppState, data: &Bytes) -> Result<(), Stop> {
        let mut rec = self.recording.lock().await;
        let r = rec.record(data);
        let _ = self.tx.send(data.clone());
        r?;
        if rec.full() {
            rec.store(state).await?;
        }
        Ok(())
    }

    /// Stores what is pending (every second, and at the end).
    pub async fn store(&self, state: &AppState) -> Result<(), Stop> {
        self.recording.lock().await.store(state).await
    }

    /// Stops storing the recording.
    pub async fn stop_recording(&self) {
        self.recording.lock().await.stop();
    }

    /// The hash of what was recorded and its size.
    pub async fn finish(&self) -> (Option<String>, u64) {
        let mut rec = self.recording.lock().await;
        (rec.finish().await, rec.bytes())
    }

    pub async fn recorded(&self) -> bool {
        self.recording.lock().await.active
    }

    /// Joins as a watcher: a reader of the stream so far (its frames) and the
    /// live rest. Refused when the desktop is not being recorded (there is no
    /// start to give) or has its most watchers.
    pub async fn watch(
        self: &Arc<Self>,
        state: &AppState,
    ) -> AppResult<(
        recording::FrameReader,
        broadcast::Receiver<Bytes>,
        WatcherPlace,
    )> {
        if self
            .watchers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .is_err()
        {
            return Err(AppError::conflict(format!(
                "this desktop has {MAX_WATCHERS} watchers already"
            )));
        }
        let place = WatcherPlace(self.clone());
        let (rx, (stored, unstored)) = {
            let mut rec = self.recording.lock().await;
            if !rec.active {
                return Err(AppError::conflict(
                    "this desktop is not being recorded, so it cannot be watched",
                ));
            }
            let unstored = rec
                .unstored()
                .map_err(|e| AppError::internal(anyhow::Error::from(e)))?;
            (self.tx.subscribe(), unstored)
        };
        // Read as it is sent: the stored chunks a few at a time, then what
        // was not stored when the watcher joined.
        let backlog =
            recording::FrameReader::open_with_tail(state, &self.id, Some(stored), unstored).await?;
        Ok((backlog, rx, place))
    }
}

/// A watcher's place, given back when dropped.
pub struct WatcherPlace(Arc<LiveDesktop>);

impl Drop for WatcherPlace {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}
