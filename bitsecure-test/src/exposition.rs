//! The agent's /metrics as the tests read it: a parser of the Prometheus text format (enough of
//! it for our own output) and sums over its samples, per process or by labels.

use std::collections::BTreeMap;

/// One sample of the exposition format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (enough of it for our own output).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = index + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// Traffic of one process as the agent exports it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Exported {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_packets: u64,
    pub received_packets: u64,
}

impl Exported {
    /// The same traffic seen from the other end: what one side sent, the other received.
    pub fn seen_from_the_other_end(self) -> Self {
        Self {
            sent_bytes: self.received_bytes,
            received_bytes: self.sent_bytes,
            sent_packets: self.received_packets,
            received_packets: self.sent_packets,
        }
    }
}

/// Traffic of `process` with `protocol`, over every remote (folded ones included).
pub fn process_traffic(samples: &[Sample], process: &str, protocol: &str) -> Exported {
    traffic_by_process(samples, |labels| {
        labels.get("protocol").map(String::as_str) == Some(protocol)
    })
    .get(process)
    .copied()
    .unwrap_or_default()
}

/// Sums the traffic counters per process over the series that match `filter`.
pub fn traffic_by_process(
    samples: &[Sample],
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, Exported> {
    let mut by_process: BTreeMap<String, Exported> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| filter(&sample.labels)) {
        let Some(process) = sample.labels.get("process") else {
            continue;
        };
        let entry = by_process.entry(process.clone()).or_default();
        let value = sample.value as u64;
        match sample.name.as_str() {
            "bitsecure_sent_bytes_total" => entry.sent_bytes += value,
            "bitsecure_received_bytes_total" => entry.received_bytes += value,
            "bitsecure_sent_packets_total" => entry.sent_packets += value,
            "bitsecure_received_packets_total" => entry.received_packets += value,
            _ => {}
        }
    }
    by_process
}

/// The sum of the samples named `name` that carry all of `labels`.
pub fn sum_metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// |a - b| ≤ tolerance × b (b is the independent truth).
pub fn within(measured: u64, truth: u64, tolerance: f64) -> bool {
    (measured as f64 - truth as f64).abs() <= tolerance * truth as f64
}
