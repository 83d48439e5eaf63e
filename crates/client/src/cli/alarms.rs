//! `alarm list|history|ack`.

use super::context::{Ctx, emit, print_json, print_table};
use super::data::ms_text;
use super::data_args::AlarmCmd;
use crate::table::Table;
use crate::{Error, Result};
use drawbridge_proto::ErrorCode;
use drawbridge_proto::mailbox::{Alarm, AlarmState};

pub(super) async fn alarm(ctx: &Ctx, cmd: AlarmCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        AlarmCmd::List { all, device } => {
            let list = match device {
                Some(d) => c.device_alarms(&ctx.device_id(&d).await?, all).await?,
                None => c.alarms(all).await?,
            };
            if ctx.json {
                return print_json(&list);
            }
            let mut t = Table::new([
                "ID", "DEVICE", "TAG", "STATE", "RAISED", "VALUE", "RETURNED", "ACKED BY",
                "COMMENT",
            ]);
            for a in &list {
                t.row([
                    a.id.clone(),
                    a.device.clone(),
                    a.tag.clone(),
                    a.state.as_str().to_string(),
                    ms_text(a.raised_ms),
                    num(a.raised_value),
                    a.returned_ms.map_or("-".into(), ms_text),
                    a.acked_by.clone().unwrap_or_else(|| "-".into()),
                    a.ack_comment.clone().unwrap_or_default(),
                ]);
            }
            print_table(
                &t,
                if all {
                    "No alarms."
                } else {
                    "No open alarms (--all shows ended ones too)."
                },
            )
        }
        AlarmCmd::History { device } => {
            let d = ctx.device(&device).await?;
            let events = c.alarm_history(&d.id).await?;
            if ctx.json {
                return print_json(&events);
            }
            let mut t = Table::new(["TIME", "TAG", "EVENT", "VALUE", "USER", "COMMENT", "ALARM"]);
            for e in &events {
                t.row([
                    ms_text(e.time_ms),
                    e.tag.clone(),
                    e.event.clone(),
                    num(e.value),
                    e.user.clone().unwrap_or_else(|| "-".into()),
                    e.comment.clone().unwrap_or_default(),
                    e.alarm_id.clone(),
                ]);
            }
            print_table(&t, &format!("No alarm history for {}.", d.name))
        }
        AlarmCmd::Ack { id, comment } => {
            let a = c
                .ack_alarm(&id, &comment)
                .await
                .map_err(|e| match e.code() {
                    Some(ErrorCode::NotFound) => {
                        Error::user(format!("no alarm {id:?} (see `drawbridge alarm list`)"))
                    }
                    _ => e.into(),
                })?;
            emit(ctx, &a, || {
                format!(
                    "Acknowledged the alarm of {} on {}: {}.\n",
                    a.tag,
                    a.device,
                    state_words(&a)
                )
            })
        }
    }
}

fn state_words(a: &Alarm) -> &'static str {
    match a.state {
        AlarmState::Acknowledged => "the condition still holds",
        AlarmState::Ended => "it had returned to normal and is now ended",
        AlarmState::Alarm => "it is still in alarm",
        AlarmState::Returned => "it has returned to normal",
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
