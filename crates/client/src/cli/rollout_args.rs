//! The clap types of the edge-update commands (`release`, `rollout`) and the
//! value parsers only they use.

use clap::{Args, Subcommand};
use drawbridge_proto::update::RolloutWindow;

#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// List the edge releases stored on the server (admins). The server's
    /// operator adds them with `drawbridge-server release add`.
    List,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// List the account's rollouts, newest first (admins).
    List,
    /// Show a rollout and where each of its devices is (admins).
    Show { rollout: String },
    /// Install a release on devices and pools (admins): canaries first, the
    /// rest once every canary succeeded and the soak passed without failure;
    /// only inside the window; never while a session runs on the device; the
    /// rollout pauses when failures reach the threshold.
    Create(Box<RolloutCreateArgs>),
    /// Pause a running rollout: offers not yet being installed are withdrawn.
    Pause { rollout: String },
    /// Resume a paused rollout (also one paused for failures).
    Resume { rollout: String },
    /// Cancel a rollout: devices not yet updating never will.
    Cancel { rollout: String },
}

#[derive(Args, Debug)]
pub struct RolloutCreateArgs {
    /// The release: its id, or its version when only one release has it
    /// (see `drawbridge release list`).
    #[arg(long, value_name = "RELEASE")]
    pub release: String,
    /// A device to update, by name or id (repeatable).
    #[arg(long = "device", short = 'd', value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// A pool whose devices (as they are now) to update, by name or id (repeatable).
    #[arg(long = "pool", value_name = "POOL")]
    pub pools: Vec<String>,
    /// A device updated first; it must be one of the devices above or in the
    /// pools (repeatable).
    #[arg(long = "canary", value_name = "DEVICE")]
    pub canaries: Vec<String>,
    /// Besides the named canaries, this share of the devices (rounded up)
    /// goes first, 0 to 100.
    #[arg(long, value_name = "N", default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=100))]
    pub canary_percent: u8,
    /// Minutes without a failure after the last canary succeeded before the
    /// rest follows (at most 43200, 30 days).
    #[arg(long, value_name = "M", default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=43_200))]
    pub soak_minutes: u32,
    /// Offer updates only inside this daily window, in UTC, e.g. 22:00-04:00
    /// (an end before the start spans midnight). Default: any time.
    #[arg(long, value_name = "HH:MM-HH:MM", value_parser = parse_window)]
    pub window: Option<RolloutWindow>,
    /// The rollout pauses for the admins once this many devices failed
    /// (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub failure_threshold: u32,
    /// Allow installing an older version than a device runs (only a release
    /// signed as a downgrade release). Needs --yes as well.
    #[arg(long)]
    pub downgrade: bool,
    /// Confirm a --downgrade (there is no question asked).
    #[arg(long)]
    pub yes: bool,
}

/// `HH:MM-HH:MM` (UTC) → a rollout window.
pub fn parse_window(s: &str) -> Result<RolloutWindow, String> {
    let bad = || {
        format!(
            "{s:?} is not a window: write HH:MM-HH:MM in UTC, e.g. 22:00-04:00 (24-hour clock, two digits each)"
        )
    };
    let (start, end) = s.trim().split_once('-').ok_or_else(bad)?;
    let (start, end) = (start.trim(), end.trim());
    if RolloutWindow::minutes(start).is_none() || RolloutWindow::minutes(end).is_none() {
        return Err(bad());
    }
    Ok(RolloutWindow {
        start: start.to_string(),
        end: end.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_malformed_ones_are_refused_with_the_format() {
        let w = parse_window("22:00-04:30").unwrap();
        assert_eq!((w.start.as_str(), w.end.as_str()), ("22:00", "04:30"));
        assert!(parse_window(" 08:00 - 09:00 ").is_ok());
        for bad in [
            "",
            "22:00",
            "7:00-9:00",
            "24:00-01:00",
            "08:60-09:00",
            "08:00-09:00-10:00",
            "08:00_09:00",
            "aa:bb-cc:dd",
        ] {
            let e = parse_window(bad).unwrap_err();
            assert!(e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
    }
}
