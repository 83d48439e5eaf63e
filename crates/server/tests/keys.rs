//! A WireGuard public key is unique among peers, across accounts: `join`
//! refuses an edge's session key, and an edge's session-key announcement
//! refuses a client's key or another edge's, so nobody can knock a peer off the
//! relay (one connection per key) by reusing its key. Each runs on SQLite and
//! PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::StatusCode;
use common::TestApp;
use drawbridge_proto::WgKey;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use live_harness::*;
use serde_json::json;

store_tests!(
    malformed_wireguard_keys_are_refused_and_change_nothing,
    a_wireguard_key_in_use_by_one_peer_is_refused_to_every_other,
    concurrent_joins_with_one_key_have_one_winner_and_clean_conflicts,
    concurrent_edge_announcements_of_one_key_have_one_winner,
    the_unique_key_migration_keeps_old_ended_rows_with_repeated_keys,
);

/// The edge key stored for (session, device).
async fn edge_key(l: &Live, s: &str, d: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT edge_public_key FROM session_devices WHERE session_id = $1 AND device_id = $2",
    )
    .bind(s)
    .bind(d)
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap()
}

/// Announces `key` for session `s`; returns the server's error code, if any, once it is processed.
async fn announce(l: &Live, ws: &mut Ws, s: &str, d: &str, key: &WgKey) -> Option<String> {
    send(
        ws,
        &EdgeToServer::SessionKey {
            session_id: s.to_string(),
            public_key: *key,
        },
    )
    .await;
    outcome(l, ws, s, d, key).await
}

async fn a_wireguard_key_in_use_by_one_peer_is_refused_to_every_other(app: TestApp) {
    let l = live(app).await;
    let acme = l.app.account("acme").await;
    let rival = l.app.account("rival").await;
    let d = enrolled(&l, &acme, "press-1").await;
    let r = enrolled(&l, &rival, "press-9").await;
    let mut wd = edge(&l, &d, true).await;
    let mut wr = edge(&l, &r, true).await;
    // acme: a running session, its client joined with key 1, its edge announces key 7.
    let (s, _c) = running(&l, &acme, &d, 1).await;
    assert_eq!(announce(&l, &mut wd, &s, &d.id, &wg_key(7)).await, None);
    // Announcing the same key again for the same session is fine (an edge restart).
    assert_eq!(announce(&l, &mut wd, &s, &d.id, &wg_key(7)).await, None);
    // rival: a running session on its own edge.
    let (s2, _c2) = running(&l, &rival, &r, 2).await;
    // Its edge may not take acme's client key nor acme's edge key.
    for taken in [wg_key(1), wg_key(7)] {
        assert_eq!(
            announce(&l, &mut wr, &s2, &r.id, &taken).await.as_deref(),
            Some("conflict"),
            "an edge took another peer's key"
        );
        assert_eq!(edge_key(&l, &s2, &r.id).await, None, "nothing stored");
    }
    // Its users may not join with acme's edge key either (nor with a client key in use).
    let (s3, _c3) = running(&l, &rival, &r, 3).await;
    for taken in [wg_key(7), wg_key(1)] {
        let (st, v) = l
            .app
            .post(
                &format!("/api/v1/sessions/{s3}/join"),
                &rival.admin,
                json!({"public_key": taken}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
    }
    // A fresh key works.
    assert_eq!(announce(&l, &mut wr, &s2, &r.id, &wg_key(8)).await, None);
}

/// Keys that are not 32 bytes of canonical base64 never reach a handler: a join
/// gets 400 and leaves no tunnel record; an edge announcing one is told the
/// message is malformed and nothing is stored.
async fn malformed_wireguard_keys_are_refused_and_change_nothing(app: TestApp) {
    let l = live(app).await;
    let acme = l.app.account("acme").await;
    let d = enrolled(&l, &acme, "press-1").await;
    let _wd = edge(&l, &d, true).await;
    let s = started(&l, &acme, &d).await;
    let good = wg_key(1).to_string();
    let malformed = [
        String::new(),
        "AAAA".to_string(),
        good[..43].to_string(),
        format!("{good}A"),
        // 44 characters, but the last one carries bits beyond the 32 bytes.
        format!("{}B=", &good[..42]),
        // Right length, not base64.
        format!("{}!!", &good[..42]),
        format!("{}\nPostUp = id", &good[..30]),
        "A".repeat(10_000),
    ];
    for bad in &malformed {
        let (st, v) = l
            .app
            .post(
                &format!("/api/v1/sessions/{s}/join"),
                &acme.admin,
                json!({ "public_key": bad }),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad:?}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("WireGuard key"),
            "{v}"
        );
    }
    let tunnels: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tunnels WHERE session_id = $1")
        .bind(&s)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(tunnels, 0, "a refused join left a tunnel record");
    // The edge channel: the same key as raw JSON is a malformed message.
    let mut wd = edge(&l, &d, true).await;
    let text = json!({"type": "session_key", "session_id": s, "public_key": good[..43]});
    send(&mut wd, &text).await;
    let code = loop {
        match recv::<ServerToEdge>(&mut wd).await {
            Some(ServerToEdge::Error { code, .. }) => break code,
            Some(_) => continue,
            None => panic!("closed without an error"),
        }
    };
    assert_eq!(code, "bad_request");
    assert_eq!(edge_key(&l, &s, &d.id).await, None, "nothing stored");
    // A real key still works afterwards (on a fresh channel).
    let mut wd = edge(&l, &d, true).await;
    assert_eq!(announce(&l, &mut wd, &s, &d.id, &wg_key(7)).await, None);
}

/// A started (not joined) session of `acct` on `d`.
async fn started(l: &Live, acct: &common::Account, d: &Device) -> String {
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            axum::http::Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    s
}

async fn concurrent_joins_with_one_key_have_one_winner_and_clean_conflicts(app: TestApp) {
    let l = std::sync::Arc::new(live(app).await);
    let acme = l.app.account("acme").await;
    let d = enrolled(&l, &acme, "press-1").await;
    let _wd = edge(&l, &d, true).await;
    // Running sessions on one device; thirty joins at once with one key, into
    // all of them; three rounds with a fresh key each.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(started(&l, &acme, &d).await);
    }
    for round in 0..3u8 {
        let key = wg_key(40 + round);
        let mut joins = Vec::new();
        for i in 0..30 {
            let l = l.clone();
            let s = sessions[i % sessions.len()].clone();
            let token = acme.admin.clone();
            joins.push(tokio::spawn(async move {
                l.app
                    .post(
                        &format!("/api/v1/sessions/{s}/join"),
                        &token,
                        json!({"public_key": key}),
                    )
                    .await
            }));
        }
        let mut won = 0;
        for j in joins {
            let (st, v) = j.await.unwrap();
            match st {
                StatusCode::OK => won += 1,
                StatusCode::CONFLICT => assert_eq!(v["code"], "conflict", "{v}"),
                other => panic!("a join answered {other}: {v}"),
            }
        }
        assert_eq!(won, 1, "exactly one join takes the key (round {round})");
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tunnels WHERE client_public_key = $1 AND ended_at IS NULL",
        )
        .bind(key.to_string())
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
        assert_eq!(open, 1, "one live tunnel row holds the key");
    }
}

/// Waits until `key` is stored for (s, d) or the edge is told of an error.
async fn outcome(l: &Live, ws: &mut Ws, s: &str, d: &str, key: &WgKey) -> Option<String> {
    for _ in 0..100 {
        if edge_key(l, s, d).await == Some(key.to_string()) {
            return None;
        }
        if let Ok(Some(m)) = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            recv::<ServerToEdge>(ws),
        )
        .await
            && let ServerToEdge::Error { code, .. } = m
        {
            return Some(code);
        }
    }
    panic!("the announcement was neither stored nor refused");
}

async fn concurrent_edge_announcements_of_one_key_have_one_winner(app: TestApp) {
    let l = live(app).await;
    let acme = l.app.account("acme").await;
    let rival = l.app.account("rival").await;
    for round in 0..5u8 {
        let d = enrolled(&l, &acme, &format!("press-{round}")).await;
        let r = enrolled(&l, &rival, &format!("lathe-{round}")).await;
        let mut wd = edge(&l, &d, true).await;
        let mut wr = edge(&l, &r, true).await;
        let s1 = started(&l, &acme, &d).await;
        let s2 = started(&l, &rival, &r).await;
        let key = wg_key(100 + round);
        let msg = |s: &str| EdgeToServer::SessionKey {
            session_id: s.to_string(),
            public_key: key,
        };
        // Both edges announce the same key at the same moment.
        let (m1, m2) = (msg(&s1), msg(&s2));
        tokio::join!(send(&mut wd, &m1), send(&mut wr, &m2));
        let (a, b) = tokio::join!(
            outcome(&l, &mut wd, &s1, &d.id, &key),
            outcome(&l, &mut wr, &s2, &r.id, &key)
        );
        let mut results = [a, b];
        results.sort();
        assert_eq!(
            results,
            [None, Some("conflict".to_string())],
            "one edge keeps the key, the other is refused (round {round})"
        );
        let holders: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM session_devices WHERE edge_public_key = $1")
                .bind(key.to_string())
                .fetch_one(&l.app.state.store.pool)
                .await
                .unwrap();
        assert_eq!(holders, 1);
    }
}

async fn the_unique_key_migration_keeps_old_ended_rows_with_repeated_keys(app: TestApp) {
    // Rows as an older server could leave them: ended tunnels of two sessions
    // with one key, two ended sessions whose edges announced one key.
    let l = live(app).await;
    let acme = l.app.account("acme").await;
    let d = enrolled(&l, &acme, "press-1").await;
    let _wd = edge(&l, &d, true).await;
    let s1 = started(&l, &acme, &d).await;
    let s2 = started(&l, &acme, &d).await;
    let pool = &l.app.state.store.pool;
    // Take the migration back, write old rows, and run it again.
    for stmt in [
        "DROP INDEX tunnels_live_client_key",
        "DROP INDEX session_devices_edge_key",
    ] {
        sqlx::query(stmt).execute(pool).await.unwrap();
    }
    for (i, s) in [&s1, &s2].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO tunnels (id, account_id, session_id, device_id, user_id, client_public_key, started_at, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, 10, 20)",
        )
        .bind(format!("old-{i}"))
        .bind(&acme.id)
        .bind(s)
        .bind(&d.id)
        .bind(&acme.admin_id)
        .bind(wg_key(9).to_string())
        .execute(pool)
        .await
        .unwrap();
        sqlx::query("UPDATE session_devices SET edge_public_key = $1 WHERE session_id = $2")
            .bind(wg_key(8).to_string())
            .bind(s)
            .execute(pool)
            .await
            .unwrap();
    }
    let sql = include_str!("../migrations/0009_unique_keys_coalesced_times.sql");
    // Its statements from the tunnels' clean-up on, comments left out.
    let from = sql.find("UPDATE tunnels").unwrap();
    let body: String = sql[from..]
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut tx = pool.begin().await.unwrap();
    for stmt in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(stmt).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    // The ended rows are kept as they were; the repeated edge key stays on one row.
    let ended: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tunnels WHERE client_public_key = $1 AND ended_at = 20",
    )
    .bind(wg_key(9).to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(ended, 2);
    let holders: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM session_devices WHERE edge_public_key = $1")
            .bind(wg_key(8).to_string())
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(holders, 1);
    // And the index holds from now on.
    let dup = sqlx::query("UPDATE session_devices SET edge_public_key = $1 WHERE session_id = $2")
        .bind(wg_key(8).to_string())
        .bind(if edge_key(&l, &s1, &d.id).await.is_some() {
            &s2
        } else {
            &s1
        })
        .execute(pool)
        .await
        .unwrap_err();
    assert!(drawbridge_server::db::is_unique_violation(&dup), "{dup}");
}
