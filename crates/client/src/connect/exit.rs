//! How `connect` ends: the exit codes of `connect --help` and why the
//! foreground loop stopped.

/// `connect --help`'s exit codes; the numbers come from `crate::exit_code_for_end`
/// (a unit test keeps them in step) and docs/client.md repeats them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   you stopped it: Ctrl-C, SIGTERM or --for-seconds
  1   an error (nothing started, or the tunnel failed)
  2   a usage error
  3   a user of the session ended it (reason user)
  4   an administrator ended it, or your user was disabled (admin, user_disabled)
  5   the site switched remote access off (site_switch)
  6   the session's time is over (expiry)
  7   the session was idle too long (idle_timeout)
  8   the edge went offline (edge_offline)
  9   the start was refused or not approved in time (refused, approval_timeout)
  10  the session ended for another reason";

/// Why the foreground loop of `connect` stopped.
pub(super) enum Stop {
    /// This process was asked to stop (exit code 0).
    Asked(&'static str),
    /// The session ended on its own (the server's end reason; its own exit code).
    Ended(String),
}

/// Tells how the loop stopped; a session that ended on its own is an error
/// carrying the server's reason (its own exit code).
pub(super) fn finish(stop: Stop) -> super::Result<()> {
    match stop {
        Stop::Asked(why) => {
            eprintln!("tunnel down: {why}");
            Ok(())
        }
        Stop::Ended(reason) => {
            eprintln!("tunnel down");
            Err(crate::Error::SessionEnded { reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_the_exit_code_of_every_end_reason() {
        for r in [
            "user",
            "admin",
            "user_disabled",
            "site_switch",
            "expiry",
            "idle_timeout",
            "edge_offline",
            "refused",
            "approval_timeout",
        ] {
            let code = crate::exit_code_for_end(r);
            assert!(code > 2, "{r}");
            let line = EXIT_CODES
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code} ")))
                .unwrap_or_else(|| panic!("no line for {code}"));
            assert!(line.contains(r), "{r} not on {line:?}");
        }
    }
}
