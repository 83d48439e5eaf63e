//! Alarms: the alarms page (open alarms of every device the viewer may see,
//! or all of them), the rows a device page shows, its alarm history, and
//! acknowledgement with a comment (full or restricted grants and admins; the
//! API decides, the portal only leaves the form out for others).

use super::{Rights, value_text, when_ms, when_ms_opt};
use crate::PREFIX;
use crate::apiclient::{Api, enc};
use crate::web::{Flash, Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::mailbox::{AckAlarm, Alarm, AlarmEvent, AlarmState, MAX_ACK_COMMENT};

/// One alarm as a table row.
pub struct AlarmRow {
    pub id: String,
    pub device_id: String,
    pub device: String,
    pub tag: String,
    /// `alarm`, `acknowledged`, `returned`, `ended` (also the CSS class).
    pub state: String,
    pub raised: String,
    pub raised_value: String,
    pub returned: String,
    /// `by ann at … : "comment"`, or empty.
    pub ack: String,
    pub comment: String,
    /// The viewer may acknowledge it now (not yet acknowledged, and the right to).
    pub can_ack: bool,
}

impl AlarmRow {
    pub fn of(a: &Alarm, can_ack: bool) -> AlarmRow {
        let unacked = matches!(a.state, AlarmState::Alarm | AlarmState::Returned);
        AlarmRow {
            id: a.id.clone(),
            device_id: a.device_id.clone(),
            device: a.device.clone(),
            tag: a.tag.clone(),
            state: a.state.as_str().to_string(),
            raised: when_ms(a.raised_ms),
            raised_value: a.raised_value.map(value_text).unwrap_or_default(),
            returned: match a.returned_ms {
                Some(t) => format!(
                    "{}{}",
                    when_ms(t),
                    a.returned_value
                        .map(|v| format!(" at {}", value_text(v)))
                        .unwrap_or_default()
                ),
                None => String::new(),
            },
            ack: match (&a.acked_by, a.acked_at) {
                (Some(by), Some(at)) => format!("{by}, {}", when_ms_opt(at.checked_mul(1000))),
                (None, Some(at)) => when_ms_opt(at.checked_mul(1000)),
                _ => String::new(),
            },
            comment: a.ack_comment.clone().unwrap_or_default(),
            can_ack: can_ack && unacked,
        }
    }
}

/// Rows for `alarms`, each with the viewer's right to acknowledge asked of the API.
pub async fn rows(api: &Api, rights: &mut Rights, alarms: &[Alarm]) -> Vec<AlarmRow> {
    let mut out = Vec::with_capacity(alarms.len());
    for a in alarms {
        let unacked = matches!(a.state, AlarmState::Alarm | AlarmState::Returned);
        let can = unacked && rights.can_ack(api, &a.device_id).await;
        out.push(AlarmRow::of(a, can));
    }
    out
}

/// One step of a device's alarm history.
pub struct EventRow {
    pub time: String,
    pub tag: String,
    pub event: String,
    pub value: String,
    pub user: String,
    pub comment: String,
}

impl EventRow {
    pub fn of(e: &AlarmEvent) -> EventRow {
        EventRow {
            time: when_ms(e.time_ms),
            tag: e.tag.clone(),
            event: e.event.clone(),
            value: e.value.map(value_text).unwrap_or_default(),
            user: e.user.clone().unwrap_or_default(),
            comment: e.comment.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "alarms.html")]
struct AlarmsPage {
    l: Layout,
    rows: Vec<AlarmRow>,
    all: bool,
    /// Where an acknowledgement form returns to.
    back: String,
    max_comment: usize,
}

#[derive(serde::Deserialize, Default)]
pub struct AlarmsQuery {
    #[serde(default)]
    all: Option<bool>,
}

/// Open alarms (or all, `?all=true`) of every device the viewer may see.
pub async fn page(v: Viewer, Query(q): Query<AlarmsQuery>) -> Response {
    let all = q.all.unwrap_or(false);
    let path = if all {
        "/api/v1/alarms?all=true"
    } else {
        "/api/v1/alarms"
    };
    let alarms: Vec<Alarm> = match v.api.get(path).await {
        Ok(a) => a,
        Err(e) => return v.fail(&e),
    };
    let mut rights = Rights::default();
    let page = AlarmsPage {
        l: v.layout(if all { "All alarms" } else { "Open alarms" }),
        rows: rows(&v.api, &mut rights, &alarms).await,
        back: if all {
            format!("{PREFIX}/alarms?all=true")
        } else {
            format!("{PREFIX}/alarms")
        },
        all,
        max_comment: MAX_ACK_COMMENT,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

/// Where an acknowledgement returns: a portal page given by the form, if it
/// is one (`/portal/…`, no scheme, host or `..`), else the alarms page.
fn back_to(given: &str) -> String {
    let ok = given.starts_with("/portal/")
        && !given.contains("//")
        && !given.contains("..")
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.?=&#%".contains(&b));
    if ok {
        given.to_string()
    } else {
        format!("{PREFIX}/alarms")
    }
}

/// Acknowledges an alarm with the form's comment.
pub async fn ack(Path(id): Path<String>, p: Posted) -> Response {
    let back = back_to(p.form.get("back"));
    let comment = p.form.get("comment").trim().replace("\r\n", "\n");
    if comment.chars().count() > MAX_ACK_COMMENT {
        return Flash::error(format!(
            "The comment is longer than {MAX_ACK_COMMENT} characters."
        ))
        .redirect(&back);
    }
    let r = p
        .api
        .post::<Alarm>(
            &format!("/api/v1/alarms/{}/ack", enc(&id)),
            &AckAlarm { comment },
        )
        .await;
    let done = match &r {
        Ok(a) => format!("The alarm of {} on {} is acknowledged.", a.tag, a.device),
        Err(_) => String::new(),
    };
    after(r, &p.headers, &back, &done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledgement_returns_only_to_a_portal_page() {
        assert_eq!(
            back_to("/portal/devices/abc#data-alarms"),
            "/portal/devices/abc#data-alarms"
        );
        assert_eq!(
            back_to("/portal/alarms?all=true"),
            "/portal/alarms?all=true"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/portal/",
            "/portal//evil",
            "/portal/../api",
            "/api/v1/alarms",
            "/portal/x\r\nSet-Cookie: a=b",
            "",
        ] {
            assert_eq!(back_to(bad), "/portal/alarms", "{bad:?}");
        }
    }
}
