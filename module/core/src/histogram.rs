//! A fixed-size log-linear histogram for latency-like values (wait and hold
//! times): constant memory, O(1) record, percentiles within 1/8 (12.5%) of the
//! true value, exact maximum.

/// Linear sub-buckets per power of two.
const SUB: usize = 8;
const SUB_BITS: u32 = 3;
/// Values below this are exact (one bucket each).
const EXACT: u64 = SUB as u64;
/// Enough groups for any u64.
const GROUPS: usize = 64 - SUB_BITS as usize;

/// A histogram of `u64` values.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: [u64; SUB + GROUPS * SUB],
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let top = 63 - v.leading_zeros(); // >= SUB_BITS
    let group = (top - SUB_BITS) as usize;
    let sub = ((v >> (top - SUB_BITS)) as usize) & (SUB - 1);
    SUB + group * SUB + sub
}

/// The smallest value that falls in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let group = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    ((SUB + sub) as u64) << group
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Histogram {
            counts: [0; SUB + GROUPS * SUB],
            total: 0,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0): the lower bound of the bucket
    /// holding it, capped by the maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!((h.count(), h.max(), h.quantile(0.5)), (0, 0, 0));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [1, 2, 3, 4, 5] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(1.0), 5);
        assert_eq!(h.max(), 5);
    }

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut samples: Vec<u64> = (0..64)
            .flat_map(|s| {
                let p = 1u64 << s;
                [p - 1, p, p + 1, p.saturating_add(p / 2)]
            })
            .chain([u64::MAX])
            .collect();
        samples.sort_unstable();
        let mut last = 0;
        for v in samples {
            let b = bucket(v);
            assert!(b < SUB + GROUPS * SUB, "{v}");
            assert!(b >= last, "{v}");
            assert!(lower_bound(b) <= v, "{v}");
            if b + 1 < SUB + GROUPS * SUB {
                assert!(v < lower_bound(b + 1), "{v}");
            }
            last = b;
        }
    }

    proptest! {
        #[test]
        fn quantiles_are_within_an_eighth(mut values in proptest::collection::vec(1u64..10_000_000, 1..500), q in 0.01f64..1.0) {
            let mut h = Histogram::new();
            for &v in &values { h.record(v); }
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1];
            let got = h.quantile(q);
            prop_assert!(got <= exact, "got {} exact {}", got, exact);
            prop_assert!(got as f64 >= exact as f64 * (1.0 - 1.0 / SUB as f64) - 1.0, "got {} exact {}", got, exact);
            prop_assert_eq!(h.max(), *values.last().unwrap());
        }
    }
}
