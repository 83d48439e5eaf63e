//! What the multi-replica tests share: HAProxy with the deployment guide's
//! configuration, and a fresh database on the test PostgreSQL.

use super::metrics_text;
use sqlx::Connection;
use std::path::{Path, PathBuf};

pub fn haproxy() -> Option<PathBuf> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The HAProxy configuration the deployment guide shows, on loopback.
pub fn haproxy_config(listen: u16, replicas: &[u16]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 4096\n    log stderr format raw local0\n\n\
         defaults\n    log global\n    option tcplog\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    \
         timeout tunnel 1h\n    retries 3\n    option redispatch\n\n\
         frontend drawbridge\n    bind 127.0.0.1:{listen}\n    default_backend replicas\n\n\
         backend replicas\n    balance roundrobin\n    option httpchk GET /healthz\n    \
         http-check expect status 200\n    \
         default-server check check-ssl verify none inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n"
    );
    for (i, p) in replicas.iter().enumerate() {
        cfg.push_str(&format!("    server r{} 127.0.0.1:{p}\n", i + 1));
    }
    cfg
}

/// The test PostgreSQL and HAProxy, or None after a visible SKIPPED line
/// (a failure instead when CI requires them).
pub fn cluster_tools(test: &str) -> Option<(String, PathBuf)> {
    let base = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL").ok();
    let haproxy = haproxy();
    let required = |v: &str| std::env::var(v).as_deref() == Ok("1");
    if base.is_none() && required("DRAWBRIDGE_REQUIRE_POSTGRES") {
        panic!("DRAWBRIDGE_REQUIRE_POSTGRES=1 but DRAWBRIDGE_TEST_POSTGRES_URL is not set");
    }
    if haproxy.is_none() && required("DRAWBRIDGE_REQUIRE_HAPROXY") {
        panic!("DRAWBRIDGE_REQUIRE_HAPROXY=1 but haproxy is not installed");
    }
    match (base, haproxy) {
        (Some(b), Some(h)) => Some((b, h)),
        _ => {
            eprintln!(
                "SKIPPED {test}: needs DRAWBRIDGE_TEST_POSTGRES_URL and haproxy (scripts/test provides both)"
            );
            None
        }
    }
}

/// A fresh database on the test PostgreSQL at `base`; `sql` runs statements as its admin.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    base: String,
}

impl TestDatabase {
    pub fn create(base: &str) -> TestDatabase {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(base).unwrap();
        url.set_path(&name);
        let db = TestDatabase {
            name,
            url: url.to_string(),
            base: base.to_string(),
        };
        db.sql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    /// Runs one statement on the server's maintenance database.
    pub fn sql(&self, sql: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut admin = sqlx::postgres::PgConnection::connect(&self.base)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut admin).await.unwrap();
        })
    }
}

/// `edges_connected` on a replica's metrics port (0 when it does not answer).
pub fn edges_connected(metrics: u16) -> u32 {
    metrics_text(metrics)
        .lines()
        .find_map(|l| l.strip_prefix("edges_connected "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u32)
}

/// Control-plane replicas on one data directory (one CA, one secrets key) and
/// one database, each with its own embedded relay and metrics port, behind
/// HAProxy; account `acme` with admin `root`.
pub struct Cluster {
    pub data: PathBuf,
    pub db_url: String,
    /// `https://127.0.0.1:LB`: what edges and clients are given.
    pub public: String,
    /// The load balancer as a server to log in to.
    pub via_lb: super::Server,
    pub ports: Vec<u16>,
    pub metrics: Vec<u16>,
    pub replicas: Vec<Option<super::Server>>,
    standby: bool,
    _haproxy: super::Proc,
}

impl Cluster {
    /// `n` replicas in `dir`; `standby`: their embedded relays take sessions
    /// only when no standalone relay is alive.
    pub fn start(dir: &Path, haproxy: &Path, db_url: &str, n: usize, standby: bool) -> Cluster {
        use super::{PASSWORD, Proc, Server, free_port, server_bin, wait};
        use std::process::{Command, Stdio};
        let data = dir.join("server");
        let lb = free_port();
        let pw = dir.join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let out = Command::new(server_bin())
            .args(["init", "--account", "acme", "--admin-user", "root"])
            .arg("--admin-password-file")
            .arg(&pw)
            .arg("--data-dir")
            .arg(&data)
            .args(["--database", db_url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let metrics: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(lb, &ports)).unwrap();
        let haproxy = Proc(
            Command::new(haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(Stdio::null())
                // Its log (health checks, connections) next to the test's other files.
                .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut c = Cluster {
            via_lb: Server {
                proc: None,
                data: data.clone(),
                port: lb,
            },
            data,
            db_url: db_url.to_string(),
            public: format!("https://127.0.0.1:{lb}"),
            ports,
            metrics,
            replicas: Vec::new(),
            standby,
            _haproxy: haproxy,
        };
        c.replicas = (0..n).map(|i| Some(c.start_replica(i))).collect();
        wait("HAProxy answers", || {
            std::net::TcpStream::connect(("127.0.0.1", lb)).is_ok()
        });
        std::thread::sleep(std::time::Duration::from_secs(2)); // the first health checks
        c
    }

    /// The flags of replica `i`.
    pub fn flags(&self, i: usize) -> Vec<String> {
        let mut f = vec![
            "--database".into(),
            self.db_url.clone(),
            "--public-url".into(),
            self.public.clone(),
            "--relay-name".into(),
            format!("replica-{}", i + 1),
            "--relay-url".into(),
            format!("wss://127.0.0.1:{}/relay/v1", self.ports[i]),
            "--no-bridge".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.metrics[i]),
        ];
        if self.standby {
            f.push("--relay-standby".into());
        }
        f
    }

    fn start_replica(&self, i: usize) -> super::Server {
        super::Server::start_with(&self.data, self.ports[i], &self.flags(i))
    }

    /// Kills replica `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.replicas[i] = None;
    }

    /// Starts replica `i` again.
    pub fn restart(&mut self, i: usize) {
        self.replicas[i] = Some(self.start_replica(i));
    }

    /// The replica holding the one connected edge, if any.
    pub fn edge_holder(&self) -> Option<usize> {
        (0..self.ports.len()).find(|&i| edges_connected(self.metrics[i]) == 1)
    }
}
