//! Test harness: the real application (router, store, clock) in-process, on a
//! fresh SQLite file or a fresh PostgreSQL database per test.
//!
//! PostgreSQL comes from `DRAWBRIDGE_TEST_POSTGRES_URL` (set by `scripts/test`,
//! which starts a throwaway server). Without it the PostgreSQL half of each
//! store test prints a visible SKIPPED line, unless `DRAWBRIDGE_REQUIRE_POSTGRES=1`
//! makes that a failure (as in CI).
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use drawbridge_server::clock::Clock;
use drawbridge_server::db::Store;
use drawbridge_server::state::AppState;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Connection;
use tower::ServiceExt;

pub const PASSWORD: &str = "Blue-Tractor-42";

pub struct TestApp {
    pub state: AppState,
    pub app: Router,
    pub backend: &'static str,
    /// The key file sealing the database's secrets, as the server binary keeps it.
    pub secrets_key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs each named `async fn NAME(app: TestApp)` once on SQLite and once on PostgreSQL,
/// as the tests `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::TestApp::sqlite().await).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = $crate::common::TestApp::postgres(stringify!($name)).await {
                        super::$name(app).await
                    }
                }
            }
        )*
    };
}

impl TestApp {
    async fn with_url(url: &str, backend: &'static str, dir: tempfile::TempDir) -> TestApp {
        let secrets_key_file = dir.path().join("secrets.key");
        let key = drawbridge_server::sealed::SecretsKey::load_or_create(&secrets_key_file)
            .expect("secrets key");
        let store = Store::open_sealed(url, key).await.expect("open store");
        // The password pool hashes without resting here: these tests check the
        // rules (limits, lockouts, races), which must not hang on how fast a
        // login is. The pacing that protects the data plane during a login
        // flood has its own test (password::tests) and benchmark (--dos).
        drawbridge_server::password::set_global_share(1.0);
        let state = AppState::new(store, Clock::default(), "https://127.0.0.1:8443".into())
            .await
            .expect("state");
        let app = drawbridge_server::app(state.clone());
        TestApp {
            state,
            app,
            backend,
            secrets_key_file,
            _dir: dir,
        }
    }

    /// The same database opened again, as another replica or a restart would.
    pub async fn reopen_store(&self) -> Store {
        let key = drawbridge_server::sealed::SecretsKey::load_or_create(&self.secrets_key_file)
            .expect("secrets key");
        Store::open_sealed(&self.state.store.url, key)
            .await
            .expect("reopen store")
    }

    pub async fn sqlite() -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self::with_url(&url, "sqlite", dir).await
    }

    /// A fresh database on the test PostgreSQL server, or None (with a visible message).
    pub async fn postgres(test: &str) -> Option<TestApp> {
        let Ok(base) = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL") else {
            if std::env::var("DRAWBRIDGE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("DRAWBRIDGE_REQUIRE_POSTGRES=1 but DRAWBRIDGE_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "SKIPPED {test} on PostgreSQL: DRAWBRIDGE_TEST_POSTGRES_URL is not set (scripts/test starts a server and sets it)"
            );
            return None;
        };
        let db = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::postgres::PgConnection::connect(&base)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&base).expect("postgres URL");
        url.set_path(&db);
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Self::with_url(url.as_str(), "postgres", dir).await)
    }

    pub fn clock(&self) -> &Clock {
        &self.state.clock
    }

    /// One request; returns status and JSON body (Null when empty, String when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }
    pub async fn put(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), None).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Asserts success and returns the body.
    pub async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method.clone(), path, Some(token), body).await;
        assert!(s.is_success(), "{method} {path} → {s}: {v}");
        v
    }

    pub async fn login(&self, account: &str, user: &str, password: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"account": account, "username": user, "password": password})),
        )
        .await
    }

    /// Logs in and returns a complete token.
    pub async fn token(&self, account: &str, user: &str) -> String {
        let (s, v) = self.login(account, user, PASSWORD).await;
        assert_eq!(s, StatusCode::OK, "login {user}: {v}");
        assert_eq!(v["stage"], "complete", "{v}");
        v["token"].as_str().expect("token").to_string()
    }

    /// A new account with an admin; returns it.
    pub async fn account(&self, name: &str) -> Account {
        let token = drawbridge_server::bootstrap::new_setup_token(&self.state)
            .await
            .expect("setup token");
        let (s, v) = self
            .call(
                Method::POST,
                "/api/v1/setup",
                None,
                Some(json!({"token": token, "account": name, "admin_username": "admin", "admin_password": PASSWORD})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "setup: {v}");
        let admin_token = self.token(name, "admin").await;
        Account {
            name: name.to_string(),
            id: v["account"]["id"].as_str().expect("id").to_string(),
            admin_id: v["admin"]["id"].as_str().expect("id").to_string(),
            admin: admin_token,
        }
    }

    /// Creates a user with a role and logs them in; returns (id, token).
    pub async fn user(&self, acct: &Account, username: &str, role: &str) -> (String, String) {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/users",
                &acct.admin,
                Some(json!({"username": username, "role": role, "password": PASSWORD})),
            )
            .await;
        let id = v["id"].as_str().expect("id").to_string();
        (id, self.token(&acct.name, username).await)
    }

    /// Creates a device (firewall: tcp 192.168.1.0/24 and icmp) and returns (id, activation key).
    pub async fn device(&self, acct: &Account, name: &str) -> (String, String) {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/devices",
                &acct.admin,
                Some(json!({
                    "name": name,
                    "lan_subnets": ["192.168.1.0/24"],
                    "firewall": [
                        {"address": "192.168.1.0/24", "protocol": "tcp"},
                        {"address": "192.168.1.0/24", "protocol": "icmp"}
                    ]
                })),
            )
            .await;
        let id = v["device"]["id"].as_str().expect("id").to_string();
        // Most tests are not about the edge: the device starts as if its edge were
        // connected with the site switch on. Edge tests use `edge_state`.
        self.edge_state(&id, true, true).await;
        (
            id,
            v["activation"]["key"].as_str().expect("key").to_string(),
        )
    }

    /// Sets a device's edge status straight in the database (a stand-in for an
    /// edge channel, for tests that are not about the edge).
    pub async fn edge_state(&self, device: &str, online: bool, switch_on: bool) {
        sqlx::query("UPDATE devices SET online = $1, switch_on = $2, last_seen = $3 WHERE id = $4")
            .bind(i64::from(online))
            .bind(i64::from(switch_on))
            .bind(self.state.now())
            .bind(device)
            .execute(&self.state.store.pool)
            .await
            .expect("edge state");
    }

    /// Group with members, pool with devices, and a grant between them; returns (group, pool).
    pub async fn grant(
        &self,
        acct: &Account,
        users: &[&str],
        devices: &[&str],
        level: &str,
        targets: Value,
    ) -> (String, String) {
        let n = uuid::Uuid::new_v4().simple().to_string();
        let g = self
            .ok(
                Method::POST,
                "/api/v1/groups",
                &acct.admin,
                Some(json!({"name": format!("g-{n}")})),
            )
            .await;
        let p = self
            .ok(
                Method::POST,
                "/api/v1/pools",
                &acct.admin,
                Some(json!({"name": format!("p-{n}")})),
            )
            .await;
        let (g, p) = (
            g["id"].as_str().expect("id").to_string(),
            p["id"].as_str().expect("id").to_string(),
        );
        for u in users {
            self.ok(
                Method::PUT,
                &format!("/api/v1/groups/{g}/members/{u}"),
                &acct.admin,
                None,
            )
            .await;
        }
        for d in devices {
            self.ok(
                Method::PUT,
                &format!("/api/v1/pools/{p}/devices/{d}"),
                &acct.admin,
                None,
            )
            .await;
        }
        self.ok(
            Method::POST,
            "/api/v1/grants",
            &acct.admin,
            Some(json!({"group_id": g, "pool_id": p, "level": level, "targets": targets})),
        )
        .await;
        (g, p)
    }

    /// Prepares a session on one device (tcp 192.168.1.10:502) for users; returns its id.
    pub async fn session(&self, token: &str, device: &str, users: &[&str]) -> String {
        let v = self
            .ok(
                Method::POST,
                "/api/v1/sessions",
                token,
                Some(json!({
                    "name": "maintenance",
                    "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
                    "users": users
                })),
            )
            .await;
        v["id"].as_str().expect("id").to_string()
    }

    /// Drops the triggers that keep `audit_log` append-only, as the database's owner
    /// could: for tests of what the hash chain still finds after that.
    pub async fn lift_audit_guard(&self) {
        let pool = &self.state.store.pool;
        let statements: &[&str] = match self.state.store.backend {
            drawbridge_server::db::Backend::Sqlite => &[
                "DROP TRIGGER audit_log_no_update",
                "DROP TRIGGER audit_log_no_delete",
            ],
            drawbridge_server::db::Backend::Postgres => &[
                "DROP TRIGGER audit_log_append_only ON audit_log",
                "DROP TRIGGER audit_log_no_truncate ON audit_log",
            ],
        };
        for s in statements {
            sqlx::query(s).execute(pool).await.expect(s);
        }
    }

    /// Row count of a table, straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.state.store.pool)
            .await
            .expect("count")
    }
}

pub struct Account {
    pub name: String,
    pub id: String,
    pub admin_id: String,
    /// The admin's login token.
    pub admin: String,
}
