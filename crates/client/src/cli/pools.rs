//! `pools` and `pool …`.

use super::args::PoolCmd;
use super::context::{Ctx, done, emit, name, name_of, out, print_json, print_table};
use crate::Result;
use crate::show::Fields;
use crate::table::Table;

pub(super) async fn pools(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.pools().await?;
    if ctx.json {
        return print_json(&all);
    }
    let devices = ctx.device_names().await;
    let mut t = Table::new(["NAME", "ID", "DEVICES"]);
    for p in &all {
        let ds: Vec<String> = p.devices.iter().map(|d| name_of(&devices, d)).collect();
        t.row([p.name.to_string(), p.id.clone(), ds.join(",")]);
    }
    print_table(&t, "No pools.")
}

pub(super) async fn pool(ctx: &Ctx, cmd: PoolCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        PoolCmd::List => unreachable!("dispatched to pools()"),
        PoolCmd::Show { pool } => {
            let p = c.pool(&ctx.pool_id(&pool).await?).await?;
            if ctx.json {
                return print_json(&p);
            }
            let devices = ctx.device_names().await;
            let mut f = Fields::new();
            f.add("Pool", p.name.as_str())
                .add("ID", &p.id)
                .lines("Devices", p.devices.iter().map(|d| name_of(&devices, d)));
            out(&f.render())
        }
        PoolCmd::Create { name: n } => {
            let p = c.create_pool(name(&n, "pool name")?).await?;
            emit(ctx, &p, || format!("Created pool {} ({}).\n", p.name, p.id))
        }
        PoolCmd::Delete { pool } => {
            let id = ctx.pool_id(&pool).await?;
            c.delete_pool(&id).await?;
            done(ctx, &format!("Deleted pool {pool} and its grants."))
        }
        PoolCmd::AddDevice { pool, devices } => {
            let id = ctx.pool_id(&pool).await?;
            for d in &devices {
                c.add_pool_device(&id, &ctx.device_id(d).await?).await?;
            }
            done(
                ctx,
                &format!("Added {} to pool {pool}.", devices.join(", ")),
            )
        }
        PoolCmd::RemoveDevice { pool, devices } => {
            let id = ctx.pool_id(&pool).await?;
            for d in &devices {
                c.remove_pool_device(&id, &ctx.device_id(d).await?).await?;
            }
            done(
                ctx,
                &format!("Removed {} from pool {pool}.", devices.join(", ")),
            )
        }
    }
}
