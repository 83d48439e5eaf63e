//! CSV/JSON export of one tag's historian points in a time range, as a
//! download. The range comes from `datetime-local` fields read as UTC; the
//! points are fetched from the API page by page (oldest first) up to
//! [`MAX_EXPORT`]; a range holding more is refused with a message rather
//! than cut short.
//!
//! CSV (`time,tag,value,quality`): text cells that a spreadsheet would run as
//! a formula (starting with `=`, `+`, `-`, `@`, tab or carriage return) get a
//! leading `'`; values are numbers the portal writes itself and stay numbers
//! (a negative reading is not a formula).

use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Flash, Viewer, download};
use axum::extract::{Path, Query};
use axum::response::Response;
use drawbridge_proto::api::Device;
use drawbridge_proto::mailbox::{DataPoint, MAX_PAGE};
use serde_json::{Value, json};

/// Most points one export holds.
pub const MAX_EXPORT: usize = 100_000;

#[derive(serde::Deserialize, Default)]
pub struct ExportQuery {
    #[serde(default)]
    tag: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    format: String,
}

/// A `datetime-local` value (`2026-12-06T10:30`, seconds optional) read as
/// UTC, in Unix milliseconds; None when empty.
pub fn local_ms(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let fmt_s = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let fmt_f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
    );
    let t = time::PrimitiveDateTime::parse(s, fmt)
        .or_else(|_| time::PrimitiveDateTime::parse(s, fmt_s))
        .or_else(|_| time::PrimitiveDateTime::parse(s, fmt_f))
        .map_err(|_| format!("{s:?} is not a date and time"))?;
    let ms = t.assume_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms)
        .map(Some)
        .map_err(|_| format!("{s:?} is out of range"))
}

/// `2027-01-15T08:00:00.123Z`.
pub fn iso_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

/// One CSV text cell: neutralised against formulas, quoted when needed.
pub fn csv_cell(s: &str) -> String {
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

/// The CSV of `points` (with its header row).
pub fn csv(points: &[DataPoint]) -> String {
    let mut out = String::with_capacity(40 * (points.len() + 1));
    out.push_str("time,tag,value,quality\r\n");
    for p in points {
        out.push_str(&iso_ms(p.time_ms));
        out.push(',');
        out.push_str(&csv_cell(p.tag.as_str()));
        out.push(',');
        if let Some(v) = p.value.filter(|v| v.is_finite()) {
            // Rust writes a finite f64 as plain decimal digits: a number, never a formula.
            out.push_str(&v.to_string());
        }
        out.push(',');
        out.push_str(&csv_cell(&p.quality.code()));
        out.push_str("\r\n");
    }
    out
}

/// The JSON document of an export.
pub fn json_doc(
    device: &Device,
    tag: &str,
    from: Option<i64>,
    to: Option<i64>,
    points: &[DataPoint],
) -> Value {
    json!({
        "device_id": device.id,
        "device": device.name.as_str(),
        "tag": tag,
        "from": from.map(iso_ms),
        "to": to.map(iso_ms),
        "points": points.iter().map(|p| json!({
            "time": iso_ms(p.time_ms),
            "time_ms": p.time_ms,
            "value": p.value,
            "quality": p.quality.code(),
        })).collect::<Vec<_>>(),
    })
}

/// Every point of `tag` in `[from, to)`, oldest first, at most [`MAX_EXPORT`].
async fn fetch(
    v: &Viewer,
    id: &str,
    tag: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Vec<DataPoint>, String> {
    let mut out: Vec<DataPoint> = Vec::new();
    let mut start = from;
    loop {
        let mut path = format!(
            "/api/v1/devices/{}/data?tag={}&limit={MAX_PAGE}",
            enc(id),
            enc(tag)
        );
        if let Some(f) = start {
            path.push_str(&format!("&from_ms={f}"));
        }
        if let Some(t) = to {
            path.push_str(&format!("&to_ms={t}"));
        }
        let page: Vec<DataPoint> = v.api.get(&path).await.map_err(|e| e.message)?;
        let full = page.len() >= MAX_PAGE as usize;
        let before = out.len();
        // A page starts at the last page's time again (points may share a
        // millisecond); those already taken are skipped by (time, txid).
        let last = out.last().map(|p| (p.time_ms, p.txid));
        out.extend(
            page.into_iter()
                .filter(|p| last.is_none_or(|l| (p.time_ms, p.txid) > l)),
        );
        if out.len() > MAX_EXPORT {
            return Err(format!(
                "This range holds more than {MAX_EXPORT} points; export a shorter range."
            ));
        }
        if !full {
            return Ok(out);
        }
        if out.len() == before {
            return Err(format!(
                "More than {MAX_PAGE} points share one millisecond; the export stops there."
            ));
        }
        start = out.last().map(|p| p.time_ms);
    }
}

/// The download.
pub async fn export(v: Viewer, Path(id): Path<String>, Query(q): Query<ExportQuery>) -> Response {
    let back = format!("{PREFIX}/devices/{}#data-export", enc(&id));
    let tag = q.tag.trim();
    if tag.is_empty() {
        return Flash::error("Choose a tag to export.").redirect(&back);
    }
    let range = local_ms(&q.from).and_then(|f| Ok((f, local_ms(&q.to)?)));
    let (from, to) = match range {
        Ok(r) => r,
        Err(e) => return Flash::error(format!("Export: {e}")).redirect(&back),
    };
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Flash::error("Export: the end of the range must be after its start.")
            .redirect(&back);
    }
    let device: Device = match v.api.get(&format!("/api/v1/devices/{}", enc(&id))).await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let points = match fetch(&v, &id, tag, from, to).await {
        Ok(p) => p,
        Err(e) => return Flash::error(format!("Export: {e}")).redirect(&back),
    };
    let stem = format!(
        "drawbridge-{}-{tag}",
        device.name.as_str().replace(' ', "-")
    );
    if q.format == "json" {
        let doc = json_doc(&device, tag, from, to, &points);
        download(
            &format!("{stem}.json"),
            "application/json",
            serde_json::to_vec_pretty(&doc).unwrap_or_default(),
        )
    } else {
        download(
            &format!("{stem}.csv"),
            "text/csv; charset=utf-8",
            csv(&points),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::TagName;
    use drawbridge_proto::data::{BadReason, Quality};

    fn p(tag: &str, time_ms: i64, value: Option<f64>, quality: Quality) -> DataPoint {
        DataPoint {
            txid: time_ms,
            device_id: "d".into(),
            device: "Press".into(),
            tag: TagName::try_from(tag).unwrap(),
            time_ms,
            value,
            quality,
        }
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised() {
        for (given, want) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-2-3", "'-2-3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            (
                "=HYPERLINK(\"x\",\"y\")",
                "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\"",
            ),
            ("a,b", "\"a,b\""),
            ("plain", "plain"),
            ("exception:2", "exception:2"),
        ] {
            assert_eq!(csv_cell(given), want, "{given:?}");
        }
    }

    #[test]
    fn the_csv_has_its_header_and_numbers_stay_numbers() {
        let rows = [
            p("speed", 1_800_000_000_123, Some(-3.25), Quality::Good),
            p("-cmd", 1_800_000_001_000, Some(1e21), Quality::Good),
            p(
                "speed",
                1_800_000_002_000,
                None,
                Quality::Bad {
                    reason: BadReason::Timeout,
                },
            ),
        ];
        assert_eq!(
            csv(&rows),
            "time,tag,value,quality\r\n\
             2027-01-15T08:00:00.123Z,speed,-3.25,good\r\n\
             2027-01-15T08:00:01.000Z,'-cmd,1000000000000000000000,good\r\n\
             2027-01-15T08:00:02.000Z,speed,,timeout\r\n"
        );
    }

    #[test]
    fn datetime_local_fields_are_read_as_utc() {
        assert_eq!(local_ms("").unwrap(), None);
        assert_eq!(
            local_ms("2027-01-15T08:00").unwrap(),
            Some(1_800_000_000_000)
        );
        assert_eq!(
            local_ms("2027-01-15T08:00:01").unwrap(),
            Some(1_800_000_001_000)
        );
        assert_eq!(
            local_ms("2027-01-15T08:00:01.5").unwrap(),
            Some(1_800_000_001_500)
        );
        assert!(local_ms("yesterday").is_err());
        assert!(local_ms("2027-13-01T00:00").is_err());
    }
}
