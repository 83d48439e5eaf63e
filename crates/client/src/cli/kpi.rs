//! `kpi DEVICE [--watch]`: a device's live KPI values, read once or followed
//! through the server-sent-event stream until Ctrl-C (or SIGTERM). A stream
//! that breaks or stays silent (the server sends a keep-alive every 15 s) is
//! opened again with backoff; values already printed are not printed again.

use super::context::{Ctx, out, print_json, print_table};
use super::data::ms_text;
use crate::table::Table;
use crate::{Error, Result};
use drawbridge_api_client::data::KpiUpdate;
use drawbridge_proto::mailbox::Kpi;
use std::collections::HashMap;
use std::time::Duration;

/// Silence after which the stream is taken for dead and opened again.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// Waits between reconnection attempts: doubling from 1 s up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) async fn kpi(ctx: &Ctx, device: &str, watch: bool) -> Result<()> {
    let d = ctx.device(device).await?;
    if watch {
        let stop = drawbridge_tunnel::shutdown_signal();
        tokio::select! {
            r = follow(ctx, &d.id, d.name.as_str()) => r,
            () = stop => Ok(()),
        }
    } else {
        let all = ctx.client.kpis(&d.id).await?;
        if ctx.json {
            return print_json(&all);
        }
        let mut t = Table::new(["TAG", "VALUE", "QUALITY", "TIME", "DESCRIPTION"]);
        for k in &all {
            t.row([
                k.tag.clone(),
                value_text(k),
                k.quality.map_or("-".into(), |q| q.code()),
                k.time_ms.map_or("-".into(), ms_text),
                k.description.clone(),
            ]);
        }
        print_table(&t, &format!("Device {} has no KPI tags.", d.name))
    }
}

/// Prints each value as it changes, one line (or one JSON object) per value.
async fn follow(ctx: &Ctx, id: &str, name: &str) -> Result<()> {
    let mut printed: HashMap<String, Option<i64>> = HashMap::new();
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        let mut stream = match ctx.client.kpi_stream(Some(id)).await {
            Ok(s) => s,
            // A refusal (no such device, no right, not logged in) is final;
            // so is anything going wrong before the stream ever opened.
            Err(e) if first || e.code().is_some() => return Err(e.into()),
            Err(e) => {
                eprintln!("reconnecting in {}s: {e}", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if first {
            eprintln!("Watching the KPIs of {name}; Ctrl-C ends.");
        }
        first = false;
        let why = loop {
            match tokio::time::timeout(STREAM_IDLE, stream.next()).await {
                Err(_) => break format!("nothing heard for {}s", STREAM_IDLE.as_secs()),
                Ok(Err(e)) => break e.to_string(),
                Ok(Ok(None)) => break "the server closed the stream".to_string(),
                Ok(Ok(Some(KpiUpdate::End(reason)))) => {
                    return Err(Error::user(format!(
                        "the server ended the stream: {}",
                        clean(&reason)
                    )));
                }
                Ok(Ok(Some(KpiUpdate::Value(k)))) => {
                    backoff = Duration::from_secs(1);
                    // After a reconnection the server sends every value again.
                    if printed.get(&k.tag) == Some(&k.time_ms) {
                        continue;
                    }
                    printed.insert(k.tag.clone(), k.time_ms);
                    print_update(ctx, &k)?;
                }
            }
        };
        eprintln!("reconnecting in {}s: {why}", backoff.as_secs());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn print_update(ctx: &Ctx, k: &Kpi) -> Result<()> {
    if ctx.json {
        return out(&format!(
            "{}\n",
            serde_json::to_string(k).expect("KPIs serialise")
        ));
    }
    out(&format!(
        "{}  {}  {}  {}\n",
        k.time_ms.map_or("-".into(), ms_text),
        clean(&k.tag),
        value_text(k),
        k.quality.map_or("-".into(), |q| q.code()),
    ))
}

fn value_text(k: &Kpi) -> String {
    match k.value {
        Some(v) if k.unit.is_empty() => v.to_string(),
        Some(v) => format!("{v} {}", clean(&k.unit)),
        None => "-".into(),
    }
}

/// The server's texts never move the terminal: control characters become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
