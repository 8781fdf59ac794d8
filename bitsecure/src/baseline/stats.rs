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
    /// Share of the bursts that recur at that period beyond what chance explains, in `0.0..=1.0`
    /// (1.0: every burst is followed by another one period later). Always at least
    /// [`CADENCE_STRENGTH_THRESHOLD`].
    pub strength: f64,
}

/// Minimum [`Cadence::strength`] for [`detect_cadence`] to call traffic periodic.
///
/// 0.75: about three quarters of the bursts (beyond chance coincidences) start one period
/// after another. A clean cycle scores about 1, bursts at random times about 0. Calibrated on
/// synthetic 30-minute traces at a 5 s step: cycles with ±10% jitter pass in 95–100% of
/// them, bursts at random times in about 1–2% (a few bursts whose intervals happen to agree).
pub const CADENCE_STRENGTH_THRESHOLD: f64 = 0.75;

/// Maximum probability that the recurrences supporting a cadence are chance (one-sided
/// binomial test against the measured chance of a window holding a burst start). It stops a
/// handful of coincidences among a few random bursts from being called periodic.
pub const CADENCE_SIGNIFICANCE: f64 = 0.01;

/// Jitter tolerated between consecutive bursts, as a fraction of the period, plus one step for
/// the sampling: a 300 s cycle sampled every 5 s (60 steps) accepts intervals of 300 ± 50 s.
pub const CADENCE_JITTER_TOLERANCE: f64 = 0.15;

/// A narrower tolerance also tried, as a fraction of the period (plus one step): a steady cycle
/// (300 ± 25 s at a 5 s step) is then significant with fewer cycles, e.g. 3 instead of 4–5.
const CADENCE_TIGHT_TOLERANCE: f64 = 0.05;

/// Minimum number of whole cycles for a cadence: that many recurrences (so at least one burst
/// more), in a recording at least that many periods long.
pub const CADENCE_MIN_CYCLES: usize = 3;

/// Shortest period considered by [`detect_cadence`], in steps (onsets are at least 2 apart).
const CADENCE_MIN_LAG_STEPS: usize = 2;

/// Lags whose tolerance window holds a burst start by chance more often than this are skipped:
/// there a recurrence proves nothing (dense traffic, or long lags with wide windows). It also
/// means periods shorter than about 6 steps cannot be told from continuous traffic.
const MAX_CHANCE: f64 = 0.55;

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

/// A rule seen in fewer bursts than this while learning, and active less than half of the
/// time, has no rhythm to miss: it is never silent (a lookup at start-up, a reconnect).
pub const MIN_BURSTS_FOR_SILENCE: u64 = 3;

/// An aperiodic rule is silent past this many times its longest quiet spell while learning
/// (the alert then waits for 1.5 times that: three times the longest gap seen).
pub const LEARNT_GAP_MARGIN: f64 = 2.0;

/// What a rule's traffic looked like over time while learning, for [`silence_ratio`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rhythm {
    /// Period of periodic traffic.
    pub cadence_seconds: Option<f64>,
    /// Bursts (runs of steps with traffic) while learning; `None` when not recorded.
    pub bursts: Option<u64>,
    /// Longest quiet spell between two bursts while learning.
    pub longest_gap_seconds: Option<f64>,
    /// Share of the learning steps with traffic.
    pub active_fraction: f64,
}

impl Default for Rhythm {
    /// Nothing known: traffic expected all the time, the default gap applies.
    fn default() -> Self {
        Self {
            cadence_seconds: None,
            bursts: None,
            longest_gap_seconds: None,
            active_fraction: 1.0,
        }
    }
}

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

/// How many bursts (runs of steps with traffic) a series has, and its longest run of quiet
/// steps between two bursts in seconds (`None` with fewer than two bursts or an invalid step).
pub fn bursts_and_longest_gap(bytes_per_step: &[u64], step_seconds: f64) -> (u64, Option<f64>) {
    let onsets = onset_steps(bytes_per_step, 0);
    let mut longest: Option<usize> = None;
    let mut quiet = 0usize;
    let mut seen_traffic = false;
    for &bytes in bytes_per_step {
        if bytes > 0 {
            if seen_traffic && quiet > 0 {
                longest = Some(longest.map_or(quiet, |l| l.max(quiet)));
            }
            seen_traffic = true;
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    let gap = longest
        .filter(|_| valid_step(step_seconds))
        .map(|steps| steps as f64 * step_seconds);
    (onsets.len() as u64, gap)
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
    /// Number of onsets followed by another one.
    hits: usize,
    /// Enough recurrences, and too many to be chance.
    significant: bool,
}

/// Half-width, in steps, of the window around `lag` where a following onset counts, for a
/// jitter tolerance of `fraction` of the lag.
fn tolerance_steps(lag: usize, fraction: f64) -> usize {
    // The extra step absorbs sampling: an interval of exactly one period can span one step
    // more or less depending on where the bursts fall within their steps.
    (lag as f64 * fraction).floor() as usize + 1
}

/// For each onset (ascending step indices) whose window `lag ± tolerance` steps later lies
/// inside the series, the onset in that window nearest to `onset + lag`, if any.
fn recurrences(
    onsets: &[usize],
    len: usize,
    lag: usize,
    tolerance: usize,
) -> impl Iterator<Item = Option<usize>> {
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

/// Scores `lag` with a jitter tolerance of `fraction` of it: the fraction of onsets followed by
/// another one within the tolerance, corrected for the fraction expected by chance
/// (`coverage`, from [`onset_coverage`]).
fn recurrence_with(
    onsets: &[usize],
    len: usize,
    lag: usize,
    fraction: f64,
    coverage: &[f64],
) -> Recurrence {
    let tolerance = tolerance_steps(lag, fraction);
    let nothing = Recurrence {
        lag,
        strength: 0.0,
        hits: 0,
        significant: false,
    };
    // Chance that a window of this width holds an onset if the lag meant nothing.
    let chance = coverage
        .get(tolerance)
        .or(coverage.last())
        .copied()
        .unwrap_or(1.0);
    if chance > MAX_CHANCE {
        return nothing;
    }
    let (mut eligible, mut hits) = (0_usize, 0_usize);
    for found in recurrences(onsets, len, lag, tolerance) {
        eligible += 1;
        hits += usize::from(found.is_some());
    }
    if eligible == 0 {
        return nothing;
    }
    let fraction_hit = hits as f64 / eligible as f64;
    Recurrence {
        lag,
        strength: ((fraction_hit - chance) / (1.0 - chance)).clamp(0.0, 1.0),
        hits,
        significant: hits >= CADENCE_MIN_CYCLES
            && binomial_tail(eligible, hits, chance) <= CADENCE_SIGNIFICANCE,
    }
}

/// Scores `lag` with the jitter tolerance and the tight one, keeping the better: a jittery
/// cycle needs the former, a steady one is proven sooner by the latter.
fn recurrence(onsets: &[usize], len: usize, lag: usize, coverage: &[f64]) -> Recurrence {
    let loose = recurrence_with(onsets, len, lag, CADENCE_JITTER_TOLERANCE, coverage);
    let tight = recurrence_with(onsets, len, lag, CADENCE_TIGHT_TOLERANCE, coverage);
    match (loose.significant, tight.significant) {
        (true, false) => loose,
        (false, true) => tight,
        _ if tight.strength > loose.strength => tight,
        _ => loose,
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
    let tolerance = tolerance_steps(lag, CADENCE_JITTER_TOLERANCE) as f64 + 0.5;
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

/// `chosen`, or the recurrence at a half, third or quarter of its lag if that is as strong.
///
/// A multiple of the period can be significant where the period itself is not (at twice the
/// lag the tight tolerance is twice as many steps wide, and fewer bursts need to fit), so a
/// divisor that recurs strongly, even without proof of its own, is the real cycle.
fn fundamental(onsets: &[usize], len: usize, coverage: &[f64], chosen: Recurrence) -> Recurrence {
    for divisor in (2..=4_usize).rev() {
        let centre = chosen.lag as f64 / divisor as f64;
        // Jitter: the divisor's best lag need not be the exact quotient.
        let low = (centre * (1.0 - CADENCE_TIGHT_TOLERANCE)).floor() as usize;
        let high = (centre * (1.0 + CADENCE_TIGHT_TOLERANCE)).ceil() as usize;
        let found = (low.max(CADENCE_MIN_LAG_STEPS)..=high)
            .map(|lag| recurrence(onsets, len, lag, coverage))
            .filter(|score| {
                score.hits >= CADENCE_MIN_CYCLES && score.strength >= CADENCE_STRENGTH_THRESHOLD
            })
            .max_by(|a, b| a.strength.total_cmp(&b.strength));
        if let Some(score) = found {
            return score;
        }
    }
    chosen
}

/// Finds the dominant period of a bursty series, if it has one.
///
/// Method, an autocorrelogram of burst starts (as for neural spike trains), which only looks at
/// when bursts start, so burst sizes and durations do not matter:
///
/// 1. A step is *active* when its bytes exceed twice the series' lower quartile: any byte for
///    sparse traffic, a burst above the floor for always-on traffic. A burst starts at an
///    active step after an inactive one.
/// 2. For every lag from 2 steps to a third of the recording, each burst start is checked for
///    another start `lag` later, give or take [`CADENCE_JITTER_TOLERANCE`] of the lag plus one
///    step (and, separately, 5% plus one step, which proves a steady cycle with fewer bursts).
///    The fraction that find one, corrected for the fraction expected by chance (how much of
///    the series lies that close to some burst start), is the strength at that lag, 0..1.
/// 3. A lag qualifies with at least [`CADENCE_MIN_CYCLES`] recurrences, a binomial tail
///    probability ≤ [`CADENCE_SIGNIFICANCE`], and a strength ≥
///    [`CADENCE_STRENGTH_THRESHOLD`]. The shortest qualifying lag scoring at least 85% of the
///    best one wins, because multiples of a period recur as well as the period itself; and a
///    half, third or quarter of it that recurs as strongly (if not significantly) wins over it.
/// 4. The period is the least-squares slope through the longest chain of burst starts on that
///    cycle (jitter averages out; missed bursts are allowed), which must hold more than
///    [`CADENCE_MIN_CYCLES`] bursts and fit that many times in the recording.
///
/// `None` for silence, constant or merely noisy always-on traffic, bursts at random times, a
/// recording shorter than [`CADENCE_MIN_CYCLES`] periods, or an invalid step. Extra bursts at
/// random times between the periodic ones lower the strength roughly in proportion to their
/// share of all bursts, so heavily mixed traffic is reported as aperiodic.
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
    // CADENCE_MIN_CYCLES recurrences need one burst more.
    if onsets.len() <= CADENCE_MIN_CYCLES {
        return None;
    }
    let coverage = onset_coverage(&onsets, len);
    let candidates: Vec<Recurrence> = (CADENCE_MIN_LAG_STEPS..=max_lag)
        .map(|lag| recurrence(&onsets, len, lag, &coverage))
        .filter(|score| score.significant && score.strength >= CADENCE_STRENGTH_THRESHOLD)
        .collect();
    let best = candidates
        .iter()
        .map(|score| score.strength)
        .fold(0.0, f64::max);
    let chosen = candidates
        .iter()
        .find(|score| score.strength >= FUNDAMENTAL_PREFERENCE * best)?;
    let chosen = fundamental(&onsets, len, &coverage, *chosen);
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

/// The gap between packets that is still normal, in seconds, or `None` for rare traffic that
/// has no gap to exceed: one cadence (never under one step) for periodic traffic; nothing for
/// traffic seen in fewer than [`MIN_BURSTS_FOR_SILENCE`] bursts and active less than half of
/// the time; else the default `max(DEFAULT_GAP_STEPS × step, DEFAULT_GAP_MIN_SECONDS)`, or
/// [`LEARNT_GAP_MARGIN`] times the longest quiet spell seen while learning when that is longer.
pub fn expected_gap_seconds(rhythm: &Rhythm, step_seconds: f64) -> Option<f64> {
    if let Some(cadence) = rhythm.cadence_seconds.filter(|&c| valid_duration(c)) {
        return Some(cadence.max(step_seconds));
    }
    if rhythm
        .bursts
        .is_some_and(|bursts| bursts < MIN_BURSTS_FOR_SILENCE)
        && rhythm.active_fraction < 0.5
    {
        return None;
    }
    let default = (DEFAULT_GAP_STEPS * step_seconds).max(DEFAULT_GAP_MIN_SECONDS);
    let learnt = rhythm
        .longest_gap_seconds
        .filter(|&gap| valid_duration(gap))
        .map_or(0.0, |gap| gap * LEARNT_GAP_MARGIN);
    Some(default.max(learnt))
}

/// How long a rule has been silent compared with normal: `seconds_since_last_traffic` divided
/// by the expected gap ([`expected_gap_seconds`]).
///
/// Above 1.0 the rule has been quiet for longer than a whole cycle, or than it ever was while
/// learning (a crashed miner, a dead pool). A cadence that is not a positive number counts as
/// none. Rare traffic (no expected gap), a negative or NaN silence, or an invalid step give
/// 0.0.
pub fn silence_ratio(seconds_since_last_traffic: f64, rhythm: &Rhythm, step_seconds: f64) -> f64 {
    if !valid_step(step_seconds)
        || seconds_since_last_traffic.is_nan()
        || seconds_since_last_traffic <= 0.0
    {
        return 0.0;
    }
    expected_gap_seconds(rhythm, step_seconds).map_or(0.0, |gap| seconds_since_last_traffic / gap)
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

        /// Uniform in low..=high.
        fn int(&mut self, low: u64, high: u64) -> u64 {
            low + self.next_u64() % (high - low + 1)
        }
    }

    const STEP: f64 = 5.0;
    /// 30 minutes at 5 s.
    const HALF_HOUR: usize = 360;

    /// A series of `len` steps of `step` seconds with, for each `(start_seconds, steps, bytes)`,
    /// `bytes` in each of `steps` steps from the one containing `start_seconds`.
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

    /// Jitter models for periodic bursts.
    #[derive(Clone, Copy)]
    enum Jitter {
        /// Each interval is `period ± fraction × period` (a sleep loop): jitter accumulates.
        Interval(f64),
        /// Each burst is `± fraction × period` off its slot on an exact grid (a cron job):
        /// intervals vary by up to twice that.
        Slot(f64),
    }

    /// Burst start times, in seconds, within `duration` from a random phase.
    fn periodic_starts(rng: &mut Rng, duration: f64, period: f64, jitter: Jitter) -> Vec<f64> {
        let phase = rng.range(0.0, period);
        let (mut starts, mut time, mut slot) = (Vec::new(), phase, 0.0);
        while time < duration {
            starts.push(time);
            match jitter {
                Jitter::Interval(fraction) => {
                    time += period * (1.0 + rng.range(-fraction, fraction))
                }
                Jitter::Slot(fraction) => {
                    slot += 1.0;
                    time = phase + period * (slot + rng.range(-fraction, fraction));
                }
            }
        }
        starts
    }

    /// Bursts of 1–3 steps of 500 B to 50 kB per step at `starts`.
    fn random_bursts(rng: &mut Rng, starts: &[f64]) -> Vec<(f64, usize, u64)> {
        starts
            .iter()
            .map(|&start| (start, rng.int(1, 3) as usize, rng.int(500, 50_000)))
            .collect()
    }

    /// Mean interval between `starts` in seconds, computed directly from the generator.
    fn mean_interval(starts: &[f64]) -> f64 {
        match (starts.first(), starts.last()) {
            (Some(first), Some(last)) if starts.len() > 1 => {
                (last - first) / (starts.len() - 1) as f64
            }
            _ => f64::NAN,
        }
    }

    /// Periodic trace of `len` steps, and the realised mean interval of its bursts.
    fn periodic_trace(seed: u64, len: usize, period: f64, jitter: Jitter) -> (Vec<u64>, f64) {
        let mut rng = Rng::new(seed);
        let starts = periodic_starts(&mut rng, len as f64 * STEP, period, jitter);
        let bursts = random_bursts(&mut rng, &starts);
        (trace(len, STEP, &bursts), mean_interval(&starts))
    }

    /// Bursts at intervals drawn uniformly from `low..high` seconds.
    fn random_interval_trace(seed: u64, len: usize, low: f64, high: f64) -> Vec<u64> {
        let mut rng = Rng::new(seed);
        let mut starts = Vec::new();
        let mut time = rng.range(0.0, high);
        while time < len as f64 * STEP {
            starts.push(time);
            time += rng.range(low, high);
        }
        let bursts = random_bursts(&mut rng, &starts);
        trace(len, STEP, &bursts)
    }

    /// Bursts at exponentially distributed intervals (a Poisson process) of mean `mean` s.
    fn poisson_trace(seed: u64, len: usize, mean: f64) -> Vec<u64> {
        let mut rng = Rng::new(seed);
        let mut starts = Vec::new();
        let mut time = -mean * (1.0 - rng.unit()).ln();
        while time < len as f64 * STEP {
            starts.push(time);
            time += -mean * (1.0 - rng.unit()).ln();
        }
        let bursts = random_bursts(&mut rng, &starts);
        trace(len, STEP, &bursts)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{actual} != {expected}"
        );
    }

    fn assert_period(cadence: Option<Cadence>, expected: f64, relative: f64) {
        let cadence = cadence.expect("a cadence");
        assert!(
            (cadence.period_seconds - expected).abs() <= expected * relative,
            "period {} s, expected {expected} s ± {}%",
            cadence.period_seconds,
            relative * 100.0
        );
        assert!(
            (CADENCE_STRENGTH_THRESHOLD..=1.0).contains(&cadence.strength),
            "strength {}",
            cadence.strength
        );
    }

    // --- rate_stats, active_fraction ---

    #[test]
    fn rate_stats_small_series() {
        // Rates 0, 2, 4, 6 B/s: mean 3; p95 is rank ceil(0.95 × 4) = 4, the largest.
        let stats = rate_stats(&[0, 10, 20, 30], 5.0);
        assert_eq!(
            stats,
            RateStats {
                mean: 3.0,
                p95: 6.0,
                max: 6.0
            }
        );
    }

    #[test]
    fn rate_stats_p95_is_nearest_rank() {
        // 1..=20 B at 2 s: rates 0.5..=10; rank ceil(0.95 × 20) = 19 → 19 B / 2 s.
        let series: Vec<u64> = (1..=20).rev().collect(); // Order must not matter.
        let stats = rate_stats(&series, 2.0);
        assert_close(stats.mean, 210.0 / 20.0 / 2.0);
        assert_close(stats.p95, 9.5);
        assert_close(stats.max, 10.0);
        // 100 steps: rank 95.
        let series: Vec<u64> = (1..=100).collect();
        assert_close(rate_stats(&series, 1.0).p95, 95.0);
    }

    #[test]
    fn rate_stats_single_empty_and_invalid() {
        assert_eq!(
            rate_stats(&[50], 5.0),
            RateStats {
                mean: 10.0,
                p95: 10.0,
                max: 10.0
            }
        );
        assert_eq!(rate_stats(&[], 5.0), RateStats::default());
        for step in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert_eq!(rate_stats(&[1, 2, 3], step), RateStats::default());
        }
    }

    #[test]
    fn rate_stats_huge_counts_do_not_overflow() {
        let stats = rate_stats(&[u64::MAX, u64::MAX], 1.0);
        assert_close(stats.mean, u64::MAX as f64);
        assert_close(stats.max, u64::MAX as f64);
    }

    #[test]
    fn active_fraction_counts_steps_with_traffic() {
        assert_close(active_fraction(&[0, 1, 0, 300]), 0.5);
        assert_close(active_fraction(&[7; 9]), 1.0);
        assert_close(active_fraction(&[0; 9]), 0.0);
        assert_close(active_fraction(&[]), 0.0);
    }

    // --- burst_onsets, observed_cadence ---

    #[test]
    fn burst_onsets_are_starts_after_silence() {
        assert_eq!(
            burst_onsets(&[5, 5, 0, 0, 7, 0, 3, 3], 5.0),
            vec![0.0, 20.0, 30.0]
        );
        assert_eq!(burst_onsets(&[0, 0, 9, 9, 9], 2.0), vec![4.0]);
        assert!(burst_onsets(&[0, 0, 0], 5.0).is_empty());
        assert!(burst_onsets(&[], 5.0).is_empty());
        assert!(burst_onsets(&[1, 0, 1], 0.0).is_empty());
    }

    #[test]
    fn observed_cadence_is_median_interval() {
        // Intervals 290, 320, 290, 315: median (290 + 315) / 2.
        let onsets = [0.0, 290.0, 610.0, 900.0, 1215.0];
        assert_eq!(observed_cadence(&onsets), Some(302.5));
        // Unsorted, with a duplicate and non-finite values: same onsets.
        let messy = [
            610.0,
            f64::NAN,
            0.0,
            1215.0,
            290.0,
            900.0,
            290.0,
            f64::INFINITY,
        ];
        assert_eq!(observed_cadence(&messy), Some(302.5));
        // Odd count: 60, 66, 55 → 60.
        assert_eq!(observed_cadence(&[10.0, 70.0, 136.0, 191.0]), Some(60.0));
    }

    #[test]
    fn observed_cadence_needs_three_onsets() {
        assert_eq!(observed_cadence(&[]), None);
        assert_eq!(observed_cadence(&[5.0]), None);
        assert_eq!(observed_cadence(&[5.0, 305.0]), None);
        assert_eq!(observed_cadence(&[5.0, 305.0, 305.0]), None);
        assert_eq!(observed_cadence(&[5.0, 305.0, 605.0]), Some(300.0));
    }

    #[test]
    fn observed_cadence_of_jittered_periodic_trace() {
        let (series, realised) = periodic_trace(7, HALF_HOUR, 300.0, Jitter::Interval(0.1));
        let cadence = observed_cadence(&burst_onsets(&series, STEP)).expect("cadence");
        assert!(
            (cadence - 300.0).abs() <= 30.0 + STEP,
            "{cadence} (realised {realised})"
        );
    }

    // --- detect_cadence ---

    #[test]
    fn cadence_300s_with_interval_jitter() {
        let (series, realised) = periodic_trace(1, HALF_HOUR, 300.0, Jitter::Interval(0.1));
        let cadence = detect_cadence(&series, STEP);
        assert_period(cadence, 300.0, 0.05);
        // And close to what the generator actually produced, to within about a step.
        assert_period(cadence, realised, 0.02);
    }

    #[test]
    fn cadence_300s_with_slot_jitter() {
        let (series, _) = periodic_trace(2, HALF_HOUR, 300.0, Jitter::Slot(0.1));
        assert_period(detect_cadence(&series, STEP), 300.0, 0.05);
    }

    #[test]
    fn cadence_of_nine_cycles_with_two_bursts_a_step_or_two_off() {
        // A loaded machine polls late now and then: a burst lands in a neighbouring step. (Two
        // neighbouring bursts moved apart, one 2 steps early and the next 2 late, can pull the
        // fitted period off by more than 10%.)
        for first in 0..10 {
            for (moved, by) in [(2, 2), (5, -2), (7, 1)] {
                for (also_moved, also_by) in [(0, -1), (4, 2), (8, -2)] {
                    let mut series = vec![0_u64; 90];
                    for cycle in 0..9_i64 {
                        let shift = if cycle == moved {
                            by
                        } else if cycle == also_moved {
                            also_by
                        } else {
                            0
                        };
                        if let Ok(step) = usize::try_from(first + cycle * 10 + shift)
                            && let Some(bytes) = series.get_mut(step)
                        {
                            *bytes += 600;
                        }
                    }
                    let cadence = detect_cadence(&series, 0.5);
                    assert_period(cadence, 5.0, 0.1);
                }
            }
        }
    }

    #[test]
    fn cadence_ignores_burst_sizes() {
        // Alternating 3 × 60 kB and 1 × 2 kB bursts: the big ones alone recur every 600 s,
        // but every burst starts a 300 s cycle.
        let mut rng = Rng::new(3);
        let starts = periodic_starts(&mut rng, 1800.0, 300.0, Jitter::Interval(0.05));
        let bursts: Vec<(f64, usize, u64)> = starts
            .iter()
            .enumerate()
            .map(|(index, &start)| {
                if index % 2 == 0 {
                    (start, 3, 60_000)
                } else {
                    (start, 1, 2_000)
                }
            })
            .collect();
        let series = trace(HALF_HOUR, STEP, &bursts);
        assert_period(detect_cadence(&series, STEP), 300.0, 0.05);
    }

    #[test]
    fn cadence_60s_reporter() {
        let mut rng = Rng::new(4);
        let starts = periodic_starts(&mut rng, 1800.0, 60.0, Jitter::Interval(0.1));
        let bursts: Vec<(f64, usize, u64)> = starts.iter().map(|&s| (s, 1, 1_200)).collect();
        let series = trace(HALF_HOUR, STEP, &bursts);
        let cadence = detect_cadence(&series, STEP);
        assert_period(cadence, 60.0, 0.05);
        assert_period(cadence, mean_interval(&starts), 0.02);
    }

    #[test]
    fn cadence_prefers_fundamental_over_multiples() {
        // Two hours of a 300 s cycle: 600, 900... s recur as well, but 300 s is the cycle.
        let (series, _) = periodic_trace(5, 1440, 300.0, Jitter::Slot(0.1));
        assert_period(detect_cadence(&series, STEP), 300.0, 0.05);
    }

    #[test]
    fn cadence_of_bursts_above_an_always_on_floor() {
        let (bursts, _) = periodic_trace(6, HALF_HOUR, 300.0, Jitter::Interval(0.1));
        let mut rng = Rng::new(60);
        let series: Vec<u64> = bursts.iter().map(|&b| b + rng.int(800, 1_200)).collect();
        assert_period(detect_cadence(&series, STEP), 300.0, 0.05);
    }

    #[test]
    fn cadence_of_multi_part_bursts() {
        // Each cycle: 4 steps, a pause, 2 steps, a pause, 1 step: three starts per cycle.
        let mut rng = Rng::new(8);
        let mut bursts = Vec::new();
        for start in periodic_starts(&mut rng, 1800.0, 300.0, Jitter::Interval(0.1)) {
            bursts.extend([
                (start, 4, 9_000),
                (start + 30.0, 2, 800),
                (start + 50.0, 1, 300),
            ]);
        }
        let series = trace(HALF_HOUR, STEP, &bursts);
        assert_period(detect_cadence(&series, STEP), 300.0, 0.05);
    }

    #[test]
    fn no_cadence_for_random_bursts() {
        assert_eq!(
            detect_cadence(&random_interval_trace(11, HALF_HOUR, 30.0, 600.0), STEP),
            None
        );
        assert_eq!(
            detect_cadence(&poisson_trace(12, HALF_HOUR, 120.0), STEP),
            None
        );
        // Each step independently active, sparse and dense.
        for p in [0.05, 0.3, 0.7] {
            let mut rng = Rng::new(13);
            let series: Vec<u64> = (0..HALF_HOUR)
                .map(|_| if rng.unit() < p { rng.int(1, 9_000) } else { 0 })
                .collect();
            assert_eq!(detect_cadence(&series, STEP), None, "p = {p}");
        }
    }

    #[test]
    fn no_cadence_for_always_on_traffic() {
        assert_eq!(detect_cadence(&[4_000; HALF_HOUR], STEP), None);
        let mut rng = Rng::new(14);
        let noisy: Vec<u64> = (0..HALF_HOUR).map(|_| rng.int(3_000, 5_000)).collect();
        assert_eq!(detect_cadence(&noisy, STEP), None);
        // Exponentially distributed sizes: often more than twice the lower quartile.
        let heavy: Vec<u64> = (0..HALF_HOUR)
            .map(|_| (-1_000.0 * (1.0 - rng.unit()).ln()) as u64)
            .collect();
        assert_eq!(detect_cadence(&heavy, STEP), None);
    }

    #[test]
    fn no_cadence_for_silence_or_bad_input() {
        assert_eq!(detect_cadence(&[0; HALF_HOUR], STEP), None);
        assert_eq!(detect_cadence(&[], STEP), None);
        assert_eq!(detect_cadence(&[1, 0, 1, 0, 1], STEP), None);
        let (series, _) = periodic_trace(1, HALF_HOUR, 300.0, Jitter::Interval(0.1));
        for step in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert_eq!(detect_cadence(&series, step), None);
        }
    }

    #[test]
    fn no_cadence_from_fewer_than_three_cycles() {
        // 10 minutes (2 cycles) and 14 minutes (under 3) of a clean 300 s cycle.
        for len in [120, 168] {
            let (series, _) = periodic_trace(9, len, 300.0, Jitter::Interval(0.0));
            assert_eq!(detect_cadence(&series, STEP), None, "{len} steps");
        }
        // Exactly four bursts 300 s apart in 20 minutes is three cycles: enough.
        let bursts: Vec<(f64, usize, u64)> = [0.0, 300.0, 600.0, 900.0]
            .iter()
            .map(|&s| (s, 2, 5_000))
            .collect();
        assert_period(
            detect_cadence(&trace(240, STEP, &bursts), STEP),
            300.0,
            0.01,
        );
    }

    /// Calibration guard over many seeds: periodic traces are found at their realised period,
    /// random ones rarely pass. (Over 1000 seeds: every interval-jitter trace found; 2.2% of
    /// the uniform-interval and 1.2% of the Poisson traces pass, typically 4–5 bursts whose
    /// intervals happen to agree within 5–15%, which no test on so few bursts can refute.)
    #[test]
    fn cadence_over_many_seeds() {
        let seeds = 0..100;
        let mut found = 0;
        for seed in seeds.clone() {
            let (series, realised) = periodic_trace(seed, HALF_HOUR, 300.0, Jitter::Interval(0.1));
            if let Some(cadence) = detect_cadence(&series, STEP) {
                found += 1;
                assert!(
                    (cadence.period_seconds - realised).abs() <= 0.05 * realised,
                    "seed {seed}: {} s, realised {realised} s",
                    cadence.period_seconds
                );
            }
        }
        assert_eq!(found, 100, "periodic traces with a cadence");
        let uniform = seeds
            .clone()
            .filter(|&seed| {
                detect_cadence(&random_interval_trace(seed, HALF_HOUR, 30.0, 600.0), STEP).is_some()
            })
            .count();
        assert!(
            uniform <= 5,
            "{uniform} uniform-interval traces with a cadence"
        );
        let poisson = seeds
            .filter(|&seed| detect_cadence(&poisson_trace(seed, HALF_HOUR, 300.0), STEP).is_some())
            .count();
        assert!(poisson <= 5, "{poisson} Poisson traces with a cadence");
    }

    // --- profile ---

    #[test]
    fn profile_puts_the_burst_in_its_phase_bin() {
        // 1000 B in the first step of every 300 s cycle, plus 500 B at 150 s.
        let series: Vec<u64> = (0..HALF_HOUR)
            .map(|step| match step % 60 {
                0 => 1_000,
                30 => 500,
                _ => 0,
            })
            .collect();
        let bins = profile(&series, STEP, 300.0, 60);
        assert_eq!(bins.len(), 60);
        for (index, &rate) in bins.iter().enumerate() {
            let expected = match index {
                0 => 200.0,
                30 => 100.0,
                _ => 0.0,
            };
            assert_close(rate, expected);
        }
        // Every bin holds 6 steps, so the mean of the bins is the mean rate.
        let mean = bins.iter().sum::<f64>() / bins.len() as f64;
        assert_close(mean, 1_500.0 * 6.0 / 360.0 / STEP);
        assert_close(mean, rate_stats(&series, STEP).mean);
        // Coarser: 6 bins of 50 s = 10 steps, so bin 0 averages 1000 B over 10 steps.
        let coarse = profile(&series, STEP, 300.0, 6);
        assert_eq!(coarse.len(), 6);
        assert_close(coarse.first().copied().unwrap_or(f64::NAN), 20.0);
        assert_close(coarse.get(3).copied().unwrap_or(f64::NAN), 10.0);
    }

    #[test]
    fn profile_of_detected_cadence_is_consistent_with_rate_stats() {
        let (series, _) = periodic_trace(1, HALF_HOUR, 300.0, Jitter::Interval(0.1));
        let period = detect_cadence(&series, STEP)
            .expect("cadence")
            .period_seconds;
        let bins = profile(&series, STEP, period, 30);
        // Bins hold different numbers of steps here; weighting each by its count gives back
        // the mean exactly, and the busiest bin is at least the mean.
        let counts: Vec<f64> = (0..30)
            .map(|bin| {
                (0..HALF_HOUR)
                    .filter(|&step| {
                        let phase = (step as f64 * STEP).rem_euclid(period) / period;
                        ((phase * 30.0 + 1e-9).floor() as usize).min(29) == bin
                    })
                    .count() as f64
            })
            .collect();
        let weighted: f64 = bins
            .iter()
            .zip(&counts)
            .map(|(rate, count)| rate * count)
            .sum();
        let stats = rate_stats(&series, STEP);
        assert_close(weighted / HALF_HOUR as f64, stats.mean);
        assert!(bins.iter().copied().fold(0.0, f64::max) >= stats.mean);
    }

    #[test]
    fn profile_edge_cases() {
        assert!(profile(&[1, 2, 3], STEP, 300.0, 0).is_empty());
        assert_eq!(profile(&[], STEP, 300.0, 4), vec![0.0; 4]);
        assert_eq!(profile(&[1, 2, 3], 0.0, 300.0, 4), vec![0.0; 4]);
        assert_eq!(profile(&[1, 2, 3], STEP, f64::NAN, 4), vec![0.0; 4]);
        assert_eq!(profile(&[1, 2, 3], STEP, -300.0, 4), vec![0.0; 4]);
        assert_eq!(
            profile(&[1], STEP, 300.0, usize::MAX).len(),
            MAX_PROFILE_BINS
        );
        // More bins than steps per cycle: the empty ones are 0.
        assert_eq!(profile(&[10, 20], STEP, 10.0, 4), vec![2.0, 0.0, 4.0, 0.0]);
        // Fractional steps land in the right bins despite rounding: 0.1 s steps, 1 s period.
        let bins = profile(&[1; 10], 0.1, 1.0, 10);
        assert!(
            bins.iter().all(|&rate| (rate - 10.0).abs() < 1e-9),
            "{bins:?}"
        );
    }

    // --- deviation_ratio ---

    #[test]
    fn deviation_ratio_against_p95() {
        let normal = RateStats {
            mean: 100.0,
            p95: 200.0,
            max: 500.0,
        };
        assert_close(deviation_ratio(200.0, &normal), 1.0);
        assert_close(deviation_ratio(100.0, &normal), 0.5);
        assert_close(deviation_ratio(700.0, &normal), 3.5);
        assert_close(deviation_ratio(0.0, &normal), 0.0);
        assert_close(deviation_ratio(-3.0, &normal), 0.0);
        assert_close(deviation_ratio(f64::NAN, &normal), 0.0);
    }

    #[test]
    fn deviation_ratio_floors() {
        // Idle 95% of the time: p95 is 0, so the mean is the reference.
        let sparse = RateStats {
            mean: 2.0,
            p95: 0.0,
            max: 100.0,
        };
        assert_close(deviation_ratio(4.0, &sparse), 2.0);
        // Silent during the recording: 1 B/s floor.
        assert_close(deviation_ratio(5.0, &RateStats::default()), 5.0);
        let tiny = RateStats {
            mean: 0.01,
            p95: 0.02,
            max: 0.1,
        };
        assert_close(deviation_ratio(0.5, &tiny), 0.5);
        let corrupt = RateStats {
            mean: f64::NAN,
            p95: f64::NAN,
            max: f64::NAN,
        };
        assert_close(deviation_ratio(3.0, &corrupt), 3.0);
    }

    // --- silence_ratio, window_seconds ---

    fn periodic(cadence: f64) -> Rhythm {
        Rhythm {
            cadence_seconds: Some(cadence),
            ..Rhythm::default()
        }
    }

    #[test]
    fn silence_ratio_with_cadence() {
        assert_close(silence_ratio(150.0, &periodic(300.0), STEP), 0.5);
        assert_close(silence_ratio(900.0, &periodic(300.0), STEP), 3.0);
        assert_close(silence_ratio(0.0, &periodic(300.0), STEP), 0.0);
        // A cadence shorter than a step is measured against one step.
        assert_close(silence_ratio(10.0, &periodic(2.0), STEP), 2.0);
    }

    #[test]
    fn silence_ratio_without_cadence() {
        // max(10 × 5 s, 60 s) = 60 s.
        assert_close(silence_ratio(120.0, &Rhythm::default(), STEP), 2.0);
        // max(10 × 10 s, 60 s) = 100 s.
        assert_close(silence_ratio(50.0, &Rhythm::default(), 10.0), 0.5);
        // Unusable cadences count as none.
        for cadence in [0.0, -300.0, f64::NAN, f64::INFINITY] {
            assert_close(silence_ratio(120.0, &periodic(cadence), STEP), 2.0);
        }
    }

    #[test]
    fn silence_ratio_bad_input_is_neutral() {
        assert_close(silence_ratio(-1.0, &periodic(300.0), STEP), 0.0);
        assert_close(silence_ratio(f64::NAN, &Rhythm::default(), STEP), 0.0);
        assert_close(silence_ratio(600.0, &periodic(300.0), 0.0), 0.0);
        assert_close(silence_ratio(600.0, &Rhythm::default(), f64::NAN), 0.0);
    }

    #[test]
    fn rare_traffic_is_never_silent_and_irregular_traffic_gets_its_own_gap() {
        // A lookup at start-up and one at a reconnect: two bursts in a mostly quiet learning.
        let rare = Rhythm {
            bursts: Some(2),
            longest_gap_seconds: Some(900.0),
            active_fraction: 0.01,
            cadence_seconds: None,
        };
        assert_eq!(expected_gap_seconds(&rare, STEP), None);
        assert_close(silence_ratio(86_400.0, &rare, STEP), 0.0);
        // A connection that stayed up: one burst, but active all the time: the default gap.
        let steady = Rhythm {
            bursts: Some(1),
            longest_gap_seconds: None,
            active_fraction: 1.0,
            cadence_seconds: None,
        };
        assert_close(silence_ratio(120.0, &steady, STEP), 2.0);
        // Jobs at random times, quiet for up to 200 s while learning: silent past 400 s.
        let irregular = Rhythm {
            bursts: Some(40),
            longest_gap_seconds: Some(200.0),
            active_fraction: 0.2,
            cadence_seconds: None,
        };
        assert_eq!(expected_gap_seconds(&irregular, STEP), Some(400.0));
        assert_close(silence_ratio(600.0, &irregular, STEP), 1.5);
        // Gaps shorter than the default keep the default.
        let busy = Rhythm {
            longest_gap_seconds: Some(10.0),
            ..irregular
        };
        assert_eq!(expected_gap_seconds(&busy, STEP), Some(60.0));
    }

    #[test]
    fn bursts_and_their_longest_gap() {
        assert_eq!(
            bursts_and_longest_gap(&[5, 5, 0, 0, 7, 0, 3, 0, 0, 0], STEP),
            (3, Some(2.0 * STEP))
        );
        // Quiet before the first and after the last burst is not a gap between bursts.
        assert_eq!(bursts_and_longest_gap(&[0, 0, 4, 4, 0, 0], STEP), (1, None));
        assert_eq!(bursts_and_longest_gap(&[0; 4], STEP), (0, None));
        assert_eq!(bursts_and_longest_gap(&[1, 0, 1], f64::NAN), (2, None));
    }

    #[test]
    fn window_is_one_cadence_or_default() {
        assert_close(window_seconds(Some(300.0), STEP), 300.0);
        assert_close(window_seconds(Some(2.0), STEP), STEP);
        // max(6 × 5 s, 30 s) = 30 s; max(6 × 10 s, 30 s) = 60 s.
        assert_close(window_seconds(None, STEP), 30.0);
        assert_close(window_seconds(None, 10.0), 60.0);
        assert_close(window_seconds(Some(f64::NAN), STEP), 30.0);
        assert_close(window_seconds(Some(-1.0), 10.0), 60.0);
        assert_close(window_seconds(None, -5.0), 30.0);
        assert_close(window_seconds(Some(300.0), f64::NAN), 300.0);
    }
}
