//! Write flow control: the high/low water marks of every write transport.
//!
//! The rules, from asyncio and the spec:
//! - defaults: high 64 KiB, low 16 KiB;
//! - only `high` given: `low = high / 4`; only `low` given: `high = 4 * low`;
//! - `low > high` or a negative limit is an error (`ValueError`);
//! - `pause_writing` once when the buffer goes *strictly over* `high`;
//! - `resume_writing` once when the buffer drains to `low` *or below*.

use crate::error::{Error, Result};

/// Default high-water mark (asyncio's).
pub const DEFAULT_HIGH: usize = 64 * 1024;

/// Compute `(high, low)` from optional arguments, with asyncio's defaults and
/// validation. Takes signed values so that a binding can pass what the user
/// gave and get asyncio's message for negative ones.
pub fn resolve_limits(high: Option<i64>, low: Option<i64>) -> Result<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => l.saturating_mul(4),
        (None, None) => DEFAULT_HIGH as i64,
    };
    let low = low.unwrap_or(high.div_euclid(4));
    if !(high >= low && low >= 0) {
        return Err(Error::invalid(format!("high ({high}) must be >= low ({low}) must be >= 0")));
    }
    Ok((high as usize, low as usize))
}

/// Water marks plus the paused flag of one transport.
#[derive(Debug, Clone)]
pub struct WriteFlow {
    high: usize,
    low: usize,
    paused: bool,
}

impl Default for WriteFlow {
    fn default() -> Self {
        let (high, low) = resolve_limits(None, None).expect("defaults are valid");
        WriteFlow { high, low, paused: false }
    }
}

impl WriteFlow {
    /// Set new limits (validated by [`resolve_limits`]).
    pub fn set_limits(&mut self, high: Option<i64>, low: Option<i64>) -> Result<()> {
        let (h, l) = resolve_limits(high, low)?;
        self.high = h;
        self.low = l;
        Ok(())
    }

    /// `(low, high)`, the order asyncio's `get_write_buffer_limits` returns.
    pub fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// Whether the protocol is currently paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// True exactly when `pause_writing` must be called now.
    pub fn should_pause(&mut self, size: usize) -> bool {
        if !self.paused && size > self.high {
            self.paused = true;
            true
        } else {
            false
        }
    }

    /// True exactly when `resume_writing` must be called now.
    pub fn should_resume(&mut self, size: usize) -> bool {
        if self.paused && size <= self.low {
            self.paused = false;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limits() {
        assert_eq!(resolve_limits(None, None).unwrap(), (65536, 16384));
        assert_eq!(resolve_limits(Some(1000), None).unwrap(), (1000, 250));
        assert_eq!(resolve_limits(None, Some(100)).unwrap(), (400, 100));
        assert_eq!(resolve_limits(Some(0), None).unwrap(), (0, 0));
        assert_eq!(resolve_limits(Some(10), Some(0)).unwrap(), (10, 0));
    }

    #[test]
    fn invalid_limits() {
        let e = resolve_limits(Some(1), Some(2)).unwrap_err();
        assert_eq!(e.to_string(), "high (1) must be >= low (2) must be >= 0");
        assert!(matches!(resolve_limits(Some(-1), None), Err(Error::InvalidArgument(_))));
        assert!(matches!(resolve_limits(None, Some(-1)), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn strictly_over_and_at_or_below() {
        let mut f = WriteFlow::default();
        f.set_limits(Some(100), Some(10)).unwrap();
        assert!(!f.should_pause(100), "equal to high does not pause");
        assert!(f.should_pause(101));
        assert!(!f.should_pause(500), "pause is called once");
        assert!(!f.should_resume(11));
        assert!(f.should_resume(10), "equal to low resumes");
        assert!(!f.should_resume(0), "resume is called once");
    }

    #[test]
    fn zero_limits() {
        let mut f = WriteFlow::default();
        f.set_limits(Some(0), None).unwrap();
        assert!(!f.should_pause(0));
        assert!(f.should_pause(1), "high=0 pauses whenever the buffer is non-empty");
        assert!(!f.should_resume(1));
        assert!(f.should_resume(0), "low=0 resumes only when empty");
    }

    #[test]
    fn messages_and_rounding_follow_python() {
        // Python's `-1 // 4` is -1, as `div_euclid`.
        let e = resolve_limits(Some(-1), None).unwrap_err();
        assert_eq!(e.to_string(), "high (-1) must be >= low (-1) must be >= 0");
        let e = resolve_limits(Some(8), Some(-2)).unwrap_err();
        assert_eq!(e.to_string(), "high (8) must be >= low (-2) must be >= 0");
        assert_eq!(resolve_limits(Some(3), None).unwrap(), (3, 0));
        assert_eq!(resolve_limits(Some(7), Some(7)).unwrap(), (7, 7), "low == high is allowed");
        assert_eq!(resolve_limits(None, Some(i64::MAX)).unwrap(), (i64::MAX as usize, i64::MAX as usize));
    }

    #[test]
    fn new_limits_keep_the_paused_state_and_bad_ones_change_nothing() {
        let mut f = WriteFlow::default();
        assert_eq!(f.limits(), (DEFAULT_HIGH / 4, DEFAULT_HIGH));
        assert!(!f.is_paused());
        assert!(!f.should_resume(0), "not paused: nothing to resume");
        assert!(f.should_pause(DEFAULT_HIGH + 1));
        assert!(f.set_limits(Some(10), Some(20)).is_err());
        assert_eq!(f.limits(), (DEFAULT_HIGH / 4, DEFAULT_HIGH), "unchanged after an error");
        f.set_limits(Some(1 << 20), None).unwrap();
        assert!(f.is_paused(), "raising the marks does not resume by itself");
        assert!(!f.should_pause(1 << 21), "already paused");
        assert!(!f.should_resume((1 << 18) + 1));
        assert!(f.should_resume(1 << 18), "resumes at the new low mark");
        assert!(!f.is_paused());
    }
}
