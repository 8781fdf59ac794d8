//! The traffic counters of the metric contract (`bitsecure_{sent,received}_{bytes,packets}_total`)
//! and `bitsecure_remote_info`, written straight into the exposition text.
//!
//! They can number thousands of series, so they are kept as one plain map: going through the
//! `prometheus` crate would keep four labelled children per series and build a protobuf tree
//! of all of them at every scrape (measured: about 4 kB per series).

use std::{collections::HashMap, fmt::Write as _, net::IpAddr, sync::Mutex};

use prometheus::{IntCounter, IntGauge, Registry};

use super::series::FlowTable;
use crate::flow::{FlowDelta, RemoteName, SeriesKey, Traffic, remote_label};

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

/// The traffic series: what the flow deltas added up to, bounded by the [`FlowTable`].
pub struct TrafficMetrics {
    state: Mutex<TrafficState>,
    pub folded_flows: IntCounter,
    pub expired_series: IntCounter,
    pub series: IntGauge,
    pub series_limit: IntGauge,
}

struct TrafficState {
    table: FlowTable,
    /// Cumulative traffic per series (this agent's and those restored from a previous one).
    totals: HashMap<SeriesKey, Traffic>,
    /// `(remote, name, source)` rows of `bitsecure_remote_info`, replaced at every poll.
    remote_names: Vec<(String, String, &'static str)>,
}

impl TrafficMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let folded_flows = IntCounter::new(
            "bitsecure_folded_flows_total",
            "Flow updates folded into remote=\"other\" by the cardinality limits.",
        )?;
        let expired_series = IntCounter::new(
            "bitsecure_expired_series_total",
            "Traffic series dropped after metrics.series_idle_seconds without traffic (a series that comes back starts again from zero).",
        )?;
        let series = IntGauge::new(
            "bitsecure_traffic_series",
            "Number of (process, remote, port, protocol, app) series exported.",
        )?;
        let series_limit = IntGauge::new(
            "bitsecure_traffic_series_limit",
            "Cap on traffic series (metrics.max_series); beyond it flows fold into remote=\"other\".",
        )?;
        registry.register(Box::new(folded_flows.clone()))?;
        registry.register(Box::new(expired_series.clone()))?;
        registry.register(Box::new(series.clone()))?;
        registry.register(Box::new(series_limit.clone()))?;
        Ok(Self {
            state: Mutex::new(TrafficState {
                table: FlowTable::new(0, 0, 0),
                totals: HashMap::new(),
                remote_names: Vec::new(),
            }),
            folded_flows,
            expired_series,
            series,
            series_limit,
        })
    }

    /// Sets the cardinality limits (`metrics.max_remotes`, `metrics.max_series`) and the idle
    /// time after which a series is dropped (`metrics.series_idle_seconds`, 0 = never).
    pub fn set_limits(&self, max_remotes: usize, max_series: usize, idle_seconds: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.table = FlowTable::new(max_remotes, max_series, idle_seconds);
        }
        self.series_limit.set(max_series as i64);
    }

    /// Adds one poll's deltas (made at `now`, Unix seconds) to their series, and drops the
    /// series idle since long enough.
    pub fn add(&self, deltas: &[FlowDelta], now: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let applied = state.table.apply(deltas, now);
        for (series, traffic) in &applied.increments {
            state.totals.entry(series.clone()).or_default().add(traffic);
        }
        for series in &applied.expired {
            state.totals.remove(series);
        }
        self.folded_flows.inc_by(applied.folded);
        self.expired_series.inc_by(applied.expired.len() as u64);
        self.series.set(state.table.len() as i64);
    }

    /// Continues a series of a previous agent (it counts toward the limits, as before the
    /// restart), last active at `last_active` (Unix seconds).
    pub fn restore(&self, key: &SeriesKey, traffic: &Traffic, last_active: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.totals.entry(key.clone()).or_default().add(traffic);
            state.table.restore(key, last_active);
            self.series.set(state.table.len() as i64);
        }
    }

    /// Every series, its totals and when it last counted traffic (for the agent state).
    pub fn snapshot(&self) -> Vec<(SeriesKey, Traffic, u64)> {
        self.state
            .lock()
            .map(|state| {
                state
                    .totals
                    .iter()
                    .map(|(key, traffic)| {
                        let last_active = state.table.last_active(key).unwrap_or_default();
                        (key.clone(), *traffic, last_active)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The remotes with series of their own (the others are folded into `other`).
    pub fn remotes_with_own_series(&self) -> Vec<IpAddr> {
        self.state
            .lock()
            .map(|state| state.table.remotes_with_own_series().collect())
            .unwrap_or_default()
    }

    /// Replaces the rows of `bitsecure_remote_info` with these names.
    pub fn set_remote_names(&self, names: &[(IpAddr, RemoteName)]) {
        let mut rows: Vec<_> = names
            .iter()
            .map(|(remote, name)| {
                (
                    remote_label(*remote),
                    name.name.clone(),
                    name.source.as_str(),
                )
            })
            .collect();
        rows.sort_unstable();
        rows.dedup();
        if let Ok(mut state) = self.state.lock() {
            state.remote_names = rows;
        }
    }

    /// Appends the traffic counters and `bitsecure_remote_info` to the exposition text.
    pub(super) fn render(&self, out: &mut String) {
        // Copy under the lock, format outside it: the poller adds traffic meanwhile.
        let Ok((mut series, rows)) = self.state.lock().map(|state| {
            (
                state
                    .totals
                    .iter()
                    .map(|(key, traffic)| (key.clone(), *traffic))
                    .collect::<Vec<_>>(),
                state.remote_names.clone(),
            )
        }) else {
            return;
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
                    SeriesKey::LABEL_NAMES.iter().zip(key.labels()).enumerate()
                {
                    let separator = if label_index == 0 { "" } else { "," };
                    let _ = write!(out, "{separator}{label}=\"");
                    escape_label_value(label_value, out);
                    out.push('"');
                }
                let _ = writeln!(out, "}} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP bitsecure_remote_info Always 1: the name of a remote address (one per remote: the one most of its live flows use), learnt from a DNS answer this host received (source=\"dns\"), the TLS server name (\"sni\") or HTTP Host (\"http\") of a connection it opened.\n# TYPE bitsecure_remote_info gauge"
        );
        for (remote, name, source) in &rows {
            out.push_str("bitsecure_remote_info{remote=\"");
            escape_label_value(remote, out);
            out.push_str("\",name=\"");
            escape_label_value(name, out);
            let _ = writeln!(out, "\",source=\"{source}\"}} 1");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::Metrics;

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
        metrics.traffic.restore(&key, &traffic, 0);
        metrics.traffic.restore(&key, &traffic, 0);
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
