//! `grants` and `grant …`.

use super::args::GrantCmd;
use super::context::{Ctx, done, emit, name_of, print_json, print_table};
use crate::show::{self};
use crate::table::Table;
use crate::{Result, fail};
use drawbridge_proto::api::*;
use std::collections::HashMap;

pub(super) async fn grants(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.grants().await?;
    if ctx.json {
        return print_json(&all);
    }
    let groups: HashMap<String, String> = ctx
        .client
        .groups()
        .await
        .map(|v| v.into_iter().map(|g| (g.id, g.name.to_string())).collect())
        .unwrap_or_default();
    let pools: HashMap<String, String> = ctx
        .client
        .pools()
        .await
        .map(|v| v.into_iter().map(|p| (p.id, p.name.to_string())).collect())
        .unwrap_or_default();
    let mut t = Table::new(["ID", "GROUP", "POOL", "LEVEL", "TARGETS"]);
    for g in &all {
        t.row([
            g.id.clone(),
            name_of(&groups, &g.group_id),
            name_of(&pools, &g.pool_id),
            g.level.as_str().to_string(),
            show::targets(&g.targets),
        ]);
    }
    print_table(&t, "No grants.")
}

pub(super) async fn grant(ctx: &Ctx, cmd: GrantCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        GrantCmd::List => unreachable!("dispatched to grants()"),
        GrantCmd::Create {
            group,
            pool,
            level,
            target,
        } => {
            let req = CreateGrant {
                group_id: ctx.group_id(&group).await?,
                pool_id: ctx.pool_id(&pool).await?,
                level,
                targets: target,
            };
            let g = c.create_grant(&req).await?;
            emit(ctx, &g, || {
                format!(
                    "Granted group {group} {} access to pool {pool} (grant {}).\n",
                    g.level.as_str(),
                    g.id
                )
            })
        }
        GrantCmd::Delete { grant, group, pool } => {
            let id = match (grant, group, pool) {
                (Some(id), _, _) => id,
                (None, Some(group), Some(pool)) => {
                    let (gid, pid) = (ctx.group_id(&group).await?, ctx.pool_id(&pool).await?);
                    match c
                        .grants()
                        .await?
                        .into_iter()
                        .find(|g| g.group_id == gid && g.pool_id == pid)
                    {
                        Some(g) => g.id,
                        None => fail!(
                            "group {group} has no grant on pool {pool} (see `drawbridge grants`)"
                        ),
                    }
                }
                _ => fail!("name the grant by id, or by --group and --pool"),
            };
            c.delete_grant(&id).await?;
            done(ctx, &format!("Deleted grant {id}."))
        }
    }
}
