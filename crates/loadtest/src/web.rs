//! `--web`: browser access measured on loopback with the real binaries. A
//! device web server on 127.0.0.1 behind a real edge; a real `drawbridge
//! connect -L` to it for comparison; the server's own peer for the browser
//! path. Figures: opening a device page (the portal's click: `POST …/web`, the
//! entry link, the page's first byte) with the server's peer not yet running
//! and running; a download through the browser path and through `-L`; many
//! concurrent page loads (docs/loadtest.md).

use crate::dataplane::Relayed;
use crate::server::Target;
use anyhow::{Context, bail};
use drawbridge_proto::api::OpenedWeb;
use serde_json::json;
use std::net::SocketAddr;
use tokio::time::Instant;

/// What `--web` measures.
pub struct Options {
    /// Bytes of each download.
    pub download_bytes: u64,
    /// Page loads at once.
    pub concurrent: usize,
    /// Openings with the peer running (the median is reported).
    pub openings: usize,
}

/// The device: `/` a small page, `/bytes/N` N bytes streamed.
async fn device() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                axum::response::Html("<!doctype html><h1>HMI</h1>".repeat(40))
            }),
        )
        .route(
            "/bytes/{n}",
            axum::routing::get(
                |axum::extract::Path(n): axum::extract::Path<u64>| async move {
                    let chunk = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
                    let chunks = n.div_ceil(chunk.len() as u64);
                    let last = n - (chunks.saturating_sub(1)) * chunk.len() as u64;
                    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
                        let c = if i + 1 == chunks {
                            chunk.slice(..last as usize)
                        } else {
                            chunk.clone()
                        };
                        Ok::<_, std::io::Error>(c)
                    }));
                    axum::body::Body::from_stream(stream)
                },
            ),
        );
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

/// Downloads `url` with `client`; answers Mbit/s.
async fn download(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    expect: u64,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut req = client.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let mut r = req.send().await.with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    let mut got = 0u64;
    while let Some(chunk) = r.chunk().await.context("reading the download")? {
        got += chunk.len() as u64;
    }
    if got != expect {
        bail!("GET {url}: {got} bytes instead of {expect}");
    }
    Ok(got as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e6)
}

struct Opened {
    cookie: String,
    origin: String,
    millis: f64,
}

/// The portal's click as a browser lives it: open, follow the entry link,
/// load the page; answers the time to the page's first byte.
async fn open(
    admin: &drawbridge_api_client::Client,
    browser: &reqwest::Client,
    r: &Relayed,
    lan: SocketAddr,
) -> anyhow::Result<Opened> {
    let t = Instant::now();
    let o: OpenedWeb = admin
        .post(
            &format!("/sessions/{}/web", r.session_id),
            &json!({"device_id": r.device_id, "target": lan.to_string()}),
        )
        .await
        .context("opening the device page")?;
    let entry = browser.get(&o.url).send().await.context("the entry link")?;
    if entry.status() != 303 {
        bail!("the entry link answered {}", entry.status());
    }
    let cookie = entry
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no cookie from the entry link")?
        .to_string();
    let page = browser
        .get(format!("{}/", o.origin))
        .header("cookie", &cookie)
        .send()
        .await
        .context("the device page")?;
    let millis = t.elapsed().as_secs_f64() * 1e3;
    if !page.status().is_success() {
        bail!("the device page answered {}", page.status());
    }
    let _ = page.bytes().await;
    Ok(Opened {
        cookie,
        origin: o.origin,
        millis,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs the measurement; answers the figures as a Markdown table.
pub async fn run(
    opts: &Options,
    target: &Target,
    admin: &drawbridge_api_client::Client,
) -> anyhow::Result<String> {
    let lan = device().await?;
    let r = Relayed::start_to(target, admin, Some(lan)).await?;
    let ca = std::fs::read(&target.ca_file).context("reading the CA certificate")?;
    // Every LABEL.web.localhost name goes to the server (browsers do that for *.localhost).
    let resolver = std::sync::Arc::new(LocalhostResolver);
    let browser = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .dns_resolver(resolver)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(opts.concurrent)
        .build()?;

    let cold = open(admin, &browser, &r, lan).await?;
    let mut warm = Vec::new();
    for _ in 0..opts.openings {
        warm.push(open(admin, &browser, &r, lan).await?.millis);
    }

    let n = opts.download_bytes;
    let via_browser = download(
        &browser,
        &format!("{}/bytes/{n}", cold.origin),
        Some(&cold.cookie),
        n,
    )
    .await?;
    let plain = reqwest::Client::builder().no_proxy().build()?;
    let via_forward = download(&plain, &format!("http://{}/bytes/{n}", r.forward), None, n).await?;

    let t = Instant::now();
    let loads = futures_util::future::join_all((0..opts.concurrent).map(|_| {
        let browser = browser.clone();
        let url = format!("{}/", cold.origin);
        let cookie = cold.cookie.clone();
        async move {
            let t = Instant::now();
            let r = browser.get(url).header("cookie", cookie).send().await;
            let ok = match r {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (ok, t.elapsed().as_secs_f64() * 1e3)
        }
    }))
    .await;
    let all = t.elapsed().as_secs_f64() * 1e3;
    let failed = loads.iter().filter(|(ok, _)| !ok).count();
    let mut times: Vec<f64> = loads.iter().map(|(_, ms)| *ms).collect();
    let path = r.path().await;
    r.stop().await;

    Ok(format!(
        "| figure | value |\n|---|---|\n\
         | open a device page, server's peer not running yet (click → first byte) | {:.0} ms |\n\
         | open a device page, peer running (median of {}) | {:.0} ms |\n\
         | {} MB download through the browser path | {:.0} Mbit/s |\n\
         | {} MB download through `drawbridge connect -L` (path: {path}) | {:.0} Mbit/s |\n\
         | browser path / `-L` | {:.0} % |\n\
         | {} concurrent page loads: failed | {failed} |\n\
         | {} concurrent page loads: p50 / p99 / all done | {:.0} / {:.0} / {:.0} ms |\n",
        cold.millis,
        opts.openings,
        median(warm),
        n / 1_000_000,
        via_browser,
        n / 1_000_000,
        via_forward,
        via_browser / via_forward * 100.0,
        opts.concurrent,
        opts.concurrent,
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        all,
    ))
}

/// Resolves every name to 127.0.0.1, as browsers do for `*.localhost`.
struct LocalhostResolver;

impl reqwest::dns::Resolve for LocalhostResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}
