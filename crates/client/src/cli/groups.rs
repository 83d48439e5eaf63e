//! `groups` and `group …`.

use super::args::GroupCmd;
use super::context::{Ctx, done, emit, name, name_of, out, print_json, print_table};
use crate::show::Fields;
use crate::table::Table;
use crate::{Result, fail};

pub(super) async fn groups(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.groups().await?;
    if ctx.json {
        return print_json(&all);
    }
    let users = ctx.user_names().await;
    let mut t = Table::new(["NAME", "ID", "MEMBERS"]);
    for g in &all {
        let members: Vec<String> = g.members.iter().map(|m| name_of(&users, m)).collect();
        t.row([g.name.to_string(), g.id.clone(), members.join(",")]);
    }
    print_table(&t, "No groups.")
}

pub(super) async fn group(ctx: &Ctx, cmd: GroupCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        GroupCmd::List => unreachable!("dispatched to groups()"),
        GroupCmd::Show { group } => {
            let g = c.group(&ctx.group_id(&group).await?).await?;
            if ctx.json {
                return print_json(&g);
            }
            let users = ctx.user_names().await;
            let mut f = Fields::new();
            f.add("Group", g.name.as_str())
                .add("ID", &g.id)
                .lines("Members", g.members.iter().map(|m| name_of(&users, m)));
            out(&f.render())
        }
        GroupCmd::Create { name: n } => {
            let g = c.create_group(name(&n, "group name")?).await?;
            emit(ctx, &g, || {
                format!("Created group {} ({}).\n", g.name, g.id)
            })
        }
        GroupCmd::Delete { group } => {
            let id = ctx.group_id(&group).await?;
            c.delete_group(&id).await?;
            done(ctx, &format!("Deleted group {group} and its grants."))
        }
        GroupCmd::AddMember { group, users } | GroupCmd::RemoveMember { group, users }
            if users.is_empty() =>
        {
            fail!("name at least one user to change in group {group}")
        }
        GroupCmd::AddMember { group, users } => {
            let id = ctx.group_id(&group).await?;
            for u in &users {
                c.add_member(&id, &ctx.user_id(u).await?).await?;
            }
            done(
                ctx,
                &format!("Added {} to group {group}.", users.join(", ")),
            )
        }
        GroupCmd::RemoveMember { group, users } => {
            let id = ctx.group_id(&group).await?;
            for u in &users {
                c.remove_member(&id, &ctx.user_id(u).await?).await?;
            }
            done(
                ctx,
                &format!("Removed {} from group {group}.", users.join(", ")),
            )
        }
    }
}
