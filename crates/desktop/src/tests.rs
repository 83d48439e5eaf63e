//! Tests of the whole bridge: every scenario is fed whole, one byte at a
//! time and in random chunks, and must come out the same every time.

use crate::handshake::NO_REASON;
use crate::vnc_auth;
use crate::{Auth, Bridge, Config, Desktop, RfbError};

mod filter;
mod fuzz;
mod handshake;

/// What a side sends, in the order the bytes arrive at the bridge.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Server(Vec<u8>),
    Browser(Vec<u8>),
}
use Step::{Browser, Server};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub to_server: Vec<u8>,
    pub to_browser: Vec<u8>,
    pub error: Option<RfbError>,
    pub desktop: Option<Desktop>,
    pub dropped: u64,
}

/// Tiny xorshift: the tests need no randomness crate.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Up to `max - 1` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// How the bytes of one step are cut into calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Split {
    Whole,
    Bytes,
    Random(u64),
}

/// `pass`: server bytes go to the browser as they are whenever the bridge
/// says they may ([`Bridge::passes_server_bytes`]), as the server's loop
/// sends them.
pub(crate) fn run_split(config: &Config, steps: &[Step], split: Split, pass: bool) -> Outcome {
    let mut bridge = Bridge::new(config.clone());
    let mut rng = Rng::new(match split {
        Split::Random(seed) => seed,
        _ => 1,
    });
    let mut out = Outcome {
        to_server: Vec::new(),
        to_browser: Vec::new(),
        error: None,
        desktop: None,
        dropped: 0,
    };
    'steps: for step in steps {
        let (bytes, to_server) = match step {
            Server(b) => (b, true),
            Browser(b) => (b, false),
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = match split {
                Split::Whole => rest.len(),
                Split::Bytes => 1,
                Split::Random(_) => 1 + rng.below(rest.len().min(40)),
            };
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let result = if to_server && pass && bridge.passes_server_bytes() {
                out.to_browser.extend_from_slice(chunk);
                Ok(())
            } else if to_server {
                bridge.from_server(chunk)
            } else {
                bridge.from_browser(chunk)
            };
            out.to_server.extend(bridge.take_to_server());
            out.to_browser.extend(bridge.take_to_browser());
            if let Err(e) = result {
                // Once failed, it stays failed.
                assert_eq!(bridge.from_server(b"x"), Err(RfbError::Finished));
                assert_eq!(bridge.from_browser(b"x"), Err(RfbError::Finished));
                out.error = Some(e);
                break 'steps;
            }
        }
    }
    out.to_server.extend(bridge.take_to_server());
    out.to_browser.extend(bridge.take_to_browser());
    out.desktop = bridge.desktop().cloned();
    out.dropped = bridge.dropped_inputs();
    out
}

/// Runs the steps whole, byte by byte and in several random cuttings, checks
/// that all agree, and returns the outcome.
pub(crate) fn run(config: &Config, steps: &[Step]) -> Outcome {
    let whole = run_split(config, steps, Split::Whole, false);
    let bytes = run_split(config, steps, Split::Bytes, false);
    assert_eq!(whole, bytes, "whole vs byte by byte");
    for seed in 1..=6 {
        let random = run_split(config, steps, Split::Random(seed), false);
        assert_eq!(whole, random, "whole vs random chunks (seed {seed})");
        let passed = run_split(config, steps, Split::Random(seed), true);
        assert_eq!(whole, passed, "whole vs passed through (seed {seed})");
    }
    whole
}

pub(crate) fn config(auth: Auth, view_only: bool) -> Config {
    Config { auth, view_only }
}

pub(crate) fn open() -> Config {
    config(Auth::Typed, false)
}

pub(crate) fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(crate) const V33: &[u8] = b"RFB 003.003\n";
pub(crate) const V37: &[u8] = b"RFB 003.007\n";
pub(crate) const V38: &[u8] = b"RFB 003.008\n";
pub(crate) const OK: &[u8] = &[0, 0, 0, 0];
pub(crate) const CHALLENGE: [u8; 16] = *b"0123456789abcdef";

pub(crate) fn server_init(width: u16, height: u16, name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    b.extend(be32(name.len() as u32));
    b.extend_from_slice(name.as_bytes());
    b
}

/// A complete RFB 3.8 handshake with security type None, followed by
/// `browser` messages and `server` bytes.
pub(crate) fn after_handshake(browser: &[u8], server: &[u8]) -> Vec<Step> {
    vec![
        Server(V38.to_vec()),
        Browser(V38.to_vec()),
        Server(vec![1, 1]),
        Browser(vec![1]),
        Server(OK.to_vec()),
        Browser(vec![0]),
        Server(server_init(800, 600, "plc")),
        Browser(browser.to_vec()),
        Server(server.to_vec()),
    ]
}

/// What the bridge sends the VNC server during that handshake.
pub(crate) fn handshake_to_server() -> Vec<u8> {
    cat(&[V38, &[1], &[1]])
}

/// What the bridge sends the browser during that handshake.
pub(crate) fn handshake_to_browser() -> Vec<u8> {
    cat(&[V38, &[1, 1], OK, &server_init(800, 600, "plc")])
}

#[test]
fn bridge_greets_the_browser_with_rfb_3_8_at_once() {
    let mut bridge = Bridge::new(open());
    assert_eq!(bridge.take_to_browser(), V38);
    assert!(bridge.take_to_server().is_empty());
    assert_eq!(bridge.desktop(), None);
}

#[test]
fn stored_password_is_not_in_debug_output() {
    let config = config(Auth::Stored("hunter22".into()), false);
    assert!(!format!("{config:?}").contains("hunter22"));
    let bridge = Bridge::new(config);
    assert!(!format!("{bridge:?}").contains("hunter22"));
}

#[test]
fn stored_password_answers_the_challenge_and_browser_sees_none() {
    let cfg = config(Auth::Stored("s3cret".into()), false);
    let response = vnc_auth::response(b"s3cret", &CHALLENGE);
    let out = run(
        &cfg,
        &[
            Server(V38.to_vec()),
            Browser(V38.to_vec()),
            Server(vec![1, 2]),
            Browser(vec![1]),
            Server(CHALLENGE.to_vec()),
            Server(OK.to_vec()),
            Browser(vec![0]),
            Server(server_init(1024, 768, "hmi")),
        ],
    );
    assert_eq!(out.error, None);
    assert_eq!(out.to_server, cat(&[V38, &[2], &response, &[1]]));
    assert_eq!(
        out.to_browser,
        cat(&[V38, &[1, 1], OK, &server_init(1024, 768, "hmi")])
    );
    assert_eq!(
        out.desktop,
        Some(Desktop {
            width: 1024,
            height: 768,
            name: "hmi".into()
        })
    );
}

#[test]
fn server_bytes_pass_untouched_only_after_the_handshake_with_nothing_waiting() {
    let mut bridge = Bridge::new(open());
    assert!(!bridge.passes_server_bytes(), "the greeting waits");
    let _ = bridge.take_to_browser();
    assert!(!bridge.passes_server_bytes(), "the handshake is not done");
    for step in after_handshake(&[], &[]) {
        match step {
            Server(b) => bridge.from_server(&b).unwrap(),
            Browser(b) => bridge.from_browser(&b).unwrap(),
        }
    }
    assert!(
        !bridge.passes_server_bytes(),
        "ServerInit waits for the browser"
    );
    let _ = bridge.take_to_browser();
    assert!(bridge.passes_server_bytes());
    // A message the browser may not send (an unknown type) fails the bridge.
    assert!(bridge.from_browser(&[0xEE]).is_err());
    assert!(
        !bridge.passes_server_bytes(),
        "a failed bridge passes nothing"
    );
}

#[test]
fn bridge_can_move_between_threads() {
    fn send<T: Send + 'static>() {}
    send::<Bridge>();
    send::<RfbError>();
}
