//! Stored credentials injected: the TLS-only Connection Request, the Client
//! Info PDU rebuilt (however its bytes are cut, its PER length crossing 0x80
//! either way), NLA refused in words, and every limit and malformed packet.

use super::super::tests::{
    CHAIN, IO, confirm, connection_request, feed_cut, request_with, send_data,
};
use super::super::*;
use super::*;

/// What IronRDP's web client sets: mouse, Ctrl+Alt+Del off, Unicode, logon
/// notify, Windows key, max shell, no audio.
const FLAGS: u32 = 0x004B_0173;

fn creds(domain: &str, username: &str, password: &str) -> RdpCredentials {
    RdpCredentials {
        domain: domain.into(),
        username: username.into(),
        password: password.into(),
    }
}

/// A Client Info PDU with these strings and `extra` as its extended info.
fn info_pdu(flags: u32, strings: [&str; 5], extra: &[u8]) -> Vec<u8> {
    let mut d = vec![0x40, 0, 0, 0];
    d.extend_from_slice(&0x0409u32.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    let enc: Vec<Vec<u8>> = strings.iter().map(|s| utf16le(s)).collect();
    for e in &enc {
        d.extend_from_slice(&(e.len() as u16).to_le_bytes());
    }
    for e in &enc {
        d.extend_from_slice(e);
        d.extend_from_slice(&[0, 0]);
    }
    d.extend_from_slice(extra);
    send_data(IO, &d)
}

/// What a Client Info PDU says: flags, the five strings, the extended info.
#[derive(Debug, PartialEq, Eq)]
struct Info {
    flags: u32,
    strings: Vec<String>,
    extra: Vec<u8>,
}

/// Reads a Client Info PDU the way a server does, checking every length.
fn parse(pdu: &[u8]) -> Info {
    assert_eq!(pdu[0], 3);
    assert_eq!(
        usize::from(u16::from_be_bytes([pdu[2], pdu[3]])),
        pdu.len(),
        "TPKT length"
    );
    assert_eq!(
        &pdu[4..13],
        &send_data(IO, b"")[4..13],
        "X.224 and MCS header"
    );
    let (per, off) = if pdu[13] < 0x80 {
        (usize::from(pdu[13]), 14)
    } else {
        (usize::from(pdu[13] & 0x3F) << 8 | usize::from(pdu[14]), 15)
    };
    assert_eq!(pdu.len() - off, per, "PER length");
    let d = &pdu[off..];
    assert_eq!(&d[..4], &[0x40, 0, 0, 0]);
    let i = &d[4..];
    assert_eq!(&i[..4], &0x0409u32.to_le_bytes(), "code page kept");
    let flags = u32::from_le_bytes(i[4..8].try_into().unwrap());
    let mut at = 18;
    let mut strings = Vec::new();
    for k in 0..5 {
        let cb = usize::from(u16::from_le_bytes([i[8 + 2 * k], i[9 + 2 * k]]));
        let units: Vec<u16> = i[at..at + cb]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        strings.push(String::from_utf16(&units).unwrap());
        assert_eq!(&i[at + cb..at + cb + 2], &[0, 0], "terminator");
        at += cb + 2;
    }
    Info {
        flags,
        strings,
        extra: i[at..].to_vec(),
    }
}

const EXTRA: &[u8] = b"\x02\x00\x1a\x00extended-info:client-address+time-zone";

/// A bridge that injects `c`, in the relay with TLS; answers it and all the
/// browser was sent.
fn injecting(c: RdpCredentials) -> (RdpBridge, Vec<u8>) {
    let mut b = RdpBridge::new(RdpConfig::default());
    b.inject(c).unwrap();
    assert!(b.injecting());
    b.from_browser(&request_with(connection_request(0x0B), "n"))
        .unwrap();
    b.connected().unwrap();
    let cr = b.take_to_server();
    let mut want = connection_request(0x0B);
    let n = want.len();
    want[n - 4..].copy_from_slice(&PROTOCOL_SSL.to_le_bytes());
    assert_eq!(cr, want, "only the requested protocols change: TLS only");
    b.from_server(&confirm(2, PROTOCOL_SSL)).unwrap();
    b.tls_established(vec![CHAIN.to_vec()], "10.0.0.5:3389".into())
        .unwrap();
    let seen = b.take_to_browser().bytes;
    (b, seen)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_stored_credentials_replace_the_placeholders_however_the_pdu_is_cut() {
    let stored = creds("PLANT", "operator", "s3cret-Pässwörd");
    let info = info_pdu(FLAGS, ["", "placeholder", "placeholder", "", "C:\\"], EXTRA);
    for cut in 0..=info.len() {
        let (mut b, mut seen) = injecting(stored.clone());
        let out = feed_cut(&mut b, &info, &[cut]).unwrap();
        let got = parse(&out);
        assert_eq!(
            got,
            Info {
                flags: FLAGS | INFO_AUTOLOGON,
                strings: vec![
                    "PLANT".into(),
                    "operator".into(),
                    "s3cret-Pässwörd".into(),
                    "".into(),
                    "C:\\".into()
                ],
                extra: EXTRA.to_vec(),
            },
            "cut at {cut}"
        );
        assert!(b.autologon_set());
        // What follows passes as it is; a second Client Info is not touched.
        let again = feed_cut(&mut b, &info, &[3]).unwrap();
        assert_eq!(again, info);
        // The server's answers go to the browser; the password never does.
        b.from_server(b"\x03\x00\x00\x08abcd").unwrap();
        seen.extend(b.take_to_browser().bytes);
        assert!(!contains(&seen, &utf16le(&stored.password)));
        assert!(!contains(&seen, stored.password.as_bytes()));
    }
}

#[test]
fn the_per_length_crosses_0x80_either_way() {
    // Small placeholders (one-byte PER length), long stored strings (two).
    let small = info_pdu(FLAGS, ["", "u", "p", "", ""], b"");
    assert!(small[13] < 0x80);
    let long = "x".repeat(MAX_UNITS);
    let big_creds = creds(&long, &long, &long);
    let (mut b, _) = injecting(big_creds);
    let out = feed_cut(&mut b, &small, &[]).unwrap();
    assert!(out[13] & 0x80 != 0, "two-byte PER length");
    assert_eq!(parse(&out).strings[..3], [long.clone(), long.clone(), long]);
    // Long placeholders (two bytes), short stored strings (one).
    let pad = "y".repeat(100);
    let big = info_pdu(FLAGS, ["", &pad, &pad, "", ""], b"");
    assert!(big[13] & 0x80 != 0);
    let (mut b, _) = injecting(creds("", "a", "b"));
    let out = feed_cut(&mut b, &big, &[]).unwrap();
    assert!(out[13] < 0x80, "one-byte PER length");
    assert_eq!(parse(&out).strings, ["", "a", "b", "", ""]);
    // Every size around the boundary round-trips.
    for n in 0..80 {
        let pw = "z".repeat(n);
        let (mut b, _) = injecting(creds("", "u", &pw));
        let out = feed_cut(&mut b, &small, &[]).unwrap();
        let got = parse(&out);
        assert_eq!(got.strings[2], pw, "{n}");
        assert_eq!(got.flags, FLAGS | INFO_AUTOLOGON);
    }
}

#[test]
fn a_server_that_requires_nla_is_refused_in_words() {
    let mut b = RdpBridge::new(RdpConfig::default());
    b.inject(creds("", "u", "p")).unwrap();
    b.from_browser(&request_with(connection_request(0x0B), "n"))
        .unwrap();
    b.connected().unwrap();
    b.take_to_server();
    let e = b.from_server(&confirm(3, 5)).unwrap_err();
    assert_eq!(e, RdpError::NlaRequired);
    assert_eq!(
        e.to_string(),
        "this RDP server requires NLA; stored credentials cannot be injected, type them instead"
    );
    assert_eq!(e.http_status(), 502);
    // The client still gets the server's refusal.
    let out = b.take_to_browser().bytes;
    let pdu = RDCleanPathPdu::from_der(&out).unwrap();
    assert_eq!(
        pdu.error.unwrap().error_code,
        ironrdp_rdcleanpath::NEGOTIATION_ERROR_CODE
    );
    // Another failure keeps its own words.
    let mut b = RdpBridge::new(RdpConfig::default());
    b.inject(creds("", "u", "p")).unwrap();
    b.from_browser(&request_with(connection_request(0x0B), "n"))
        .unwrap();
    b.connected().unwrap();
    assert_eq!(
        b.from_server(&confirm(3, 2)),
        Err(RdpError::NegotiationFailed(2))
    );
    // A server choosing NLA although only TLS was offered.
    for p in [PROTOCOL_HYBRID, PROTOCOL_HYBRID_EX] {
        let mut b = RdpBridge::new(RdpConfig::default());
        b.inject(creds("", "u", "p")).unwrap();
        b.from_browser(&request_with(connection_request(0x0B), "n"))
            .unwrap();
        b.connected().unwrap();
        assert_eq!(b.from_server(&confirm(2, p)), Err(RdpError::NlaRequired));
    }
}

#[test]
fn a_request_without_tls_cannot_take_stored_credentials() {
    let no_neg = {
        let mut cr = vec![3, 0, 0, 11, 6, 0xE0, 0, 0, 0, 0, 0];
        cr.truncate(11);
        cr
    };
    for cr in [
        connection_request(PROTOCOL_HYBRID),
        connection_request(0),
        no_neg,
    ] {
        let mut b = RdpBridge::new(RdpConfig::default());
        b.inject(creds("", "u", "p")).unwrap();
        b.from_browser(&request_with(cr.clone(), "n")).unwrap();
        assert_eq!(b.connected(), Err(RdpError::NoTlsOffered), "{cr:02x?}");
        assert!(b.take_to_server().is_empty());
        assert_eq!(b.state(), &RdpState::Failed);
    }
    // Restricted admin and Remote Credential Guard need CredSSP: cleared.
    let mut cr = connection_request(0x0B);
    let n = cr.len();
    cr[n - 7] = 0x03;
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&request_with(cr, "n")).unwrap();
    b.inject(creds("", "u", "p")).unwrap();
    b.connected().unwrap();
    let out = b.take_to_server();
    assert_eq!(out[n - 7], 0);
    assert_eq!(&out[n - 4..], &PROTOCOL_SSL.to_le_bytes());
}

#[test]
fn oversized_credentials_and_late_injection_are_refused() {
    let long = "x".repeat(MAX_UNITS + 1);
    for c in [
        creds(&long, "u", "p"),
        creds("", &long, "p"),
        creds("", "u", &long),
        creds("", "u", "nul\0inside"),
        // 128 characters outside the BMP are 256 UTF-16 units.
        creds("", "u", &"😀".repeat(128)),
    ] {
        let mut b = RdpBridge::new(RdpConfig::default());
        assert_eq!(b.inject(c), Err(RdpError::BadCredentials));
        assert_eq!(b.state(), &RdpState::Failed);
    }
    assert!(creds("", "u", &"😀".repeat(127)).fits());
    let mut b = RdpBridge::new(RdpConfig::default());
    b.from_browser(&request_with(connection_request(0x0B), "n"))
        .unwrap();
    b.connected().unwrap();
    assert_eq!(
        b.inject(creds("", "u", "p")),
        Err(RdpError::OutOfTurn("gateway"))
    );
    // A Client Info PDU over the limit is not rebuilt.
    let (mut b, _) = injecting(creds("", "u", "p"));
    let huge = info_pdu(FLAGS, ["", "u", "p", "", ""], &vec![7; MAX_CLIENT_INFO]);
    assert_eq!(
        feed_cut(&mut b, &huge, &[]),
        Err(RdpError::ClientPduTooLong {
            len: huge.len(),
            limit: MAX_CLIENT_INFO
        })
    );
}

#[test]
fn malformed_client_infos_are_refused_not_passed() {
    let good = info_pdu(FLAGS, ["d", "user", "pass", "", ""], EXTRA);
    let off = if good[13] < 0x80 { 14 } else { 15 };
    let mut cases: Vec<(Vec<u8>, RdpError)> = Vec::new();
    // Not Unicode.
    cases.push((
        info_pdu(FLAGS & !0x10, ["", "u", "p", "", ""], b""),
        RdpError::Unsupported("a Client Info PDU without Unicode"),
    ));
    // Encrypted (standard RDP security).
    let mut enc = good.clone();
    enc[off] |= 0x08;
    cases.push((enc, RdpError::BadClientPdu));
    // A cb* that runs past the end, or past the limit.
    for k in 0..5 {
        for cb in [0xFFFEu16, 600, 200] {
            let mut p = good.clone();
            let at = off + 4 + 8 + 2 * k;
            p[at..at + 2].copy_from_slice(&cb.to_le_bytes());
            cases.push((p, RdpError::BadClientPdu));
        }
    }
    // A PER length that does not match the TPKT (and a fragmented one).
    let mut p = good.clone();
    p[off - 1] -= 1;
    cases.push((p, RdpError::BadClientPdu));
    let mut p = good.clone();
    p[13] = 0xC0;
    assert_eq!(
        rewrite_client_info(&p, 15, &creds("", "u", "p")),
        Err(RdpError::BadClientPdu)
    );
    // Every truncation of the packet before its strings end (its TPKT and
    // PER lengths fixed up).
    for cut in 0..(good.len() - EXTRA.len() - off) {
        let p = send_data(IO, &good[off..off + cut]);
        if cut < 2 {
            // Too short to be a Client Info: passed (no password in it).
            let (mut b, _) = injecting(creds("", "u", "p"));
            assert_eq!(feed_cut(&mut b, &p, &[]), Ok(p));
            continue;
        }
        cases.push((p, RdpError::BadClientPdu));
    }
    for (p, want) in cases {
        let (mut b, _) = injecting(creds("", "u", "p"));
        assert_eq!(feed_cut(&mut b, &p, &[]), Err(want.clone()), "{p:02x?}");
        assert_eq!(b.state(), &RdpState::Failed);
    }
}

#[test]
fn mangled_client_infos_never_panic() {
    let good = info_pdu(FLAGS, ["dom", "user", "pass", "sh", "dir"], EXTRA);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5000 {
        let mut p = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = 13 + (next() as usize) % (p.len() - 13);
            p[i] = next() as u8;
        }
        if next() % 3 == 0 {
            let n = 13 + (next() as usize) % (p.len() - 13);
            p.truncate(n);
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let (mut b, _) = injecting(creds("D", "U", "stored-password"));
        if let Ok(out) = feed_cut(&mut b, &p, &[]) {
            // Rebuilt or passed, what went out frames as one TPKT.
            assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), out.len());
        }
    }
}

#[test]
fn credentials_never_show_in_debug_output() {
    let c = creds("PLANT", "operator", "hunter2");
    assert_eq!(format!("{c:?}"), "RdpCredentials(<redacted>)");
    let mut b = RdpBridge::new(RdpConfig::default());
    b.inject(c).unwrap();
    let d = format!("{b:?}");
    assert!(!d.contains("hunter2") && !d.contains("operator"), "{d}");
}
