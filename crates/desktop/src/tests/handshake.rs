//! The handshake through the bridge: versions, security, init.

use super::*;

fn stored(pw: &str) -> Config {
    config(Auth::Stored(pw.into()), false)
}

fn reason(text: &str) -> Vec<u8> {
    cat(&[&be32(text.len() as u32), text.as_bytes()])
}

/// Server side of a handshake with security None at `version`.
fn none_steps(version: &[u8], security: Vec<u8>, result: Option<&[u8]>) -> Vec<Step> {
    let mut steps = vec![
        Server(version.to_vec()),
        Browser(V38.to_vec()),
        Server(security),
        Browser(vec![1]),
    ];
    if let Some(r) = result {
        steps.push(Server(r.to_vec()));
    }
    steps.push(Browser(vec![0]));
    steps.push(Server(server_init(640, 480, "x")));
    steps
}

#[test]
fn none_with_rfb_3_8_server_passes_its_security_result_on() {
    let out = run(&open(), &none_steps(V38, vec![1, 1], Some(OK)));
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V38, &[1], &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])
    );
    assert_eq!(out.desktop.unwrap().width, 640);
}

#[test]
fn none_with_rfb_3_7_server_gets_a_security_result_made_up_for_the_browser() {
    let out = run(&open(), &none_steps(V37, vec![1, 1], None));
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V37, &[1], &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])
    );
}

#[test]
fn none_with_rfb_3_3_server_chosen_by_the_server() {
    let out = run(&open(), &none_steps(V33, be32(1), None));
    assert_eq!(out.error, None);
    // 3.3: the client sends no security type.
    assert_eq!(out.to_server, cat(&[V33, &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])
    );
}

#[test]
fn apple_3_889_is_answered_with_3_8() {
    let out = run(&open(), &none_steps(b"RFB 003.889\n", vec![1, 1], Some(OK)));
    assert_eq!(out.error, None);
    assert!(out.to_server.starts_with(V38));
}

#[test]
fn none_is_preferred_whatever_the_order_and_the_auth() {
    for cfg in [open(), stored("pw")] {
        let out = run(&cfg, &none_steps(V38, vec![3, 2, 19, 1], Some(OK)));
        assert_eq!(out.error, None);
        assert_eq!(out.to_server, cat(&[V38, &[1], &[1]]));
        assert!(out.to_browser.starts_with(&cat(&[V38, &[1, 1]])));
    }
}

#[test]
fn client_init_is_always_shared() {
    // The browser asks for an exclusive session (shared flag 0 in
    // `none_steps`): the bridge still asks for a shared one so watchers and
    // other viewers are not kicked.
    let steps = none_steps(V38, vec![1, 1], Some(OK));
    assert!(steps.iter().any(|s| matches!(s, Browser(b) if b == &[0])));
    let out = run(&open(), &steps);
    assert_eq!(*out.to_server.last().unwrap(), 1);
}

#[test]
fn stored_password_with_rfb_3_3_server() {
    let response = vnc_auth::response(b"pw", &CHALLENGE);
    let out = run(
        &stored("pw"),
        &[
            Server(V33.to_vec()),
            Browser(V38.to_vec()),
            Server(be32(2)),
            Browser(vec![1]),
            Server(CHALLENGE.to_vec()),
            Server(OK.to_vec()),
            Browser(vec![1]),
            Server(server_init(640, 480, "x")),
        ],
    );
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V33, &response, &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])
    );
}

#[test]
fn stored_password_refused_with_the_server_reason() {
    let out = run(
        &stored("wrong"),
        &[
            Server(V38.to_vec()),
            Browser(V38.to_vec()),
            Server(vec![1, 2]),
            Browser(vec![1]),
            Server(CHALLENGE.to_vec()),
            Server(cat(&[&be32(1), &reason("Authentication failure")])),
        ],
    );
    assert_eq!(
        out.error,
        Some(RfbError::PasswordRefused("Authentication failure".into()))
    );
    assert_eq!(
        out.error.unwrap().to_string(),
        "the VNC server refused the password: Authentication failure"
    );
    // The browser was told nothing beyond the offer.
    assert_eq!(out.to_browser, cat(&[V38, &[1, 1]]));
}

#[test]
fn stored_password_refused_by_3_3_and_3_7_servers_without_a_reason() {
    for (version, security) in [(V33, be32(2)), (V37, vec![1, 2])] {
        let out = run(
            &stored("wrong"),
            &[
                Server(version.to_vec()),
                Browser(V38.to_vec()),
                Server(security),
                Browser(vec![1]),
                Server(CHALLENGE.to_vec()),
                Server(be32(1)),
            ],
        );
        assert_eq!(out.error, Some(RfbError::PasswordRefused(NO_REASON.into())));
    }
}

#[test]
fn empty_stored_password_means_none_is_stored() {
    let out = run(
        &stored(""),
        &[
            Server(V38.to_vec()),
            Browser(V38.to_vec()),
            Server(vec![1, 2]),
        ],
    );
    assert_eq!(out.error, Some(RfbError::NoStoredPassword));
    // Nothing chosen upstream, nothing offered to the browser.
    assert_eq!(out.to_server, V38);
    assert_eq!(out.to_browser, V38);
    // But an empty stored password is fine where none is needed.
    let out = run(&stored(""), &none_steps(V38, vec![1, 1], Some(OK)));
    assert_eq!(out.error, None);
}

fn typed_steps(version: &[u8], security: Vec<u8>, result: &[u8]) -> Vec<Step> {
    vec![
        Server(version.to_vec()),
        Browser(V38.to_vec()),
        Server(security),
        Browser(vec![2]),
        Server(CHALLENGE.to_vec()),
        Browser(b"RESPONSE-16-BYTE".to_vec()),
        Server(result.to_vec()),
    ]
}

#[test]
fn typed_password_relays_challenge_and_response() {
    let mut steps = typed_steps(V38, vec![1, 2], OK);
    steps.push(Browser(vec![1]));
    steps.push(Server(server_init(640, 480, "x")));
    let out = run(&open(), &steps);
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V38, &[2], b"RESPONSE-16-BYTE", &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 2], &CHALLENGE, OK, &server_init(640, 480, "x")])
    );
}

#[test]
fn typed_password_with_rfb_3_3_server() {
    let mut steps = typed_steps(V33, be32(2), OK);
    steps.push(Browser(vec![1]));
    let out = run(&open(), &steps);
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V33, b"RESPONSE-16-BYTE", &[1]]));
    assert_eq!(out.to_browser, cat(&[V38, &[1, 2], &CHALLENGE, OK]));
}

#[test]
fn typed_password_refused_forwards_result_and_reason_to_the_browser() {
    let failure = cat(&[&be32(1), &reason("Authentication failure")]);
    let out = run(&open(), &typed_steps(V38, vec![1, 2], &failure));
    assert_eq!(
        out.error,
        Some(RfbError::PasswordRefused("Authentication failure".into()))
    );
    assert_eq!(out.to_browser, cat(&[V38, &[1, 2], &CHALLENGE, &failure]));
}

#[test]
fn typed_password_refused_by_3_7_server_gets_a_reason_for_the_3_8_browser() {
    let out = run(&open(), &typed_steps(V37, vec![1, 2], &be32(1)));
    assert_eq!(out.error, Some(RfbError::PasswordRefused(NO_REASON.into())));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 2], &CHALLENGE, &be32(1), &reason(NO_REASON)])
    );
}

#[test]
fn typed_response_sent_early_waits_for_the_challenge() {
    let mut bridge = Bridge::new(open());
    bridge.from_server(V38).unwrap();
    bridge.from_browser(V38).unwrap();
    bridge.from_server(&[1, 2]).unwrap();
    // Choice and a premature response in one go.
    bridge.from_browser(b"\x02RESPONSE-16-BYTE").unwrap();
    assert_eq!(bridge.take_to_server(), cat(&[V38, &[2]]));
    bridge.from_server(&CHALLENGE).unwrap();
    assert_eq!(bridge.take_to_server(), b"RESPONSE-16-BYTE");
    assert_eq!(bridge.take_to_browser(), cat(&[V38, &[1, 2], &CHALLENGE]));
}

#[test]
fn typed_challenge_waits_until_the_browser_chose_vnc_auth() {
    let mut bridge = Bridge::new(open());
    bridge
        .from_server(&cat(&[V38, &[1, 2], &CHALLENGE]))
        .unwrap();
    bridge.from_browser(V38).unwrap();
    assert_eq!(bridge.take_to_browser(), cat(&[V38, &[1, 2]]));
    bridge.from_browser(&[2]).unwrap();
    assert_eq!(bridge.take_to_browser(), CHALLENGE);
}

#[test]
fn browser_bytes_sent_ahead_wait_for_their_turn() {
    // The browser sends its whole side at once, before the server says
    // anything: the outcome is the same as in lockstep.
    let steps = vec![
        Browser(cat(&[V38, &[1], &[0]])),
        Server(cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])),
    ];
    let out = run(&open(), &steps);
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V38, &[1], &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(640, 480, "x")])
    );
}

#[test]
fn unsupported_security_types_are_named() {
    let out = run(
        &open(),
        &[Server(cat(&[V38, &[3, 19, 18, 6]])), Browser(V38.to_vec())],
    );
    let err = out.error.unwrap();
    assert_eq!(err, RfbError::UnsupportedSecurity(vec![19, 18, 6]));
    assert!(
        err.to_string()
            .contains("offered: 19 VeNCrypt, 18 TLS, 6 RSA-AES"),
        "{err}"
    );
    let out = run(&open(), &[Server(cat(&[V33, &be32(19)]))]);
    assert_eq!(out.error, Some(RfbError::UnsupportedSecurity(vec![19])));
}

#[test]
fn empty_security_list_surfaces_the_server_reason() {
    let steps = [Server(cat(&[V38, &[0], &reason("too many connections")]))];
    let out = run(&open(), &steps);
    assert_eq!(
        out.error,
        Some(RfbError::ServerRefused("too many connections".into()))
    );
    let steps = [Server(cat(&[V33, &be32(0), &reason("go away")]))];
    let out = run(&open(), &steps);
    assert_eq!(out.error, Some(RfbError::ServerRefused("go away".into())));
}

#[test]
fn oversize_reason_is_refused() {
    let steps = [Server(cat(&[V38, &[0], &be32(4097)]))];
    let out = run(&open(), &steps);
    assert_eq!(
        out.error,
        Some(RfbError::ReasonTooLong {
            len: 4097,
            limit: 4096
        })
    );
}

#[test]
fn failed_security_result_with_none_is_a_refusal() {
    let steps = none_steps(V38, vec![1, 1], Some(&cat(&[&be32(1), &reason("nope")])));
    let out = run(&open(), &steps);
    assert_eq!(out.error, Some(RfbError::ServerRefused("nope".into())));
}

#[test]
fn bad_versions_are_refused() {
    let out = run(&open(), &[Server(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())]);
    assert!(matches!(out.error, Some(RfbError::BadServerVersion(_))));
    assert!(out.error.unwrap().to_string().contains("bad RFB version"));
    let out = run(&open(), &[Browser(b"RFB 003.003\n".to_vec())]);
    assert!(matches!(out.error, Some(RfbError::BadBrowserVersion(_))));
}

#[test]
fn browser_choosing_a_type_not_offered_is_refused() {
    let out = run(
        &open(),
        &[Server(cat(&[V38, &[1, 1]])), Browser(cat(&[V38, &[2]]))],
    );
    assert_eq!(
        out.error,
        Some(RfbError::BrowserSecurityType {
            chosen: 2,
            offered: 1
        })
    );
}

#[test]
fn server_init_passes_unchanged_and_what_follows_passes_through() {
    let name = "ÄÖ plant 7 – line 3";
    let mut steps = none_steps(V38, vec![1, 1], Some(OK));
    steps.pop();
    steps.push(Server(cat(&[
        &server_init(1920, 1080, name),
        b"\x00\x00\x00\x01rest",
    ])));
    let out = run(&open(), &steps);
    assert_eq!(
        out.desktop,
        Some(Desktop {
            width: 1920,
            height: 1080,
            name: name.into()
        })
    );
    assert!(out.to_browser.ends_with(&cat(&[
        &server_init(1920, 1080, name),
        b"\x00\x00\x00\x01rest"
    ])));
}

#[test]
fn desktop_name_is_bounded() {
    let long = "n".repeat(4096);
    let mut steps = none_steps(V38, vec![1, 1], Some(OK));
    steps.pop();
    steps.push(Server(server_init(8, 8, &long)));
    assert_eq!(run(&open(), &steps).desktop.unwrap().name, long);
    steps.pop();
    let mut init = server_init(8, 8, "");
    init[20..24].copy_from_slice(&be32(4097));
    steps.push(Server(init));
    assert_eq!(
        run(&open(), &steps).error,
        Some(RfbError::NameTooLong {
            len: 4097,
            limit: 4096
        })
    );
}

#[test]
fn handshake_buffers_are_bounded() {
    // The server talks out of turn while the bridge waits for the browser.
    let steps = [Server(cat(&[V38, &[1, 1], OK, &[0u8; 9000]]))];
    let out = run(&open(), &steps);
    assert_eq!(
        out.error,
        Some(RfbError::ServerHandshakeTooLong { limit: 8192 })
    );
    // The browser does so while the bridge waits for the server.
    let steps = [Browser(cat(&[V38, &[1u8; 9000]]))];
    let out = run(&open(), &steps);
    assert_eq!(
        out.error,
        Some(RfbError::BrowserHandshakeTooLong { limit: 8192 })
    );
}
