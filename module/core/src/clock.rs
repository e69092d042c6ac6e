//! The fencing-token clock.
//!
//! `next = max(high_water + 1, now_ms << WALL_SHIFT)`.
//!
//! * `high_water` is the largest token this node has issued or seen: it is
//!   raised by every grant, by every replicated grant and by every lease that is
//!   loaded (RDB, AOF, `RESTORE`, slot migration), and it is persisted as RDB aux
//!   data. So a node never issues a token at or below any token it knows of,
//!   whatever its clock does.
//! * The wall-clock term makes tokens issued by a node that knows nothing of
//!   the last grants (a replica promoted after the old primary lost its tail, a
//!   server restarted from an AOF that lost its last writes under
//!   `appendfsync everysec`) larger than
//!   tokens issued before, as long as its clock is ahead of the clock that
//!   issued them. With at most 2^10 = 1024 grants per millisecond per node
//!   (Redis serves a few hundred commands per millisecond), tokens issued at
//!   wall time `t` are below `(t + 1) << 10`, so any node whose clock reads
//!   later than `t` issues larger ones.
//! * Tokens stay below 2^53 until the year 2248, so they are exact in Lua,
//!   JavaScript and JSON numbers (IEEE doubles): a fencing check written in
//!   any of them compares them correctly.
//! * Every token, issued or accepted (replication, RDB, AOF, `RESTORE`), lies
//!   in `1..=`[`MAX_TOKEN`] (`i64::MAX`): it fits the integer reply, and
//!   whatever one node issues every other node (and its own loader) accepts.
//!   A clock whose high-water mark reached the maximum issues nothing more
//!   ([`TokenClock::issue`] returns `None`, the command fails): only a forged
//!   lease (`RESTORE` of a crafted payload) can get there, since wall time
//!   reaches it only around the year 287,000.

/// Bits of per-millisecond sequence space below the wall-clock term.
pub const WALL_SHIFT: u32 = 10;

/// The largest token: issued, replicated, persisted or restored.
pub const MAX_TOKEN: u64 = i64::MAX as u64;

/// Issues fencing tokens; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenClock {
    high_water: u64,
}

impl TokenClock {
    /// A clock that has seen no token.
    pub const fn new() -> Self {
        TokenClock { high_water: 0 }
    }

    /// The largest token issued or observed so far.
    pub fn high_water(&self) -> u64 {
        self.high_water
    }

    /// Issues the next token at wall time `now_ms` (unix milliseconds);
    /// `None` once the high-water mark is [`MAX_TOKEN`] (no larger token
    /// exists).
    pub fn issue(&mut self, now_ms: i64) -> Option<u64> {
        if self.high_water >= MAX_TOKEN {
            return None;
        }
        let next = (self.high_water + 1).max(wall_term(now_ms));
        self.high_water = next;
        Some(next)
    }

    /// Records a token issued elsewhere (a replicated or loaded grant) or a
    /// persisted high-water mark.
    pub fn observe(&mut self, token: u64) {
        self.high_water = self.high_water.max(token);
    }
}

/// `now_ms << WALL_SHIFT`, clamped to `[0, MAX_TOKEN]`.
fn wall_term(now_ms: i64) -> u64 {
    let ms = now_ms.clamp(0, (MAX_TOKEN >> WALL_SHIFT) as i64) as u64;
    ms << WALL_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn first_token_carries_the_wall_clock() {
        let mut c = TokenClock::new();
        assert_eq!(c.issue(NOW).unwrap(), (NOW as u64) << WALL_SHIFT);
    }

    #[test]
    fn many_grants_in_one_millisecond_stay_increasing() {
        let mut c = TokenClock::new();
        let a = c.issue(NOW).unwrap();
        let b = c.issue(NOW).unwrap();
        assert_eq!(b, a + 1);
    }

    #[test]
    fn a_backward_clock_step_never_lowers_tokens() {
        let mut c = TokenClock::new();
        let a = c.issue(NOW).unwrap();
        let b = c.issue(NOW - 3_600_000).unwrap();
        assert!(b > a);
    }

    #[test]
    fn observed_tokens_raise_the_high_water() {
        let mut c = TokenClock::new();
        c.observe(((NOW + 10_000) as u64) << WALL_SHIFT);
        assert!(c.issue(NOW).unwrap() > ((NOW + 10_000) as u64) << WALL_SHIFT);
    }

    #[test]
    fn a_node_that_lost_the_tail_still_issues_larger_tokens_later() {
        // The old primary issued tokens up to time NOW; a promoted replica that
        // never saw them issues at any later millisecond.
        let mut old = TokenClock::new();
        let mut lost = 0;
        for _ in 0..1000 {
            lost = old.issue(NOW).unwrap();
        }
        let mut promoted = TokenClock::new();
        assert!(promoted.issue(NOW + 1).unwrap() > lost);
    }

    #[test]
    fn tokens_are_exact_doubles_for_two_centuries() {
        let year_2200_ms = 7_258_118_400_000i64;
        let mut c = TokenClock::new();
        let t = c.issue(year_2200_ms).unwrap();
        assert!(t < 1 << 53, "{t}");
        assert_eq!(t as f64 as u64, t);
        assert_eq!((t + 1) as f64 as u64, t + 1);
    }

    #[test]
    fn tokens_fit_in_i64_and_stop_at_the_maximum() {
        let mut c = TokenClock::new();
        assert!(c.issue(i64::MAX).unwrap() <= MAX_TOKEN);
        c.observe(MAX_TOKEN - 2);
        assert_eq!(c.issue(-5), Some(MAX_TOKEN - 1));
        assert_eq!(c.issue(i64::MAX), Some(MAX_TOKEN));
        assert_eq!(c.issue(i64::MAX), None);
        assert_eq!(c.high_water(), MAX_TOKEN);
    }

    proptest! {
        #[test]
        fn tokens_strictly_increase_whatever_the_clock_does(
            steps in proptest::collection::vec((-10_000_000i64..10_000_000, 0u8..3, 0u64..u64::MAX), 1..200)
        ) {
            let mut c = TokenClock::new();
            let mut now = NOW;
            let mut last_issued = 0u64;
            let mut seen_max = 0u64;
            for (jump, kind, observed) in steps {
                now = now.saturating_add(jump);
                match kind {
                    0 | 1 => {
                        match c.issue(now) {
                            Some(t) => {
                                prop_assert!(t > last_issued);
                                prop_assert!(t > seen_max);
                                prop_assert!(t <= MAX_TOKEN);
                                last_issued = t;
                            }
                            None => prop_assert_eq!(c.high_water(), MAX_TOKEN),
                        }
                    }
                    _ => {
                        let o = observed % (MAX_TOKEN + 1);
                        c.observe(o);
                        seen_max = seen_max.max(o);
                    }
                }
            }
        }
    }
}
