//! The metric registry: one sub-struct per producer (poller, naming, baseline, traffic), each
//! turning that producer's report into its metrics. Names and labels here are a public API
//! (dashboards and alerts use them); producers never see a metric handle.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::{
    api::{Api, BaselineView},
    traffic::TrafficMetrics,
};
use crate::{
    baseline::{
        monitor::RuleStatus,
        service::{BaselineReport, BaselineState},
    },
    flow::{SeriesKey, port_label},
    naming::EventCounts,
    poller::{KernelStats, PollReport, identity::ProcessIdentity},
};

/// The metric every agent exports from its start: how `bitsecure check` recognises one.
pub const BUILD_INFO: &str = "bitsecure_build_info";

pub struct Metrics {
    registry: Registry,
    pub traffic: TrafficMetrics,
    pub poller: PollerMetrics,
    pub naming: NamingMetrics,
    pub baseline: BaselineMetrics,
    /// The JSON view of the baseline state (served at /api/...).
    pub api: Api,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1; labels tell the agent's version."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        Ok(Self {
            traffic: TrafficMetrics::new(&registry)?,
            poller: PollerMetrics::new(&registry)?,
            naming: NamingMetrics::new(&registry)?,
            baseline: BaselineMetrics::new(&registry)?,
            api: Api::default(),
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

    /// One poll of the kernel maps: its traffic, and what the poller saw on the way.
    pub fn record_poll(&self, report: &PollReport) {
        self.traffic.add(&report.deltas);
        self.poller.record(report);
        self.naming.record_events(&report.events);
        self.naming.record_dropped(report.kernel.events_dropped);
        self.naming.names.set(report.names as i64);
    }

    /// The baseline service's latest report: gauges, counters and the JSON view.
    pub fn publish_baseline(&self, report: BaselineReport) {
        self.baseline.publish(&report);
        let BaselineReport { state, .. } = report;
        let mode = state.name().to_owned();
        let unexpected = match state {
            BaselineState::Monitoring { unexpected, .. } => unexpected,
            _ => Vec::new(),
        };
        self.api.set_view(BaselineView { mode, unexpected });
    }

    /// The JSON view last published.
    pub fn baseline_view(&self) -> BaselineView {
        self.api.view()
    }
}

/// Registers a collector and hands it back.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The poller's view of the kernel: maps, processes, attribution, its own health.
pub struct PollerMetrics {
    pub process_info: IntGaugeVec,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub map_insert_failures: IntCounterVec,
    pub malformed_packets: IntCounter,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounter,
    pub closed_sockets: IntCounter,
    pub unattributed_sockets: IntCounter,
}

impl PollerMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            process_info: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_process_info",
                        "Always 1: executable path and systemd unit (or cgroup) of each process label.",
                    ),
                    &["process", "exe", "unit"],
                )?,
            )?,
            map_entries: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_map_entries",
                        "Entries in a kernel map at the last poll.",
                    ),
                    &["map"],
                )?,
            )?,
            map_capacity: register(
                registry,
                IntGaugeVec::new(
                    Opts::new("bitsecure_map_capacity", "Maximum entries of a kernel map."),
                    &["map"],
                )?,
            )?,
            map_insert_failures: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_map_insert_failures_total",
                        "Kernel map inserts that failed because the map was full: that traffic or owner was not recorded.",
                    ),
                    &["map"],
                )?,
            )?,
            malformed_packets: register(
                registry,
                IntCounter::new(
                    "bitsecure_malformed_packets_total",
                    "Packets whose headers could not be read; their bytes are counted under remote \"::\".",
                )?,
            )?,
            poll_duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "bitsecure_poll_duration_seconds",
                        "Time to read the kernel maps and update the flow table.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )?,
            )?,
            poll_errors: register(
                registry,
                IntCounter::new(
                    "bitsecure_poll_errors_total",
                    "Polls that failed to read the kernel maps (see the agent log).",
                )?,
            )?,
            closed_sockets: register(
                registry,
                IntCounter::new(
                    "bitsecure_closed_sockets_total",
                    "Closed sockets whose counters were folded into the totals and removed from the kernel maps.",
                )?,
            )?,
            unattributed_sockets: register(
                registry,
                IntCounter::new(
                    "bitsecure_unattributed_sockets_total",
                    "Sockets whose owning process could not be determined (their traffic is process=\"unknown\").",
                )?,
            )?,
        })
    }

    /// The kernel maps' sizes; each map's insert failures start at 0, so a first failure is an
    /// increase Prometheus can see.
    pub fn set_map_capacities(&self, capacities: &[(&str, u32)]) {
        for (map, capacity) in capacities {
            self.map_capacity
                .with_label_values(&[*map])
                .set(i64::from(*capacity));
            self.map_insert_failures.with_label_values(&[*map]);
        }
    }

    fn record(&self, report: &PollReport) {
        for process in &report.new_processes {
            self.add_process(process);
        }
        self.unattributed_sockets
            .inc_by(report.unattributed_sockets);
        self.closed_sockets.inc_by(report.folded_sockets as u64);
        let KernelStats {
            flow_insert_failures,
            socket_insert_failures,
            malformed_packets,
            events_dropped: _,
        } = report.kernel;
        self.map_insert_failures
            .with_label_values(&["flows"])
            .inc_by(flow_insert_failures);
        self.map_insert_failures
            .with_label_values(&["sockets"])
            .inc_by(socket_insert_failures);
        self.malformed_packets.inc_by(malformed_packets);
        self.map_entries
            .with_label_values(&["flows"])
            .set(report.flows as i64);
        self.map_entries
            .with_label_values(&["sockets"])
            .set(report.sockets as i64);
        self.poll_duration.observe(report.duration.as_secs_f64());
    }

    fn add_process(&self, identity: &ProcessIdentity) {
        self.process_info
            .with_label_values(&[
                identity.name.as_str(),
                identity.exe.as_deref().unwrap_or(""),
                identity.unit.as_deref().unwrap_or(""),
            ])
            .set(1);
    }
}

/// Names and applications: the kernel's payload events and the address -> name map.
pub struct NamingMetrics {
    pub kernel_events: IntCounterVec,
    pub kernel_events_dropped: IntCounter,
    pub dns_responses: IntCounterVec,
    pub names: IntGauge,
    pub names_limit: IntGauge,
}

impl NamingMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            kernel_events: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_kernel_events_total",
                        "Payload events read from the kernel: kind=\"dns\" (a DNS message from port 53) or \"payload\" (the first payload of a flow).",
                    ),
                    &["kind"],
                )?,
            )?,
            kernel_events_dropped: register(
                registry,
                IntCounter::new(
                    "bitsecure_kernel_events_dropped_total",
                    "Payload events the kernel dropped because its ring buffer was full (names.ring_buffer_bytes): some names or applications were not learnt.",
                )?,
            )?,
            dns_responses: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_dns_responses_total",
                        "DNS messages received from port 53, by result: ok (parsed; its addresses named) or unparsable.",
                    ),
                    &["result"],
                )?,
            )?,
            names: register(
                registry,
                IntGauge::new(
                    "bitsecure_names",
                    "Addresses in the address -> name map (learnt from DNS answers, TLS SNI and HTTP Host).",
                )?,
            )?,
            names_limit: register(
                registry,
                IntGauge::new(
                    "bitsecure_names_limit",
                    "Cap on the address -> name map (names.max_entries); beyond it the soonest-expiring entries go.",
                )?,
            )?,
        };
        for kind in ["dns", "payload"] {
            metrics.kernel_events.with_label_values(&[kind]);
        }
        for result in ["ok", "unparsable"] {
            metrics.dns_responses.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// Payload events read from the kernel (during a poll or between polls).
    pub fn record_events(&self, counts: &EventCounts) {
        let EventCounts {
            dns,
            payload,
            dns_ok,
            dns_unparsable,
        } = *counts;
        self.kernel_events.with_label_values(&["dns"]).inc_by(dns);
        self.kernel_events
            .with_label_values(&["payload"])
            .inc_by(payload);
        self.dns_responses.with_label_values(&["ok"]).inc_by(dns_ok);
        self.dns_responses
            .with_label_values(&["unparsable"])
            .inc_by(dns_unparsable);
    }

    /// Events the kernel dropped: part of the poller's kernel statistics.
    fn record_dropped(&self, dropped: u64) {
        self.kernel_events_dropped.inc_by(dropped);
    }
}

/// The comparison with the baseline: unexpected traffic and the state of every rule.
pub struct BaselineMetrics {
    pub rules: IntGauge,
    pub loaded_timestamp: prometheus::Gauge,
    pub reload_failures: IntCounter,
    pub learning: IntGauge,
    pub learning_remaining: prometheus::Gauge,
    pub unexpected_sent_bytes: IntCounterVec,
    pub unexpected_received_bytes: IntCounterVec,
    pub unexpected_flows: IntGauge,
    pub unexpected_first_seen: prometheus::GaugeVec,
    pub unexpected_last_seen: prometheus::GaugeVec,
    pub rule_rate: prometheus::GaugeVec,
    pub rule_reference: prometheus::GaugeVec,
    pub rule_deviation: prometheus::GaugeVec,
    pub rule_silence_seconds: prometheus::GaugeVec,
    pub rule_silence_ratio: prometheus::GaugeVec,
    pub rule_expected_cadence: prometheus::GaugeVec,
    pub rule_observed_cadence: prometheus::GaugeVec,
}

impl BaselineMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                prometheus::GaugeVec::new(Opts::new(name, help), labels)?,
            )
        };
        // A rule's labels are as written in the baseline file (`app` is empty for a rule that
        // matches any application).
        const RULE_LABELS: [&str; 5] = SeriesKey::LABEL_NAMES;
        let with_direction = [&RULE_LABELS[..], &["direction"]].concat();
        // `app` tells "the miner speaks HTTP to its pool" apart from its usual stratum.
        let unexpected_labels = SeriesKey::LABEL_NAMES;
        Ok(Self {
            rules: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_rules",
                    "Rules in the baseline in force.",
                )?,
            )?,
            loaded_timestamp: register(
                registry,
                prometheus::Gauge::new(
                    "bitsecure_baseline_loaded_timestamp_seconds",
                    "When the baseline in force was loaded (Unix time); 0 if none.",
                )?,
            )?,
            reload_failures: register(
                registry,
                IntCounter::new(
                    "bitsecure_baseline_reload_failures_total",
                    "Baseline loads that failed (bad file); the previous baseline stays in force.",
                )?,
            )?,
            learning: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_learning",
                    "1 while the agent learns a baseline (no baseline file yet), else 0.",
                )?,
            )?,
            learning_remaining: register(
                registry,
                prometheus::Gauge::new(
                    "bitsecure_baseline_learning_remaining_seconds",
                    "Seconds of learning left before the agent writes the baseline and monitors.",
                )?,
            )?,
            unexpected_sent_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_unexpected_sent_bytes_total",
                        "L3 bytes sent by traffic no baseline rule matches; remote=\"other\" when the list is full.",
                    ),
                    &unexpected_labels,
                )?,
            )?,
            unexpected_received_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_unexpected_received_bytes_total",
                        "L3 bytes received by traffic no baseline rule matches; remote=\"other\" when the list is full.",
                    ),
                    &unexpected_labels,
                )?,
            )?,
            unexpected_flows: register(
                registry,
                IntGauge::new(
                    "bitsecure_unexpected_flows",
                    "Traffic classes (process, remote, port, protocol, app) in the unexpected list.",
                )?,
            )?,
            unexpected_first_seen: gauge_vec(
                "bitsecure_unexpected_first_seen_timestamp_seconds",
                "When a class in the unexpected list was first seen (Unix time).",
                &unexpected_labels,
            )?,
            unexpected_last_seen: gauge_vec(
                "bitsecure_unexpected_last_seen_timestamp_seconds",
                "When a class in the unexpected list last had traffic (Unix time).",
                &unexpected_labels,
            )?,
            rule_rate: gauge_vec(
                "bitsecure_rule_rate_bytes_per_second",
                "Current rate of a rule's traffic, averaged over one cadence (or 30 s).",
                &with_direction,
            )?,
            rule_reference: gauge_vec(
                "bitsecure_rule_reference_bytes_per_second",
                "Expected rate of a rule now, from the recorded cycle profile (or the recorded mean).",
                &with_direction,
            )?,
            rule_deviation: gauge_vec(
                "bitsecure_rule_deviation_ratio",
                "Current rate of a rule divided by its recorded p95 rate (1 = top of normal).",
                &with_direction,
            )?,
            rule_silence_seconds: gauge_vec(
                "bitsecure_rule_silence_seconds",
                "Seconds since a rule last saw traffic.",
                &RULE_LABELS,
            )?,
            rule_silence_ratio: gauge_vec(
                "bitsecure_rule_silence_ratio",
                "Silence divided by the rule's normal gap (its cadence): above 1 means quieter than normal.",
                &RULE_LABELS,
            )?,
            rule_expected_cadence: gauge_vec(
                "bitsecure_rule_expected_cadence_seconds",
                "Recorded period of a periodic rule.",
                &RULE_LABELS,
            )?,
            rule_observed_cadence: gauge_vec(
                "bitsecure_rule_observed_cadence_seconds",
                "Median interval between the rule's recent bursts.",
                &RULE_LABELS,
            )?,
        })
    }

    /// A report of the baseline service: counters of this step's unexpected traffic, then the
    /// gauges of where it stands.
    fn publish(&self, report: &BaselineReport) {
        if let Some(loaded_at) = report.loaded_at {
            self.reset_rules();
            self.loaded_timestamp.set(loaded_at);
        }
        self.reload_failures.inc_by(report.reload_failures);
        for increment in &report.unexpected_traffic {
            let mut series = SeriesKey::of(&increment.key);
            if !increment.listed {
                // The list is full: keep the process and app, fold remote and port.
                series = series.folded();
            }
            let labels = series.labels();
            self.unexpected_sent_bytes
                .with_label_values(&labels)
                .inc_by(increment.traffic.sent_bytes);
            self.unexpected_received_bytes
                .with_label_values(&labels)
                .inc_by(increment.traffic.received_bytes);
        }
        match &report.state {
            BaselineState::Off => {
                self.learning.set(0);
                self.rules.set(0);
            }
            BaselineState::Learning { remaining_seconds } => {
                self.learning.set(1);
                self.learning_remaining.set(*remaining_seconds);
            }
            BaselineState::Monitoring {
                rules,
                unexpected,
                statuses,
            } => {
                self.learning.set(0);
                self.learning_remaining.set(0.0);
                self.rules.set(*rules as i64);
                self.unexpected_flows.set(unexpected.len() as i64);
                // Rebuilt from the list, so accepted entries disappear from the gauges.
                self.unexpected_first_seen.reset();
                self.unexpected_last_seen.reset();
                for entry in unexpected {
                    let port = port_label(entry.port);
                    let labels = [
                        entry.process.as_str(),
                        entry.remote.as_str(),
                        port.as_str(),
                        entry.protocol.as_str(),
                        entry.app.as_str(),
                    ];
                    self.unexpected_first_seen
                        .with_label_values(&labels)
                        .set(entry.first_seen_unix);
                    self.unexpected_last_seen
                        .with_label_values(&labels)
                        .set(entry.last_seen_unix);
                }
                for status in statuses {
                    self.publish_rule(status);
                }
            }
        }
    }

    fn publish_rule(&self, status: &RuleStatus) {
        let rule = status.labels.labels();
        let with =
            |direction: &'static str| [rule[0], rule[1], rule[2], rule[3], rule[4], direction];
        for (direction, rate, reference, deviation) in [
            (
                "sent",
                status.sent_rate,
                status.reference_sent,
                status.sent_deviation,
            ),
            (
                "received",
                status.received_rate,
                status.reference_received,
                status.received_deviation,
            ),
        ] {
            self.rule_rate.with_label_values(&with(direction)).set(rate);
            if let Some(reference) = reference {
                self.rule_reference
                    .with_label_values(&with(direction))
                    .set(reference);
            }
            if let Some(deviation) = deviation {
                self.rule_deviation
                    .with_label_values(&with(direction))
                    .set(deviation);
            }
        }
        self.rule_silence_seconds
            .with_label_values(&rule)
            .set(status.silence_seconds);
        self.rule_silence_ratio
            .with_label_values(&rule)
            .set(status.silence_ratio);
        if let Some(cadence) = status.expected_cadence {
            self.rule_expected_cadence
                .with_label_values(&rule)
                .set(cadence);
        }
        if let Some(cadence) = status.observed_cadence {
            self.rule_observed_cadence
                .with_label_values(&rule)
                .set(cadence);
        }
    }

    /// Forgets every per-rule series (after a reload, rules may be gone).
    fn reset_rules(&self) {
        for gauge in [
            &self.rule_rate,
            &self.rule_reference,
            &self.rule_deviation,
            &self.rule_silence_seconds,
            &self.rule_silence_ratio,
            &self.rule_expected_cadence,
            &self.rule_observed_cadence,
        ] {
            gauge.reset();
        }
    }
}
