//! `users` and `user …`.

use super::args::{PasswordSource, UserCmd};
use super::context::{Ctx, emit, print_json, print_table};
use crate::show::{self, Fields};
use crate::table::Table;
use crate::{Error, Result, fail, prompt};
use drawbridge_proto::Username;
use drawbridge_proto::api::*;

fn user_fields(u: &User) -> String {
    let mut f = Fields::new();
    f.add("User", u.username.as_str())
        .add("ID", &u.id)
        .add("Role", u.role.as_str())
        .add("Status", show::user_state(u))
        .add("2FA", if u.totp_enabled { "on" } else { "off" })
        .add("Password set", show::time(&u.password_changed_at))
        .add("Created", show::time(&u.created_at));
    f.render()
}

pub(super) async fn users(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.users().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["USERNAME", "ID", "ROLE", "STATUS", "2FA", "CREATED"]);
    for u in &all {
        t.row([
            u.username.to_string(),
            u.id.clone(),
            u.role.to_string(),
            show::user_state(u),
            show::yes_no(u.totp_enabled).to_string(),
            show::time(&u.created_at),
        ]);
    }
    print_table(&t, "No users.")
}

fn password_from(src: &PasswordSource, interactive: bool) -> Result<Option<String>> {
    Ok(match (&src.password_file, src.password_stdin) {
        (Some(f), _) => Some(prompt::secret_from_file(f, "password")?),
        (None, true) => Some(prompt::secret_from_stdin("password")?),
        (None, false) if interactive => Some(prompt::new_password("password")?),
        (None, false) => None,
    })
}

pub(super) async fn user(ctx: &Ctx, cmd: UserCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        UserCmd::List => unreachable!("dispatched to users()"),
        UserCmd::Email { .. } => unreachable!("dispatched to notify::user_email()"),
        UserCmd::Show { user } => {
            let u = c.user(&ctx.user_id(&user).await?).await?;
            emit(ctx, &u, || user_fields(&u))
        }
        UserCmd::Create {
            username,
            role,
            password,
        } => {
            let username = Username::try_from(username.as_str())
                .map_err(|e| Error::user(format!("user name {username:?}: {e}")))?;
            let password = password_from(&password, true)?.expect("interactive");
            let u = c
                .create_user(&CreateUser {
                    username,
                    role,
                    password,
                })
                .await?;
            emit(ctx, &u, || {
                format!(
                    "Created user {} ({}) with role {}.\n",
                    u.username, u.id, u.role
                )
            })
        }
        UserCmd::Update {
            user,
            role,
            disable,
            enable,
            password,
            reset_password,
            unlock,
            reset_totp,
        } => {
            let id = ctx.user_id(&user).await?;
            let req = UpdateUser {
                role,
                disabled: if disable {
                    Some(true)
                } else if enable {
                    Some(false)
                } else {
                    None
                },
                password: password_from(&password, reset_password)?,
                unlock: unlock.then_some(true),
                reset_totp: reset_totp.then_some(true),
            };
            if req.role.is_none()
                && req.disabled.is_none()
                && req.password.is_none()
                && req.unlock.is_none()
                && req.reset_totp.is_none()
            {
                fail!("nothing to change: see `drawbridge user update --help`");
            }
            let u = c.update_user(&id, &req).await?;
            emit(ctx, &u, || user_fields(&u))
        }
    }
}
