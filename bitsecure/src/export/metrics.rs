//! The Prometheus side: the traffic counters of the metric contract and the agent's
//! self-metrics. Names and labels here are a public API (dashboards and alerts use them).
//!
//! The traffic counters can number thousands of series, so they are kept as one plain map and
//! written straight into the exposition text: going through the `prometheus` crate would keep
//! four labelled children per series and build a protobuf tree of all of them at every scrape
//! (measured: about 4 kB per series). The `prometheus` registry serves the self-metrics.

use std::{collections::HashMap, fmt::Write as _, sync::Mutex};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::flow::{SeriesKey, Traffic};

/// Labels of every traffic counter.
pub const TRAFFIC_LABELS: [&str; 5] = ["process", "remote", "port", "protocol", "app"];

/// Name and help text of the four traffic counters, in exposition order.
const TRAFFIC_COUNTERS: [(&str, &str); 4] = [
    (
        "bitsecure_sent_bytes_total",
        "L3 bytes sent (IP header included, GSO-corrected to wire packets), by process and remote endpoint.",
    ),
    (
        "bitsecure_received_bytes_total",
        "L3 bytes received (IP header included, GRO-corrected to wire packets), by process and remote endpoint.",
    ),
    (
        "bitsecure_sent_packets_total",
        "Wire packets sent, by process and remote endpoint.",
    ),
    (
        "bitsecure_received_packets_total",
        "Wire packets received, by process and remote endpoint.",
    ),
];

pub struct Metrics {
    registry: Registry,
    pub baseline: BaselineMetrics,
    /// Cumulative traffic per series (the four traffic counters).
    traffic: Mutex<HashMap<SeriesKey, Traffic>>,
    pub process_info: IntGaugeVec,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub map_insert_failures: IntCounterVec,
    pub malformed_packets: IntCounter,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounter,
    pub folded_flows: IntCounter,
    pub closed_sockets: IntCounter,
    pub traffic_series: IntGauge,
    pub traffic_series_limit: IntGauge,
    pub unattributed_sockets: IntCounter,
    /// `(remote, name, source)` rows of `bitsecure_remote_info`, replaced at every poll.
    remote_names: Mutex<Vec<(String, String, &'static str)>>,
    pub kernel_events: IntCounterVec,
    pub kernel_events_dropped: IntCounter,
    pub dns_responses: IntCounterVec,
    pub names: IntGauge,
    pub names_limit: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "bitsecure_build_info",
                "Always 1; labels tell the agent's version.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;

        let process_info = IntGaugeVec::new(
            Opts::new(
                "bitsecure_process_info",
                "Always 1: executable path and systemd unit (or cgroup) of each process label.",
            ),
            &["process", "exe", "unit"],
        )?;
        let map_entries = IntGaugeVec::new(
            Opts::new(
                "bitsecure_map_entries",
                "Entries in a kernel map at the last poll.",
            ),
            &["map"],
        )?;
        let map_capacity = IntGaugeVec::new(
            Opts::new("bitsecure_map_capacity", "Maximum entries of a kernel map."),
            &["map"],
        )?;
        let map_insert_failures = IntCounterVec::new(
            Opts::new(
                "bitsecure_map_insert_failures_total",
                "Kernel map inserts that failed because the map was full: that traffic or owner was not recorded.",
            ),
            &["map"],
        )?;
        let malformed_packets = IntCounter::new(
            "bitsecure_malformed_packets_total",
            "Packets whose headers could not be read; their bytes are counted under remote \"::\".",
        )?;
        let poll_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bitsecure_poll_duration_seconds",
                "Time to read the kernel maps and update the flow table.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let poll_errors = IntCounter::new(
            "bitsecure_poll_errors_total",
            "Polls that failed to read the kernel maps (see the agent log).",
        )?;
        let folded_flows = IntCounter::new(
            "bitsecure_folded_flows_total",
            "Flow updates folded into remote=\"other\" by the cardinality limits.",
        )?;
        let closed_sockets = IntCounter::new(
            "bitsecure_closed_sockets_total",
            "Closed sockets whose counters were folded into the totals and removed from the kernel maps.",
        )?;
        let traffic_series = IntGauge::new(
            "bitsecure_traffic_series",
            "Number of (process, remote, port, protocol, app) series exported.",
        )?;
        let traffic_series_limit = IntGauge::new(
            "bitsecure_traffic_series_limit",
            "Cap on traffic series (metrics.max_series); beyond it flows fold into remote=\"other\".",
        )?;
        let unattributed_sockets = IntCounter::new(
            "bitsecure_unattributed_sockets_total",
            "Sockets whose owning process could not be determined (their traffic is process=\"unknown\").",
        )?;
        let kernel_events = IntCounterVec::new(
            Opts::new(
                "bitsecure_kernel_events_total",
                "Payload events read from the kernel: kind=\"dns\" (a DNS message from port 53) or \"payload\" (the first payload of a flow).",
            ),
            &["kind"],
        )?;
        let kernel_events_dropped = IntCounter::new(
            "bitsecure_kernel_events_dropped_total",
            "Payload events the kernel dropped because its ring buffer was full (names.ring_buffer_bytes): some names or applications were not learnt.",
        )?;
        let dns_responses = IntCounterVec::new(
            Opts::new(
                "bitsecure_dns_responses_total",
                "DNS messages received from port 53, by result: ok (parsed; its addresses named) or unparsable.",
            ),
            &["result"],
        )?;
        let names = IntGauge::new(
            "bitsecure_names",
            "Addresses in the address -> name map (learnt from DNS answers, TLS SNI and HTTP Host).",
        )?;
        let names_limit = IntGauge::new(
            "bitsecure_names_limit",
            "Cap on the address -> name map (names.max_entries); beyond it the soonest-expiring entries go.",
        )?;
        for kind in ["dns", "payload"] {
            kernel_events.with_label_values(&[kind]);
        }
        for result in ["ok", "unparsable"] {
            dns_responses.with_label_values(&[result]);
        }
        for collector in [
            Box::new(process_info.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(kernel_events.clone()),
            Box::new(kernel_events_dropped.clone()),
            Box::new(dns_responses.clone()),
            Box::new(names.clone()),
            Box::new(names_limit.clone()),
            Box::new(map_entries.clone()),
            Box::new(map_capacity.clone()),
            Box::new(map_insert_failures.clone()),
            Box::new(malformed_packets.clone()),
            Box::new(poll_duration.clone()),
            Box::new(poll_errors.clone()),
            Box::new(folded_flows.clone()),
            Box::new(closed_sockets.clone()),
            Box::new(traffic_series.clone()),
            Box::new(traffic_series_limit.clone()),
            Box::new(unattributed_sockets.clone()),
        ] {
            registry.register(collector)?;
        }

        let baseline = BaselineMetrics::new(&registry)?;
        Ok(Self {
            registry,
            baseline,
            traffic: Mutex::default(),
            process_info,
            map_entries,
            map_capacity,
            map_insert_failures,
            malformed_packets,
            poll_duration,
            poll_errors,
            folded_flows,
            closed_sockets,
            traffic_series,
            traffic_series_limit,
            unattributed_sockets,
            remote_names: Mutex::default(),
            kernel_events,
            kernel_events_dropped,
            dns_responses,
            names,
            names_limit,
        })
    }

    /// Every traffic series and its totals (for [`crate::state`]).
    pub fn traffic_snapshot(&self) -> Vec<(SeriesKey, Traffic)> {
        self.traffic
            .lock()
            .map(|series| series.iter().map(|(k, t)| (k.clone(), *t)).collect())
            .unwrap_or_default()
    }

    /// Adds traffic to one series.
    pub fn add_traffic(&self, key: &SeriesKey, traffic: &Traffic) {
        if let Ok(mut series) = self.traffic.lock() {
            series.entry(key.clone()).or_default().add(traffic);
        }
    }

    /// The text exposition format for /metrics.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // TextEncoder only writes UTF-8.
        let mut text = String::from_utf8_lossy(&buffer).into_owned();
        self.render_traffic(&mut text);
        self.render_remote_names(&mut text);
        Ok(text)
    }

    /// Replaces the `(remote, name, source)` rows of `bitsecure_remote_info`.
    pub fn set_remote_names(&self, rows: Vec<(String, String, &'static str)>) {
        if let Ok(mut names) = self.remote_names.lock() {
            *names = rows;
        }
    }

    fn render_remote_names(&self, out: &mut String) {
        let rows = match self.remote_names.lock() {
            Ok(rows) => rows.clone(),
            Err(_) => return,
        };
        let _ = writeln!(
            out,
            "# HELP bitsecure_remote_info Always 1: a name of a remote address, learnt from a DNS answer this host received (source=\"dns\"), the TLS server name (\"sni\") or HTTP Host (\"http\") of a connection it opened.\n# TYPE bitsecure_remote_info gauge"
        );
        for (remote, name, source) in &rows {
            out.push_str("bitsecure_remote_info{remote=\"");
            escape_label_value(remote, out);
            out.push_str("\",name=\"");
            escape_label_value(name, out);
            let _ = writeln!(out, "\",source=\"{source}\"}} 1");
        }
    }

    fn render_traffic(&self, out: &mut String) {
        // Copy under the lock, format outside it: the poller adds traffic meanwhile.
        let mut series: Vec<(SeriesKey, Traffic)> = match self.traffic.lock() {
            Ok(series) => series
                .iter()
                .map(|(key, traffic)| (key.clone(), *traffic))
                .collect(),
            Err(_) => return,
        };
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (index, (name, help)) in TRAFFIC_COUNTERS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, traffic) in &series {
                let value = [
                    traffic.sent_bytes,
                    traffic.received_bytes,
                    traffic.sent_packets,
                    traffic.received_packets,
                ][index];
                let _ = write!(out, "{name}{{");
                for (label_index, (label, label_value)) in
                    TRAFFIC_LABELS.iter().zip(key.labels()).enumerate()
                {
                    let separator = if label_index == 0 { "" } else { "," };
                    let _ = write!(out, "{separator}{label}=\"");
                    escape_label_value(label_value, out);
                    out.push('"');
                }
                let _ = writeln!(out, "}} {value}");
            }
        }
    }
}

/// Label values escape backslash, double quote and newline (exposition format rules).
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Labels of a baseline rule (as written in the baseline file; `app` is empty for a rule that
/// matches any application).
pub const RULE_LABELS: [&str; 5] = ["process", "remote", "port", "protocol", "app"];

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
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(collector.clone()))?;
            Ok(collector)
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                prometheus::GaugeVec::new(Opts::new(name, help), labels)?,
            )
        };
        let with_direction = [&RULE_LABELS[..], &["direction"]].concat();
        // `app` tells "the miner speaks HTTP to its pool" apart from its usual stratum.
        let unexpected_labels = ["process", "remote", "port", "protocol", "app"];
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

    /// Forgets every per-rule series (after a reload, rules may be gone).
    pub fn reset_rules(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_counters_render_in_the_exposition_format() {
        let metrics = Metrics::new().unwrap();
        let key = SeriesKey {
            process: "we\"ird\\name".into(),
            remote: "10.0.0.1".into(),
            port: "3333".into(),
            protocol: "tcp".into(),
            app: "stratum".into(),
        };
        let traffic = Traffic {
            sent_bytes: 100,
            received_bytes: 200,
            sent_packets: 3,
            received_packets: 4,
        };
        metrics.add_traffic(&key, &traffic);
        metrics.add_traffic(&key, &traffic);
        let text = metrics.render().unwrap();
        let labels = r#"{process="we\"ird\\name",remote="10.0.0.1",port="3333",protocol="tcp",app="stratum"}"#;
        for (name, value) in [
            ("bitsecure_sent_bytes_total", 200),
            ("bitsecure_received_bytes_total", 400),
            ("bitsecure_sent_packets_total", 6),
            ("bitsecure_received_packets_total", 8),
        ] {
            assert!(
                text.contains(&format!("{name}{labels} {value}\n")),
                "{name} missing:\n{text}"
            );
            assert!(text.contains(&format!("# TYPE {name} counter\n")));
        }
    }
}
