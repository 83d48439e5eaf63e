//! The outbox worker every replica runs: claims due deliveries (with a lease),
//! sends them, records the outcome; runs the periodic sweeps (devices offline,
//! monthly reports) and the housekeeping.

use super::queue::{self, Channel, Claimed};
use super::runtime::Active;
use crate::state::AppState;
use futures_util::StreamExt;
use std::time::Duration;

/// How often the worker looks for due deliveries.
pub const POLL: Duration = Duration::from_secs(2);
/// Deliveries sent at once.
pub const CONCURRENCY: usize = 8;
// A claimed batch is sent well within its lease, even when every call takes its
// whole time (else another replica could claim the rest of it meanwhile).
const _: () = assert!(
    (queue::CLAIM_BATCH as u64).div_ceil(CONCURRENCY as u64) * super::mail::TIMEOUT.as_secs()
        < queue::LEASE_SECS as u64
);
const _: () = assert!(super::webhook::TIMEOUT.as_secs() <= super::mail::TIMEOUT.as_secs());

/// Sweeps run this often (seconds of the server's clock)…
pub const SWEEP_EVERY_SECS: i64 = 30;
/// …and housekeeping this often.
pub const PURGE_EVERY_SECS: i64 = 3600;

/// Starts the worker for `state` (call once per process).
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut swept, mut purged) = (i64::MIN, i64::MIN);
        let mut failing = false;
        loop {
            tick.tick().await;
            let now = state.now();
            let mut ok = true;
            if now.saturating_sub(swept) >= SWEEP_EVERY_SECS {
                swept = now;
                if let Err(e) = super::sweeps::run(&state).await {
                    ok = false;
                    log_failure(&mut failing, "outbox sweep", &e);
                }
            }
            if now.saturating_sub(purged) >= PURGE_EVERY_SECS {
                purged = now;
                if let Err(e) = queue::purge(&state.store, now).await {
                    ok = false;
                    log_failure(&mut failing, "outbox housekeeping", &e.into());
                }
            }
            // Keep going while a full batch came back.
            loop {
                match deliver_due(&state).await {
                    Ok(n) if n as i64 >= queue::CLAIM_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        ok = false;
                        log_failure(&mut failing, "outbox delivery", &e);
                        break;
                    }
                }
            }
            if ok && failing {
                failing = false;
                tracing::info!("outbox works again");
            }
        }
    });
}

/// Logs a failure once per outage (a database outage would repeat it every poll).
fn log_failure(failing: &mut bool, what: &str, e: &anyhow::Error) {
    if !*failing {
        *failing = true;
        tracing::warn!(error = %format!("{e:#}"), "{what} failed");
    }
}

/// One round: claims the due deliveries this replica can send and sends them.
/// Returns how many it claimed.
pub async fn deliver_due(state: &AppState) -> anyhow::Result<usize> {
    let active = state.notify.get();
    let channels: &[Channel] = if active.mailer.is_some() {
        &[Channel::Webhook, Channel::Email]
    } else {
        &[Channel::Webhook]
    };
    let claimed = queue::claim(
        &state.store,
        &state.notify.owner,
        channels,
        state.now(),
        queue::CLAIM_BATCH,
    )
    .await?;
    let n = claimed.len();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(claimed)
        .map(|d| deliver(state, &active, d))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(n)
}

/// Sends one claimed delivery and records what happened.
async fn deliver(state: &AppState, active: &Active, d: Claimed) -> anyhow::Result<()> {
    let store = &state.store;
    let owner = &state.notify.owner;
    match d.channel {
        Channel::Email => {
            let Some(mailer) = &active.mailer else {
                return Ok(());
            };
            match mailer.send(&d.target, &d.event, &d.id).await {
                Ok(()) => {
                    metrics::counter!("outbox_sent_total", "channel" => "email").increment(1);
                    queue::mark_sent(store, &d.id, state.now()).await?;
                }
                Err(e) => {
                    metrics::counter!("outbox_failures_total", "channel" => "email").increment(1);
                    let now = state.now();
                    let give_up = e.permanent || now - d.created_at >= queue::EMAIL_GIVE_UP_SECS;
                    tracing::info!(delivery = %d.id, attempts = d.attempts, give_up, error = %e.message, "e-mail not sent");
                    queue::mark_failed(store, &d, owner, now, &e.message, give_up).await?;
                }
            }
        }
        Channel::Webhook => {
            let Some((url, secret)) = super::webhooks::for_send(store, &d.target).await? else {
                // Disabled or deleted meanwhile.
                let mut tx = store.begin().await?;
                queue::drop_webhook_deliveries(
                    &mut tx,
                    &d.target,
                    "the webhook is disabled or gone",
                )
                .await?;
                tx.commit().await?;
                return Ok(());
            };
            let body = super::webhook::payload(&d.event);
            let r = active
                .webhooks
                .send(&url, &secret, &d.event.id, state.now(), body)
                .await;
            let now = state.now();
            match r {
                Ok(()) => {
                    metrics::counter!("outbox_sent_total", "channel" => "webhook").increment(1);
                    queue::mark_sent(store, &d.id, now).await?;
                    super::webhooks::record_success(store, &d.target, now).await?;
                }
                Err(e) => {
                    metrics::counter!("outbox_failures_total", "channel" => "webhook").increment(1);
                    tracing::info!(delivery = %d.id, webhook = %d.target, attempts = d.attempts, error = %e, "webhook not delivered");
                    // A call one endpoint keeps refusing while others go through (so
                    // the webhook is never disabled) is given up a day after that.
                    let give_up =
                        now - d.created_at >= (i64::from(active.failure_days) + 1) * 24 * 3600;
                    queue::mark_failed(store, &d, owner, now, &e, give_up).await?;
                    if super::webhooks::record_failure(
                        store,
                        &d.target,
                        now,
                        &e,
                        active.failure_days,
                    )
                    .await?
                    {
                        tracing::warn!(webhook = %d.target, "webhook disabled after failing for {} days", active.failure_days);
                    }
                }
            }
        }
    }
    Ok(())
}
