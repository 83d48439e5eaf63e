//! `lab-bench`: Drawbridge side by side with wireguard-go, boringtun-cli, OpenVPN
//! and onetun, between the same lab namespaces, in one run. Started by `bench/run`
//! (root only); prints a markdown table and writes it to BENCHMARKS.md (the file's
//! `## ` sections, the load tool's figures, are kept after it).
//!
//! ```text
//! lab-bench [--out FILE] [--seconds N] [--only ROW,ROW]
//! ```
//!
//! `--seconds` shortens the iperf3 runs and `--only` picks rows (direct, relay,
//! userspace, wireguard-go, boringtun, openvpn, onetun) for trying things out;
//! BENCHMARKS.md holds a full run with the defaults.
//!
//! Every row is one TCP stream of iperf3 (`-t N`, default 10 s) from the office
//! host to `iperf3 -s` on the machine LAN (192.168.1.10:5201), and `ping -c 20 -i 0.2`
//! to the same address. Drawbridge runs in the lab's own topology (cone NAT on
//! both sides for the direct path, symmetric NAT on both sides for the relay); the
//! baselines run between the same office and plant hosts, over the same NAT
//! routers, the plant host routing (and masquerading) to the LAN.

mod baselines;
mod connects;
mod crowd;
mod drawbridge;
mod exec;
mod load;
mod measure;
mod report;

use crate::baselines::Baselines;
use crate::drawbridge::{
    connect, drawbridge_row, end_session, path_of, release_icmp, samples, start_iperf_server,
    start_session,
};
use crate::exec::until;
use crate::load::{contention, start_cpu_sampler};
use crate::report::{Machine, Report, Row, RowKind};
use anyhow::{Context, Result, bail};
use drawbridge_lab::topology::{Lab, Nat, PLC_IP};
use drawbridge_lab::{Client, Proc};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const IPERF_PORT: u16 = 5201;
/// `-L` forward of `drawbridge connect` (userspace row).
pub(crate) const DB_LOCAL_PORT: u16 = 15201;
/// onetun's local forward.
pub(crate) const ONETUN_LOCAL_PORT: u16 = 15202;
pub(crate) const PING_COUNT: u32 = 20;
/// The office router's and the plant router's WAN addresses (full cone: UDP
/// arriving there goes to the host behind).
pub(crate) const OFFICE_WAN: &str = "10.0.1.2";
pub(crate) const PLANT_WAN: &str = "10.0.2.2";
pub(crate) const WG_PORT_OFFICE: u16 = 51900;
pub(crate) const WG_PORT_PLANT: u16 = 51901;
pub(crate) const OVPN_PORT: u16 = 1194;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("lab-bench: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) struct Opts {
    pub(crate) out: PathBuf,
    pub(crate) seconds: u32,
    /// Only these rows (`--only direct,onetun`); all when empty.
    pub(crate) only: Vec<RowKind>,
}

impl Opts {
    pub(crate) fn wants(&self, k: RowKind) -> bool {
        self.only.is_empty() || self.only.contains(&k)
    }
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("BENCHMARKS.md"),
        seconds: 10,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => o.out = args.next().context("--out FILE")?.into(),
            "--seconds" => {
                o.seconds = args
                    .next()
                    .context("--seconds N")?
                    .parse()
                    .context("--seconds N")?
            }
            "--only" => {
                for name in args.next().context("--only ROW,ROW")?.split(',') {
                    o.only.push(
                        RowKind::ALL
                            .into_iter()
                            .find(|k| k.key() == name)
                            .with_context(|| {
                                format!(
                                    "--only: {name:?} is none of {}",
                                    RowKind::ALL.map(RowKind::key).join(", ")
                                )
                            })?,
                    );
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: lab-bench [--out FILE] [--seconds N] [--only ROW,ROW]   (root; see bench/run)\nrows: {}",
                    RowKind::ALL.map(RowKind::key).join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

fn real_main() -> Result<()> {
    let opts = opts()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "must run as root: it creates network namespaces, veth links, nftables rules and TUN interfaces (run bench/run as root)"
        );
    }
    // The binaries' logs carry the timestamps the direct-path figure is read from.
    if std::env::var_os("DRAWBRIDGE_LAB_LOG").is_none() {
        // SAFETY: nothing else runs yet (no threads have been started).
        unsafe {
            std::env::set_var(
                "DRAWBRIDGE_LAB_LOG",
                "warn,drawbridge_tunnel=debug,drawbridge_relay=debug",
            );
            std::env::set_var("NO_COLOR", "1");
        }
    }
    let tools = Tools::find()?;
    let mut report = Report {
        seconds: opts.seconds,
        machine: Machine::read(&tools),
        ..Report::default()
    };
    start_cpu_sampler();
    report.contention.push(contention("start"));

    if RowKind::ALL
        .into_iter()
        .any(|k| k != RowKind::Relay && k != RowKind::DirectKernel && opts.wants(k))
    {
        eprintln!("== lab with cone NAT on both sides (direct path, baselines)");
        cone_lab(&tools, &opts, &mut report)?;
        report.contention.push(contention("after the cone lab"));
    }
    if opts.wants(RowKind::DirectKernel) {
        eprintln!("== lab with cone NAT on both sides, the edge in kernel mode");
        kernel_lab(&opts, &mut report)?;
    }
    if opts.wants(RowKind::Relay) {
        eprintln!("== lab with symmetric NAT on both sides (relay)");
        relay_lab(&opts, &mut report)?;
    }
    report.contention.push(contention("end"));

    let text = report.markdown();
    println!("{text}");
    let kept = std::fs::read_to_string(&opts.out).unwrap_or_default();
    std::fs::write(&opts.out, report::merged(&kept, &text))
        .with_context(|| format!("writing {}", opts.out.display()))?;
    eprintln!("written to {}", opts.out.display());
    if opts.only.is_empty() && report.ratios().contains("n/a") {
        bail!("some figures are missing (see the table)");
    }
    Ok(())
}

pub(crate) struct Tools {
    pub(crate) boringtun: PathBuf,
    pub(crate) onetun: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        for t in [
            "iperf3",
            "ping",
            "wireguard-go",
            "wg",
            "openvpn",
            "nft",
            "ip",
        ] {
            which(t).with_context(|| format!("{t} is not installed (bench/run installs it)"))?;
        }
        Ok(Tools {
            boringtun: which("boringtun-cli")
                .context("boringtun-cli is not installed (bench/run installs it)")?,
            onetun: which("onetun").context("onetun is not installed (bench/run installs it)")?,
        })
    }
}

/// A program in `DRAWBRIDGE_BENCH_TOOLS` (bench/run's `cargo install` root) or on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("DRAWBRIDGE_BENCH_TOOLS") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub(crate) fn version(prog: &Path, arg: &str) -> String {
    Command::new(prog)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

// The two labs of a run.

fn cone_lab(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let (_iperf, client) = prepare(&lab)?;

    if opts.wants(RowKind::Direct) {
        // Drawbridge, TUN mode, direct path; the last session start is measured.
        eprintln!("-- Drawbridge direct (TUN)");
        let (mut conn, sid) = samples(&lab, &client, "direct", true, &mut report.timings.direct)?;
        report.rows.push(Row::new(
            RowKind::Direct,
            drawbridge_row(&lab, &client, PLC_IP, IPERF_PORT, opts.seconds, true),
        ));
        conn.interrupt();
        end_session(&lab, &sid);
        eprintln!("-- connect → first reply, cone NAT");
        let mut times = connects::ConnectTimes::default();
        connects::measure(&lab, &client, "direct", &mut times);
        report.connects.push(("cone NAT (direct)", times));
    }

    if opts.wants(RowKind::Userspace) {
        // Drawbridge, userspace `-L` forward, direct path.
        eprintln!("-- Drawbridge userspace -L");
        let sid = lab.session_with(
            "bench-userspace",
            json!([{"address": PLC_IP, "protocol": "tcp", "ports": IPERF_PORT.to_string()}]),
        );
        start_session(&lab, &sid)?;
        let fwd = format!("127.0.0.1:{DB_LOCAL_PORT}:{PLC_IP}:{IPERF_PORT}");
        let mut conn = connect(&lab, &client, &sid, &["-L", &fwd], "connect-userspace.log");
        let _ = until(
            "the userspace client reports the direct path",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || path_of(&client).0 == "direct",
        );
        let mut f = drawbridge_row(
            &lab,
            &client,
            "127.0.0.1",
            DB_LOCAL_PORT,
            opts.seconds,
            false,
        );
        f.ping_note = Some("n/a: -L forwards TCP only".into());
        report.rows.push(Row::new(RowKind::Userspace, f));
        conn.interrupt();
        end_session(&lab, &sid);
        eprintln!("-- many peers on one edge");
        for sessions in [1, crowd::SESSIONS] {
            let peers = if sessions == 1 {
                crowd::CLIENTS
            } else {
                sessions
            };
            let c = crowd::measure(&lab, &client, sessions, peers, opts.seconds);
            report.crowds.push(c);
        }
    }

    // Baselines between the same namespaces.
    let base = Baselines::prepare(&lab)?;
    if opts.wants(RowKind::WireguardGo) || opts.wants(RowKind::Onetun) {
        eprintln!("-- wireguard-go (and onetun against it)");
        let (wg, onetun) = base.wireguard_go(&lab, tools, opts);
        if let Some(wg) = wg {
            report.rows.push(Row::new(RowKind::WireguardGo, wg));
        }
        if let Some(ot) = onetun {
            report.rows.push(Row::new(RowKind::Onetun, ot));
        }
    }
    if opts.wants(RowKind::Boringtun) {
        eprintln!("-- boringtun-cli");
        report.rows.push(Row::new(
            RowKind::Boringtun,
            base.boringtun(&lab, tools, opts.seconds),
        ));
    }
    if opts.wants(RowKind::Openvpn) {
        eprintln!("-- OpenVPN");
        report
            .rows
            .push(Row::new(RowKind::Openvpn, base.openvpn(&lab, opts.seconds)));
    }
    Ok(())
}

/// What every Drawbridge row's lab needs: ICMP released (for ping), `iperf3 -s` on the
/// machine LAN, and the engineer logged in on the office host.
fn prepare(lab: &Lab) -> Result<(Proc, Client)> {
    release_icmp(lab)?;
    let iperf = start_iperf_server(lab)?;
    let client = Client::login(
        &lab.office.host,
        &lab.server,
        &lab.dir.path().join("client"),
    );
    Ok((iperf, client))
}

fn kernel_lab(opts: &Opts, report: &mut Report) -> Result<()> {
    let lab = Lab::with_edge_args(Nat::Cone, Nat::Cone, &["--tun"]);
    let (_iperf, client) = prepare(&lab)?;
    eprintln!("-- Drawbridge direct (TUN; edge kernel mode)");
    let sid = lab.session_with("bench-kernel", crate::drawbridge::drawbridge_targets());
    start_session(&lab, &sid)?;
    let mut conn = connect(&lab, &client, &sid, &["--tun"], "connect-kernel.log");
    let _ = until(
        "the client reports the direct path",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || path_of(&client).0 == "direct",
    );
    let f = drawbridge_row(&lab, &client, PLC_IP, IPERF_PORT, opts.seconds, true);
    report.rows.push(Row::new(RowKind::DirectKernel, f));
    conn.interrupt();
    end_session(&lab, &sid);
    Ok(())
}

fn relay_lab(opts: &Opts, report: &mut Report) -> Result<()> {
    let lab = Lab::new(Nat::Symmetric, Nat::Symmetric);
    let (_iperf, client) = prepare(&lab)?;
    eprintln!("-- Drawbridge via relay (TUN)");
    let (mut conn, sid) = samples(&lab, &client, "relay", false, &mut report.timings.relay)?;
    // Give hole punching its chance to (not) happen before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let f = drawbridge_row(&lab, &client, PLC_IP, IPERF_PORT, opts.seconds, true);
    if !f.path.starts_with("relay") {
        eprintln!("   warning: not on the relay: {}", f.path);
    }
    report.rows.push(Row::new(RowKind::Relay, f));
    conn.interrupt();
    end_session(&lab, &sid);
    eprintln!("-- connect → first reply, symmetric NAT (relay)");
    let mut times = connects::ConnectTimes::default();
    connects::measure(&lab, &client, "relay", &mut times);
    report.connects.push(("symmetric NAT (relay)", times));
    Ok(())
}
