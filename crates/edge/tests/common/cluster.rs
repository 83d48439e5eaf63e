//! What the multi-replica tests share: HAProxy with the deployment guide's
//! configuration, and a fresh database on the test PostgreSQL.

use super::metrics_text;
use sqlx::Connection;
use std::path::PathBuf;

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
