//! The lab's standard network: an "internet" with the control plane (API, relay,
//! STUN), an office where the service PC sits behind a NAT router, a plant where
//! the edge sits behind another NAT router, and the machine LAN behind the edge.
//!
//! ```text
//!  office ──192.168.10.0/24── orouter ──10.0.1.0/24──┐
//!  (client)                    (NAT)                 inet (server 10.0.0.1:443)
//!  plant ───192.168.20.0/24── prouter ──10.0.2.0/24──┘
//!  (edge) ──192.168.1.0/24── lan (PLC 192.168.1.10)
//! ```
//!
//! The internet knows no route to the private networks: everything from the
//! office or the plant crosses its router's NAT, of the kind the test asks for.

use crate::netns::{Netns, NsRuntime, veth};
use crate::procs::{Api, Edge, Server, wait};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// What a site's router does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Full cone: masquerade that keeps the source port (one public port per
    /// local socket, whatever the destination) and lets UDP in from anyone.
    Cone,
    /// Masquerade with a random port for every new destination (symmetric).
    Symmetric,
    /// Masquerade, and nothing but TCP 443 to the server gets out.
    UdpBlocked,
}

pub const SERVER_IP: &str = "10.0.0.1";
pub const PLC_IP: &str = "192.168.1.10";
/// The released Modbus target.
pub const PLC: &str = "192.168.1.10:502";
/// A released TCP echo service on the PLC's address, for numbered streams.
pub const ECHO: &str = "192.168.1.10:7000";

/// A site: a host behind a router.
pub struct Site {
    pub host: Netns,
    pub router: Netns,
    /// The router's WAN interface (in `router`).
    pub wan: String,
}

impl Site {
    fn new(tag: &str, inet: &Netns, n: u8, nat: Nat) -> Site {
        let host = Netns::new(&format!("{tag}h"));
        let router = Netns::new(&format!("{tag}r"));
        let (_, wan) = veth(
            inet,
            &format!("10.0.{n}.1/24"),
            &router,
            &format!("10.0.{n}.2/24"),
        );
        let (lan, _) = veth(
            &router,
            &format!("192.168.{}.1/24", n * 10),
            &host,
            &format!("192.168.{}.2/24", n * 10),
        );
        host.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{}.1", n * 10),
        ]);
        router.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")]);
        router.sysctl("net.ipv4.ip_forward=1");
        let masquerade = match nat {
            Nat::Symmetric => "masquerade random",
            Nat::Cone | Nat::UdpBlocked => "masquerade",
        };
        // Full cone: besides the port-keeping masquerade, UDP arriving at the WAN
        // address goes to the one host behind it, whoever sends it
        // (endpoint-independent mapping and filtering).
        let host_ip = format!("192.168.{}.2", n * 10);
        let inbound = if nat == Nat::Cone {
            format!(
                "  chain pre {{\n    type nat hook prerouting priority -100;\n    iifname \"{wan}\" meta l4proto udp dnat to {host_ip}\n  }}\n"
            )
        } else {
            String::new()
        };
        let mut rules = format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority 100;\n    oifname \"{wan}\" {masquerade}\n  }}\n{inbound}}}\n"
        );
        if nat == Nat::UdpBlocked {
            rules.push_str(&format!(
                "table ip filter {{\n  chain forward_filter {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    iifname \"{lan}\" ip daddr {SERVER_IP} tcp dport 443 accept\n  }}\n}}\n"
            ));
        }
        router.nft(&rules);
        Site { host, router, wan }
    }
}

/// The whole lab: namespaces, the server, an enrolled edge with its switch on,
/// and PLC + echo services on the machine LAN.
pub struct Lab {
    pub edge: Edge,
    pub server: Server,
    pub api: Api,
    pub device_id: String,
    pub lan_rt: NsRuntime,
    pub office_rt: Arc<NsRuntime>,
    pub lan: Netns,
    pub office: Site,
    pub plant: Site,
    pub inet: Netns,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(office_nat: Nat, plant_nat: Nat) -> Lab {
        Self::with_edge_args(office_nat, plant_nat, &[])
    }

    /// Like [`Lab::new`], with extra arguments for the edge's `run` (e.g. `--tun`).
    pub fn with_edge_args(office_nat: Nat, plant_nat: Nat, edge_args: &[&str]) -> Lab {
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var("DRAWBRIDGE_LAB_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("lab files kept in {}", dir.path().display());
        }
        let inet = Netns::new("i");
        inet.ip(&["addr", "add", &format!("{SERVER_IP}/32"), "dev", "lo"]);
        // The internet routes between the sites' public addresses.
        inet.sysctl("net.ipv4.ip_forward=1");
        let office = Site::new("o", &inet, 1, office_nat);
        let plant = Site::new("p", &inet, 2, plant_nat);
        let lan = Netns::new("l");
        veth(&plant.host, "192.168.1.1/24", &lan, &format!("{PLC_IP}/24"));
        lan.ip(&["route", "add", "default", "via", "192.168.1.1"]);
        let lan_rt = lan.runtime();
        lan_rt.spawn(crate::plc::serve(PLC.parse().expect("addr")));
        lan_rt.spawn(echo(ECHO.parse().expect("addr")));
        // Not released: the same services on other ports.
        lan_rt.spawn(crate::plc::serve("192.168.1.10:503".parse().expect("addr")));
        lan_rt.spawn(echo("192.168.1.10:7001".parse().expect("addr")));

        let server = Server::start(&inet, SERVER_IP, &dir.path().join("server"));
        let api = server.admin();
        let (device_id, key) = api.device(
            "press-1",
            "192.168.1.0/24",
            json!([{"address": "192.168.1.0/24", "protocol": "tcp", "ports": "1-65535"}]),
        );
        let edge = Edge::enroll_and_run_with(
            &plant.host,
            &server,
            &key,
            &dir.path().join("edge"),
            edge_args,
        );
        wait("the edge is online with its switch on", || {
            let d = api.get(&format!("/devices/{device_id}"));
            d["status"]["online"] == true && d["status"]["switch_on"] == true
        });
        let office_rt = Arc::new(office.host.runtime());
        Lab {
            edge,
            server,
            api,
            device_id,
            lan_rt,
            office_rt,
            lan,
            office,
            plant,
            inet,
            dir,
        }
    }

    /// A session for the admin on the edge, releasing the PLC and the echo port.
    pub fn session(&self, name: &str) -> String {
        self.session_with(
            name,
            json!([
                {"address": PLC_IP, "protocol": "tcp", "ports": "502"},
                {"address": PLC_IP, "protocol": "tcp", "ports": "7000"}
            ]),
        )
    }

    /// A session for the admin on the edge, releasing `targets` (a JSON list of
    /// `{"address", "protocol", "ports"}`; they must be within the device's firewall).
    pub fn session_with(&self, name: &str, targets: Value) -> String {
        let me = self.api.me();
        let (s, v) = self.api.post(
            "/sessions",
            json!({"name": name, "devices": [{"device_id": self.device_id, "targets": targets}],
                   "users": [me]}),
        );
        assert_eq!(s, 200, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// The client's view of its first device (`drawbridge status --json`).
    pub fn client_device(client: &crate::Client) -> Value {
        client.status()[0]["devices"][0].clone()
    }

    pub fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }
}

/// Another plant with its own edge and a machine LAN that may use the same
/// addresses as the first (reached through 1:1 NAT).
pub struct Plant {
    pub edge: Edge,
    pub device_id: String,
    pub lan_rt: NsRuntime,
    pub lan: Netns,
    pub site: Site,
}

impl Lab {
    /// Adds plant number `n` (2 < n < 25) behind `nat`, its LAN `192.168.1.0/24`
    /// with a PLC at 192.168.1.10 whose registers start at `plc_base`, published
    /// to clients as `virtual_subnet` (1:1 NAT) when given.
    pub fn add_plant(
        &self,
        n: u8,
        name: &str,
        nat: Nat,
        virtual_subnet: Option<&str>,
        plc_base: u16,
    ) -> Plant {
        let site = Site::new(&format!("p{n}"), &self.inet, n, nat);
        let lan = Netns::new(&format!("l{n}"));
        veth(&site.host, "192.168.1.1/24", &lan, &format!("{PLC_IP}/24"));
        lan.ip(&["route", "add", "default", "via", "192.168.1.1"]);
        let lan_rt = lan.runtime();
        lan_rt.spawn(crate::plc::serve_with_base(
            PLC.parse().expect("addr"),
            plc_base,
        ));
        let nat_json = match virtual_subnet {
            Some(v) => json!([{"real": "192.168.1.0/24", "virtual_subnet": v}]),
            None => json!([]),
        };
        let (s, v) = self.api.post(
            "/devices",
            json!({"name": name, "lan_subnets": ["192.168.1.0/24"], "nat": nat_json,
                   "firewall": [{"address": "192.168.1.0/24", "protocol": "tcp", "ports": "1-65535"}]}),
        );
        assert_eq!(s, 200, "{v}");
        let device_id = v["device"]["id"].as_str().expect("id").to_string();
        let key = v["activation"]["key"].as_str().expect("key").to_string();
        let edge = Edge::enroll_and_run(
            &site.host,
            &self.server,
            &key,
            &self.dir.path().join(format!("edge{n}")),
        );
        wait("the second edge is online with its switch on", || {
            let d = self.api.get(&format!("/devices/{device_id}"));
            d["status"]["online"] == true && d["status"]["switch_on"] == true
        });
        Plant {
            edge,
            device_id,
            lan_rt,
            lan,
            site,
        }
    }
}

/// A TCP echo service (the "numbered stream" partner).
pub async fn echo(addr: SocketAddr) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}
