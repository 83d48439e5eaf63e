//! The baselines between the same namespaces: wireguard-go, boringtun-cli, OpenVPN and onetun.

use crate::exec::{Daemon, check, until};
use crate::measure::{Figures, measure};
use crate::report::RowKind;
use crate::{
    IPERF_PORT, OFFICE_WAN, ONETUN_LOCAL_PORT, OVPN_PORT, Opts, PLANT_WAN, Tools, WG_PORT_OFFICE,
    WG_PORT_PLANT,
};
use anyhow::{Context, Result, bail};
use drawbridge_lab::Netns;
use drawbridge_lab::netns::unique;
use drawbridge_lab::topology::{Lab, PLC_IP};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) struct Baselines {
    pub(crate) dir: PathBuf,
}

fn wg_keypair() -> Result<(String, String)> {
    let private = check(Command::new("wg").arg("genkey"))?.trim().to_string();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("wg pubkey")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn secret_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A userspace WireGuard implementation driven by `wg` over its UAPI socket.
#[derive(Clone, Copy)]
enum WgImpl {
    WireguardGo,
    Boringtun,
}

/// One end of a WireGuard tunnel: its daemon and interface.
struct WgEnd {
    pub(crate) _daemon: Daemon,
    pub(crate) iface: String,
}

impl Baselines {
    /// The plant host routes tunnel traffic to the LAN, masqueraded (the LAN
    /// devices know no route back to the tunnel addresses).
    pub(crate) fn prepare(lab: &Lab) -> Result<Baselines> {
        let host = &lab.plant.host;
        host.sysctl("net.ipv4.ip_forward=1");
        host.nft(
            "table ip benchnat {\n  chain post {\n    type nat hook postrouting priority 100;\n    ip saddr 10.200.0.0/14 ip daddr 192.168.1.0/24 masquerade\n  }\n}\n",
        );
        let dir = lab.dir.path().join("baselines");
        std::fs::create_dir_all(&dir)?;
        Ok(Baselines { dir })
    }

    fn wg_end(&self, ns: &Netns, imp: WgImpl, tools: &Tools, tag: &str) -> Result<WgEnd> {
        let iface = unique(tag);
        let log = self.dir.join(format!("{iface}.log"));
        let mut cmd = match imp {
            WgImpl::WireguardGo => {
                let mut c = ns.command("wireguard-go");
                c.args(["-f", &iface]);
                c
            }
            WgImpl::Boringtun => {
                let mut c = ns.command(&tools.boringtun);
                c.args(["--foreground", "--disable-drop-privileges", "--log"])
                    .arg(self.dir.join(format!("{iface}.boringtun.log")))
                    .arg(&iface);
                c
            }
        };
        cmd.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        let mut daemon = Daemon::spawn(&mut cmd, &log);
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        daemon.uapi = Some(sock.clone());
        until(
            "the WireGuard daemon made its interface and socket",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                sock.exists()
                    && Command::new("ip")
                        .args(["-n", ns.name(), "link", "show", &iface])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
            },
        )?;
        Ok(WgEnd {
            _daemon: daemon,
            iface,
        })
    }

    /// Office and plant ends of one implementation on `10.<net>.0.0/24`; the
    /// plant end also admits `extra` (onetun's key, as 10.<net>.0.3).
    fn wg_pair(
        &self,
        lab: &Lab,
        imp: WgImpl,
        tools: &Tools,
        net: u8,
        extra: Option<&str>,
    ) -> Result<(WgEnd, WgEnd, String)> {
        let (o_priv, o_pub) = wg_keypair()?;
        let (p_priv, p_pub) = wg_keypair()?;
        let (office, plant) = (&lab.office.host, &lab.plant.host);
        let o = self.wg_end(office, imp, tools, "bwo")?;
        let p = self.wg_end(plant, imp, tools, "bwp")?;
        let o_key = self.dir.join(format!("{}.key", o.iface));
        let p_key = self.dir.join(format!("{}.key", p.iface));
        secret_file(&o_key, &o_priv)?;
        secret_file(&p_key, &p_priv)?;
        check(
            office
                .command("wg")
                .args(["set", &o.iface, "listen-port", &WG_PORT_OFFICE.to_string()])
                .arg("private-key")
                .arg(&o_key)
                .args([
                    "peer",
                    &p_pub,
                    "endpoint",
                    &format!("{PLANT_WAN}:{WG_PORT_PLANT}"),
                    "allowed-ips",
                    &format!("10.{net}.0.0/24,192.168.1.0/24"),
                    "persistent-keepalive",
                    "25",
                ]),
        )?;
        check(
            plant
                .command("wg")
                .args(["set", &p.iface, "listen-port", &WG_PORT_PLANT.to_string()])
                .arg("private-key")
                .arg(&p_key)
                .args([
                    "peer",
                    &o_pub,
                    "endpoint",
                    &format!("{OFFICE_WAN}:{WG_PORT_OFFICE}"),
                    "allowed-ips",
                    &format!("10.{net}.0.1/32"),
                    "persistent-keepalive",
                    "25",
                ]),
        )?;
        if let Some(k) = extra {
            check(plant.command("wg").args([
                "set",
                &p.iface,
                "peer",
                k,
                "allowed-ips",
                &format!("10.{net}.0.3/32"),
            ]))?;
        }
        office.ip(&["addr", "add", &format!("10.{net}.0.1/24"), "dev", &o.iface]);
        office.ip(&["link", "set", "mtu", "1420", "up", "dev", &o.iface]);
        office.ip(&["route", "add", "192.168.1.0/24", "dev", &o.iface]);
        plant.ip(&["addr", "add", &format!("10.{net}.0.2/24"), "dev", &p.iface]);
        plant.ip(&["link", "set", "mtu", "1420", "up", "dev", &p.iface]);
        Ok((o, p, p_pub))
    }

    fn path_note(ns: &Netns, iface: &str) -> String {
        let eps = check(ns.command("wg").args(["show", iface, "endpoints"])).unwrap_or_default();
        let ep = eps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect::<Vec<_>>()
            .join(", ");
        format!("direct UDP (peer at {ep})")
    }

    /// wireguard-go on both ends; then onetun against the plant end.
    pub(crate) fn wireguard_go(
        &self,
        lab: &Lab,
        tools: &Tools,
        opts: &Opts,
    ) -> (Option<Figures>, Option<Figures>) {
        let secs = opts.seconds;
        let run = || -> Result<(Option<Figures>, Option<Figures>)> {
            let (ot_priv, ot_pub) = wg_keypair()?;
            let (o, _p, p_pub) =
                self.wg_pair(lab, WgImpl::WireguardGo, tools, 200, Some(&ot_pub))?;
            let wg = opts.wants(RowKind::WireguardGo).then(|| {
                let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
                f.path = Self::path_note(&lab.office.host, &o.iface);
                f
            });
            if !opts.wants(RowKind::Onetun) {
                return Ok((wg, None));
            }
            eprintln!("-- onetun");
            let key = self.dir.join("onetun.key");
            secret_file(&key, &ot_priv)?;
            let log = self.dir.join("onetun.log");
            let _onetun = Daemon::spawn(
                lab.office
                    .host
                    .command(&tools.onetun)
                    .arg(format!(
                        "127.0.0.1:{ONETUN_LOCAL_PORT}:{PLC_IP}:{IPERF_PORT}:TCP"
                    ))
                    .args([
                        "--endpoint-addr",
                        &format!("{PLANT_WAN}:{WG_PORT_PLANT}"),
                        "--endpoint-public-key",
                        &p_pub,
                        "--private-key-file",
                    ])
                    .arg(&key)
                    .args([
                        "--source-peer-ip",
                        "10.200.0.3",
                        "--keep-alive",
                        "25",
                        "--log",
                        "warn",
                    ]),
                &log,
            );
            let mut ot = measure(
                &lab.office.host,
                "127.0.0.1",
                ONETUN_LOCAL_PORT,
                secs,
                false,
            );
            let lost = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("Failed to read event bus")
                .count();
            ot.path = format!(
                "direct UDP, to the wireguard-go peer on the plant host; onetun logged {lost} × \"Failed to read event bus\" (its internal broadcast bus lagged: packets lost inside onetun)"
            );
            ot.ping_note = Some("n/a: onetun forwards TCP/UDP ports only".into());
            Ok((wg, Some(ot)))
        };
        run().unwrap_or_else(|e| {
            let f = Figures {
                error: Some(format!("{e:#}")),
                ..Figures::default()
            };
            (
                opts.wants(RowKind::WireguardGo).then(|| f.clone()),
                opts.wants(RowKind::Onetun).then_some(f),
            )
        })
    }

    pub(crate) fn boringtun(&self, lab: &Lab, tools: &Tools, secs: u32) -> Figures {
        let run = || -> Result<Figures> {
            let (o, _p, _) = self.wg_pair(lab, WgImpl::Boringtun, tools, 201, None)?;
            let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
            f.path = Self::path_note(&lab.office.host, &o.iface);
            Ok(f)
        };
        run().unwrap_or_else(|e| Figures {
            error: Some(format!("{e:#}")),
            ..Figures::default()
        })
    }

    pub(crate) fn openvpn(&self, lab: &Lab, secs: u32) -> Figures {
        let run = || -> Result<Figures> {
            let pki = self.dir.join("pki");
            openvpn_pki(&pki)?;
            let mut ends = Vec::new();
            for (ns, side, local, remote, peer_wan) in [
                (
                    &lab.plant.host,
                    "server",
                    "10.202.0.2",
                    "10.202.0.1",
                    OFFICE_WAN,
                ),
                (
                    &lab.office.host,
                    "client",
                    "10.202.0.1",
                    "10.202.0.2",
                    PLANT_WAN,
                ),
            ] {
                let iface = unique("bov");
                let log = self.dir.join(format!("openvpn-{side}.log"));
                let other = if side == "server" { "client" } else { "server" };
                let mut cmd = ns.command("openvpn");
                cmd.args(["--dev", &iface, "--dev-type", "tun", "--proto", "udp"])
                    .args(["--port", &OVPN_PORT.to_string(), "--remote", peer_wan])
                    .args(["--ifconfig", local, remote])
                    .args(["--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM"])
                    .args(["--disable-dco", "--verb", "3", "--remote-cert-tls", other])
                    .arg("--ca")
                    .arg(pki.join("ca.pem"))
                    .arg("--cert")
                    .arg(pki.join(format!("{side}.pem")))
                    .arg("--key")
                    .arg(pki.join(format!("{side}.key")));
                if side == "server" {
                    cmd.args(["--tls-server", "--dh", "none"]);
                } else {
                    cmd.arg("--tls-client");
                }
                ends.push((Daemon::spawn(&mut cmd, &log), log, iface));
            }
            for (_, log, _) in &ends {
                until(
                    "OpenVPN completes its initialisation",
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    || {
                        std::fs::read_to_string(log)
                            .is_ok_and(|t| t.contains("Initialization Sequence Completed"))
                    },
                )
                .with_context(|| format!("see {}", log.display()))?;
            }
            let client_log = std::fs::read_to_string(&ends[1].1).unwrap_or_default();
            let cipher = client_log
                .lines()
                .find_map(|l| l.split("Data Channel: cipher '").nth(1))
                .and_then(|c| c.split('\'').next())
                .unwrap_or("?")
                .to_string();
            if cipher != "AES-256-GCM" {
                bail!("OpenVPN's data channel uses {cipher}, not AES-256-GCM");
            }
            lab.office
                .host
                .ip(&["route", "add", "192.168.1.0/24", "dev", &ends[1].2]);
            let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
            f.path = format!("direct UDP (peer at {PLANT_WAN}:{OVPN_PORT}), data channel {cipher}");
            Ok(f)
        };
        run().unwrap_or_else(|e| Figures {
            error: Some(format!("{e:#}")),
            ..Figures::default()
        })
    }
}

/// A throwaway CA with a server and a client certificate (ECDSA P-256) for OpenVPN.
fn openvpn_pki(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "drawbridge bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    for (name, eku) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        secret_file(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    }
    Ok(())
}
