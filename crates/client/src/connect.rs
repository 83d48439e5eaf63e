//! `drawbridge connect`: start the session if needed, register a fresh
//! WireGuard key, bring the tunnel up through the relay at once (and direct
//! when a UDP path answers), show its status in the foreground, and tear it
//! down on Ctrl-C or when the session ends.

use crate::Error;
use crate::cli::context::Ctx;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::Args;
use drawbridge_netstack::{Dialer, forward_local_on, socks5_on};
use drawbridge_proto::SessionState;
use drawbridge_proto::api::{AdhocSession, Session};
use drawbridge_proto::channel::{
    ClientToServer, JoinRequest, JoinResponse, MAX_CHANNEL_FRAME, ServerToClient, TunnelReport,
};
use drawbridge_proto::{NatMapping, PortRange, Protocol, Target};
use drawbridge_tunnel::driver::{Connector, DriverEvent, Tunnel};
use drawbridge_tunnel::session::{self, SessionTunnel, SessionTunnelConfig};
use drawbridge_tunnel::{IpNet, PeerConfig, Signal, keys};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Result<T> = std::result::Result<T, Error>;

/// Inner MTU of the TUN interface: room for WireGuard's 80 bytes of overhead (IPv6
/// outer header) within a 1500-byte path, as wg-quick does.
const TUN_MTU: u16 = 1420;

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct ConnectArgs {
    /// The session (id or name); with --adhoc, a device to connect to ad hoc.
    pub session: String,
    /// Create and start a session for yourself on this device (where the account allows it).
    #[arg(long)]
    pub adhoc: bool,
    /// Forward a local port to a released target: [ADDR:]PORT:TARGET:PORT (repeatable).
    #[arg(short = 'L', long = "local", value_name = "[ADDR:]PORT:TARGET:PORT")]
    pub forwards: Vec<String>,
    /// Run a SOCKS5 proxy reaching only the released targets: [ADDR:]PORT.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub socks5: Option<String>,
    /// Route the released targets through a TUN interface (split tunnel; needs root).
    /// The default when running as root without -L or --socks5.
    #[arg(long, conflicts_with_all = ["forwards", "socks5"])]
    pub tun: bool,
    /// Stop after this many seconds (for scripts and tests).
    #[arg(long, hide = true)]
    pub for_seconds: Option<u64>,
    /// Keep the tunnel on the relay: send no address candidates and ignore the
    /// edge's, so no direct path forms (benchmarks and tests of the relay path
    /// on one host, where a direct path always works).
    #[arg(long, hide = true)]
    pub relay_only: bool,
}

/// `connect --help`'s exit codes; the numbers come from `crate::exit_code_for_end`
/// (a unit test keeps them in step) and docs/client.md repeats them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   you stopped it: Ctrl-C, SIGTERM or --for-seconds
  1   an error (nothing started, or the tunnel failed)
  2   a usage error
  3   a user of the session ended it (reason user)
  4   an administrator ended it, or your user was disabled (admin, user_disabled)
  5   the site switched remote access off (site_switch)
  6   the session's time is over (expiry)
  7   the session was idle too long (idle_timeout)
  8   the edge went offline (edge_offline)
  9   the start was refused or not approved in time (refused, approval_timeout)
  10  the session ended for another reason";

/// A `-L` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

/// `[ADDR:]PORT:TARGET:PORT`; the listen address defaults to 127.0.0.1.
pub fn parse_forward(s: &str) -> Result<Forward> {
    let bad = || Error::user(format!("-L {s:?}: expected [ADDR:]PORT:TARGET:PORT"));
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let [tport, thost, listen] = parts.as_slice() else {
        return Err(bad());
    };
    let target: SocketAddr = format!("{thost}:{tport}").parse().map_err(|_| bad())?;
    let listen = parse_listen(listen).ok_or_else(bad)?;
    Ok(Forward { listen, target })
}

/// `[ADDR:]PORT`, default address 127.0.0.1.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(p) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse().ok()
}

/// What `drawbridge status` shows, one file per live tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub session_id: String,
    pub session: String,
    pub overlay_ip: String,
    /// The TUN interface, in TUN mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub pid: u32,
    pub updated_at: i64,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    pub path: String,
    pub reason: String,
    pub rtt_ms: Option<u64>,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// Seconds since the last WireGuard handshake with the edge, if any.
    pub handshake_secs_ago: Option<u64>,
    pub targets: Vec<String>,
}

fn status_dir() -> Result<PathBuf> {
    Ok(crate::config::config_dir()?.join("tunnels"))
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `drawbridge status`.
pub fn status(json: bool) -> Result<()> {
    let dir = status_dir()?;
    let mut live = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten().take(256) {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(s) = serde_json::from_str::<TunnelStatus>(&text) else {
                continue;
            };
            if unix_now() - s.updated_at <= 10 {
                live.push(s);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&live).unwrap_or_default()
        );
        return Ok(());
    }
    if live.is_empty() {
        println!("no tunnels are up");
    }
    for s in live {
        let via = s
            .interface
            .as_deref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        println!("{} ({}) as {}{via}", s.session, s.session_id, s.overlay_ip);
        for d in s.devices {
            let rtt = d.rtt_ms.map(|r| format!(", {r} ms")).unwrap_or_default();
            println!(
                "  {}: {} ({}{rtt}), {} B sent, {} B received; {}",
                d.device,
                d.path,
                d.reason,
                d.bytes_to_device,
                d.bytes_from_device,
                d.targets.join(" ")
            );
        }
    }
    Ok(())
}

/// Starts the session if it is only prepared, then waits until it is active
/// (approval included).
pub(crate) async fn start_and_wait(ctx: &Ctx, id: &str) -> Result<Session> {
    let s: Session = ctx.client.get(&format!("/sessions/{id}")).await?;
    if s.state == SessionState::Prepared {
        let _: Session = ctx
            .client
            .post(&format!("/sessions/{id}/start"), &serde_json::json!({}))
            .await?;
    }
    wait_until_active(ctx, id).await
}

async fn wait_until_active(ctx: &Ctx, id: &str) -> Result<Session> {
    let mut told = false;
    loop {
        let s: Session = ctx.client.get(&format!("/sessions/{id}")).await?;
        match s.state {
            SessionState::Active => return Ok(s),
            SessionState::Ended => {
                let reason = s.end_reason.map(|r| r.as_str()).unwrap_or("ended");
                return Err(Error::SessionEnded {
                    reason: reason.to_string(),
                });
            }
            SessionState::PendingApproval if !told => {
                eprintln!("waiting for the site (or an approver) to approve the session…");
                told = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The live parts of one connection.
struct Live {
    tunnel: Option<Arc<Tunnel>>,
    events: Option<mpsc::Receiver<DriverEvent>>,
    /// The dialer's packets for the tunnel, taken by the pump when the tunnel starts.
    from_dialer: Option<mpsc::Receiver<Bytes>>,
    to_dialer: mpsc::Sender<Bytes>,
    pump: Option<tokio::task::JoinHandle<()>>,
    join: JoinResponse,
    private_key: [u8; 32],
    /// device id → edge key (bytes) once known.
    edges: HashMap<String, [u8; 32]>,
    token: Option<String>,
    /// The TUN interface, in TUN mode.
    interface: Option<String>,
    /// The userspace dialer (not in TUN mode): its routes follow the devices
    /// approved so far (dual control per device).
    dialer: Option<Dialer>,
}

fn key_bytes(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

impl Live {
    async fn apply(
        &mut self,
        j: JoinResponse,
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<()> {
        self.join = j;
        if let Some(d) = &self.dialer {
            d.set_routes(
                self.join
                    .devices
                    .iter()
                    .flat_map(|d| d.targets.clone())
                    .collect(),
            );
        }
        let Some(token) = self.join.relay_token.clone() else {
            return Ok(());
        };
        if self.tunnel.is_none()
            && let Some(from_dialer) = self.from_dialer.take()
        {
            let SessionTunnel {
                tunnel,
                events,
                pump,
            } = session::start(
                SessionTunnelConfig {
                    private_key: self.private_key,
                    stun: self.join.stun.clone(),
                    relay_url: self.join.relay_url.clone(),
                    relay_token: token.clone(),
                    connector: Connector::Rustls(tls.clone()),
                },
                from_dialer,
                self.to_dialer.clone(),
            )
            .await
            .map_err(|e| Error::user(format!("starting the tunnel: {e}")))?;
            self.pump = Some(pump);
            self.events = Some(events);
            self.tunnel = Some(tunnel);
            self.token = Some(token.clone());
        }
        let Some(t) = &self.tunnel else {
            return Ok(());
        };
        if self.token.as_deref() != Some(token.as_str()) {
            let _ = t.set_relay_token(0, token.clone()).await;
            self.token = Some(token);
        }
        for d in &self.join.devices {
            let Some(k) = d.edge_public_key.as_deref().and_then(key_bytes) else {
                continue;
            };
            match self.edges.get(&d.device_id) {
                Some(old) if *old == k => continue,
                // The edge restarted with a fresh key: its routes move to the new one.
                Some(old) => {
                    let _ = t.remove_peer(*old).await;
                }
                None => {}
            }
            let allowed = d
                .targets
                .iter()
                .map(|t| IpNet::new(t.address.addr(), t.address.prefix_len()))
                .collect();
            let cfg = PeerConfig {
                public_key: k,
                allowed_ips: allowed,
                relay: Some(0),
                persistent_keepalive: Some(25),
                bridged: false,
            };
            if t.add_peer(cfg).await.is_ok() {
                self.edges.insert(d.device_id.clone(), k);
            }
        }
        Ok(())
    }

    fn device_of(&self, key: &[u8; 32]) -> Option<String> {
        self.edges
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(d, _)| d.clone())
    }
}

/// `drawbridge connect`.
pub(crate) async fn run(ctx: &Ctx, args: ConnectArgs) -> Result<()> {
    let forwards = args
        .forwards
        .iter()
        .map(|f| parse_forward(f))
        .collect::<Result<Vec<_>>>()?;
    let socks = args
        .socks5
        .as_deref()
        .map(|s| {
            parse_listen(s)
                .ok_or_else(|| Error::user(format!("--socks5 {s:?}: expected [ADDR:]PORT")))
        })
        .transpose()?;
    // The -L targets are checked against what the session releases before anything
    // is started or recorded (a wrong -L must leave the session as it was).
    let id = if args.adhoc {
        let device = ctx.device(&args.session).await?;
        let released = client_view(&device.firewall, &device.nat);
        check_forwards(&forwards, &released)?;
        let device_id = device.id;
        let s: Session = ctx
            .client
            .post(
                "/sessions/adhoc",
                &AdhocSession {
                    device_id,
                    targets: None,
                },
            )
            .await?;
        s.id
    } else {
        let id = ctx.session_id(&args.session).await?;
        if !forwards.is_empty() {
            let s: Session = ctx.client.get(&format!("/sessions/{id}")).await?;
            // The devices' 1:1 NAT decides the addresses the client dials; a device
            // the caller cannot list is taken without NAT (the join's view decides later).
            let nat: HashMap<String, Vec<NatMapping>> = match ctx.client.devices().await {
                Ok(all) => all.into_iter().map(|d| (d.id, d.nat)).collect(),
                Err(_) => HashMap::new(),
            };
            let released: Vec<Target> = s
                .devices
                .iter()
                .flat_map(|d| {
                    client_view(
                        &d.targets,
                        nat.get(&d.device_id).map(Vec::as_slice).unwrap_or(&[]),
                    )
                })
                .collect();
            check_forwards(&forwards, &released)?;
        }
        id
    };
    let s = start_and_wait(ctx, &id).await?;
    let private_key = keys::generate_private_key();
    let public = STANDARD.encode(keys::public_key(&private_key));
    let join: JoinResponse = ctx
        .client
        .post(
            &format!("/sessions/{id}/join"),
            &JoinRequest {
                public_key: public.clone(),
                standard_client: false,
            },
        )
        .await?;
    eprintln!(
        "joined {} as {}; bringing the tunnel up…",
        s.name, join.overlay_ip
    );

    let tls = ctx.client.ws_tls();
    let base = ctx.client.server().replacen("https://", "wss://", 1);
    let key_q: String = url::form_urlencoded::byte_serialize(public.as_bytes()).collect();
    let channel_url = format!("{base}/api/v1/sessions/{id}/channel?key={key_q}");
    let token = ctx.client.token().map(str::to_string);
    let mut ws = Some(open_channel(&channel_url, token.as_deref(), &tls).await?);
    let mut retry = Duration::from_secs(1);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let valid_until = tokio::time::Instant::now()
        + Duration::from_secs(u64::try_from(join.valid_until - unix_now()).unwrap_or(0));

    // The userspace stack: local forwards and SOCKS5 dial into the tunnel
    // from the overlay address, and only to the released targets.
    let overlay: std::net::Ipv4Addr = join
        .overlay_ip
        .parse()
        .map_err(|_| Error::user("the server gave no usable overlay address"))?;
    let routes: Vec<drawbridge_proto::Target> = join
        .devices
        .iter()
        .flat_map(|d| d.targets.clone())
        .collect();
    let use_tun =
        args.tun || (forwards.is_empty() && socks.is_none() && drawbridge_tun::have_privileges());
    let (to_dialer, dialer_in) = mpsc::channel::<Bytes>(1024);
    let (dialer_out, from_dialer) = mpsc::channel::<Bytes>(1024);
    let mut tasks = Vec::new();
    let mut interface = None;
    let mut userspace = None;
    if use_tun {
        // Kernel mode: the released targets, and nothing else, are routed into a
        // TUN interface; its packets go into the tunnel as they are.
        let tun = tun_mode(overlay, &routes, dialer_in, dialer_out).await?;
        interface = Some(tun.0);
        tasks.push(tun.1);
    } else {
        // Userspace mode: local forwards and SOCKS5 dial into the tunnel from the
        // overlay address, and only to the released targets.
        let dialer = Dialer::new(overlay, routes);
        tasks.push(tokio::spawn(dialer.clone().run(dialer_in, dialer_out)));
        start_userspace(&dialer, &forwards, socks, &mut tasks).await?;
        if forwards.is_empty() && socks.is_none() {
            eprintln!(
                "nothing to reach the targets with: add -L [ADDR:]PORT:TARGET:PORT or --socks5 [ADDR:]PORT (or run as root for TUN mode)"
            );
        }
        userspace = Some(dialer);
    }
    let mut live = Live {
        tunnel: None,
        events: None,
        from_dialer: Some(from_dialer),
        to_dialer,
        pump: None,
        join,
        private_key,
        edges: HashMap::new(),
        token: None,
        interface,
        dialer: userspace,
    };
    let status_path = status_dir()?.join(format!("{id}.json"));
    let _ = std::fs::create_dir_all(status_dir()?);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = args
        .for_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut n: u64 = 0;
    let stop = drawbridge_tunnel::shutdown_signal();
    tokio::pin!(stop);
    let outcome: Result<Stop> = loop {
        let events = async {
            match live.events.as_mut() {
                Some(ev) => ev.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break Ok(Stop::Asked("interrupted")),
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break Ok(Stop::Asked("time is up")),
            _ = tokio::time::sleep_until(valid_until) => break Ok(Stop::Ended("expiry".to_string())),
            _ = async { match retry_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                // The tunnel kept running; now try to get the session channel back.
                match open_channel(&channel_url, token.as_deref(), &tls).await {
                    Ok(c) => {
                        eprintln!("the control plane is back");
                        ws = Some(c);
                        retry_at = None;
                        retry = Duration::from_secs(1);
                    }
                    Err(_) => {
                        retry = (retry * 2).min(Duration::from_secs(30));
                        retry_at = Some(tokio::time::Instant::now() + retry);
                    }
                }
            }
            m = async { match ws.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => match m {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerToClient>(&t) {
                    Ok(ServerToClient::Update(j)) => live.apply(j, &tls).await?,
                    Ok(ServerToClient::Signal { device_id, data }) => {
                        if !args.relay_only
                            && let (Some(t), Some(k)) = (&live.tunnel, live.edges.get(&device_id))
                            && let Some(sig) = STANDARD.decode(&data).ok().and_then(|b| Signal::decode(&b).ok())
                        {
                            let _ = t.signal(*k, sig).await;
                        }
                    }
                    Ok(ServerToClient::Ended { reason }) => break Ok(Stop::Ended(reason)),
                    Err(_) => {}
                },
                Some(Ok(_)) => {}
                // The control plane is unreachable: existing tunnels go on until the
                // session's end; the channel is re-opened with backoff.
                Some(Err(_)) | None => {
                    eprintln!("lost the control plane; the tunnel stays up until the session ends");
                    ws = None;
                    retry_at = Some(tokio::time::Instant::now() + retry);
                }
            },
            ev = events => {
                if let Some(DriverEvent::Signal { peer, signal }) = ev
                    && !args.relay_only
                    && let Some(device_id) = live.device_of(&peer)
                {
                    let m = ClientToServer::Signal { device_id, data: STANDARD.encode(signal.encode()) };
                    if let Some(w) = ws.as_mut() {
                        let _ = w.send(Message::Text(serde_json::to_string(&m).unwrap_or_default().into())).await;
                    }
                }
            }
            _ = tick.tick() => {
                n += 1;
                let st = snapshot(&live, &s, &id).await;
                let _ = std::fs::write(&status_path, serde_json::to_vec_pretty(&st).unwrap_or_default());
                if !ctx.json {
                    let line: Vec<String> = st.devices.iter().map(|d| format!("{}: {} ({}) ↑{} ↓{}", d.device, d.path, d.reason, d.bytes_to_device, d.bytes_from_device)).collect();
                    if n.is_multiple_of(5) || n == 2 {
                        eprintln!("{}", if line.is_empty() { "waiting for the edge…".to_string() } else { line.join("; ") });
                    }
                }
                if n.is_multiple_of(5) {
                    for d in &st.devices {
                        let r = ClientToServer::Tunnel(TunnelReport {
                            session_id: id.clone(),
                            peer: public.clone(),
                            path: d.path.clone(),
                            reason: d.reason.clone(),
                            bytes_to_device: d.bytes_to_device,
                            bytes_from_device: d.bytes_from_device,
                        });
                        if let Some(w) = ws.as_mut() {
                            let _ = w.send(Message::Text(serde_json::to_string(&r).unwrap_or_default().into())).await;
                        }
                    }
                }
            }
        }
    };
    if let Some(mut w) = ws {
        let _ = w.close(None).await;
    }
    let _ = std::fs::remove_file(&status_path);
    for t in tasks {
        t.abort();
    }
    if let Some(p) = live.pump.take() {
        p.abort();
    }
    drop(live);
    match outcome? {
        Stop::Asked(why) => {
            eprintln!("tunnel down: {why}");
            Ok(())
        }
        Stop::Ended(reason) => {
            eprintln!("tunnel down");
            Err(Error::SessionEnded { reason })
        }
    }
}

/// Why the foreground loop of `connect` stopped.
enum Stop {
    /// This process was asked to stop (exit code 0).
    Asked(&'static str),
    /// The session ended on its own (the server's end reason; its own exit code).
    Ended(String),
}

/// The targets as the client dials them: with 1:1 NAT, a target inside a real
/// subnet is reached at the same offset in the virtual subnet (the server's
/// join answer uses the same rule).
fn client_view(targets: &[Target], nat: &[NatMapping]) -> Vec<Target> {
    targets
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(v) = nat
                .iter()
                .filter(|m| m.real.contains(&t.address))
                .find_map(|m| translate(&t.address, m))
            {
                t.address = v;
            }
            t
        })
        .collect()
}

fn translate(net: &ipnet::IpNet, m: &NatMapping) -> Option<ipnet::IpNet> {
    let (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(v)) =
        (net.network(), m.real.network(), m.virtual_subnet.network())
    else {
        return None;
    };
    let addr = u32::from(v).checked_add(u32::from(a).checked_sub(u32::from(b))?)?;
    ipnet::IpNet::new(IpAddr::V4(addr.into()), net.prefix_len()).ok()
}

/// Refuses a `-L` whose target the session does not release (TCP, that address and port).
fn check_forwards(forwards: &[Forward], released: &[Target]) -> Result<()> {
    for f in forwards {
        let want = Target {
            address: ipnet::IpNet::from(f.target.ip()),
            protocol: Protocol::Tcp,
            ports: Some(PortRange::single(f.target.port())),
        };
        if !released.iter().any(|t| t.covers(&want)) {
            return Err(Error::user(format!(
                "-L: {} is not a released target of this session",
                f.target
            )));
        }
    }
    Ok(())
}

/// Opens the `-L` forwards and the SOCKS5 proxy on the userspace dialer.
async fn start_userspace(
    dialer: &Dialer,
    forwards: &[Forward],
    socks: Option<SocketAddr>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    // The targets were checked against the session's released targets before
    // the start (`check_forwards`); the dialer may not route all of them yet
    // (devices still waiting for approval): their connections fail until then.
    for f in forwards {
        let listener = tokio::net::TcpListener::bind(f.listen)
            .await
            .map_err(|e| Error::user(format!("-L: cannot listen on {}: {e}", f.listen)))?;
        eprintln!(
            "forwarding {} → {}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            f.target
        );
        tasks.push(tokio::spawn({
            let (d, target) = (dialer.clone(), f.target);
            async move {
                let _ = forward_local_on(listener, target, d).await;
            }
        }));
    }
    if let Some(addr) = socks {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::user(format!("--socks5: cannot listen on {addr}: {e}")))?;
        eprintln!(
            "SOCKS5 proxy on {} (released targets only)",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let d = dialer.clone();
        tasks.push(tokio::spawn(async move {
            let _ = socks5_on(listener, d).await;
        }));
    }
    Ok(())
}

/// Brings up the TUN interface with routes to the released targets only and
/// moves packets between it and the tunnel channels. Returns the interface name
/// and the task; dropping the device (task aborted) removes interface and routes.
async fn tun_mode(
    overlay: std::net::Ipv4Addr,
    routes: &[drawbridge_proto::Target],
    mut from_tunnel: mpsc::Receiver<Bytes>,
    to_tunnel: mpsc::Sender<Bytes>,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let prefixes: Vec<ipnet::IpNet> = routes.iter().map(|t| t.address).collect();
    let dev = drawbridge_tun::TunDevice::create(&drawbridge_tun::TunConfig {
        name: None,
        address: overlay,
        mtu: TUN_MTU,
        routes: prefixes.clone(),
    })
    .await
    .map_err(|e| Error::user(format!("TUN mode: {e}")))?;
    let name = dev.name().to_string();
    let shown: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    eprintln!(
        "TUN interface {name} up as {overlay}; routes: {}",
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        }
    );
    let task = tokio::spawn(async move {
        let mut rx = drawbridge_tun::RecvBatch::default();
        let mut tx = drawbridge_tun::SendBatch::default();
        loop {
            tokio::select! {
                n = dev.recv_batch(&mut rx) => match n {
                    Ok(_) => {
                        for p in rx.packets() {
                            let _ = to_tunnel.try_send(Bytes::copy_from_slice(p));
                        }
                    }
                    Err(e) => {
                        eprintln!("reading the TUN interface failed: {e}");
                        return;
                    }
                },
                p = from_tunnel.recv() => match p {
                    Some(p) => {
                        tx.push(&p);
                        while !tx.is_full() {
                            let Ok(p) = from_tunnel.try_recv() else { break };
                            tx.push(&p);
                        }
                        // A packet the kernel refuses is lost like on a wire.
                        let _ = dev.send_batch(&mut tx).await;
                    }
                    None => return,
                },
            }
        }
    });
    Ok((name, task))
}

type Ws = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<Box<dyn drawbridge_tunnel::proxy::Io>>,
>;

/// Opens the session channel (bearer token, our TLS trust, bounded frames).
async fn open_channel(
    url: &str,
    token: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Ws> {
    let mut req = url
        .into_client_request()
        .map_err(|e| Error::user(e.to_string()))?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::user("bad token"))?,
        );
    }
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_CHANNEL_FRAME);
    // Through the plant's HTTP proxy when DRAWBRIDGE_PROXY / HTTPS_PROXY says so.
    let proxy =
        drawbridge_tunnel::proxy::Proxy::from_env().map_err(|e| Error::user(e.to_string()))?;
    let ws = tokio::time::timeout(
        Duration::from_secs(15),
        drawbridge_tunnel::proxy::websocket(
            req,
            Some(cfg),
            Some(Connector::Rustls(tls.clone())),
            proxy.as_ref(),
        ),
    )
    .await
    .map_err(|_| Error::user("opening the session channel timed out"))?
    .map_err(|e| Error::user(format!("opening the session channel: {e}")))?;
    Ok(ws)
}

async fn snapshot(live: &Live, s: &Session, id: &str) -> TunnelStatus {
    let mut devices = Vec::new();
    for d in &live.join.devices {
        let mut st = DeviceStatus {
            device: d.name.clone(),
            path: "connecting".into(),
            reason: if d.online {
                "waiting for the edge".into()
            } else {
                "the edge is offline".into()
            },
            rtt_ms: None,
            bytes_to_device: 0,
            bytes_from_device: 0,
            handshake_secs_ago: None,
            targets: d.targets.iter().map(|t| t.to_string()).collect(),
        };
        if let (Some(t), Some(k)) = (&live.tunnel, live.edges.get(&d.device_id))
            && let Ok(Some(p)) = t.stats(*k).await
        {
            st.path = p.path.kind().to_string();
            st.reason = p.reason.to_string();
            st.rtt_ms = p.rtt.map(|r| r.as_millis() as u64);
            st.bytes_to_device = p.tx_bytes;
            st.bytes_from_device = p.rx_bytes;
            st.handshake_secs_ago = p.last_handshake.map(|t| t.elapsed().as_secs());
        }
        devices.push(st);
    }
    TunnelStatus {
        session_id: id.to_string(),
        session: s.name.to_string(),
        overlay_ip: live.join.overlay_ip.clone(),
        interface: live.interface.clone(),
        pid: std::process::id(),
        updated_at: unix_now(),
        devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_the_exit_code_of_every_end_reason() {
        for r in [
            "user",
            "admin",
            "user_disabled",
            "site_switch",
            "expiry",
            "idle_timeout",
            "edge_offline",
            "refused",
            "approval_timeout",
        ] {
            let code = crate::exit_code_for_end(r);
            assert!(code > 2, "{r}");
            let line = EXIT_CODES
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code} ")))
                .unwrap_or_else(|| panic!("no line for {code}"));
            assert!(line.contains(r), "{r} not on {line:?}");
        }
    }

    #[test]
    fn forwards_are_checked_against_the_released_targets_through_nat() {
        let t = |s: &str| s.parse::<Target>().unwrap();
        let f = |s: &str| parse_forward(s).unwrap();
        let released = vec![t("tcp:192.168.1.10:502")];
        assert!(check_forwards(&[f("1502:192.168.1.10:502")], &released).is_ok());
        assert!(check_forwards(&[f("1502:192.168.1.11:502")], &released).is_err());
        assert!(check_forwards(&[f("1502:192.168.1.10:503")], &released).is_err());
        let nat = vec![NatMapping {
            real: "192.168.1.0/24".parse().unwrap(),
            virtual_subnet: "10.9.1.0/24".parse().unwrap(),
        }];
        let seen = client_view(&released, &nat);
        assert!(check_forwards(&[f("1502:10.9.1.10:502")], &seen).is_ok());
        assert!(check_forwards(&[f("1502:192.168.1.10:502")], &seen).is_err());
    }

    #[test]
    fn forwards_parse_with_and_without_a_listen_address() {
        assert_eq!(
            parse_forward("1502:192.168.1.10:502").unwrap(),
            Forward {
                listen: "127.0.0.1:1502".parse().unwrap(),
                target: "192.168.1.10:502".parse().unwrap()
            }
        );
        assert_eq!(
            parse_forward("0.0.0.0:8080:10.0.0.5:80").unwrap().listen,
            "0.0.0.0:8080".parse().unwrap()
        );
        for bad in [
            "",
            "1502",
            "x:192.168.1.10:502",
            "1502:host:502",
            "1502:192.168.1.10:99999",
        ] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_listen("1080").unwrap(),
            "127.0.0.1:1080".parse().unwrap()
        );
    }
}
