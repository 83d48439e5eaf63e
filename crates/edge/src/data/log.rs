//! Whether a sample goes to the historian (a tag's [`LogMode`]): sans-IO.
//!
//! - `off`: never.
//! - `on_change { deadband }`: the first sample; then whenever the quality
//!   differs from the last logged one (good ↔ bad, or another bad reason); or,
//!   both good, when the value is more than `deadband` away from the last
//!   logged value (so `deadband: 0` logs every change). Comparing with the last
//!   *logged* value, not the last sampled one, means a slow drift is logged once
//!   it has moved past the deadband in all.
//! - `every { period_ms }`: the first sample in each period of wall-clock time
//!   (periods aligned on multiples of `period_ms` since the Unix epoch), so
//!   polling jitter neither doubles nor skips a period.

use drawbridge_proto::data::{LogMode, Quality};

/// What a tag last logged.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    last: Option<Logged>,
}

#[derive(Debug, Clone, Copy)]
struct Logged {
    time_ms: i64,
    value: Option<f64>,
    quality: Quality,
}

impl LogState {
    /// Decides for one sample and, when it is logged, remembers it.
    pub fn offer(
        &mut self,
        mode: LogMode,
        time_ms: i64,
        value: Option<f64>,
        quality: Quality,
    ) -> bool {
        let log = match (mode, self.last) {
            (LogMode::Off, _) => false,
            (_, None) => true,
            (LogMode::OnChange { deadband }, Some(last)) => {
                last.quality != quality
                    || match (last.value, value) {
                        (Some(a), Some(b)) => (b - a).abs() > deadband,
                        (None, None) => false,
                        _ => true,
                    }
            }
            (LogMode::Every { period_ms }, Some(last)) => {
                let p = i64::from(period_ms.max(1));
                time_ms.div_euclid(p) != last.time_ms.div_euclid(p)
            }
        };
        if log {
            self.last = Some(Logged {
                time_ms,
                value,
                quality,
            });
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::data::BadReason;

    const TIMEOUT: Quality = Quality::Bad {
        reason: BadReason::Timeout,
    };
    const REFUSED: Quality = Quality::Bad {
        reason: BadReason::Refused,
    };

    fn run(mode: LogMode, samples: &[(i64, Option<f64>, Quality)]) -> Vec<i64> {
        let mut s = LogState::default();
        samples
            .iter()
            .filter(|(t, v, q)| s.offer(mode, *t, *v, *q))
            .map(|(t, _, _)| *t)
            .collect()
    }

    #[test]
    fn off_logs_nothing() {
        let g = Quality::Good;
        assert!(run(LogMode::Off, &[(0, Some(1.0), g), (1, Some(2.0), TIMEOUT)]).is_empty());
    }

    #[test]
    fn on_change_logs_moves_past_the_deadband_from_the_last_logged_value() {
        let g = Quality::Good;
        let mode = LogMode::OnChange { deadband: 1.0 };
        let logged = run(
            mode,
            &[
                (0, Some(10.0), g),  // first
                (1, Some(10.5), g),  // within
                (2, Some(11.0), g),  // exactly the deadband: not more
                (3, Some(11.01), g), // more than 1 from 10
                (4, Some(10.5), g),  // within 1 of 11.01
                (5, Some(9.9), g),   // 1.11 below 11.01
            ],
        );
        assert_eq!(logged, vec![0, 3, 5]);
        let zero = run(
            LogMode::OnChange { deadband: 0.0 },
            &[(0, Some(1.0), g), (1, Some(1.0), g), (2, Some(1.000001), g)],
        );
        assert_eq!(zero, vec![0, 2]);
    }

    #[test]
    fn on_change_logs_every_quality_change() {
        let g = Quality::Good;
        let mode = LogMode::OnChange { deadband: 100.0 };
        let logged = run(
            mode,
            &[
                (0, Some(1.0), g),
                (1, None, TIMEOUT),
                (2, None, TIMEOUT),
                (3, None, REFUSED),
                (4, Some(1.0), g),
                (5, Some(2.0), g),
            ],
        );
        assert_eq!(logged, vec![0, 1, 3, 4]);
    }

    #[test]
    fn every_logs_once_per_aligned_period_despite_jitter() {
        let g = Quality::Good;
        let mode = LogMode::Every { period_ms: 1000 };
        // Polled about every 500 ms with jitter: one point per second.
        let times = [
            10_120, 10_590, 11_003, 11_499, 11_998, 12_001, 12_600, 14_100,
        ];
        let samples: Vec<_> = times.iter().map(|t| (*t, Some(1.0), g)).collect();
        assert_eq!(run(mode, &samples), vec![10_120, 11_003, 12_001, 14_100]);
        // Bad samples are logged on the same schedule.
        assert_eq!(
            run(
                mode,
                &[
                    (0, None, TIMEOUT),
                    (999, None, TIMEOUT),
                    (1000, None, TIMEOUT)
                ]
            ),
            vec![0, 1000]
        );
    }
}
