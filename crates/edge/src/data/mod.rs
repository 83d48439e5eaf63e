//! Data services on the edge (DESIGN §7): the tags the server configured are
//! polled (poll.rs), each sample decides whether it is logged (log.rs) and
//! whether an alarm changed (alarm.rs), what is logged goes to the durable
//! historian buffer (buffer/), and the latest value of every KPI tag is kept for
//! whoever watches.
//!
//! Polling runs from the agent's start, with the tag list kept in the state
//! directory (`tags.json`), whether or not the control plane is reachable and
//! whether or not any session is active. Nothing here writes to a PLC.
//!
//! ```text
//! tags.json      the server's last tag list (written atomically)
//! alarms.json    the tags whose alarm is raised and not yet returned (so a restart does not raise it again)
//! historian/     the buffer (buffer/mod.rs)
//! ```

pub mod alarm;
pub mod buffer;
pub mod decode;
pub mod log;
pub mod poll;

use buffer::{Buffer, BufferConfig};
use drawbridge_proto::TagName;
use drawbridge_proto::data::{
    BufferStatus, LiveValue, MAX_KPIS_PER_DEVICE, MAX_TAGS_PER_DEVICE, Quality, Record, RecordBody,
    TagSpec,
};
use poll::{ConnKey, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};

/// Largest JSON of the records in one push (the channel's frame is 256 KiB).
pub const MAX_PUSH_BYTES: usize = 192 * 1024;

/// What `drawbridge-edge status` shows of the data services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStatus {
    /// Tags configured.
    pub tags: usize,
    /// Tags polled (a tag whose address the edge never reaches is not).
    pub polled: usize,
    /// Each tag's last quality, counted by code (`good`, `timeout`, `exception:2`, …).
    pub quality: BTreeMap<String, usize>,
    /// Unix milliseconds of the last poll round.
    pub last_poll_ms: Option<i64>,
    pub buffer: BufferStatus,
}

/// The latest value of one tag.
#[derive(Debug, Clone)]
struct Latest {
    time_ms: i64,
    value: Option<f64>,
    quality: Quality,
}

/// The tag list as the edge polls it: parsed, bounded, unique names.
fn sanitise(tags: Vec<TagSpec>) -> Vec<TagSpec> {
    let mut names = HashSet::new();
    let mut kpis = 0;
    tags.into_iter()
        .filter(|t| names.insert(t.name.clone()))
        .take(MAX_TAGS_PER_DEVICE)
        .map(|mut t| {
            if t.kpi {
                kpis += 1;
                t.kpi = kpis <= MAX_KPIS_PER_DEVICE;
            }
            t
        })
        .collect()
}

struct Shared {
    tags: Vec<TagSpec>,
    polled: usize,
    latest: HashMap<TagName, Latest>,
    last_poll_ms: Option<i64>,
}

struct Inner {
    dir: PathBuf,
    buffer: Mutex<Buffer>,
    buffer_cfg: BufferConfig,
    shared: Mutex<Shared>,
    tags_tx: watch::Sender<Vec<TagSpec>>,
    appended: Notify,
    kpi: Notify,
}

/// The running data services; cheap to clone.
#[derive(Clone)]
pub struct Data {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `tags.json`; a missing or unreadable file is no tags.
pub fn load_tags(state_dir: &Path) -> Vec<TagSpec> {
    let path = state_dir.join("tags.json");
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(t) => sanitise(t),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "tag list unreadable: no tags until the server sends them");
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    }
}

impl Data {
    /// Opens the historian buffer in `state_dir/historian` and starts polling
    /// the tags saved in `state_dir/tags.json`.
    pub fn start(state_dir: &Path, buffer_cfg: BufferConfig) -> std::io::Result<Data> {
        std::fs::create_dir_all(state_dir)?;
        let buffer = Buffer::open(&state_dir.join("historian"), buffer_cfg)?;
        let tags = load_tags(state_dir);
        let (tags_tx, tags_rx) = watch::channel(tags.clone());
        let data = Data {
            inner: Arc::new(Inner {
                dir: state_dir.to_path_buf(),
                buffer: Mutex::new(buffer),
                buffer_cfg,
                shared: Mutex::new(Shared {
                    tags,
                    polled: 0,
                    latest: HashMap::new(),
                    last_poll_ms: None,
                }),
                tags_tx,
                appended: Notify::new(),
                kpi: Notify::new(),
            }),
        };
        let active = load_alarms(state_dir);
        tokio::spawn(run(Arc::downgrade(&data.inner), tags_rx, active));
        Ok(data)
    }

    /// A new tag list from the server: saved, then polled instead of the old one.
    pub fn set_tags(&self, tags: Vec<TagSpec>) {
        let tags = sanitise(tags);
        match serde_json::to_vec_pretty(&tags) {
            Ok(json) => {
                if let Err(e) =
                    crate::local::write_atomic(&self.inner.dir.join("tags.json"), &json, false)
                {
                    tracing::warn!(error = %format!("{e:#}"), "saving tags.json");
                }
            }
            Err(e) => tracing::warn!(error = %e, "saving tags.json"),
        }
        lock(&self.inner.shared).tags = tags.clone();
        self.inner.tags_tx.send_if_modified(|old| {
            let changed = *old != tags;
            *old = tags;
            changed
        });
    }

    /// The tags being polled.
    pub fn tags(&self) -> Vec<TagSpec> {
        lock(&self.inner.shared).tags.clone()
    }

    /// The next records waiting (at most `limit`, at most [`MAX_PUSH_BYTES`] of JSON)
    /// and the buffer's status.
    pub async fn pending(&self, limit: usize) -> std::io::Result<(BufferStatus, Vec<Record>)> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let b = lock(&inner.buffer);
            let records = b.pending(limit)?;
            let mut bytes = 0;
            let n = records
                .iter()
                .take_while(|r| {
                    bytes += serde_json::to_string(r).map_or(0, |s| s.len() + 1);
                    bytes <= MAX_PUSH_BYTES
                })
                .count()
                .max(1.min(records.len()));
            let mut records = records;
            records.truncate(n);
            Ok((b.status(), records))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The server stored every record of `stream` up to `seq`.
    pub async fn ack(&self, stream: String, seq: u64) -> std::io::Result<bool> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || lock(&inner.buffer).ack(&stream, seq))
            .await
            .map_err(std::io::Error::other)?
    }

    pub fn buffer_status(&self) -> BufferStatus {
        lock(&self.inner.buffer).status()
    }

    /// Resolves when records were appended since the last call.
    pub async fn appended(&self) {
        self.inner.appended.notified().await
    }

    /// Resolves when a KPI tag has a new value.
    pub async fn kpi_changed(&self) {
        self.inner.kpi.notified().await
    }

    /// The latest value of every KPI tag that has one (at most 16).
    pub fn live(&self) -> Vec<LiveValue> {
        let s = lock(&self.inner.shared);
        s.tags
            .iter()
            .filter(|t| t.kpi)
            .filter_map(|t| {
                let l = s.latest.get(&t.name)?;
                Some(LiveValue {
                    tag: t.name.clone(),
                    time_ms: l.time_ms,
                    value: l.value,
                    quality: l.quality,
                })
            })
            .take(MAX_KPIS_PER_DEVICE)
            .collect()
    }

    /// The latest value and quality of a tag.
    pub fn latest(&self, tag: &str) -> Option<(i64, Option<f64>, Quality)> {
        let s = lock(&self.inner.shared);
        s.latest
            .iter()
            .find(|(n, _)| n.as_str() == tag)
            .map(|(_, l)| (l.time_ms, l.value, l.quality))
    }

    pub fn status(&self) -> DataStatus {
        let buffer = self.buffer_status();
        let s = lock(&self.inner.shared);
        let mut quality = BTreeMap::new();
        for t in &s.tags {
            if let Some(l) = s.latest.get(&t.name) {
                *quality.entry(l.quality.code()).or_insert(0) += 1;
            }
        }
        DataStatus {
            tags: s.tags.len(),
            polled: s.polled,
            quality,
            last_poll_ms: s.last_poll_ms,
            buffer,
        }
    }
}

fn load_alarms(dir: &Path) -> HashSet<TagName> {
    std::fs::read(dir.join("alarms.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<TagName>>(&b).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// A tag's evaluation state.
struct TagState {
    spec: Arc<TagSpec>,
    log: log::LogState,
    alarm: Option<alarm::Alarm>,
}

/// The service's task: pollers per connection, samples into the buffer.
async fn run(
    inner: std::sync::Weak<Inner>,
    mut tags_rx: watch::Receiver<Vec<TagSpec>>,
    mut active: HashSet<TagName>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<Sample>>(64);
    let mut pollers: HashMap<ConnKey, (Vec<Arc<TagSpec>>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut states: HashMap<TagName, TagState> = HashMap::new();
    let mut reload = true;
    loop {
        if reload {
            reload = false;
            let tags = tags_rx.borrow_and_update().clone();
            let Some(inner) = inner.upgrade() else { return };
            let polled = reconcile(&tags, &mut pollers, &mut states, &mut active, &tx);
            let mut s = lock(&inner.shared);
            s.polled = polled;
            s.latest.retain(|n, _| tags.iter().any(|t| &t.name == n));
            drop(s);
            save_alarms(&inner.dir, &active);
        }
        let round = tokio::select! {
            r = rx.recv() => r,
            c = tags_rx.changed() => {
                if c.is_err() {
                    return;
                }
                reload = true;
                continue;
            }
        };
        let Some(round) = round else { return };
        let mut rounds = vec![round];
        while let Ok(r) = rx.try_recv() {
            rounds.push(r);
        }
        let Some(inner) = inner.upgrade() else { return };
        let alarms_before = active.len();
        let mut alarms_changed = false;
        let mut records = Vec::new();
        let mut kpi = false;
        {
            let mut s = lock(&inner.shared);
            for sample in rounds.into_iter().flatten() {
                let Some(st) = states.get_mut(&sample.tag.name) else {
                    continue;
                };
                if *st.spec != *sample.tag {
                    continue; // polled with a configuration replaced since
                }
                let name = sample.tag.name.clone();
                s.last_poll_ms = Some(sample.time_ms.max(s.last_poll_ms.unwrap_or(0)));
                kpi |= sample.tag.kpi;
                s.latest.insert(
                    name.clone(),
                    Latest {
                        time_ms: sample.time_ms,
                        value: sample.value,
                        quality: sample.quality,
                    },
                );
                if st
                    .log
                    .offer(st.spec.log, sample.time_ms, sample.value, sample.quality)
                {
                    records.push((
                        sample.time_ms,
                        name.clone(),
                        RecordBody::Point {
                            value: sample.value,
                            quality: sample.quality,
                        },
                    ));
                }
                if let Some(a) = st.alarm.as_mut()
                    && let Some(c) = a.offer(sample.time_ms, sample.value, sample.quality)
                {
                    alarms_changed = true;
                    if a.is_active() {
                        active.insert(name.clone());
                    } else {
                        active.remove(&name);
                    }
                    records.push((
                        c.time_ms,
                        name,
                        RecordBody::Alarm {
                            transition: c.transition,
                            value: Some(c.value),
                        },
                    ));
                }
            }
        }
        if kpi {
            inner.kpi.notify_one();
        }
        if alarms_changed || alarms_before != active.len() {
            save_alarms(&inner.dir, &active);
        }
        if records.is_empty() {
            continue;
        }
        let inner2 = inner.clone();
        let appended = tokio::task::spawn_blocking(move || {
            let mut b = lock(&inner2.buffer);
            match b.append(records) {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Open it again: a torn end is cut off, appends go on.
                    if let Ok(fresh) =
                        Buffer::open(&inner2.dir.join("historian"), inner2.buffer_cfg)
                    {
                        *b = fresh;
                    }
                    Err(e)
                }
            }
        })
        .await;
        match appended {
            Ok(Ok(())) => inner.appended.notify_one(),
            Ok(Err(e)) => tracing::error!(error = %e, "historian: records lost, the append failed"),
            Err(e) => tracing::error!(error = %e, "historian: the append panicked"),
        }
    }
}

/// Starts, keeps or stops the pollers so that they poll `tags`; returns how many tags are polled.
fn reconcile(
    tags: &[TagSpec],
    pollers: &mut HashMap<ConnKey, (Vec<Arc<TagSpec>>, tokio::task::JoinHandle<()>)>,
    states: &mut HashMap<TagName, TagState>,
    active: &mut HashSet<TagName>,
    tx: &mpsc::Sender<Vec<Sample>>,
) -> usize {
    let mut groups: BTreeMap<ConnKey, Vec<Arc<TagSpec>>> = BTreeMap::new();
    let mut polled = 0;
    for t in tags {
        if drawbridge_netstack::policy::never_forwarded(std::net::IpAddr::V4(t.source.host)) {
            tracing::warn!(tag = %t.name.as_str(), host = %t.source.host, "tag not polled: the edge never reaches that address");
            continue;
        }
        polled += 1;
        groups
            .entry(ConnKey::of(t))
            .or_default()
            .push(Arc::new(t.clone()));
    }
    pollers.retain(|k, (old, task)| {
        let same = groups.get(k).is_some_and(|new| {
            new.len() == old.len() && new.iter().zip(old.iter()).all(|(a, b)| **a == **b)
        });
        if !same {
            task.abort();
        }
        same
    });
    // Per-tag state: kept while the tag's configuration is the same; a changed
    // tag keeps its log state when its log mode is the same, and its alarm when
    // its rule is. At start, an alarm active before the restart stays active.
    let mut next_states = HashMap::new();
    for t in groups.values().flatten() {
        let state = match states.remove(&t.name) {
            Some(s) if *s.spec == **t => s,
            Some(old) => TagState {
                spec: t.clone(),
                log: if old.spec.log == t.log {
                    old.log
                } else {
                    Default::default()
                },
                alarm: match (old.alarm, t.alarm) {
                    (Some(a), Some(rule)) if a.rule() == rule => Some(a),
                    (_, rule) => rule.map(|r| alarm::Alarm::new(r, false)),
                },
            },
            None => TagState {
                spec: t.clone(),
                log: Default::default(),
                alarm: t
                    .alarm
                    .map(|r| alarm::Alarm::new(r, active.contains(&t.name))),
            },
        };
        next_states.insert(t.name.clone(), state);
    }
    *states = next_states;
    active.retain(|n| {
        states
            .get(n)
            .is_some_and(|s| s.alarm.as_ref().is_some_and(|a| a.is_active()))
    });
    for (k, group) in groups {
        if pollers.contains_key(&k) {
            continue;
        }
        let task = tokio::spawn(poll::run(k, group.clone(), tx.clone()));
        pollers.insert(k, (group, task));
    }
    polled
}

fn save_alarms(dir: &Path, active: &HashSet<TagName>) {
    let mut v: Vec<&TagName> = active.iter().collect();
    v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    if let Ok(json) = serde_json::to_vec(&v)
        && let Err(e) = crate::local::write_atomic(&dir.join("alarms.json"), &json, false)
    {
        tracing::warn!(error = %format!("{e:#}"), "saving alarms.json");
    }
}
