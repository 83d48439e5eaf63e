//! `notify show|set|offline-minutes` (the account's e-mail recipients per event
//! kind and the offline threshold) and `user email` (a user's address).

use super::context::{Ctx, emit};
use super::data_args::NotifyCmd;
use crate::show::Fields;
use crate::table::Table;
use crate::{Result, fail};
use drawbridge_api_client::notify::NotificationsView;

/// Most addresses in one kind's list (the server's bound too).
const MAX_RECIPIENTS: usize = 50;

pub(super) async fn notify(ctx: &Ctx, cmd: NotifyCmd) -> Result<()> {
    let c = &ctx.client;
    let view = c.notification_settings().await?;
    let mut new = view.settings.clone();
    let what = match cmd {
        NotifyCmd::Show => return emit(ctx, &view, || show(&view)),
        NotifyCmd::Set {
            kind: Some(kind),
            emails,
            clear: None,
        } => {
            check_kind(&view, &kind)?;
            if emails.len() > MAX_RECIPIENTS {
                fail!(
                    "at most {MAX_RECIPIENTS} addresses per kind, not {}",
                    emails.len()
                );
            }
            let n = emails.len();
            new.recipients.insert(kind.clone(), emails);
            format!(
                "{kind} now goes to {n} address{} besides its default group.",
                if n == 1 { "" } else { "es" }
            )
        }
        NotifyCmd::Set {
            clear: Some(kind), ..
        } => {
            check_kind(&view, &kind)?;
            new.recipients.remove(&kind);
            format!("{kind} now goes to its default group only.")
        }
        NotifyCmd::Set { .. } => unreachable!("clap requires KIND EMAIL… or --clear KIND"),
        NotifyCmd::OfflineMinutes { minutes } => {
            new.device_offline_minutes = minutes;
            if minutes == 0 {
                "Offline devices are no longer reported.".to_string()
            } else {
                format!("A device offline longer than {minutes} minutes is reported once.")
            }
        }
    };
    let saved = c.put_notification_settings(&new).await?;
    emit(ctx, &saved, || {
        let mut text = format!("{what}\n");
        if !saved.email_configured {
            text.push_str(NO_SMTP);
            text.push('\n');
        }
        text
    })
}

const NO_SMTP: &str =
    "Note: this server has no SMTP server configured: it sends no e-mail, only webhooks.";

fn check_kind(view: &NotificationsView, kind: &str) -> Result<()> {
    if !view.kinds.iter().any(|k| k == kind) {
        fail!(
            "{kind:?} is no event kind; the kinds are {}",
            view.kinds.join(", ")
        );
    }
    Ok(())
}

fn show(v: &NotificationsView) -> String {
    let mut f = Fields::new();
    f.add(
        "E-mail",
        if v.email_configured {
            "sent (the server has an SMTP server)"
        } else {
            "not sent: the server has no SMTP server (webhooks only)"
        },
    )
    .add(
        "Offline devices",
        match v.settings.device_offline_minutes {
            0 => "not reported".to_string(),
            m => format!("reported after {m} minutes"),
        },
    );
    let mut t = Table::new(["KIND", "ALSO TO"]);
    for kind in &v.kinds {
        let list = v
            .settings
            .recipients
            .get(kind)
            .filter(|l| !l.is_empty())
            .map_or("-".to_string(), |l| l.join(", "));
        t.row([kind.clone(), list]);
    }
    format!(
        "{}\n{}\nBesides these lists, admins get user_lockout, activity_report and webhook_disabled,\n\
         admins and session admins approval_waiting (those with an address: `drawbridge user email`).\n",
        f.render(),
        t.render()
    )
}

/// `user email USER [EMAIL|--clear]`.
pub(super) async fn user_email(
    ctx: &Ctx,
    user: &str,
    email: Option<String>,
    clear: bool,
) -> Result<()> {
    let id = ctx.user_id(user).await?;
    let c = &ctx.client;
    if email.is_none() && !clear {
        let e = c.user_email(&id).await?;
        return emit(ctx, &e, || match &e.email {
            Some(a) => format!("{a}\n"),
            None => format!("{user} has no e-mail address.\n"),
        });
    }
    let e = c.put_user_email(&id, email.as_deref()).await?;
    emit(ctx, &e, || match &e.email {
        Some(a) => format!("{user}'s e-mail address is now {a}.\n"),
        None => format!("{user} has no e-mail address now.\n"),
    })
}
