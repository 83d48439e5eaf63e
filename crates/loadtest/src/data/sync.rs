//! The client side of `--data`: every stored point pulled through the mailbox
//! sync as an integration would (`GET /api/v1/data/sync?after=CURSOR&limit=N`
//! in a loop until `more_data_available` is false, with a read-only API
//! token), each checked against the [`Plan`]: a known device, tag and time,
//! the value and quality that were sent, never twice, none missing, the
//! transaction ids strictly increasing.

use super::plan::Plan;
use anyhow::{Context, bail};
use drawbridge_proto::mailbox::SyncPage;
use serde::Serialize;
use std::collections::HashMap;
use tokio::time::Instant;

/// What one edge pushed, as the sync expects it back.
pub struct Expected {
    pub edge: usize,
    /// Records 1..=last were acknowledged.
    pub last: u64,
}

/// What was wrong with the points received (all zero in a good run).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Problems {
    /// A device, tag or time the plan never sent, or a seq beyond the acknowledged.
    pub unknown: u64,
    pub duplicates: u64,
    /// Value or quality not as sent.
    pub changed: u64,
    /// Acknowledged but never received.
    pub missing: u64,
    /// A txid not above the one before.
    pub out_of_order: u64,
}

impl Problems {
    pub fn total(&self) -> u64 {
        self.unknown + self.duplicates + self.changed + self.missing + self.out_of_order
    }
}

/// The figures of one full sync.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    pub points: u64,
    pub pages: u64,
    /// Response bodies, MB.
    pub megabytes: f64,
    /// First request sent → last page parsed.
    pub secs: f64,
    pub points_per_sec: f64,
    /// When the first `target` points had arrived (None: fewer were stored).
    pub target: u64,
    pub target_secs: Option<f64>,
    /// Time spent waiting for responses (request sent → body read), and parsing them.
    pub fetch_secs: f64,
    pub parse_secs: f64,
    /// One page's request → body read, ms.
    pub page_p50_ms: f64,
    pub page_p99_ms: f64,
    pub page_max_ms: f64,
    pub problems: Problems,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

/// Pulls every point after the start with `limit` per page; `expected` by device id.
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    limit: u32,
    plan: &Plan,
    expected: &HashMap<String, Expected>,
    target: u64,
) -> anyhow::Result<Synced> {
    let mut seen: HashMap<&str, Vec<u64>> = expected
        .iter()
        .map(|(id, e)| (id.as_str(), vec![0u64; (e.last as usize).div_ceil(64)]))
        .collect();
    let mut problems = Problems::default();
    let (mut points, mut pages, mut bytes) = (0u64, 0u64, 0u64);
    let (mut fetch, mut parse) = (0f64, 0f64);
    let mut page_ms = Vec::new();
    let mut last_txid = i64::MIN;
    let mut cursor: Option<String> = None;
    let mut target_secs = None;
    let t0 = Instant::now();
    loop {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(c) = &cursor {
            q.push(("after", c.clone()));
        }
        let t = Instant::now();
        let r = http
            .get(format!("{base}/api/v1/data/sync"))
            .bearer_auth(token)
            .query(&q)
            .send()
            .await
            .context("GET /api/v1/data/sync")?;
        let status = r.status();
        let body = r.bytes().await.context("reading a sync page")?;
        let took = t.elapsed().as_secs_f64();
        fetch += took;
        page_ms.push(took * 1e3);
        if !status.is_success() {
            bail!(
                "GET /api/v1/data/sync: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        let t = Instant::now();
        let page: SyncPage = serde_json::from_slice(&body).context("parsing a sync page")?;
        pages += 1;
        bytes += body.len() as u64;
        for p in &page.points {
            if p.txid <= last_txid {
                problems.out_of_order += 1;
            }
            last_txid = last_txid.max(p.txid);
            let Some((e, bits)) = expected
                .get(&p.device_id)
                .zip(seen.get_mut(p.device_id.as_str()))
            else {
                problems.unknown += 1;
                continue;
            };
            let Some(seq) = plan
                .locate(p.tag.as_str(), p.time_ms)
                .filter(|s| (1..=e.last).contains(s))
            else {
                problems.unknown += 1;
                continue;
            };
            let (i, bit) = ((seq - 1) as usize / 64, 1u64 << ((seq - 1) % 64));
            if bits[i] & bit != 0 {
                problems.duplicates += 1;
                continue;
            }
            bits[i] |= bit;
            let (value, quality) = plan.sample(e.edge, seq);
            if !same(value, p.value) || quality != p.quality {
                problems.changed += 1;
            }
        }
        points += page.points.len() as u64;
        parse += t.elapsed().as_secs_f64();
        if target_secs.is_none() && points >= target {
            target_secs = Some(t0.elapsed().as_secs_f64());
        }
        if !page.more_data_available {
            break;
        }
        cursor = Some(page.cursor);
    }
    let secs = t0.elapsed().as_secs_f64();
    for (id, e) in expected {
        let got: u64 = seen[id.as_str()]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        problems.missing += e.last - got.min(e.last);
    }
    Ok(Synced {
        points,
        pages,
        megabytes: bytes as f64 / 1e6,
        secs,
        points_per_sec: points as f64 / secs.max(1e-9),
        target,
        target_secs,
        fetch_secs: fetch,
        parse_secs: parse,
        page_p50_ms: percentile(&mut page_ms, 0.5),
        page_p99_ms: percentile(&mut page_ms, 0.99),
        page_max_ms: percentile(&mut page_ms, 1.0),
        problems,
    })
}
