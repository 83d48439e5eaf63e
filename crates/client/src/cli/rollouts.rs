//! `release list` and `rollout …`: signed edge releases and their staged
//! rollouts to devices and pools (docs/updates.md).

use super::context::{Ctx, emit, out, pick, print_json, print_table};
use super::rollout_args::{RolloutCmd, RolloutCreateArgs};
use crate::show::{Fields, yes_no};
use crate::table::Table;
use crate::{Result, fail};
use drawbridge_proto::update::{
    CreateRollout, MAX_ROLLOUT_DEVICES, MAX_ROLLOUT_POOLS, Release, Rollout,
};
use std::collections::BTreeMap;

fn counts_text(counts: &BTreeMap<String, u32>) -> String {
    drawbridge_proto::update::counts_text(counts, "-")
}

fn unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|t| crate::show::time(&t))
        .unwrap_or_else(|_| t.to_string())
}

fn release_text(r: &Release) -> String {
    format!("{} ({})", r.version, r.target)
}

pub(super) async fn releases(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.releases().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new([
        "ID",
        "VERSION",
        "TARGET",
        "SIZE",
        "SHA256",
        "DOWNGRADE",
        "ADDED",
    ]);
    for r in &all {
        t.row([
            r.id.clone(),
            r.version.clone(),
            r.target.clone(),
            r.size.to_string(),
            r.sha256.chars().take(16).collect(),
            if r.downgrade {
                "yes".into()
            } else {
                String::new()
            },
            unix(r.created_at),
        ]);
    }
    print_table(
        &t,
        "No releases (the server's operator adds them with `drawbridge-server release add`).",
    )
}

fn list_table(all: &[Rollout]) -> Table {
    let mut t = Table::new(["ID", "RELEASE", "STATE", "STAGE", "DEVICES", "CREATED"]);
    for r in all {
        t.row([
            r.id.clone(),
            release_text(&r.release),
            r.state.clone(),
            r.stage.clone(),
            counts_text(&r.counts),
            unix(r.created_at),
        ]);
    }
    t
}

fn show_text(r: &Rollout) -> String {
    let mut f = Fields::new();
    let state = match &r.paused_reason {
        Some(why) => format!("{} ({why})", r.state),
        None => r.state.clone(),
    };
    f.add("Rollout", &r.id)
        .add(
            "Release",
            format!("{}, id {}", release_text(&r.release), r.release.id),
        )
        .add("State", state)
        .add("Stage", &r.stage)
        .add("Soak", format!("{} min", r.soak_minutes))
        .add(
            "Window",
            match &r.window {
                Some(w) => format!("{}-{} UTC", w.start, w.end),
                None => "any time".into(),
            },
        )
        .add("Failure threshold", r.failure_threshold.to_string())
        .add("Downgrade", yes_no(r.downgrade))
        .add(
            "Created",
            format!("{} by {}", unix(r.created_at), r.created_by),
        )
        .add("Devices", counts_text(&r.counts));
    let mut t = Table::new(["DEVICE", "CANARY", "STATE", "FROM", "UPDATED", "MESSAGE"]);
    for d in &r.devices {
        t.row([
            d.name.clone(),
            if d.canary {
                "canary".into()
            } else {
                String::new()
            },
            d.state.clone(),
            d.from_version.clone().unwrap_or_else(|| "-".into()),
            unix(d.updated_at),
            d.message.clone().unwrap_or_default(),
        ]);
    }
    let mut s = f.render();
    if !t.is_empty() {
        s.push('\n');
        s.push_str(&t.render());
    }
    s
}

pub(super) async fn rollout(ctx: &Ctx, cmd: RolloutCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        RolloutCmd::List => {
            let all = c.rollouts().await?;
            if ctx.json {
                return print_json(&all);
            }
            print_table(&list_table(&all), "No rollouts.")
        }
        RolloutCmd::Show { rollout } => {
            let r = c.rollout(&rollout).await?;
            emit(ctx, &r, || show_text(&r))
        }
        RolloutCmd::Create(args) => create(ctx, *args).await,
        RolloutCmd::Pause { rollout } => {
            let r = c.pause_rollout(&rollout).await?;
            emit(ctx, &r, || {
                format!(
                    "Paused rollout {}: offers not being installed yet are withdrawn.\n",
                    r.id
                )
            })
        }
        RolloutCmd::Resume { rollout } => {
            let r = c.resume_rollout(&rollout).await?;
            emit(ctx, &r, || format!("Resumed rollout {}.\n", r.id))
        }
        RolloutCmd::Cancel { rollout } => {
            let r = c.cancel_rollout(&rollout).await?;
            emit(ctx, &r, || {
                format!(
                    "Cancelled rollout {}: devices not updating yet never will.\n",
                    r.id
                )
            })
        }
    }
}

/// Turns the command line into the API's request: names become ids (each
/// list fetched once), obviously bad input is refused before asking.
async fn request(ctx: &Ctx, a: &RolloutCreateArgs) -> Result<CreateRollout> {
    if a.devices.is_empty() && a.pools.is_empty() {
        fail!("name the devices to update: --device NAME and/or --pool NAME");
    }
    if a.devices.len() > MAX_ROLLOUT_DEVICES {
        fail!("at most {MAX_ROLLOUT_DEVICES} --device in one rollout (use --pool for more)");
    }
    if a.pools.len() > MAX_ROLLOUT_POOLS || a.canaries.len() > MAX_ROLLOUT_POOLS {
        fail!("at most {MAX_ROLLOUT_POOLS} --pool and {MAX_ROLLOUT_POOLS} --canary");
    }
    if a.downgrade && !a.yes {
        fail!(
            "--downgrade installs an older version than the devices run (only a release signed \
             as a downgrade release); add --yes to confirm"
        );
    }
    let c = &ctx.client;
    let releases = c.releases().await?;
    let release = pick(
        &releases,
        &a.release,
        "release",
        "release list",
        |r| &r.id,
        |r| &r.version,
    )?;
    if a.downgrade && !release.downgrade {
        fail!(
            "release {} is not signed as a downgrade release (drawbridge-release sign --downgrade); \
             --downgrade cannot install it",
            release.version
        );
    }
    let devices = if a.devices.is_empty() && a.canaries.is_empty() {
        Vec::new()
    } else {
        c.devices().await?
    };
    let device_ids = |names: &[String]| -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| {
                pick(
                    &devices,
                    n,
                    "device",
                    "devices",
                    |d| &d.id,
                    |d| d.name.as_str(),
                )
                .map(|d| d.id.clone())
            })
            .collect()
    };
    let pools = if a.pools.is_empty() {
        Vec::new()
    } else {
        c.pools().await?
    };
    let pool_ids = a
        .pools
        .iter()
        .map(|n| {
            pick(&pools, n, "pool", "pools", |p| &p.id, |p| p.name.as_str()).map(|p| p.id.clone())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CreateRollout {
        release_id: release.id.clone(),
        devices: device_ids(&a.devices)?,
        pools: pool_ids,
        canaries: device_ids(&a.canaries)?,
        canary_percent: a.canary_percent,
        soak_minutes: a.soak_minutes,
        window: a.window.clone(),
        failure_threshold: a.failure_threshold,
        downgrade: a.downgrade,
    })
}

async fn create(ctx: &Ctx, a: RolloutCreateArgs) -> Result<()> {
    let req = request(ctx, &a).await?;
    let r = ctx.client.create_rollout(&req).await?;
    if ctx.json {
        return print_json(&r);
    }
    let total: u32 = r.counts.values().sum();
    let canaries = r.devices.iter().filter(|d| d.canary).count();
    let mut s = format!(
        "Started rollout {} of {} on {total} device(s)",
        r.id,
        release_text(&r.release)
    );
    if canaries > 0 {
        s.push_str(&format!(
            ", {canaries} canary(ies) first, the rest after {} min without failure",
            r.soak_minutes
        ));
    }
    s.push_str(".\nFollow it with `drawbridge rollout show ");
    s.push_str(&r.id);
    s.push_str("`.\n");
    out(&s)
}
