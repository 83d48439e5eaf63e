//! `update.json` in the state directory: the update this edge installed last,
//! from its trial (the new binary runs and must come online) to its outcome,
//! and whether the server has heard of that outcome.

use super::UpdateError;
use drawbridge_proto::update::{MAX_REPORT_MESSAGE, UpdateReport, UpdateState};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FILE: &str = "update.json";
/// A larger file is not ours.
const MAX_LEN: u64 = 64 * 1024;

/// Where an installed update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Swapped in; the new binary must authenticate before the deadline.
    Trial,
    Succeeded,
    /// The previous binary was put back.
    RolledBack,
    /// The install did not happen (or could not be undone cleanly).
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Trial => "trial",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
        }
    }

    /// What the server is told.
    pub fn report_state(self) -> UpdateState {
        match self {
            Phase::Trial => UpdateState::Installing,
            Phase::Succeeded => UpdateState::Succeeded,
            Phase::RolledBack => UpdateState::RolledBack,
            Phase::Failed => UpdateState::Failed,
        }
    }
}

/// The content of `update.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub rollout_id: String,
    pub release_id: String,
    /// The version that installed it, and the version installed.
    pub from: String,
    pub to: String,
    pub state: Phase,
    #[serde(default)]
    pub message: String,
    /// Unix seconds by which the new binary must have authenticated.
    pub deadline: i64,
    /// The installed binary; its `.previous` sibling is the one it replaced.
    pub exe: PathBuf,
    /// Hex SHA-256 of the installed binary: at start-up it tells whether the
    /// swap happened at all.
    pub sha256: String,
    /// Names of the proxy variables set for the binary that installed the
    /// update (never their values): a rollback restarts the previous binary
    /// without any that appeared since (see `install::exec`).
    #[serde(default)]
    pub proxy_env: Vec<String>,
    /// The server has been told the final state.
    #[serde(default)]
    pub reported: bool,
    /// When the state last changed (Unix seconds).
    pub at: i64,
}

impl UpdateRecord {
    /// Whether this record is about `rollout_id`'s offer of `release_id`.
    pub fn is_for(&self, rollout_id: &str, release_id: &str) -> bool {
        self.rollout_id == rollout_id && self.release_id == release_id
    }

    /// The report of its state, as the version `running` runs.
    pub fn report(&self, running: &str) -> UpdateReport {
        UpdateReport {
            rollout_id: self.rollout_id.clone(),
            release_id: self.release_id.clone(),
            state: self.state.report_state(),
            running: running.to_string(),
            message: bounded(&self.message),
        }
    }

    /// Moves to `state` with `message`, not yet reported.
    pub fn moved(mut self, state: Phase, message: &str, now: i64) -> Self {
        self.state = state;
        self.message = bounded(message);
        self.reported = false;
        self.at = now;
        self
    }
}

/// `message` cut to what a report may carry (on a character boundary).
pub fn bounded(message: &str) -> String {
    if message.len() <= MAX_REPORT_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_REPORT_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// Reads `update.json` from the state directory `dir`; `None` when there is
/// none. A file that is too large or does not parse is an error.
pub fn load(dir: &Path) -> Result<Option<UpdateRecord>, UpdateError> {
    let path = dir.join(FILE);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UpdateError::io(format!("reading {}", path.display()), e)),
    };
    let mut text = String::new();
    f.take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| UpdateError::io(format!("reading {}", path.display()), e))?;
    if text.len() as u64 > MAX_LEN {
        return Err(UpdateError::Record(format!(
            "{} is larger than {MAX_LEN} bytes",
            path.display()
        )));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| UpdateError::Record(format!("{}: {e}", path.display())))
}

/// Writes `update.json` atomically (and durably) into `dir`.
pub fn save(dir: &Path, r: &UpdateRecord) -> Result<(), UpdateError> {
    let text = serde_json::to_string_pretty(r)
        .map_err(|e| UpdateError::Record(format!("encoding: {e}")))?;
    crate::local::write_atomic(&dir.join(FILE), text.as_bytes(), true)
        .map_err(|e| UpdateError::Record(format!("{e:#}")))
}

/// Removes `update.json` (an install that did not happen).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(dir: &Path) -> UpdateRecord {
        UpdateRecord {
            rollout_id: "r1".into(),
            release_id: "rel1".into(),
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            state: Phase::Trial,
            message: String::new(),
            deadline: 100,
            exe: dir.join("drawbridge-edge"),
            sha256: "00".repeat(32),
            proxy_env: vec![],
            reported: false,
            at: 1,
        }
    }

    #[test]
    fn a_record_round_trips_and_a_missing_one_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
        let r = sample(tmp.path());
        save(tmp.path(), &r).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), Some(r.clone()));
        let text = std::fs::read_to_string(tmp.path().join(FILE)).unwrap();
        assert!(text.contains("\"state\": \"trial\""), "{text}");
        remove(tmp.path());
        assert_eq!(load(tmp.path()).unwrap(), None);
    }

    #[test]
    fn a_damaged_or_huge_record_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), "{\"state\": 7").unwrap();
        assert!(load(tmp.path()).is_err());
        std::fs::write(tmp.path().join(FILE), vec![b' '; 70 * 1024]).unwrap();
        assert!(load(tmp.path()).is_err());
    }

    #[test]
    fn report_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(400);
        let b = bounded(&long);
        assert!(b.len() <= MAX_REPORT_MESSAGE);
        assert!(long.starts_with(&b));
    }
}
