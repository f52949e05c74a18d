//! Adaptive scanning: a polling collector scans at its configured interval
//! while what it watches changes, and backs off while nothing does.
//!
//! Every scan that finds no change doubles the delay to the next one, up to
//! the configured maximum; a scan that finds a change returns to the
//! minimum at once. A quiet machine therefore pays for a scan every
//! `max` instead of every `min`, and a busy one loses no resolution. The
//! price is that the first change after a quiet spell is seen up to `max`
//! late, and a change that comes and goes within that delay is missed.
//!
//! Use: keep one [`AdaptiveInterval`] per collector run; after each scan
//! call [`AdaptiveInterval::after_scan`] with the number of changes it
//! reported and sleep until `scan_started + returned delay`.

use std::time::Duration;

/// The delay between two scans, between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveInterval {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl AdaptiveInterval {
    /// `max` below `min` means a fixed interval of `min`.
    pub fn new(min: Duration, max: Duration) -> AdaptiveInterval {
        AdaptiveInterval {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// From a collector's `scan_interval_ms` and `max_scan_interval_ms`.
    pub fn from_millis(min_ms: u64, max_ms: u64) -> AdaptiveInterval {
        let min = Duration::from_millis(min_ms.max(1));
        AdaptiveInterval::new(min, Duration::from_millis(max_ms))
    }

    /// The delay before the next scan.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Records what a scan found and returns the delay before the next one.
    pub fn after_scan(&mut self, changes: usize) -> Duration {
        self.current = if changes > 0 {
            self.min
        } else {
            self.current.saturating_mul(2).min(self.max)
        };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_scans_back_off_to_the_max_and_a_change_snaps_back() {
        let mut a = AdaptiveInterval::from_millis(1000, 5000);
        assert_eq!(a.current(), Duration::from_millis(1000));
        let quiet: Vec<u128> = (0..4).map(|_| a.after_scan(0).as_millis()).collect();
        assert_eq!(quiet, [2000, 4000, 5000, 5000]);
        assert_eq!(a.after_scan(3), Duration::from_millis(1000));
        assert_eq!(a.after_scan(0), Duration::from_millis(2000));
    }

    #[test]
    fn max_at_or_below_min_is_a_fixed_interval() {
        let mut a = AdaptiveInterval::from_millis(1000, 500);
        assert!((0..5).all(|_| a.after_scan(0) == Duration::from_millis(1000)));
    }
}
