//! `webhook list|create|update|delete` (admins). A webhook is named by its id
//! or its URL; its signing secret is printed once, when it is created.

use super::context::{Ctx, done, emit, pick, print_json, print_table};
use super::data_args::WebhookCmd;
use crate::show;
use crate::table::Table;
use crate::{Result, fail};
use drawbridge_api_client::notify::{CreateWebhook, UpdateWebhook, Webhook};

pub(super) async fn webhook(ctx: &Ctx, cmd: WebhookCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        WebhookCmd::List => {
            let all = c.webhooks().await?;
            if ctx.json {
                return print_json(&all);
            }
            let mut t = Table::new(["ID", "URL", "EVENTS", "STATE", "LAST SUCCESS"]);
            for w in &all {
                t.row([
                    w.id.clone(),
                    w.url.clone(),
                    w.events.join(","),
                    state(w),
                    show::opt_time(&w.last_success_at),
                ]);
            }
            print_table(&t, "No webhooks.")
        }
        WebhookCmd::Create { url, events } => {
            let events = kinds(ctx, events).await?;
            let w = c.create_webhook(&CreateWebhook { url, events }).await?;
            emit(ctx, &w, || {
                format!(
                    "Created webhook {} for {} ({}).\n\
                     Signing secret (Standard Webhooks; it is not shown again, keep it with the receiver):\n  {}\n",
                    w.webhook.id,
                    w.webhook.url,
                    w.webhook.events.join(", "),
                    w.secret
                )
            })
        }
        WebhookCmd::Update {
            webhook,
            url,
            events,
            enable,
            disable,
        } => {
            let w = find(ctx, &webhook).await?;
            let events = match events {
                Some(e) => Some(kinds(ctx, e).await?),
                None => None,
            };
            let req = UpdateWebhook {
                url,
                events,
                enabled: if enable {
                    Some(true)
                } else if disable {
                    Some(false)
                } else {
                    None
                },
            };
            if req.url.is_none() && req.events.is_none() && req.enabled.is_none() {
                fail!("nothing to change: give --url, --events, --enable or --disable");
            }
            let w = c.update_webhook(&w.id, &req).await?;
            emit(ctx, &w, || {
                format!(
                    "Webhook {}: {} for {}, {}.\n",
                    w.id,
                    w.url,
                    w.events.join(", "),
                    state(&w)
                )
            })
        }
        WebhookCmd::Delete { webhook } => {
            let w = find(ctx, &webhook).await?;
            c.delete_webhook(&w.id).await?;
            done(
                ctx,
                &format!(
                    "Deleted webhook {} ({}); what was queued for it is dropped.",
                    w.id, w.url
                ),
            )
        }
    }
}

async fn find(ctx: &Ctx, input: &str) -> Result<Webhook> {
    let all = ctx.client.webhooks().await?;
    Ok(pick(
        &all,
        input,
        "webhook",
        "webhook list",
        |w| &w.id,
        |w| &w.url,
    )?
    .clone())
}

/// The kinds, each checked against the server's list (so a typo gets the list, not a parse error).
async fn kinds(ctx: &Ctx, events: Vec<String>) -> Result<Vec<String>> {
    let events: Vec<String> = events
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if events.is_empty() {
        fail!("--events: name at least one event kind");
    }
    let known = ctx.client.notification_settings().await?.kinds;
    if let Some(bad) = events.iter().find(|e| !known.contains(e)) {
        fail!(
            "{bad:?} is no event kind; the kinds are {}",
            known.join(", ")
        );
    }
    Ok(events)
}

fn state(w: &Webhook) -> String {
    if !w.enabled {
        return match &w.disabled_reason {
            Some(r) => format!("disabled ({r})"),
            None => "disabled".into(),
        };
    }
    match (&w.failing_since, &w.last_error) {
        (Some(t), Some(e)) => format!("failing since {}: {e}", show::time(t)),
        (Some(t), None) => format!("failing since {}", show::time(t)),
        _ => "enabled".into(),
    }
}
