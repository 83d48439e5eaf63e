//! The real server application with the portal merged in, as the server's
//! `app()` will assemble it, served over TLS on 127.0.0.1 with a fresh CA.
#![allow(dead_code)]

use drawbridge_server::clock::Clock;
use drawbridge_server::db::Store;
use drawbridge_server::state::AppState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub const PASSWORD: &str = "Blue-Tractor-42";

/// Runs each named `async fn NAME(server: TestServer)` once on SQLite and once
/// on PostgreSQL, as the tests `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::TestServer::start().await).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(s) = $crate::common::TestServer::postgres(stringify!($name)).await {
                        super::$name(s).await
                    }
                }
            }
        )*
    };
}

pub struct TestServer {
    pub url: String,
    pub state: AppState,
    pub ca_pem: PathBuf,
    /// The server's certificate chain (leaf first).
    pub cert_pem: PathBuf,
    pub dir: tempfile::TempDir,
    /// The store is the test PostgreSQL server's (else SQLite in `dir`).
    pub postgres: bool,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    /// The server on SQLite (`test.db` in `dir`).
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self::start_on(&url, false, dir).await
    }

    /// The server on a fresh database of the test PostgreSQL server, or None
    /// (with a visible message) when `DRAWBRIDGE_TEST_POSTGRES_URL` is not set
    /// (`scripts/test` starts a server and sets it).
    pub async fn postgres(test: &str) -> Option<TestServer> {
        let Ok(base) = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL") else {
            if std::env::var("DRAWBRIDGE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("DRAWBRIDGE_REQUIRE_POSTGRES=1 but DRAWBRIDGE_TEST_POSTGRES_URL is not set");
            }
            eprintln!("SKIPPED {test} on PostgreSQL: DRAWBRIDGE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let db = format!("t_{}", drawbridge_server::secret::new_id().replace('-', ""));
        let pool = sqlx::PgPool::connect(&base)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&pool)
            .await
            .expect("create test database");
        pool.close().await;
        let (server, _) = base.rsplit_once('/').expect("a database in the URL");
        let url = format!("{server}/{db}");
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Self::start_on(&url, true, dir).await)
    }

    async fn start_on(store_url: &str, postgres: bool, dir: tempfile::TempDir) -> TestServer {
        let store = Store::open(store_url).await.expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let state = AppState::new(store, Clock::default(), url.clone())
            .await
            .expect("state");
        let files = drawbridge_server::pki::ensure_self_signed(&dir.path().join("tls"), &[])
            .expect("certificates");
        let tls = drawbridge_server::pki::server_config(&files.cert, &files.key).expect("tls");
        // As the server's start does on its self-signed defaults.
        *state.tls_ca.write().expect("lock") =
            Some(std::fs::read_to_string(&files.ca_cert).expect("ca.pem"));
        // The API with its state, and the portal over it, as the server's
        // `app()` merges them. (Not `app()` itself: once the server merges
        // the portal, this test crate would add a second copy of its routes.)
        let (api, _) = drawbridge_server::api::routes();
        let api = api.with_state(state.clone());
        let app = axum::Router::new()
            .merge(api.clone())
            .merge(drawbridge_portal::router(api, &state.portal_key));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(drawbridge_server::serve::serve_tls(
            listener,
            Arc::new(tls),
            app,
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            url,
            state,
            ca_pem: files.ca_cert,
            cert_pem: files.cert,
            dir,
            postgres,
            _stop: tx,
        }
    }

    /// A one-time setup token, as the server prints in its setup link.
    pub async fn setup_token(&self) -> String {
        drawbridge_server::bootstrap::new_setup_token(&self.state)
            .await
            .expect("setup token")
    }

    pub async fn audit_actions(&self) -> Vec<(String, String, String)> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT action, result, source FROM audit_log ORDER BY seq")
                .fetch_all(&self.state.store.pool)
                .await
                .expect("audit");
        rows
    }

    /// Marks a device online with its site switch on, as its edge would report.
    pub async fn edge_online(&self, name: &str) {
        sqlx::query("UPDATE devices SET online = 1, switch_on = 1, last_seen = $1 WHERE name = $2")
            .bind(self.state.clock.unix())
            .bind(name)
            .execute(&self.state.store.pool)
            .await
            .expect("device online");
    }

    /// `table.column` of every value in the database whose text holds `needle`.
    pub async fn find_text(&self, needle: &str) -> Vec<String> {
        let pool = &self.state.store.pool;
        let columns: Vec<(String, String)> = sqlx::query_as(if self.postgres {
            "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = 'public'"
        } else {
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'"
        })
        .fetch_all(pool)
        .await
        .expect("columns");
        assert!(columns.len() > 20, "{columns:?}");
        let mut found = Vec::new();
        for (table, column) in columns {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM \"{table}\" WHERE CAST(\"{column}\" AS TEXT) LIKE $1"
            ))
            .bind(format!("%{needle}%"))
            .fetch_one(pool)
            .await
            .expect("search");
            if n > 0 {
                found.push(format!("{table}.{column}"));
            }
        }
        found
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.state.store.pool)
            .await
            .expect("count")
    }
}

/// A browser-like HTTP client: our CA, a cookie jar, no automatic redirects.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The first form's CSRF token on the page.
    pub fn csrf(&self) -> String {
        let key = "name=\"csrf\" value=\"";
        let i = self.body.find(key).expect("a CSRF field") + key.len();
        self.body[i..].split('"').next().unwrap_or("").to_string()
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Browser {
    pub fn new(server: &TestServer) -> Browser {
        let ca = std::fs::read(&server.ca_pem).expect("CA");
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            http,
            base: server.url.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, res: reqwest::Response) -> Page {
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            let first = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = first.split_once('=') {
                if val.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), val.to_string());
                }
            }
        }
        Page {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .expect("GET");
        self.finish(res).await
    }

    /// A same-origin form POST (as a browser sends it).
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let host = self.base.trim_start_matches("https://").to_string();
        self.post_with(
            path,
            form,
            &[
                ("origin", &format!("https://{host}")),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await
    }

    pub async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("POST");
        self.finish(res).await
    }

    /// Follows one redirect (GET).
    pub async fn follow(&mut self, p: &Page) -> Page {
        let to = p.location().to_string();
        assert!(
            !to.is_empty(),
            "expected a redirect, got {} {}",
            p.status,
            p.body
        );
        self.get(&to).await
    }

    /// Runs the first-run setup page; returns nothing, panics on failure.
    pub async fn setup(&mut self, token: &str, account: &str) {
        let form = self.get(&format!("/portal/setup?token={token}")).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        let done = self
            .post(
                "/portal/setup",
                &[
                    ("csrf", &csrf),
                    ("token", token),
                    ("account", account),
                    ("admin_username", "admin"),
                    ("admin_password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        assert!(done.body.contains("was created"), "{}", done.body);
    }

    /// Creates a user with the password `PASSWORD` from the users page's form.
    pub async fn create_user(&mut self, csrf: &str, username: &str, role: &str) {
        let r = self
            .post(
                "/portal/users",
                &[
                    ("csrf", csrf),
                    ("username", username),
                    ("role", role),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
    }

    /// Creates a device from the devices page's form; returns its id.
    pub async fn create_device(&mut self, csrf: &str, name: &str, firewall: &str) -> String {
        let created = self
            .post(
                "/portal/devices",
                &[("csrf", csrf), ("name", name), ("firewall", firewall)],
            )
            .await;
        between(&created.body, "action=\"/portal/devices/", "/config\"").to_string()
    }

    /// Prepares a session of one device for one user from the portal's form;
    /// returns the new session page's path.
    pub async fn prepare_session(
        &mut self,
        csrf: &str,
        name: &str,
        (device, targets): (&str, &str),
        user: &str,
    ) -> String {
        let field = format!("targets_{device}");
        let r = self
            .post(
                "/portal/sessions",
                &[
                    ("csrf", csrf),
                    ("name", name),
                    ("device", device),
                    (&field, targets),
                    ("user", user),
                ],
            )
            .await;
        let to = r.location().to_string();
        assert!(
            to.starts_with("/portal/sessions/") && to != "/portal/sessions/new",
            "{} {}",
            r.status,
            self.follow(&r).await.body
        );
        to
    }

    /// Logs in with a password (no second factor); ends on the dashboard.
    pub async fn login(&mut self, account: &str, user: &str, password: &str) -> Page {
        let form = self.get("/portal/login").await;
        let csrf = form.csrf();
        let r = self
            .post(
                "/portal/login",
                &[
                    ("csrf", &csrf),
                    ("account", account),
                    ("username", user),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "login: {}", r.body);
        self.follow(&r).await
    }
}

/// Records the session key of every device of `session` as its edge announces
/// it (the edge channel's `SessionKey`), once the session is active; false
/// while it is not.
pub async fn announce_edge_key(pool: &sqlx::AnyPool, session: &str, key: [u8; 32]) -> bool {
    use base64::Engine;
    sqlx::query(
        "UPDATE session_devices SET edge_public_key = $1 WHERE session_id = $2
         AND edge_public_key IS NULL
         AND EXISTS (SELECT 1 FROM sessions WHERE id = $2 AND state = 'active')",
    )
    .bind(base64::engine::general_purpose::STANDARD.encode(key))
    .bind(session)
    .execute(pool)
    .await
    .expect("announce the edge's key")
    .rows_affected()
        > 0
}

/// The text between the first `start` and the next `end`.
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {text}"))
        + start.len();
    text[i..].split(end).next().unwrap()
}
