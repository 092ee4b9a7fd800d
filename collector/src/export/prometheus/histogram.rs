//! The kernel's histograms as Prometheus histograms: classic buckets (a short default
//! set, or the fine grid with `--fine-buckets`) for every exposition, and native
//! (sparse, exponential) buckets for the protobuf exposition.
//!
//! Both are derived from the kernel's buckets by adding whole kernel buckets, never by
//! splitting one: a count is never moved across a bound it might not have been on
//! the other side of in the kernel, so nothing is invented.
//!
//! **Classic buckets** are a subset of the kernel's bounds, so they are exact:
//! - accept wait, delayed-ACK delay, Nagle hold (kernel: every power of two of
//!   microseconds split in 4, `collector_common::queue::wait_bucket`): by default
//!   `le` = 4^k µs for k = 3..=13, i.e. 64 µs, 256 µs, 1.024 ms, 4.096 ms,
//!   16.384 ms, 65.536 ms, 262.144 ms, 1.048576 s, 4.194304 s, 16.777216 s,
//!   67.108864 s, +Inf (12 buckets); with `--fine-buckets`, the bounds 2^k and
//!   3·2^(k-1) µs from 64 µs up (steps of x1.5 and x1.33, 44 buckets);
//! - accept queue depth (kernel: [2^i, 2^(i+1)) per bucket): by default `le` = 1, 7,
//!   31, 127, 511, 2047, 8191, 32767, +Inf (9 buckets); with `--fine-buckets`, every
//!   kernel bound (2^(i+1) - 1, 16 buckets).
//!
//! **Native buckets** use schema 0: bucket `j` holds (2^(j-1), 2^j]. No finer schema
//! fits the kernel's grids: schema s > 0 has boundaries at irrational multiples of
//! powers of two, which would cut every kernel bucket. Schema 0 is exact where its
//! boundaries fall on kernel bounds, and off by at most one kernel bucket elsewhere:
//! each kernel bucket is counted whole in the native bucket holding its upper bound
//! ([`native_index`]), so
//! - the kernel's first bucket is the zero bucket (threshold = its bound: depth 0-1,
//!   waits under 1 µs), exactly;
//! - depth: kernel bucket i >= 1 (depths 2^i ..= 2^(i+1) - 1) is native bucket i+1,
//!   (2^i, 2^(i+1)]: exact but for a depth of exactly 2^i, counted one bucket up;
//! - waits: the kernel's bounds are powers of two of *microseconds*, never powers of
//!   two of seconds (10^6 is not a power of two), so in each octave one kernel bucket
//!   straddles a native boundary 2^j s; it is counted in the bucket above, whose
//!   values may then lie up to 20% below its lower bound 2^j s (up to 50% below 4 µs,
//!   where the kernel buckets are 1 µs wide). The other three of the octave's four
//!   kernel buckets are exact;
//! - the kernel's overflow bucket (no upper bound) is counted one native bucket above
//!   the last bound's.
//!
//! Precision of a native bucket: a factor of 2 (a quantile estimate is within x2 of
//! the true value, x1.41 of the bucket's geometric middle), plus the 20% above.

use std::collections::BTreeMap;

use crate::model::Histogram;

/// Which classic buckets the text exposition carries (`--fine-buckets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClassicBuckets {
    /// The short default set (see the module documentation).
    #[default]
    Short,
    /// The kernel's fine grid (many more series per histogram).
    Fine,
}

/// The kernel's bucket grid a histogram was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grid {
    /// Microsecond waits, `collector_common::queue::wait_bucket`.
    Wait,
    /// Queue depths, `collector_common::queue::depth_bucket`.
    Depth,
}

/// A histogram sample: per-bucket (not cumulative) counts, the last bound +Inf, and
/// the native buckets when the histogram has them.
#[derive(Debug, Clone)]
pub(super) struct HistogramValue {
    pub(super) sum: f64,
    pub(super) count: u64,
    pub(super) buckets: Vec<(f64, u64)>,
    pub(super) native: Option<NativeBuckets>,
}

/// Schema-0 sparse buckets, as the protobuf exposition wants them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NativeBuckets {
    pub(super) zero_threshold: f64,
    pub(super) zero_count: u64,
    /// (offset from the previous span's end, length); the first offset is an index.
    pub(super) spans: Vec<(i32, u32)>,
    /// Each bucket's count minus the previous bucket's.
    pub(super) deltas: Vec<i64>,
}

/// The native schema (see the module documentation).
pub(super) const SCHEMA: i32 = 0;

/// `h`, measured on `grid`, with the classic buckets `classic` selects and its
/// native buckets.
pub(super) fn kernel_histogram(
    h: &Histogram,
    grid: Grid,
    classic: ClassicBuckets,
) -> HistogramValue {
    let mut value = match (grid, classic) {
        (Grid::Depth, ClassicBuckets::Fine) => coarsen(h, |_| true),
        (Grid::Depth, ClassicBuckets::Short) => coarsen(h, short_depth_bound),
        (Grid::Wait, ClassicBuckets::Fine) => coarsen(h, fine_wait_bound),
        (Grid::Wait, ClassicBuckets::Short) => coarsen(h, short_wait_bound),
    };
    value.native = native(h);
    value
}

/// Whether an accept-wait bound (seconds) is in the fine grid: 2^k or 3·2^(k-1)
/// microseconds, from 64 µs.
fn fine_wait_bound(seconds: f64) -> bool {
    let us = (seconds * 1e6).round() as u64;
    seconds >= 64e-6
        && (us.is_power_of_two() || (us.is_multiple_of(3) && (us / 3).is_power_of_two()))
}

/// Whether a wait bound (seconds) is in the short set: 4^k µs, k >= 3.
fn short_wait_bound(seconds: f64) -> bool {
    let us = (seconds * 1e6).round() as u64;
    us >= 64 && us.is_power_of_two() && us.trailing_zeros().is_multiple_of(2)
}

/// Whether a depth bound (2^(i+1) - 1) is in the short set: i+1 odd.
fn short_depth_bound(bound: f64) -> bool {
    let next = bound.round() as u64 + 1;
    next.is_power_of_two() && next.trailing_zeros() % 2 == 1
}

/// Re-buckets a histogram onto the subset of its bounds that `keep` accepts. Counts
/// are exact at the kept bounds (they are bounds of the original). No native buckets.
pub(super) fn coarsen(h: &Histogram, keep: impl Fn(f64) -> bool) -> HistogramValue {
    let mut buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .copied()
        .filter(|&b| keep(b))
        .map(|b| (b, 0))
        .collect();
    buckets.push((f64::INFINITY, 0));
    let last = buckets.len() - 1;
    for (i, &count) in h.counts.iter().enumerate() {
        let upper = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let slot = buckets
            .iter()
            .position(|&(b, _)| b >= upper)
            .unwrap_or(last);
        buckets[slot].1 = buckets[slot].1.saturating_add(count);
    }
    HistogramValue {
        sum: h.sum,
        count: h.count(),
        buckets,
        native: None,
    }
}

/// The schema-0 index of the native bucket holding `bound`: the smallest j with
/// 2^j >= bound. `None` for a bound that is not a positive finite number.
pub(super) fn native_index(bound: f64) -> Option<i32> {
    if !(bound.is_finite() && bound > 0.0) {
        return None;
    }
    // log2 of a positive finite f64 lies in [-1075, 1024]: the cast cannot saturate.
    let mut j = bound.log2().ceil() as i32;
    // log2 may be off by an ulp near powers of two: settle on the exact answer.
    if 2f64.powi(j - 1) >= bound {
        j -= 1;
    }
    if 2f64.powi(j) < bound {
        j += 1;
    }
    Some(j)
}

/// The native buckets of `h` (see the module documentation for the mapping). `None`
/// for a histogram without bounds.
fn native(h: &Histogram) -> Option<NativeBuckets> {
    let zero_threshold = *h.bounds.first()?;
    let last = native_index(*h.bounds.last()?)?;
    let mut zero_count = 0u64;
    let mut by_index: BTreeMap<i32, u64> = BTreeMap::new();
    for (i, &count) in h.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let index = match h.bounds.get(i) {
            Some(&b) if b <= zero_threshold => None,
            Some(&b) => native_index(b),
            None => Some(last.saturating_add(1)),
        };
        let slot = match index {
            Some(j) => by_index.entry(j).or_default(),
            None => &mut zero_count,
        };
        *slot = slot.saturating_add(count);
    }
    let (spans, deltas) = spans_and_deltas(&by_index);
    Some(NativeBuckets {
        zero_threshold,
        zero_count,
        spans,
        deltas,
    })
}

/// The protobuf's sparse layout: runs of buckets (gaps of up to two empty buckets
/// are filled with zeros rather than starting a span), counts as deltas.
fn spans_and_deltas(by_index: &BTreeMap<i32, u64>) -> (Vec<(i32, u32)>, Vec<i64>) {
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut deltas = Vec::new();
    let (mut previous, mut next_index) = (0i64, 0i32);
    let mut push = |count: i64, spans: &mut Vec<(i32, u32)>| {
        if let Some((_, len)) = spans.last_mut() {
            *len += 1;
        }
        deltas.push(count.saturating_sub(previous));
        previous = count;
    };
    for (n, (&index, &count)) in by_index.iter().enumerate() {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let gap = index.saturating_sub(next_index);
        if n == 0 || gap > 2 {
            spans.push((gap, 0));
        } else {
            for _ in 0..gap {
                push(0, &mut spans);
            }
        }
        push(count, &mut spans);
        next_index = index.saturating_add(1);
    }
    (spans, deltas)
}

#[cfg(test)]
mod tests {
    use collector_common::queue::{ListenerQueue, depth_bucket, wait_bucket};

    use super::*;
    use crate::analysis::queue_stats::{depth_histogram, wait_histogram};

    /// The native buckets as (index, count), spans and deltas undone.
    fn expand(n: &NativeBuckets) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let (mut index, mut count) = (0i32, 0i64);
        let mut deltas = n.deltas.iter();
        for &(offset, len) in &n.spans {
            index += offset;
            for _ in 0..len {
                count += deltas.next().expect("a delta per bucket");
                out.push((index, count as u64));
                index += 1;
            }
        }
        out.retain(|&(_, c)| c > 0);
        out
    }

    #[test]
    fn coarsening_keeps_counts_exact_at_kept_bounds() {
        let h = Histogram {
            bounds: vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
            counts: vec![1, 1, 1, 1, 1, 1, 1],
            sum: 30.0,
        };
        let c = coarsen(&h, |b| b == 2.0 || b == 4.0 || b == 8.0);
        let bounds: Vec<f64> = c.buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds, [2.0, 4.0, 8.0, f64::INFINITY]);
        let counts: Vec<u64> = c.buckets.iter().map(|b| b.1).collect();
        // <=2: two observations; (2,4]: two; (4,8]: two; above: one.
        assert_eq!(counts, [2, 2, 2, 1]);
        assert_eq!(c.count, 7);
    }

    fn kept(grid: Grid, classic: ClassicBuckets) -> Vec<f64> {
        let q = ListenerQueue::ZERO;
        let h = match grid {
            Grid::Wait => wait_histogram(&q),
            Grid::Depth => depth_histogram(&q),
        };
        let v = kernel_histogram(&h, grid, classic);
        v.buckets
            .iter()
            .map(|b| b.0)
            .filter(|b| b.is_finite())
            .collect()
    }

    #[test]
    fn fine_wait_bounds_step_by_a_third_or_a_half() {
        let kept = kept(Grid::Wait, ClassicBuckets::Fine);
        assert_eq!(kept[0], 64e-6);
        assert!(
            kept.contains(&0.196608) && kept.contains(&0.262144),
            "{kept:?}"
        );
        for pair in kept.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!((1.3..=1.5 + 1e-9).contains(&ratio), "{pair:?}");
        }
        assert!(kept.len() < 45, "{} buckets", kept.len());
    }

    #[test]
    fn short_sets_are_the_documented_ones() {
        let us: Vec<u64> = kept(Grid::Wait, ClassicBuckets::Short)
            .iter()
            .map(|s| (s * 1e6).round() as u64)
            .collect();
        let expected: Vec<u64> = (3..=13).map(|k| 4u64.pow(k)).collect();
        assert_eq!(us, expected);
        assert_eq!(
            kept(Grid::Depth, ClassicBuckets::Short),
            [1.0, 7.0, 31.0, 127.0, 511.0, 2047.0, 8191.0, 32767.0]
        );
        assert_eq!(kept(Grid::Depth, ClassicBuckets::Fine).len(), 15);
    }

    #[test]
    fn native_index_is_the_power_of_two_at_or_above() {
        for (bound, j) in [(1.0, 0), (1.5, 1), (2.0, 1), (3.0, 2), (0.5, -1), (0.2, -2)] {
            assert_eq!(native_index(bound), Some(j), "{bound}");
        }
        for k in -40..40 {
            assert_eq!(native_index(2f64.powi(k)), Some(k));
        }
        assert_eq!(native_index(0.0), None);
        assert_eq!(native_index(f64::NAN), None);
        assert_eq!(native_index(f64::INFINITY), None);
    }

    #[test]
    fn native_depth_buckets_are_the_kernel_buckets() {
        let mut q = ListenerQueue::ZERO;
        for (depth, n) in [(1u32, 4u64), (2, 1), (3, 2), (5, 1), (40_000, 1)] {
            q.depth_hist[depth_bucket(depth)] += n;
        }
        let n = native(&depth_histogram(&q)).expect("bounds");
        assert_eq!((n.zero_threshold, n.zero_count), (1.0, 4));
        // Kernel bucket 1 (2..=3) is native 2, (2, 4]; 5 is in kernel bucket 2
        // (4..=7), native 3, (4, 8]; the overflow goes one above 32767's (15).
        assert_eq!(expand(&n), [(2, 3), (3, 1), (16, 1)]);
    }

    #[test]
    fn native_wait_buckets_hold_their_kernel_buckets_whole() {
        let mut q = ListenerQueue::ZERO;
        // 0 µs: the zero bucket. 200 ms: kernel [196608, 229376) µs, native
        // (0.125, 0.25] s = index -2. 120 ms: kernel [114688, 131072) µs straddles
        // 0.125 s and is counted whole in index -2 as well. 50 ms: kernel [49152, 57344)
        // µs, index -4 (60 ms would not be: its kernel bucket reaches 65.5 ms > 2^-4 s).
        for us in [0u64, 200_000, 200_000, 120_000, 50_000] {
            q.wait_hist[wait_bucket(us)] += 1;
        }
        let h = wait_histogram(&q);
        let n = native(&h).expect("bounds");
        assert_eq!((n.zero_threshold, n.zero_count), (1e-6, 1));
        assert_eq!(expand(&n), [(-4, 1), (-2, 3)]);
        // Every observation is somewhere.
        let total: u64 = n.zero_count + expand(&n).iter().map(|b| b.1).sum::<u64>();
        assert_eq!(total, h.count());
    }

    #[test]
    fn spans_skip_long_gaps_and_fill_short_ones() {
        let by_index: BTreeMap<i32, u64> = [(-3, 2), (-1, 5), (4, 1)].into_iter().collect();
        let (spans, deltas) = spans_and_deltas(&by_index);
        assert_eq!(spans, [(-3, 3), (4, 1)]);
        assert_eq!(deltas, [2, -2, 5, -4]);
    }
}
