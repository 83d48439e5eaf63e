//! The `drawbridge-edge` command line.

use crate::enroll::Secret;
use crate::enroll_file::{self, EnrollFile};
use crate::local::{StateDir, SwitchSource};
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

/// Set to `1` for `run` to let released targets on this host's loopback through
/// (tests and single-host demos whose "machine LAN" is 127.0.0.x).
pub const LOOPBACK_LAN_VAR: &str = "DRAWBRIDGE_EDGE_LOOPBACK_LAN";

#[derive(Parser, Debug)]
#[command(name = "drawbridge-edge", version, about = "Drawbridge edge agent.")]
pub struct Cli {
    /// State directory (identity key, enrolment, switch, status).
    #[arg(long, global = true, env = "DRAWBRIDGE_EDGE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enrol this edge with an activation key (or a USB/SD config file, or the fleet key).
    Enroll {
        #[arg(long, required_unless_present = "config")]
        server: Option<String>,
        #[arg(long, conflicts_with_all = ["config", "fleet_key"])]
        activation_key: Option<String>,
        /// Register with the account's fleet key; an admin approves the device.
        #[arg(long, requires = "name", conflicts_with = "config")]
        fleet_key: Option<String>,
        /// Device name (fleet enrolment).
        #[arg(long)]
        name: Option<String>,
        /// A TOML file with `server`, `activation_key` (or `fleet_key` and
        /// `name`) and the server's CA (USB/SD deployment: the portal's and
        /// `drawbridge device config-file`'s file). A used activation key is
        /// removed from it where the medium is writable.
        #[arg(long)]
        config: Option<PathBuf>,
        /// With --config: wait for the file to appear (a medium being mounted).
        #[arg(long, requires = "config")]
        watch: bool,
        /// CA certificate to trust for the server (besides the system roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Run the agent: the edge channel, the tunnels, the forwarding.
    Run {
        /// Read the remote-access switch from this file (`1`/`on` or `0`/`off`, e.g. a GPIO value).
        #[arg(long)]
        switch_file: Option<PathBuf>,
        /// Kernel forwarding: packets the session releases go through a TUN
        /// interface and the host's kernel (root, nftables); default: userspace.
        #[arg(long)]
        tun: bool,
        /// Most historian records kept waiting for the server (the oldest are
        /// dropped, and counted, beyond it).
        #[arg(long, env = "DRAWBRIDGE_EDGE_HISTORIAN_MAX_RECORDS", default_value_t = crate::data::buffer::DEFAULT_MAX_RECORDS, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        historian_max_records: u64,
        /// A new version must connect and authenticate to the control plane
        /// within this many seconds of its start, or the previous one is put back.
        #[arg(long, env = "DRAWBRIDGE_EDGE_UPDATE_HEALTH_SECS", default_value_t = crate::update::DEFAULT_HEALTH_SECS, value_parser = clap::value_parser!(u64).range(5..=600))]
        update_health_secs: u64,
    },
    /// The remote-access switch: `on`, `off` or `status`.
    Switch {
        #[arg(value_parser = ["on", "off", "status"])]
        state: String,
    },
    /// Approve a session waiting for on-site approval (for this device only).
    Approve {
        /// The session's id (with --wait: optional, or its name).
        #[arg(required_unless_present = "wait")]
        session: Option<String>,
        /// Wait until a session asks this edge for approval, then approve it.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit code 1).
        #[arg(long, requires = "wait", value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Refuse a session waiting for on-site approval.
    Refuse { session: String },
    /// Show the connection, the switch and the sessions with their tunnels.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn main() -> anyhow::Result<u8> {
    // The version the binary set (a build may name its own), not the library's.
    let matches = Cli::command().version(crate::version()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let dir = StateDir::resolve(cli.state_dir);
    match cli.command {
        Command::Enroll {
            server,
            activation_key,
            fleet_key,
            name,
            config,
            watch,
            ca_file,
        } => {
            let (server, secret, ca_file) = match &config {
                Some(path) => {
                    if watch {
                        enroll_file::wait_for(path).await;
                    }
                    let f = EnrollFile::read(path)?;
                    let secret = f.secret(path)?;
                    let trust = match ca_file {
                        Some(c) => Some(c),
                        None => f.trust(&dir)?,
                    };
                    (f.server, secret, trust)
                }
                None => {
                    let server = server.context("--server is required")?;
                    let secret = match (activation_key, fleet_key, name) {
                        (Some(k), None, _) => Secret::Activation(k),
                        (None, Some(key), Some(name)) => Secret::Fleet { key, name },
                        _ => anyhow::bail!("give --activation-key, or --fleet-key with --name"),
                    };
                    (server, secret, ca_file)
                }
            };
            let d = crate::enroll::enroll(&dir, &server, ca_file, secret).await?;
            if let Some(path) = &config {
                enroll_file::forget_activation_key(path, &d.device_id);
            }
            println!(
                "enrolled as device {} of account {}",
                d.device_id, d.account_id
            );
            println!(
                "the remote-access switch is OFF; turn it on with `drawbridge-edge switch on`"
            );
            Ok(0)
        }
        Command::Run {
            switch_file,
            tun,
            historian_max_records,
            update_health_secs,
        } => {
            // Tests and single-host demos, whose "machine LAN" is this host's
            // loopback; otherwise loopback is never a target (netstack::policy).
            if std::env::var(LOOPBACK_LAN_VAR).is_ok_and(|v| v == "1") {
                tracing::warn!(
                    "{LOOPBACK_LAN_VAR}=1: released targets on this host's loopback are reachable (tests only)"
                );
                drawbridge_netstack::policy::allow_loopback_lan();
            }
            let source = switch_file
                .map(SwitchSource::File)
                .unwrap_or(SwitchSource::Local);
            // A clean stop on Ctrl-C / SIGTERM: kernel mode removes its interface
            // and nftables table then.
            tokio::select! {
                r = crate::agent::run(dir, source, tun, crate::data::buffer::BufferConfig {
                    max_records: historian_max_records,
                    ..Default::default()
                }, std::time::Duration::from_secs(update_health_secs)) => r?,
                _ = drawbridge_tunnel::shutdown_signal() => tracing::info!("stopping"),
            }
            Ok(0)
        }
        Command::Switch { state } => {
            match state.as_str() {
                "on" => dir.set_switch(true)?,
                "off" => dir.set_switch(false)?,
                _ => {}
            }
            let on = dir.switch_on(&SwitchSource::Local);
            println!(
                "remote access is switched {}",
                if on { "ON" } else { "OFF" }
            );
            Ok(0)
        }
        Command::Approve {
            session,
            wait: false,
            ..
        } => {
            let session = session.context("name the session")?;
            dir.decide(&session, true)?;
            println!("approval of {session} recorded; the running agent sends it");
            Ok(0)
        }
        Command::Approve {
            session, timeout, ..
        } => approve_wait(&dir, session.as_deref(), timeout).await,
        Command::Refuse { session } => {
            dir.decide(&session, false)?;
            println!("refusal of {session} recorded; the running agent sends it");
            Ok(0)
        }
        Command::Status { json } => {
            let s = load_status(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(0);
            }
            println!("device {}", s.device_id);
            let version = if s.version.is_empty() {
                crate::version()
            } else {
                &s.version
            };
            println!("version {version}");
            if let Some(u) = &s.update {
                println!(
                    "update to {}: {}{} ({})",
                    u.version,
                    u.state,
                    if u.message.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", u.message)
                    },
                    time::OffsetDateTime::from_unix_timestamp(u.at)
                        .ok()
                        .and_then(|t| t
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok())
                        .unwrap_or_else(|| u.at.to_string())
                );
            }
            println!(
                "control plane: {}",
                if s.connected {
                    "connected"
                } else {
                    "unreachable"
                }
            );
            println!("remote access: {}", if s.switch_on { "ON" } else { "OFF" });
            if !s.forwarding.is_empty() {
                println!("forwarding: {}", s.forwarding);
            }
            if let Some(b) = s.heap_bytes {
                println!("memory in use: {:.1} MiB", b as f64 / (1024.0 * 1024.0));
            }
            if let Some(d) = &s.data {
                print_data(d);
            }
            if s.sessions.is_empty() {
                println!("no sessions");
            }
            for x in &s.sessions {
                println!(
                    "session {} ({}) {} until {}",
                    x.name, x.session_id, x.state, x.valid_until
                );
                if x.state == "running" && !x.relay.is_empty() {
                    println!("  relay: {}", x.relay);
                }
                for d in &x.desktops {
                    println!(
                        "  desktop {} in a browser: {}{} since {}, {}",
                        d.target,
                        d.user,
                        if d.view_only { " (view only)" } else { "" },
                        d.since,
                        if d.recorded {
                            "recorded"
                        } else {
                            "not recorded"
                        }
                    );
                }
                if x.state == "pending_approval" {
                    println!(
                        "  waits for on-site approval (requested by {}): `drawbridge-edge approve {id}` or `drawbridge-edge refuse {id}`",
                        x.requested_by.as_deref().unwrap_or("someone"),
                        id = x.session_id
                    );
                }
                if let Some(f) = &x.forwarder {
                    println!(
                        "  flows: {} tcp, {} udp; dropped: {} not released, {} bad source, {} malformed, {} unsupported, {} over the flow limit",
                        f.tcp_flows,
                        f.udp_flows,
                        f.dropped_not_released,
                        f.dropped_bad_source,
                        f.dropped_malformed,
                        f.dropped_unsupported_protocol,
                        f.dropped_too_many_flows
                    );
                }
                for p in &x.peers {
                    println!(
                        "  {} {} via {} ({}) ↓{} B ↑{} B dropped {}",
                        p.user,
                        p.overlay_ip,
                        p.path,
                        p.reason,
                        p.bytes_to_device,
                        p.bytes_from_device,
                        p.drops
                    );
                }
            }
            Ok(0)
        }
    }
}

/// The data services' lines of `status`.
fn print_data(d: &crate::data::DataStatus) {
    if d.tags == 0 && d.buffer.pending == 0 {
        println!("tags: none");
    } else {
        let qualities: Vec<String> = d.quality.iter().map(|(q, n)| format!("{n} {q}")).collect();
        let age = d.last_poll_ms.map(|t| {
            let secs = (crate::data::poll::now_ms() - t).max(0) / 1000;
            format!(", last poll {secs} s ago")
        });
        println!(
            "tags: {} ({} polled{}){}",
            d.tags,
            d.polled,
            if qualities.is_empty() {
                String::new()
            } else {
                format!("; last read: {}", qualities.join(", "))
            },
            age.unwrap_or_default()
        );
    }
    println!(
        "historian: {} records waiting for the server, {} dropped (buffer full)",
        d.buffer.pending, d.buffer.dropped
    );
}

/// `approve --wait`: blocks until a session asks, approves it, and reports
/// whether the agent passed the decision on.
async fn approve_wait(
    dir: &StateDir,
    session: Option<&str>,
    timeout: Option<u64>,
) -> anyhow::Result<u8> {
    use crate::approval;
    use std::time::Duration;
    load_status(dir)?;
    eprintln!(
        "waiting for {} to ask for on-site approval…",
        session.unwrap_or("a session")
    );
    let poll = Duration::from_millis(250);
    let Some(s) =
        approval::approve_when_asked(dir, session, timeout.map(Duration::from_secs), poll).await?
    else {
        anyhow::bail!(
            "no session asked for approval within {} s",
            timeout.unwrap_or(0)
        );
    };
    let who = s.requested_by.as_deref().unwrap_or("someone");
    println!(
        "approved session {} ({}) requested by {who}",
        s.name, s.session_id
    );
    if approval::settled(dir, &s.session_id, Duration::from_secs(15), poll).await {
        println!("the control plane has the approval");
    } else {
        println!("approval recorded; the running agent sends it once connected");
    }
    Ok(0)
}

/// The agent's last status; a never-enrolled edge is told to enrol (not to run
/// the agent, which would fail the same way).
fn load_status(dir: &StateDir) -> anyhow::Result<crate::local::Status> {
    dir.device().context(
        "this edge is not enrolled yet: enrol it with `drawbridge-edge enroll --server URL --activation-key KEY` (or --config FILE, or --fleet-key KEY --name NAME), then start `drawbridge-edge run`",
    )?;
    dir.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_never_enrolled_edge_says_to_enrol() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::resolve(Some(tmp.path().join("edge")));
        let err = format!("{:#}", load_status(&dir).unwrap_err());
        assert!(err.contains("not enrolled"), "{err}");
        assert!(err.contains("drawbridge-edge enroll"), "{err}");
        assert!(!err.contains("is `drawbridge-edge run` running"), "{err}");
    }
}
