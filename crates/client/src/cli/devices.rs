//! `devices`, `device …` and `fleet-key …`.

use super::args::{DeviceCmd, FleetKeyCmd};
use super::context::{Ctx, done, emit, name, pick, print_json, print_table};
use crate::show::{self, Fields};
use crate::table::Table;
use crate::{Error, Result, fail};
use drawbridge_proto::LongText;
use drawbridge_proto::api::*;
use std::io::Read;
use time::OffsetDateTime;

pub(super) async fn devices(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.devices().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["NAME", "ID", "STATUS", "SWITCH", "LAN", "LAST SEEN"]);
    for d in &all {
        let lan: Vec<String> = d.lan_subnets.iter().map(ToString::to_string).collect();
        t.row([
            d.name.to_string(),
            d.id.clone(),
            show::device_state(d).to_string(),
            show::switch(d).to_string(),
            if lan.is_empty() {
                "-".into()
            } else {
                lan.join(",")
            },
            show::opt_time(&d.status.last_seen),
        ]);
    }
    print_table(&t, "No devices.")
}

fn device_fields(d: &Device) -> String {
    let mut f = Fields::new();
    f.add("Name", d.name.as_str())
        .add("ID", &d.id)
        .add("Serial", d.serial.clone().unwrap_or_else(|| "-".into()))
        .add("Status", show::device_state(d))
        .add("Switch", show::switch(d))
        .add(
            "Agent",
            d.status.agent_version.clone().unwrap_or_else(|| "-".into()),
        )
        .add("Last seen", show::opt_time(&d.status.last_seen))
        .add(
            "Endpoint",
            d.status
                .public_endpoint
                .clone()
                .unwrap_or_else(|| "-".into()),
        )
        .lines("LAN subnets", d.lan_subnets.iter().map(ToString::to_string))
        .lines(
            "1:1 NAT",
            d.nat
                .iter()
                .map(|m| format!("{} = {}", m.real, m.virtual_subnet)),
        )
        .lines("Firewall", d.firewall.iter().map(show::target))
        .add(
            "Region",
            d.region.as_ref().map_or("-".to_string(), |r| r.to_string()),
        )
        .add("Created", show::time(&d.created_at));
    f.render()
}

fn activation_text(key: &ActivationKey) -> String {
    format!(
        "Activation key (single use, valid until {}; it is not shown again):\n  {}\n",
        show::time(&key.expires_at),
        key.key
    )
}

/// `disable`, `enable` or `archive`, then says what became of the device.
async fn device_service(ctx: &Ctx, device: &str, verb: &str, text: &str) -> Result<()> {
    let id = ctx.device_id(device).await?;
    let d = ctx.client.device_service(&id, verb).await?;
    emit(ctx, &d, || format!("Device {} ({}) {text}\n", d.name, d.id))
}

pub(super) async fn device(ctx: &Ctx, cmd: DeviceCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        DeviceCmd::List => unreachable!("dispatched to devices()"),
        DeviceCmd::Show { device } => {
            let d = ctx.device(&device).await?;
            emit(ctx, &d, || device_fields(&d))
        }
        DeviceCmd::Create { name: n, spec } => {
            let req = CreateDevice {
                name: name(&n, "device name")?,
                serial: spec
                    .serial
                    .as_deref()
                    .map(|s| name(s, "serial"))
                    .transpose()?,
                lan_subnets: spec.lan_subnet,
                nat: spec.nat,
                firewall: spec.allow,
            };
            let created = c.create_device(&req).await?;
            emit(ctx, &created, || {
                format!(
                    "Created device {} ({}).\n{}",
                    created.device.name,
                    created.device.id,
                    activation_text(&created.activation)
                )
            })
        }
        DeviceCmd::Update {
            device,
            name: new_name,
            spec,
            clear_lan_subnets,
            clear_nat,
            clear_firewall,
            onsite_approval,
            web,
            clear_web,
            region,
            clear_region,
        } => {
            let id = ctx.device_id(&device).await?;
            fn list<T>(v: Vec<T>, clear: bool) -> Option<Vec<T>> {
                if clear {
                    Some(Vec::new())
                } else {
                    (!v.is_empty()).then_some(v)
                }
            }
            let req = UpdateDevice {
                name: new_name
                    .as_deref()
                    .map(|s| name(s, "device name"))
                    .transpose()?,
                serial: spec
                    .serial
                    .as_deref()
                    .map(|s| name(s, "serial"))
                    .transpose()?,
                lan_subnets: list(spec.lan_subnet, clear_lan_subnets),
                nat: list(spec.nat, clear_nat),
                firewall: list(spec.allow, clear_firewall),
                onsite_approval,
                web_services: list(web, clear_web),
                region: if clear_region {
                    Some(None)
                } else {
                    region.map(Some)
                },
            };
            if req.name.is_none()
                && req.serial.is_none()
                && req.lan_subnets.is_none()
                && req.nat.is_none()
                && req.firewall.is_none()
                && req.onsite_approval.is_none()
                && req.web_services.is_none()
                && req.region.is_none()
            {
                fail!("nothing to change: see `drawbridge device update --help`");
            }
            let d = c.update_device(&id, &req).await?;
            emit(ctx, &d, || device_fields(&d))
        }
        DeviceCmd::Disable { device } => {
            let text = "is disabled: its edge is refused and its running sessions ended.";
            device_service(ctx, &device, "disable", text).await
        }
        DeviceCmd::Enable { device } => {
            device_service(ctx, &device, "enable", "is enabled again.").await
        }
        DeviceCmd::Archive { device } => {
            let text = "is archived: out of service for good, its history kept (`drawbridge device archived`).";
            device_service(ctx, &device, "archive", text).await
        }
        DeviceCmd::Replace { device } => {
            let id = ctx.device_id(&device).await?;
            let key = c.replace_device(&id).await?;
            emit(ctx, &key, || {
                format!(
                    "Enrol the replacement gateway with this key; the old gateway's key stops working when it does.\n\
                     (If the old gateway was stolen, disable the device now: `drawbridge device disable {device}`,\n\
                     then enable it once the replacement is enrolled.)\n{}",
                    activation_text(&key)
                )
            })
        }
        DeviceCmd::Archived => {
            let all = c.archived_devices().await?;
            if ctx.json {
                return print_json(&all);
            }
            let mut t = Table::new(["NAME", "ID", "CREATED"]);
            for d in &all {
                t.row([d.name.to_string(), d.id.clone(), show::time(&d.created_at)]);
            }
            print_table(&t, "No archived devices.")
        }
        DeviceCmd::Delete { device } => {
            let d = ctx.device(&device).await?;
            c.delete_device(&d.id).await?;
            done(ctx, &format!("Deleted device {} ({}).", d.name, d.id))
        }
        DeviceCmd::Approve { device } => {
            let id = ctx.device_id(&device).await?;
            let d = c.approve_device(&id).await?;
            emit(ctx, &d, || {
                format!(
                    "Approved device {} ({}); it receives its certificate.\n",
                    d.name, d.id
                )
            })
        }
        DeviceCmd::ActivationKey { device } => {
            let id = ctx.device_id(&device).await?;
            let key = c.new_activation_key(&id).await?;
            emit(ctx, &key, || {
                format!(
                    "Earlier activation keys of this device no longer work.\n{}",
                    activation_text(&key)
                )
            })
        }
        DeviceCmd::ConfigFile { device, out } => {
            // Before a new key exists: a refused file must not cost the device its key.
            if out.exists() {
                return Err(Error::user(format!(
                    "{} exists; choose another --out",
                    out.display()
                )));
            }
            let id = ctx.device_id(&device).await?;
            let trust = c.server_trust().await?;
            let key = c.new_activation_key(&id).await?;
            let text = drawbridge_proto::enrollfile::render(&id, &trust, &key.key);
            crate::wgexport::write_private(&out, &text)?;
            done(
                ctx,
                &format!(
                    "Wrote {} for device {id}{}. Earlier activation keys of this device no longer work.",
                    out.display(),
                    if trust.ca_certificate.is_some() {
                        " (with the server's CA)"
                    } else {
                        ""
                    }
                ),
            )
        }
        DeviceCmd::Log { device, text } => {
            let id = ctx.device_id(&device).await?;
            let text = if text == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|source| Error::Io {
                        context: "reading standard input".into(),
                        source,
                    })?;
                s.trim_end().to_string()
            } else {
                text
            };
            let text =
                LongText::try_from(text).map_err(|e| Error::user(format!("logbook note: {e}")))?;
            let entry = c.add_log(&id, &CreateLogEntry { text }).await?;
            emit(ctx, &entry, || "Note written to the logbook.\n".to_string())
        }
        DeviceCmd::Logbook { device } => {
            let id = ctx.device_id(&device).await?;
            let entries = c.logbook(&id).await?;
            if ctx.json {
                return print_json(&entries);
            }
            let mut t = Table::new(["TIME", "AUTHOR", "NOTE"]);
            for e in &entries {
                t.row([
                    show::time(&e.created_at),
                    e.author.clone(),
                    e.text.to_string(),
                ]);
            }
            print_table(&t, "The logbook is empty.")
        }
    }
}

pub(super) async fn fleet_key(ctx: &Ctx, cmd: FleetKeyCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        FleetKeyCmd::List => {
            let all = c.fleet_keys().await?;
            if ctx.json {
                return print_json(&all);
            }
            let now = OffsetDateTime::now_utc();
            let mut t = Table::new(["NAME", "ID", "STATE", "EXPIRES"]);
            for k in &all {
                let state = if k.revoked {
                    "revoked"
                } else if k.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                t.row([
                    k.name.to_string(),
                    k.id.clone(),
                    state.into(),
                    show::time(&k.expires_at),
                ]);
            }
            print_table(&t, "No fleet keys.")
        }
        FleetKeyCmd::Create { name: n, days } => {
            let k = c
                .create_fleet_key(&CreateFleetKey {
                    name: name(&n, "fleet key name")?,
                    expires_in_days: days,
                })
                .await?;
            emit(ctx, &k, || {
                format!(
                    "Created fleet key {} ({}), valid until {}. Devices enrolling with it wait for approval.\n\
                     Key (it is not shown again):\n  {}\n",
                    k.info.name,
                    k.info.id,
                    show::time(&k.info.expires_at),
                    k.key
                )
            })
        }
        FleetKeyCmd::Revoke { key } => {
            let all = c.fleet_keys().await?;
            let live: Vec<FleetKey> = all.iter().filter(|k| !k.revoked).cloned().collect();
            let k = match pick(
                &live,
                &key,
                "active fleet key",
                "fleet-key list",
                |k| &k.id,
                |k| k.name.as_str(),
            ) {
                Ok(k) => k.clone(),
                Err(_) => pick(
                    &all,
                    &key,
                    "fleet key",
                    "fleet-key list",
                    |k| &k.id,
                    |k| k.name.as_str(),
                )?
                .clone(),
            };
            c.revoke_fleet_key(&k.id).await?;
            done(ctx, &format!("Revoked fleet key {} ({}).", k.name, k.id))
        }
    }
}
