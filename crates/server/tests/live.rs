//! Live sessions over real TLS WebSockets: the edge channel (authentication by
//! the enrolled key, status, switch, approvals, per-session keys), the client
//! join and channel, candidate exchange, relay tokens, and teardown on both
//! ends. Each runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::TestApp;
use drawbridge_proto::channel::{
    ClientToServer, EDGE_AUTH_CONTEXT, EdgeStatus, EdgeToServer, ServerToClient, ServerToEdge,
    TunnelReport,
};
use futures_util::SinkExt;
use live_harness::*;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

store_tests!(
    an_edge_authenticates_with_its_enrolled_key_only,
    sessions_start_only_with_the_edge_online_and_its_switch_on,
    switching_off_ends_every_session_of_the_edge_within_seconds,
    dual_control_waits_for_approval_on_site_or_by_another_approver,
    a_joined_client_and_the_edge_exchange_keys_candidates_and_relay_tokens,
    ending_or_disabling_tears_down_both_ends_and_records_the_tunnel,
    joining_is_for_assigned_users_whose_grants_still_cover_the_session,
    concurrent_joins_get_distinct_overlay_addresses,
    a_change_on_one_replica_reaches_an_edge_connected_to_another,
    a_change_missed_while_a_replica_listener_reconnects_reaches_its_edge_after,
    candidates_sent_before_a_channel_opens_are_replayed_to_it,
    a_message_larger_than_the_read_buffer_arrives_whole,
    a_heartbeat_status_keeps_the_edge_heard_from,
    an_unchanged_heartbeat_is_written_at_most_every_45_seconds,
    an_old_connection_ending_late_leaves_a_reconnected_edge_online,
    kept_candidates_per_session_and_edge_stay_bounded_whatever_the_edge_sends,
);

async fn kept_candidates_per_session_and_edge_stay_bounded_whatever_the_edge_sends(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let (s, _c) = running(&l, &acct, &d, 5).await;
    let bound = drawbridge_server::live::MAX_SIGNAL_ROWS;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tunnel_signals WHERE session_id = $1")
            .bind(&s)
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap()
    };
    // Many distinct peers, each several times: one row per peer, up to the bound.
    for round in 0..2 {
        for i in 0..(bound + 36) {
            send(
                &mut ws,
                &EdgeToServer::Signal {
                    session_id: s.clone(),
                    peer: wg_key(u8::try_from(100 + i).unwrap()),
                    data: format!("candidates {round}"),
                },
            )
            .await;
        }
    }
    // The refusals come back as errors, in order; the last one marks the end.
    let mut refused = 0;
    while refused < 2 * 36 {
        if let ServerToEdge::Error { code, .. } = until(&mut ws, |m: &ServerToEdge| {
            matches!(m, ServerToEdge::Error { .. })
        })
        .await
        {
            assert_eq!(code, "conflict");
            refused += 1;
        }
    }
    assert_eq!(rows().await, bound, "one row per peer, at most the bound");
    // A peer already kept still gets its latest candidates replaced.
    let latest: String = sqlx::query_scalar(
        "SELECT data FROM tunnel_signals WHERE session_id = $1 AND client_key = $2",
    )
    .bind(&s)
    .bind(wg_key(100).to_string())
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(latest, "candidates 1");
}

async fn an_edge_authenticates_with_its_enrolled_key_only(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    // A key that is not the enrolled one.
    let mut ws = l.ws("/api/v1/edge/channel", None).await.unwrap();
    let ServerToEdge::Challenge { nonce } = recv(&mut ws).await.unwrap() else {
        panic!()
    };
    let other = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(d.id.as_bytes());
    send(
        &mut ws,
        &EdgeToServer::Auth {
            device_id: d.id.clone(),
            signature: STANDARD.encode(other.sign(&msg).as_ref()),
        },
    )
    .await;
    assert!(
        matches!(recv::<ServerToEdge>(&mut ws).await, Some(ServerToEdge::Error { code, .. }) if code == "unauthenticated")
    );
    // A replayed signature over another challenge fails too.
    let mut ws2 = l.ws("/api/v1/edge/channel", None).await.unwrap();
    let _: ServerToEdge = recv(&mut ws2).await.unwrap();
    send(
        &mut ws2,
        &EdgeToServer::Auth {
            device_id: d.id.clone(),
            signature: STANDARD.encode(d.key.sign(&msg).as_ref()),
        },
    )
    .await;
    assert!(matches!(
        recv::<ServerToEdge>(&mut ws2).await,
        Some(ServerToEdge::Error { .. })
    ));
    let dev = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(dev["status"]["online"], false);
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=device.auth", &acct.admin)
        .await;
    assert_eq!(
        audit.as_array().unwrap().len(),
        1,
        "failed edge logins are on the record, repeats coalesced into one entry"
    );
    // The enrolled key works; the device shows online with the switch it reports.
    let mut ws = edge(&l, &d, true).await;
    let dev = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(dev["status"]["online"], true);
    assert_eq!(dev["status"]["switch_on"], true);
    assert_eq!(dev["status"]["agent_version"], "test");
    // Garbage closes the connection; the device goes offline.
    ws.send(Message::Text("{\"type\":\"nonsense\"}".into()))
        .await
        .unwrap();
    assert!(matches!(
        recv::<ServerToEdge>(&mut ws).await,
        Some(ServerToEdge::Error { .. })
    ));
    for _ in 0..100 {
        let dev = l
            .app
            .ok(
                Method::GET,
                &format!("/api/v1/devices/{}", d.id),
                &acct.admin,
                None,
            )
            .await;
        if dev["status"]["online"] == false {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the device stayed online after its channel closed");
}

async fn sessions_start_only_with_the_edge_online_and_its_switch_on(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    let (st, v) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "offline: {v}");
    assert!(v["message"].as_str().unwrap().contains("offline"));
    let mut ws = edge(&l, &d, false).await;
    let (st, v) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "switch off: {v}");
    assert!(v["message"].as_str().unwrap().contains("switched off"));
    send(
        &mut ws,
        &EdgeToServer::Status(EdgeStatus {
            switch_on: true,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }),
    )
    .await;
    let mut started = false;
    for _ in 0..100 {
        let (st, _) = l
            .app
            .post(
                &format!("/api/v1/sessions/{s}/start"),
                &acct.admin,
                json!({}),
            )
            .await;
        if st == StatusCode::OK {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started, "starts once the switch is on");
    let m: ServerToEdge = until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|s| !s.is_empty())
    })
    .await;
    let sessions = sessions_of(&m).unwrap();
    assert_eq!(sessions[0].session_id, s);
    assert_eq!(sessions[0].targets[0].to_string(), "tcp:192.168.1.10:502");
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=device.switch", &acct.admin)
        .await;
    assert_eq!(
        audit.as_array().unwrap().len(),
        1,
        "the switch change is on the record"
    );
}

async fn switching_off_ends_every_session_of_the_edge_within_seconds(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let (s1, mut c1) = running(&l, &acct, &d, 1).await;
    let (s2, _c2) = running(&l, &acct, &d, 2).await;
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|s| s.len() == 2)
    })
    .await;
    send(
        &mut ws,
        &EdgeToServer::Status(EdgeStatus {
            switch_on: false,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }),
    )
    .await;
    // Within seconds: the edge is told to run nothing, the client is told it ended.
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|s| s.is_empty())
    })
    .await;
    let end = until(&mut c1, |m: &ServerToClient| {
        matches!(m, ServerToClient::Ended { .. })
    })
    .await;
    assert_eq!(
        end,
        ServerToClient::Ended {
            reason: "site_switch".into()
        }
    );
    for s in [s1, s2] {
        let v = l
            .app
            .ok(
                Method::GET,
                &format!("/api/v1/sessions/{s}"),
                &acct.admin,
                None,
            )
            .await;
        assert_eq!(v["state"], "ended");
        assert_eq!(v["end_reason"], "site_switch");
    }
    let (st, _) = l
        .app
        .post(
            &format!(
                "/api/v1/sessions/{}/start",
                l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await
            ),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "no new session while the switch is off"
    );
}

async fn dual_control_waits_for_approval_on_site_or_by_another_approver(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let (_, second_admin) = l.app.user(&acct, "approver", "admin").await;
    l.app
        .ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": {"dual_control": true}})),
        )
        .await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    // On-site approval.
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "pending_approval");
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            json!({"public_key": wg_key(1)}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "no tunnel before approval");
    let m = until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|s| !s.is_empty())
    })
    .await;
    assert_eq!(
        sessions_of(&m).unwrap()[0].state,
        drawbridge_proto::SessionState::PendingApproval
    );
    assert!(sessions_of(&m).unwrap()[0].relay_token.is_none());
    send(
        &mut ws,
        &EdgeToServer::Decision {
            session_id: s.clone(),
            approve: true,
        },
    )
    .await;
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| {
            x.first()
                .is_some_and(|x| x.state == drawbridge_proto::SessionState::Active)
        })
    })
    .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(1)})),
        )
        .await;
    // Cloud approval: not by the one who started it, but by another approver.
    let s2 = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/start"),
            &acct.admin,
            None,
        )
        .await;
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s2}/approve"),
            &acct.admin,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "four eyes");
    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/approve"),
            &second_admin,
            Some(json!({"approve": false})),
        )
        .await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "refused");
    // Nobody decides: the start lapses.
    let s3 = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s3}/start"),
            &acct.admin,
            None,
        )
        .await;
    l.app
        .clock()
        .advance(drawbridge_server::sessions::APPROVAL_WINDOW_SECS + 1);
    let ended = drawbridge_server::background::sweep(&l.app.state)
        .await
        .unwrap();
    assert!(ended.contains(&s3));
    let token = l.app.token("acme", "approver").await;
    let v = l
        .app
        .ok(Method::GET, &format!("/api/v1/sessions/{s3}"), &token, None)
        .await;
    assert_eq!(v["end_reason"], "approval_timeout");
    // Failed approvals reach the admins' notifications.
    let notes = l
        .app
        .ok(Method::GET, "/api/v1/notifications", &token, None)
        .await;
    let msgs: Vec<String> = notes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "approval")
        .map(|n| n["message"].as_str().unwrap().to_string())
        .collect();
    assert!(msgs.iter().any(|m| m.ends_with("was refused.")), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.ends_with("was not approved in time.")),
        "{msgs:?}"
    );
    let (_, audit) = l.app.get("/api/v1/audit?action=session.", &token).await;
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    for a in ["session.approve", "session.refuse"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} on the record: {actions:?}"
        );
    }
}

async fn a_joined_client_and_the_edge_exchange_keys_candidates_and_relay_tokens(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    let join = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(7)})),
        )
        .await;
    assert_eq!(join["overlay_ip"], "100.64.0.2");
    assert!(join["relay_url"].as_str().unwrap().ends_with("/relay/v1"));
    assert!(join["relay_token"].is_null(), "no edge key yet");
    assert_eq!(join["devices"][0]["online"], true);
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            json!({"public_key": wg_key(7)}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "a key is used once");
    // The edge learns the peer, then announces its own key for the session.
    let m = until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| !x.peers.is_empty()))
    })
    .await;
    let es = sessions_of(&m).unwrap()[0].clone();
    assert_eq!(es.peers[0].public_key, wg_key(7));
    assert_eq!(es.peers[0].overlay_ip, "100.64.0.2");
    let key = key_query(7);
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={key}"),
            Some(&acct.admin),
        )
        .await
        .unwrap();
    assert!(matches!(
        recv::<ServerToClient>(&mut c).await,
        Some(ServerToClient::Update(_))
    ));
    send(
        &mut ws,
        &EdgeToServer::SessionKey {
            session_id: s.clone(),
            public_key: wg_key(9),
        },
    )
    .await;
    let ServerToClient::Update(u) = until(
        &mut c,
        |m: &ServerToClient| matches!(m, ServerToClient::Update(u) if u.relay_token.is_some()),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(u.devices[0].edge_public_key, Some(wg_key(9)));
    let vk = l.app.state.relay_key.verifying_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ct = drawbridge_relay::token::verify(&vk, u.relay_token.as_deref().unwrap(), now).unwrap();
    assert_eq!(
        (ct.session_id.as_str(), ct.peer, ct.allowed_peers.clone()),
        (s.as_str(), [7; 32], vec![[9; 32]])
    );
    let m = until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| x.relay_token.is_some()))
    })
    .await;
    let et = drawbridge_relay::token::verify(
        &vk,
        sessions_of(&m).unwrap()[0].relay_token.as_deref().unwrap(),
        now,
    )
    .unwrap();
    assert_eq!((et.peer, et.allowed_peers), ([9; 32], vec![[7; 32]]));
    // Candidates both ways, addressed by key and device.
    send(
        &mut c,
        &ClientToServer::Signal {
            device_id: d.id.clone(),
            data: "from-client".into(),
        },
    )
    .await;
    let m = until(&mut ws, |m: &ServerToEdge| {
        matches!(m, ServerToEdge::Signal { .. })
    })
    .await;
    assert_eq!(
        m,
        ServerToEdge::Signal {
            session_id: s.clone(),
            peer: wg_key(7),
            data: "from-client".into()
        }
    );
    send(
        &mut ws,
        &EdgeToServer::Signal {
            session_id: s.clone(),
            peer: wg_key(7),
            data: "from-edge".into(),
        },
    )
    .await;
    let m = until(&mut c, |m: &ServerToClient| {
        matches!(m, ServerToClient::Signal { .. })
    })
    .await;
    assert_eq!(
        m,
        ServerToClient::Signal {
            device_id: d.id.clone(),
            data: "from-edge".into()
        }
    );
    // A signal to a device outside the session goes nowhere (and nothing breaks).
    send(
        &mut c,
        &ClientToServer::Signal {
            device_id: "not-mine".into(),
            data: "x".into(),
        },
    )
    .await;
    // Figures from the edge land on the tunnel; leaving records them.
    let report = TunnelReport {
        session_id: s.clone(),
        peer: wg_key(7),
        path: "direct".into(),
        reason: "direct ok".into(),
        bytes_to_device: 1000,
        bytes_from_device: 5000,
    };
    send(&mut ws, &EdgeToServer::Tunnel(report)).await;
    for _ in 0..100 {
        let b: i64 =
            sqlx::query_scalar("SELECT bytes_from_device FROM tunnels WHERE session_id = $1")
                .bind(&s)
                .fetch_one(&l.app.state.store.pool)
                .await
                .unwrap();
        if b == 5000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s}/tunnels"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(t[0]["path"], "direct");
    assert_eq!(t[0]["bytes_from_device"], 5000);
    assert!(t[0]["ended_at"].is_null());
    c.close(None).await.unwrap();
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| x.peers.is_empty()))
    })
    .await;
    let t = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s}/tunnels"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(t[0]["end_reason"], "client_left");
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=tunnel.down", &acct.admin)
        .await;
    let e = &audit.as_array().unwrap()[0];
    assert_eq!(e["details"]["bytes_from_device"], 5000);
    assert_eq!(e["details"]["path"], "direct");
}

async fn ending_or_disabling_tears_down_both_ends_and_records_the_tunnel(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let (s, mut c) = running(&l, &acct, &d, 3).await;
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.len() == 1)
    })
    .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(
        until(&mut c, |m: &ServerToClient| matches!(
            m,
            ServerToClient::Ended { .. }
        ))
        .await,
        ServerToClient::Ended {
            reason: "user".into()
        }
    );
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.is_empty())
    })
    .await;
    // Disabling a user closes their tunnels in running sessions too.
    let (anna, anna_token) = l.app.user(&acct, "anna", "user").await;
    l.app
        .grant(&acct, &[&anna], &[&d.id], "full", json!([]))
        .await;
    let s2 = l.app.session(&acct.admin, &d.id, &[&anna]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/start"),
            &anna_token,
            None,
        )
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/join"),
            &anna_token,
            Some(json!({"public_key": wg_key(4)})),
        )
        .await;
    let key = key_query(4);
    let mut c2 = l
        .ws(
            &format!("/api/v1/sessions/{s2}/channel?key={key}"),
            Some(&anna_token),
        )
        .await
        .unwrap();
    until(&mut c2, |m: &ServerToClient| {
        matches!(m, ServerToClient::Update(_))
    })
    .await;
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| !x.peers.is_empty()))
    })
    .await;
    l.app
        .ok(
            Method::PATCH,
            &format!("/api/v1/users/{anna}"),
            &acct.admin,
            Some(json!({"disabled": true})),
        )
        .await;
    assert!(matches!(
        until(&mut c2, |m: &ServerToClient| matches!(
            m,
            ServerToClient::Ended { .. }
        ))
        .await,
        ServerToClient::Ended { .. }
    ));
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.is_empty())
    })
    .await;
    let v = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s2}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["end_reason"], "user_disabled");
    // Another user of the account cannot open someone else's channel.
    let (_, bob) = l.app.user(&acct, "bob", "user").await;
    assert!(
        l.ws(
            &format!("/api/v1/sessions/{s2}/channel?key={key}"),
            Some(&bob)
        )
        .await
        .is_err()
    );
}

async fn joining_is_for_assigned_users_whose_grants_still_cover_the_session(app: TestApp) {
    let acct = app.account("acme").await;
    let (d, _) = app.device(&acct, "press-1").await;
    let (anna, anna_token) = app.user(&acct, "anna", "user").await;
    let (group, _) = app.grant(&acct, &[&anna], &[&d], "full", json!([])).await;
    let s = app.session(&acct.admin, &d, &[&anna]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/start"),
        &anna_token,
        None,
    )
    .await;
    // The admin sees the session but it was not prepared for them: refused and recorded.
    let (st, v) = app
        .post(
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            json!({"public_key": wg_key(1)}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (_, audit) = app
        .get("/api/v1/audit?action=session.join", &acct.admin)
        .await;
    assert_eq!(audit[0]["result"], "denied");
    // Once anna's grant is gone, she cannot bring a new tunnel into the running session.
    app.ok(
        Method::DELETE,
        &format!("/api/v1/groups/{group}"),
        &acct.admin,
        None,
    )
    .await;
    let (st, v) = app
        .post(
            &format!("/api/v1/sessions/{s}/join"),
            &anna_token,
            json!({"public_key": wg_key(2)}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(app.count("tunnels").await, 0);
}

async fn concurrent_joins_get_distinct_overlay_addresses(app: TestApp) {
    let acct = app.account("acme").await;
    let (d, _) = app.device(&acct, "press-1").await;
    let s = app.session(&acct.admin, &d, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/start"),
        &acct.admin,
        None,
    )
    .await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for n in 10..30u8 {
        let (app, s, tok) = (app.clone(), s.clone(), acct.admin.clone());
        tasks.push(tokio::spawn(async move {
            let (st, v) = app
                .post(
                    &format!("/api/v1/sessions/{s}/join"),
                    &tok,
                    json!({"public_key": wg_key(n)}),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            v["overlay_ip"].as_str().unwrap().to_string()
        }));
    }
    let mut ips = Vec::new();
    for t in tasks {
        ips.push(t.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "{ips:?}");
    assert!(
        !ips.contains(&"100.64.0.1".to_string()),
        "the edge's address is never handed out"
    );
}

async fn a_change_on_one_replica_reaches_an_edge_connected_to_another(app: TestApp) {
    if app.backend != "postgres" {
        eprintln!("replicas share PostgreSQL; SQLite serves one node: nothing to test here");
        return;
    }
    let store_b = app.reopen_store().await;
    let l = live(app).await; // replica A, with the edge connected to it
    let state_b = drawbridge_server::state::AppState::new(
        store_b,
        drawbridge_server::clock::Clock::default(),
        "https://127.0.0.1".into(),
    )
    .await
    .unwrap();
    let app_b = drawbridge_server::app(state_b);
    let call_b = |method: Method, path: String, token: String| {
        let app_b = app_b.clone();
        async move {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let res = tower::ServiceExt::oneshot(app_b, req).await.unwrap();
            res.status()
        }
    };
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    // Started on replica B: the edge on replica A learns of it.
    assert_eq!(
        call_b(
            Method::POST,
            format!("/api/v1/sessions/{s}/start"),
            acct.admin.clone()
        )
        .await,
        StatusCode::OK
    );
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.len() == 1)
    })
    .await;
    // Ended on replica B: the edge on replica A is told to stop.
    assert_eq!(
        call_b(
            Method::POST,
            format!("/api/v1/sessions/{s}/end"),
            acct.admin.clone()
        )
        .await,
        StatusCode::OK
    );
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.is_empty())
    })
    .await;
}

async fn a_change_missed_while_a_replica_listener_reconnects_reaches_its_edge_after(app: TestApp) {
    if app.backend != "postgres" {
        eprintln!("replicas share PostgreSQL; SQLite serves one node: nothing to test here");
        return;
    }
    let store_b = app.reopen_store().await;
    let pool_b = store_b.pool.clone();
    let l = live(app).await; // replica A, with the edge connected to it
    let state_b = drawbridge_server::state::AppState::new(
        store_b,
        drawbridge_server::clock::Clock::default(),
        "https://127.0.0.1".into(),
    )
    .await
    .unwrap();
    let app_b = drawbridge_server::app(state_b);
    let post_b = |path: String, token: String| {
        let app_b = app_b.clone();
        async move {
            let req = axum::http::Request::builder()
                .method(Method::POST)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(app_b, req)
                .await
                .unwrap()
                .status()
        }
    };
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    let start = post_b(format!("/api/v1/sessions/{s}/start"), acct.admin.clone()).await;
    assert_eq!(start, StatusCode::OK);
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.len() == 1)
    })
    .await;
    // Every replica's listener loses its connection and cannot come back for
    // a moment (a database restart); the session ends on B meanwhile (over a
    // connection B's pool already holds), so A never gets that notification.
    let pool = &l.app.state.store.pool;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await
        .unwrap();
    let listeners = "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'";
    let before: i64 = sqlx::query_scalar(listeners).fetch_one(pool).await.unwrap();
    assert!(before >= 2, "both replicas listen ({before})");
    // Only from another database (the server the test URL names).
    let mut admin = {
        use sqlx::Connection;
        let base = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL").unwrap();
        sqlx::postgres::PgConnection::connect(&base).await.unwrap()
    };
    // Both replicas' pools hold open connections for what follows.
    for p in [pool, &pool_b] {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(p.acquire().await.unwrap());
        }
    }
    let allow = |on: bool| format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {on}");
    sqlx::query(&allow(false))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .execute(pool)
    .await
    .unwrap();
    let gone = std::time::Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(listeners).fetch_one(pool).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(
            gone.elapsed() < std::time::Duration::from_secs(5),
            "listeners still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let end = post_b(format!("/api/v1/sessions/{s}/end"), acct.admin.clone()).await;
    sqlx::query(&allow(true)).execute(&mut admin).await.unwrap();
    assert_eq!(end, StatusCode::OK);
    // Back after a second: A's connections re-read their state, so the edge is
    // told to stop (within `until`'s 5 s a message; the 20 s ping backstop
    // only checks the device, it would never send the session list).
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.is_empty())
    })
    .await;
}

async fn candidates_sent_before_a_channel_opens_are_replayed_to_it(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(5)})),
        )
        .await;
    until(&mut ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| !x.peers.is_empty()))
    })
    .await;
    // The edge answers before the client has opened its channel.
    send(
        &mut ws,
        &EdgeToServer::Signal {
            session_id: s.clone(),
            peer: wg_key(5),
            data: "early".into(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = key_query(5);
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={key}"),
            Some(&acct.admin),
        )
        .await
        .unwrap();
    let m = until(&mut c, |m: &ServerToClient| {
        matches!(m, ServerToClient::Signal { .. })
    })
    .await;
    assert_eq!(
        m,
        ServerToClient::Signal {
            device_id: d.id.clone(),
            data: "early".into()
        }
    );
    // Ending the session forgets them.
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(l.app.count("tunnel_signals").await, 0);
}

async fn a_message_larger_than_the_read_buffer_arrives_whole(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, false).await;
    // 100 KiB of JSON whitespace around a status: many reads of the channel's
    // small read buffer, one message.
    let status = serde_json::to_string(&EdgeToServer::Status(EdgeStatus {
        switch_on: true,
        agent_version: "test".into(),
        endpoints: vec![],
        relay_rtt: vec![],
    }))
    .unwrap();
    let padded = format!("{}{status}", " ".repeat(100 * 1024));
    ws.send(Message::Text(padded.into())).await.unwrap();
    let mut on = 0i64;
    for _ in 0..100 {
        on = sqlx::query_scalar("SELECT switch_on FROM devices WHERE id = $1")
            .bind(&d.id)
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap();
        if on != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on, 1, "the padded status was read whole and applied");
}

async fn a_heartbeat_status_keeps_the_edge_heard_from(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let last_seen = |pool: sqlx::AnyPool, id: String| async move {
        sqlx::query_as::<_, (Option<i64>, i64, Option<String>)>(
            "SELECT last_seen, switch_on, agent_version FROM devices WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let pool = l.app.state.store.pool.clone();
    let before = last_seen(pool.clone(), d.id.clone()).await;
    l.app.clock().advance(60);
    // The same switch state: the one-statement path.
    heartbeat(&mut ws, "test-2").await;
    let want = l.app.state.now();
    let mut after = before.clone();
    for _ in 0..100 {
        after = last_seen(pool.clone(), d.id.clone()).await;
        if after.2.as_deref() == Some("test-2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stamped when the server read it: within a second or two of `want` on a busy machine.
    assert!(
        after.0.is_some_and(|t| (want - 1..=want + 2).contains(&t))
            && after.1 == 1
            && after.2.as_deref() == Some("test-2"),
        "before: {before:?}, after: {after:?}, want about {want}"
    );
    // An out-of-bounds status is refused, but the edge was still heard from.
    l.app.clock().advance(60);
    heartbeat(&mut ws, &"x".repeat(65)).await;
    let err: ServerToEdge = until(&mut ws, |m| matches!(m, ServerToEdge::Error { .. })).await;
    assert!(
        matches!(err, ServerToEdge::Error { ref code, .. } if code == "invalid"),
        "{err:?}"
    );
    let now = l.app.state.now();
    let seen = last_seen(pool, d.id.clone()).await.0;
    assert!(
        seen.is_some_and(|t| (now - 2..=now).contains(&t)),
        "heard from at {seen:?}, now {now}"
    );
}

async fn device_row(l: &Live, id: &str) -> (Option<i64>, i64, Option<String>) {
    sqlx::query_as("SELECT last_seen, online, agent_version FROM devices WHERE id = $1")
        .bind(id)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap()
}

async fn heartbeat(ws: &mut Ws, version: &str) {
    send(
        ws,
        &EdgeToServer::Status(EdgeStatus {
            switch_on: true,
            agent_version: version.into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }),
    )
    .await;
}

/// Waits until the server has handled everything sent on `ws` so far: a
/// message it answers (an out-of-bounds status) comes back after them, in order.
async fn handled(ws: &mut Ws) {
    heartbeat(ws, &"x".repeat(65)).await;
    until(ws, |m: &ServerToEdge| {
        matches!(m, ServerToEdge::Error { .. })
    })
    .await;
}

async fn an_unchanged_heartbeat_is_written_at_most_every_45_seconds(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let first = device_row(&l, &d.id).await;
    assert_eq!(
        (first.1, first.2.as_deref()),
        (1, Some("test")),
        "{first:?}"
    );
    // The same status 30 s later: nothing written (an idle server's statements
    // were mostly these).
    l.app.clock().advance(30);
    heartbeat(&mut ws, "test").await;
    handled(&mut ws).await;
    assert_eq!(
        device_row(&l, &d.id).await.0,
        first.0,
        "unchanged heartbeat skipped"
    );
    // A status that changes something is written at once (stamped while it
    // was handled: the test's clock runs on between two readings).
    let sent = l.app.state.now();
    heartbeat(&mut ws, "test-2").await;
    handled(&mut ws).await;
    let changed = device_row(&l, &d.id).await;
    assert_eq!(changed.2.as_deref(), Some("test-2"), "{changed:?}");
    assert!(
        changed
            .0
            .is_some_and(|t| (sent..=l.app.state.now()).contains(&t)),
        "{changed:?}"
    );
    // The same again 45 s after that write: written, the device stays heard from.
    l.app.clock().advance(45);
    let sent = l.app.state.now();
    heartbeat(&mut ws, "test-2").await;
    handled(&mut ws).await;
    let again = device_row(&l, &d.id).await.0;
    assert!(
        again.is_some_and(|t| (sent..=l.app.state.now()).contains(&t)),
        "{again:?}, sent at {sent}"
    );
}

async fn an_old_connection_ending_late_leaves_a_reconnected_edge_online(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let offline_entries = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'device.offline' AND device_id = $1",
        )
        .bind(&d.id)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap()
    };
    // The edge moved to another replica, which wrote the row after this
    // connection last did; this replica notices the old connection's end late.
    let ws = edge(&l, &d, true).await;
    l.app.clock().advance(5);
    sqlx::query("UPDATE devices SET last_seen = $1, online = 1 WHERE id = $2")
        .bind(l.app.state.now())
        .bind(&d.id)
        .execute(&l.app.state.store.pool)
        .await
        .unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        device_row(&l, &d.id).await.1,
        1,
        "still online: its newer connection holds it"
    );
    assert_eq!(
        offline_entries().await,
        0,
        "no device.offline for a device that is online"
    );
    // The same end with nobody newer: offline, on the record.
    let ws = edge(&l, &d, true).await;
    l.app.clock().advance(5);
    drop(ws);
    let mut row = device_row(&l, &d.id).await;
    for _ in 0..100 {
        if row.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        row = device_row(&l, &d.id).await;
    }
    assert_eq!(row.1, 0, "{row:?}");
    assert_eq!(offline_entries().await, 1);
}
