//! The statistics of a run, pure: a small PRNG (the order of the variants in each
//! round, the bootstrap's resampling) and percentile-bootstrap intervals over paired
//! rounds.
//!
//! Every comparison is paired by round: a variant's storm is compared with the
//! no-sockq storm of the same round, so drift across the run (other work on the
//! machine, thermal or host effects) cancels as long as it is slow against a round.
//! The bootstrap resamples whole rounds with replacement.

use std::time::{SystemTime, UNIX_EPOCH};

/// Resamples per bootstrap interval.
pub const RESAMPLES: usize = 10_000;

/// The interval's coverage: 90%, the 5th to the 95th percentile.
pub const LEVEL: f64 = 0.90;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, and good enough to shuffle six
/// variants and pick rounds. Not for anything secret.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`) by multiply-shift; the bias is below n / 2^64.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// A seed from the clock, for a run that did not ask for one (it is printed, so the
/// run's order can be repeated with `--seed`).
pub fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// A statistic over the rounds and its bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The statistic over all rounds.
    pub point: f64,
    pub low: f64,
    pub high: f64,
    /// Rounds it was computed over (those where every storm it needs was kept).
    pub rounds: usize,
}

/// The `q` quantile (0..=1) of sorted values, interpolated linearly.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = pos.floor() as usize;
            let frac = pos - i as f64;
            match sorted.get(i + 1) {
                Some(next) => sorted[i] + (next - sorted[i]) * frac,
                None => sorted[i],
            }
        }
    }
}

/// Percentile bootstrap over `rounds` rounds. `statistic` gets the round indices of
/// one resample (drawn with replacement) and returns the statistic, or `None` where it
/// is undefined for that resample. `None` overall when it is undefined over all rounds,
/// or in more resamples than one tail of the interval holds: then no interval at this
/// level exists (a ratio whose denominator is not distinguishable from zero).
pub fn bootstrap(
    rounds: usize,
    rng: &mut Rng,
    resamples: usize,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Option<Estimate> {
    if rounds == 0 {
        return None;
    }
    let all: Vec<usize> = (0..rounds).collect();
    let point = statistic(&all).filter(|p| p.is_finite())?;
    let mut values = Vec::with_capacity(resamples);
    let mut pick = vec![0; rounds];
    for _ in 0..resamples {
        for p in &mut pick {
            *p = rng.below(rounds);
        }
        if let Some(v) = statistic(&pick).filter(|v| v.is_finite()) {
            values.push(v);
        }
    }
    let tail = (1.0 - LEVEL) / 2.0;
    let undefined = (resamples - values.len()) as f64 / resamples.max(1) as f64;
    if values.is_empty() || undefined > tail {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Estimate {
        point,
        low: quantile(&values, tail),
        high: quantile(&values, 1.0 - tail),
        rounds,
    })
}

/// One value per round for one variant; `None` where its storm was discarded.
pub type Series = [Option<f64>];

/// The rounds where every series has a value, as rows of values.
fn complete_rounds(series: &[&Series]) -> Vec<Vec<f64>> {
    let rounds = series.iter().map(|s| s.len()).min().unwrap_or(0);
    (0..rounds)
        .filter_map(|r| series.iter().map(|s| s[r]).collect::<Option<Vec<f64>>>())
        .collect()
}

/// The mean; `None` of nothing.
pub fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// `variant / base` per round, summarised by the geometric mean of the per-round
/// ratios (ratios multiply: x0.9 then x1.1 is x0.99, not x1.0).
pub fn ratio(variant: &Series, base: &Series, rng: &mut Rng) -> Option<Estimate> {
    let logs: Vec<f64> = complete_rounds(&[variant, base])
        .into_iter()
        .filter(|r| r[0] > 0.0 && r[1] > 0.0)
        .map(|r| (r[0] / r[1]).ln())
        .collect();
    bootstrap(logs.len(), rng, RESAMPLES, |idx| {
        mean(idx.iter().map(|&i| logs[i])).map(f64::exp)
    })
}

/// `variant - base` per round, summarised by the mean.
pub fn difference(variant: &Series, base: &Series, rng: &mut Rng) -> Option<Estimate> {
    let diffs: Vec<f64> = complete_rounds(&[variant, base])
        .into_iter()
        .map(|r| r[0] - r[1])
        .collect();
    bootstrap(diffs.len(), rng, RESAMPLES, |idx| {
        mean(idx.iter().map(|&i| diffs[i]))
    })
}

/// How many times the floor's added cost the variant's is: mean(variant - base) /
/// mean(floor - base) over the rounds where all three were kept. Undefined where the
/// floor's mean added cost is not above zero.
pub fn multiple(
    variant: &Series,
    floor: &Series,
    base: &Series,
    rng: &mut Rng,
) -> Option<Estimate> {
    let rows: Vec<(f64, f64)> = complete_rounds(&[variant, floor, base])
        .into_iter()
        .map(|r| (r[0] - r[2], r[1] - r[2]))
        .collect();
    bootstrap(rows.len(), rng, RESAMPLES, |idx| {
        let added = mean(idx.iter().map(|&i| rows[i].0))?;
        let floor = mean(idx.iter().map(|&i| rows[i].1))?;
        (floor > 0.0).then(|| added / floor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prng_repeats_for_a_seed_and_differs_between_seeds() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(43);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b, "same seed, same sequence");
        assert_ne!(a, c, "another seed, another sequence");
        // SplitMix64's published first output for seed 0.
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut r = Rng::new(7);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            let v = r.below(6);
            assert!(v < 6, "below(6) gave {v}");
            seen[v] += 1;
        }
        for (v, n) in seen.iter().enumerate() {
            assert!((800..1200).contains(n), "value {v} drawn {n} times in 6000");
        }
    }

    #[test]
    fn shuffle_permutes_and_every_variant_comes_first_sometimes() {
        let mut r = Rng::new(1);
        let mut first = [0usize; 6];
        for _ in 0..600 {
            let mut v: Vec<usize> = (0..6).collect();
            r.shuffle(&mut v);
            let mut sorted = v.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..6).collect::<Vec<_>>(),
                "not a permutation: {v:?}"
            );
            first[v[0]] += 1;
        }
        assert!(first.iter().all(|&n| n > 50), "first positions {first:?}");
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!((quantile(&v, 0.05) - 1.2).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.3), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn constant_ratios_give_a_point_interval() {
        let base: Vec<Option<f64>> = vec![Some(100.0); 10];
        let v: Vec<Option<f64>> = vec![Some(90.0); 10];
        let e = ratio(&v, &base, &mut Rng::new(3)).expect("an estimate");
        assert!((e.point - 0.9).abs() < 1e-12, "{e:?}");
        assert!(
            (e.low - 0.9).abs() < 1e-12 && (e.high - 0.9).abs() < 1e-12,
            "{e:?}"
        );
        assert_eq!(e.rounds, 10);
        assert!(e.high < 1.0);
    }

    #[test]
    fn ratios_are_paired_by_round() {
        // The baseline drifts from 100 to 200; the variant is always 5% below it.
        // Paired, the ratio is exactly 0.95 whatever the drift.
        let base: Vec<Option<f64>> = (0..10).map(|r| Some(100.0 + 10.0 * r as f64)).collect();
        let v: Vec<Option<f64>> = base.iter().map(|b| b.map(|b| b * 0.95)).collect();
        let e = ratio(&v, &base, &mut Rng::new(9)).expect("an estimate");
        assert!(
            (e.low - 0.95).abs() < 1e-9 && (e.high - 0.95).abs() < 1e-9,
            "{e:?}"
        );
    }

    #[test]
    fn discarded_storms_drop_their_round_only() {
        let base = [Some(100.0), None, Some(100.0), Some(100.0)];
        let v = [Some(80.0), Some(1.0), None, Some(80.0)];
        let e = ratio(&v, &base, &mut Rng::new(5)).expect("an estimate");
        assert_eq!(e.rounds, 2, "rounds 0 and 3 are complete");
        assert!((e.point - 0.8).abs() < 1e-12);
        assert!(ratio(&[None], &[Some(1.0)], &mut Rng::new(5)).is_none());
    }

    #[test]
    fn noisy_ratios_give_an_interval_around_the_mean_that_narrows_with_rounds() {
        let mut noise = Rng::new(11);
        let mut series = |n: usize| -> (Vec<Option<f64>>, Vec<Option<f64>>) {
            let base: Vec<Option<f64>> = (0..n).map(|_| Some(1000.0)).collect();
            let v = (0..n)
                .map(|_| Some(900.0 + (noise.below(1001) as f64 - 500.0) / 5.0))
                .collect();
            (v, base)
        };
        let (v10, b10) = series(10);
        let (v100, b100) = series(100);
        let e10 = ratio(&v10, &b10, &mut Rng::new(1)).expect("10 rounds");
        let e100 = ratio(&v100, &b100, &mut Rng::new(1)).expect("100 rounds");
        for e in [e10, e100] {
            assert!(e.low < e.point && e.point < e.high, "{e:?}");
            assert!(e.high < 1.0, "0.9 +- 0.1 is resolved from 1: {e:?}");
            assert!((e.point - 0.9).abs() < 0.05, "{e:?}");
        }
        assert!(
            e100.high - e100.low < e10.high - e10.low,
            "more rounds, narrower: {e10:?} {e100:?}"
        );
    }

    #[test]
    fn the_interval_is_repeatable_for_a_seed() {
        let base: Vec<Option<f64>> = (0..10).map(|r| Some(100.0 + r as f64)).collect();
        let v: Vec<Option<f64>> = (0..10).map(|r| Some(95.0 + (r * 7 % 5) as f64)).collect();
        let a = ratio(&v, &base, &mut Rng::new(77));
        let b = ratio(&v, &base, &mut Rng::new(77));
        assert_eq!(a, b);
    }

    #[test]
    fn differences_are_means_of_paired_differences() {
        let base = [Some(50_000.0), Some(60_000.0), Some(55_000.0)];
        let v = [Some(51_000.0), Some(61_000.0), Some(56_000.0)];
        let e = difference(&v, &base, &mut Rng::new(2)).expect("an estimate");
        assert!((e.point - 1000.0).abs() < 1e-9, "{e:?}");
        assert!((e.low - 1000.0).abs() < 1e-9 && (e.high - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn the_floor_multiple_needs_a_floor_above_zero() {
        let base = [Some(100.0), Some(100.0), Some(100.0), Some(100.0)];
        let floor = [Some(110.0), Some(110.0), Some(110.0), Some(110.0)];
        let v = [Some(130.0), Some(130.0), Some(130.0), Some(130.0)];
        let e = multiple(&v, &floor, &base, &mut Rng::new(4)).expect("an estimate");
        assert!((e.point - 3.0).abs() < 1e-12, "{e:?}");
        // A floor that costs nothing measurable: no multiple.
        let flat = [Some(100.0), Some(101.0), Some(99.0), Some(100.0)];
        assert!(multiple(&v, &flat, &base, &mut Rng::new(4)).is_none());
    }
}
