//! The browser's messages after the handshake: framing and view-only.

use super::*;

pub(crate) fn set_pixel_format() -> Vec<u8> {
    let format = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0];
    cat(&[&[0, 0, 0, 0], &format])
}

pub(crate) fn set_encodings(encodings: &[i32]) -> Vec<u8> {
    let mut b = vec![2, 0];
    b.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
    for e in encodings {
        b.extend_from_slice(&e.to_be_bytes());
    }
    b
}

pub(crate) fn update_request() -> Vec<u8> {
    vec![3, 1, 0, 0, 0, 0, 3, 32, 2, 88]
}

pub(crate) fn key_event(down: bool, keysym: u32) -> Vec<u8> {
    cat(&[&[4, u8::from(down), 0, 0], &be32(keysym)])
}

pub(crate) fn pointer_event(buttons: u8, x: u16, y: u16) -> Vec<u8> {
    cat(&[&[5, buttons], &x.to_be_bytes(), &y.to_be_bytes()])
}

pub(crate) fn cut_text(text: &[u8]) -> Vec<u8> {
    cat(&[&[6, 0, 0, 0], &be32(text.len() as u32), text])
}

/// The extended-clipboard form: a negative length, |length| bytes follow.
pub(crate) fn extended_cut_text(data: &[u8]) -> Vec<u8> {
    let len = -(data.len() as i32);
    cat(&[&[6, 0, 0, 0], &len.to_be_bytes(), data])
}

pub(crate) fn continuous_updates() -> Vec<u8> {
    vec![150, 1, 0, 0, 0, 0, 3, 32, 2, 88]
}

pub(crate) fn fence(payload: &[u8]) -> Vec<u8> {
    cat(&[
        &[248, 0, 0, 0],
        &be32(0x8000_0003),
        &[payload.len() as u8],
        payload,
    ])
}

pub(crate) fn xvp(code: u8) -> Vec<u8> {
    vec![250, 0, 1, code]
}

pub(crate) fn set_desktop_size(screens: u8) -> Vec<u8> {
    let mut b = vec![251, 0, 3, 32, 2, 88, screens, 0];
    for i in 0..screens {
        b.extend(be32(u32::from(i)));
        b.extend_from_slice(&[0, 0, 0, 0, 3, 32, 2, 88]);
        b.extend(be32(0));
    }
    b
}

pub(crate) fn qemu_key_event() -> Vec<u8> {
    cat(&[&[255, 0, 0, 1], &be32(0x61), &be32(0x1e)])
}

pub(crate) fn qemu_audio(op: u16) -> Vec<u8> {
    let mut b = vec![255, 1];
    b.extend_from_slice(&op.to_be_bytes());
    if op == 2 {
        b.extend_from_slice(&[3, 2]);
        b.extend(be32(44100));
    }
    b
}

/// Every message the bridge frames, and whether it is an input.
pub(crate) fn every_message() -> Vec<(Vec<u8>, bool)> {
    vec![
        (set_pixel_format(), false),
        (
            set_encodings(&[7, 16, 5, 2, 0, -223, -224, -258, -308, -309, -312, -313]),
            false,
        ),
        (update_request(), false),
        (key_event(true, 0x61), true),
        (pointer_event(1, 100, 200), true),
        (cut_text(b"hello"), true),
        (extended_cut_text(&[0x10, 0, 0, 1, 0, 0, 0, 5]), true),
        (continuous_updates(), false),
        (fence(b"sync"), false),
        (xvp(3), true),
        (set_desktop_size(1), true),
        (qemu_key_event(), true),
        (qemu_audio(0), false),
        (qemu_audio(1), false),
        (qemu_audio(2), false),
        (set_encodings(&[]), false),
        (fence(b""), false),
        (cut_text(b""), true),
    ]
}

fn messages(view_only: bool, browser: &[u8], server: &[u8]) -> Outcome {
    run(
        &config(Auth::Typed, view_only),
        &after_handshake(browser, server),
    )
}

#[test]
fn every_known_message_is_forwarded_intact() {
    let all: Vec<u8> = every_message().into_iter().flat_map(|(m, _)| m).collect();
    let out = messages(false, &all, b"");
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[&handshake_to_server(), &all]));
    assert_eq!(out.dropped, 0);
}

#[test]
fn view_only_drops_every_input_and_counts_it() {
    let all: Vec<u8> = every_message().into_iter().flat_map(|(m, _)| m).collect();
    let kept: Vec<u8> = every_message()
        .into_iter()
        .filter(|(_, input)| !input)
        .flat_map(|(m, _)| m)
        .collect();
    let inputs = every_message().iter().filter(|(_, input)| *input).count();
    let out = messages(true, &all, b"");
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[&handshake_to_server(), &kept]));
    assert_eq!(out.dropped, inputs as u64);
}

#[test]
fn view_only_still_lets_the_picture_flow() {
    let picture = b"\x00\x00\x00\x01 any bytes at all \xff\xfe".repeat(50);
    let out = messages(true, &update_request(), &picture);
    assert_eq!(out.to_browser, cat(&[&handshake_to_browser(), &picture]));
    assert!(out.to_server.ends_with(&update_request()));
}

#[test]
fn view_only_drops_a_large_clipboard_without_keeping_it() {
    let text = vec![b'c'; 300_000];
    let mut browser = cut_text(&text);
    browser.extend(key_event(false, 0x61));
    browser.extend(update_request());
    let cfg = config(Auth::Typed, true);
    let steps = after_handshake(&browser, b"");
    for split in [Split::Whole, Split::Random(3)] {
        let out = run_split(&cfg, &steps, split, true);
        assert_eq!(
            out.to_server,
            cat(&[&handshake_to_server(), &update_request()])
        );
        assert_eq!(out.dropped, 2);
    }
}

#[test]
fn clipboard_up_to_one_mib_passes_and_beyond_is_refused() {
    let text = vec![b'c'; 1024 * 1024];
    let cfg = open();
    let steps = after_handshake(&cut_text(&text), b"");
    let out = run_split(&cfg, &steps, Split::Random(9), true);
    assert_eq!(out.error, None);
    assert_eq!(
        out.to_server.len(),
        handshake_to_server().len() + 8 + text.len()
    );

    for len in [1024 * 1024 + 1, 0x7fff_ffff] {
        let head = cat(&[&[6, 0, 0, 0], &be32(len)]);
        let out = messages(false, &head, b"");
        assert_eq!(
            out.error,
            Some(RfbError::ClientMessageTooLong {
                message: "ClientCutText",
                count: len.into(),
                unit: "bytes",
                limit: 1024 * 1024
            })
        );
    }
    for len in [-(1024 * 1024 + 1), i32::MIN] {
        let head = cat(&[&[6, 0, 0, 0], &len.to_be_bytes()]);
        let err = messages(false, &head, b"").error.unwrap();
        assert!(
            err.to_string().starts_with("client message too long"),
            "{err}"
        );
    }
}

#[test]
fn counted_lists_are_bounded() {
    let ok = set_encodings(&[0; 1024]);
    assert_eq!(messages(false, &ok, b"").error, None);
    let too_many = set_encodings(&[0; 1025]);
    let err = messages(false, &too_many, b"").error.unwrap();
    assert!(
        err.to_string()
            .contains("SetEncodings with 1025 encodings (limit 1024)"),
        "{err}"
    );

    let mut big_fence = fence(&[0; 64]);
    assert_eq!(messages(false, &big_fence, b"").error, None);
    big_fence[8] = 65;
    let err = messages(false, &big_fence, b"").error.unwrap();
    assert!(
        err.to_string().contains("ClientFence with 65 bytes"),
        "{err}"
    );

    assert_eq!(messages(false, &set_desktop_size(16), b"").error, None);
    let err = messages(false, &set_desktop_size(17), b"").error.unwrap();
    assert!(
        err.to_string().contains("SetDesktopSize with 17 screens"),
        "{err}"
    );
}

#[test]
fn unknown_message_type_ends_the_connection_after_what_came_before() {
    for t in [1u8, 7, 8, 127, 200, 252, 253, 254] {
        let browser = cat(&[&key_event(true, 0x61), &[t, 0, 0, 0, 0, 0, 0, 0]]);
        let out = messages(false, &browser, b"");
        assert_eq!(out.error, Some(RfbError::UnknownClientMessage(t)));
        assert_eq!(
            out.error.unwrap().to_string(),
            format!("unknown client message type {t}")
        );
        assert_eq!(
            out.to_server,
            cat(&[&handshake_to_server(), &key_event(true, 0x61)])
        );
    }
}

#[test]
fn unknown_qemu_submessage_or_audio_operation_is_refused() {
    let out = messages(false, &[255, 2, 0, 0], b"");
    assert_eq!(out.error, Some(RfbError::UnknownQemuMessage(2)));
    let out = messages(false, &[255, 1, 0, 3], b"");
    assert_eq!(out.error, Some(RfbError::UnknownQemuAudioOperation(3)));
}

#[test]
fn messages_sent_before_server_init_are_forwarded_after_client_init() {
    let steps = vec![
        Server(V38.to_vec()),
        Browser(V38.to_vec()),
        Server(vec![1, 1]),
        Browser(vec![1]),
        Server(OK.to_vec()),
        Browser(cat(&[&[0], &update_request(), &key_event(true, 0x62)])),
        Server(server_init(800, 600, "plc")),
    ];
    let out = run(&config(Auth::Typed, true), &steps);
    assert_eq!(
        out.to_server,
        cat(&[&handshake_to_server(), &update_request()])
    );
    assert_eq!(out.dropped, 1);
}
