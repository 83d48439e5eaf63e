//! The clap types of the data services' and notifications' commands (`tag`,
//! `data`, `kpi`, `alarm`, `notify`, `webhook`) and the value parsers only they use.

use clap::{Args, Subcommand, ValueEnum};
use drawbridge_proto::data::{LogMode, ModbusFunction, ValueType, WordOrder};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use time::OffsetDateTime;

#[derive(Subcommand, Debug)]
pub enum TagCmd {
    /// List a device's tags: what its edge reads from the PLCs.
    List { device: String },
    /// Create a tag, or replace the one of that name whole (admins). The host
    /// must be in the device's LAN subnets; the edge polls it within seconds.
    Set(Box<TagSetArgs>),
    /// Delete a tag (admins): the edge stops reading it, its alarms end; its
    /// stored points stay until retention or `drawbridge data delete`.
    Delete { device: String, name: String },
}

/// Every field of a tag (docs/data-services.md), or a whole one from a JSON file.
#[derive(Args, Debug)]
pub struct TagSetArgs {
    pub device: String,
    /// The tag's name: 1-64 of A-Z a-z 0-9 . _ - (with --from-json the file's;
    /// given as well, the two must agree).
    #[arg(required_unless_present = "from_json")]
    pub name: Option<String>,
    /// A whole tag as JSON (the API's TagSpec), `-` for standard input. Replaces
    /// every option below.
    #[arg(long, value_name = "FILE", conflicts_with_all = TAG_FIELD_ARGS)]
    pub from_json: Option<PathBuf>,
    /// The PLC's IPv4 address (in the device's LAN subnets).
    #[arg(long, value_name = "IP", required_unless_present = "from_json")]
    pub host: Option<Ipv4Addr>,
    /// Modbus TCP port [default: 502].
    #[arg(long)]
    pub port: Option<u16>,
    /// Modbus unit id [default: 1].
    #[arg(long, value_name = "ID")]
    pub unit: Option<u8>,
    /// Which table: holding or input registers, coils or discrete inputs (these two bool only).
    #[arg(long, value_enum, required_unless_present = "from_json")]
    pub function: Option<FunctionArg>,
    /// The first register or bit (0-based protocol address).
    #[arg(long, value_name = "N", required_unless_present = "from_json")]
    pub address: Option<u16>,
    /// How the value is read (u32, i32 and f32 take two registers).
    #[arg(long = "type", value_enum, required_unless_present = "from_json")]
    pub value_type: Option<TypeArg>,
    /// For 32-bit values: which register holds the high word [default: high-first].
    #[arg(long, value_enum)]
    pub word_order: Option<WordOrderArg>,
    /// value = raw × scale + offset [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    pub scale: Option<f64>,
    /// Added after scaling [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub offset: Option<f64>,
    /// The engineering unit shown with values, e.g. °C or rpm (at most 16 characters).
    #[arg(long, value_name = "TEXT")]
    pub unit_label: Option<String>,
    /// Poll period, 100 ms to 1 h [default: 1000].
    #[arg(long, value_name = "MS")]
    pub poll_ms: Option<u32>,
    /// Historian: off, change (every change and quality change), change:DEADBAND
    /// (a move by more than DEADBAND) or every:MS (one value per period) [default: off].
    #[arg(long, value_name = "MODE", value_parser = parse_log_mode)]
    pub log: Option<LogMode>,
    /// Show the value live (at most 16 KPI tags per device).
    #[arg(long)]
    pub kpi: bool,
    /// Alarm above this value.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub alarm_high: Option<f64>,
    /// Alarm below this value.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub alarm_low: Option<f64>,
    /// Back to normal only once inside the limits by more than this [default: 0].
    #[arg(long, value_name = "X")]
    pub alarm_deadband: Option<f64>,
    /// The condition must hold this long before the alarm is raised [default: 0].
    #[arg(long, value_name = "MS")]
    pub alarm_min_ms: Option<u32>,
    /// For bool tags: alarm while the value is this.
    #[arg(long, value_name = "true|false", value_parser = parse_bool,
        conflicts_with_all = ["alarm_high", "alarm_low", "alarm_deadband"])]
    pub alarm_when: Option<bool>,
    /// What the tag is, for people (at most 256 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// The options --from-json replaces.
const TAG_FIELD_ARGS: [&str; 19] = [
    "host",
    "port",
    "unit",
    "function",
    "address",
    "value_type",
    "word_order",
    "scale",
    "offset",
    "unit_label",
    "poll_ms",
    "log",
    "kpi",
    "alarm_high",
    "alarm_low",
    "alarm_deadband",
    "alarm_min_ms",
    "alarm_when",
    "description",
];

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FunctionArg {
    /// Holding registers (function 3).
    Holding,
    /// Input registers (function 4).
    Input,
    /// Coils (function 1), bool only.
    Coils,
    /// Discrete inputs (function 2), bool only.
    Discrete,
}

impl From<FunctionArg> for ModbusFunction {
    fn from(f: FunctionArg) -> Self {
        match f {
            FunctionArg::Holding => ModbusFunction::HoldingRegisters,
            FunctionArg::Input => ModbusFunction::InputRegisters,
            FunctionArg::Coils => ModbusFunction::Coils,
            FunctionArg::Discrete => ModbusFunction::DiscreteInputs,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TypeArg {
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

impl From<TypeArg> for ValueType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::U16 => ValueType::U16,
            TypeArg::I16 => ValueType::I16,
            TypeArg::U32 => ValueType::U32,
            TypeArg::I32 => ValueType::I32,
            TypeArg::F32 => ValueType::F32,
            TypeArg::Bool => ValueType::Bool,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum WordOrderArg {
    HighFirst,
    LowFirst,
}

impl From<WordOrderArg> for WordOrder {
    fn from(w: WordOrderArg) -> Self {
        match w {
            WordOrderArg::HighFirst => WordOrder::HighFirst,
            WordOrderArg::LowFirst => WordOrder::LowFirst,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// What the historian holds for a device: points per tag, first and last,
    /// and what its edge still buffers or had to drop.
    Status { device: String },
    /// One tag's points in a time range, oldest first: a table (printed once
    /// every point is read), or --csv or --json (written page by page).
    Get {
        device: String,
        tag: String,
        /// Points at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = super::args::parse_time)]
        from: Option<OffsetDateTime>,
        /// Points before this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = super::args::parse_time)]
        to: Option<OffsetDateTime>,
        /// At most this many points (default: every point of the range, page by page).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// CSV with the header time,tag,value,quality.
        #[arg(long)]
        csv: bool,
    },
    /// Fetch every point of the account not fetched yet (the mailbox), page by
    /// page until the server has no more, as JSON lines. With --cursor-file the
    /// position is kept there after each page, and the next run continues
    /// after the last page written (see docs/data-services.md).
    Sync {
        /// Where the cursor is kept (read at the start if it exists, replaced
        /// atomically after each page is written).
        #[arg(long, value_name = "FILE")]
        cursor_file: Option<PathBuf>,
        /// Start after this cursor instead (nothing is kept).
        #[arg(long, value_name = "CURSOR", conflicts_with = "cursor_file")]
        after: Option<String>,
        /// Append the points to this file (JSON lines, flushed to disk after
        /// each page) instead of writing them to standard output.
        #[arg(long, short = 'o', value_name = "FILE.jsonl")]
        out: Option<PathBuf>,
        /// Points per request, 1-10000 [default: 10000].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
        page_size: Option<u32>,
    },
    /// Forget the account's points up to and including a cursor from a sync (admins).
    Delete {
        #[arg(long, value_name = "CURSOR")]
        up_to: String,
    },
}

#[derive(Args, Debug)]
pub struct KpiArgs {
    pub device: String,
    /// Follow the values live (server-sent events) and print each change until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Subcommand, Debug)]
pub enum AlarmCmd {
    /// Alarms not ended yet, newest first (every device you may see, or one).
    List {
        /// Ended alarms too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        device: Option<String>,
    },
    /// A device's alarm history: raised, acknowledged (who, comment), returned, ended.
    History { device: String },
    /// Acknowledge an alarm by its id (admins, users with a full or restricted grant).
    Ack {
        id: String,
        /// Kept with the acknowledgement (at most 1000 characters).
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NotifyCmd {
    /// Who is told by e-mail of what, the offline threshold, and whether this
    /// server sends e-mail at all.
    Show,
    /// Replace a kind's extra e-mail recipients (`notify set alarm_raised a@x b@y`),
    /// or empty the list with --clear KIND.
    Set {
        /// An event kind, e.g. alarm_raised (see `drawbridge notify show`).
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        kind: Option<String>,
        /// The addresses (at most 50).
        #[arg(value_name = "EMAIL", required_unless_present = "clear")]
        emails: Vec<String>,
        /// Empty this kind's list.
        #[arg(long, value_name = "KIND")]
        clear: Option<String>,
    },
    /// Report a device offline longer than this many minutes (0: never; at most 43200).
    OfflineMinutes { minutes: u32 },
}

#[derive(Subcommand, Debug)]
pub enum WebhookCmd {
    /// The account's webhooks (their secrets are not shown).
    List,
    /// Add a webhook (https, a public address unless the server allows private
    /// ones); prints its signing secret once.
    Create {
        url: String,
        /// Event kinds, comma-separated, e.g. alarm_raised,alarm_returned
        /// (see `drawbridge notify show`).
        #[arg(long, value_delimiter = ',', required = true, value_name = "KIND,…")]
        events: Vec<String>,
    },
    /// Change a webhook (by id or URL). Enabling clears its failure record;
    /// disabling drops what is queued for it.
    Update {
        webhook: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',', value_name = "KIND,…")]
        events: Option<Vec<String>>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete a webhook (by id or URL); what is queued for it is dropped.
    Delete { webhook: String },
}

// ------------------------------------------------------------------ parsers

/// `off`, `change`, `change:DEADBAND`, `every:MS`.
pub fn parse_log_mode(s: &str) -> Result<LogMode, String> {
    let bad = || format!("{s:?}: use off, change, change:DEADBAND or every:MS");
    let (mode, arg) = match s.split_once(':') {
        Some((m, a)) => (m, Some(a)),
        None => (s, None),
    };
    match (mode, arg) {
        ("off", None) => Ok(LogMode::Off),
        ("change", None) => Ok(LogMode::OnChange { deadband: 0.0 }),
        ("change", Some(d)) => {
            let deadband: f64 = d.parse().map_err(|_| bad())?;
            if !deadband.is_finite() || deadband < 0.0 {
                return Err(format!("{s:?}: the deadband is a number, 0 or more"));
            }
            Ok(LogMode::OnChange { deadband })
        }
        ("every", Some(p)) => Ok(LogMode::Every {
            period_ms: p.parse().map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?}: use true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_modes_parse() {
        assert_eq!(parse_log_mode("off").unwrap(), LogMode::Off);
        assert_eq!(
            parse_log_mode("change").unwrap(),
            LogMode::OnChange { deadband: 0.0 }
        );
        assert_eq!(
            parse_log_mode("change:0.5").unwrap(),
            LogMode::OnChange { deadband: 0.5 }
        );
        assert_eq!(
            parse_log_mode("every:5000").unwrap(),
            LogMode::Every { period_ms: 5000 }
        );
        for bad in [
            "",
            "on",
            "change:",
            "change:-1",
            "change:nan",
            "every",
            "every:x",
            "off:1",
        ] {
            assert!(parse_log_mode(bad).is_err(), "{bad}");
        }
    }
}
