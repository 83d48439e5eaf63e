//! `account …` and `notifications`.

use super::args::AccountCmd;
use super::context::{Ctx, emit, name, print_json, print_table};
use crate::show::{self, Fields};
use crate::table::Table;
use crate::{Error, Result, fail};
use drawbridge_proto::AccountSettings;
use drawbridge_proto::api::*;

/// `a.b.c = value` lines of a JSON object.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Applies `a.b=value` to settings; the key must exist.
pub fn apply_setting(settings: &AccountSettings, assignment: &str) -> Result<AccountSettings> {
    let Some((key, raw)) = assignment.split_once('=') else {
        fail!("{assignment:?}: expected SETTING=VALUE, e.g. require_totp=true");
    };
    let key = key.trim();
    let mut v = serde_json::to_value(settings).expect("settings serialise");
    let mut slot = &mut v;
    for part in key.split('.') {
        slot = match slot.get_mut(part) {
            Some(s) => s,
            None => fail!("unknown setting {key:?}; see `drawbridge account show`"),
        };
    }
    if slot.is_object() {
        fail!("{key:?} is a group of settings; set its parts, e.g. {key}.NAME=VALUE");
    }
    let raw = raw.trim();
    *slot = serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.into()));
    let new: AccountSettings =
        serde_json::from_value(v).map_err(|e| Error::user(format!("{key}={raw}: {e}")))?;
    new.check().map_err(Error::User)?;
    Ok(new)
}

pub(super) async fn account(ctx: &Ctx, cmd: AccountCmd) -> Result<()> {
    let c = &ctx.client;
    let show_account = |a: &Account| {
        let mut f = Fields::new();
        f.add("Account", a.name.as_str())
            .add("ID", &a.id)
            .add("Created", show::time(&a.created_at));
        let mut lines = Vec::new();
        flatten(
            "",
            &serde_json::to_value(&a.settings).expect("settings serialise"),
            &mut lines,
        );
        let mut t = Table::new(["SETTING", "VALUE"]);
        for (k, v) in lines {
            t.row([k, v]);
        }
        format!("{}\n{}", f.render(), t.render())
    };
    match cmd {
        AccountCmd::Show => {
            let a = c.account().await?;
            emit(ctx, &a, || show_account(&a))
        }
        AccountCmd::Set {
            settings,
            name: new_name,
        } => {
            if settings.is_empty() && new_name.is_none() {
                fail!("nothing to change: give SETTING=VALUE pairs or --name");
            }
            let req = if settings.is_empty() {
                UpdateAccount {
                    name: new_name
                        .as_deref()
                        .map(|n| name(n, "account name"))
                        .transpose()?,
                    settings: None,
                }
            } else {
                let mut s = c.account().await?.settings;
                for a in &settings {
                    s = apply_setting(&s, a)?;
                }
                UpdateAccount {
                    name: new_name
                        .as_deref()
                        .map(|n| name(n, "account name"))
                        .transpose()?,
                    settings: Some((&s).into()),
                }
            };
            let a = c.update_account(&req).await?;
            emit(ctx, &a, || show_account(&a))
        }
    }
}

pub(super) async fn notifications(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.notifications().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["TIME", "KIND", "MESSAGE"]);
    for n in &all {
        t.row([show::time(&n.created_at), n.kind.clone(), n.message.clone()]);
    }
    print_table(&t, "No notifications.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_set_by_dotted_name_and_checked() {
        let s = AccountSettings::default();
        let s2 = apply_setting(&s, "password_policy.min_length=12").unwrap();
        assert_eq!(s2.password_policy.min_length, 12);
        assert!(apply_setting(&s, "require_totp=true").unwrap().require_totp);
        assert!(apply_setting(&s, "no_such=1").is_err());
        assert!(apply_setting(&s, "password_policy=1").is_err());
        assert!(apply_setting(&s, "password_policy.min_length=2").is_err());
        assert!(apply_setting(&s, "require_totp=maybe").is_err());
    }
}
