//! What each simulated edge of `--data` sends, derived from (edge, seq) alone,
//! so that the sync can tell for every point it receives which record it was
//! and whether its value and quality came back unchanged.
//!
//! An edge has `tags` tags of a few kinds (temperature, pressure, speed, …),
//! sampled once a second in rounds: record `seq` (from 1) is tag
//! `(seq - 1) % tags` of round `(seq - 1) / tags`, sampled at
//! `start_ms + round × 1000`. Values move as real process values do (slow
//! sines with a little noise, a counter, a pump that runs and stops), rounded
//! to the decimals a PLC would give; about one sample in `bad_every` (997 by
//! default) is a timeout, without a value.

use drawbridge_proto::TagName;
use drawbridge_proto::data::{BadReason, Quality, Record, RecordBody};
use std::collections::HashMap;

/// One kind of tag: its name prefix and how its value moves.
#[derive(Clone, Copy)]
enum Kind {
    Temperature,
    Pressure,
    Speed,
    Current,
    Level,
    Counter,
    Running,
}

const KINDS: [(&str, Kind); 7] = [
    ("temperature", Kind::Temperature),
    ("pressure", Kind::Pressure),
    ("speed", Kind::Speed),
    ("current", Kind::Current),
    ("level", Kind::Level),
    ("counter", Kind::Counter),
    ("running", Kind::Running),
];

/// Milliseconds between two rounds of samples.
pub const ROUND_MS: i64 = 1000;

/// The tags and the clock every simulated edge of one run shares.
pub struct Plan {
    tags: Vec<TagName>,
    index: HashMap<String, usize>,
    start_ms: i64,
    bad_every: u64,
}

/// A cheap, well-mixed hash of three numbers (splitmix64's finaliser).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

impl Plan {
    /// `tags` tags per edge (1 or more); the first round is sampled at
    /// `start_ms`; about one sample in `bad_every` is a timeout (0: none).
    pub fn new(tags: usize, start_ms: i64, bad_every: u64) -> Plan {
        let tags: Vec<TagName> = (0..tags.max(1))
            .map(|i| {
                let (name, _) = KINDS[i % KINDS.len()];
                TagName::try_from(format!("{name}.{:02}", i / KINDS.len()))
                    .expect("tag names of the plan are valid")
            })
            .collect();
        let index = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str().to_string(), i))
            .collect();
        Plan {
            tags,
            index,
            start_ms,
            bad_every,
        }
    }

    pub fn tags(&self) -> usize {
        self.tags.len()
    }

    /// Record `seq` (from 1) of edge `edge`.
    pub fn record(&self, edge: usize, seq: u64) -> Record {
        let (tag, round) = self.split(seq);
        let (value, quality) = self.sample(edge, seq);
        Record {
            seq,
            time_ms: self.start_ms + round as i64 * ROUND_MS,
            tag: self.tags[tag].clone(),
            body: RecordBody::Point { value, quality },
        }
    }

    /// The seq of the record of `tag` sampled at `time_ms` (None: no record of the plan).
    pub fn locate(&self, tag: &str, time_ms: i64) -> Option<u64> {
        let i = *self.index.get(tag)?;
        let since = time_ms.checked_sub(self.start_ms)?;
        if since < 0 || since % ROUND_MS != 0 {
            return None;
        }
        let round = u64::try_from(since / ROUND_MS).ok()?;
        round
            .checked_mul(self.tags.len() as u64)?
            .checked_add(i as u64 + 1)
    }

    /// (tag index, round) of `seq`.
    fn split(&self, seq: u64) -> (usize, u64) {
        let n = self.tags.len() as u64;
        let k = seq.saturating_sub(1);
        ((k % n) as usize, k / n)
    }

    /// The value and quality record `seq` of edge `edge` carries.
    pub fn sample(&self, edge: usize, seq: u64) -> (Option<f64>, Quality) {
        let (tag, round) = self.split(seq);
        let h = mix(edge as u64, tag as u64, round);
        if self.bad_every > 0 && h.is_multiple_of(self.bad_every) {
            return (
                None,
                Quality::Bad {
                    reason: BadReason::Timeout,
                },
            );
        }
        let noise = (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5; // -0.5..0.5
        let phase = (edge * 31 + tag * 7) as f64;
        let t = round as f64;
        let wave = |period: f64| ((t / period) * std::f64::consts::TAU + phase).sin();
        let v = match KINDS[tag % KINDS.len()].1 {
            Kind::Temperature => round_to(55.0 + 20.0 * wave(3600.0) + 0.2 * noise, 2),
            Kind::Pressure => round_to(6.0 + 1.5 * wave(600.0) + 0.05 * noise, 3),
            Kind::Speed => (1450.0 + 40.0 * wave(900.0) + 4.0 * noise).round(),
            Kind::Current => round_to(12.0 + 3.0 * wave(300.0) + 0.4 * noise, 1),
            Kind::Level => round_to(50.0 + 45.0 * wave(7200.0), 1),
            Kind::Counter => (round * 3 + edge as u64) as f64,
            Kind::Running => f64::from(u8::from(!(round / 300 + tag as u64).is_multiple_of(4))),
        };
        (Some(v), Quality::Good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_is_found_again_from_its_tag_and_time() {
        let p = Plan::new(20, 1_700_000_000_000, 997);
        for seq in [1, 2, 19, 20, 21, 40, 41, 12_345, 1_000_000] {
            let r = p.record(3, seq);
            assert_eq!(p.locate(r.tag.as_str(), r.time_ms), Some(seq), "{seq}");
        }
        assert_eq!(p.locate("temperature.00", 1_700_000_000_001), None);
        assert_eq!(p.locate("temperature.00", 1_699_999_999_000), None);
        assert_eq!(p.locate("nonsense", 1_700_000_000_000), None);
    }

    #[test]
    fn values_are_plausible_and_reproducible() {
        let p = Plan::new(14, 0, 997);
        let mut bad = 0;
        for seq in 1..=20_000 {
            let (v, q) = p.sample(1, seq);
            assert_eq!((v, q), p.sample(1, seq));
            match v {
                Some(v) => assert!(v.is_finite() && (0.0..=100_000.0).contains(&v), "{v}"),
                None => {
                    assert_ne!(q, Quality::Good);
                    bad += 1;
                }
            }
        }
        // About one in 997.
        assert!((5..=60).contains(&bad), "{bad}");
        // Distinct tag names, distinct edges' values differ.
        let names: std::collections::HashSet<_> = (1..=14)
            .map(|s| p.record(0, s).tag.as_str().to_string())
            .collect();
        assert_eq!(names.len(), 14);
        assert_ne!(p.sample(0, 1).0, p.sample(1, 1).0);
        let good = Plan::new(14, 0, 0);
        assert!((1..=20_000).all(|seq| good.sample(1, seq).1 == Quality::Good));
    }
}
