//! The syslog streamer every replica runs. Each second it takes (or renews)
//! the lease of each target nobody else holds, and for each account the
//! target covers sends the audit entries after the target's cursor, in order,
//! then moves the cursor. A connection stays open between rounds; a failure
//! drops it, records the error and tries again the next round, from the
//! cursor: nothing is lost, and after a crash between a send and its cursor
//! the receiver may see entries again (at least once; `seq` tells them apart).

use super::Target;
use super::format;
use crate::db::Tx;
use crate::error::AppResult;
use crate::state::AppState;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How often targets are served.
pub const ROUND: Duration = Duration::from_secs(1);
/// A lease lasts this long without renewal (seconds).
pub const LEASE_SECS: i64 = 15;
/// Entries sent per account and round.
pub const BATCH: u32 = 500;
/// Time to connect (and for TLS, to shake hands) and to write one batch.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's own targets (`--syslog`), every account's entries.
pub const SERVER_ACCOUNT: &str = "";

/// An open connection to a receiver.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether the receiver closed it (or sent anything: receivers send
    /// nothing, so the connection is not trusted any more). Checked before
    /// each batch, so that entries are not written into a connection a
    /// stopped receiver left.
    fn gone(&self) -> bool {
        let mut b = [0u8; 1];
        !matches!(self.tcp().try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(t) => {
                t.write_all(bytes).await?;
                t.flush().await
            }
            Conn::Tls(t) => {
                t.write_all(bytes).await?;
                t.flush().await
            }
        }
    }
}

fn target_id(account: &str, url: &str) -> String {
    format!("{account}|{url}")
}

/// Makes the server's configured targets the ones in the database.
pub async fn set_server_targets(state: &AppState, targets: &[Target]) -> AppResult<()> {
    let urls: Vec<String> = targets.iter().map(Target::url).collect();
    let mut tx = state.store.begin().await?;
    replace_account_targets(&mut tx, SERVER_ACCOUNT, &urls, state.now()).await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces the targets of `account` (`SERVER_ACCOUNT`: the server's) by
/// `urls`; a kept target keeps its cursors.
pub async fn replace_account_targets(
    tx: &mut Tx<'_>,
    account: &str,
    urls: &[String],
    now: i64,
) -> AppResult<()> {
    // One replacement at a time per account: the account's row lock on
    // PostgreSQL (SQLite runs one writer anyway), so that replacements at the
    // same moment do not leave the union of their lists.
    sqlx::query("UPDATE accounts SET settings = settings WHERE id = $1")
        .bind(account)
        .execute(&mut **tx)
        .await?;
    let old: Vec<String> =
        sqlx::query_scalar("SELECT url FROM syslog_targets WHERE account_id = $1")
            .bind(account)
            .fetch_all(&mut **tx)
            .await?;
    for url in old.iter().filter(|u| !urls.contains(u)) {
        let id = target_id(account, url);
        sqlx::query("DELETE FROM syslog_cursors WHERE target_id = $1")
            .bind(&id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM syslog_targets WHERE id = $1")
            .bind(&id)
            .execute(&mut **tx)
            .await?;
    }
    for url in urls.iter().filter(|u| !old.contains(u)) {
        sqlx::query(
            "INSERT INTO syslog_targets (id, account_id, url, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(target_id(account, url))
        .bind(account)
        .bind(url)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The account's targets and how far each got.
pub async fn status(state: &AppState, account: &str) -> AppResult<Vec<super::SyslogTargetStatus>> {
    let rows = sqlx::query(
        "SELECT t.url, t.last_sent_at, t.last_error, COALESCE(c.seq, 0) AS seq FROM syslog_targets t
         LEFT JOIN syslog_cursors c ON c.target_id = t.id AND c.account_id = t.account_id
         WHERE t.account_id = $1 ORDER BY t.url",
    )
    .bind(account)
    .fetch_all(&state.store.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(super::SyslogTargetStatus {
                url: r.try_get("url")?,
                sent_seq: r.try_get("seq")?,
                last_sent_at: r.try_get("last_sent_at")?,
                last_error: r.try_get("last_error")?,
            })
        })
        .collect()
}

/// TLS trust for receivers: the system's roots and `extra` CA files.
pub fn tls_config(extra: &[std::path::PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    for path in extra {
        let pem = std::fs::read(path)?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn connect(t: &Target, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Conn> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
    tcp.set_nodelay(true)?;
    if !t.tls {
        return Ok(Conn::Tcp(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(t.host.clone())?;
    let s = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the TLS handshake timed out"))??;
    Ok(Conn::Tls(Box::new(s)))
}

/// Runs the streamer (call once per process).
pub fn spawn(state: AppState, tls: Arc<rustls::ClientConfig>) {
    tokio::spawn(async move {
        let mut conns: HashMap<String, Conn> = HashMap::new();
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = round(&state, &tls, &mut conns).await {
                tracing::warn!(error = %e, "syslog streaming round failed");
            }
        }
    });
}

/// One round over every target; answers how many entries went out.
pub async fn round(
    state: &AppState,
    tls: &Arc<rustls::ClientConfig>,
    conns: &mut HashMap<String, Conn>,
) -> anyhow::Result<usize> {
    let now = state.now();
    let me = &state.notify.owner;
    let targets = sqlx::query("SELECT id, account_id, url FROM syslog_targets ORDER BY id")
        .fetch_all(&state.store.pool)
        .await?;
    let mut sent = 0;
    let mut live = Vec::new();
    for t in targets {
        let (id, account, url): (String, String, String) =
            (t.try_get(0)?, t.try_get(1)?, t.try_get(2)?);
        let held = sqlx::query(
            "UPDATE syslog_targets SET holder = $1, lease_until = $2
             WHERE id = $3 AND (holder = $1 OR lease_until < $4 OR holder IS NULL)",
        )
        .bind(me)
        .bind(now + LEASE_SECS)
        .bind(&id)
        .bind(now)
        .execute(&state.store.pool)
        .await?
        .rows_affected()
            == 1;
        if !held {
            conns.remove(&id);
            continue;
        }
        live.push(id.clone());
        match serve(state, tls, conns, &id, &account, &url).await {
            Ok(n) => sent += n,
            Err(e) => {
                conns.remove(&id);
                let msg: String = e.to_string().chars().take(300).collect();
                tracing::warn!(target = %url, error = %msg, "syslog target failed");
                sqlx::query("UPDATE syslog_targets SET last_error = $1 WHERE id = $2")
                    .bind(&msg)
                    .bind(&id)
                    .execute(&state.store.pool)
                    .await?;
            }
        }
    }
    conns.retain(|id, _| live.contains(id));
    Ok(sent)
}

/// Sends what each covered account has after the cursor.
async fn serve(
    state: &AppState,
    tls: &Arc<rustls::ClientConfig>,
    conns: &mut HashMap<String, Conn>,
    id: &str,
    account: &str,
    url: &str,
) -> anyhow::Result<usize> {
    let accounts: Vec<String> = if account == SERVER_ACCOUNT {
        sqlx::query_scalar("SELECT id FROM accounts ORDER BY id")
            .fetch_all(&state.store.pool)
            .await?
    } else {
        vec![account.to_string()]
    };
    let fmt = format::formatter(&super::format_host(&state.public_url));
    let mut sent = 0;
    for acct in accounts {
        let cursor: i64 = sqlx::query_scalar(
            "SELECT seq FROM syslog_cursors WHERE target_id = $1 AND account_id = $2",
        )
        .bind(id)
        .bind(&acct)
        .fetch_optional(&state.store.pool)
        .await?
        .unwrap_or(0);
        let q = drawbridge_proto::api::AuditQuery {
            after_seq: Some(cursor),
            limit: Some(BATCH),
            ..Default::default()
        };
        let page = crate::audit::query_page(&state.store, &acct, &q).await?;
        let Some(last) = page.entries.last().map(|e| e.seq) else {
            continue;
        };
        let mut bytes = Vec::new();
        for e in &page.entries {
            bytes.extend_from_slice(&format::frame(&fmt, e));
        }
        if conns.get(id).is_some_and(Conn::gone) {
            conns.remove(id);
        }
        if !conns.contains_key(id) {
            let target = Target::parse(url, None).map_err(anyhow::Error::msg)?;
            conns.insert(id.to_string(), connect(&target, tls).await?);
        }
        let conn = conns.get_mut(id).expect("inserted above");
        tokio::time::timeout(IO_TIMEOUT, conn.send(&bytes))
            .await
            .map_err(|_| anyhow::anyhow!("writing timed out"))??;
        sqlx::query(
            "INSERT INTO syslog_cursors (target_id, account_id, seq) VALUES ($1, $2, $3)
             ON CONFLICT (target_id, account_id) DO UPDATE SET seq = excluded.seq",
        )
        .bind(id)
        .bind(&acct)
        .bind(last)
        .execute(&state.store.pool)
        .await?;
        sqlx::query("UPDATE syslog_targets SET last_sent_at = $1, last_error = NULL WHERE id = $2")
            .bind(state.now())
            .bind(id)
            .execute(&state.store.pool)
            .await?;
        sent += page.entries.len();
    }
    Ok(sent)
}
