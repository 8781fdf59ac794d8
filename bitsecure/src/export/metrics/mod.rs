//! The metric registry: one sub-struct per producer (poller, naming, baseline; traffic in
//! [`super::traffic`]), each turning that producer's report into its metrics, in a file of its
//! own. Names and labels here are a public API
//! (dashboards and alerts use them); producers never see a metric handle.

mod baseline;
mod naming;
mod poller;
mod programs;

use prometheus::{Encoder as _, IntGaugeVec, Opts, Registry, TextEncoder};

pub use self::{
    baseline::BaselineMetrics, naming::NamingMetrics, poller::PollerMetrics,
    programs::ProgramMetrics,
};
use super::history::TrackKey;
use super::{
    api::{Api, BaselineView},
    traffic::TrafficMetrics,
};
use crate::{
    baseline::service::{BaselineReport, BaselineState},
    kernel::ProgramCheck,
    poller::PollReport,
};

/// The metric every agent exports from its start: how `bitsecure check` recognises one.
pub const BUILD_INFO: &str = "bitsecure_build_info";

pub struct Metrics {
    registry: Registry,
    pub traffic: TrafficMetrics,
    pub poller: PollerMetrics,
    pub naming: NamingMetrics,
    pub baseline: BaselineMetrics,
    pub programs: ProgramMetrics,
    /// The agent's own history of its traffic (`/api/history`).
    pub history: super::history::History,
    /// The JSON view of the baseline state (served at /api/...).
    pub api: Api,
    /// A poll has completed.
    ready: std::sync::atomic::AtomicBool,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                BUILD_INFO,
                "Always 1; labels tell the agent's version, the commit it was built from, the \
                 compiler, and the SHA-256 of the eBPF object it loads.",
            ),
            &["version", "revision", "rustc", "ebpf_sha256"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("BITSECURE_REVISION"),
                env!("BITSECURE_RUSTC"),
                &crate::kernel::programs::programs_sha256(),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // exporter convention, from the prometheus crate's collector (/proc/self).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            traffic: TrafficMetrics::new(&registry)?,
            poller: PollerMetrics::new(&registry)?,
            naming: NamingMetrics::new(&registry)?,
            baseline: BaselineMetrics::new(&registry)?,
            programs: ProgramMetrics::new(&registry)?,
            history: super::history::History::default(),
            api: Api::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            registry,
        })
    }

    /// The text exposition format for /metrics.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // TextEncoder only writes UTF-8.
        let mut text = String::from_utf8_lossy(&buffer).into_owned();
        self.traffic.render(&mut text);
        Ok(text)
    }

    /// Whether the agent has polled its kernel maps at least once (`/-/ready`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One poll of the kernel maps, made at `now` (Unix seconds): its traffic, and what the
    /// poller saw on the way.
    pub fn record_poll(&self, report: &PollReport, now: u64) {
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        self.traffic.add(&report.deltas, now);
        self.record_process_history(report, now as f64);
        self.poller.record(report);
        self.naming.record_events(&report.events);
        self.naming.record_dropped(report.kernel.events_dropped);
        self.naming.names.set(report.names as i64);
    }

    /// Each process's traffic of this poll, into the history.
    fn record_process_history(&self, report: &PollReport, now: f64) {
        let mut per_process: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for delta in &report.deltas {
            let entry = per_process.entry(delta.process.as_str()).or_default();
            entry.0 += delta.traffic.sent_bytes;
            entry.1 += delta.traffic.received_bytes;
        }
        for (process, (sent, received)) in per_process {
            for (direction, bytes) in [("sent", sent), ("received", received)] {
                self.history.add_bytes(
                    TrackKey {
                        kind: "live",
                        process: process.to_owned(),
                        rule: String::new(),
                        direction,
                    },
                    bytes,
                    now,
                );
            }
        }
    }

    /// A step of the baseline service, made at `now` (Unix seconds): published as
    /// [`Metrics::publish_baseline`] does, and each rule's live and reference rates go into
    /// the history.
    pub fn publish_step(&self, report: BaselineReport, now: f64) {
        if let BaselineState::Monitoring { statuses, .. } = &report.state {
            // A process's reference: the sum of its rules' (what the overview draws beside
            // its live traffic).
            let mut per_process: std::collections::BTreeMap<&str, (f64, f64)> = Default::default();
            for status in statuses {
                let entry = per_process
                    .entry(status.labels.process.as_str())
                    .or_default();
                entry.0 += status.reference_sent.unwrap_or(0.0);
                entry.1 += status.reference_received.unwrap_or(0.0);
            }
            for (process, (sent, received)) in per_process {
                for (direction, rate) in [("sent", sent), ("received", received)] {
                    self.history.add_rate(
                        TrackKey {
                            kind: "reference",
                            process: process.to_owned(),
                            rule: String::new(),
                            direction,
                        },
                        rate,
                        now,
                    );
                }
            }
            for status in statuses {
                let labels = &status.labels;
                let port = if labels.port.is_empty() {
                    String::new()
                } else {
                    format!(":{}", labels.port)
                };
                let rule = format!("{}{port}/{}", labels.remote, labels.protocol);
                let key = |kind: &'static str, direction: &'static str| TrackKey {
                    kind,
                    process: labels.process.clone(),
                    rule: rule.clone(),
                    direction,
                };
                self.history
                    .add_bytes(key("live", "sent"), status.step_sent_bytes, now);
                self.history
                    .add_bytes(key("live", "received"), status.step_received_bytes, now);
                if let Some(rate) = status.reference_sent {
                    self.history.add_rate(key("reference", "sent"), rate, now);
                }
                if let Some(rate) = status.reference_received {
                    self.history
                        .add_rate(key("reference", "received"), rate, now);
                }
            }
        }
        self.publish_baseline(report);
    }

    /// One check that the kernel programs are attached (the guard thread's, every poll interval).
    pub fn record_attachments(&self, checks: &[ProgramCheck]) {
        self.poller.record_attachments(checks);
    }

    /// The baseline service's latest report: gauges, counters and the JSON view.
    pub fn publish_baseline(&self, report: BaselineReport) {
        // The view first: whatever a scrape shows of this report is listed by then (a test
        // that saw an unexpected counter once read the list from before it).
        let mode = report.state.name().to_owned();
        let view = match &report.state {
            BaselineState::Monitoring {
                unexpected,
                changed_executables,
                new_names,
                tunnels,
                moved_names,
                maturity,
                upgrades,
                statuses,
                ..
            } => BaselineView {
                mode,
                unexpected: unexpected.clone(),
                changed_executables: changed_executables.clone(),
                new_names: new_names.clone(),
                dns_tunnels: tunnels.clone(),
                moved_names: moved_names.clone(),
                maturity: Some(maturity.as_ref().clone()),
                learning_remaining_seconds: None,
                upgrades: upgrades.clone(),
                rules: statuses.iter().map(rule_use).collect(),
            },
            BaselineState::Learning { remaining_seconds } => BaselineView {
                mode,
                learning_remaining_seconds: Some(*remaining_seconds),
                ..BaselineView::default()
            },
            _ => BaselineView {
                mode,
                ..BaselineView::default()
            },
        };
        self.api.set_view(view);
        self.baseline.publish(&report);
    }
}

/// A rule's use, as the JSON view shows it.
fn rule_use(status: &crate::baseline::monitor::RuleStatus) -> super::api::RuleUse {
    let labels = &status.labels;
    let port = if labels.port.is_empty() {
        String::new()
    } else {
        format!(":{}", labels.port)
    };
    let app = if labels.app.is_empty() {
        String::new()
    } else {
        format!(" ({})", labels.app)
    };
    super::api::RuleUse {
        rule: format!(
            "{} → {}{port}/{}{app}",
            labels.process, labels.remote, labels.protocol
        ),
        hits: status.hits,
        last_seen: status
            .last_seen_unix
            .and_then(|unix| jiff::Timestamp::from_millisecond((unix * 1000.0) as i64).ok())
            .map(|when| when.to_string()),
        stale: status.stale,
    }
}

/// Registers a collector and hands it back.
pub(super) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
