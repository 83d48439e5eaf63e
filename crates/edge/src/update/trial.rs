//! The trial of a freshly installed binary. `run` looks at `update.json` first
//! thing: a trial whose deadline has passed is rolled back at once (the
//! previous binary is put back and executed); a running trial arms a timer
//! that does the same unless the channel authenticates first, which confirms
//! the update. Final states wait in the file until the server has heard them.

use super::UpdateError;
use super::install;
use super::record::{self, Phase, UpdateRecord};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The timer and the confirmation never both act on one trial.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `run` does about `update.json` before anything else.
#[derive(Debug, PartialEq, Eq)]
pub enum AtStart {
    /// No trial: carry on.
    Nothing,
    /// This binary is on trial until `deadline` (Unix seconds).
    Trial { deadline: i64 },
    /// The trial's deadline has passed: put the previous binary back.
    RollBack(Box<UpdateRecord>),
}

/// Decides from `update.json` in `dir` at `now`. A trial whose binary is not
/// the one installed (the install was interrupted before the swap) becomes
/// `failed` on disk and needs nothing more.
pub fn decide(dir: &Path, now: i64) -> Result<AtStart, UpdateError> {
    let Some(r) = record::load(dir)? else {
        return Ok(AtStart::Nothing);
    };
    if r.state != Phase::Trial {
        return Ok(AtStart::Nothing);
    }
    if !install::sha256_file(&r.exe).is_ok_and(|h| h == r.sha256) {
        let r = r.moved(
            Phase::Failed,
            "the install was interrupted before the new binary was in place",
            now,
        );
        record::save(dir, &r)?;
        return Ok(AtStart::Nothing);
    }
    if now >= r.deadline {
        return Ok(AtStart::RollBack(Box::new(r)));
    }
    Ok(AtStart::Trial {
        deadline: r.deadline,
    })
}

/// Puts `<exe>.previous` back over the trial's binary and records the
/// rollback with `reason`; answers the record (its `exe` is to be executed).
/// When nothing can be put back, the record says `failed` and this errs.
pub fn roll_back(
    dir: &Path,
    r: UpdateRecord,
    reason: &str,
    now: i64,
) -> Result<UpdateRecord, UpdateError> {
    if let Err(e) = install::restore_previous(&r.exe) {
        let msg = format!("{reason}; the previous binary could not be put back: {e}");
        record::save(dir, &r.moved(Phase::Failed, &msg, now))?;
        return Err(e);
    }
    let r = r.moved(Phase::RolledBack, reason, now);
    record::save(dir, &r)?;
    tracing::warn!(from = %r.to, to = %r.from, %reason, "update rolled back");
    Ok(r)
}

/// Why a trial was rolled back by the timer.
fn timer_reason(r: &UpdateRecord) -> String {
    format!(
        "version {} did not come online within {} s; version {} restored",
        r.to,
        (r.deadline - r.at).max(0),
        r.from
    )
}

/// The timer's turn at `now`: rolls back a trial still running past its
/// deadline; answers what to execute then.
pub fn expire(dir: &Path, now: i64) -> Option<UpdateRecord> {
    let _g = lock();
    match record::load(dir) {
        Ok(Some(r)) if r.state == Phase::Trial && now >= r.deadline => {
            let reason = timer_reason(&r);
            roll_back(dir, r, &reason, now).ok()
        }
        _ => None,
    }
}

/// The channel authenticated: a trial succeeds. Answers the record when its
/// final state has not been reported yet.
pub fn confirm(dir: &Path, now: i64) -> Result<Option<UpdateRecord>, UpdateError> {
    let _g = lock();
    let Some(mut r) = record::load(dir)? else {
        return Ok(None);
    };
    if r.state == Phase::Trial {
        let msg = format!(
            "version {} authenticated within {} s",
            r.to,
            (now - r.at).max(0)
        );
        r = r.moved(Phase::Succeeded, &msg, now);
        record::save(dir, &r)?;
        tracing::info!(version = %r.to, "update confirmed");
    }
    Ok((!r.reported).then_some(r))
}

/// The server has heard the final state of `rollout_id`'s `release_id`.
pub fn mark_reported(dir: &Path, rollout_id: &str, release_id: &str) {
    let _g = lock();
    if let Ok(Some(mut r)) = record::load(dir)
        && r.is_for(rollout_id, release_id)
        && r.state != Phase::Trial
        && !r.reported
    {
        r.reported = true;
        if let Err(e) = record::save(dir, &r) {
            tracing::warn!(error = %e, "writing update.json");
        }
    }
}

/// `run`'s first step: rolls back now (and executes the previous binary) or
/// arms the trial's timer. Returns an error only when a rollback could not
/// restart the previous binary.
pub fn at_start(dir: &Path, now: i64) -> Result<(), UpdateError> {
    match decide(dir, now)? {
        AtStart::Nothing => Ok(()),
        AtStart::RollBack(r) => {
            let reason = format!(
                "version {} was not online before its deadline (it was restarted after it); version {} restored",
                r.to, r.from
            );
            let r = roll_back(dir, *r, &reason, now)?;
            Err(UpdateError::Exec(install::exec(&r.exe, Some(&r.proxy_env))))
        }
        AtStart::Trial { deadline } => {
            tracing::info!(
                in_secs = deadline - now,
                "this version is on trial: it must authenticate to the control plane before its deadline"
            );
            let dir: PathBuf = dir.to_path_buf();
            tokio::spawn(async move {
                let wait = u64::try_from(deadline - now).unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                if let Some(r) = expire(&dir, super::now()) {
                    let e = install::exec(&r.exe, Some(&r.proxy_env));
                    // The previous binary is in place; a supervisor starts it.
                    tracing::error!(error = %e, "restarting the previous binary failed; exiting");
                    std::process::exit(1);
                }
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir whose trial installed "build B" over "build A".
    fn installed(deadline: i64) -> (tempfile::TempDir, UpdateRecord) {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("drawbridge-edge");
        std::fs::write(&exe, b"build A").unwrap();
        install::keep_previous(&exe).unwrap();
        std::fs::write(install::download_path(&exe), b"build B").unwrap();
        install::swap(&install::download_path(&exe), &exe).unwrap();
        let r = UpdateRecord {
            rollout_id: "r1".into(),
            release_id: "rel1".into(),
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            state: Phase::Trial,
            message: String::new(),
            deadline,
            exe: exe.clone(),
            sha256: install::sha256_file(&exe).unwrap(),
            proxy_env: vec![],
            reported: false,
            at: deadline - 60,
        };
        record::save(tmp.path(), &r).unwrap();
        (tmp, r)
    }

    #[test]
    fn a_trial_past_its_deadline_at_start_rolls_back() {
        let (tmp, r) = installed(1000);
        let AtStart::RollBack(got) = decide(tmp.path(), 1000).unwrap() else {
            panic!("expected a rollback");
        };
        assert_eq!(*got, r);
        let done = roll_back(tmp.path(), *got, "late", 1001).unwrap();
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"build A");
        assert_eq!(done.state, Phase::RolledBack);
        let on_disk = record::load(tmp.path()).unwrap().unwrap();
        assert_eq!(on_disk.state, Phase::RolledBack);
        assert!(!on_disk.reported);
        // The next start does nothing more.
        assert_eq!(decide(tmp.path(), 2000).unwrap(), AtStart::Nothing);
    }

    #[test]
    fn a_running_trial_waits_and_its_timer_rolls_back_only_after_the_deadline() {
        let (tmp, r) = installed(1000);
        assert_eq!(
            decide(tmp.path(), 999).unwrap(),
            AtStart::Trial { deadline: 1000 }
        );
        assert_eq!(expire(tmp.path(), 999), None);
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"build B");
        let back = expire(tmp.path(), 1000).expect("rolled back");
        assert_eq!(back.exe, r.exe);
        assert!(back.message.contains("within 60 s"), "{}", back.message);
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"build A");
    }

    #[test]
    fn authenticating_in_time_confirms_the_trial_once() {
        let (tmp, r) = installed(1000);
        let c = confirm(tmp.path(), 990).unwrap().expect("to report");
        assert_eq!(c.state, Phase::Succeeded);
        assert_eq!(expire(tmp.path(), 2000), None, "no rollback after success");
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"build B");
        // Until reported, every welcome answers it again.
        assert!(confirm(tmp.path(), 995).unwrap().is_some());
        mark_reported(tmp.path(), "other", "rel1");
        assert!(confirm(tmp.path(), 995).unwrap().is_some());
        mark_reported(tmp.path(), "r1", "rel1");
        assert_eq!(confirm(tmp.path(), 996).unwrap(), None);
        assert_eq!(decide(tmp.path(), 3000).unwrap(), AtStart::Nothing);
    }

    #[test]
    fn a_trial_whose_binary_was_never_swapped_in_is_failed_not_rolled_back() {
        let (tmp, r) = installed(1000);
        std::fs::write(&r.exe, b"something else").unwrap();
        assert_eq!(decide(tmp.path(), 5000).unwrap(), AtStart::Nothing);
        let on_disk = record::load(tmp.path()).unwrap().unwrap();
        assert_eq!(on_disk.state, Phase::Failed);
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"something else");
        assert!(install::previous_path(&r.exe).exists(), "left alone");
    }

    #[test]
    fn a_rollback_without_a_previous_binary_fails_and_says_so() {
        let (tmp, r) = installed(1000);
        std::fs::remove_file(install::previous_path(&r.exe)).unwrap();
        assert!(roll_back(tmp.path(), r.clone(), "late", 1001).is_err());
        let on_disk = record::load(tmp.path()).unwrap().unwrap();
        assert_eq!(on_disk.state, Phase::Failed);
        assert!(on_disk.message.contains("could not be put back"));
        assert_eq!(std::fs::read(&r.exe).unwrap(), b"build B");
    }
}
