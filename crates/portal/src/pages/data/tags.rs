//! A device's tags on its page: each shown in words, and for admins the form
//! that covers every field of a `TagSpec` (add, edit, delete). The form is
//! turned into the API's JSON body field by field; the API parses it whole
//! and its refusal (a host outside the device's LAN, a bad poll period, …)
//! comes back as the flash message, with nothing changed.

use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Flash, Form, Posted, after};
use axum::extract::Path;
use axum::http::Method;
use axum::response::Response;
use drawbridge_proto::data::{AlarmRule, LogMode, ModbusFunction, TagSpec, ValueType, WordOrder};
use serde_json::{Map, Value, json};

/// The values of one tag form (empty for a new tag).
#[derive(Debug, Clone, Default)]
pub struct TagForm {
    pub name: String,
    pub description: String,
    pub host: String,
    pub port: String,
    pub unit_id: String,
    pub function: String,
    pub address: String,
    pub value_type: String,
    pub word_order: String,
    pub scale: String,
    pub offset: String,
    pub unit: String,
    pub poll_ms: String,
    pub log_mode: String,
    pub log_deadband: String,
    pub log_period_ms: String,
    pub kpi: bool,
    pub alarm_kind: String,
    pub alarm_high: String,
    pub alarm_low: String,
    pub alarm_deadband: String,
    pub alarm_min_ms: String,
    pub alarm_when: String,
}

impl TagForm {
    /// The form of a new tag, with the API's defaults filled in.
    pub fn new_tag() -> TagForm {
        TagForm {
            port: "502".into(),
            unit_id: "1".into(),
            function: "holding_registers".into(),
            value_type: "u16".into(),
            word_order: "high_first".into(),
            scale: "1".into(),
            offset: "0".into(),
            poll_ms: "1000".into(),
            log_mode: "off".into(),
            alarm_kind: "none".into(),
            alarm_when: "true".into(),
            ..TagForm::default()
        }
    }

    pub fn of(t: &TagSpec) -> TagForm {
        let mut f = TagForm {
            name: t.name.to_string(),
            description: t.description.clone(),
            host: t.source.host.to_string(),
            port: t.source.port.to_string(),
            unit_id: t.source.unit_id.to_string(),
            function: function_str(t.source.function).into(),
            address: t.source.address.to_string(),
            value_type: type_str(t.value_type).into(),
            word_order: match t.word_order {
                WordOrder::HighFirst => "high_first".into(),
                WordOrder::LowFirst => "low_first".into(),
            },
            scale: t.scale.to_string(),
            offset: t.offset.to_string(),
            unit: t.unit.clone(),
            poll_ms: t.poll_ms.to_string(),
            kpi: t.kpi,
            ..TagForm::new_tag()
        };
        match t.log {
            LogMode::Off => f.log_mode = "off".into(),
            LogMode::OnChange { deadband } => {
                f.log_mode = "on_change".into();
                f.log_deadband = deadband.to_string();
            }
            LogMode::Every { period_ms } => {
                f.log_mode = "every".into();
                f.log_period_ms = period_ms.to_string();
            }
        }
        match t.alarm {
            None => f.alarm_kind = "none".into(),
            Some(AlarmRule::Limits {
                high,
                low,
                deadband,
                min_duration_ms,
            }) => {
                f.alarm_kind = "limits".into();
                f.alarm_high = high.map(|h| h.to_string()).unwrap_or_default();
                f.alarm_low = low.map(|l| l.to_string()).unwrap_or_default();
                f.alarm_deadband = deadband.to_string();
                f.alarm_min_ms = min_duration_ms.to_string();
            }
            Some(AlarmRule::State {
                alarm_when,
                min_duration_ms,
            }) => {
                f.alarm_kind = "state".into();
                f.alarm_when = alarm_when.to_string();
                f.alarm_min_ms = min_duration_ms.to_string();
            }
        }
        f
    }
}

fn function_str(f: ModbusFunction) -> &'static str {
    match f {
        ModbusFunction::Coils => "coils",
        ModbusFunction::DiscreteInputs => "discrete_inputs",
        ModbusFunction::HoldingRegisters => "holding_registers",
        ModbusFunction::InputRegisters => "input_registers",
    }
}

fn type_str(t: ValueType) -> &'static str {
    match t {
        ValueType::U16 => "u16",
        ValueType::I16 => "i16",
        ValueType::U32 => "u32",
        ValueType::I32 => "i32",
        ValueType::F32 => "f32",
        ValueType::Bool => "bool",
    }
}

/// One tag as the page lists it.
pub struct TagRow {
    pub name: String,
    pub description: String,
    pub source: String,
    pub value_type: String,
    pub scaling: String,
    pub unit: String,
    pub poll: String,
    pub log: String,
    pub kpi: bool,
    pub alarm: String,
}

impl TagRow {
    pub fn of(t: &TagSpec) -> TagRow {
        let s = &t.source;
        let table = match s.function {
            ModbusFunction::Coils => "coil",
            ModbusFunction::DiscreteInputs => "discrete input",
            ModbusFunction::HoldingRegisters => "holding register",
            ModbusFunction::InputRegisters => "input register",
        };
        let wide = t.value_type.width() == 2;
        TagRow {
            name: t.name.to_string(),
            description: t.description.clone(),
            source: format!(
                "{}:{} unit {} · {table} {}",
                s.host, s.port, s.unit_id, s.address
            ),
            value_type: match (wide, t.word_order) {
                (true, WordOrder::HighFirst) => {
                    format!("{} (high word first)", type_str(t.value_type))
                }
                (true, WordOrder::LowFirst) => {
                    format!("{} (low word first)", type_str(t.value_type))
                }
                _ => type_str(t.value_type).into(),
            },
            scaling: if t.scale == 1.0 && t.offset == 0.0 {
                String::new()
            } else {
                format!("× {} + {}", t.scale, t.offset)
            },
            unit: t.unit.clone(),
            poll: format!("{} ms", t.poll_ms),
            log: match t.log {
                LogMode::Off => "not logged".into(),
                LogMode::OnChange { deadband: 0.0 } => "on change".into(),
                LogMode::OnChange { deadband } => format!("on change > {deadband}"),
                LogMode::Every { period_ms } => format!("every {period_ms} ms"),
            },
            kpi: t.kpi,
            alarm: match t.alarm {
                None => String::new(),
                Some(AlarmRule::Limits {
                    high,
                    low,
                    deadband,
                    min_duration_ms,
                }) => {
                    let mut parts = Vec::new();
                    if let Some(h) = high {
                        parts.push(format!("above {h}"));
                    }
                    if let Some(l) = low {
                        parts.push(format!("below {l}"));
                    }
                    let mut s = parts.join(" or ");
                    if deadband > 0.0 {
                        s.push_str(&format!(", deadband {deadband}"));
                    }
                    if min_duration_ms > 0 {
                        s.push_str(&format!(", for {min_duration_ms} ms"));
                    }
                    s
                }
                Some(AlarmRule::State {
                    alarm_when,
                    min_duration_ms,
                }) => {
                    let mut s = format!("while {alarm_when}");
                    if min_duration_ms > 0 {
                        s.push_str(&format!(", for {min_duration_ms} ms"));
                    }
                    s
                }
            },
        }
    }
}

/// A number field: empty means "not given" (the API's default).
fn number(f: &Form, field: &str, label: &str) -> Result<Option<Value>, String> {
    let Some(text) = f.opt(field) else {
        return Ok(None);
    };
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Some(n.into()));
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Some(json!(x))),
        _ => Err(format!("{label}: {text:?} is not a number")),
    }
}

fn set(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.into(), v);
    }
}

/// The tag form as the API's `TagSpec` JSON. Choices outside their lists are
/// passed on as given (the API refuses them by name).
pub fn tag_body(f: &Form) -> Result<Value, String> {
    let mut source = Map::new();
    source.insert("host".into(), f.get("host").trim().into());
    set(&mut source, "port", number(f, "port", "Port")?);
    set(&mut source, "unit_id", number(f, "unit_id", "Unit id")?);
    source.insert("function".into(), f.get("function").into());
    set(&mut source, "address", number(f, "address", "Address")?);
    let mut t = Map::new();
    t.insert("name".into(), f.get("name").trim().into());
    t.insert("description".into(), f.get("description").trim().into());
    t.insert("source".into(), source.into());
    t.insert("value_type".into(), f.get("value_type").into());
    if let Some(w) = f.opt("word_order") {
        t.insert("word_order".into(), w.into());
    }
    set(&mut t, "scale", number(f, "scale", "Scale")?);
    set(&mut t, "offset", number(f, "offset", "Offset")?);
    t.insert("unit".into(), f.get("unit").trim().into());
    set(&mut t, "poll_ms", number(f, "poll_ms", "Poll period")?);
    let log = match f.get("log_mode") {
        "" | "off" => json!({"mode": "off"}),
        "on_change" => {
            let mut m = Map::new();
            m.insert("mode".into(), "on_change".into());
            set(
                &mut m,
                "deadband",
                number(f, "log_deadband", "Log deadband")?,
            );
            m.into()
        }
        "every" => {
            let Some(p) = number(f, "log_period_ms", "Log period")? else {
                return Err("Log period: needed when logging every period".into());
            };
            json!({"mode": "every", "period_ms": p})
        }
        other => json!({ "mode": other }),
    };
    t.insert("log".into(), log);
    t.insert("kpi".into(), f.checked("kpi").into());
    let alarm = match f.get("alarm_kind") {
        "" | "none" => Value::Null,
        "limits" => {
            let mut m = Map::new();
            m.insert("kind".into(), "limits".into());
            set(&mut m, "high", number(f, "alarm_high", "Alarm high limit")?);
            set(&mut m, "low", number(f, "alarm_low", "Alarm low limit")?);
            set(
                &mut m,
                "deadband",
                number(f, "alarm_deadband", "Alarm deadband")?,
            );
            set(
                &mut m,
                "min_duration_ms",
                number(f, "alarm_min_ms", "Alarm minimum duration")?,
            );
            m.into()
        }
        "state" => {
            let mut m = Map::new();
            m.insert("kind".into(), "state".into());
            m.insert("alarm_when".into(), (f.get("alarm_when") != "false").into());
            set(
                &mut m,
                "min_duration_ms",
                number(f, "alarm_min_ms", "Alarm minimum duration")?,
            );
            m.into()
        }
        other => json!({ "kind": other }),
    };
    t.insert("alarm".into(), alarm);
    Ok(t.into())
}

fn back(id: &str) -> String {
    format!("{PREFIX}/devices/{}#data-tags", enc(id))
}

/// Creates or replaces a tag (admins; the API checks). A refused edit goes
/// back to that tag's edit form.
pub async fn put(Path(id): Path<String>, p: Posted) -> Response {
    let name = p.form.get("name").trim().to_string();
    let edited = p.form.get("editing") == "1" && !name.is_empty();
    let back_on_error = if edited {
        format!("{PREFIX}/devices/{}?edit={}#tag-edit", enc(&id), enc(&name))
    } else {
        back(&id)
    };
    let body = match tag_body(&p.form) {
        Ok(b) => b,
        Err(e) => return Flash::error(e).redirect(&back_on_error),
    };
    let r = p
        .api
        .call::<TagSpec>(
            Method::PUT,
            &format!("/api/v1/devices/{}/tags", enc(&id)),
            Some(body),
        )
        .await;
    let to = if r.is_ok() { back(&id) } else { back_on_error };
    after(
        r,
        &p.headers,
        &to,
        &format!("Tag {name} was saved; the edge polls it within seconds."),
    )
}

/// Deletes a tag (admins; the API checks).
pub async fn delete(Path((id, name)): Path<(String, String)>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{}/tags/{}", enc(&id), enc(&name)),
        )
        .await;
    after(
        r,
        &p.headers,
        &back(&id),
        &format!("Tag {name} was deleted; its stored points stay until retention."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_full_form_becomes_the_tag_it_shows() {
        let f = form(&[
            ("name", "oven.temp"),
            ("description", "Zone 1"),
            ("host", "192.168.1.10"),
            ("port", "1502"),
            ("unit_id", "3"),
            ("function", "input_registers"),
            ("address", "100"),
            ("value_type", "f32"),
            ("word_order", "low_first"),
            ("scale", "0.1"),
            ("offset", "-40"),
            ("unit", "°C"),
            ("poll_ms", "500"),
            ("log_mode", "on_change"),
            ("log_deadband", "0.5"),
            ("kpi", "on"),
            ("alarm_kind", "limits"),
            ("alarm_high", "240"),
            ("alarm_low", ""),
            ("alarm_deadband", "2"),
            ("alarm_min_ms", "5000"),
        ]);
        let body = tag_body(&f).unwrap();
        let t: TagSpec = serde_json::from_value(body).unwrap();
        assert_eq!(t.source.port, 1502);
        assert_eq!(t.source.unit_id, 3);
        assert_eq!(t.word_order, WordOrder::LowFirst);
        assert_eq!((t.scale, t.offset), (0.1, -40.0));
        assert_eq!(t.log, LogMode::OnChange { deadband: 0.5 });
        assert!(t.kpi);
        assert_eq!(
            t.alarm,
            Some(AlarmRule::Limits {
                high: Some(240.0),
                low: None,
                deadband: 2.0,
                min_duration_ms: 5000
            })
        );
        // The edit form of that tag posts the same tag again.
        let again = TagForm::of(&t);
        let f2 = form(&[
            ("name", &again.name),
            ("description", &again.description),
            ("host", &again.host),
            ("port", &again.port),
            ("unit_id", &again.unit_id),
            ("function", &again.function),
            ("address", &again.address),
            ("value_type", &again.value_type),
            ("word_order", &again.word_order),
            ("scale", &again.scale),
            ("offset", &again.offset),
            ("unit", &again.unit),
            ("poll_ms", &again.poll_ms),
            ("log_mode", &again.log_mode),
            ("log_deadband", &again.log_deadband),
            ("log_period_ms", &again.log_period_ms),
            ("kpi", if again.kpi { "on" } else { "" }),
            ("alarm_kind", &again.alarm_kind),
            ("alarm_high", &again.alarm_high),
            ("alarm_low", &again.alarm_low),
            ("alarm_deadband", &again.alarm_deadband),
            ("alarm_min_ms", &again.alarm_min_ms),
            ("alarm_when", &again.alarm_when),
        ]);
        let t2: TagSpec = serde_json::from_value(tag_body(&f2).unwrap()).unwrap();
        assert_eq!(t2, t);
    }

    #[test]
    fn a_state_alarm_and_a_period_log_are_built_and_bad_numbers_named() {
        let f = form(&[
            ("name", "door"),
            ("host", "192.168.1.10"),
            ("function", "coils"),
            ("address", "7"),
            ("value_type", "bool"),
            ("log_mode", "every"),
            ("log_period_ms", "60000"),
            ("alarm_kind", "state"),
            ("alarm_when", "false"),
        ]);
        let t: TagSpec = serde_json::from_value(tag_body(&f).unwrap()).unwrap();
        assert_eq!(t.log, LogMode::Every { period_ms: 60000 });
        assert_eq!(
            t.alarm,
            Some(AlarmRule::State {
                alarm_when: false,
                min_duration_ms: 0
            })
        );
        assert_eq!(t.source.port, 502, "the API's default");
        let bad = form(&[("name", "x"), ("scale", "fast")]);
        let e = tag_body(&bad).unwrap_err();
        assert!(e.contains("Scale") && e.contains("fast"), "{e}");
        let missing = form(&[("name", "x"), ("log_mode", "every")]);
        assert!(tag_body(&missing).unwrap_err().contains("Log period"));
    }
}
