//! `data status|get|delete` (the historian of one device, the mailbox's delete);
//! `data sync` lives in [`super::sync`].

use super::context::{Ctx, emit, out, print_json};
use super::data_args::DataCmd;
use crate::show::{self, Fields};
use crate::table::Table;
use crate::{Result, fail};
use drawbridge_proto::mailbox::{DataPoint, MAX_PAGE};
use time::OffsetDateTime;

pub(super) async fn data(ctx: &Ctx, cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Status { device } => status(ctx, &device).await,
        DataCmd::Get {
            device,
            tag,
            from,
            to,
            limit,
            csv,
        } => {
            if csv && ctx.json {
                fail!("--csv and --json: choose one");
            }
            let format = if csv {
                Format::Csv
            } else if ctx.json {
                Format::Json
            } else {
                Format::Table
            };
            get(ctx, &device, &tag, from, to, limit, format).await
        }
        DataCmd::Sync {
            cursor_file,
            after,
            out,
            page_size,
        } => {
            super::sync::sync(
                ctx,
                super::sync::SyncArgs {
                    cursor_file,
                    after,
                    out,
                    page_size: page_size.unwrap_or(MAX_PAGE),
                },
            )
            .await
        }
        DataCmd::Delete { up_to } => {
            let d = ctx.client.data_delete(&up_to).await?;
            emit(ctx, &d, || {
                format!(
                    "Deleted {} point{} up to {up_to}.\n",
                    d.deleted,
                    if d.deleted == 1 { "" } else { "s" }
                )
            })
        }
    }
}

async fn status(ctx: &Ctx, device: &str) -> Result<()> {
    let d = ctx.device(device).await?;
    let s = ctx.client.data_status(&d.id).await?;
    if ctx.json {
        return print_json(&s);
    }
    let mut f = Fields::new();
    f.add("Device", d.name.as_str())
        .add("Points", s.points.to_string())
        .add("First", opt_ms(s.first_ms))
        .add("Last", opt_ms(s.last_ms))
        .add(
            "Edge buffer",
            format!(
                "{} waiting to be stored, {} dropped (buffer full)",
                s.edge_pending, s.edge_dropped
            ),
        );
    let mut text = f.render();
    if !s.tags.is_empty() {
        let mut t = Table::new(["TAG", "POINTS", "FIRST", "LAST"]);
        for tag in &s.tags {
            t.row([
                tag.tag.clone(),
                tag.points.to_string(),
                opt_ms(tag.first_ms),
                opt_ms(tag.last_ms),
            ]);
        }
        text.push('\n');
        text.push_str(&t.render());
    }
    out(&text)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Csv,
    Json,
}

/// Every point of the range (or the first `limit`), page by page, written as
/// each page arrives: a table, CSV, or one JSON array.
async fn get(
    ctx: &Ctx,
    device: &str,
    tag: &str,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    limit: Option<u64>,
    format: Format,
) -> Result<()> {
    let d = ctx.device(device).await?;
    let to_ms = to.map(unix_ms);
    let mut from_ms = from.map(unix_ms);
    let mut last: Option<(i64, i64)> = None; // (time_ms, txid) of the last point written
    let mut written: u64 = 0;
    let mut table = Table::new(["TIME", "VALUE", "QUALITY"]);
    match format {
        Format::Csv => out("time,tag,value,quality\n")?,
        Format::Json => out("[")?,
        Format::Table => {}
    }
    loop {
        let want = limit.map_or(u64::from(MAX_PAGE), |l| {
            (l - written).min(u64::from(MAX_PAGE))
        });
        // Each page starts at the millisecond of the last point written (more
        // points may share it): ask for a few more to get past those.
        let ask = MAX_PAGE.min(want as u32 + 64);
        let page = ctx
            .client
            .data_range(&d.id, tag, from_ms, to_ms, ask)
            .await?;
        let full = page.len() as u32 == ask;
        let fresh: Vec<&DataPoint> = page
            .iter()
            .filter(|p| last.is_none_or(|l| (p.time_ms, p.txid) > l))
            .take(want as usize)
            .collect();
        if fresh.is_empty() && full {
            fail!(
                "more points than one request holds share one millisecond; use `drawbridge data sync`"
            );
        }
        let mut text = String::new();
        for p in &fresh {
            match format {
                Format::Table => {
                    table.row([
                        ms_text(p.time_ms),
                        p.value.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        p.quality.code(),
                    ]);
                }
                Format::Csv => text.push_str(&csv_line(p)),
                Format::Json => {
                    if written > 0 || !text.is_empty() {
                        text.push(',');
                    }
                    text.push('\n');
                    text.push_str(&serde_json::to_string(p).expect("points serialise"));
                }
            }
        }
        written += fresh.len() as u64;
        if let Some(p) = fresh.last() {
            last = Some((p.time_ms, p.txid));
            from_ms = Some(p.time_ms);
        }
        if !text.is_empty() {
            out(&text)?;
        }
        if !full || limit.is_some_and(|l| written >= l) {
            break;
        }
    }
    match format {
        Format::Json => out(if written > 0 { "\n]\n" } else { "]\n" }),
        Format::Csv => Ok(()),
        Format::Table if table.is_empty() => {
            eprintln!("No points of {tag} on {} in that range.", d.name);
            Ok(())
        }
        Format::Table => out(&table.render()),
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2027-01-15T08:00:00.000Z`.
pub(super) fn ms_text(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn opt_ms(ms: Option<i64>) -> String {
    ms.map(|m| show::time(&ms_time(m)))
        .unwrap_or_else(|| "-".into())
}

fn ms_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// One CSV row. Tag names hold only `A-Z a-z 0-9 . _ -`, so no quoting is
/// needed; one that starts like a formula (`-2-3`) gets a leading `'` so a
/// spreadsheet shows it as text. Values are numbers written here and stay numbers.
fn csv_line(p: &DataPoint) -> String {
    format!(
        "{},{},{},{}\n",
        ms_text(p.time_ms),
        csv_text(p.tag.as_str()),
        p.value.map(|v| v.to_string()).unwrap_or_default(),
        csv_text(&p.quality.code())
    )
}

fn csv_text(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::TagName;
    use drawbridge_proto::data::Quality;

    #[test]
    fn csv_rows_keep_numbers_and_defuse_formulas() {
        let p = |tag: &str, value| DataPoint {
            txid: 1,
            device_id: "d".into(),
            device: "press".into(),
            tag: TagName::try_from(tag).unwrap(),
            time_ms: 1_800_000_000_123,
            value,
            quality: Quality::Good,
        };
        assert_eq!(
            csv_line(&p("temp", Some(-2.5))),
            "2027-01-15T08:00:00.123Z,temp,-2.5,good\n"
        );
        assert_eq!(
            csv_line(&p("-2-3", None)),
            "2027-01-15T08:00:00.123Z,'-2-3,,good\n"
        );
        assert_eq!(csv_text("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
