//! The session page's "WireGuard app (phone, Windows)" section over real HTTPS:
//! the config the portal makes joins the session as a standard client, names
//! the session's edge, is a QR code that decodes to the same text, and its
//! private key is kept nowhere on the server.

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Browser, PASSWORD, TestServer, announce_edge_key, between};

store_tests!(
    a_key_made_for_me_starts_the_session_joins_as_a_standard_client_and_is_stored_nowhere,
    my_apps_key_gets_a_config_without_a_private_key_and_a_bad_key_or_another_user_changes_nothing,
);

/// The session key the test's edge announces.
const EDGE_KEY: [u8; 32] = [9; 32];

/// Setup: admin "admin", an assigned admin "ann", a user "bob", device "Press"
/// (online) and a prepared session "Fix press" for ann only. Returns the
/// admin's and ann's browsers and the session page's path.
async fn plant(server: &TestServer) -> (Browser, Browser, String) {
    let mut admin = Browser::new(server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let csrf = admin.login("Plant", "admin", PASSWORD).await.csrf();
    for (u, role) in [("ann", "admin"), ("bob", "user")] {
        admin.create_user(&csrf, u, role).await;
    }
    let device = admin
        .create_device(&csrf, "Press", "tcp:192.168.1.10:502\nicmp:192.168.1.0/24")
        .await;
    let new = admin.get("/portal/sessions/new").await;
    // The users' boxes: `value="{id}" id="user-{name}"`.
    let before_ann = between(&new.body, "name=\"user\"", " id=\"user-ann\"");
    let ann_id = before_ann
        .rsplit("value=\"")
        .next()
        .unwrap()
        .trim_end_matches('"');
    let ann_id = ann_id.to_string();
    let session = admin
        .prepare_session(
            &csrf,
            "Fix press",
            (&device, "tcp:192.168.1.10:502"),
            &ann_id,
        )
        .await;
    server.edge_online("Press").await;
    let mut ann = Browser::new(server);
    ann.login("Plant", "ann", PASSWORD).await;
    (admin, ann, session)
}

/// Plays the session's edge: once the session is active it announces its
/// session key (recorded as the edge channel's `SessionKey` records it).
fn edge_announces_its_key(server: &TestServer, session_id: &str) -> tokio::task::JoinHandle<()> {
    let pool = server.state.store.pool.clone();
    let id = session_id.to_string();
    tokio::spawn(async move {
        for _ in 0..400 {
            if announce_edge_key(&pool, &id, EDGE_KEY).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the session never became active");
    })
}

/// The config as the page's download link carries it (exactly the file's bytes).
fn downloaded(body: &str) -> String {
    let b64 = between(body, "href=\"data:application/octet-stream;base64,", "\"");
    String::from_utf8(STANDARD.decode(b64).expect("base64")).expect("utf-8")
}

/// Decodes the page's inline SVG QR code: its dark modules (the `qrcode`
/// renderer's `M{x} {y}h{w}v{h}…` rectangles) drawn into a grey image, read by
/// `rqrr`.
fn decode_qr(body: &str) -> String {
    let svg = between(body, "id=\"wireguard-qr\">", "</div>");
    assert!(svg.starts_with("<svg"), "{svg}");
    let num = |attr: &str| -> usize { between(svg, &format!(" {attr}=\""), "\"").parse().unwrap() };
    let (w, h) = (num("width"), num("height"));
    let mut px = vec![255u8; w * h];
    for rect in between(svg, " d=\"", "\"")
        .split('M')
        .filter(|s| !s.is_empty())
    {
        let (xy, rest) = rect.split_once('h').unwrap();
        let (x, y) = xy.split_once(' ').unwrap();
        let (rw, rest) = rest.split_once('v').unwrap();
        let rh = rest.split('H').next().unwrap();
        let [x, y, rw, rh]: [usize; 4] = [x, y, rw, rh].map(|n| n.parse().unwrap());
        for row in y..y + rh {
            px[row * w + x..row * w + x + rw].fill(0);
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| px[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("the QR code decodes").1
}

fn line<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
}

async fn standard_tunnels(server: &TestServer) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT client_public_key, overlay_ip FROM tunnels WHERE standard_client = 1 ORDER BY started_at",
    )
    .fetch_all(&server.state.store.pool)
    .await
    .expect("tunnels")
}

async fn a_key_made_for_me_starts_the_session_joins_as_a_standard_client_and_is_stored_nowhere(
    server: TestServer,
) {
    server
        .state
        .set_bridge_endpoint(Some("127.0.0.1:51820".into()));
    let (_admin, mut ann, session) = plant(&server).await;
    let page = ann.get(&session).await;
    assert!(
        page.body.contains("WireGuard app (phone, Windows)"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let id = session.trim_start_matches("/portal/sessions/");
    let edge = edge_announces_its_key(&server, id);

    // The session is only prepared: the POST starts it, as the CLI export does.
    let r = ann
        .post(
            &format!("{session}/wireguard"),
            &[("csrf", &csrf), ("mode", "generate")],
        )
        .await;
    edge.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let config = downloaded(&r.body);
    assert!(
        r.body.contains("download=\"drawbridge-Fix-press.conf\""),
        "{}",
        r.body
    );

    // The config names the session's edge and the address the join got.
    let tunnels = standard_tunnels(&server).await;
    assert_eq!(tunnels.len(), 1, "one device, one tunnel row");
    let (client_key, overlay) = &tunnels[0];
    assert_eq!(
        line(&config, "Address"),
        Some(format!("{overlay}/32").as_str()),
        "{config}"
    );
    assert_eq!(
        line(&config, "PublicKey"),
        Some(STANDARD.encode(EDGE_KEY).as_str())
    );
    assert_eq!(line(&config, "AllowedIPs"), Some("192.168.1.10/32"));
    assert_eq!(line(&config, "Endpoint"), Some("127.0.0.1:51820"));
    assert_eq!(config.matches("[Peer]").count(), 1);
    // The private key in it is the one whose public key joined.
    let private = line(&config, "PrivateKey").expect("a private key");
    let private_bytes: [u8; 32] = STANDARD.decode(private).unwrap().try_into().unwrap();
    assert_eq!(
        STANDARD.encode(drawbridge_wire::keys::public_key(&private_bytes)),
        *client_key
    );

    // The page shows the same text and a QR code that decodes to it.
    assert!(r.body.contains(&format!("PrivateKey = {private}")));
    assert_eq!(decode_qr(&r.body), config);

    // tunnel.up is on the record for the standard client, without the private key.
    let ups: Vec<String> =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'tunnel.up'")
            .fetch_all(&server.state.store.pool)
            .await
            .unwrap();
    assert_eq!(ups.len(), 1, "{ups:?}");
    let up: serde_json::Value = serde_json::from_str(&ups[0]).unwrap();
    assert_eq!(up["standard_client"], true, "{up}");
    assert_eq!(up["public_key"], client_key.as_str());
    assert_eq!(up["username"], "ann");

    // Nowhere in the database: in no row (audit entries included) ...
    let rows = server.find_text(private).await;
    assert!(rows.is_empty(), "the private key is stored in {rows:?}");
    assert!(
        !server.find_text(client_key).await.is_empty(),
        "the search finds what is stored"
    );
    // ... and, on SQLite, in no byte of its files, as text or as raw bytes.
    let mut found = Vec::new();
    for entry in std::fs::read_dir(server.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            if has(private.as_bytes()) || has(&private_bytes) {
                found.push(path);
            }
        }
    }
    assert!(found.is_empty(), "the private key is stored in {found:?}");
}

async fn my_apps_key_gets_a_config_without_a_private_key_and_a_bad_key_or_another_user_changes_nothing(
    server: TestServer,
) {
    let (mut admin, mut ann, session) = plant(&server).await;
    let id = session.trim_start_matches("/portal/sessions/").to_string();
    let csrf = ann.get(&session).await.csrf();
    let wg = format!("{session}/wireguard");

    // A malformed key: a clear error, and the session is not even started.
    for bad in [
        "not-a-key",
        "AAAA\nPostUp = id",
        &STANDARD.encode([1u8; 31]),
    ] {
        let r = ann.post(&wg, &[("csrf", &csrf), ("public_key", bad)]).await;
        assert_eq!(r.status, 303, "{}", r.body);
        let back = ann.follow(&r).await;
        assert!(
            back.body.contains("That is not a WireGuard public key"),
            "{}",
            back.body
        );
        assert!(back.body.contains("id=\"session-state\">prepared<"));
    }
    assert_eq!(server.count("tunnels").await, 0);

    // Someone not assigned to the session is refused: a user does not even see
    // it, an admin who may see it gets a refusal on the record.
    let mut bob = Browser::new(&server);
    let bob_csrf = bob.login("Plant", "bob", PASSWORD).await.csrf();
    let r = bob
        .post(&wg, &[("csrf", &bob_csrf), ("mode", "generate")])
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let admin_page = admin.get(&session).await;
    assert!(
        !admin_page.body.contains("WireGuard app (phone, Windows)"),
        "the section is for the session's users"
    );
    // Nor can an admin who may see it but is not one of its users.
    let r = admin
        .post(&wg, &[("csrf", &admin_page.csrf()), ("mode", "generate")])
        .await;
    let back = admin.follow(&r).await;
    assert!(back.body.contains("flash error"), "{}", back.body);
    assert_eq!(server.count("tunnels").await, 0);

    // Without the relay's UDP bridge: the session starts (the edge announces
    // its key), then a message that names bridge_listen.
    let edge = edge_announces_its_key(&server, &id);
    let app_key = STANDARD.encode(drawbridge_wire::keys::public_key(&[5u8; 32]));
    let r = ann
        .post(&wg, &[("csrf", &csrf), ("public_key", &app_key)])
        .await;
    edge.await.unwrap();
    let back = ann.follow(&r).await;
    assert!(back.body.contains("bridge_listen"), "{}", back.body);
    assert_eq!(server.count("tunnels").await, 0);

    // With it: the config for the app's key, no private key in it, and its QR code.
    server
        .state
        .set_bridge_endpoint(Some("relay.example.com:51820".into()));
    let r = ann
        .post(
            &wg,
            &[("csrf", &csrf), ("public_key", &format!(" {app_key}\n"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let config = downloaded(&r.body);
    assert!(line(&config, "PrivateKey").is_none(), "{config}");
    assert!(config.contains("# PrivateKey: keep the one your WireGuard app made"));
    assert_eq!(line(&config, "Endpoint"), Some("relay.example.com:51820"));
    assert_eq!(
        line(&config, "PublicKey"),
        Some(STANDARD.encode(EDGE_KEY).as_str())
    );
    assert_eq!(decode_qr(&r.body), config);
    let tunnels = standard_tunnels(&server).await;
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].0, app_key);
    assert_eq!(
        line(&config, "Address"),
        Some(format!("{}/32", tunnels[0].1).as_str())
    );
}
