//! `sessions` and `session …`.

use super::args::SessionCmd;
use super::context::{Ctx, emit, name, name_of, out, print_json, print_table};
use crate::Result;
use crate::show::{self, Fields};
use crate::table::Table;
use drawbridge_proto::SessionState;
use drawbridge_proto::api::*;
use time::OffsetDateTime;

pub(super) async fn sessions(ctx: &Ctx, state: Option<SessionState>) -> Result<()> {
    let all = ctx.client.sessions(state).await?;
    if ctx.json {
        return print_json(&all);
    }
    let devices = ctx.device_names().await;
    let users = ctx.user_names().await;
    let mut t = Table::new(["NAME", "ID", "STATE", "DEVICES", "USERS", "VALID UNTIL"]);
    for s in &all {
        t.row([
            s.name.to_string(),
            s.id.clone(),
            s.state.as_str().to_string(),
            s.devices
                .iter()
                .map(|d| name_of(&devices, &d.device_id))
                .collect::<Vec<_>>()
                .join(","),
            s.users
                .iter()
                .map(|u| name_of(&users, u))
                .collect::<Vec<_>>()
                .join(","),
            show::time(&s.valid_until),
        ]);
    }
    print_table(&t, "No sessions.")
}

async fn session_fields(ctx: &Ctx, s: &Session) -> String {
    let devices = ctx.device_names().await;
    let users = ctx.user_names().await;
    let actor = |a: &str| match a.strip_prefix("user:") {
        Some(id) => name_of(&users, id),
        None => a.to_string(),
    };
    let mut f = Fields::new();
    f.add("Name", s.name.as_str())
        .add("ID", &s.id)
        .add("State", s.state.as_str())
        .add("Ad hoc", show::yes_no(s.adhoc))
        .add(
            "Valid",
            format!(
                "{} to {}",
                show::time(&s.valid_from),
                show::time(&s.valid_until)
            ),
        )
        .lines(
            "Devices",
            s.devices.iter().map(|d| {
                let approval = s
                    .approvals
                    .iter()
                    .find(|a| a.device_id == d.device_id)
                    .filter(|a| a.state != drawbridge_proto::ApprovalState::Approved)
                    .map(|a| format!(" [{}]", a.state.as_str().replace('_', " ")))
                    .unwrap_or_default();
                format!(
                    "{}: {}{approval}",
                    name_of(&devices, &d.device_id),
                    show::targets(&d.targets)
                )
            }),
        )
        .lines("Users", s.users.iter().map(|u| name_of(&users, u)))
        .add(
            "Created",
            format!("{} by {}", show::time(&s.created_at), actor(&s.created_by)),
        );
    if let Some(t) = &s.started_at {
        f.add(
            "Started",
            format!(
                "{} by {}",
                show::time(t),
                actor(s.started_by.as_deref().unwrap_or("-"))
            ),
        );
    }
    if let Some(t) = &s.ended_at {
        f.add(
            "Ended",
            format!(
                "{} by {} ({})",
                show::time(t),
                actor(s.ended_by.as_deref().unwrap_or("-")),
                s.end_reason.map(|r| r.as_str()).unwrap_or("-")
            ),
        );
    }
    f.render()
}

/// `session approve|refuse`: an approver's decision on devices waiting for approval.
async fn decide(ctx: &Ctx, session: &str, device: Option<String>, approve: bool) -> Result<()> {
    let id = ctx.session_id(session).await?;
    let device_id = match device {
        Some(d) => Some(ctx.device_id(&d).await?),
        None => None,
    };
    let req = drawbridge_proto::api::Decision { approve, device_id };
    let s = ctx.client.decide_session(&id, &req).await?;
    let waiting = s
        .approvals
        .iter()
        .filter(|a| a.state == drawbridge_proto::ApprovalState::Pending)
        .count();
    emit(ctx, &s, || {
        format!(
            "{} for session {} ({}); it is {}{}.\n",
            if approve { "Approved" } else { "Refused" },
            s.name,
            s.id,
            s.state.as_str(),
            if waiting > 0 {
                format!(", {waiting} device(s) still waiting")
            } else {
                String::new()
            }
        )
    })
}

pub(super) async fn session(ctx: &Ctx, cmd: SessionCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        SessionCmd::List { .. } => unreachable!("dispatched to sessions()"),
        SessionCmd::Show { session } => {
            let s = c.session(&ctx.session_id(&session).await?).await?;
            if ctx.json {
                return print_json(&s);
            }
            out(&session_fields(ctx, &s).await)
        }
        SessionCmd::Prepare {
            name: n,
            devices,
            users,
            from,
            until,
            duration,
        } => {
            let name = name(&n, "session name")?;
            let devices = ctx.session_devices(&devices).await?;
            let mut user_ids = Vec::new();
            for u in &users {
                user_ids.push(ctx.user_id(u).await?);
            }
            let valid_until = match (until, duration) {
                (Some(u), _) => Some(u),
                (None, Some(d)) => Some(from.unwrap_or_else(OffsetDateTime::now_utc) + d),
                (None, None) => None,
            };
            let req = PrepareSession {
                name,
                devices,
                users: user_ids,
                valid_from: from,
                valid_until,
            };
            let s = c.prepare_session(&req).await?;
            emit(ctx, &s, || {
                format!(
                    "Prepared session {} ({}), valid {} to {}.\n",
                    s.name,
                    s.id,
                    show::time(&s.valid_from),
                    show::time(&s.valid_until)
                )
            })
        }
        SessionCmd::Start { session } => {
            let s = c.start_session(&ctx.session_id(&session).await?).await?;
            emit(ctx, &s, || match s.state {
                SessionState::PendingApproval => format!(
                    "Session {} ({}) waits for approval on site.\n",
                    s.name, s.id
                ),
                _ => format!(
                    "Session {} ({}) is {}, until {}.\n",
                    s.name,
                    s.id,
                    s.state.as_str(),
                    show::time(&s.valid_until)
                ),
            })
        }
        SessionCmd::End { session } => {
            let s = c.end_session(&ctx.session_id(&session).await?).await?;
            emit(ctx, &s, || {
                format!("Session {} ({}) ended.\n", s.name, s.id)
            })
        }
        SessionCmd::Approve { session, device } => decide(ctx, &session, device, true).await,
        SessionCmd::Refuse { session, device } => decide(ctx, &session, device, false).await,
        SessionCmd::AddDevice { session, device } => {
            let id = ctx.session_id(&session).await?;
            let mut d = ctx.session_devices(std::slice::from_ref(&device)).await?;
            let s = c.add_session_device(&id, &d.remove(0)).await?;
            emit(ctx, &s, || {
                format!("Added the device to session {} ({}).\n", s.name, s.id)
            })
        }
        SessionCmd::ExportWireguard { session, output } => {
            crate::wgexport::run(ctx, &session, output.as_deref()).await
        }
        SessionCmd::Adhoc { device, target } => {
            let id = ctx.device_id(&device).await?;
            let req = AdhocSession {
                device_id: id,
                targets: (!target.is_empty()).then_some(target),
            };
            let s = c.adhoc_session(&req).await?;
            emit(ctx, &s, || {
                format!(
                    "Session {} ({}) is {}, until {}.\n",
                    s.name,
                    s.id,
                    s.state.as_str(),
                    show::time(&s.valid_until)
                )
            })
        }
    }
}
