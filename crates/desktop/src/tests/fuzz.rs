//! Property-style tests: random, truncated and corrupted input never makes
//! the bridge panic, and how the bytes are cut never changes what it does.

use super::filter::every_message;
use super::*;

fn random_config(rng: &mut Rng) -> Config {
    let auth = match rng.below(3) {
        0 => Auth::Typed,
        1 => Auth::Stored(String::new()),
        _ => Auth::Stored("pw".into()),
    };
    config(auth, rng.below(2) == 0)
}

/// A plausible handshake for either side, as steps.
fn plausible_steps(rng: &mut Rng) -> Vec<Step> {
    let version: &[u8] = [V33, V37, V38, b"RFB 003.889\n"][rng.below(4)];
    let security = match (version == V33, rng.below(3)) {
        (true, 0) => be32(1),
        (true, _) => be32(2),
        (false, 0) => vec![1, 1],
        (false, 1) => vec![1, 2],
        (false, _) => vec![2, 2, 1],
    };
    let browser_choice = vec![1 + rng.below(2) as u8];
    let mut steps = vec![
        Server(version.to_vec()),
        Browser(V38.to_vec()),
        Server(security),
        Browser(browser_choice),
        Server(CHALLENGE.to_vec()),
        Browser(b"RESPONSE-16-BYTE".to_vec()),
        Server(OK.to_vec()),
        Browser(vec![0]),
        Server(server_init(640, 480, "fuzz")),
    ];
    let messages = every_message();
    let mut browser = Vec::new();
    for _ in 0..rng.below(12) {
        browser.extend_from_slice(&messages[rng.below(messages.len())].0);
    }
    steps.push(Browser(browser));
    steps.push(Server(rng.bytes(100)));
    steps
}

/// Damages the steps: truncates, flips bytes, inserts garbage, drops steps.
fn corrupt(rng: &mut Rng, steps: &mut Vec<Step>) {
    for _ in 0..1 + rng.below(3) {
        if steps.is_empty() {
            return;
        }
        let i = rng.below(steps.len());
        let bytes = match &mut steps[i] {
            Server(b) | Browser(b) => b,
        };
        match rng.below(5) {
            0 => bytes.truncate(rng.below(bytes.len() + 1)),
            1 if !bytes.is_empty() => {
                let j = rng.below(bytes.len());
                bytes[j] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(bytes.len() + 1);
                let junk = rng.bytes(20);
                bytes.splice(at..at, junk);
            }
            3 => {
                steps.remove(i);
            }
            _ => steps.truncate(i),
        }
    }
}

#[test]
fn random_bytes_on_both_sides_never_panic_and_splits_do_not_matter() {
    let mut rng = Rng::new(42);
    for _ in 0..300 {
        let cfg = random_config(&mut rng);
        let mut steps = Vec::new();
        for _ in 0..rng.below(6) {
            let bytes = rng.bytes(64);
            steps.push(if rng.below(2) == 0 {
                Server(bytes)
            } else {
                Browser(bytes)
            });
        }
        run(&cfg, &steps);
    }
}

#[test]
fn corrupted_handshakes_and_messages_never_panic_and_splits_do_not_matter() {
    let mut rng = Rng::new(7);
    for round in 0..600 {
        let cfg = random_config(&mut rng);
        let mut steps = plausible_steps(&mut rng);
        if round % 4 != 0 {
            corrupt(&mut rng, &mut steps);
        }
        run(&cfg, &steps);
    }
}

#[test]
fn random_message_streams_are_forwarded_or_dropped_whole() {
    let messages = every_message();
    let mut rng = Rng::new(99);
    for round in 0..100 {
        let view_only = round % 2 == 1;
        let mut sent = Vec::new();
        let mut kept = Vec::new();
        let mut inputs = 0;
        for _ in 0..rng.below(40) {
            let (m, input) = &messages[rng.below(messages.len())];
            sent.extend_from_slice(m);
            if view_only && *input {
                inputs += 1;
            } else {
                kept.extend_from_slice(m);
            }
        }
        let out = run(
            &config(Auth::Typed, view_only),
            &after_handshake(&sent, b""),
        );
        assert_eq!(out.error, None);
        assert_eq!(out.to_server, cat(&[&handshake_to_server(), &kept]));
        assert_eq!(out.dropped, inputs);
    }
}

#[test]
fn random_server_bytes_after_the_handshake_pass_through_unchanged() {
    let mut rng = Rng::new(5);
    for _ in 0..50 {
        let picture = rng.bytes(3000);
        let out = run(&open(), &after_handshake(b"", &picture));
        assert_eq!(out.error, None);
        assert_eq!(out.to_browser, cat(&[&handshake_to_browser(), &picture]));
    }
}
