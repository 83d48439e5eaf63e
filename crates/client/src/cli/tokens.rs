//! `token …`: the caller's API tokens.

use super::args::{TOKEN_ENV, TokenCmd};
use super::context::{Ctx, done, emit, name, pick, print_json, print_table};
use crate::Result;
use crate::show::{self};
use crate::table::Table;
use drawbridge_proto::api::*;

pub(super) async fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        TokenCmd::List => {
            let all = c.tokens().await?;
            if ctx.json {
                return print_json(&all);
            }
            let mut t = Table::new(["NAME", "ID", "ACCESS", "CREATED", "EXPIRES", "LAST USED"]);
            for k in &all {
                t.row([
                    k.name.to_string(),
                    k.id.clone(),
                    access(k).to_string(),
                    show::time(&k.created_at),
                    show::time(&k.expires_at),
                    show::opt_time(&k.last_used_at),
                ]);
            }
            print_table(&t, "No API tokens.")
        }
        TokenCmd::Create {
            name: n,
            days,
            read_only,
            data_only,
        } => {
            let k = c
                .create_token(&CreateApiToken {
                    name: name(&n, "token name")?,
                    expires_in_days: days,
                    read_only,
                    data_only,
                })
                .await?;
            emit(ctx, &k, || {
                format!(
                    "Created API token {} ({}), {}, valid until {}.\n\
                     Token (it is not shown again; use it as {TOKEN_ENV}):\n  {}\n",
                    k.info.name,
                    k.info.id,
                    access(&k.info),
                    show::time(&k.info.expires_at),
                    k.token
                )
            })
        }
        TokenCmd::Revoke { token } => {
            let all = c.tokens().await?;
            let k = pick(
                &all,
                &token,
                "API token",
                "token list",
                |k| &k.id,
                |k| k.name.as_str(),
            )?;
            c.revoke_token(&k.id).await?;
            done(ctx, &format!("Revoked API token {} ({}).", k.name, k.id))
        }
    }
}

/// What a token may do, in words.
fn access(k: &ApiToken) -> &'static str {
    if k.data_only {
        "data read-only"
    } else if k.read_only {
        "read-only"
    } else {
        "read-write"
    }
}
