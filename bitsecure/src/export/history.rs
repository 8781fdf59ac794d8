//! The agent's own bounded history of its traffic, so a console has graphs from the first
//! minute without a Prometheus: per process and per baseline rule, each direction, the live
//! rate and (for rules) the reference rate. 10-second points for the last hour and 1-minute
//! points for the last 24 hours, in rings that grow as data comes and stop at their size.
//!
//! Memory bound: [`MAX_TRACKS`] tracks × ([`FINE_POINTS`] + [`COARSE_POINTS`]) × 4 bytes
//! (f32 rates) ≈ 1.8 MiB at the default caps, plus the tracks' names; a unit test fills every
//! track for 25 hours and checks the allocation against it. Tracks quiet for 24 hours go.
//!
//! A clean stop saves it ([`History::save`], JSON beside the baseline) and the next start
//! loads it, so a restart (an upgrade, a reboot) does not blank the graphs; a `kill -9` loses
//! what was not saved.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

/// Width of a fine point, seconds.
pub const FINE_STEP: i64 = 10;
/// Fine points kept: one hour.
pub const FINE_POINTS: usize = 360;
/// Width of a coarse point, seconds (six fine ones).
pub const COARSE_STEP: i64 = 60;
/// Coarse points kept: 24 hours.
pub const COARSE_POINTS: usize = 1440;
/// Tracks kept; beyond, new ones are not recorded (and counted).
pub const MAX_TRACKS: usize = 256;

/// What a track follows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct TrackKey {
    /// `live` (what was sent or received) or `reference` (what the baseline expects).
    pub kind: &'static str,
    pub process: String,
    /// The rule (`remote:port/protocol`) for a rule's track; empty for a process's.
    pub rule: String,
    /// `sent` or `received`.
    pub direction: &'static str,
}

#[derive(Debug, Default)]
struct Track {
    /// Rates (bytes/s) of finished fine points, oldest first; the last one ends at
    /// `fine_end` (a fine-point index: Unix seconds / FINE_STEP).
    fine: VecDeque<f32>,
    coarse: VecDeque<f32>,
    /// The latest fine point (an index: Unix seconds / FINE_STEP), and whether it is still
    /// being filled (`open`) or already pushed.
    last: Option<i64>,
    open: bool,
    sum: f64,
    samples: u32,
    /// Live traffic sums bytes (the rate is bytes / step); a reference averages rates.
    sums_bytes: bool,
    /// Fine points of the coarse point being filled.
    coarse_sum: f64,
    coarse_points: u32,
}

impl Track {
    fn add(&mut self, point: i64, value: f64) {
        if let Some(last) = self.last {
            if point < last || (point == last && !self.open) {
                return; // late: that point is pushed already
            }
            if point > last {
                self.settle(point);
                // Points without data in between: no traffic (live) or unknown (reference).
                let gap = if self.sums_bytes { 0.0 } else { f32::NAN };
                let missing = (point - last - 1).clamp(0, (COARSE_POINTS * 6) as i64);
                for index in point - missing..point {
                    self.push_fine(index, gap);
                }
            }
        }
        self.last = Some(point);
        self.open = true;
        self.sum += value;
        self.samples += 1;
    }

    /// Pushes the open point once time has moved past it (`now_point` is the current one).
    fn settle(&mut self, now_point: i64) {
        if let (Some(last), true) = (self.last, self.open)
            && last < now_point
        {
            self.close(last);
            self.open = false;
        }
    }

    /// The fine point after the last pushed one.
    fn pushed_end(&self) -> i64 {
        match self.last {
            Some(last) if self.open => last,
            Some(last) => last + 1,
            None => 0,
        }
    }

    fn close(&mut self, point: i64) {
        let rate = if self.sums_bytes {
            self.sum / FINE_STEP as f64
        } else {
            self.sum / f64::from(self.samples.max(1))
        };
        self.push_fine(point, rate as f32);
        self.sum = 0.0;
        self.samples = 0;
    }

    fn push_fine(&mut self, point: i64, rate: f32) {
        if self.fine.len() == FINE_POINTS {
            self.fine.pop_front();
        }
        self.fine.push_back(rate);
        if !rate.is_nan() {
            self.coarse_sum += f64::from(rate);
            self.coarse_points += 1;
        }
        // The last fine point of a minute closes the coarse point.
        if (point + 1) % (COARSE_STEP / FINE_STEP) == 0 {
            let rate = if self.coarse_points == 0 {
                f32::NAN
            } else {
                (self.coarse_sum / f64::from(self.coarse_points)) as f32
            };
            if self.coarse.len() == COARSE_POINTS {
                self.coarse.pop_front();
            }
            self.coarse.push_back(rate);
            self.coarse_sum = 0.0;
            self.coarse_points = 0;
        }
    }

    fn heap_bytes(&self) -> usize {
        (self.fine.capacity() + self.coarse.capacity()) * std::mem::size_of::<f32>()
    }
}

/// A window of the history, as `/api/history` answers it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryView {
    /// Width of a point, seconds.
    pub step_seconds: i64,
    /// Unix time of the end of the last point (the start of the one being filled).
    pub end: i64,
    pub series: Vec<HistorySeries>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistorySeries {
    #[serde(flatten)]
    pub key: TrackKey,
    /// Bytes per second, oldest first, the last point ending at `end`; `null` where nothing
    /// is known (before the track began, or a reference not reported).
    pub values: Vec<Option<f32>>,
}

#[derive(Debug, Default)]
struct Store {
    tracks: BTreeMap<TrackKey, Track>,
    refused: u64,
    /// The fine point of the last sweep for quiet tracks (once a minute).
    swept: i64,
}

/// The history store (shared by the poll loop, which adds, and the HTTP server, which reads).
#[derive(Debug, Default)]
pub struct History {
    store: Mutex<Store>,
}

impl History {
    /// Live bytes of `key` at `now` (Unix seconds).
    pub fn add_bytes(&self, key: TrackKey, bytes: u64, now: f64) {
        self.add(key, bytes as f64, now, true);
    }

    /// A reference rate (bytes/s) of `key` at `now`.
    pub fn add_rate(&self, key: TrackKey, rate: f64, now: f64) {
        self.add(key, rate, now, false);
    }

    fn add(&self, key: TrackKey, value: f64, now: f64, sums_bytes: bool) {
        let Ok(mut store) = self.store.lock() else {
            return;
        };
        let point = now as i64 / FINE_STEP;
        if !store.tracks.contains_key(&key) && store.tracks.len() >= MAX_TRACKS {
            store.refused += 1;
            return;
        }
        // Both rings at their full size from the start: the memory bound is the allocation.
        let track = store.tracks.entry(key).or_insert_with(|| Track {
            sums_bytes,
            fine: VecDeque::with_capacity(FINE_POINTS),
            coarse: VecDeque::with_capacity(COARSE_POINTS),
            ..Track::default()
        });
        track.add(point, value);
        // Once a minute, tracks without any data for a day go (a process long gone, a rule
        // removed).
        if point - store.swept >= COARSE_STEP / FINE_STEP {
            store.swept = point;
            let oldest = point - (COARSE_POINTS as i64 * COARSE_STEP / FINE_STEP);
            store
                .tracks
                .retain(|_, track| track.last.is_some_and(|last| last >= oldest));
        }
    }

    /// The last `range_seconds` up to `now`: 10-second points up to an hour, else 1-minute
    /// points (at most 24 hours).
    pub fn view(&self, range_seconds: i64, now: f64) -> HistoryView {
        let fine = range_seconds <= FINE_POINTS as i64 * FINE_STEP;
        let step = if fine { FINE_STEP } else { COARSE_STEP };
        let per_coarse = COARSE_STEP / FINE_STEP;
        let wanted = (range_seconds / step).clamp(1, COARSE_POINTS as i64) as usize;
        // Points up to the current one (not finished): fine points, or whole minutes.
        let now_point = now as i64 / FINE_STEP;
        let end_index = if fine {
            now_point
        } else {
            now_point / per_coarse
        };
        let Ok(mut store) = self.store.lock() else {
            return HistoryView {
                step_seconds: step,
                end: end_index * step,
                series: Vec::new(),
            };
        };
        let series = store
            .tracks
            .iter_mut()
            .map(|(key, track)| {
                track.settle(now_point);
                // Points the track holds, then those after it up to the end (no data: 0 for
                // live traffic, unknown for a reference).
                let (points, pushed_end) = if fine {
                    (&track.fine, track.pushed_end())
                } else {
                    (&track.coarse, track.pushed_end() / per_coarse)
                };
                let after = (end_index - pushed_end).max(0) as usize;
                let filler = if track.sums_bytes { Some(0.0) } else { None };
                let mut values: Vec<Option<f32>> = points
                    .iter()
                    .map(|value| (!value.is_nan()).then_some(*value))
                    .chain(std::iter::repeat_n(filler, after))
                    .collect();
                if values.len() > wanted {
                    values.drain(..values.len() - wanted);
                } else {
                    let missing = wanted - values.len();
                    values.splice(0..0, std::iter::repeat_n(None, missing));
                }
                HistorySeries {
                    key: key.clone(),
                    values,
                }
            })
            .collect();
        HistoryView {
            step_seconds: step,
            end: end_index * step,
            series,
        }
    }

    /// Bytes the rings hold allocated (the bound in the module's doc).
    pub fn heap_bytes(&self) -> usize {
        self.store.lock().map_or(0, |store| {
            store
                .tracks
                .iter()
                .map(|(key, track)| track.heap_bytes() + key.process.len() + key.rule.len())
                .sum()
        })
    }

    /// Tracks not recorded because [`MAX_TRACKS`] were full.
    pub fn refused(&self) -> u64 {
        self.store.lock().map_or(0, |store| store.refused)
    }
}

/// The file form of the history (format 1): every track with its rings and open point.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format_version: u32,
    tracks: Vec<SavedTrack>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTrack {
    kind: String,
    process: String,
    rule: String,
    direction: String,
    sums_bytes: bool,
    last: Option<i64>,
    open: bool,
    sum: f64,
    samples: u32,
    coarse_sum: f64,
    coarse_points: u32,
    /// Rates; unknown points (NaN in memory) as -1 (JSON has no NaN).
    fine: Vec<f32>,
    coarse: Vec<f32>,
}

const SAVED_FORMAT: u32 = 1;

/// The `'static` label a saved track's text stands for.
fn known(text: &str, options: [&'static str; 2]) -> Option<&'static str> {
    options.into_iter().find(|option| *option == text)
}

impl History {
    /// The history as JSON (for [`crate::fsutil::write_atomically`]).
    pub fn to_json(&self) -> serde_json::Result<String> {
        let encode = |ring: &VecDeque<f32>| {
            ring.iter()
                .map(|rate| if rate.is_nan() { -1.0 } else { *rate })
                .collect()
        };
        let tracks = self.store.lock().map_or_else(
            |_| Vec::new(),
            |store| {
                store
                    .tracks
                    .iter()
                    .map(|(key, track)| SavedTrack {
                        kind: key.kind.to_owned(),
                        process: key.process.clone(),
                        rule: key.rule.clone(),
                        direction: key.direction.to_owned(),
                        sums_bytes: track.sums_bytes,
                        last: track.last,
                        open: track.open,
                        sum: track.sum,
                        samples: track.samples,
                        coarse_sum: track.coarse_sum,
                        coarse_points: track.coarse_points,
                        fine: encode(&track.fine),
                        coarse: encode(&track.coarse),
                    })
                    .collect()
            },
        );
        serde_json::to_string(&Saved {
            format_version: SAVED_FORMAT,
            tracks,
        })
    }

    /// Takes back a saved history (at start, before any traffic); a file of another format
    /// or with unknown labels is ignored track by track, never trusted beyond the bounds.
    pub fn restore_json(&self, text: &str) -> Result<usize, String> {
        let saved: Saved = serde_json::from_str(text).map_err(|error| error.to_string())?;
        if saved.format_version != SAVED_FORMAT {
            return Err(format!(
                "format {} (this agent reads {SAVED_FORMAT})",
                saved.format_version
            ));
        }
        let Ok(mut store) = self.store.lock() else {
            return Err("history store poisoned".into());
        };
        let decode = |rates: Vec<f32>, keep: usize| {
            let mut ring: VecDeque<f32> = VecDeque::with_capacity(keep);
            let skip = rates.len().saturating_sub(keep);
            ring.extend(
                rates
                    .into_iter()
                    .skip(skip)
                    .map(|rate| if rate < 0.0 { f32::NAN } else { rate }),
            );
            ring
        };
        for track in saved.tracks {
            if store.tracks.len() >= MAX_TRACKS {
                break;
            }
            let (Some(kind), Some(direction)) = (
                known(&track.kind, ["live", "reference"]),
                known(&track.direction, ["sent", "received"]),
            ) else {
                continue;
            };
            store.tracks.insert(
                TrackKey {
                    kind,
                    process: track.process,
                    rule: track.rule,
                    direction,
                },
                Track {
                    fine: decode(track.fine, FINE_POINTS),
                    coarse: decode(track.coarse, COARSE_POINTS),
                    last: track.last,
                    open: track.open,
                    sum: track.sum,
                    samples: track.samples,
                    sums_bytes: track.sums_bytes,
                    coarse_sum: track.coarse_sum,
                    coarse_points: track.coarse_points,
                },
            );
        }
        Ok(store.tracks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(process: &str, kind: &'static str) -> TrackKey {
        TrackKey {
            kind,
            process: process.to_owned(),
            rule: String::new(),
            direction: "sent",
        }
    }

    const T0: f64 = 1_800_000_000.0;

    #[test]
    fn live_bytes_become_rates_per_point_and_quiet_points_are_zero() {
        let history = History::default();
        // 5 s polls: two per 10-s point.
        for (second, bytes) in [(0.0, 1000), (5.0, 1000), (10.0, 500), (30.0, 300)] {
            history.add_bytes(key("xmrig", "live"), bytes, T0 + second);
        }
        let view = history.view(60, T0 + 40.0);
        assert_eq!(view.step_seconds, 10);
        let values = &view.series[0].values;
        // Six points up to the one before `now`: unknown before the track began, 200 B/s
        // (2000 B in 10 s), 50, a quiet point at 0, then 30 (the point at 30 s closed at 40 s).
        assert_eq!(
            values,
            &[None, None, Some(200.0), Some(50.0), Some(0.0), Some(30.0)]
        );
    }

    #[test]
    fn references_average_and_gaps_are_unknown() {
        let history = History::default();
        for (second, rate) in [(0.0, 100.0), (5.0, 300.0), (30.0, 50.0)] {
            history.add_rate(key("xmrig", "reference"), rate, T0 + second);
        }
        let view = history.view(40, T0 + 40.0);
        assert_eq!(view.series[0].values, [Some(200.0), None, None, Some(50.0)]);
    }

    #[test]
    fn a_day_is_kept_in_minutes_and_the_memory_stays_within_the_bound() {
        let history = History::default();
        // Every track at the cap, a poll every 10 s for 25 hours.
        for step in 0..(25 * 360) {
            let now = T0 + f64::from(step) * 10.0;
            for track in 0..MAX_TRACKS {
                history.add_bytes(key(&format!("p{track:03}"), "live"), 600, now);
            }
        }
        history.add_bytes(key("one-too-many", "live"), 1, T0 + 25.0 * 3600.0);
        assert_eq!(history.refused(), 1);
        let day = history.view(24 * 3600, T0 + 25.0 * 3600.0);
        assert_eq!(day.step_seconds, 60);
        assert_eq!(day.series.len(), MAX_TRACKS);
        assert_eq!(day.series[0].values.len(), COARSE_POINTS);
        assert!(day.series[0].values.iter().all(|v| *v == Some(60.0)));
        let bound = MAX_TRACKS * ((FINE_POINTS + COARSE_POINTS) * 4 + 64);
        let used = history.heap_bytes();
        eprintln!("history at the caps: {used} bytes (bound {bound})");
        assert!(used <= bound, "{used} bytes > {bound}");
    }

    #[test]
    fn tracks_quiet_for_a_day_go() {
        let history = History::default();
        history.add_bytes(key("gone", "live"), 100, T0);
        history.add_bytes(key("busy", "live"), 100, T0 + 25.0 * 3600.0);
        let view = history.view(3600, T0 + 25.0 * 3600.0);
        let names: Vec<&str> = view.series.iter().map(|s| s.key.process.as_str()).collect();
        assert_eq!(names, ["busy"]);
    }

    #[test]
    fn a_saved_history_comes_back_as_it_was() {
        let history = History::default();
        for (second, bytes) in [(0.0, 1000), (10.0, 500)] {
            history.add_bytes(key("xmrig", "live"), bytes, T0 + second);
        }
        history.add_rate(key("xmrig", "reference"), 80.0, T0 + 30.0);
        let json = history.to_json().unwrap();
        let back = History::default();
        assert_eq!(back.restore_json(&json), Ok(2));
        let now = T0 + 60.0;
        assert_eq!(back.view(60, now), history.view(60, now));
        // And it goes on where it stopped.
        back.add_bytes(key("xmrig", "live"), 300, now);
        assert_eq!(
            back.view(20, now + 10.0).series[0].values,
            [Some(0.0), Some(30.0)]
        );
        assert!(
            History::default()
                .restore_json("{\"format_version\": 9, \"tracks\": []}")
                .is_err()
        );
    }
}
