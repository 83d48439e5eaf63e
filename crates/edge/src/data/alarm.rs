//! A tag's alarm rule, evaluated on the edge: sans-IO, one evaluator per tag,
//! fed every sample with its time.
//!
//! - `limits { high, low, deadband, min_duration_ms }`: the condition is
//!   `value > high` or `value < low`. It must hold in every good sample from the
//!   first one where it held (at `t0`) to one at `t ≥ t0 + min_duration_ms`;
//!   the alarm is **raised at `t`**, the time of the sample that completed the
//!   minimum duration, with that sample's value (with `min_duration_ms: 0`, at
//!   the first sample over the limit). It **returns** at the first good sample
//!   back inside the limits by more than the deadband (`value < high − deadband`
//!   and `value > low + deadband`), with that sample's time and value; no
//!   minimum duration applies to the return.
//! - `state { alarm_when, min_duration_ms }`: the condition is
//!   `(value ≠ 0) == alarm_when`, raised the same way; it returns at the first
//!   good sample where it no longer holds.
//!
//! A bad sample (no value) neither raises nor returns: an active alarm stays
//! active, and a condition on its way to the minimum duration starts again
//! (nobody saw it hold meanwhile). The times are the edge's sampling times, so
//! an alarm delivered after the control plane was away carries the times it
//! happened at.

use drawbridge_proto::data::{AlarmRule, AlarmTransition, Quality};

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Normal,
    /// The condition has held in every good sample since `since_ms`.
    Pending {
        since_ms: i64,
    },
    Active,
}

/// One tag's alarm.
#[derive(Debug, Clone)]
pub struct Alarm {
    rule: AlarmRule,
    state: State,
}

/// What an evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub time_ms: i64,
    pub transition: AlarmTransition,
    pub value: f64,
}

impl Alarm {
    /// A fresh evaluator; `active` when the alarm was raised before a restart
    /// and has not returned (so it is not raised twice).
    pub fn new(rule: AlarmRule, active: bool) -> Alarm {
        Alarm {
            rule,
            state: if active { State::Active } else { State::Normal },
        }
    }

    pub fn rule(&self) -> AlarmRule {
        self.rule
    }

    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    fn holds(&self, v: f64) -> bool {
        match self.rule {
            AlarmRule::Limits { high, low, .. } => {
                high.is_some_and(|h| v > h) || low.is_some_and(|l| v < l)
            }
            AlarmRule::State { alarm_when, .. } => (v != 0.0) == alarm_when,
        }
    }

    fn back(&self, v: f64) -> bool {
        match self.rule {
            AlarmRule::Limits {
                high,
                low,
                deadband,
                ..
            } => high.is_none_or(|h| v < h - deadband) && low.is_none_or(|l| v > l + deadband),
            AlarmRule::State { .. } => !self.holds(v),
        }
    }

    fn min_duration(&self) -> i64 {
        i64::from(match self.rule {
            AlarmRule::Limits {
                min_duration_ms, ..
            }
            | AlarmRule::State {
                min_duration_ms, ..
            } => min_duration_ms,
        })
    }

    /// Feeds one sample.
    pub fn offer(&mut self, time_ms: i64, value: Option<f64>, quality: Quality) -> Option<Change> {
        let v = match (value, quality) {
            (Some(v), Quality::Good) => v,
            _ => {
                if matches!(self.state, State::Pending { .. }) {
                    self.state = State::Normal;
                }
                return None;
            }
        };
        let change = |transition| {
            Some(Change {
                time_ms,
                transition,
                value: v,
            })
        };
        match self.state {
            State::Normal | State::Pending { .. } if !self.holds(v) => {
                self.state = State::Normal;
                None
            }
            State::Normal | State::Pending { .. } => {
                let since_ms = match self.state {
                    State::Pending { since_ms } => since_ms,
                    _ => time_ms,
                };
                if time_ms.saturating_sub(since_ms) >= self.min_duration() {
                    self.state = State::Active;
                    change(AlarmTransition::Raised)
                } else {
                    self.state = State::Pending { since_ms };
                    None
                }
            }
            State::Active if self.back(v) => {
                self.state = State::Normal;
                change(AlarmTransition::Returned)
            }
            State::Active => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlarmTransition::*;
    use drawbridge_proto::data::BadReason;

    const G: Quality = Quality::Good;
    const BAD: Quality = Quality::Bad {
        reason: BadReason::Timeout,
    };

    fn limits(high: Option<f64>, low: Option<f64>, deadband: f64, min: u32) -> AlarmRule {
        AlarmRule::Limits {
            high,
            low,
            deadband,
            min_duration_ms: min,
        }
    }

    /// Feeds samples `(time, value)` (None: a bad read) and lists the changes.
    fn run(a: &mut Alarm, samples: &[(i64, Option<f64>)]) -> Vec<(i64, AlarmTransition, f64)> {
        samples
            .iter()
            .filter_map(|(t, v)| a.offer(*t, *v, if v.is_some() { G } else { BAD }))
            .map(|c| (c.time_ms, c.transition, c.value))
            .collect()
    }

    #[test]
    fn a_high_limit_raises_at_once_and_returns_past_the_deadband() {
        let mut a = Alarm::new(limits(Some(80.0), None, 2.0, 0), false);
        let got = run(
            &mut a,
            &[
                (0, Some(79.0)),
                (1, Some(80.0)), // not above
                (2, Some(80.5)), // raised
                (3, Some(90.0)),
                (4, Some(79.0)), // inside but within the deadband
                (5, Some(78.0)), // exactly the deadband: not more
                (6, Some(77.9)), // returned
                (7, Some(81.0)), // raised again
            ],
        );
        assert_eq!(
            got,
            vec![(2, Raised, 80.5), (6, Returned, 77.9), (7, Raised, 81.0)]
        );
    }

    #[test]
    fn a_low_limit_works_the_other_way() {
        let mut a = Alarm::new(limits(Some(100.0), Some(10.0), 1.0, 0), false);
        let got = run(&mut a, &[(0, Some(9.0)), (1, Some(10.5)), (2, Some(11.5))]);
        assert_eq!(got, vec![(0, Raised, 9.0), (2, Returned, 11.5)]);
    }

    #[test]
    fn the_minimum_duration_raises_at_the_sample_that_completes_it() {
        let mut a = Alarm::new(limits(Some(50.0), None, 0.0, 1000), false);
        let got = run(
            &mut a,
            &[
                (1000, Some(60.0)), // starts holding
                (1500, Some(61.0)),
                (1999, Some(62.0)), // 999 ms: not yet
                (2000, Some(63.0)), // 1000 ms: raised, at this time with this value
                (2500, Some(64.0)),
            ],
        );
        assert_eq!(got, vec![(2000, Raised, 63.0)]);
    }

    #[test]
    fn a_condition_that_stops_holding_before_the_minimum_duration_raises_nothing() {
        let mut a = Alarm::new(limits(Some(50.0), None, 0.0, 1000), false);
        let got = run(
            &mut a,
            &[
                (0, Some(60.0)),
                (900, Some(40.0)), // back: the clock starts again
                (1000, Some(60.0)),
                (1900, Some(60.0)),
                (2000, Some(60.0)), // 1000 ms since 1000
            ],
        );
        assert_eq!(got, vec![(2000, Raised, 60.0)]);
    }

    #[test]
    fn bad_quality_neither_raises_nor_returns_and_restarts_a_pending_duration() {
        let mut a = Alarm::new(limits(Some(50.0), None, 0.0, 1000), false);
        let got = run(
            &mut a,
            &[
                (0, Some(60.0)),
                (500, None), // unseen: the duration starts again at the next good sample
                (1000, Some(60.0)),
                (1500, Some(60.0)),
                (2000, Some(60.0)), // raised: 1000 ms since 1000
                (2500, None),       // stays active
                (3000, None),
                (3500, Some(10.0)), // returned
            ],
        );
        assert_eq!(got, vec![(2000, Raised, 60.0), (3500, Returned, 10.0)]);
        // Bad quality alone never raises.
        let mut b = Alarm::new(limits(Some(50.0), None, 0.0, 0), false);
        assert!(run(&mut b, &[(0, None), (1, None)]).is_empty());
    }

    #[test]
    fn a_state_alarm_follows_alarm_when_with_its_minimum_duration() {
        let rule = AlarmRule::State {
            alarm_when: false,
            min_duration_ms: 200,
        };
        let mut a = Alarm::new(rule, false);
        let got = run(
            &mut a,
            &[
                (0, Some(1.0)),
                (100, Some(0.0)), // starts holding
                (200, Some(0.0)),
                (300, Some(0.0)), // 200 ms: raised
                (400, Some(1.0)), // returned
            ],
        );
        assert_eq!(got, vec![(300, Raised, 0.0), (400, Returned, 1.0)]);
        let mut t = Alarm::new(
            AlarmRule::State {
                alarm_when: true,
                min_duration_ms: 0,
            },
            false,
        );
        assert_eq!(run(&mut t, &[(5, Some(1.0))]), vec![(5, Raised, 1.0)]);
    }

    #[test]
    fn an_alarm_active_before_a_restart_is_not_raised_again() {
        let mut a = Alarm::new(limits(Some(50.0), None, 0.0, 0), true);
        let got = run(&mut a, &[(0, Some(60.0)), (1, Some(40.0))]);
        assert_eq!(got, vec![(1, Returned, 40.0)]);
    }
}
