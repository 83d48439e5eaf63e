//! `--dos`: what a login flood and a crowd of silent connections do to the
//! rest of the server. Figures, not assertions (docs/loadtest.md):
//!
//! - an edge channel's round trip (WebSocket ping → pong through the server's
//!   channel handler) and an API round trip (`GET /me`), idle and while
//!   `--dos-logins-per-sec` wrong logins a second are refused;
//! - with `--dos-silent` TCP connections open and silent (spread over several
//!   loopback addresses, so the per-address cap does not simply refuse them),
//!   whether a new login still succeeds, and how long it takes.

use crate::server::Target;
use anyhow::Context;
use drawbridge_edge::agent;
use drawbridge_edge::enroll::{self, Secret};
use drawbridge_proto::api::{CreatedDevice, LoginRequest};
use futures_util::{SinkExt, StreamExt};
use ring::signature::Ed25519KeyPair;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Round trips measured per phase.
const SAMPLES: usize = 100;

pub struct Options {
    pub logins_per_sec: u32,
    pub silent: usize,
}

/// Median and 95th percentile, in milliseconds.
fn spread(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.95))
}

async fn ping_rtts(ws: &mut agent::Channel) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES as u64 {
        let t = Instant::now();
        ws.send(Message::Ping(i.to_be_bytes().to_vec().into()))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == i.to_be_bytes() => break,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => anyhow::bail!("the edge channel closed"),
                Err(_) => anyhow::bail!("no pong within 30 s"),
            }
        }
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

async fn api_rtts(admin: &drawbridge::Client) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        admin.me().await?;
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

/// Sends `rate` wrong logins a second until `stop`, on a thread and runtime of
/// its own (so the tool's flood does not delay its own measurements); counts
/// what came back.
fn flood(
    anon: drawbridge::Client,
    account: String,
    rate: u32,
    refused: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        let (anon, account) = (anon.clone(), account.clone());
                        running.push(async move {
                            anon.login(&LoginRequest {
                                account,
                                username: format!("nobody-{n}"),
                                password: "Wrong-Password-1".into(),
                                totp: None,
                            })
                            .await
                            .is_err()
                        });
                    }
                    Some(was_refused) = running.next(), if !running.is_empty() => {
                        if was_refused {
                            refused.fetch_add(1, Ordering::Relaxed);
                        } else {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    })
}

pub async fn run(
    opts: &Options,
    target: &Target,
    anon: &drawbridge::Client,
    admin: &drawbridge::Client,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    // One enrolled device with its edge channel open.
    let name = format!("lt-dos-{:08x}", rand::random::<u32>());
    let created: CreatedDevice = admin
        .post("/devices", &crate::target_device(&name))
        .await
        .context("creating the device")?;
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("generating an identity key failed"))?;
    let key =
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("identity key"))?;
    let r = enroll::request(anon, &key, Secret::Activation(created.activation.key))
        .await
        .context("enrolling")?;
    let mut ws = agent::connect(admin.server(), admin.ws_tls(), None).await?;
    agent::authenticate(&mut ws, &r.device_id, &key).await?;

    let idle_ping = spread(ping_rtts(&mut ws).await?);
    let idle_api = spread(api_rtts(admin).await?);

    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let f = flood(
        anon.clone(),
        target.account.clone(),
        opts.logins_per_sec,
        refused.clone(),
        other.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r0 = refused.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let flood_ping = spread(ping_rtts(&mut ws).await?);
    let flood_api = spread(api_rtts(admin).await?);
    let answered_rate = (refused.load(Ordering::Relaxed) - r0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let flood_secs = t.elapsed().as_secs_f64();
    let _ = tokio::task::spawn_blocking(move || f.join()).await;
    // Logins still queued from the flood drain first.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Silent connections from 127.0.0.10 on, 200 per address.
    let addr: std::net::SocketAddr = target
        .url
        .trim_start_matches("https://")
        .parse()
        .context("the server URL is not https://IP:PORT")?;
    let mut silent = Vec::with_capacity(opts.silent);
    let mut failed = 0usize;
    for i in 0..opts.silent {
        let local = std::net::Ipv4Addr::new(127, 0, 0, 10 + (i / 200) as u8);
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((local, 0).into())?;
        match sock.connect(addr).await {
            Ok(s) => silent.push(s),
            Err(_) => failed += 1,
        }
    }
    let t = Instant::now();
    let fresh = drawbridge::Client::new(&target.url, Some(&target.ca_file))?;
    let login = fresh
        .login(&LoginRequest {
            account: target.account.clone(),
            username: target.admin_user.clone(),
            password: target.password.clone(),
            totp: None,
        })
        .await;
    let login_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(silent);

    let pct = |busy: f64, idle: f64| (busy / idle - 1.0) * 100.0;
    let mut o = String::new();
    let _ = writeln!(o, "drawbridge-loadtest --dos");
    let _ = writeln!(
        o,
        "| figure | idle p50 / p95 (ms) | under {} refused logins/s p50 / p95 (ms) | p50 change |",
        opts.logins_per_sec
    );
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| edge channel ping round trip | {:.2} / {:.2} | {:.2} / {:.2} | {:+.0} % |",
        idle_ping.0,
        idle_ping.1,
        flood_ping.0,
        flood_ping.1,
        pct(flood_ping.0, idle_ping.0)
    );
    let _ = writeln!(
        o,
        "| API round trip (GET /me) | {:.2} / {:.2} | {:.2} / {:.2} | {:+.0} % |",
        idle_api.0,
        idle_api.1,
        flood_api.0,
        flood_api.1,
        pct(flood_api.0, idle_api.0)
    );
    let _ = writeln!(
        o,
        "logins refused during the measurement: {answered_rate:.0}/s (asked {}/s); {} refused, {} not refused, over {flood_secs:.1} s",
        opts.logins_per_sec,
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "{} silent TCP connections opened ({} failed to connect); a new login then: {} in {login_ms:.0} ms",
        opts.silent - failed,
        failed,
        match &login {
            Ok(_) => "succeeded".to_string(),
            Err(e) => format!("FAILED ({e})"),
        }
    );
    let _ = writeln!(
        o,
        "relayed tunnel throughput under the flood: not measured by this tool yet"
    );
    Ok(o)
}
