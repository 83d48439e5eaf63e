//! On-site approval from the command line. `drawbridge-edge approve --wait`
//! blocks until a session asks this edge for its approval (as the running
//! agent's status shows it), then approves it; the agent sends the decision.
//! The site decides for this device only: other devices of the same session
//! are decided at their own sites.

use crate::local::{SessionStatus, StateDir};
use std::time::Duration;
use tokio::time::Instant;

/// Sessions waiting for this edge's approval in the agent's last status; only
/// `session` (by id or name) when given.
pub fn pending(dir: &StateDir, session: Option<&str>) -> Vec<SessionStatus> {
    let Ok(status) = dir.status() else {
        return Vec::new();
    };
    status
        .sessions
        .into_iter()
        .filter(|x| x.state == "pending_approval")
        .filter(|x| session.is_none_or(|s| x.session_id == s || x.name == s))
        .collect()
}

/// Waits until a session (or the named one) asks for approval and approves it.
/// None when `timeout` passed first. Several sessions asking at once, with
/// none named, is an error: the site names the one it consents to.
pub async fn approve_when_asked(
    dir: &StateDir,
    session: Option<&str>,
    timeout: Option<Duration>,
    poll: Duration,
) -> anyhow::Result<Option<SessionStatus>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match pending(dir, session).as_slice() {
            [one] => {
                dir.decide(&one.session_id, true)?;
                return Ok(Some(one.clone()));
            }
            [] => {}
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.session_id))
                    .collect();
                anyhow::bail!(
                    "{} sessions wait for approval: {}; name the one to approve: drawbridge-edge approve --wait SESSION",
                    many.len(),
                    list.join(", ")
                );
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

/// After a decision was recorded: waits (at most `limit`) until the agent's
/// status no longer shows the session waiting. False when it still does.
pub async fn settled(dir: &StateDir, session_id: &str, limit: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pending(dir, Some(session_id)).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Status;

    fn status(dir: &StateDir, sessions: &[(&str, &str)]) {
        dir.create().unwrap();
        let s = Status {
            device_id: "d".into(),
            connected: true,
            sessions: sessions
                .iter()
                .map(|(id, state)| SessionStatus {
                    session_id: id.to_string(),
                    name: format!("name-{id}"),
                    state: state.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        dir.save_status(&s).unwrap();
    }

    const POLL: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn waiting_approves_the_session_that_asks_once_it_asks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        status(&dir, &[("s-1", "running")]);
        let writer = {
            let dir = dir.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                status(&dir, &[("s-1", "running"), ("s-2", "pending_approval")]);
            })
        };
        let got = approve_when_asked(&dir, None, Some(Duration::from_secs(5)), POLL)
            .await
            .unwrap()
            .expect("a session asked");
        writer.await.unwrap();
        assert_eq!(got.session_id, "s-2");
        assert_eq!(dir.take_decisions(), vec![("s-2".to_string(), true)]);
    }

    #[tokio::test]
    async fn waiting_gives_up_at_the_timeout_and_decides_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        status(&dir, &[("s-1", "pending_approval")]);
        let got = approve_when_asked(&dir, Some("s-9"), Some(Duration::from_millis(50)), POLL)
            .await
            .unwrap();
        assert!(got.is_none(), "another session than the one named");
        assert!(dir.take_decisions().is_empty());
    }

    #[tokio::test]
    async fn with_several_asking_the_site_must_name_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        status(
            &dir,
            &[("s-1", "pending_approval"), ("s-2", "pending_approval")],
        );
        let err = approve_when_asked(&dir, None, None, POLL)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("name the one"), "{err}");
        assert!(dir.take_decisions().is_empty());
        let got = approve_when_asked(&dir, Some("name-s-2"), None, POLL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.session_id, "s-2");
    }
}
