//! The agent's own kernel programs, as ebpf_exporter shows its programs: which are loaded
//! (id and tag, to match with `bpftool prog show`), and what they cost, from the kernel's BPF
//! statistics (which count only while `kernel.bpf_stats_enabled` is 1).

use std::{collections::HashMap, sync::Mutex};

use prometheus::{CounterVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::register;
use crate::kernel::ProgramStats;

pub struct ProgramMetrics {
    info: IntGaugeVec,
    runs: IntCounterVec,
    run_seconds: CounterVec,
    stats_enabled: IntGauge,
    /// The kernel's cumulative counts at the last check, per program: the counters grow by
    /// the difference (a new program id starts over).
    last: Mutex<HashMap<&'static str, ProgramStats>>,
}

impl ProgramMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            info: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_program_info",
                        "Always 1 per kernel program of the agent; id and tag as `bpftool prog show` lists them.",
                    ),
                    &["program", "id", "tag"],
                )?,
            )?,
            runs: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_program_runs_total",
                        "Runs of the agent's kernel program, from the kernel's BPF statistics (counted only while kernel.bpf_stats_enabled is 1).",
                    ),
                    &["program"],
                )?,
            )?,
            run_seconds: register(
                registry,
                CounterVec::new(
                    Opts::new(
                        "bitsecure_program_run_seconds_total",
                        "CPU time the agent's kernel program ran, from the kernel's BPF statistics (counted only while kernel.bpf_stats_enabled is 1).",
                    ),
                    &["program"],
                )?,
            )?,
            stats_enabled: register(
                registry,
                IntGauge::new(
                    "bitsecure_bpf_stats_enabled",
                    "1 while the kernel's BPF statistics are on (sysctl kernel.bpf_stats_enabled): the program run counters only grow then.",
                )?,
            )?,
            last: Mutex::new(HashMap::new()),
        })
    }

    /// One look at the programs (the guard thread's, every poll interval).
    pub fn record(&self, programs: &[ProgramStats]) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        self.info.reset();
        for stats in programs {
            self.info
                .with_label_values(&[
                    stats.program,
                    &stats.id.to_string(),
                    &format!("{:016x}", stats.tag),
                ])
                .set(1);
            let (runs, run_time) = match last.get(stats.program) {
                Some(before) if before.id == stats.id => (
                    stats.runs.saturating_sub(before.runs),
                    stats.run_time.saturating_sub(before.run_time),
                ),
                _ => (stats.runs, stats.run_time),
            };
            self.runs.with_label_values(&[stats.program]).inc_by(runs);
            self.run_seconds
                .with_label_values(&[stats.program])
                .inc_by(run_time.as_secs_f64());
            last.insert(stats.program, stats.clone());
        }
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|text| text.trim() == "1");
        self.stats_enabled.set(i64::from(enabled));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counters_grow_by_the_kernels_differences_and_restart_with_a_new_program() {
        let registry = Registry::new();
        let metrics = ProgramMetrics::new(&registry).unwrap();
        let stats = |id, runs, nanos| ProgramStats {
            program: "count_egress",
            id,
            tag: 0xabc,
            runs,
            run_time: Duration::from_nanos(nanos),
        };
        metrics.record(&[stats(7, 100, 5_000)]);
        metrics.record(&[stats(7, 150, 8_000)]);
        let runs = || metrics.runs.with_label_values(&["count_egress"]).get();
        assert_eq!(runs(), 150);
        // A re-loaded program (another id) counts from its own zero.
        metrics.record(&[stats(9, 20, 1_000)]);
        assert_eq!(runs(), 170);
        let seconds = metrics
            .run_seconds
            .with_label_values(&["count_egress"])
            .get();
        assert!((seconds - 9e-6).abs() < 1e-12, "{seconds}");
        assert_eq!(
            metrics
                .info
                .with_label_values(&["count_egress", "9", "0000000000000abc"])
                .get(),
            1
        );
    }
}
