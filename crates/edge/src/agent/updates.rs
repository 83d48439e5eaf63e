//! The agent's part in updates: when the edge is busy (a session runs on
//! it), sending the updater's reports, and carrying out an install (the
//! agent owns the channel, the tunnels and the kernel path that stop then).

use super::{Agent, Channel, now, send};
use crate::update::Action;
use drawbridge_proto::SessionState;
use drawbridge_proto::channel::EdgeToServer;
use drawbridge_proto::update::UpdateReport;
use std::time::Duration;

impl Agent {
    /// A session is active or waiting for approval on this edge, or a tunnel
    /// still runs: no update now.
    pub(super) fn busy(&self) -> bool {
        let now = now();
        self.sessions.values().any(|r| {
            r.tunnel.is_some()
                || (matches!(
                    r.info.state,
                    SessionState::Active | SessionState::PendingApproval
                ) && now < r.info.valid_until)
        })
    }

    /// Sends update reports now (on the channel, not queued).
    pub(super) async fn report_updates(
        &mut self,
        ws: &mut Channel,
        reports: Vec<UpdateReport>,
    ) -> anyhow::Result<()> {
        for r in reports {
            send(ws, &EdgeToServer::Update(r.clone())).await?;
            self.update.sent(&r);
        }
        Ok(())
    }

    /// Moves an offered update on: reports, a download, an install.
    pub(super) async fn step_update(&mut self, ws: &mut Channel) -> anyhow::Result<()> {
        let busy = self.busy();
        for a in self.update.poll(busy) {
            match a {
                Action::Report(r) => self.report_updates(ws, vec![r]).await?,
                Action::Install(ready) => {
                    send(ws, &EdgeToServer::Update(self.update.installing(&ready))).await?;
                    match self.update.install(ready) {
                        Err(report) => self.report_updates(ws, vec![report]).await?,
                        Ok(rec) => {
                            self.save_status();
                            // The channel closes cleanly; no session runs, and the
                            // kernel path's table and interface go before the exec.
                            let _ =
                                tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                            self.sessions.clear();
                            let kernel = self.gateway.take().is_some();
                            let e = self.update.exec(&rec);
                            // Still here: the exec failed and the previous binary is back.
                            self.update.exec_failed(rec, e);
                            if kernel {
                                self.gateway = Some(crate::kernel::Gateway::start().await?);
                            }
                            anyhow::bail!("restarting into the new version failed");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
