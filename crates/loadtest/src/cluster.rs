//! Cluster mode (`--replicas N`): N `drawbridge-server` replicas on one data
//! directory (one CA, one secrets key) and one PostgreSQL database, behind
//! Debian's HAProxy configured as docs/deployment.md shows (TCP, round robin,
//! TLS health checks on /healthz). The simulated edges and the admin API reach
//! the replicas through HAProxy only.

use crate::server::{self, Target};
use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

/// HAProxy's source address towards the replicas. An address of its own, so
/// that the port range below meets no other socket but listeners on 0.0.0.0;
/// `--source-ips` may not include it.
pub const HAPROXY_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);

/// HAProxy's source ports towards each replica. Without a range the kernel
/// picks ports from `net.ipv4.ip_local_port_range` (28,232 by default) for
/// each replica address; with it HAProxy binds each connection to a port of
/// its own choosing, the same range for every server, so each replica can take
/// up to this many connections (a port in use is skipped: HAProxy tries the
/// next, ten times).
pub const HAPROXY_PORTS: (u16, u16) = (1024, 65535);

/// Connections each replica can take from HAProxy.
pub fn ports_per_replica() -> u64 {
    u64::from(HAPROXY_PORTS.1 - HAPROXY_PORTS.0) + 1
}

/// HAProxy's global `maxconn` for `edges` simulated edges: it counts the
/// connections HAProxy proxies (one per edge, plus the admin's), each with two
/// descriptors (client and server side); a fifth more leaves room for a wave of
/// reconnects while the old connections are still closing.
pub fn haproxy_maxconn(edges: usize) -> usize {
    edges + edges / 5 + 1000
}

/// Descriptors HAProxy asks for at start-up with [`haproxy_maxconn`]: about
/// two per connection and a few tens (its management guide). It refuses to
/// start when it cannot raise its limit that far.
pub fn haproxy_nofile(edges: usize) -> u64 {
    2 * haproxy_maxconn(edges) as u64 + 100
}

/// Where the parts of the cluster come from.
pub struct Options<'a> {
    pub server_bin: &'a Path,
    pub haproxy_bin: &'a Path,
    pub database: &'a str,
    pub data_dir: Option<PathBuf>,
    pub replicas: usize,
    pub edges: usize,
    /// HAProxy's `timeout check` (None: as docs/deployment.md, the check
    /// interval of 500 ms bounds the whole check).
    pub check_timeout: Option<Duration>,
}

/// One `drawbridge-server run` of the cluster.
pub struct Replica {
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    pub metrics_port: u16,
    log: PathBuf,
}

/// The replicas and HAProxy the tool started; killed when dropped.
pub struct Cluster {
    pub target: Target,
    pub replicas: Vec<Replica>,
    haproxy: Child,
    pub haproxy_pid: u32,
    pub data: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

/// The configuration docs/deployment.md shows, on loopback, for `edges` edges;
/// `check_timeout` adds a `timeout check`.
pub fn haproxy_config(
    listen: u16,
    replicas: &[u16],
    edges: usize,
    check_timeout: Option<Duration>,
) -> String {
    let (lo, hi) = HAPROXY_PORTS;
    let check = check_timeout
        .map(|t| format!("    timeout check {}ms\n", t.as_millis()))
        .unwrap_or_default();
    let mut cfg = format!(
        "global\n    maxconn {maxconn}\n    log stderr format raw daemon notice\n\n\
         defaults\n    log global\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    \
         timeout server 1h\n    timeout tunnel 1h\n{check}    retries 3\n    option redispatch\n\n\
         frontend drawbridge\n    bind 127.0.0.1:{listen}\n    default_backend replicas\n\n\
         backend replicas\n    balance roundrobin\n    option httpchk GET /healthz\n    \
         http-check expect status 200\n    \
         default-server check check-ssl verify none inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n",
        maxconn = haproxy_maxconn(edges),
    );
    for (i, p) in replicas.iter().enumerate() {
        cfg.push_str(&format!(
            "    server r{} 127.0.0.1:{p} source {HAPROXY_SOURCE}:{lo}-{hi}\n",
            i + 1
        ));
    }
    cfg
}

/// Initialises one data directory and database, starts the replicas one after
/// the other (each ready before the next), then HAProxy in front.
pub async fn start(o: &Options<'_>) -> anyhow::Result<Cluster> {
    if !o.haproxy_bin.exists() {
        bail!(
            "{} not found: cluster mode needs HAProxy (apt-get install haproxy) or --haproxy-bin",
            o.haproxy_bin.display()
        );
    }
    let (data, temp) = server::data_dir(o.data_dir.clone())?;
    let admin = server::init(o.server_bin, &data, Some(o.database)).await?;
    let lb = free_port()?;
    let public = format!("https://127.0.0.1:{lb}");
    let mut replicas = Vec::with_capacity(o.replicas);
    for i in 1..=o.replicas {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let name = format!("replica-{i}");
        let extra: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--public-url".into(),
            public.clone(),
            "--relay-name".into(),
            name.clone(),
            "--relay-url".into(),
            format!("wss://127.0.0.1:{port}/relay/v1"),
            "--no-bridge".into(),
            "--no-stun".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        let log = data.join(format!("{name}.log"));
        let (child, _) = server::spawn_run(o.server_bin, &data, Some(o.database), &extra, &log)
            .await
            .with_context(|| format!("starting {name}"))?;
        replicas.push(Replica {
            name,
            pid: child.id().context("replica PID")?,
            child: Some(child),
            port,
            metrics_port,
            log,
        });
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let cfg = data.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(lb, &ports, o.edges, o.check_timeout))
        .context("writing haproxy.cfg")?;
    let log = std::fs::File::create(data.join("haproxy.log")).context("creating haproxy.log")?;
    let haproxy = server::command(o.haproxy_bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", o.haproxy_bin.display()))?;
    let haproxy_pid = haproxy.id().context("HAProxy PID")?;
    let mut cluster = Cluster {
        target: Target {
            url: public,
            ca_file: data.join("ca.pem"),
            account: admin.account,
            admin_user: admin.admin_user,
            password: admin.password,
            pid: None,
        },
        replicas,
        haproxy,
        haproxy_pid,
        data,
        _temp: temp,
    };
    cluster.wait_for_haproxy().await?;
    Ok(cluster)
}

impl Cluster {
    /// Until `/healthz` answers through HAProxy.
    async fn wait_for_haproxy(&mut self) -> anyhow::Result<()> {
        let ca = std::fs::read(&self.target.ca_file).context("reading the CA certificate")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/healthz", self.target.url);
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.haproxy.try_wait() {
                bail!(
                    "HAProxy exited ({status}):\n{}",
                    server::log_tail(&self.data.join("haproxy.log"))
                );
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                bail!(
                    "/healthz does not answer through HAProxy:\n{}",
                    server::log_tail(&self.data.join("haproxy.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL to replica `i` (the process this tool started, by its PID); waits
    /// until it is gone.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &mut self.replicas[i];
        let Some(mut child) = r.child.take() else {
            bail!("{} is not running", r.name);
        };
        child
            .start_kill()
            .with_context(|| format!("killing {}", r.name))?;
        let _ = child.wait().await;
        Ok(())
    }

    /// Each replica's `edges_connected` gauge (None: no answer, or killed).
    pub async fn edges_connected(&self) -> Vec<Option<u64>> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build();
        let mut out = Vec::with_capacity(self.replicas.len());
        for r in &self.replicas {
            let v = match (&client, &r.child) {
                (Ok(c), Some(_)) => metric(c, r.metrics_port, "edges_connected").await,
                _ => None,
            };
            out.push(v.map(|v| v.max(0.0) as u64));
        }
        out
    }

    /// How often HAProxy has marked a replica down so far (its log).
    pub fn down_events(&self) -> u64 {
        let log = std::fs::read_to_string(self.data.join("haproxy.log")).unwrap_or_default();
        count_down_events(&log)
    }

    /// The tails of the replicas' logs and HAProxy's.
    pub fn log_tail(&self) -> String {
        let mut o = String::new();
        for r in &self.replicas {
            o.push_str(&format!(
                "--- {} ({}):\n{}\n",
                r.name,
                r.log.display(),
                server::log_tail(&r.log)
            ));
        }
        o.push_str(&format!(
            "--- HAProxy:\n{}",
            server::log_tail(&self.data.join("haproxy.log"))
        ));
        o
    }

    /// Stops HAProxy and every replica still running.
    pub async fn stop(mut self) {
        let _ = self.haproxy.start_kill();
        let _ = self.haproxy.wait().await;
        for r in &mut self.replicas {
            if let Some(mut c) = r.child.take() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}

/// One unlabelled sample of a Prometheus text page.
async fn metric(client: &reqwest::Client, port: u16, name: &str) -> Option<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_metric(&text, name)
}

/// "Server replicas/r1 is DOWN, reason: …" lines of HAProxy's log (the
/// `[WARNING]` copies on its stderr aside).
fn count_down_events(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.starts_with("Server ") && l.contains(" is DOWN"))
        .count() as u64
}

fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_gets_a_port_range_per_replica_and_room_for_every_edge() {
        let cfg = haproxy_config(8443, &[9001, 9002], 100_000, None);
        assert!(!cfg.contains("timeout check"));
        assert!(cfg.contains("maxconn 121000\n"), "{cfg}");
        assert!(cfg.contains("bind 127.0.0.1:8443\n"));
        assert!(cfg.contains("server r1 127.0.0.1:9001 source 127.1.0.1:1024-65535\n"));
        assert!(cfg.contains("server r2 127.0.0.1:9002 source 127.1.0.1:1024-65535\n"));
        assert!(cfg.contains("option httpchk GET /healthz"));
        assert!(cfg.contains("check-ssl"));
        assert_eq!(ports_per_replica(), 64512);
        let cfg = haproxy_config(8443, &[9001], 10, Some(Duration::from_secs(5)));
        assert!(cfg.contains("    timeout check 5000ms\n"), "{cfg}");
    }

    #[test]
    fn reads_a_gauge() {
        let text = "# TYPE edges_connected gauge\nedges_connected_total 9\nedges_connected 42\n";
        assert_eq!(parse_metric(text, "edges_connected"), Some(42.0));
        assert_eq!(parse_metric(text, "clients_connected"), None);
    }

    #[test]
    fn counts_replicas_marked_down() {
        let log = "[WARNING]  (7) : Server replicas/r1 is DOWN, reason: Layer7 timeout\n\
                   Server replicas/r1 is DOWN, reason: Layer7 timeout, check duration: 500ms.\n\
                   Server replicas/r1 is UP, reason: Layer7 check passed\n\
                   Server replicas/r2 is DOWN, reason: Layer4 connection problem\n";
        assert_eq!(count_down_events(log), 2);
    }
}
