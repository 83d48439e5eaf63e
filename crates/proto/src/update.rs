//! Signed edge updates on the wire: what the server offers an edge over its
//! channel, what the edge reports back, and how it proves itself when it
//! fetches the release's binary. The signatures themselves (root key, signing
//! keys, release metadata) are `drawbridge-release`'s; here they travel as the
//! opaque JSON text that tool wrote, and the edge verifies them against the
//! root it pinned at enrolment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The edge signs `RELEASE_FETCH_CONTEXT || device_id || 0 || release_id || 0 ||
/// unix_seconds (decimal)` with its identity key to fetch a release's binary.
pub const RELEASE_FETCH_CONTEXT: &[u8] = b"drawbridge-release-fetch-v1\0";
/// Headers of that fetch (`GET /api/v1/edge/releases/{release_id}`).
pub const FETCH_DEVICE_HEADER: &str = "x-drawbridge-device";
pub const FETCH_TIME_HEADER: &str = "x-drawbridge-time";
pub const FETCH_SIGNATURE_HEADER: &str = "x-drawbridge-signature";
/// Largest signed release metadata or root rotation (JSON text).
pub const MAX_SIGNED_LEN: usize = 16 * 1024;
/// Most root rotations a server hands out.
pub const MAX_ROTATIONS: usize = 16;
/// Largest release binary a server stores and an edge downloads.
pub const MAX_RELEASE_SIZE: u64 = 256 * 1024 * 1024;
/// Longest message in an update report.
pub const MAX_REPORT_MESSAGE: usize = 512;

/// The message an edge signs to fetch a release's binary.
pub fn fetch_message(device_id: &str, release_id: &str, unix_seconds: i64) -> Vec<u8> {
    let mut m = RELEASE_FETCH_CONTEXT.to_vec();
    m.extend_from_slice(device_id.as_bytes());
    m.push(0);
    m.extend_from_slice(release_id.as_bytes());
    m.push(0);
    m.extend_from_slice(unix_seconds.to_string().as_bytes());
    m
}

/// A release the edge is to install (`ServerToEdge::Update`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateOffer {
    pub rollout_id: String,
    pub release_id: String,
    /// The release's version (also inside `signed`, which is what counts).
    pub version: String,
    pub size: u64,
    /// Hex SHA-256 of the binary (also inside `signed`).
    pub sha256: String,
    /// The release's signed metadata, as `drawbridge-release sign` wrote it.
    pub signed: String,
    /// The release root the server trusts first (base64 Ed25519 public key)…
    pub root: String,
    /// …and its rotations since, oldest first, each signed by the root before
    /// it (`drawbridge-release rotate-root`'s JSON).
    #[serde(default)]
    pub rotations: Vec<String>,
    /// An admin's explicit downgrade: only then may an older version be
    /// installed, and only one signed as a downgrade release.
    #[serde(default)]
    pub downgrade: bool,
}

/// Where an edge is with an offered update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Offered, held back on the edge (a session is active).
    Waiting,
    Downloading,
    /// Verified, swapped in, restarting into the new binary.
    Installing,
    /// The new binary connected and authenticated within the health window.
    Succeeded,
    /// Download or installation failed; the running binary is unchanged.
    Failed,
    /// The new binary did not come online in time; the previous one runs again.
    RolledBack,
    /// The signature, size, hash, target or version was not acceptable; nothing changed.
    Refused,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Waiting => "waiting",
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Succeeded => "succeeded",
            UpdateState::Failed => "failed",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Refused => "refused",
        }
    }

    /// The update is over for this device (one way or the other).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Succeeded
                | UpdateState::Failed
                | UpdateState::RolledBack
                | UpdateState::Refused
        )
    }

    /// It counts against the rollout's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            UpdateState::Failed | UpdateState::RolledBack | UpdateState::Refused
        )
    }
}

impl std::str::FromStr for UpdateState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "waiting" => UpdateState::Waiting,
            "downloading" => UpdateState::Downloading,
            "installing" => UpdateState::Installing,
            "succeeded" => UpdateState::Succeeded,
            "failed" => UpdateState::Failed,
            "rolled_back" => UpdateState::RolledBack,
            "refused" => UpdateState::Refused,
            _ => return Err(()),
        })
    }
}

/// What an edge tells the server about an offered update (`EdgeToServer::Update`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateReport {
    pub rollout_id: String,
    pub release_id: String,
    pub state: UpdateState,
    /// The version the edge runs now.
    pub running: String,
    /// Why, in words (at most [`MAX_REPORT_MESSAGE`] bytes).
    #[serde(default)]
    pub message: String,
}

/// A release stored on the server (`GET /api/v1/releases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub id: String,
    pub version: String,
    /// `arch-os`, e.g. `x86_64-linux`.
    pub target: String,
    pub size: u64,
    pub sha256: String,
    /// Signed as a downgrade release: it may replace a newer version, when an
    /// admin asks for that explicitly.
    pub downgrade: bool,
    pub created_at: i64,
}

/// When a rollout may offer updates: a daily window in UTC (`HH:MM`); an end
/// before the start spans midnight, equal ends mean all day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutWindow {
    #[schema(pattern = "^[0-2][0-9]:[0-5][0-9]$")]
    pub start: String,
    #[schema(pattern = "^[0-2][0-9]:[0-5][0-9]$")]
    pub end: String,
}

impl RolloutWindow {
    /// Minutes of the day of `HH:MM`.
    pub fn minutes(hhmm: &str) -> Option<u32> {
        let (h, m) = hhmm.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }

    /// Both ends as minutes of the day, if both parse.
    pub fn parsed(&self) -> Option<(u32, u32)> {
        Some((Self::minutes(&self.start)?, Self::minutes(&self.end)?))
    }

    /// Whether minute `m` of the day is inside `start..end`.
    pub fn contains(start: u32, end: u32, m: u32) -> bool {
        match start.cmp(&end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => start <= m && m < end,
            std::cmp::Ordering::Greater => m >= start || m < end,
        }
    }
}

/// A rollout device's states in the order an update goes through them. Besides
/// the edge's [`UpdateState`]s, the server's own: `pending` (its turn has not
/// come), `offered`, `skipped` (it runs a newer version and the rollout is no
/// downgrade: nothing to do, and no failure) and `cancelled`.
pub const DEVICE_STATE_ORDER: &[&str] = &[
    "pending",
    "offered",
    "waiting",
    "downloading",
    "installing",
    "succeeded",
    "failed",
    "rolled_back",
    "refused",
    "skipped",
    "cancelled",
];

/// `2 succeeded, 1 pending` for a rollout's [`Rollout::counts`], in the order an
/// update goes (unknown states last), or `empty` when there are none.
pub fn counts_text(counts: &std::collections::BTreeMap<String, u32>, empty: &str) -> String {
    let mut parts: Vec<String> = DEVICE_STATE_ORDER
        .iter()
        .filter_map(|s| counts.get(*s).map(|n| format!("{n} {s}")))
        .collect();
    parts.extend(
        counts
            .iter()
            .filter(|(s, _)| !DEVICE_STATE_ORDER.contains(&s.as_str()))
            .map(|(s, n)| format!("{n} {s}")),
    );
    if parts.is_empty() {
        empty.into()
    } else {
        parts.join(", ")
    }
}

/// Most devices named in one rollout request (more through pools).
pub const MAX_ROLLOUT_DEVICES: usize = 1000;
/// Most pools or canaries named in one rollout request.
pub const MAX_ROLLOUT_POOLS: usize = 100;

fn one() -> u32 {
    1
}

/// `POST /api/v1/rollouts`: install a release on devices, canaries first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub release_id: String,
    /// Device ids (at most 1,000).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub devices: Vec<String>,
    /// Pool ids: their devices at the time of the request (at most 100).
    #[serde(default)]
    #[schema(max_items = 100)]
    pub pools: Vec<String>,
    /// Devices updated first (they must be among the rollout's devices; at most 100).
    #[serde(default)]
    #[schema(max_items = 100)]
    pub canaries: Vec<String>,
    /// Besides the named canaries, this share of the devices (rounded up) goes first.
    #[serde(default)]
    #[schema(maximum = 100)]
    pub canary_percent: u8,
    /// The rest follows once every canary succeeded and this many minutes passed
    /// without a failure (at most 30 days).
    #[serde(default)]
    #[schema(maximum = 43200)]
    pub soak_minutes: u32,
    /// Offer updates only inside this daily window (UTC).
    #[serde(default)]
    pub window: Option<RolloutWindow>,
    /// The rollout pauses for the admins once this many devices failed (1 to 10,000; default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 10000)]
    pub failure_threshold: u32,
    /// Allow an older version than a device runs (only a release signed as a downgrade).
    #[serde(default)]
    pub downgrade: bool,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDevice {
    pub device_id: String,
    pub name: String,
    pub canary: bool,
    /// `pending` (not offered yet), `offered`, an [`UpdateState`] name, or `cancelled`.
    pub state: String,
    /// The version it ran when the update began.
    pub from_version: Option<String>,
    pub message: Option<String>,
    pub updated_at: i64,
}

/// A rollout (`GET /api/v1/rollouts[/{id}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: String,
    pub release: Release,
    /// `running`, `paused`, `done` or `cancelled`.
    pub state: String,
    /// `canary` or `all`.
    pub stage: String,
    pub soak_minutes: u32,
    pub failure_threshold: u32,
    pub window: Option<RolloutWindow>,
    pub downgrade: bool,
    pub paused_reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    /// Devices per state.
    pub counts: std::collections::BTreeMap<String, u32>,
    /// The devices (only in `GET /rollouts/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<RolloutDevice>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in [
            UpdateState::Waiting,
            UpdateState::Downloading,
            UpdateState::Installing,
            UpdateState::Succeeded,
            UpdateState::Failed,
            UpdateState::RolledBack,
            UpdateState::Refused,
        ] {
            assert_eq!(s.as_str().parse::<UpdateState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn windows_span_midnight_and_equal_ends_mean_all_day() {
        assert_eq!(RolloutWindow::minutes("22:30"), Some(22 * 60 + 30));
        for bad in ["24:00", "7:00", "07:60", "0700", "", "aa:bb", "07:00:00"] {
            assert_eq!(RolloutWindow::minutes(bad), None, "{bad}");
        }
        assert!(RolloutWindow::contains(60, 120, 60));
        assert!(!RolloutWindow::contains(60, 120, 120));
        assert!(RolloutWindow::contains(22 * 60, 4 * 60, 23 * 60));
        assert!(RolloutWindow::contains(22 * 60, 4 * 60, 60));
        assert!(!RolloutWindow::contains(22 * 60, 4 * 60, 12 * 60));
        assert!(RolloutWindow::contains(300, 300, 0));
    }

    #[test]
    fn the_fetch_message_separates_its_fields() {
        assert_ne!(fetch_message("a", "b1", 2), fetch_message("ab", "1", 2));
        assert_ne!(fetch_message("a", "b", 12), fetch_message("a", "b1", 2));
    }
}
