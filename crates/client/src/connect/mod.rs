//! `drawbridge connect`: start the session if needed, register a fresh
//! WireGuard key, bring the tunnel up through the relay at once (and direct
//! when a UDP path answers), show its status in the foreground, and tear it
//! down on Ctrl-C or when the session ends.

mod exit;
mod forwards;
mod live;
mod status;
mod tun;

use drawbridge_peer::{SessionPeer, active_devices, active_targets};
pub use exit::EXIT_CODES;
use exit::Stop;
pub use forwards::{Forward, parse_forward, parse_listen};
use forwards::{check_forwards, client_view, start_userspace};
use live::{Live, open_channel};
pub use status::{DeviceStatus, TunnelStatus, status};
use status::{snapshot, status_dir, unix_now};
use tun::tun_mode;

use crate::Error;
use crate::cli::context::Ctx;
use bytes::Bytes;
use clap::Args;
use drawbridge_netstack::Dialer;
use drawbridge_proto::api::{AdhocSession, Session};
use drawbridge_proto::channel::{
    ClientToServer, JoinRequest, JoinResponse, ServerToClient, TunnelReport,
};
use drawbridge_proto::{NatMapping, Target};
use drawbridge_proto::{SessionState, WgKey};
use drawbridge_tunnel::keys;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Result<T> = std::result::Result<T, Error>;

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
    // From the join on, Ctrl-C and SIGTERM take the clean path (leave the session,
    // remove the interface); before it, they simply end the process.
    let stop = drawbridge_tunnel::shutdown_signal();
    let private_key = keys::generate_private_key();
    let public = WgKey::from_bytes(keys::public_key(&private_key));
    let join: JoinResponse = ctx
        .client
        .post(
            &format!("/sessions/{id}/join"),
            &JoinRequest {
                public_key: public,
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
    let key_q: String =
        url::form_urlencoded::byte_serialize(public.to_string().as_bytes()).collect();
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
    let routes = active_targets(&active_devices(&join));
    let use_tun =
        args.tun || (forwards.is_empty() && socks.is_none() && drawbridge_tun::have_privileges());
    let (to_dialer, dialer_in) = mpsc::channel::<Bytes>(1024);
    let (dialer_out, from_dialer) = mpsc::channel::<Bytes>(1024);
    let mut tasks = Vec::new();
    let mut tun_routes = None;
    let mut userspace = None;
    if use_tun {
        // Kernel mode: the released targets of the active devices, and nothing
        // else, are routed into a TUN interface; its packets go into the tunnel
        // as they are. The routes follow the device list (`Live::apply`).
        let tun = tun_mode(overlay, &routes, dialer_in, dialer_out).await?;
        tun_routes = Some(tun.0);
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
        peer: SessionPeer::new(
            private_key,
            join,
            drawbridge_tunnel::driver::Connector::Rustls(tls.clone()),
            from_dialer,
            to_dialer,
        ),
        tun: tun_routes,
        dialer: userspace,
    };
    let status_path = status_dir()?.join(format!("{id}.json"));
    let _ = std::fs::create_dir_all(status_dir()?);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Round-trip times to the relays the server names, measured in the
    // background and reported: this user's next sessions get the nearest relay.
    let mut rtt = drawbridge_api_client::rtt::Probes::default();
    let deadline = args
        .for_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut n: u64 = 0;
    tokio::pin!(stop);
    let outcome: Result<Stop> = loop {
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
                    Ok(ServerToClient::Update(j)) => live.apply(j).await?,
                    Ok(ServerToClient::Signal { device_id, data }) => {
                        if !args.relay_only {
                            live.peer.signal(&device_id, &data).await;
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
            ev = live.peer.event() => {
                if let Some(ev) = ev
                    && !args.relay_only
                    && let Some((device_id, data)) = live.peer.outgoing_signal(&ev)
                {
                    let m = ClientToServer::Signal { device_id, data };
                    if let Some(w) = ws.as_mut() {
                        let _ = w.send(Message::Text(serde_json::to_string(&m).unwrap_or_default().into())).await;
                    }
                }
            }
            _ = tick.tick() => {
                n += 1;
                rtt.set_relays(live.peer.join().relays.clone());
                if rtt.tick(std::time::Instant::now()) && !rtt.results().is_empty() {
                    let m = ClientToServer::RelayRtt { relay_rtt: rtt.results() };
                    if let Some(w) = ws.as_mut() {
                        let _ = w.send(Message::Text(serde_json::to_string(&m).unwrap_or_default().into())).await;
                    }
                }
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
                            peer: public,
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
    drop(live);
    exit::finish(outcome?)
}
