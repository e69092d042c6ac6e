//! A rate limit for log lines that a client can cause on every command (a
//! policy's audit denials and failures): at most a few lines a second reach
//! the log, the rest are counted and reported by the next line let through.
//! The log is written synchronously on the main thread; INFO counts every
//! event anyway.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Admits at most `per_window` lines per `window_ms`.
#[derive(Debug)]
pub struct Throttle {
    per_window: u32,
    window_ms: i64,
    window_start: AtomicI64,
    admitted: AtomicU32,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(per_window: u32, window_ms: i64) -> Self {
        Throttle {
            per_window,
            window_ms,
            window_start: AtomicI64::new(i64::MIN),
            admitted: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// A line wants out at `now_ms`: `Some(n)` lets it through, `n` being
    /// the lines suppressed since the last one let through; `None` drops
    /// it (and counts it).
    pub fn admit(&self, now_ms: i64) -> Option<u64> {
        let start = self.window_start.load(Relaxed);
        // A new window when this one is over, or the clock went back.
        if now_ms < start || now_ms.saturating_sub(start) >= self.window_ms {
            self.window_start.store(now_ms, Relaxed);
            self.admitted.store(0, Relaxed);
        }
        if self.admitted.load(Relaxed) < self.per_window {
            self.admitted.fetch_add(1, Relaxed);
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_per_window_and_reports_the_rest() {
        let t = Throttle::new(3, 1000);
        let first: Vec<_> = (0..5).map(|i| t.admit(10_000 + i)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // Still the same window.
        assert_eq!(t.admit(10_999), None);
        // The next window: the first line reports the three dropped.
        assert_eq!(t.admit(11_000), Some(3));
        assert_eq!(t.admit(11_001), Some(0));
        assert_eq!(t.admit(11_002), Some(0));
        assert_eq!(t.admit(11_003), None);
        // A clock that steps back opens a new window too.
        assert_eq!(t.admit(5_000), Some(1));
    }
}
