//! Error budgets: multiwindow burn rates, computed live.
//!
//! Each series (a pipeline, or one canary candidate) counts good and bad
//! events in one-second buckets over a ring as long as its longest window.
//! Every window keeps a running sum that is corrected as buckets leave it,
//! so recording an event and reading a burn rate cost the same whatever the
//! window lengths. The burn rate of a window is its error ratio divided by
//! the error budget (`1 - target`): 1 spends the budget exactly over the
//! objective's period, 14.4 spends a 30-day budget in about two days.
//!
//! Hosts of a cluster (`[shared]`) add each other's window counts
//! (`Series::set_remote`, refreshed every second by `crate::cluster`), so a
//! burn rate, and a canary's automatic rollback, sees every host's traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::manifest::{BurnWindow, Name, SloSpec};

/// Fewer events than this in a short window never trigger a canary
/// rollback: one failure out of two requests is noise, not a trend.
pub const MIN_EVENTS_FOR_ROLLBACK: u64 = 10;

/// Counts of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowCounts {
    /// Events in the window.
    pub total: u64,
    /// Bad events in the window.
    pub bad: u64,
    /// Error ratio divided by the error budget.
    pub burn_rate: f64,
}

/// One alert's state.
#[derive(Debug, Clone, Serialize)]
pub struct AlertState {
    /// The long window, in seconds.
    pub long_s: u64,
    /// The short window, in seconds.
    pub short_s: u64,
    /// The threshold both windows must reach.
    pub threshold: f64,
    /// Counts over the long window.
    pub long: WindowCounts,
    /// Counts over the short window.
    pub short: WindowCounts,
    /// Whether both windows burn at or above the threshold.
    pub firing: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    total: u64,
    bad: u64,
}

#[derive(Debug)]
struct Window {
    seconds: u64,
    total: u64,
    bad: u64,
}

/// One window's counts as shared with the other hosts of a cluster:
/// `(seconds, total, bad)`.
pub type WindowSum = (u64, u64, u64);

/// Good and bad events of one series over its windows.
#[derive(Debug)]
pub struct Series {
    spec: SloSpec,
    /// The other hosts' counts per window (`[shared]`), added to this
    /// host's own; empty when the host serves alone.
    remote: Vec<WindowSum>,
    buckets: Vec<Bucket>,
    /// The second the newest bucket belongs to (seconds since `origin`).
    head: u64,
    windows: Vec<Window>,
    origin: Instant,
}

impl Series {
    /// A series measured against `spec`.
    pub fn new(spec: SloSpec) -> Series {
        let mut seconds: Vec<u64> = spec
            .windows
            .iter()
            .flat_map(|w| [w.long_s, w.short_s])
            .collect();
        seconds.sort_unstable();
        seconds.dedup();
        let longest = seconds.last().copied().unwrap_or(1).max(1);
        Series {
            buckets: vec![Bucket::default(); longest as usize],
            head: 0,
            windows: seconds
                .into_iter()
                .map(|seconds| Window {
                    seconds,
                    total: 0,
                    bad: 0,
                })
                .collect(),
            origin: Instant::now(),
            remote: Vec::new(),
            spec,
        }
    }

    /// This host's own counts of every window, as of now.
    pub fn own_sums(&mut self) -> Vec<WindowSum> {
        let now = self.now();
        self.advance(now);
        self.windows
            .iter()
            .map(|w| (w.seconds, w.total, w.bad))
            .collect()
    }

    /// Count the other hosts' `sums` in every window from now on.
    pub fn set_remote(&mut self, sums: Vec<WindowSum>) {
        self.remote = sums;
    }

    /// The objective this series is measured against.
    pub fn spec(&self) -> &SloSpec {
        &self.spec
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Move the ring forward to second `now`, dropping what leaves each
    /// window.
    fn advance(&mut self, now: u64) {
        let ring = self.buckets.len() as u64;
        // After a long idle period everything has left every window.
        if now.saturating_sub(self.head) >= ring {
            self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
            for window in &mut self.windows {
                window.total = 0;
                window.bad = 0;
            }
            self.head = now;
            return;
        }
        while self.head < now {
            self.head += 1;
            for window in &mut self.windows {
                // The bucket that was `seconds` old is now outside.
                if let Some(leaving) = self.head.checked_sub(window.seconds) {
                    let bucket = self.buckets[(leaving % ring) as usize];
                    window.total -= bucket.total;
                    window.bad -= bucket.bad;
                }
            }
            self.buckets[(self.head % ring) as usize] = Bucket::default();
        }
    }

    /// Count one event.
    pub fn record(&mut self, bad: bool) {
        let now = self.now();
        self.record_at(now, bad);
    }

    fn record_at(&mut self, now: u64, bad: bool) {
        let now = now.max(self.head);
        self.advance(now);
        let ring = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(now % ring) as usize];
        bucket.total += 1;
        bucket.bad += u64::from(bad);
        for window in &mut self.windows {
            window.total += 1;
            window.bad += u64::from(bad);
        }
    }

    fn counts(&self, seconds: u64) -> WindowCounts {
        let Some(window) = self.windows.iter().find(|w| w.seconds == seconds) else {
            return WindowCounts::default();
        };
        let (mut total, mut bad) = (window.total, window.bad);
        for &(_, more, worse) in self.remote.iter().filter(|r| r.0 == seconds) {
            total = total.saturating_add(more);
            bad = bad.saturating_add(worse);
        }
        let bad = bad.min(total);
        let budget = 1.0 - self.spec.target;
        let burn_rate = if total == 0 {
            0.0
        } else {
            (bad as f64 / total as f64) / budget
        };
        WindowCounts {
            total,
            bad,
            burn_rate,
        }
    }

    /// Every alert's state, against its own threshold or `threshold` when
    /// given (a canary's `max_burn_rate`).
    pub fn alerts(&mut self, threshold: Option<f64>) -> Vec<AlertState> {
        let now = self.now();
        self.advance(now);
        self.spec
            .windows
            .clone()
            .iter()
            .map(|w: &BurnWindow| {
                let threshold = threshold.unwrap_or(w.burn);
                let long = self.counts(w.long_s);
                let short = self.counts(w.short_s);
                AlertState {
                    long_s: w.long_s,
                    short_s: w.short_s,
                    threshold,
                    firing: long.burn_rate >= threshold && short.burn_rate >= threshold,
                    long,
                    short,
                }
            })
            .collect()
    }
}

/// Which series an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeriesKey {
    /// A pipeline's requests.
    Pipeline(Name),
    /// The requests one canary candidate served.
    Candidate {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// The candidate's digest.
        digest: String,
    },
}

impl std::fmt::Display for SeriesKey {
    /// `pipeline:NAME` or `candidate:PIPELINE:STAGE:DIGEST`, the name
    /// hosts of a cluster share a series under.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeriesKey::Pipeline(name) => write!(f, "pipeline:{name}"),
            SeriesKey::Candidate {
                pipeline,
                stage,
                digest,
            } => write!(f, "candidate:{pipeline}:{stage}:{digest}"),
        }
    }
}

/// Every series of the process. They outlive generations: a reload does not
/// reset a pipeline's error budget.
#[derive(Default)]
pub struct Budgets {
    series: Mutex<HashMap<SeriesKey, Arc<Mutex<Series>>>>,
}

impl Budgets {
    /// The series for `key`, created measuring against `spec` if new. Its
    /// objective is the last one [`Budgets::configure`] applied: a request
    /// still running on an older generation counts against it.
    pub fn series(&self, key: SeriesKey, spec: &SloSpec) -> Arc<Mutex<Series>> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(Mutex::new(Series::new(spec.clone()))))
            .clone()
    }

    /// Measure `key` against `spec` from now on (a generation is being
    /// published). A series whose objective changed starts over.
    pub fn configure(&self, key: SeriesKey, spec: &SloSpec) {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = all.get_mut(&key) {
            let stale = entry.lock().map(|s| s.spec() != spec).unwrap_or(true);
            if stale {
                *entry = Arc::new(Mutex::new(Series::new(spec.clone())));
            }
        }
    }

    /// The series for `key` if it has recorded anything.
    pub fn existing(&self, key: &SeriesKey) -> Option<Arc<Mutex<Series>>> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Every series, for sharing its counts with the other hosts.
    pub fn all(&self) -> Vec<(SeriesKey, Arc<Mutex<Series>>)> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(key, series)| (key.clone(), series.clone()))
            .collect()
    }

    /// Forget a candidate's series (after promotion or rollback).
    pub fn forget(&self, key: &SeriesKey) {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(windows: &[(u64, u64, f64)]) -> SloSpec {
        SloSpec {
            target: 0.9,
            latency_ms: 100,
            windows: windows
                .iter()
                .map(|&(long_s, short_s, burn)| BurnWindow {
                    long_s,
                    short_s,
                    burn,
                })
                .collect(),
        }
    }

    #[test]
    fn burn_rate_is_error_ratio_over_budget() {
        let mut series = Series::new(spec(&[(60, 10, 5.0)]));
        for i in 0..100 {
            series.record(i % 4 == 0);
        }
        let alert = &series.alerts(None)[0];
        assert_eq!(alert.long.total, 100);
        assert_eq!(alert.long.bad, 25);
        // 25 % errors against a 10 % budget.
        assert!((alert.long.burn_rate - 2.5).abs() < 1e-9);
        assert!(!alert.firing);
        assert!(series.alerts(Some(2.0))[0].firing);
    }

    #[test]
    fn other_hosts_counts_join_the_windows_they_name() {
        let mut series = Series::new(spec(&[(60, 10, 5.0)]));
        for i in 0..10 {
            series.record(i < 2);
        }
        series.set_remote(vec![(60, 30, 10), (10, 10, 4), (3600, 99, 99)]);
        let alert = &series.alerts(None)[0];
        assert_eq!((alert.long.total, alert.long.bad), (40, 12));
        assert_eq!((alert.short.total, alert.short.bad), (20, 6));
        assert_eq!(series.own_sums(), vec![(10, 10, 2), (60, 10, 2)]);
        series.set_remote(Vec::new());
        assert_eq!(series.alerts(None)[0].long.total, 10);
    }

    #[test]
    fn events_leave_windows_as_time_passes() {
        let mut series = Series::new(spec(&[(4, 2, 1.0)]));
        series.record_at(0, true);
        series.record_at(1, false);
        assert_eq!(series.counts(2).total, 2);
        series.advance(2);
        assert_eq!(
            series.counts(2).total,
            1,
            "the first second left the short window"
        );
        assert_eq!(series.counts(4).total, 2);
        series.advance(4);
        assert_eq!(series.counts(4).total, 1);
        series.advance(5);
        assert_eq!(series.counts(4).total, 0);
        series.record_at(100, true);
        assert_eq!((series.counts(4).total, series.counts(4).bad), (1, 1));
    }
}
