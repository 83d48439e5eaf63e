//! Signed updates of the edge binary (issue 17).
//!
//! The server offers a release over the channel (`ServerToEdge::Update`). The
//! edge checks it before anything else (`offer`: the root it pinned, the
//! signature chain, the version), waits while a session runs on it, downloads
//! the binary through its signed size and hash (`download`), waits again if a
//! session started meanwhile, then keeps the running binary as `.previous`,
//! writes the trial into `update.json` (`record`), swaps the new binary in and
//! executes it (`install`). The new binary must authenticate to the control
//! plane before the trial's deadline, or it puts the previous one back and
//! executes that (`trial`). Every step is reported (`EdgeToServer::Update`);
//! a refusal or a failed download changes nothing on disk.
//!
//! [`Updater`] is the state machine the agent drives: it hands back reports
//! to send and, once a release is downloaded and no session runs, the
//! install for the agent to carry out (it owns the channel and the sessions).

mod download;
pub mod install;
mod offer;
pub mod record;
pub mod trial;

pub use download::Source;
pub use trial::at_start;

use crate::local::{StateDir, UpdateStatus};
use drawbridge_proto::update::{UpdateOffer, UpdateReport, UpdateState};
use record::{Phase, UpdateRecord};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The health window's default and bounds (`run --update-health-secs`).
pub const DEFAULT_HEALTH_SECS: u64 = 60;
pub const HEALTH_SECS_RANGE: std::ops::RangeInclusive<u64> = 5..=600;

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Why an update was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Release(#[from] drawbridge_release::Error),
    #[error("the offer is malformed: {0}")]
    Offer(String),
    #[error("the pinned release root is unusable: {0}")]
    Pin(String),
    #[error("the server sends {got} bytes, the signed size is {expected}")]
    Size { expected: u64, got: u64 },
    #[error("the server refused the download (HTTP {0})")]
    Http(u16),
    #[error("download: {0}")]
    Transfer(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("update.json: {0}")]
    Record(String),
    #[error("executing the binary failed: {0}")]
    Exec(std::io::Error),
}

impl UpdateError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        UpdateError::Io {
            context: context.into(),
            source,
        }
    }

    /// How the server hears of it: a release this edge must not install is
    /// refused; anything else failed (the release itself may be fine).
    pub fn state(&self) -> UpdateState {
        match self {
            UpdateError::Release(_)
            | UpdateError::Offer(_)
            | UpdateError::Pin(_)
            | UpdateError::Size { .. } => UpdateState::Refused,
            _ => UpdateState::Failed,
        }
    }
}

/// What the agent is to do for the updater.
#[derive(Debug)]
pub enum Action {
    /// Send this report.
    Report(UpdateReport),
    /// Install this download now (no session runs): see [`Updater::install`].
    Install(Box<Ready>),
}

/// A downloaded, verified release waiting to be swapped in.
#[derive(Debug)]
pub struct Ready {
    offer: UpdateOffer,
    checked: Box<offer::Checked>,
    download: PathBuf,
}

/// A download task's result.
#[derive(Debug)]
pub struct Outcome {
    rollout_id: String,
    release_id: String,
    result: Result<Box<offer::Checked>, UpdateError>,
}

/// Where the held offer is.
enum Step {
    /// Checked; downloads once no session runs.
    Checked(Box<offer::Checked>),
    Downloading(tokio::task::JoinHandle<()>),
    /// Downloaded; installs once no session runs.
    Ready(Box<Ready>),
    /// Handed to the agent to install.
    Installing,
    /// Over: this report is sent again if the same offer comes again.
    Done(UpdateReport),
}

struct Held {
    offer: UpdateOffer,
    step: Step,
    /// `Waiting` was reported for the current step.
    told_waiting: bool,
}

/// What the updater needs from the agent's set-up.
pub struct Config {
    pub dir: StateDir,
    /// The running binary (found at start-up, before anything replaced it).
    pub exe: PathBuf,
    /// The release root in device.json, if any.
    pub pinned: Option<String>,
    pub source: Source,
    /// How long a new binary has to authenticate.
    pub health: Duration,
}

/// The update state machine of one agent.
pub struct Updater {
    dir: StateDir,
    exe: PathBuf,
    pinned: Option<String>,
    health: Duration,
    source: Arc<Source>,
    held: Option<Held>,
    tx: mpsc::Sender<Outcome>,
    rx: mpsc::Receiver<Outcome>,
    shown: Option<UpdateStatus>,
}

/// A version as status shows it (the server's text, bounded).
fn shown_version(v: &str) -> String {
    v.chars().take(64).collect()
}

impl Updater {
    pub fn new(cfg: Config) -> Updater {
        // A download a crash left behind is of no use.
        let _ = std::fs::remove_file(install::download_path(&cfg.exe));
        let shown = match record::load(&cfg.dir.0) {
            Ok(r) => r.map(|r| status_of(&r)),
            Err(e) => {
                tracing::warn!(error = %e, "reading update.json");
                None
            }
        };
        let (tx, rx) = mpsc::channel(4);
        Updater {
            dir: cfg.dir,
            exe: cfg.exe,
            pinned: cfg.pinned,
            health: cfg.health,
            source: Arc::new(cfg.source),
            held: None,
            tx,
            rx,
            shown,
        }
    }

    /// The update as `status` shows it.
    pub fn status(&self) -> Option<UpdateStatus> {
        self.shown.clone()
    }

    fn show(&mut self, version: &str, state: &str, message: &str) {
        self.shown = Some(UpdateStatus {
            version: shown_version(version),
            state: state.into(),
            message: record::bounded(message),
            at: now(),
        });
    }

    fn report(offer: &UpdateOffer, state: UpdateState, message: &str) -> UpdateReport {
        UpdateReport {
            rollout_id: offer.rollout_id.clone(),
            release_id: offer.release_id.clone(),
            state,
            running: crate::version().into(),
            message: record::bounded(message),
        }
    }

    /// Ends the held offer with `e`; answers the report.
    fn finish(&mut self, offer: UpdateOffer, e: UpdateError) -> UpdateReport {
        let state = e.state();
        tracing::warn!(rollout = %offer.rollout_id, release = %offer.release_id, error = %e, "update {}", state.as_str());
        let rep = Self::report(&offer, state, &e.to_string());
        self.show(&offer.version, state.as_str(), &rep.message);
        self.held = Some(Held {
            offer,
            step: Step::Done(rep.clone()),
            told_waiting: false,
        });
        rep
    }

    /// Forgets the held offer: its download stops (the file goes), a
    /// downloaded file is removed.
    async fn drop_held(&mut self) {
        let Some(h) = self.held.take() else { return };
        match h.step {
            Step::Downloading(task) => {
                task.abort();
                let _ = task.await;
                // A download that finished before it was stopped.
                while let Ok(o) = self.rx.try_recv() {
                    if o.result.is_ok() {
                        let _ = std::fs::remove_file(install::download_path(&self.exe));
                    }
                }
            }
            Step::Ready(r) => {
                let _ = std::fs::remove_file(&r.download);
            }
            _ => {}
        }
    }

    /// The server's offer (`None`: withdrawn). Answers reports to send.
    pub async fn on_offer(&mut self, offer: Option<UpdateOffer>) -> Vec<UpdateReport> {
        let Some(offer) = offer else {
            if self
                .held
                .as_ref()
                .is_some_and(|h| !matches!(h.step, Step::Done(_)))
            {
                tracing::info!("the update offer was withdrawn");
                self.shown = None;
            }
            self.drop_held().await;
            return vec![];
        };
        if let Some(h) = &self.held
            && h.offer.rollout_id == offer.rollout_id
            && h.offer.release_id == offer.release_id
        {
            // The same offer again (a reconnect): its outcome once more, if over.
            return match &h.step {
                Step::Done(r) => vec![r.clone()],
                _ => vec![],
            };
        }
        self.drop_held().await;
        // An update this edge installed already: its outcome, not another install.
        match record::load(&self.dir.0) {
            Ok(Some(r)) if r.is_for(&offer.rollout_id, &offer.release_id) => {
                if r.state == Phase::Trial {
                    return vec![]; // confirmed (or rolled back) on its own
                }
                let rep = r.report(crate::version());
                self.held = Some(Held {
                    offer,
                    step: Step::Done(rep.clone()),
                    told_waiting: false,
                });
                return vec![rep];
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading update.json"),
        }
        tracing::info!(rollout = %offer.rollout_id, release = %offer.release_id, version = %shown_version(&offer.version), "update offered");
        let target = drawbridge_release::this_target();
        match offer::check(
            &offer,
            self.pinned.as_deref(),
            crate::version(),
            &target,
            now(),
        ) {
            Ok(c) => {
                if self.pinned.is_none() {
                    tracing::warn!(root = %c.root, "no release root pinned at enrolment: trusting the one offered over the authenticated channel (first use)");
                }
                self.show(&c.meta.version, "offered", "");
                self.held = Some(Held {
                    offer,
                    step: Step::Checked(Box::new(c)),
                    told_waiting: false,
                });
                vec![]
            }
            Err(e) => vec![self.finish(offer, e)],
        }
    }

    /// Moves the held offer on: downloads or installs it when no session
    /// runs (`busy`: one does).
    pub fn poll(&mut self, busy: bool) -> Vec<Action> {
        let Some(mut h) = self.held.take() else {
            return vec![];
        };
        let mut out = Vec::new();
        match std::mem::replace(&mut h.step, Step::Installing) {
            step @ (Step::Checked(_) | Step::Ready(_)) if busy => {
                h.step = step;
                if !h.told_waiting {
                    h.told_waiting = true;
                    let msg = "a session is active on this edge; the update waits for its end";
                    tracing::info!("{msg}");
                    self.show(&h.offer.version, "waiting", msg);
                    out.push(Action::Report(Self::report(
                        &h.offer,
                        UpdateState::Waiting,
                        msg,
                    )));
                }
            }
            Step::Checked(c) => {
                tracing::info!(version = %c.meta.version, size = c.meta.size, "downloading the update");
                self.show(&c.meta.version, "downloading", "");
                let src = self.source.clone();
                let tx = self.tx.clone();
                let dest = install::download_path(&self.exe);
                let (rollout_id, release_id) =
                    (h.offer.rollout_id.clone(), h.offer.release_id.clone());
                h.step = Step::Downloading(tokio::spawn(async move {
                    let result = download::fetch(&src, &release_id, &c.meta, &dest)
                        .await
                        .map(|()| c);
                    let _ = tx
                        .send(Outcome {
                            rollout_id,
                            release_id,
                            result,
                        })
                        .await;
                }));
                h.told_waiting = false;
                out.push(Action::Report(Self::report(
                    &h.offer,
                    UpdateState::Downloading,
                    "",
                )));
            }
            Step::Ready(r) => out.push(Action::Install(r)),
            other => h.step = other,
        }
        self.held = Some(h);
        out
    }

    /// The next download result (never ends: the updater holds a sender).
    pub async fn next(&mut self) -> Option<Outcome> {
        self.rx.recv().await
    }

    /// A download's result; answers reports to send.
    pub fn on_outcome(&mut self, o: Outcome) -> Vec<UpdateReport> {
        let current = self.held.as_ref().is_some_and(|h| {
            h.offer.rollout_id == o.rollout_id
                && h.offer.release_id == o.release_id
                && matches!(h.step, Step::Downloading(_))
        });
        if !current {
            return vec![]; // a stopped download's, its file gone with its offer
        }
        let Some(h) = self.held.take() else {
            return vec![];
        };
        match o.result {
            Ok(checked) => {
                tracing::info!(version = %checked.meta.version, "update downloaded, size and hash as signed");
                self.show(&checked.meta.version, "downloaded", "");
                self.held = Some(Held {
                    step: Step::Ready(Box::new(Ready {
                        download: install::download_path(&self.exe),
                        offer: h.offer.clone(),
                        checked,
                    })),
                    offer: h.offer,
                    told_waiting: false,
                });
                vec![]
            }
            Err(e) => vec![self.finish(h.offer, e)],
        }
    }

    /// The report that precedes [`Updater::install`].
    pub fn installing(&self, ready: &Ready) -> UpdateReport {
        Self::report(
            &ready.offer,
            UpdateState::Installing,
            &format!("installing version {}", ready.checked.meta.version),
        )
    }

    /// Pins `root` in device.json.
    fn pin(&mut self, root: &drawbridge_release::PublicKey) -> Result<(), UpdateError> {
        let text = root.to_string();
        let mut d = self
            .dir
            .device()
            .map_err(|e| UpdateError::Record(format!("{e:#}")))?;
        d.release_root = Some(text.clone());
        self.dir
            .save_device(&d)
            .map_err(|e| UpdateError::Record(format!("{e:#}")))?;
        tracing::info!(root = %text, "release root pinned");
        self.pinned = Some(text);
        Ok(())
    }

    /// Installs a download: pins a new root, keeps the running binary as
    /// `.previous`, writes the trial, swaps the new binary in. Answers the
    /// trial (then [`Updater::exec`] it) or the failure's report.
    pub fn install(&mut self, ready: Box<Ready>) -> Result<UpdateRecord, UpdateReport> {
        let Ready {
            offer,
            checked,
            download,
        } = *ready;
        let now = now();
        let rec = UpdateRecord {
            rollout_id: offer.rollout_id.clone(),
            release_id: offer.release_id.clone(),
            from: crate::version().into(),
            to: checked.meta.version.clone(),
            state: Phase::Trial,
            message: String::new(),
            deadline: now + self.health.as_secs() as i64,
            exe: self.exe.clone(),
            sha256: checked.meta.sha256.to_ascii_lowercase(),
            proxy_env: install::proxy_env_names(),
            reported: false,
            at: now,
        };
        let result = (|| {
            if checked.repin {
                self.pin(&checked.root)?;
            }
            install::keep_previous(&self.exe)?;
            record::save(&self.dir.0, &rec)?;
            if let Err(e) = install::swap(&download, &self.exe) {
                record::remove(&self.dir.0);
                return Err(e);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                tracing::info!(from = %rec.from, to = %rec.to, deadline_secs = self.health.as_secs(), "update swapped in; restarting into it");
                self.shown = Some(status_of(&rec));
                Ok(rec)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&download);
                Err(self.finish(offer, e))
            }
        }
    }

    /// Replaces the process with the installed binary; returns only if that failed.
    pub fn exec(&self, rec: &UpdateRecord) -> std::io::Error {
        install::exec(&rec.exe, None)
    }

    /// The exec of `rec` failed with `e`: the previous binary goes back, and
    /// `update.json` says failed (reported after the next welcome).
    pub fn exec_failed(&mut self, rec: UpdateRecord, e: std::io::Error) {
        let mut msg = format!("executing version {} failed: {e}", rec.to);
        if let Err(e) = install::restore_previous(&rec.exe) {
            msg.push_str(&format!("; putting the previous binary back failed: {e}"));
        }
        tracing::error!("{msg}");
        let rec = rec.moved(Phase::Failed, &msg, now());
        if let Err(e) = record::save(&self.dir.0, &rec) {
            tracing::warn!(error = %e, "writing update.json");
        }
        self.shown = Some(status_of(&rec));
        if let Some(h) = self.held.as_mut() {
            h.step = Step::Done(rec.report(crate::version()));
        }
    }

    /// The channel authenticated: a trial succeeds. Answers the outcome of
    /// the last install if the server has not heard it yet.
    pub fn on_welcome(&mut self) -> Vec<UpdateReport> {
        match trial::confirm(&self.dir.0, now()) {
            Ok(Some(r)) => {
                self.shown = Some(status_of(&r));
                vec![r.report(crate::version())]
            }
            Ok(None) => vec![],
            Err(e) => {
                tracing::warn!(error = %e, "reading update.json");
                vec![]
            }
        }
    }

    /// `r` was sent: a final state of the last install need not be sent again.
    pub fn sent(&mut self, r: &UpdateReport) {
        if r.state.is_final() {
            trial::mark_reported(&self.dir.0, &r.rollout_id, &r.release_id);
        }
    }
}

fn status_of(r: &UpdateRecord) -> UpdateStatus {
    UpdateStatus {
        version: shown_version(&r.to),
        state: r.state.as_str().into(),
        message: r.message.clone(),
        at: r.at,
    }
}

#[cfg(test)]
mod tests;
