//! The account's settings: password policy, 2FA, lockout, login and session rules.

use crate::PREFIX;
use crate::web::{Flash, Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::api::Account;
use drawbridge_proto::{AccountSettings, Action};
use serde_json::json;

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    l: Layout,
    name: String,
    s: AccountSettings,
    policy: String,
    can_manage: bool,
}

pub async fn page(v: Viewer) -> Response {
    let a = &v.me.account;
    let page = AccountPage {
        l: v.layout("Account settings"),
        name: a.name.to_string(),
        s: a.settings.clone(),
        policy: super::describe_policy(&a.settings.password_policy),
        can_manage: v.can(Action::ManageUsers),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

pub async fn update(p: Posted) -> Response {
    let back = format!("{PREFIX}/account");
    let f = &p.form;
    let num = |name: &str| -> Result<u32, String> {
        f.get(name)
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{name}: enter a whole number"))
    };
    let settings = (|| -> Result<AccountSettings, String> {
        Ok(AccountSettings {
            password_policy: drawbridge_proto::PasswordPolicy {
                min_length: num("min_length")?,
                min_classes: num("min_classes")?,
                expiry_days: num("expiry_days")?,
                history: num("history")?,
                deny_common: f.checked("deny_common"),
            },
            require_totp: f.checked("require_totp"),
            lockout_threshold: num("lockout_threshold")?,
            lockout_minutes: num("lockout_minutes")?,
            login_idle_minutes: num("login_idle_minutes")?,
            login_absolute_hours: num("login_absolute_hours")?,
            adhoc_allowed: f.checked("adhoc_allowed"),
            dual_control: f.checked("dual_control"),
            max_session_minutes: num("max_session_minutes")?,
            session_idle_minutes: num("session_idle_minutes")?,
            data_retention_days: num("data_retention_days")?,
            // Kept as they are when the form has no such fields (see below).
            desktop_recording: match f.opt("desktop_recording") {
                Some(m) => serde_json::from_value(json!(m)).map_err(|_| {
                    "desktop_recording: choose required, best_effort or off".to_string()
                })?,
                None => Default::default(),
            },
            recording_retention_days: match f.opt("recording_retention_days") {
                Some(_) => num("recording_retention_days")?,
                None => 1,
            },
            recording_max_mb: match f.opt("recording_max_mb") {
                Some(_) => num("recording_max_mb")?,
                None => 1,
            },
        })
    })();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return Flash::error(e).redirect(&back),
    };
    // The API's settings are a merge patch: keys the form did not hold stay.
    let mut patch = json!(settings);
    for key in [
        "desktop_recording",
        "recording_retention_days",
        "recording_max_mb",
    ] {
        if f.opt(key).is_none()
            && let Some(o) = patch.as_object_mut()
        {
            o.remove(key);
        }
    }
    let mut body = json!({ "settings": patch });
    if let Some(n) = f.opt("name") {
        body["name"] = n.into();
    }
    let r = p.api.patch::<Account>("/api/v1/account", &body).await;
    after(r, &p.headers, &back, "The settings were saved.")
}
