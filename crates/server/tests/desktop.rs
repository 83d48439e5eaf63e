//! Browser desktops without a browser: stored VNC passwords (sealed, never
//! shown, admins only, bad input changes nothing, also 30 at once), the
//! recordings' integrity (a changed, moved or missing chunk is detected), the
//! size limit, who may list, watch, replay and download, the settings'
//! bounds, and retention. Both stores. The bridge itself runs in
//! `crates/edge/tests/desktop_browser.rs` against a real VNC server.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_desktop::recording::HEADER;
use drawbridge_proto::RecordingMode;
use drawbridge_server::desktop::recording::{self, Recording, Stop};
use serde_json::{Value, json};

store_tests!(
    vnc_passwords_are_stored_sealed_never_shown_and_only_by_admins,
    a_changed_moved_or_missing_recording_chunk_is_detected,
    recordings_stop_at_the_accounts_size_limit,
    recordings_are_stored_compressed_by_their_writer_and_a_refused_chunk_stops_them,
    a_downloaded_recording_is_lz4_frames_whose_sha256_is_the_one_on_record,
    a_recording_stopped_midway_hashes_exactly_what_was_stored,
    a_recording_stored_before_lz4_frames_reads_and_downloads_as_its_stream,
    only_admins_and_auditors_watch_replay_and_download_recordings,
    recordings_past_the_accounts_retention_are_deleted,
    a_monitor_grant_gets_a_devices_desktops_and_never_a_tunnel,
);

/// A recording's download with a token: status, headers and the body's bytes.
pub(crate) async fn download(
    app: &TestApp,
    id: &str,
    token: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri(format!("/api/v1/desktops/{id}/recording"))
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

/// LZ4 frames one after the other, decompressed (a frame's end reads as 0).
pub(crate) fn lz4_frames(file: &[u8]) -> Vec<u8> {
    let mut dec = lz4_flex::frame::FrameDecoder::new(file);
    let mut out = Vec::new();
    while std::io::Read::read_to_end(&mut dec, &mut out).unwrap() > 0 {}
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A device whose firewall releases 192.168.1.20:5900, marked as a VNC desktop.
async fn vnc_device(app: &TestApp, acct: &common::Account, name: &str) -> String {
    let (id, _) = app.device(acct, name).await;
    app.ok(
        Method::PATCH,
        &format!("/api/v1/devices/{id}"),
        &acct.admin,
        Some(json!({
            "firewall": [{"address": "192.168.1.20", "protocol": "tcp", "ports": "5900"},
                         {"address": "192.168.1.20", "protocol": "tcp", "ports": "80"}],
            "web_services": [{"target": "192.168.1.20:5900", "scheme": "vnc"},
                             {"target": "192.168.1.20:80", "scheme": "http"}],
        })),
    )
    .await;
    id
}

async fn vnc_passwords_are_stored_sealed_never_shown_and_only_by_admins(app: TestApp) {
    let acct = app.account("acme").await;
    let dev = vnc_device(&app, &acct, "panel").await;
    let path = format!("/api/v1/devices/{dev}/desktop-passwords");
    let secret = "Panel-Secret-7";

    // Bad input: not a VNC service, empty, too long, control characters, an
    // array body, an unknown field. Each refused; nothing stored.
    for body in [
        json!({"target": "192.168.1.20:80", "password": secret}),
        json!({"target": "192.168.1.21:5900", "password": secret}),
        json!({"target": "192.168.1.20:5900", "password": ""}),
        json!({"target": "192.168.1.20:5900", "password": "x".repeat(65)}),
        json!({"target": "192.168.1.20:5900", "password": "a\nb"}),
        json!([{"target": "192.168.1.20:5900", "password": secret}]),
        json!({"target": "192.168.1.20:5900", "password": secret, "shown": true}),
        json!({"target": "panel:5900", "password": secret}),
    ] {
        let (s, v) = app
            .call(Method::PUT, &path, Some(&acct.admin), Some(body.clone()))
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {s} {v}"
        );
    }
    assert_eq!(app.count("desktop_passwords").await, 0);

    // Not an admin: refused.
    let (_, user) = app.user(&acct, "ursula", "session_admin").await;
    let (s, _) = app
        .call(
            Method::PUT,
            &path,
            Some(&user),
            Some(json!({"target": "192.168.1.20:5900", "password": secret})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(app.count("desktop_passwords").await, 0);

    // 30 admins' writes at once: one row, the last word wins, no error.
    let mut calls = Vec::new();
    for i in 0..30 {
        let app = &app;
        let path = &path;
        let token = &acct.admin;
        calls.push(async move {
            app.call(
                Method::PUT,
                path,
                Some(token),
                Some(json!({"target": "192.168.1.20:5900", "password": format!("{secret}-{i}")})),
            )
            .await
        });
    }
    for (s, v) in futures_util::future::join_all(calls).await {
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    assert_eq!(app.count("desktop_passwords").await, 1);
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(json!({"target": "192.168.1.20:5900", "password": secret})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    // Listed by target only; sealed at rest; opened for the bridge.
    let listed = app.ok(Method::GET, &path, &acct.admin, None).await;
    assert_eq!(listed, json!(["192.168.1.20:5900"]));
    let stored: String = sqlx::query_scalar("SELECT sealed FROM desktop_passwords")
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap();
    assert!(!stored.contains(secret), "the password is sealed at rest");
    assert!(drawbridge_server::sealed::is_sealed(&stored));
    let mut conn = app.state.store.pool.acquire().await.unwrap();
    let target = "192.168.1.20:5900".parse().unwrap();
    let opened = drawbridge_server::desktop::stored_password(&app.state, &mut conn, &dev, target)
        .await
        .unwrap();
    assert_eq!(opened.as_deref(), Some(secret));
    // A sealed password moved to another device's row does not open.
    drop(conn);
    let other = vnc_device(&app, &acct, "panel-2").await;
    let mut conn = app.state.store.pool.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO desktop_passwords (device_id, target, sealed, set_at) VALUES ($1, $2, $3, 0)",
    )
    .bind(&other)
    .bind("192.168.1.20:5900")
    .bind(&stored)
    .execute(&mut *conn)
    .await
    .unwrap();
    assert!(
        drawbridge_server::desktop::stored_password(&app.state, &mut conn, &other, target)
            .await
            .is_err()
    );
    drop(conn);
    // Nothing else shows it: the device, the audit log.
    let device = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{dev}"),
            &acct.admin,
            None,
        )
        .await;
    let audit = app
        .ok(Method::GET, "/api/v1/audit", &acct.admin, None)
        .await;
    for text in [device.to_string(), audit.to_string()] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(audit.to_string().contains("desktop.password"));

    // Forgotten with null.
    app.call(
        Method::PUT,
        &path,
        Some(&acct.admin),
        Some(json!({"target": "192.168.1.20:5900", "password": null})),
    )
    .await;
    let listed = app.ok(Method::GET, &path, &acct.admin, None).await;
    assert_eq!(listed, json!([]));
}

/// A recording row as the bridge makes it, and its stored stream.
pub(crate) async fn recorded(
    app: &TestApp,
    account: &str,
    user: &str,
    frames: &[&[u8]],
    mode: RecordingMode,
) -> (String, Option<String>) {
    recorded_paced(app, account, user, frames, mode, std::time::Duration::ZERO).await
}

/// [`recorded`], with `gap` between the frames (so that their times differ).
pub(crate) async fn recorded_paced(
    app: &TestApp,
    account: &str,
    user: &str,
    frames: &[&[u8]],
    mode: RecordingMode,
    gap: std::time::Duration,
) -> (String, Option<String>) {
    let id = drawbridge_server::secret::new_id();
    sqlx::query(
        "INSERT INTO desktop_recordings (id, account_id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at)
         VALUES ($1, $2, 's', 'd', '192.168.1.20:5900', $3, 0, 'live', $4, 1, $5)",
    )
    .bind(&id)
    .bind(account)
    .bind(user)
    .bind(mode.as_str())
    .bind(app.state.now())
    .execute(&app.state.store.pool)
    .await
    .unwrap();
    let mut r = Recording::new(id.clone(), mode, 1, HEADER);
    for f in frames {
        tokio::time::sleep(gap).await;
        r.record(&bytes::Bytes::copy_from_slice(f)).unwrap();
        // One chunk per frame, so that chunks can be moved and removed.
        r.store(&app.state).await.unwrap();
    }
    let sha = r.finish().await;
    end_recording(app, &id, &sha).await;
    (id, sha)
}

/// Marks a recording ended with its hash, as the bridge does.
pub(crate) async fn end_recording(app: &TestApp, id: &str, sha: &Option<String>) {
    sqlx::query(
        "UPDATE desktop_recordings SET state = 'ended', ended_at = $1, sha256 = $2 WHERE id = $3",
    )
    .bind(app.state.now())
    .bind(sha)
    .bind(id)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
}

/// A recording row with no chunk stored, for a test that stores its own.
pub(crate) async fn bare_recording(
    app: &TestApp,
    acct: &common::Account,
    mode: RecordingMode,
) -> String {
    let (id, _) = recorded(app, &acct.id, &acct.admin_id, &[], mode).await;
    sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1")
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    id
}

async fn a_changed_moved_or_missing_recording_chunk_is_detected(app: TestApp) {
    let acct = app.account("acme").await;
    let frames: [&[u8]; 3] = [b"RFB 003.008\n", b"\x01\x01", b"frame three"];
    let (id, sha) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &frames,
        RecordingMode::Required,
    )
    .await;
    let good = recording::read(&app.state, &id, None).await.unwrap();
    assert!(good.intact);
    assert_eq!(Some(good.sha256.clone()), sha);
    let parsed = drawbridge_desktop::recording::frames(&good.stream).unwrap();
    let payloads: Vec<&[u8]> = parsed.iter().map(|f| f.data).collect();
    assert_eq!(payloads, frames);
    // No chunk holds the plaintext.
    let chunks: Vec<String> = sqlx::query_scalar(
        "SELECT data FROM recording_chunks WHERE recording_id = $1 ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&app.state.store.pool)
    .await
    .unwrap();
    assert!(
        chunks
            .iter()
            .all(|c| drawbridge_server::sealed::is_sealed(c))
    );

    // Two chunks swapped: neither opens in the other's place.
    let swap = |a: i64, b: i64| {
        let pool = app.state.store.pool.clone();
        let id = id.clone();
        async move {
            sqlx::query(
                "UPDATE recording_chunks SET seq = -1 WHERE recording_id = $1 AND seq = $2",
            )
            .bind(&id)
            .bind(a)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "UPDATE recording_chunks SET seq = $3 WHERE recording_id = $1 AND seq = $2",
            )
            .bind(&id)
            .bind(b)
            .bind(a)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "UPDATE recording_chunks SET seq = $2 WHERE recording_id = $1 AND seq = -1",
            )
            .bind(&id)
            .bind(b)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    swap(1, 2).await;
    assert!(!recording::read(&app.state, &id, None).await.unwrap().intact);
    for keep in [recording::Keep::File, recording::Keep::Stream] {
        let r = recording::read_keeping(&app.state, &id, None, keep)
            .await
            .unwrap();
        assert!(!r.intact, "{keep:?}");
    }
    swap(1, 2).await;
    assert!(recording::read(&app.state, &id, None).await.unwrap().intact);

    // A chunk of another recording copied in: does not open.
    let (other, _) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[b"x", b"y"],
        RecordingMode::Required,
    )
    .await;
    let foreign: String =
        sqlx::query_scalar("SELECT data FROM recording_chunks WHERE recording_id = $1 AND seq = 1")
            .bind(&other)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    let original = chunks[1].clone();
    sqlx::query("UPDATE recording_chunks SET data = $1 WHERE recording_id = $2 AND seq = 1")
        .bind(&foreign)
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    assert!(!recording::read(&app.state, &id, None).await.unwrap().intact);
    sqlx::query("UPDATE recording_chunks SET data = $1 WHERE recording_id = $2 AND seq = 1")
        .bind(&original)
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();

    // The last chunk removed (and the count lowered to match): the hash differs.
    assert_eq!(chunks.len(), 3, "the header rides in the first chunk");
    sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1 AND seq = 2")
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE desktop_recordings SET chunks = 2 WHERE id = $1")
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    let cut = recording::read(&app.state, &id, None).await.unwrap();
    assert!(!cut.intact);
    assert_ne!(Some(cut.sha256), sha);

    // The download says so too.
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/desktops/{id}/recording"),
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

async fn recordings_stop_at_the_accounts_size_limit(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, _) = recorded(&app, &acct.id, &acct.admin_id, &[], RecordingMode::Required).await;
    let mut r = Recording::new(id, RecordingMode::Required, 1, HEADER);
    let big = vec![7u8; 300 * 1024];
    for _ in 0..3 {
        r.record(&bytes::Bytes::copy_from_slice(&big)).unwrap();
    }
    assert_eq!(
        r.record(&bytes::Bytes::copy_from_slice(&big)),
        Err(Stop::SizeLimit),
        "1 MiB holds three 300 KiB frames, not four"
    );
    assert!(r.bytes() <= 1024 * 1024);
    // Off records nothing and never stops.
    let mut off = Recording::new("off".into(), RecordingMode::Off, 1, HEADER);
    for _ in 0..10 {
        off.record(&bytes::Bytes::copy_from_slice(&big)).unwrap();
    }
    assert_eq!(off.bytes(), 0);
    assert_eq!(off.finish().await, None);
}

async fn recordings_are_stored_compressed_by_their_writer_and_a_refused_chunk_stops_them(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    // Three screens of one colour: the stored chunks are a small part of them,
    // and they read back as recorded.
    let screen = vec![7u8; 300 * 1024];
    let (id, sha) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[&screen, &screen, &screen],
        RecordingMode::Required,
    )
    .await;
    let format: String =
        sqlx::query_scalar("SELECT chunk_format FROM desktop_recordings WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(format, "lz4-frame");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT data FROM recording_chunks WHERE recording_id = $1")
            .bind(&id)
            .fetch_all(&app.state.store.pool)
            .await
            .unwrap();
    let stored_len: usize = stored.iter().map(String::len).sum();
    assert!(
        stored_len < 64 * 1024,
        "{stored_len} bytes stored for 900 KiB of one colour"
    );
    let back = recording::read(&app.state, &id, None).await.unwrap();
    assert!(back.intact);
    assert_eq!(Some(back.sha256), sha);
    let frames = drawbridge_desktop::recording::frames(&back.stream).unwrap();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.data == &screen[..]));

    // The database refuses the second chunk (its place is taken): the
    // recording stops with StorageFailed soon after, and nothing later is stored.
    let id = bare_recording(&app, &acct, RecordingMode::Required).await;
    sqlx::query("INSERT INTO recording_chunks (recording_id, seq, data) VALUES ($1, 1, 'x')")
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    let mut r = Recording::new(id.clone(), RecordingMode::Required, 64, HEADER);
    let mut stopped = None;
    for n in 0..100 {
        r.record(&bytes::Bytes::copy_from_slice(&screen)).unwrap();
        if let Err(stop) = r.store(&app.state).await {
            stopped = Some((n, stop));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (n, stop) = stopped.expect("the refused chunk stops the recording");
    assert_eq!(stop, Stop::StorageFailed);
    assert!(n >= 1, "the first chunk was stored");
    r.finish().await;
    let places: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM recording_chunks WHERE recording_id = $1 ORDER BY seq")
            .bind(&id)
            .fetch_all(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(
        places,
        vec![0, 1],
        "only the first chunk (and the squatter)"
    );
}

async fn only_admins_and_auditors_watch_replay_and_download_recordings(app: TestApp) {
    let acct = app.account("acme").await;
    let (uid, user) = app.user(&acct, "ursula", "user").await;
    let (_, auditor) = app.user(&acct, "audrey", "auditor").await;
    let (_, sadmin) = app.user(&acct, "sam", "session_admin").await;
    let (mine, _) = recorded(
        &app,
        &acct.id,
        &uid,
        &[b"RFB 003.008\n"],
        RecordingMode::Required,
    )
    .await;
    let (theirs, _) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[b"RFB 003.008\n"],
        RecordingMode::Required,
    )
    .await;
    let (unrecorded, _) = recorded(&app, &acct.id, &acct.admin_id, &[], RecordingMode::Off).await;

    // The list: a user sees their own desktops, the others all of them.
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list = app.ok(Method::GET, "/api/v1/desktops", &user, None).await;
    assert_eq!(ids(&list), vec![mine.clone()]);
    for t in [&auditor, &sadmin, &acct.admin] {
        let list = app.ok(Method::GET, "/api/v1/desktops", t, None).await;
        assert_eq!(ids(&list).len(), 3, "{list}");
    }
    for bad in ["limit=0", "limit=501", "live=maybe", "what=1"] {
        let (s, v) = app
            .get(&format!("/api/v1/desktops?{bad}"), &acct.admin)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let ended = app
        .ok(
            Method::GET,
            "/api/v1/desktops?live=false",
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(ids(&ended).len(), 3);
    let live = app
        .ok(Method::GET, "/api/v1/desktops?live=true", &acct.admin, None)
        .await;
    assert_eq!(ids(&live).len(), 0);

    // Replay and download: auditors and admins only, also of their own desktop.
    for t in [&user, &sadmin] {
        for (m, path) in [
            (Method::POST, format!("/api/v1/desktops/{mine}/replay")),
            (Method::POST, format!("/api/v1/desktops/{mine}/watch")),
            (Method::GET, format!("/api/v1/desktops/{mine}/recording")),
        ] {
            let (s, v) = app.call(m, &path, Some(t), None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        }
    }
    for t in [&auditor, &acct.admin] {
        let opened = app
            .ok(
                Method::POST,
                &format!("/api/v1/desktops/{theirs}/replay"),
                t,
                None,
            )
            .await;
        let url = opened["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://") && url.contains(".web.localhost"),
            "{url}"
        );
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/v1/desktops/{theirs}/recording"),
                Some(t),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // Watching an ended desktop, replaying one never recorded: refused, clearly.
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/desktops/{theirs}/watch"),
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("replay"), "{v}");
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/desktops/{unrecorded}/replay"),
            Some(&auditor),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Replays and downloads are on the audit log.
    let audit = app
        .ok(Method::GET, "/api/v1/audit", &acct.admin, None)
        .await
        .to_string();
    assert!(
        audit.contains("desktop.replay") && audit.contains("desktop.download"),
        "{audit}"
    );
}

async fn recordings_past_the_accounts_retention_are_deleted(app: TestApp) {
    let acct = app.account("acme").await;
    // Bounds of the settings.
    for bad in [
        json!({"recording_retention_days": 0}),
        json!({"recording_max_mb": 0}),
        json!({"recording_max_mb": 5000}),
        json!({"desktop_recording": "sometimes"}),
    ] {
        let (s, v) = app
            .call(
                Method::PATCH,
                "/api/v1/account",
                Some(&acct.admin),
                Some(json!({"settings": bad})),
            )
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {v}"
        );
    }
    let a = app
        .ok(Method::GET, "/api/v1/account", &acct.admin, None)
        .await;
    assert_eq!(a["settings"]["desktop_recording"], "required");
    assert_eq!(a["settings"]["recording_retention_days"], 90);
    let mut settings = a["settings"].clone();
    settings["recording_retention_days"] = json!(2);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings})),
    )
    .await;

    let (old, _) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[b"a", b"b"],
        RecordingMode::Required,
    )
    .await;
    app.clock().advance(86_400);
    let (new, _) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[b"c"],
        RecordingMode::Required,
    )
    .await;
    assert_eq!(recording::purge(&app.state).await.unwrap(), 0);
    app.clock().advance(86_400 + 60);
    assert_eq!(recording::purge(&app.state).await.unwrap(), 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT recording_id FROM recording_chunks")
            .fetch_all(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(left, vec![new.clone()]);
    let admin = app.token("acme", "admin").await;
    let (s, _) = app
        .get(&format!("/api/v1/desktops/{old}/recording"), &admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn a_monitor_grant_gets_a_devices_desktops_and_never_a_tunnel(app: TestApp) {
    let acct = app.account("acme").await;
    let dev = vnc_device(&app, &acct, "panel").await;
    let (mona_id, mona) = app.user(&acct, "mona", "user").await;
    app.grant(&acct, &[&mona_id], &[&dev], "monitor", json!([]))
        .await;
    let prepare = |target: &'static str| {
        let (addr, port) = target.split_once(':').unwrap();
        json!({
            "name": "look",
            "devices": [{"device_id": dev, "targets": [{"address": addr, "protocol": "tcp", "ports": port}]}],
            "users": [mona_id],
        })
    };
    // Not the device's web page (an HMI takes input): refused.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/sessions",
            Some(&acct.admin),
            Some(prepare("192.168.1.20:80")),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Its desktop: assigned.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(prepare("192.168.1.20:5900")),
        )
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    app.edge_state(&dev, true, true).await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{session}/start"),
            &mona,
            None,
        )
        .await;
    assert_eq!(v["state"], "active", "{v}");
    // No tunnel of her own, whatever the client.
    for standard in [false, true] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/sessions/{session}/join"),
                Some(&mona),
                Some(json!({"public_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "standard_client": standard})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("monitor"), "{v}");
    }
    assert_eq!(app.count("tunnels").await, 0);
    // The desktop opens (view-only, decided by the bridge); HTTP to it does not.
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{session}/web"),
            &mona,
            Some(json!({"device_id": dev, "target": "192.168.1.20:5900"})),
        )
        .await;
    assert!(v["url"].as_str().unwrap().contains(".web.localhost"), "{v}");
    let (s, _) = app
        .get(
            &format!("/api/v1/sessions/{session}/devices/{dev}/http/192.168.1.20:5900/"),
            &mona,
        )
        .await;
    assert!(s.is_client_error());
    let access = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{dev}/access"),
            &mona,
            None,
        )
        .await;
    assert_eq!(access["level"], "monitor");
    assert_eq!(access["can_tunnel"], false);
}

async fn a_downloaded_recording_is_lz4_frames_whose_sha256_is_the_one_on_record(app: TestApp) {
    let acct = app.account("acme").await;
    // Three chunks, one of them large and compressible, one not.
    let screen = vec![42u8; 600 * 1024];
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (id, sha) = recorded(
        &app,
        &acct.id,
        &acct.admin_id,
        &[b"RFB 003.008\n", &screen, &noise],
        RecordingMode::Required,
    )
    .await;
    let sha = sha.expect("a hash on the record");
    let (s, h, file) = download(&app, &id, &acct.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-recording-intact"], "true");
    assert_eq!(h["x-recording-sha256"], sha.as_str());
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"desktop-{id}.dbrfb.lz4\"").as_str()
    );
    assert_eq!(
        sha256_hex(&file),
        sha,
        "sha256sum of the file is the hash on record"
    );
    assert!(file.len() < 300 * 1024, "{} bytes for 800 KiB", file.len());
    // The file is standard LZ4 frames (one per chunk), which open to the
    // framed stream the player replays.
    assert!(
        file.starts_with(&[0x04, 0x22, 0x4d, 0x18]),
        "the LZ4 frame magic"
    );
    let stream = lz4_frames(&file);
    let frames = drawbridge_desktop::recording::frames(&stream).unwrap();
    let payloads: Vec<&[u8]> = frames.iter().map(|f| f.data).collect();
    assert!(
        payloads == [&b"RFB 003.008\n"[..], &screen, &noise],
        "the file opens to the frames recorded"
    );
    let back = recording::read(&app.state, &id, None).await.unwrap();
    assert_eq!(back.stream, stream);
    assert_eq!(back.file, file);
    // A download keeps only the file, a replay only the stream; both check the hash.
    let only_file = recording::read_keeping(&app.state, &id, None, recording::Keep::File)
        .await
        .unwrap();
    assert!(only_file.stream.is_empty() && only_file.intact);
    assert_eq!(
        (only_file.file, only_file.sha256),
        (file.clone(), sha.clone())
    );
    let only_stream = recording::read_keeping(&app.state, &id, None, recording::Keep::Stream)
        .await
        .unwrap();
    assert!(only_stream.file.is_empty() && only_stream.intact);
    assert_eq!(
        (only_stream.stream, only_stream.sha256),
        (stream, sha.clone())
    );

    // One byte of the file changed in the database (a chunk re-sealed with
    // the key, as someone holding it could): the download says so.
    let chunk: String =
        sqlx::query_scalar("SELECT data FROM recording_chunks WHERE recording_id = $1 AND seq = 1")
            .bind(&id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    let place = format!("recording_chunks:{id}:1");
    let mut opened = app.state.store.unseal_bytes(&place, &chunk).unwrap();
    let last = opened.len() - 5;
    opened[last] ^= 1;
    sqlx::query("UPDATE recording_chunks SET data = $1 WHERE recording_id = $2 AND seq = 1")
        .bind(app.state.store.seal_bytes(&place, &opened))
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    let (s, h, file) = download(&app, &id, &acct.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-recording-intact"], "false");
    assert_ne!(sha256_hex(&file), sha);
}

async fn a_recording_stopped_midway_hashes_exactly_what_was_stored(app: TestApp) {
    let acct = app.account("acme").await;
    let id = bare_recording(&app, &acct, RecordingMode::BestEffort).await;
    let mut r = Recording::new(id.clone(), RecordingMode::BestEffort, 64, HEADER);
    r.record(&bytes::Bytes::copy_from_slice(b"stored")).unwrap();
    r.store(&app.state).await.unwrap();
    // Recorded but never stored: the recording stops (as a best-effort one
    // does at its size limit) with this still pending.
    r.record(&bytes::Bytes::copy_from_slice(b"pending, then dropped"))
        .unwrap();
    r.stop();
    let sha = r.finish().await;
    end_recording(&app, &id, &sha).await;
    let back = recording::read(&app.state, &id, None).await.unwrap();
    assert!(back.intact, "the hash covers what was stored, no more");
    assert_eq!(Some(back.sha256), sha);
    let frames = drawbridge_desktop::recording::frames(&back.stream).unwrap();
    assert_eq!(frames.last().unwrap().data, b"stored");
}

async fn a_recording_stored_before_lz4_frames_reads_and_downloads_as_its_stream(app: TestApp) {
    let acct = app.account("acme").await;
    let id = bare_recording(&app, &acct, RecordingMode::Required).await;
    // Two chunks as the server stored them before: LZ4 blocks with their size
    // in front, the hash over the framed stream.
    let mut framer = drawbridge_desktop::recording::Recorder::new();
    let mut stream = HEADER.to_vec();
    let first = stream.len();
    framer.frame_into(5, b"RFB 003.008\n", &mut stream);
    for (seq, part) in [(0, &stream[..first]), (1, &stream[first..])] {
        let place = format!("recording_chunks:{id}:{seq}");
        let block = lz4_flex::block::compress_prepend_size(part);
        sqlx::query("INSERT INTO recording_chunks (recording_id, seq, data) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(seq)
            .bind(app.state.store.seal_bytes(&place, &block))
            .execute(&app.state.store.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE desktop_recordings SET chunks = 2, chunk_format = 'lz4', sha256 = $1 WHERE id = $2",
    )
    .bind(sha256_hex(&stream))
    .bind(&id)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
    let (s, h, file) = download(&app, &id, &acct.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-recording-intact"], "true");
    assert_eq!(file, stream);
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"desktop-{id}.dbrfb\"").as_str()
    );
}
