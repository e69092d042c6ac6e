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
//!   server restarted from an AOF rewritten while no lock was held) larger than
//!   tokens issued before, as long as its clock is ahead of the clock that
//!   issued them. With at most 2^10 = 1024 grants per millisecond per node
//!   (Redis serves a few hundred commands per millisecond), tokens issued at
//!   wall time `t` are below `(t + 1) << 10`, so any node whose clock reads
//!   later than `t` issues larger ones.
//! * Tokens stay below 2^53 until the year 2248, so they are exact in Lua,
//!   JavaScript and JSON numbers (IEEE doubles): a fencing check written in
//!   any of them compares them correctly. Tokens accepted from outside
//!   (`RESTORE`, replication) are capped at [`MAX_TOKEN`] (2^62), and the wall
//!   term is capped there too, so every token fits in a signed 64-bit integer.

/// Bits of per-millisecond sequence space below the wall-clock term.
pub const WALL_SHIFT: u32 = 10;

/// The largest token accepted from outside (replication, RDB, RESTORE).
/// Issued tokens can exceed it only by the number of grants made after it
/// was seen, so every token fits in a signed 64-bit integer.
pub const MAX_TOKEN: u64 = 1 << 62;

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

    /// Issues the next token at wall time `now_ms` (unix milliseconds).
    pub fn issue(&mut self, now_ms: i64) -> u64 {
        let wall = wall_term(now_ms);
        let next = self.high_water.saturating_add(1).max(wall);
        self.high_water = next;
        next
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
        assert_eq!(c.issue(NOW), (NOW as u64) << WALL_SHIFT);
    }

    #[test]
    fn many_grants_in_one_millisecond_stay_increasing() {
        let mut c = TokenClock::new();
        let a = c.issue(NOW);
        let b = c.issue(NOW);
        assert_eq!(b, a + 1);
    }

    #[test]
    fn a_backward_clock_step_never_lowers_tokens() {
        let mut c = TokenClock::new();
        let a = c.issue(NOW);
        let b = c.issue(NOW - 3_600_000);
        assert!(b > a);
    }

    #[test]
    fn observed_tokens_raise_the_high_water() {
        let mut c = TokenClock::new();
        c.observe(((NOW + 10_000) as u64) << WALL_SHIFT);
        assert!(c.issue(NOW) > ((NOW + 10_000) as u64) << WALL_SHIFT);
    }

    #[test]
    fn a_node_that_lost_the_tail_still_issues_larger_tokens_later() {
        // The old primary issued tokens up to time NOW; a promoted replica that
        // never saw them issues at any later millisecond.
        let mut old = TokenClock::new();
        let mut lost = 0;
        for _ in 0..1000 {
            lost = old.issue(NOW);
        }
        let mut promoted = TokenClock::new();
        assert!(promoted.issue(NOW + 1) > lost);
    }

    #[test]
    fn tokens_are_exact_doubles_for_two_centuries() {
        let year_2200_ms = 7_258_118_400_000i64;
        let mut c = TokenClock::new();
        let t = c.issue(year_2200_ms);
        assert!(t < 1 << 53, "{t}");
        assert_eq!(t as f64 as u64, t);
        assert_eq!((t + 1) as f64 as u64, t + 1);
    }

    #[test]
    fn tokens_fit_in_i64() {
        let mut c = TokenClock::new();
        c.observe(MAX_TOKEN);
        assert!(c.issue(i64::MAX) <= i64::MAX as u64);
        assert!(c.issue(-5) > MAX_TOKEN);
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
                        let t = c.issue(now);
                        prop_assert!(t > last_issued);
                        prop_assert!(t > seen_max);
                        prop_assert!(t <= i64::MAX as u64);
                        last_issued = t;
                    }
                    _ => {
                        let o = observed % MAX_TOKEN;
                        c.observe(o);
                        seen_max = seen_max.max(o);
                    }
                }
            }
        }
    }
}
