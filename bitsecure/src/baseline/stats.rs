//! Statistics of traffic time series: what one traffic class ("rule": process × remote × port ×
//! protocol) normally looks like, and how far live traffic is from it.
//!
//! Everything here is pure: a series is the number of bytes seen in each consecutive sampling
//! step (`bytes_per_step`, oldest first) plus the step length in seconds (`step_seconds`, e.g.
//! 5.0). Rates are in bytes per second, times and periods in seconds. An invalid step (not a
//! finite number > 0) gives neutral results (zeros, `None`, empty) rather than a panic, and no
//! function returns NaN.
//!
//! The machine watched is dedicated (a mining rig), so most traffic is periodic: the miner
//! fetches jobs from its pool on a cycle, a monitor reports every few minutes. [`detect_cadence`]
//! finds that cycle in a recording; [`window_seconds`] and [`silence_ratio`] then judge live
//! traffic against it, so a normal burst is not flagged and a missing one is.

use serde::{Deserialize, Serialize};

/// Distribution of a rate over the recording, in bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateStats {
    /// Mean rate over all steps, idle ones included (bytes/s).
    pub mean: f64,
    /// 95th percentile of the per-step rates, nearest-rank method (bytes/s).
    pub p95: f64,
    /// Highest per-step rate (bytes/s).
    pub max: f64,
}

/// A periodic activity pattern found by [`detect_cadence`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    /// Time between the starts of consecutive bursts, in seconds.
    pub period_seconds: f64,
    /// How much of the bursts recur at that period beyond what chance explains, in `0.0..=1.0`
    /// (1.0: every burst is followed by another one period later). Always at least
    /// [`CADENCE_STRENGTH_THRESHOLD`].
    pub strength: f64,
}

/// Minimum [`Cadence::strength`] for [`detect_cadence`] to call traffic periodic.
///
/// 0.5 means at least about half of the bursts (after discounting chance coincidences) are
/// followed by another one a period later; random bursts score near 0, a clean cycle near 1.
pub fn thr() -> f64 {
    std::env::var("THR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5)
}

/// Maximum probability that the recurrences supporting a cadence happen by chance (one-sided
/// binomial test). It keeps a handful of coincidences among few random bursts, or a dense
/// random pattern where almost any lag finds a burst, from being called periodic.
pub fn cadence_significance() -> f64 {
    std::env::var("ALPHA")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.02)
}

/// Jitter tolerated between bursts, as a fraction of the period (plus one step for the
/// sampling): a 300 s cycle at a 5 s step accepts intervals of 300 ± 40 s.
pub fn tol() -> f64 {
    std::env::var("TOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.1)
}

/// Lags whose tolerance window holds a burst start by chance more often than this are not
/// considered: recurrence there says nothing (long lags with wide windows in dense traffic).
fn max_chance() -> f64 {
    std::env::var("MC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.6)
}

/// Minimum number of cycles a recording must cover for a cadence to be reported.
pub const CADENCE_MIN_CYCLES: usize = 3;

/// Shortest period considered by [`detect_cadence`], in steps: one step apart is "continuous".
const CADENCE_MIN_LAG_STEPS: usize = 2;

/// A shorter lag is preferred over the strongest one when it scores at least this fraction of
/// it, so a 300 s cycle is not reported as 600 s (its multiples recur just as well).
const FUNDAMENTAL_PREFERENCE: f64 = 0.85;

/// Lowest rate [`deviation_ratio`] divides by, in bytes per second, so a rule that was nearly
/// silent during the recording does not make every byte look like a huge burst.
pub const RATE_FLOOR_BYTES_PER_SECOND: f64 = 1.0;

/// Expected gap between packets of aperiodic traffic for [`silence_ratio`], in steps...
pub const DEFAULT_GAP_STEPS: f64 = 10.0;
/// ...and never less than this many seconds.
pub const DEFAULT_GAP_MIN_SECONDS: f64 = 60.0;

/// Averaging window of [`window_seconds`] for aperiodic traffic, in steps...
pub const DEFAULT_WINDOW_STEPS: f64 = 6.0;
/// ...and never less than this many seconds.
pub const DEFAULT_WINDOW_MIN_SECONDS: f64 = 30.0;

/// Most phase bins [`profile`] returns (a larger request is capped), so a bad argument cannot
/// allocate without bound.
pub const MAX_PROFILE_BINS: usize = 4096;

/// Whether `step_seconds` can divide and multiply times.
fn valid_step(step_seconds: f64) -> bool {
    step_seconds.is_finite() && step_seconds > 0.0
}

/// Whether `seconds` is a usable positive duration.
fn valid_duration(seconds: f64) -> bool {
    seconds.is_finite() && seconds > 0.0
}

/// Element of rank `ceil(percent / 100 × len)` (nearest-rank percentile) of an ascending slice.
fn nearest_rank(sorted: &[u64], percent: u8) -> Option<u64> {
    let len = u128::try_from(sorted.len()).ok()?;
    let rank = (len * u128::from(percent)).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// Rate statistics of a series: `mean`, `p95` and `max` of `bytes / step_seconds` over all
/// steps (idle steps count as rate 0), in bytes per second.
///
/// The 95th percentile uses the nearest-rank method: the `ceil(0.95 × n)`-th smallest rate, so
/// it is always one of the observed rates (for 20 steps, the 19th smallest). An empty series or
/// an invalid step gives all zeros.
pub fn rate_stats(bytes_per_step: &[u64], step_seconds: f64) -> RateStats {
    if bytes_per_step.is_empty() || !valid_step(step_seconds) {
        return RateStats::default();
    }
    let mut sorted = bytes_per_step.to_vec();
    sorted.sort_unstable();
    // u128: the sum of any slice of u64 fits.
    let total: u128 = bytes_per_step.iter().map(|&b| u128::from(b)).sum();
    let rate = |bytes: u64| bytes as f64 / step_seconds;
    RateStats {
        mean: total as f64 / bytes_per_step.len() as f64 / step_seconds,
        p95: nearest_rank(&sorted, 95).map_or(0.0, rate),
        max: sorted.last().copied().map_or(0.0, rate),
    }
}

/// Fraction of steps with any traffic (more than 0 bytes), in `0.0..=1.0`; 0.0 when empty.
pub fn active_fraction(bytes_per_step: &[u64]) -> f64 {
    if bytes_per_step.is_empty() {
        return 0.0;
    }
    let active = bytes_per_step.iter().filter(|&&b| b > 0).count();
    active as f64 / bytes_per_step.len() as f64
}

/// Indices of the steps whose bytes exceed `threshold` after a step that did not (plus step 0
/// if it does).
fn onset_steps(bytes_per_step: &[u64], threshold: u64) -> Vec<usize> {
    let mut previous_active = false;
    bytes_per_step
        .iter()
        .enumerate()
        .filter_map(|(index, &bytes)| {
            let active = bytes > threshold;
            let onset = active && !previous_active;
            previous_active = active;
            onset.then_some(index)
        })
        .collect()
}

/// Times of the starts of bursts, in seconds from the start of the series: the start of each
/// step with traffic that follows at least one step without, plus step 0 if it has traffic.
/// Empty for an invalid step.
pub fn burst_onsets(bytes_per_step: &[u64], step_seconds: f64) -> Vec<f64> {
    if !valid_step(step_seconds) {
        return Vec::new();
    }
    onset_steps(bytes_per_step, 0)
        .into_iter()
        .map(|index| index as f64 * step_seconds)
        .collect()
}

/// Median interval between consecutive burst onsets (as from [`burst_onsets`], in seconds), in
/// seconds: a jitter-tolerant cadence of live traffic.
///
/// The onsets need not be sorted; non-finite values and duplicates are ignored. `None` with
/// fewer than 3 distinct onsets (2 intervals), which is too few to call anything a cadence.
pub fn observed_cadence(burst_onsets_seconds: &[f64]) -> Option<f64> {
    let mut onsets: Vec<f64> = burst_onsets_seconds
        .iter()
        .copied()
        .filter(|t| t.is_finite())
        .collect();
    onsets.sort_unstable_by(f64::total_cmp);
    let mut intervals: Vec<f64> = onsets
        .windows(2)
        .filter_map(|pair| match pair {
            [earlier, later] if later > earlier => Some(later - earlier),
            _ => None,
        })
        .collect();
    if intervals.len() < 2 {
        return None;
    }
    intervals.sort_unstable_by(f64::total_cmp);
    let middle = intervals.len() / 2;
    let upper = intervals.get(middle).copied()?;
    if intervals.len() % 2 == 1 {
        return Some(upper);
    }
    let lower = intervals.get(middle - 1).copied()?;
    Some((lower + upper) / 2.0)
}

/// Byte count a step must exceed to count as "active" for cadence detection: twice the lower
/// quartile of the series.
///
/// For sparse traffic (at least a quarter of the steps idle) that is 0, so any byte is
/// activity. For always-on traffic it sits above the steady floor, so only bursts count and a
/// constant or merely noisy flow has no bursts at all.
fn burst_threshold(bytes_per_step: &[u64]) -> u64 {
    let mut sorted = bytes_per_step.to_vec();
    sorted.sort_unstable();
    nearest_rank(&sorted, 25).map_or(0, |quartile| quartile.saturating_mul(2))
}

/// How often burst onsets recur after one lag, compared with chance.
#[derive(Debug, Clone, Copy)]
struct Recurrence {
    /// Lag tested, in steps.
    lag: usize,
    /// Chance-corrected fraction of onsets followed by another one `lag ± tolerance` later.
    strength: f64,
    /// Enough recurrences, and too many to be chance.
    significant: bool,
}

/// Half-width, in steps, of the window around `lag` where a following onset counts.
fn tolerance_steps(lag: usize) -> usize {
    // The extra step absorbs sampling: an interval of exactly one period can span one step
    // more or less depending on where the bursts fall within their steps.
    (lag as f64 * tol()).floor() as usize + 1
}

/// Onsets (ascending step indices) whose recurrence window after `lag` lies inside the series,
/// paired with the onset found in that window nearest to `onset + lag`, if any.
fn recurrences(onsets: &[usize], len: usize, lag: usize) -> impl Iterator<Item = Option<usize>> {
    let tolerance = tolerance_steps(lag);
    // Two pointers: both the onsets and their windows move forward.
    let mut next = 0;
    onsets
        .iter()
        .take_while(move |&&onset| onset.saturating_add(lag).saturating_add(tolerance) < len)
        .map(move |&onset| {
            let target = onset + lag;
            // Never match the onset itself (tolerance < lag for lag >= 2, but be safe).
            let low = target.saturating_sub(tolerance).max(onset + 1);
            let high = target + tolerance;
            while onsets.get(next).is_some_and(|&other| other < low) {
                next += 1;
            }
            onsets
                .get(next..)
                .unwrap_or_default()
                .iter()
                .take_while(|&&other| other <= high)
                .min_by_key(|&&other| other.abs_diff(target))
                .copied()
        })
}

/// Probability that a binomial(`trials`, `probability`) variable is at least `successes`.
fn binomial_tail(trials: usize, successes: usize, probability: f64) -> f64 {
    if successes == 0 {
        return 1.0;
    }
    if successes > trials || probability <= 0.0 {
        return 0.0;
    }
    if probability >= 1.0 {
        return 1.0;
    }
    // Log space: (1 - p)^n underflows for long recordings.
    let (ln_p, ln_q) = (probability.ln(), (1.0 - probability).ln());
    let mut ln_choose = 0.0; // ln C(trials, k), built up incrementally.
    let mut tail = 0.0;
    for k in 0..=trials {
        if k > 0 {
            ln_choose += ((trials - k + 1) as f64).ln() - (k as f64).ln();
        }
        if k >= successes {
            tail += (ln_choose + k as f64 * ln_p + (trials - k) as f64 * ln_q).exp();
        }
    }
    tail.min(1.0)
}

/// Fraction of the steps of a series of `len` steps that lie within `tolerance` steps of an
/// onset, for every tolerance from 0 up: the chance that a window of that half-width placed
/// at random holds an onset. Measured rather than modelled: onsets are at least two steps
/// apart, so dense traffic covers windows far more evenly than random points would.
fn onset_coverage(onsets: &[usize], len: usize) -> Vec<f64> {
    // Distance from each step to its nearest onset, by a forward and a backward sweep.
    let mut distance = vec![usize::MAX; len];
    let mut last = None;
    for (step, slot) in distance.iter_mut().enumerate() {
        if onsets.binary_search(&step).is_ok() {
            last = Some(step);
        }
        if let Some(onset) = last {
            *slot = step - onset;
        }
    }
    let mut next = None;
    for (step, slot) in distance.iter_mut().enumerate().rev() {
        if onsets.binary_search(&step).is_ok() {
            next = Some(step);
        }
        if let Some(onset) = next {
            *slot = (*slot).min(onset - step);
        }
    }
    let mut counts = vec![0_usize; len];
    for &d in &distance {
        if let Some(count) = counts.get_mut(d) {
            *count += 1;
        }
    }
    let mut covered = 0;
    counts
        .iter()
        .map(|&count| {
            covered += count;
            covered as f64 / len as f64
        })
        .collect()
}

/// Scores `lag`: the fraction of onsets followed by another one within the jitter tolerance,
/// corrected for the fraction expected by chance (`coverage`, from [`onset_coverage`]).
fn recurrence(onsets: &[usize], len: usize, lag: usize, coverage: &[f64]) -> Recurrence {
    let (mut eligible, mut hits) = (0_usize, 0_usize);
    for found in recurrences(onsets, len, lag) {
        eligible += 1;
        hits += usize::from(found.is_some());
    }
    let nothing = Recurrence {
        lag,
        strength: 0.0,
        significant: false,
    };
    // Chance that a window of this width holds an onset if the lag meant nothing.
    let chance = coverage
        .get(tolerance_steps(lag))
        .or(coverage.last())
        .copied()
        .unwrap_or(1.0);
    if eligible == 0 || chance > max_chance() {
        return nothing;
    }
    let fraction = hits as f64 / eligible as f64;
    Recurrence {
        lag,
        strength: ((fraction - chance) / (1.0 - chance)).clamp(0.0, 1.0),
        significant: hits >= CADENCE_MIN_CYCLES
            && binomial_tail(eligible, hits, chance) <= cadence_significance(),
    }
}

/// The longest chain of burst starts (ascending step indices) that fall on a cycle of about
/// `lag` steps, as `(cycle number, step)` points; missed cycles are allowed.
///
/// A start joins the chain when it lies within the jitter tolerance of either prediction: one
/// period after the previous start of the chain (jitter that accumulates, like a sleep loop)
/// or on the grid fitted so far (jitter around fixed slots, like a cron job).
fn longest_chain(onsets: &[usize], lag: usize) -> Vec<(f64, f64)> {
    // Half a step more: predictions fall between steps, onsets on them.
    let tolerance = tolerance_steps(lag) as f64 + 0.5;
    let mut used = vec![false; onsets.len()];
    let mut best: Vec<(f64, f64)> = Vec::new();
    for (first_index, &first) in onsets.iter().enumerate() {
        if used.get(first_index).copied().unwrap_or(true) {
            continue; // Already in a chain, which this one would only be the tail of.
        }
        let first = first as f64;
        let mut chain = vec![(0.0, first)];
        let (mut cycle, mut last, mut period) = (0.0, first, lag as f64);
        for (index, &onset) in onsets.iter().enumerate().skip(first_index + 1) {
            let onset = onset as f64;
            let ahead = ((onset - last) / lag as f64).round();
            if ahead < 1.0 {
                continue; // Within the current cycle: a second start inside one burst.
            }
            // The lag, not the running estimate, from the last start: early estimates are
            // skewed by the jitter of the first few intervals.
            let from_last = last + ahead * lag as f64;
            let from_grid = first + (cycle + ahead) * period;
            if (onset - from_last).abs() > tolerance && (onset - from_grid).abs() > tolerance {
                continue;
            }
            cycle += ahead;
            last = onset;
            chain.push((cycle, onset));
            if let Some(slot) = used.get_mut(index) {
                *slot = true;
            }
            period = (last - first) / cycle;
        }
        if chain.len() > best.len() {
            best = chain;
        }
    }
    best
}

/// Least-squares slope of step against cycle number: the period in steps.
fn fitted_period(chain: &[(f64, f64)]) -> Option<f64> {
    let count = chain.len() as f64;
    let mean_cycle = chain.iter().map(|&(cycle, _)| cycle).sum::<f64>() / count;
    let mean_step = chain.iter().map(|&(_, step)| step).sum::<f64>() / count;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for &(cycle, step) in chain {
        covariance += (cycle - mean_cycle) * (step - mean_step);
        variance += (cycle - mean_cycle) * (cycle - mean_cycle);
    }
    let slope = covariance / variance;
    (slope.is_finite() && slope > 0.0).then_some(slope)
}

/// Finds the dominant period of a bursty series, if it has one.
///
/// Method (an autocorrelogram of burst onsets, as used for spike trains): a step is *active*
/// when its bytes exceed twice the series' lower quartile (any byte for sparse traffic, a
/// burst above the floor for always-on traffic); a burst starts at an active step after an
/// inactive one. For every lag from 2 steps to a third of the recording, each burst start is
/// checked for another one `lag` later, within [`CADENCE_JITTER_TOLERANCE`] of the lag plus one
/// step. The fraction of hits, corrected for the fraction expected by chance at that onset
/// density, is the strength at that lag. Lags qualify with at least
/// `CADENCE_MIN_CYCLES - 1` hits that are significant (binomial tail ≤
/// [`CADENCE_SIGNIFICANCE`]) and a strength ≥ [`CADENCE_STRENGTH_THRESHOLD`]. The shortest
/// qualifying lag within 85% of the best strength wins (multiples of the period recur as well
/// as the period itself), and the period is refined to the mean interval between the burst
/// starts that recur near it.
///
/// Burst sizes and durations do not matter, only when bursts start. `None` for silence,
/// constant or merely noisy always-on traffic, bursts at random times, fewer than 3 bursts, a
/// recording shorter than [`CADENCE_MIN_CYCLES`] periods, or an invalid step.
pub fn detect_cadence(bytes_per_step: &[u64], step_seconds: f64) -> Option<Cadence> {
    if !valid_step(step_seconds) {
        return None;
    }
    let len = bytes_per_step.len();
    let max_lag = len / CADENCE_MIN_CYCLES;
    if max_lag < CADENCE_MIN_LAG_STEPS {
        return None;
    }
    let onsets = onset_steps(bytes_per_step, burst_threshold(bytes_per_step));
    if onsets.len() < CADENCE_MIN_CYCLES {
        return None;
    }
    let coverage = onset_coverage(&onsets, len);
    let candidates: Vec<Recurrence> = (CADENCE_MIN_LAG_STEPS..=max_lag)
        .map(|lag| recurrence(&onsets, len, lag, &coverage))
        .filter(|score| score.significant && score.strength >= thr())
        .collect();
    let best = candidates
        .iter()
        .map(|score| score.strength)
        .fold(0.0, f64::max);
    let chosen = candidates
        .iter()
        .find(|score| score.strength >= FUNDAMENTAL_PREFERENCE * best)?;
    // The chosen lag may sit at the edge of the tolerance window, and single intervals are
    // jittered: fit a line through the bursts that keep to the cycle instead.
    let chain = longest_chain(&onsets, chosen.lag);
    if chain.len() <= CADENCE_MIN_CYCLES {
        return None;
    }
    let period_steps = fitted_period(&chain)?;
    if period_steps * CADENCE_MIN_CYCLES as f64 > len as f64 {
        return None;
    }
    // Report the strength at the fitted period if it scores better there.
    let centred_lag = (period_steps.round() as usize).max(CADENCE_MIN_LAG_STEPS);
    let centred = recurrence(&onsets, len, centred_lag, &coverage);
    let strength = if centred.significant {
        chosen.strength.max(centred.strength)
    } else {
        chosen.strength
    };
    Some(Cadence {
        period_seconds: period_steps * step_seconds,
        strength,
    })
}

/// Expected traffic over one cycle: the series folded over `period_seconds` into `bins` equal
/// phase bins, each the mean rate (bytes/s) of the steps that start in it.
///
/// Phase 0 is the start of the series (step `i` starts at `i × step_seconds`). A bin no step
/// falls in (more bins than steps per period) is 0.0. `bins` is capped at
/// [`MAX_PROFILE_BINS`]; 0 bins gives an empty vector, and an invalid step or period gives all
/// zeros.
pub fn profile(
    bytes_per_step: &[u64],
    step_seconds: f64,
    period_seconds: f64,
    bins: usize,
) -> Vec<f64> {
    let bins = bins.min(MAX_PROFILE_BINS);
    let mut sums = vec![0.0_f64; bins];
    let mut counts = vec![0_usize; bins];
    if bins == 0 || !valid_step(step_seconds) || !valid_duration(period_seconds) {
        return sums;
    }
    for (index, &bytes) in bytes_per_step.iter().enumerate() {
        let phase_seconds = (index as f64 * step_seconds).rem_euclid(period_seconds);
        // Multiply before dividing so whole steps land exactly on bin edges; the small epsilon
        // absorbs the rounding of fractional steps (0.1 s) just below an edge.
        let position = phase_seconds * bins as f64 / period_seconds + 1e-9;
        let bin = (position.floor() as usize).min(bins - 1);
        if let (Some(sum), Some(count)) = (sums.get_mut(bin), counts.get_mut(bin)) {
            *sum += bytes as f64 / step_seconds;
            *count += 1;
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(&sum, &count)| if count == 0 { 0.0 } else { sum / count as f64 })
        .collect()
}

/// How far a live rate (bytes/s) is above normal: `current_rate / max(p95, mean,
/// RATE_FLOOR_BYTES_PER_SECOND)`.
///
/// 1.0 is the recording's 95th percentile; above 3 is a burst worth a look. The mean guards
/// sparse rules whose p95 is 0 (idle 95% of the time), and the floor of
/// [`RATE_FLOOR_BYTES_PER_SECOND`] rules that were (nearly) silent. A negative or NaN rate
/// counts as 0.
pub fn deviation_ratio(current_rate: f64, normal: &RateStats) -> f64 {
    let current = if current_rate > 0.0 {
        current_rate
    } else {
        0.0
    };
    // f64::max ignores NaN, so a corrupt baseline falls back to the floor.
    let normal_rate = RATE_FLOOR_BYTES_PER_SECOND.max(normal.p95).max(normal.mean);
    let ratio = current / normal_rate;
    if ratio.is_nan() { 0.0 } else { ratio }
}

/// The gap between packets that is still normal, in seconds: one cadence (never under one
/// step) for periodic traffic, else `max(DEFAULT_GAP_STEPS × step, DEFAULT_GAP_MIN_SECONDS)`.
fn expected_gap_seconds(cadence_seconds: Option<f64>, step_seconds: f64) -> f64 {
    match cadence_seconds.filter(|&cadence| valid_duration(cadence)) {
        Some(cadence) => cadence.max(step_seconds),
        None => (DEFAULT_GAP_STEPS * step_seconds).max(DEFAULT_GAP_MIN_SECONDS),
    }
}

/// How long a rule has been silent compared with normal: `seconds_since_last_traffic` divided
/// by the expected gap, which is the cadence (seconds) for periodic traffic, else
/// `max(10 × step_seconds, 60 s)`.
///
/// Above 1.0 the rule has been quiet for longer than a whole cycle (a crashed miner, a dead
/// pool). A cadence that is not a positive number counts as none. A negative or NaN silence, or
/// an invalid step, gives 0.0.
pub fn silence_ratio(
    seconds_since_last_traffic: f64,
    cadence_seconds: Option<f64>,
    step_seconds: f64,
) -> f64 {
    if !valid_step(step_seconds) || !(seconds_since_last_traffic > 0.0) {
        return 0.0;
    }
    seconds_since_last_traffic / expected_gap_seconds(cadence_seconds, step_seconds)
}

/// Length of the window live rates are averaged over before [`deviation_ratio`], in seconds:
/// one cadence (never under one step) for periodic traffic, so a normal burst spread over its
/// cycle is not flagged, else `max(6 × step_seconds, 30 s)`.
///
/// A cadence that is not a positive number counts as none; an invalid step counts as 0 s, so
/// the result is always a positive number of seconds.
pub fn window_seconds(cadence_seconds: Option<f64>, step_seconds: f64) -> f64 {
    let step = if valid_step(step_seconds) {
        step_seconds
    } else {
        0.0
    };
    match cadence_seconds.filter(|&cadence| valid_duration(cadence)) {
        Some(cadence) => cadence.max(step),
        None => (DEFAULT_WINDOW_STEPS * step).max(DEFAULT_WINDOW_MIN_SECONDS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift64* generator: jitter and noise without a randomness crate.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
        }

        /// Uniform in [low, high).
        fn range(&mut self, low: f64, high: f64) -> f64 {
            low + (high - low) * self.unit()
        }

        /// Uniform integer in low..=high.
        fn int(&mut self, low: u64, high: u64) -> u64 {
            low + self.next_u64() % (high - low + 1)
        }
    }

    const STEP: f64 = 5.0;
    /// 30 minutes at 5 s.
    const STEPS_30_MIN: usize = 360;

    /// A series of `len` steps with a burst of `bytes` per step for `steps` steps starting at
    /// each `(start_seconds, steps, bytes)`.
    fn trace(len: usize, step: f64, bursts: &[(f64, usize, u64)]) -> Vec<u64> {
        let mut series = vec![0; len];
        for &(start, steps, bytes) in bursts {
            let first = (start / step).floor() as usize;
            for slot in series.iter_mut().skip(first).take(steps) {
                *slot += bytes;
            }
        }
        series
    }

    /// Burst starts every `period` ± `jitter` × period from a random phase: with
    /// `per_burst`, each burst is displaced from its slot on an exact grid (intervals vary by
    /// up to twice the jitter), else each interval is drawn independently (a sleeping loop).
    fn periodic_starts(
        rng: &mut Rng,
        duration: f64,
        period: f64,
        jitter: f64,
        per_burst: bool,
    ) -> Vec<f64> {
        let phase = rng.range(0.0, period);
        let mut starts = Vec::new();
        let mut time = phase;
        let mut slot = 0.0;
        while time < duration {
            starts.push(time);
            let offset = rng.range(-jitter, jitter) * period;
            if per_burst {
                slot += 1.0;
                time = (phase + slot * period + offset).max(0.0);
            } else {
                time += period + offset;
            }
        }
        starts
    }

    fn bursts_at(rng: &mut Rng, starts: &[f64], steps: (u64, u64)) -> Vec<(f64, usize, u64)> {
        starts
            .iter()
            .map(|&start| {
                let len = rng.int(steps.0, steps.1) as usize;
                (start, len, rng.int(500, 50_000))
            })
            .collect()
    }

    fn periodic_trace(rng: &mut Rng, len: usize, period: f64, per_burst: bool) -> Vec<u64> {
        let starts = periodic_starts(rng, len as f64 * STEP, period, 0.1, per_burst);
        let bursts = bursts_at(rng, &starts, (1, 3));
        trace(len, STEP, &bursts)
    }

    /// Bursts at intervals drawn uniformly from `low..high` seconds.
    fn random_interval_trace(rng: &mut Rng, len: usize, low: f64, high: f64) -> Vec<u64> {
        let mut starts = Vec::new();
        let mut time = rng.range(0.0, high);
        while time < len as f64 * STEP {
            starts.push(time);
            time += rng.range(low, high);
        }
        let bursts = bursts_at(rng, &starts, (1, 3));
        trace(len, STEP, &bursts)
    }

    /// Bursts at exponentially distributed intervals (a Poisson process) of mean `mean`.
    fn poisson_trace(rng: &mut Rng, len: usize, mean: f64) -> Vec<u64> {
        let mut starts = Vec::new();
        let mut time = -mean * (1.0 - rng.unit()).ln();
        while time < len as f64 * STEP {
            starts.push(time);
            time += -mean * (1.0 - rng.unit()).ln();
        }
        let bursts = bursts_at(rng, &starts, (1, 3));
        trace(len, STEP, &bursts)
    }

    /// Each step independently active with probability `p`.
    fn bernoulli_trace(rng: &mut Rng, len: usize, p: f64) -> Vec<u64> {
        (0..len)
            .map(|_| {
                if rng.unit() < p {
                    rng.int(1, 10_000)
                } else {
                    0
                }
            })
            .collect()
    }

    fn within(value: f64, expected: f64, relative: f64) -> bool {
        (value - expected).abs() <= expected * relative
    }

    #[test]
    #[ignore = "exploration: prints detection rates over many seeds"]
    fn sweep() {
        type Gen = fn(&mut Rng) -> Vec<u64>;
        let scenarios: Vec<(&str, Option<f64>, Gen)> = vec![
            ("300s interval jitter", Some(300.0), |r| {
                periodic_trace(r, 360, 300.0, false)
            }),
            ("300s per-burst jitter", Some(300.0), |r| {
                periodic_trace(r, 360, 300.0, true)
            }),
            ("60s interval jitter", Some(60.0), |r| {
                periodic_trace(r, 360, 60.0, false)
            }),
            ("60s per-burst jitter", Some(60.0), |r| {
                periodic_trace(r, 360, 60.0, true)
            }),
            ("120s interval jitter", Some(120.0), |r| {
                periodic_trace(r, 360, 120.0, false)
            }),
            ("600s 1h", Some(600.0), |r| {
                periodic_trace(r, 720, 600.0, false)
            }),
            ("30s 30min", Some(30.0), |r| {
                periodic_trace(r, 360, 30.0, false)
            }),
            ("300s 10min (short)", None, |r| {
                periodic_trace(r, 120, 300.0, false)
            }),
            ("300s 14min (short)", None, |r| {
                periodic_trace(r, 170, 300.0, false)
            }),
            ("uniform 30..600", None, |r| {
                random_interval_trace(r, 360, 30.0, 600.0)
            }),
            ("uniform 60..540", None, |r| {
                random_interval_trace(r, 360, 60.0, 540.0)
            }),
            ("uniform 10..100", None, |r| {
                random_interval_trace(r, 360, 10.0, 100.0)
            }),
            ("poisson 300", None, |r| poisson_trace(r, 360, 300.0)),
            ("poisson 120", None, |r| poisson_trace(r, 360, 120.0)),
            ("poisson 30", None, |r| poisson_trace(r, 360, 30.0)),
            ("bernoulli 0.05", None, |r| bernoulli_trace(r, 360, 0.05)),
            ("bernoulli 0.2", None, |r| bernoulli_trace(r, 360, 0.2)),
            ("bernoulli 0.5", None, |r| bernoulli_trace(r, 360, 0.5)),
            ("bernoulli 0.9", None, |r| bernoulli_trace(r, 360, 0.9)),
            ("bernoulli 0.2 day", None, |r| {
                bernoulli_trace(r, 17280, 0.2)
            }),
            ("poisson 300 day", None, |r| poisson_trace(r, 17280, 300.0)),
        ];
        for (name, expected, generate) in scenarios {
            let (mut detected, mut accurate, mut strength_sum) = (0, 0, 0.0);
            let seeds = 500;
            for seed in 0..seeds {
                let series = generate(&mut Rng::new(seed));
                let result = detect_cadence(&series, STEP);
                if result.is_none() && expected.is_some() && std::env::var("VERBOSE").is_ok() {
                    let onsets = onset_steps(&series, burst_threshold(&series));
                    println!("   MISS {name} seed {seed} onsets {:?}", onsets);
                }
                if let Some(cadence) = result {
                    detected += 1;
                    if std::env::var("VERBOSE").is_ok()
                        && !expected.is_some_and(|p| within(cadence.period_seconds, p, 0.05))
                    {
                        let onsets = onset_steps(&series, burst_threshold(&series));
                        let cov = onset_coverage(&onsets, series.len());
                        let lag = (cadence.period_seconds / STEP).round() as usize;
                        let (mut e, mut h) = (0, 0);
                        for f in recurrences(&onsets, series.len(), lag) {
                            e += 1;
                            h += usize::from(f.is_some());
                        }
                        println!(
                            "   {name} seed {seed} onsets {:?} P {:.0} strength {:.2} e {e} h {h} chance {:.2}",
                            onsets,
                            cadence.period_seconds,
                            cadence.strength,
                            cov.get(tolerance_steps(lag)).copied().unwrap_or(9.0)
                        );
                    }
                    strength_sum += cadence.strength;
                    if expected.is_some_and(|p| within(cadence.period_seconds, p, 0.05)) {
                        accurate += 1;
                    }
                }
            }
            println!(
                "{name:24} detected {detected:4}/{seeds} accurate {accurate:4} mean strength {:.2}",
                strength_sum / f64::from(detected.max(1))
            );
        }
    }
}
#[cfg(test)]
mod debug_tests {
    use super::*;
    #[test]
    #[ignore = "debug"]
    fn debug_one() {
        let mut rng = 12345_u64;
        let mut unit = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let series: Vec<u64> = (0..360)
            .map(|_| {
                if unit() < 0.5 {
                    1 + (unit() * 10000.0) as u64
                } else {
                    0
                }
            })
            .collect();
        let onsets = onset_steps(&series, burst_threshold(&series));
        println!(
            "onsets {} threshold {}",
            onsets.len(),
            burst_threshold(&series)
        );
        for lag in 2..=120 {
            let r = recurrence(
                &onsets,
                series.len(),
                lag,
                &onset_coverage(&onsets, series.len()),
            );
            let (mut e, mut h) = (0, 0);
            for f in recurrences(&onsets, series.len(), lag) {
                e += 1;
                h += usize::from(f.is_some());
            }
            if r.significant || lag < 8 {
                println!(
                    "lag {lag} e {e} h {h} strength {:.2} sig {}",
                    r.strength, r.significant
                );
            }
        }
        println!("{:?}", detect_cadence(&series, 5.0));
    }
}
