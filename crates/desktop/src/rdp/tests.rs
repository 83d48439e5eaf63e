//! The RDP bridge without sockets: the RDCleanPath request and response, the
//! X.224 confirm, the client→server framing (autologon, view-only) and every
//! limit, each for every way the bytes can be cut.

use super::*;

pub(super) const IO: u16 = 1003;

pub(super) fn connection_request(protocols: u32) -> Vec<u8> {
    let cookie = b"Cookie: mstshash=user\r\n";
    let len = 11 + cookie.len() + 8;
    let mut cr = vec![3, 0, 0, len as u8, (len - 5) as u8, 0xE0, 0, 0, 0, 0, 0];
    cr.extend_from_slice(cookie);
    cr.extend_from_slice(&[1, 0, 8, 0]);
    cr.extend_from_slice(&protocols.to_le_bytes());
    cr
}

pub(super) fn request_with(cr: Vec<u8>, auth: &str) -> Vec<u8> {
    RDCleanPathPdu::new_request(cr, "desktop".into(), auth.into(), None)
        .unwrap()
        .to_der()
        .unwrap()
}

fn request() -> Vec<u8> {
    request_with(connection_request(0x0B), "nonce-1")
}

/// What xrdp answers: `03 00 00 13 0e d0 0000 1234 00 | 02 01 0800 <selected>`.
pub(super) fn confirm(kind: u8, value: u32) -> Vec<u8> {
    let mut cc = vec![
        3, 0, 0, 0x13, 0x0E, 0xD0, 0, 0, 0x12, 0x34, 0, kind, 1, 8, 0,
    ];
    cc.extend_from_slice(&value.to_le_bytes());
    cc
}

pub(super) const CHAIN: &[u8] = b"0\x82leaf-certificate-der";

/// A bridge in the relay, the server having selected `selected`.
fn relaying(view_only: bool, selected: u32) -> RdpBridge {
    let mut b = RdpBridge::new(RdpConfig { view_only });
    b.from_browser(&request()).unwrap();
    b.connected().unwrap();
    assert_eq!(b.take_to_server(), connection_request(0x0B));
    b.from_server(&confirm(2, selected)).unwrap();
    assert!(b.wants_tls());
    b.tls_established(vec![CHAIN.to_vec()], "10.0.0.5:3389".into())
        .unwrap();
    let response = b.take_to_browser();
    assert_eq!(response.recorded(), b"", "the response is not recorded");
    b
}

/// A TPKT with an MCS Send Data Request on `channel` carrying `data`.
pub(super) fn send_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut mcs = vec![2, 0xF0, 0x80, 0x64, 0, 6];
    mcs.extend_from_slice(&channel.to_be_bytes());
    mcs.push(0x70);
    if data.len() < 0x80 {
        mcs.push(data.len() as u8);
    } else {
        mcs.extend_from_slice(&(0x8000 | data.len() as u16).to_be_bytes());
    }
    mcs.extend_from_slice(data);
    let len = 4 + mcs.len();
    let mut pdu = vec![3, 0];
    pdu.extend_from_slice(&(len as u16).to_be_bytes());
    pdu.extend(mcs);
    pdu
}

/// A Client Info PDU (security header with SEC_INFO_PKT, then TS_INFO_PACKET)
/// whose strings take `pad` bytes.
fn client_info_pdu(password: bool, pad: usize) -> Vec<u8> {
    let mut d = vec![0x40, 0, 0, 0];
    d.extend_from_slice(&0u32.to_le_bytes());
    d.extend_from_slice(&0x004B_0173u32.to_le_bytes());
    for cb in [0u16, 8, if password { 6 } else { 0 }, 0, 0] {
        d.extend_from_slice(&cb.to_le_bytes());
    }
    d.extend(std::iter::repeat_n(0x61, pad));
    send_data(IO, &d)
}

fn info_flags(pdu: &[u8]) -> u32 {
    let off = if pdu[13] & 0x80 == 0 { 14 } else { 15 } + 8;
    u32::from_le_bytes(pdu[off..off + 4].try_into().unwrap())
}

/// A slow-path Share Data PDU with pduType2 `t2`.
fn share_data(t2: u8) -> Vec<u8> {
    let mut d = vec![0, 0, 0x17, 0, 0xEF, 0x03];
    d.extend_from_slice(&0x0001_03EAu32.to_le_bytes());
    d.extend_from_slice(&[0, 1, 8, 0, t2, 0, 0, 0, 1, 0, 0, 0]);
    let len = d.len() as u16;
    d[0..2].copy_from_slice(&len.to_le_bytes());
    send_data(IO, &d)
}

/// A fast-path input PDU (one scancode event), 3-byte length form when `long`.
fn fast_path(long: bool) -> Vec<u8> {
    if long {
        vec![0x04, 0x80, 0x05, 0x00, 0x1E]
    } else {
        vec![0x04, 0x04, 0x00, 0x1E]
    }
}

/// Feeds `data` cut at `cuts` (sorted offsets) and answers what reached the
/// server, or the error.
pub(super) fn feed_cut(
    b: &mut RdpBridge,
    data: &[u8],
    cuts: &[usize],
) -> Result<Vec<u8>, RdpError> {
    let mut at = 0;
    let mut out = Vec::new();
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        b.from_browser(&data[at..c])?;
        out.extend(b.take_to_server());
        at = c;
    }
    Ok(out)
}

#[test]
fn the_request_is_read_however_it_is_cut() {
    let req = request();
    for cut in 0..=req.len() {
        let mut b = RdpBridge::new(RdpConfig::default());
        feed_cut(&mut b, &req, &[cut]).unwrap();
        assert_eq!(b.state(), &RdpState::Requested, "cut at {cut}");
        let r = b.request().unwrap();
        assert_eq!(r.proxy_auth, "nonce-1");
        assert_eq!(r.destination, "desktop");
        assert_eq!(r.requested_protocols, 0x0B);
        assert!(!format!("{r:?}").contains("nonce-1"), "redacted in Debug");
    }
    let mut b = RdpBridge::new(RdpConfig::default());
    for byte in &req {
        b.from_browser(std::slice::from_ref(byte)).unwrap();
    }
    assert_eq!(b.state(), &RdpState::Requested);
}

#[test]
fn a_request_longer_than_the_limit_is_refused_early() {
    // A SEQUENCE header announcing 20 KiB, then the right version.
    let mut b = RdpBridge::new(RdpConfig::default());
    let head = [0x30, 0x82, 0x50, 0x00, 0xA0, 0x04, 0x02, 0x02, 0x0D, 0x3E];
    assert_eq!(
        b.from_browser(&head),
        Err(RdpError::RequestTooLong { limit: MAX_REQUEST })
    );
    assert_eq!(b.from_browser(b"x"), Err(RdpError::Finished));
    // Bytes that never decode to a header are cut off at the limit too.
    let mut b = RdpBridge::new(RdpConfig::default());
    let mut r = Ok(());
    for _ in 0..=MAX_REQUEST / 1024 {
        r = b.from_browser(&[0x47; 1024]);
        if r.is_err() {
            break;
        }
    }
    assert!(r.is_err(), "{r:?}");
    assert_eq!(r.unwrap_err().http_status(), 400);
}

#[test]
fn a_request_of_exactly_the_limit_is_read() {
    let pad = "a".repeat(MAX_REQUEST - 200);
    let mut req = request_with(connection_request(1), &pad);
    let grow = MAX_REQUEST - req.len();
    req = request_with(connection_request(1), &"a".repeat(pad.len() + grow));
    assert_eq!(req.len(), MAX_REQUEST);
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&req).unwrap();
    assert_eq!(b.state(), &RdpState::Requested);
    let req = request_with(connection_request(1), &"a".repeat(pad.len() + grow + 1));
    let mut b = RdpBridge::new(RdpConfig::default());
    assert_eq!(
        b.from_browser(&req),
        Err(RdpError::RequestTooLong { limit: MAX_REQUEST })
    );
}

#[test]
fn other_first_messages_are_refused() {
    let mut b = RdpBridge::new(RdpConfig::default());
    assert_eq!(b.from_browser(&[0x00, 0x00]), Err(RdpError::NotRdCleanPath));

    let mut b = RdpBridge::new(RdpConfig::default());
    let mut two = request();
    two.push(0x30);
    assert_eq!(b.from_browser(&two), Err(RdpError::OutOfTurn("browser")));

    let vm = RDCleanPathPdu::new_vmconnect_request("d".into(), "a".into(), "pcb".into())
        .unwrap()
        .to_der()
        .unwrap();
    let mut b = RdpBridge::new(RdpConfig::default());
    assert_eq!(b.from_browser(&vm), Err(RdpError::Unsupported("VMConnect")));

    let pcb = RDCleanPathPdu::new_request(
        connection_request(1),
        "d".into(),
        "a".into(),
        Some("blob".into()),
    )
    .unwrap()
    .to_der()
    .unwrap();
    let mut b = RdpBridge::new(RdpConfig::default());
    assert_eq!(
        b.from_browser(&pcb),
        Err(RdpError::Unsupported("a preconnection blob"))
    );

    let response = RDCleanPathPdu::new_response("x".into(), confirm(2, 1), [vec![1]])
        .unwrap()
        .to_der()
        .unwrap();
    let mut b = RdpBridge::new(RdpConfig::default());
    assert!(matches!(
        b.from_browser(&response),
        Err(RdpError::BadRequest(_))
    ));

    for bad in [
        {
            let mut cr = connection_request(1);
            cr[3] += 1; // TPKT length off by one
            cr
        },
        {
            let mut cr = connection_request(1);
            cr[5] = 0xF0; // a data TPDU, not a connection request
            cr
        },
        vec![3, 0, 0, 4],
    ] {
        let mut b = RdpBridge::new(RdpConfig::default());
        assert_eq!(
            b.from_browser(&request_with(bad, "a")),
            Err(RdpError::BadConnectionRequest)
        );
    }
}

#[test]
fn the_confirm_is_read_however_it_is_cut_and_the_response_carries_it() {
    let cc = confirm(2, PROTOCOL_SSL);
    for cut in 0..=cc.len() {
        let mut b = RdpBridge::new(RdpConfig::default());
        b.from_browser(&request()).unwrap();
        assert_eq!(
            b.from_server(b"early"),
            Err(RdpError::OutOfTurn("RDP server"))
        );
        let mut b = RdpBridge::new(RdpConfig::default());
        b.from_browser(&request()).unwrap();
        b.connected().unwrap();
        b.take_to_server();
        b.from_server(&cc[..cut]).unwrap();
        assert!(!b.wants_tls() || cut == cc.len());
        b.from_server(&cc[cut..]).unwrap();
        assert!(b.wants_tls(), "cut at {cut}");
        assert_eq!(b.selected_protocol(), PROTOCOL_SSL);
    }
    let mut b = relaying(false, PROTOCOL_SSL);
    assert_eq!(b.state(), &RdpState::Relay);
    // The live response, as the client decodes it.
    let mut b2 = RdpBridge::new(RdpConfig::default());
    b2.from_browser(&request()).unwrap();
    b2.connected().unwrap();
    b2.from_server(&cc).unwrap();
    b2.tls_established(vec![CHAIN.to_vec(), b"ca".to_vec()], "10.0.0.5:3389".into())
        .unwrap();
    let out = b2.take_to_browser();
    assert_eq!(out.record_from, out.bytes.len());
    let pdu = RDCleanPathPdu::from_der(&out.bytes).unwrap();
    match pdu.into_message().unwrap() {
        RDCleanPathMessage::Response {
            x224_connection_response,
            server_cert_chain,
            server_addr,
        } => {
            assert_eq!(x224_connection_response.as_bytes(), cc);
            assert_eq!(server_cert_chain.len(), 2);
            assert_eq!(server_cert_chain[0].as_bytes(), CHAIN);
            assert_eq!(server_addr, "10.0.0.5:3389");
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(b2.replay_response(), out.bytes, "TLS only: replayed as is");
    // The server's stream passes untouched and is recorded.
    b.from_server(b"\x03\x00\x00\x08abcd").unwrap();
    let out = b.take_to_browser();
    assert_eq!(out.bytes, b"\x03\x00\x00\x08abcd");
    assert_eq!(out.recorded(), out.bytes);
}

#[test]
fn a_refused_negotiation_reaches_the_client_with_the_servers_confirm() {
    let cc = confirm(3, 5);
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&request()).unwrap();
    b.connected().unwrap();
    let e = b.from_server(&cc).unwrap_err();
    assert_eq!(e, RdpError::NegotiationFailed(5));
    assert!(e.to_string().contains("requires NLA"), "{e}");
    let out = b.take_to_browser();
    let pdu = RDCleanPathPdu::from_der(&out.bytes).unwrap();
    assert_eq!(
        pdu.error.as_ref().unwrap().error_code,
        ironrdp_rdcleanpath::NEGOTIATION_ERROR_CODE
    );
    assert_eq!(pdu.x224_connection_pdu.unwrap().as_bytes(), cc);
    assert_eq!(out.recorded(), b"");
    assert_eq!(b.from_server(b"x"), Err(RdpError::Finished));
}

#[test]
fn bad_or_unusable_confirms_are_refused() {
    let short = {
        let mut c = confirm(2, 1);
        c.truncate(11);
        c[3] = 11;
        c[4] = 6;
        c
    };
    let cases: Vec<(Vec<u8>, RdpError)> = vec![
        (confirm(2, PROTOCOL_RDP), RdpError::StandardSecurity),
        (short, RdpError::StandardSecurity),
        (confirm(2, 4), RdpError::UnsupportedProtocol(4)),
        (confirm(9, 1), RdpError::BadConfirm),
        (b"RFB 003.008\n".to_vec(), RdpError::BadConfirm),
        (vec![3, 0, 0, 5, 0], RdpError::BadConfirm),
        (
            vec![3, 0, 0x02, 0x01],
            RdpError::ConfirmTooLong { limit: MAX_CONFIRM },
        ),
        (
            [confirm(2, 1), b"more".to_vec()].concat(),
            RdpError::OutOfTurn("RDP server"),
        ),
        (
            {
                let mut c = confirm(2, 1);
                c[5] = 0xE0;
                c
            },
            RdpError::BadConfirm,
        ),
    ];
    for (cc, want) in cases {
        let mut b = RdpBridge::new(RdpConfig::default());
        b.from_browser(&request()).unwrap();
        b.connected().unwrap();
        assert_eq!(b.from_server(&cc), Err(want.clone()), "{cc:02x?}");
        assert_eq!(want.http_status(), 502);
        assert_eq!(b.state(), &RdpState::Failed);
        assert!(b.take_to_browser().bytes.is_empty());
    }
}

#[test]
fn steps_out_of_order_are_refused() {
    let mut b = RdpBridge::new(RdpConfig::default());
    assert_eq!(b.connected(), Err(RdpError::OutOfTurn("gateway")));
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&request()).unwrap();
    assert_eq!(
        b.tls_established(vec![], String::new()),
        Err(RdpError::OutOfTurn("gateway"))
    );
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&request()).unwrap();
    assert_eq!(b.from_browser(b"x"), Err(RdpError::OutOfTurn("browser")));
}

#[test]
fn the_client_info_gets_autologon_when_it_carries_a_password() {
    for pad in [16, 200] {
        let info = client_info_pdu(true, pad);
        assert_eq!(info_flags(&info) & INFO_AUTOLOGON, 0);
        for cut in 0..=info.len() {
            let mut b = relaying(false, PROTOCOL_SSL);
            let out = feed_cut(&mut b, &info, &[cut]).unwrap();
            assert_eq!(out.len(), info.len());
            assert_eq!(info_flags(&out), 0x004B_0173 | INFO_AUTOLOGON, "cut {cut}");
            assert!(b.autologon_set());
            let mut expect = info.clone();
            let off = if pad < 100 { 14 } else { 15 } + 8;
            expect[off] |= 8;
            assert_eq!(out, expect, "only the flag changes");
            // Only the first Client Info counts.
            let again = feed_cut(&mut b, &info, &[]).unwrap();
            assert_eq!(again, info);
        }
        let mut b = relaying(false, PROTOCOL_SSL);
        let none = client_info_pdu(false, pad);
        assert_eq!(feed_cut(&mut b, &none, &[]).unwrap(), none);
        assert!(!b.autologon_set());
    }
}

/// What a client sends after the Client Info: slow-path control PDUs, input
/// both ways, virtual channel data.
fn session_stream() -> (Vec<u8>, Vec<u8>, u64) {
    let control = share_data(0x14);
    let refresh = share_data(0x21);
    let slow_input = share_data(PDUTYPE2_INPUT);
    let clipboard = send_data(1004, b"\x08\x00\x00\x00\x03\x00\x00\x00clip");
    let parts: Vec<(Vec<u8>, bool)> = vec![
        (client_info_pdu(true, 200), true),
        (control.clone(), true),
        (fast_path(false), false),
        (slow_input, false),
        (fast_path(true), false),
        (refresh.clone(), true),
        (clipboard, false),
        (control, true),
    ];
    let all: Vec<u8> = parts.iter().flat_map(|(p, _)| p.clone()).collect();
    let mut kept: Vec<u8> = parts
        .iter()
        .filter(|(_, k)| *k)
        .flat_map(|(p, _)| p.clone())
        .collect();
    let off = 15 + 8;
    kept[off] |= 8;
    let dropped = parts.iter().filter(|(_, k)| !*k).count() as u64;
    (all, kept, dropped)
}

#[test]
fn view_only_drops_every_input_however_the_stream_is_cut() {
    let (all, kept, dropped) = session_stream();
    for cut in 0..=all.len() {
        let mut b = relaying(true, PROTOCOL_SSL);
        let out = feed_cut(&mut b, &all, &[cut]).unwrap();
        assert_eq!(out, kept, "cut at {cut}");
        assert_eq!(b.dropped_inputs(), dropped);
    }
    let mut b = relaying(true, PROTOCOL_SSL);
    let cuts: Vec<usize> = (1..all.len()).collect();
    assert_eq!(feed_cut(&mut b, &all, &cuts).unwrap(), kept);
    // Without view-only everything passes (with the autologon flag).
    let mut b = relaying(false, PROTOCOL_SSL);
    let out = feed_cut(&mut b, &all, &[]).unwrap();
    let mut expect = all.clone();
    expect[15 + 8] |= 8;
    assert_eq!(out, expect);
    assert_eq!(b.dropped_inputs(), 0);
}

#[test]
fn malformed_client_pdus_end_the_relay() {
    for bad in [
        vec![0x01, 0x02], // neither TPKT nor fast-path
        vec![3, 0, 0, 3], // a TPKT shorter than its header
        vec![0x04, 0x01], // a fast-path PDU shorter than its header
    ] {
        let mut b = relaying(false, PROTOCOL_SSL);
        assert_eq!(b.from_browser(&bad), Err(RdpError::BadClientPdu), "{bad:?}");
        assert_eq!(b.from_browser(b""), Err(RdpError::Finished));
    }
    // The largest PDUs the length fields allow are framed and passed.
    let mut b = relaying(false, PROTOCOL_SSL);
    let mut big = vec![0u8; MAX_PDU];
    big[..4].copy_from_slice(&[3, 0, 0xFF, 0xFF]);
    assert_eq!(feed_cut(&mut b, &big, &[5, 40000]).unwrap(), big);
    let mut fp = vec![0u8; 0x7FFF];
    fp[..3].copy_from_slice(&[0x04, 0xFF, 0xFF]);
    assert_eq!(feed_cut(&mut b, &fp, &[1, 2]).unwrap(), fp);
}

#[test]
fn nla_passes_credssp_unrecorded_and_replays_as_tls() {
    let mut b = relaying(false, PROTOCOL_HYBRID_EX);
    let replay = RDCleanPathPdu::from_der(b.replay_response()).unwrap();
    let cc = replay.x224_connection_pdu.unwrap();
    assert_eq!(cc.as_bytes()[15..19], PROTOCOL_SSL.to_le_bytes());
    // TSRequests both ways, then the Early User Authorization Result.
    let ts_short = [&[0x30u8, 0x05][..], b"hello"].concat();
    let ts_long = [&[0x30u8, 0x82, 0x01, 0x00][..], &[7u8; 256][..]].concat();
    let c2s = [ts_short.clone(), ts_long.clone()].concat();
    for cut in 0..=c2s.len() {
        let mut b = relaying(false, PROTOCOL_HYBRID);
        assert_eq!(feed_cut(&mut b, &c2s, &[cut]).unwrap(), c2s);
    }
    b.from_browser(&c2s).unwrap();
    assert_eq!(b.take_to_server(), c2s);
    b.from_server(b"\x30\x03abc").unwrap();
    b.from_server(b"\x00\x00\x00\x00").unwrap();
    let out = b.take_to_browser();
    assert_eq!(out.bytes.len(), 9);
    assert_eq!(out.recorded(), b"", "CredSSP is not recorded");
    // The MCS Connect Initial: from here on the server's stream is recorded.
    let ci = send_data(IO, b"connect-initial");
    b.from_server(b"late-credssp").unwrap();
    b.from_browser(&ci).unwrap();
    b.from_server(b"\x03\x00\x00\x08resp").unwrap();
    let out = b.take_to_browser();
    assert_eq!(out.recorded(), b"\x03\x00\x00\x08resp");
    assert_eq!(&out.bytes[..12], b"late-credssp");
    // Limits on CredSSP.
    let mut b = relaying(false, PROTOCOL_HYBRID);
    assert_eq!(
        b.from_browser(&[0x30, 0x83, 0x01, 0x00, 0x00]),
        Err(RdpError::ClientPduTooLong {
            len: 5 + 0x10000,
            limit: MAX_CREDSSP
        })
    );
    let mut b = relaying(false, PROTOCOL_HYBRID);
    assert_eq!(b.from_browser(&[0x30, 0x80]), Err(RdpError::BadClientPdu));
    let mut b = relaying(false, PROTOCOL_HYBRID);
    assert_eq!(b.from_browser(&[0x04, 0x04]), Err(RdpError::BadClientPdu));
}

#[test]
fn error_pdus_decode_as_the_client_reads_them() {
    let pdu = RDCleanPathPdu::from_der(&http_error_pdu(409)).unwrap();
    let e = pdu.error.unwrap();
    assert_eq!(e.error_code, ironrdp_rdcleanpath::GENERAL_ERROR_CODE);
    assert_eq!(e.http_status_code, Some(409));
    let pdu = RDCleanPathPdu::from_der(&tls_error_pdu(42)).unwrap();
    assert_eq!(pdu.error.unwrap().tls_alert_code, Some(42));
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let view_only = round % 2 == 0;
        let mut b = match round % 3 {
            0 => RdpBridge::new(RdpConfig { view_only }),
            1 => relaying(view_only, PROTOCOL_SSL),
            _ => relaying(view_only, PROTOCOL_HYBRID),
        };
        for _ in 0..(next() % 6) {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(f) = bytes.first_mut() {
                *f = [3, 0x30, 0x04, 0x30, *f][(next() % 5) as usize];
            }
            let _ = if next() % 2 == 0 {
                b.from_browser(&bytes)
            } else {
                b.from_server(&bytes)
            };
            b.take_to_server();
            b.take_to_browser();
        }
    }
}
