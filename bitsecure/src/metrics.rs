//! The Prometheus side: the traffic counters of the metric contract and the agent's
//! self-metrics. Names and labels here are a public API (dashboards and alerts use them).

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::flow_table::{SeriesKey, Traffic};

/// Labels of every traffic counter.
pub const TRAFFIC_LABELS: [&str; 4] = ["process", "remote", "port", "protocol"];

pub struct Metrics {
    registry: Registry,
    sent_bytes: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_packets: IntCounterVec,
    received_packets: IntCounterVec,
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
    pub unattributed_flows: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let traffic = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let counter = IntCounterVec::new(Opts::new(name, help), &TRAFFIC_LABELS)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let sent_bytes = traffic(
            "bitsecure_sent_bytes_total",
            "L3 bytes sent (IP header included, GSO-corrected to wire packets), by process and remote endpoint.",
        )?;
        let received_bytes = traffic(
            "bitsecure_received_bytes_total",
            "L3 bytes received (IP header included, GRO-corrected to wire packets), by process and remote endpoint.",
        )?;
        let sent_packets = traffic(
            "bitsecure_sent_packets_total",
            "Wire packets sent, by process and remote endpoint.",
        )?;
        let received_packets = traffic(
            "bitsecure_received_packets_total",
            "Wire packets received, by process and remote endpoint.",
        )?;

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
            "Number of (process, remote, port, protocol) series exported.",
        )?;
        let unattributed_flows = IntCounter::new(
            "bitsecure_unattributed_flows_total",
            "Flows whose owning process could not be determined (exported as process=\"unknown\").",
        )?;
        for collector in [
            Box::new(process_info.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(map_entries.clone()),
            Box::new(map_capacity.clone()),
            Box::new(map_insert_failures.clone()),
            Box::new(malformed_packets.clone()),
            Box::new(poll_duration.clone()),
            Box::new(poll_errors.clone()),
            Box::new(folded_flows.clone()),
            Box::new(closed_sockets.clone()),
            Box::new(traffic_series.clone()),
            Box::new(unattributed_flows.clone()),
        ] {
            registry.register(collector)?;
        }

        Ok(Self {
            registry,
            sent_bytes,
            received_bytes,
            sent_packets,
            received_packets,
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
            unattributed_flows,
        })
    }

    /// Adds traffic to one series.
    pub fn add_traffic(&self, key: &SeriesKey, traffic: &Traffic) {
        let labels = key.labels();
        for (counter, value) in [
            (&self.sent_bytes, traffic.sent_bytes),
            (&self.received_bytes, traffic.received_bytes),
            (&self.sent_packets, traffic.sent_packets),
            (&self.received_packets, traffic.received_packets),
        ] {
            // Touch the series even at 0 so all four metrics exist for every flow.
            counter.with_label_values(&labels).inc_by(value);
        }
    }

    /// The text exposition format for /metrics.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // TextEncoder only writes UTF-8.
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
