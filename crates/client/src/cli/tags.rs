//! `tag …`: a device's PLC tags (list, set from options or a JSON file, delete).

use super::context::{Ctx, done, emit, print_json, print_table};
use super::data_args::{TagCmd, TagSetArgs};
use crate::table::Table;
use crate::{Error, Result, fail};
use drawbridge_api_client as api;
use drawbridge_proto::ErrorCode;
use drawbridge_proto::api::Device;
use drawbridge_proto::data::{AlarmRule, LogMode, ModbusFunction, TagSpec, WordOrder};
use serde_json::json;
use std::io::Read;
use std::net::IpAddr;

/// Largest tag file read (a tag is well under 2 KiB).
const MAX_TAG_FILE: u64 = 64 * 1024;

pub(super) async fn tag(ctx: &Ctx, cmd: TagCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        TagCmd::List { device } => {
            let d = ctx.device(&device).await?;
            let tags = c.tags(&d.id).await?;
            if ctx.json {
                return print_json(&tags);
            }
            let mut t = Table::new([
                "NAME", "READS", "TYPE", "UNIT", "POLL", "LOG", "KPI", "ALARM",
            ]);
            for tag in &tags {
                t.row([
                    tag.name.to_string(),
                    reads(tag),
                    value_type(tag),
                    dash(&tag.unit),
                    format!("{} ms", tag.poll_ms),
                    log_mode(&tag.log),
                    if tag.kpi { "yes" } else { "-" }.to_string(),
                    alarm(&tag.alarm),
                ]);
            }
            print_table(&t, &format!("Device {} has no tags.", d.name))
        }
        TagCmd::Set(args) => {
            let d = ctx.device(&args.device).await?;
            let spec = spec_from(&args)?;
            let created = match c.put_tag(&d.id, &spec).await {
                Ok(created) => created,
                Err(e) => return Err(refused(e, &spec, &d)),
            };
            emit(ctx, &spec, || {
                format!(
                    "{} tag {} on {}: {} every {} ms.\n",
                    if created { "Created" } else { "Replaced" },
                    spec.name,
                    d.name,
                    reads(&spec),
                    spec.poll_ms
                )
            })
        }
        TagCmd::Delete { device, name } => {
            let d = ctx.device(&device).await?;
            c.delete_tag(&d.id, &name)
                .await
                .map_err(|e| match e.code() {
                    Some(ErrorCode::NotFound) => Error::user(format!(
                        "device {} has no tag {name:?} (see `drawbridge tag list {}`)",
                        d.name, d.name
                    )),
                    _ => e.into(),
                })?;
            done(
                ctx,
                &format!(
                    "Deleted tag {name} of {}: its edge stops reading it; its stored points stay.",
                    d.name
                ),
            )
        }
    }
}

/// A refused tag: the server's reason, and for a host outside the device's
/// LAN subnets what they are and how to change them.
fn refused(e: api::Error, spec: &TagSpec, d: &Device) -> Error {
    let host = IpAddr::V4(spec.source.host);
    if e.code() == Some(ErrorCode::Invalid) && !d.lan_subnets.iter().any(|n| n.contains(&host)) {
        let lan: Vec<String> = d.lan_subnets.iter().map(ToString::to_string).collect();
        return Error::user(format!(
            "the tag was refused: {e}\n(the edge reads only its machine LAN; {}'s LAN subnets are {}; \
             add one with `drawbridge device update {} --lan CIDR …`, which replaces the list)",
            d.name,
            if lan.is_empty() {
                "none".to_string()
            } else {
                lan.join(", ")
            },
            d.name
        ));
    }
    match e.code() {
        Some(ErrorCode::Invalid) => Error::user(format!("the tag was refused: {e}")),
        _ => e.into(),
    }
}

/// The tag the options (or the file) describe, checked as the server checks it.
fn spec_from(a: &TagSetArgs) -> Result<TagSpec> {
    if let Some(path) = &a.from_json {
        let text = read_tag_file(path)?;
        let spec: TagSpec = serde_json::from_str(&text)
            .map_err(|e| Error::user(format!("{}: not a valid tag: {e}", path.display())))?;
        if let Some(n) = &a.name
            && n != spec.name.as_str()
        {
            fail!(
                "the name {n:?} differs from the file's {:?}; give one of them",
                spec.name.as_str()
            );
        }
        return Ok(spec);
    }
    let name = a
        .name
        .as_deref()
        .expect("clap requires NAME without --from-json");
    let function: ModbusFunction = a.function.expect("clap requires --function").into();
    let value_type: drawbridge_proto::data::ValueType =
        a.value_type.expect("clap requires --type").into();
    let mut v = json!({
        "name": name,
        "source": {
            "host": a.host.expect("clap requires --host").to_string(),
            "function": function,
            "address": a.address.expect("clap requires --address"),
        },
        "value_type": value_type,
        "kpi": a.kpi,
    });
    let mut set = |k: &str, x: serde_json::Value| v[k] = x;
    if let Some(w) = a.word_order {
        set("word_order", json!(WordOrder::from(w)));
    }
    if let Some(x) = a.scale {
        set("scale", json!(x));
    }
    if let Some(x) = a.offset {
        set("offset", json!(x));
    }
    if let Some(x) = &a.unit_label {
        set("unit", json!(x));
    }
    if let Some(x) = a.poll_ms {
        set("poll_ms", json!(x));
    }
    if let Some(x) = &a.log {
        set("log", json!(x));
    }
    if let Some(x) = &a.description {
        set("description", json!(x));
    }
    if let Some(rule) = alarm_rule(a)? {
        set("alarm", json!(rule));
    }
    if let Some(p) = a.port {
        v["source"]["port"] = json!(p);
    }
    if let Some(u) = a.unit {
        v["source"]["unit_id"] = json!(u);
    }
    // Non-finite numbers would become JSON null: say which instead.
    for (flag, x) in [
        ("--scale", a.scale),
        ("--offset", a.offset),
        ("--alarm-high", a.alarm_high),
        ("--alarm-low", a.alarm_low),
        ("--alarm-deadband", a.alarm_deadband),
    ] {
        if x.is_some_and(|x| !x.is_finite()) {
            fail!("{flag}: give a finite number");
        }
    }
    serde_json::from_value(v).map_err(|e| Error::user(format!("the tag is not valid: {e}")))
}

fn alarm_rule(a: &TagSetArgs) -> Result<Option<AlarmRule>> {
    let min = a.alarm_min_ms.unwrap_or(0);
    if let Some(when) = a.alarm_when {
        return Ok(Some(AlarmRule::State {
            alarm_when: when,
            min_duration_ms: min,
        }));
    }
    if a.alarm_high.is_some() || a.alarm_low.is_some() {
        return Ok(Some(AlarmRule::Limits {
            high: a.alarm_high,
            low: a.alarm_low,
            deadband: a.alarm_deadband.unwrap_or(0.0),
            min_duration_ms: min,
        }));
    }
    if a.alarm_deadband.is_some() || a.alarm_min_ms.is_some() {
        fail!("--alarm-deadband and --alarm-min-ms need --alarm-high, --alarm-low or --alarm-when");
    }
    Ok(None)
}

fn read_tag_file(path: &std::path::Path) -> Result<String> {
    let io = |source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_TAG_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
    } else {
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_TAG_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
    }
    if text.len() as u64 > MAX_TAG_FILE {
        fail!(
            "{}: larger than {} KiB; a tag is one JSON object",
            path.display(),
            MAX_TAG_FILE / 1024
        );
    }
    Ok(text)
}

// ------------------------------------------------------------------ in words

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// `holding 100 @ 192.168.1.10:502 unit 1`.
pub(super) fn reads(t: &TagSpec) -> String {
    let f = match t.source.function {
        ModbusFunction::HoldingRegisters => "holding",
        ModbusFunction::InputRegisters => "input",
        ModbusFunction::Coils => "coil",
        ModbusFunction::DiscreteInputs => "discrete",
    };
    format!(
        "{f} {} @ {}:{} unit {}",
        t.source.address, t.source.host, t.source.port, t.source.unit_id
    )
}

fn value_type(t: &TagSpec) -> String {
    let ty = serde_json::to_value(t.value_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut s = if t.value_type.width() == 2 && t.word_order == WordOrder::LowFirst {
        format!("{ty} low-first")
    } else {
        ty
    };
    if t.scale != 1.0 || t.offset != 0.0 {
        s.push_str(&format!(" ×{}", t.scale));
        if t.offset != 0.0 {
            s.push_str(&format!(" {:+}", t.offset));
        }
    }
    s
}

fn log_mode(l: &LogMode) -> String {
    match l {
        LogMode::Off => "-".into(),
        LogMode::OnChange { deadband } if *deadband == 0.0 => "change".into(),
        LogMode::OnChange { deadband } => format!("change ±{deadband}"),
        LogMode::Every { period_ms } => format!("every {period_ms} ms"),
    }
}

fn alarm(a: &Option<AlarmRule>) -> String {
    let with_min = |s: String, min: u32| {
        if min > 0 {
            format!("{s} for {min} ms")
        } else {
            s
        }
    };
    match a {
        None => "-".into(),
        Some(AlarmRule::State {
            alarm_when,
            min_duration_ms,
        }) => with_min(format!("when {alarm_when}"), *min_duration_ms),
        Some(AlarmRule::Limits {
            high,
            low,
            deadband,
            min_duration_ms,
        }) => {
            let mut parts = Vec::new();
            if let Some(h) = high {
                parts.push(format!("> {h}"));
            }
            if let Some(l) = low {
                parts.push(format!("< {l}"));
            }
            let mut s = parts.join(" or ");
            if *deadband > 0.0 {
                s.push_str(&format!(" ±{deadband}"));
            }
            with_min(s, *min_duration_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn set_args(extra: &[&str]) -> std::result::Result<TagSetArgs, clap::Error> {
        let mut argv = vec!["drawbridge", "tag", "set", "press", "temp"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Tag(TagCmd::Set(a)) => Ok(*a),
            _ => unreachable!(),
        }
    }

    const BASE: [&str; 8] = [
        "--host",
        "192.168.1.10",
        "--function",
        "holding",
        "--address",
        "100",
        "--type",
        "f32",
    ];

    #[test]
    fn options_make_the_tag_the_api_takes() {
        let mut a = BASE.to_vec();
        a.extend([
            "--word-order",
            "low-first",
            "--offset",
            "-40",
            "--unit-label",
            "°C",
            "--poll-ms",
            "500",
            "--log",
            "change:0.5",
            "--kpi",
            "--alarm-high",
            "80",
            "--alarm-low",
            "-5",
            "--alarm-deadband",
            "2",
            "--alarm-min-ms",
            "3000",
            "--port",
            "5020",
            "--unit",
            "7",
        ]);
        let t = spec_from(&set_args(&a).unwrap()).unwrap();
        assert_eq!(t.name.as_str(), "temp");
        assert_eq!(t.source.port, 5020);
        assert_eq!(t.source.unit_id, 7);
        assert_eq!(t.word_order, WordOrder::LowFirst);
        assert_eq!(t.offset, -40.0);
        assert_eq!(t.log, LogMode::OnChange { deadband: 0.5 });
        assert!(t.kpi);
        assert_eq!(
            t.alarm,
            Some(AlarmRule::Limits {
                high: Some(80.0),
                low: Some(-5.0),
                deadband: 2.0,
                min_duration_ms: 3000
            })
        );
        // Defaults are the API's.
        let t = spec_from(&set_args(&BASE).unwrap()).unwrap();
        assert_eq!((t.source.port, t.source.unit_id, t.poll_ms), (502, 1, 1000));
        assert_eq!(t.log, LogMode::Off);
    }

    #[test]
    fn tags_the_api_would_refuse_are_refused_here_with_the_reason() {
        let bad = |extra: &[&str]| {
            let mut a = BASE.to_vec();
            a.extend_from_slice(extra);
            spec_from(&set_args(&a).unwrap()).unwrap_err().to_string()
        };
        assert!(bad(&["--poll-ms", "50"]).contains("poll_ms"));
        assert!(bad(&["--alarm-deadband", "1"]).contains("--alarm-high"));
        assert!(bad(&["--alarm-when", "true"]).contains("bool"));
        assert!(bad(&["--alarm-low", "5", "--alarm-high", "1"]).contains("low below high"));
        assert!(bad(&["--scale", "inf"]).contains("finite"));
        // clap itself: a missing field, an unknown function, a bad log mode.
        assert!(set_args(&["--host", "192.168.1.10"]).is_err());
        let mut a = BASE.to_vec();
        a[3] = "registers";
        assert!(set_args(&a).is_err());
        let mut a = BASE.to_vec();
        a.extend(["--log", "sometimes"]);
        assert!(set_args(&a).is_err());
        // A coil holding an f32 is no tag.
        let mut a = BASE.to_vec();
        a[3] = "coils";
        assert!(spec_from(&set_args(&a).unwrap()).is_err());
    }

    #[test]
    fn a_json_file_is_a_whole_tag_and_its_name_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.json");
        std::fs::write(
            &f,
            r#"{"name":"temp","source":{"host":"192.168.1.10","function":"input_registers","address":3},"value_type":"i16"}"#,
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let t = spec_from(&set_args(&["--from-json", path]).unwrap()).unwrap();
        assert_eq!(t.source.function, ModbusFunction::InputRegisters);
        let argv = [
            "drawbridge",
            "tag",
            "set",
            "press",
            "other",
            "--from-json",
            path,
        ];
        let Command::Tag(TagCmd::Set(a)) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        assert!(spec_from(&a).unwrap_err().to_string().contains("differs"));
        // Options and a file do not mix.
        assert!(set_args(&["--from-json", path, "--kpi"]).is_err());
        std::fs::write(&f, "{}").unwrap();
        assert!(spec_from(&set_args(&["--from-json", path]).unwrap()).is_err());
    }
}
