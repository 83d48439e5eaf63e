//! SIEM streaming to a real receiver, Debian's rsyslog on loopback: an
//! account's audit entries arrive over TCP as RFC 5424 messages with their
//! sequence numbers, every one and in order, also after the receiver was
//! stopped and started again; the server's own TLS target gets every
//! account's; a target another replica holds is left alone; bad targets are
//! refused and change nothing. Both stores.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_server::outbox::NotifyConfig;
use drawbridge_server::syslog::{Target, worker};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

store_tests!(audit_entries_reach_rsyslog_in_order_over_tcp_and_tls_also_after_an_outage);

/// An rsyslogd of this test (stopped by its PID when dropped), writing each
/// message it takes as one line of `out`.
struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rsyslog {
    /// Listens on `addr:port`; with `tls`, (ca, cert, key) files.
    fn start(
        dir: &Path,
        name: &str,
        addr: &str,
        port: u16,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> Option<Rsyslog> {
        if !Path::new("/usr/sbin/rsyslogd").exists() {
            eprintln!(
                "SKIPPED: rsyslogd not installed (Debian's rsyslog; scripts/test installs it)"
            );
            return None;
        }
        let work = dir.join(name);
        std::fs::create_dir_all(&work).unwrap();
        let out = work.join("out.log");
        let (global, module) = match tls {
            Some((ca, cert, key)) => (
                format!(
                    "global(workDirectory=\"{w}\" DefaultNetstreamDriver=\"ossl\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")",
                    ca.display(),
                    cert.display(),
                    key.display(),
                    w = work.display()
                ),
                "module(load=\"imtcp\" StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")".to_string(),
            ),
            None => (
                format!("global(workDirectory=\"{}\")", work.display()),
                "module(load=\"imtcp\")".to_string(),
            ),
        };
        let conf = work.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "{global}\n{module}\ninput(type=\"imtcp\" port=\"{port}\" address=\"{addr}\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
                out.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(work.join("pid"))
            .spawn()
            .expect("rsyslogd starts");
        // Ready once it listens.
        for _ in 0..100 {
            if std::net::TcpStream::connect((addr, port)).is_ok() {
                return Some(Rsyslog { child, out });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("rsyslogd did not listen on {addr}:{port}");
    }

    /// (account, seq) of each message received so far, in arrival order.
    fn received(&self) -> Vec<(String, i64)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let field = |name: &str| {
                    let start = l.find(&format!("{name}=\""))? + name.len() + 2;
                    let end = start + l[start..].find('"')?;
                    Some(l[start..end].to_string())
                };
                Some((field("account")?, field("seq")?.parse().ok()?))
            })
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rounds of the streamer until `done` holds (at most ~15 s).
async fn rounds_until(
    app: &TestApp,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    rs: &Rsyslog,
    done: impl Fn() -> bool,
) {
    let mut conns = HashMap::new();
    let mut last = None;
    for _ in 0..150 {
        last = Some(worker::round(&app.state, tls, &mut conns).await);
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors: Vec<Option<String>> = sqlx::query_scalar("SELECT last_error FROM syslog_targets")
        .fetch_all(&app.state.store.pool)
        .await
        .unwrap();
    panic!(
        "the receiver never had every entry; last round {last:?}, errors {errors:?}, received: {}",
        std::fs::read_to_string(&rs.out)
            .unwrap_or_default()
            .chars()
            .take(2000)
            .collect::<String>()
    );
}

/// Every seq 1..=last of `account` arrived, and the last arrival of each is in order.
fn complete(got: &[(String, i64)], account: &str, last: i64) -> bool {
    let seqs: Vec<i64> = got
        .iter()
        .filter(|(a, _)| a == account)
        .map(|(_, s)| *s)
        .collect();
    (1..=last).all(|s| seqs.contains(&s))
}

async fn head(app: &TestApp, account: &str) -> i64 {
    sqlx::query_scalar("SELECT seq FROM audit_heads WHERE account_id = $1")
        .bind(account)
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap()
}

async fn audit_entries_reach_rsyslog_in_order_over_tcp_and_tls_also_after_an_outage(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(mut tcp) = Rsyslog::start(dir.path(), "tcp", "127.0.0.7", port, None) else {
        return;
    };
    app.state
        .notify
        .configure(&NotifyConfig {
            smtp: None,
            webhook_allow_private: true,
            webhook_failure_days: 5,
        })
        .unwrap();
    let acct = app.account("acme").await;
    let other = app.account("other").await;
    let tls = worker::tls_config(&[]).unwrap();

    // Bad targets: refused, nothing stored.
    for bad in [
        json!({"targets": ["udp://127.0.0.7:514"]}),
        json!({"targets": ["tcp://127.0.0.7"]}),
        json!({"targets": ["tcp://user:pw@127.0.0.7:514"]}),
        json!({"targets": ["tcp://127.0.0.7:514/path"]}),
        json!({"targets": ["tcp://169.254.169.254:514"]}),
        json!({"targets": ["tcp://a:1", "tcp://b:2", "tcp://c:3", "tcp://d:4", "tcp://e:5"]}),
        json!({"targets": "tcp://127.0.0.7:514"}),
    ] {
        let (s, v) = app
            .call(
                Method::PUT,
                "/api/v1/account/syslog",
                Some(&acct.admin),
                Some(bad.clone()),
            )
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {v}"
        );
    }
    assert_eq!(app.count("syslog_targets").await, 0);
    // 30 replacements at once, each of two targets: one list stays, not their union.
    let puts = (0..30).map(|i| {
        let app = &app;
        let token = &acct.admin;
        async move {
            app.call(
                Method::PUT,
                "/api/v1/account/syslog",
                Some(token),
                Some(json!({"targets": [format!("tcp://127.0.0.9:{}", 1000 + i), format!("tcp://127.0.0.9:{}", 2000 + i)]})),
            )
            .await
        }
    });
    for (s, v) in futures_util::future::join_all(puts).await {
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let ports: Vec<String> = sqlx::query_scalar("SELECT url FROM syslog_targets ORDER BY url")
        .fetch_all(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let n = |u: &str| u.rsplit(':').next().unwrap().parse::<u32>().unwrap();
    assert_eq!(
        n(&ports[0]) + 1000,
        n(&ports[1]),
        "one request's pair: {ports:?}"
    );
    let (_, user) = app.user(&acct, "ursula", "user").await;
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/account/syslog",
            Some(&user),
            Some(json!({"targets": [format!("tcp://127.0.0.7:{port}")]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The account's own TCP target: its whole chain arrives, nothing of the other account.
    app.ok(
        Method::PUT,
        "/api/v1/account/syslog",
        &acct.admin,
        Some(json!({"targets": [format!("tcp://127.0.0.7:{port}")]})),
    )
    .await;
    let last = head(&app, &acct.id).await;
    rounds_until(&app, &tls, &tcp, || {
        complete(&tcp.received(), &acct.id, last)
    })
    .await;
    assert!(
        tcp.received().iter().all(|(a, _)| a == &acct.id),
        "only its own account"
    );
    let status = app
        .ok(Method::GET, "/api/v1/account/syslog", &acct.admin, None)
        .await;
    assert_eq!(status[0]["sent_seq"], last, "{status}");

    // The receiver stops; entries go on being written; it comes back: all of them arrive.
    let first = tcp.received();
    drop(tcp);
    for i in 0..5 {
        app.login("acme", "admin", &format!("Wrong-{i}")).await;
    }
    let mut conns = HashMap::new();
    for _ in 0..3 {
        let _ = worker::round(&app.state, &tls, &mut conns).await;
    }
    let status = app
        .ok(Method::GET, "/api/v1/account/syslog", &acct.admin, None)
        .await;
    assert!(
        status[0]["last_error"].is_string(),
        "the outage shows: {status}"
    );
    tcp = Rsyslog::start(dir.path(), "tcp-again", "127.0.0.7", port, None).unwrap();
    let last = head(&app, &acct.id).await;
    rounds_until(&app, &tls, &tcp, || {
        complete(&[first.clone(), tcp.received()].concat(), &acct.id, last)
    })
    .await;
    let got: Vec<i64> = tcp.received().iter().map(|(_, s)| *s).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");

    // A target another replica holds is left alone.
    sqlx::query("UPDATE syslog_targets SET holder = 'another-replica', lease_until = $1")
        .bind(app.state.now() + 600)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    app.login("acme", "admin", "Wrong-again").await;
    let mut conns = HashMap::new();
    assert_eq!(
        worker::round(&app.state, &tls, &mut conns).await.unwrap(),
        0
    );

    // The server's own TLS target: every account's entries.
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params.self_signed(&ca).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca)
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    let tls_port = free_port();
    let Some(secure) = Rsyslog::start(
        dir.path(),
        "tls",
        "127.0.0.1",
        tls_port,
        Some((&ca_path, &cert_path, &key_path)),
    ) else {
        return;
    };
    worker::set_server_targets(
        &app.state,
        &[Target::parse(&format!("tls://localhost:{tls_port}"), None).unwrap()],
    )
    .await
    .unwrap();
    let trusted = worker::tls_config(&[ca_path]).unwrap();
    let (a_last, o_last) = (head(&app, &acct.id).await, head(&app, &other.id).await);
    rounds_until(&app, &trusted, &secure, || {
        let got = secure.received();
        complete(&got, &acct.id, a_last) && complete(&got, &other.id, o_last)
    })
    .await;
    // Without the CA the same receiver is not trusted: nothing more goes out.
    app.login("acme", "admin", "Wrong-once-more").await;
    let before = secure.received().len();
    let mut conns = HashMap::new();
    for _ in 0..3 {
        let _ = worker::round(&app.state, &tls, &mut conns).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        secure.received().len(),
        before,
        "an untrusted receiver gets nothing"
    );
}
